"""Peak memory of ``mamori replay`` (detection on) against tshark, in the same run.

Issue 14's targets: at most 60 MB on ``generated/modbus_big.pcap`` and at most
150 MB with 10,000 concurrent flows. The second capture is made here: 10,000
Modbus clients (100 hosts x 100 source ports) each open a TCP connection to one
of 100 servers, and only then, with every connection open, each polls its server
``--rounds`` times, round-robin over the connections; the FINs come last. So all
10,000 flows are live in the pipeline's table at once, each with its reassembly
state, and the inventory holds 10,000 pairs. The detection tables are sized for
them (``[detection] max_assets`` and ``max_state``, 8,192 and 4,096 by default,
set to the next power of two above ``--flows``): with the defaults the tables
forget pairs round after round, which is cheaper in memory and wrong for a site
this size. The line ``caps bit`` says whether any table forgot anything.

Each program runs in its own child process; its peak RSS is the child's
``ru_maxrss`` (``os.wait4``). tshark (``-T fields`` with the same port option) is
the peer: its peak on the same capture is printed beside Mamori's, with the ratio.

    .venv/bin/python bench/bench_rss.py            # both captures
    .venv/bin/python bench/bench_rss.py --flows 2000 --json
    make compiled && .venv/bin/python bench/bench_rss.py \
        --compiled build/compiled/lib.linux-x86_64-cpython-311

``--compiled LIB`` measures a mypyc build as well (what the .deb and the image ship),
started with ``PYTHONPATH`` naming it, beside the checkout's pure Python.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.stormcap import Frame, concurrent_polls, write_pcap  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
MAMORI = str(ROOT / ".venv" / "bin" / "mamori")
PORT = 502
START = 1_700_000_000.0
TARGET_MB = {"modbus_big.pcap": 60.0, "concurrent": 150.0}
#: ``mamori`` from whichever tree ``PYTHONPATH`` names first (``--compiled``).
LAUNCH = "import sys; from mamori.sensor.cli import program; sys.exit(program(sys.argv[1:]))"


def client(i: int) -> tuple[str, int]:
    """The i-th connection's client address and port: 100 ports on each host."""
    host = i // 100
    return f"10.20.{host >> 8}.{(host & 0xFF) + 1}", 40000 + i % 100


def server(i: int) -> str:
    return f"10.0.1.{i % 100 + 1}"


def concurrent_frames(flows: int, rounds: int, gap: float = 0.00002) -> Iterator[Frame]:
    """Every connection opened, then ``rounds`` reads on each in turn, then every FIN."""
    return concurrent_polls([(*client(i), server(i)) for i in range(flows)], PORT, rounds,
                            START, gap)


def peak_mb(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """The child's peak RSS in MB (its output to ``log``); raises if it failed."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[0]} failed: {log.read_text(errors='replace')[-500:]}")
    return usage.ru_maxrss / 1024


def measure(capture: Path, port: int, tmp: Path, state: int | None = None,
            compiled: Path | None = None) -> dict[str, float | bool]:
    config = tmp / "sensor.toml"
    sized = "" if state is None else f"[detection]\nmax_assets = {state}\nmax_state = {state}\n"
    config.write_text(f"[ports]\nmodbus = [{port}]\n{sized}", encoding="utf-8")
    log = tmp / "mamori.log"
    argv = ["replay", "--no-progress", "--config", str(config), str(capture)]
    mamori = peak_mb([MAMORI, *argv], log)
    caps_bit = "full (" in log.read_text(errors="replace")
    extra: dict[str, float | bool] = {}
    if compiled is not None:
        env = {**os.environ, "PYTHONPATH": str(compiled.resolve())}
        extra["compiled_mb"] = round(peak_mb([sys.executable, "-c", LAUNCH, *argv], log, env), 1)
        caps_bit = caps_bit or "full (" in log.read_text(errors="replace")
    tshark = peak_mb(["tshark", "-r", str(capture), "-o", f"mbtcp.tcp.port:{port}", "-T",
                      "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "modbus.func_code"],
                     tmp / "tshark.log")
    return {"mamori_mb": round(mamori, 1), "tshark_mb": round(tshark, 1),
            "ratio": round(mamori / tshark, 2), "caps_bit": caps_bit, **extra}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compiled", metavar="LIB", type=Path,
                    help="also measure this mypyc build's library directory")
    args = ap.parse_args()
    results: dict[str, dict[str, float | bool]] = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        big = CORPUS / "generated" / "modbus_big.pcap"
        if big.exists():
            results["modbus_big.pcap"] = measure(big, 15020, tmp, compiled=args.compiled)
        capture = tmp / "concurrent.pcap"
        packets = write_pcap(capture, concurrent_frames(args.flows, args.rounds))
        state = 1 << max(args.flows - 1, 1).bit_length()
        results["concurrent"] = measure(capture, PORT, tmp, state, args.compiled) | {
            "flows": args.flows, "packets": packets, "state": state}
    if args.json:
        print(json.dumps(results))
        return 0
    for name, r in results.items():
        label = f"{name} ({r['flows']:,.0f} flows)" if "flows" in r else name
        both = f"  compiled {r['compiled_mb']:7.1f} MB" if "compiled_mb" in r else ""
        print(f"{label:<32} mamori {r['mamori_mb']:7.1f} MB{both}  tshark {r['tshark_mb']:7.1f} MB"
              f"  ratio {r['ratio']:.2f}  target {TARGET_MB[name]:.0f} MB"
              f"  caps bit: {'yes' if r['caps_bit'] else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
