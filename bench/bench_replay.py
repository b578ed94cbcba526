"""Replay speed against tshark on the same capture, in the same run.

Runs ``mamori replay`` and ``tshark -T fields`` on the same capture, alternating so
both see the same machine load, and prints packets/s for each and their ratio. The
ratio is the figure that matters: these machines are shared and noisy, and absolute
numbers are not comparable between runs.

Two Mamori configurations are timed: ``--no-detect`` (decode, reassembly and the
protocol parser: what tshark does) and the default with the rule engine, the
inventory and the baseline on top (what the sensor does).

    .venv/bin/python bench/bench_replay.py modbus   # generated/modbus_big.pcap, port 15020
    .venv/bin/python bench/bench_replay.py dnp3     # yadnp3 polling looped to >= 100k packets
    make compiled && .venv/bin/python bench/bench_replay.py modbus --compiled build/compiled/lib.*

``--compiled LIB`` adds ``--no-detect`` runs of a mypyc build of ``parsers/`` (issue 14;
``make compiled`` makes one) and of the checkout's pure Python, both started the same
way (``python -c`` with ``PYTHONPATH`` set), so their ratio is the compiler's gain alone.

Both read ``../shared/corpus`` (beside the project root); the DNP3 input is built in
a temporary directory with editcap (time shift) and mergecap (append).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
MAMORI = str(ROOT / ".venv" / "bin" / "mamori")


def packet_count(path: Path) -> int:
    out = subprocess.run(["capinfos", "-M", "-c", "-T", str(path)], capture_output=True,
                         text=True, check=True).stdout.splitlines()[-1]
    return int(out.split("\t")[1])


#: ``mamori`` from whichever tree ``PYTHONPATH`` names first (``--compiled``).
LAUNCH = "import sys; from mamori.sensor.cli import main; sys.exit(main(sys.argv[1:]))"


def timed(cmd: list[str]) -> float:
    env = None
    if cmd[0] == "PYTHONPATH":  # ["PYTHONPATH", dir, argv...]: run argv with it set
        env, cmd = {**os.environ, "PYTHONPATH": cmd[1]}, cmd[2:]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env, cwd=tempfile.gettempdir())
    return time.perf_counter() - start


def looped(source: Path, at_least: int, workdir: Path) -> Path:
    """``source`` appended to itself, each copy shifted in time, to ``at_least`` packets."""
    per_copy = packet_count(source)
    copies = -(-at_least // per_copy)
    span = 3600  # seconds between copies: flows of one copy are long idle by the next
    parts = []
    for i in range(copies):
        part = workdir / f"part{i}.pcap"
        subprocess.run(["editcap", "-F", "pcap", "-t", str(i * span), str(source), str(part)],
                       check=True)
        parts.append(str(part))
    out = workdir / "looped.pcap"
    subprocess.run(["mergecap", "-F", "pcap", "-a", "-w", str(out), *parts], check=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("proto", choices=("modbus", "dnp3"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dnp3-source", default="yadnp3.pcap",
                    help="capture under generated/ to loop (default yadnp3.pcap, port 20030: "
                         "a polling session; dnp3_interop_dnp3sim.pcap, port 20032, is one "
                         "short connection per exchange)")
    ap.add_argument("--compiled", metavar="LIB", type=Path,
                    help="also time --no-detect on this mypyc build's library directory "
                         "against the checkout's pure Python")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.proto == "modbus":
            capture, port = CORPUS / "generated" / "modbus_big.pcap", 15020
            tshark_proto = ["-o", f"mbtcp.tcp.port:{port}", "-e", "ip.src", "-e", "ip.dst",
                            "-e", "mbtcp.unit_id", "-e", "modbus.func_code"]
            ports = ["--modbus-ports", str(port)]
        else:
            port = 20032 if "dnp3sim" in args.dnp3_source else 20030
            capture = looped(CORPUS / "generated" / args.dnp3_source, 100_000, Path(tmp))
            tshark_proto = ["-d", f"tcp.port=={port},dnp3", "-e", "ip.src", "-e", "ip.dst",
                            "-e", "dnp3.src", "-e", "dnp3.dst", "-e", "dnp3.al.func"]
            ports = ["--dnp3-ports", str(port)]
        if not capture.exists():
            print(f"no capture at {capture}", file=sys.stderr)
            return 2
        packets = packet_count(capture)
        commands = {
            "mamori --no-detect": [MAMORI, "replay", "--no-progress", "--no-detect", *ports,
                                   str(capture)],
            "mamori (detection)": [MAMORI, "replay", "--no-progress", *ports, str(capture)],
            "tshark -T fields": ["tshark", "-r", str(capture), "-T", "fields", *tshark_proto],
        }
        if args.compiled is not None:
            no_detect = ["replay", "--no-progress", "--no-detect", *ports, str(capture)]
            for name, tree in (("pure", ROOT), ("compiled", args.compiled.resolve())):
                commands[f"--no-detect {name}"] = ["PYTHONPATH", str(tree), sys.executable,
                                                   "-c", LAUNCH, *no_detect]
        for cmd in commands.values():  # warm the page cache and the bytecode caches
            timed(cmd)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                times[name].append(timed(cmd))
        median = {name: statistics.median(t) for name, t in times.items()}
        name = capture.name if args.proto == "modbus" else f"{args.dnp3_source} looped"
        print(f"capture  {name}"
              f" ({packets} packets), {args.rounds} rounds, median wall time")
        for name, t in median.items():
            print(f"{name:<20} {t:7.3f} s  {packets / t:>10,.0f} packets/s")
        base = median["tshark -T fields"]
        for name in ("mamori --no-detect", "mamori (detection)"):
            print(f"ratio {name:<20} {base / median[name]:.2f}x tshark (target 5x)")
        if args.compiled is not None:
            for name in ("--no-detect pure", "--no-detect compiled"):
                print(f"ratio {name:<20} {base / median[name]:.2f}x tshark (target 5x)")
            gain = median["--no-detect pure"] / median["--no-detect compiled"]
            print(f"compiled / pure      {gain:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
