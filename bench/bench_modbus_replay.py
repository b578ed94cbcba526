"""Replay speed against tshark on the same capture, in the same run.

Runs ``mamori replay`` and ``tshark -T fields`` (ip.src, ip.dst, mbtcp.unit_id,
modbus.func_code) on ``../shared/corpus/generated/modbus_big.pcap`` (port 15020),
alternating so both see the same machine load, and prints packets/s for each and
their ratio. The ratio is the figure that matters: these machines are shared and
noisy, absolute numbers are not comparable between runs.

    .venv/bin/python bench/bench_modbus_replay.py [--rounds 5] [CAPTURE] [--port 15020]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "corpus" / "generated" / "modbus_big.pcap"


def packet_count(path: Path) -> int:
    out = subprocess.run(["capinfos", "-M", "-c", "-T", str(path)], capture_output=True,
                         text=True, check=True).stdout.splitlines()[-1]
    return int(out.split("\t")[1])


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--port", type=int, default=15020)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if not args.capture.exists():
        print(f"no capture at {args.capture}", file=sys.stderr)
        return 2
    packets = packet_count(args.capture)
    mamori = [str(ROOT / ".venv" / "bin" / "mamori"), "replay", "--no-progress",
              "--modbus-ports", str(args.port), str(args.capture)]
    tshark = ["tshark", "-r", str(args.capture), "-o", f"mbtcp.tcp.port:{args.port}",
              "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "mbtcp.unit_id",
              "-e", "modbus.func_code"]
    timed(mamori)  # warm the page cache and the bytecode cache for both
    timed(tshark)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.rounds):
        ours.append(timed(mamori))
        theirs.append(timed(tshark))
    m, t = statistics.median(ours), statistics.median(theirs)
    print(f"capture      {args.capture.name} ({packets} packets), {args.rounds} rounds, "
          f"median wall time")
    print(f"mamori       {m:.3f} s  {packets / m:>12,.0f} packets/s")
    print(f"tshark       {t:.3f} s  {packets / t:>12,.0f} packets/s")
    print(f"ratio        {t / m:.2f}x tshark (target 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
