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

``--compiled LIB`` adds runs of a mypyc build (issue 14; ``make compiled`` makes one:
``parsers/`` and the detection hot path) and of the checkout's pure Python, both started
the same way (``python -c`` with ``PYTHONPATH`` set), ``--no-detect`` and with detection,
so their ratios are the compiler's gain alone. It also prints what detection adds per
packet in each (the detection run less the ``--no-detect`` one of the same round: the
engine, the inventory and the alert output together), since the stage clocks cannot
reach into compiled classes.

``--baseline LIB`` (with ``--compiled``) adds a second compiled build, of another
tree (the commit before a change, built in a worktree), timed in the same rounds:
its ratios and the paired gain of ``--compiled`` over it are the before and after
of a change measured in one run, which two runs on this shared machine cannot give
(the same code moves by about 10% between sessions).

    git worktree add ../before main && (cd ../before && MAMORI_COMPILE=1 \
        .venv/bin/python setup.py -q build --build-base build/compiled)
    .venv/bin/python bench/bench_replay.py modbus --compiled build/compiled/lib.* \
        --baseline ../before/build/compiled/lib.*

The ratio is the median of the paired rounds' ratios (each round times tshark and
both Mamori runs back to back). After the timed rounds, one more replay of each
configuration runs in this process with a clock on each stage
(``bench.stage_profile``): read, decode, flow+TCP, parse, detection, inventory,
output, in microseconds per packet, so the next bottleneck shows (``--no-profile``
skips it).

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
sys.path.insert(0, str(ROOT))

from bench.stage_profile import STAGES, profile_replay  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
MAMORI = str(ROOT / ".venv" / "bin" / "mamori")


def packet_count(path: Path) -> int:
    out = subprocess.run(["capinfos", "-M", "-c", "-T", str(path)], capture_output=True,
                         text=True, check=True).stdout.splitlines()[-1]
    return int(out.split("\t")[1])


#: ``mamori`` from whichever tree ``PYTHONPATH`` names first (``--compiled``).
LAUNCH = "import sys; from mamori.sensor.cli import program; sys.exit(program(sys.argv[1:]))"


#: The children's environment: without ``PYTHONDONTWRITEBYTECODE``, so the warm-up run
#: leaves bytecode caches behind, as an installed package has them (``py3compile`` in
#: the .deb, pip for a wheel). With it set, every timed run compiled the tree's stale
#: or missing ``.pyc`` again: 0.05 s a run for the pure tree, 0.14 s for a compiled
#: one (its modules that stay Python), a start-up cost no installed sensor pays.
CHILD_ENV = {name: value for name, value in os.environ.items()
             if name != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str]) -> float:
    env = CHILD_ENV
    if cmd[0] == "PYTHONPATH":  # ["PYTHONPATH", dir, argv...]: run argv with it set
        env, cmd = {**CHILD_ENV, "PYTHONPATH": cmd[1]}, cmd[2:]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env, cwd=tempfile.gettempdir())
    return time.perf_counter() - start


def target(variant: str, dnp3_source: str | None) -> str:
    """Issue 14's target for a variant: 8x without detection, 5x with it, and 3x for
    the capture with a connection per exchange (which the issue sets with detection)."""
    if "dnp3sim" in (dnp3_source or ""):
        return "no target" if "--no-detect" in variant else "target 3x"
    return "target 8x" if "--no-detect" in variant else "target 5x"


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
    ap.add_argument("--no-profile", action="store_true",
                    help="no per-stage profile after the timed rounds")
    ap.add_argument("--dnp3-source", default="yadnp3.pcap",
                    help="capture under generated/ to loop (default yadnp3.pcap, port 20030: "
                         "a polling session; dnp3_interop_dnp3sim.pcap, port 20032, is one "
                         "short connection per exchange)")
    ap.add_argument("--compiled", metavar="LIB", type=Path,
                    help="also time --no-detect on this mypyc build's library directory "
                         "against the checkout's pure Python")
    ap.add_argument("--baseline", metavar="LIB", type=Path,
                    help="with --compiled: also time another tree's mypyc build, the "
                         "before of a change")
    args = ap.parse_args()
    if args.baseline is not None and args.compiled is None:
        ap.error("--baseline needs --compiled")
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
        replay_args = {
            "mamori --no-detect": ["--no-progress", "--no-detect", *ports, str(capture)],
            "mamori (detection)": ["--no-progress", *ports, str(capture)],
        }
        commands = {
            **{name: [MAMORI, "replay", *argv] for name, argv in replay_args.items()},
            "tshark -T fields": ["tshark", "-r", str(capture), "-T", "fields", *tshark_proto],
        }
        built: tuple[str, ...] = ("pure", "compiled")
        trees = [ROOT, args.compiled.resolve()] if args.compiled is not None else []
        if args.baseline is not None:
            built += ("baseline",)
            trees.append(args.baseline.resolve())
        if args.compiled is not None:
            for mode, argv in (("--no-detect", replay_args["mamori --no-detect"]),
                               ("detection", replay_args["mamori (detection)"])):
                for name, tree in zip(built, trees, strict=True):
                    commands[f"{mode} {name}"] = ["PYTHONPATH", str(tree), sys.executable,
                                                  "-c", LAUNCH, "replay", *argv]
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
        tshark = times["tshark -T fields"]
        variants = [*replay_args] + ([] if args.compiled is None else [
            f"{mode} {name}" for mode in ("--no-detect", "detection") for name in built])
        for name in variants:
            paired = statistics.median(t / m for t, m in zip(tshark, times[name], strict=True))
            print(f"ratio {name:<20} {paired:.2f}x tshark (median of paired rounds; "
                  f"{target(name, args.dnp3_source if args.proto == 'dnp3' else None)})")
        if args.compiled is not None:
            for other in built[::2]:  # pure, and the baseline when there is one
                for mode in ("--no-detect", "detection"):
                    gain = statistics.median(o / c for o, c in zip(
                        times[f"{mode} {other}"], times[f"{mode} compiled"], strict=True))
                    print(f"compiled / {other} {mode:<12} {gain:.3f}x faster (median of "
                          "paired rounds)")
            added = {name: [(d - n) / packets * 1e6 for d, n in zip(
                times[f"detection {name}"], times[f"--no-detect {name}"], strict=True)]
                for name in built}
            for name in built:
                print(f"detection adds, {name:<9} {statistics.median(added[name]):6.2f} µs "
                      "per packet (detection run less --no-detect, median of rounds)")
            gain = statistics.median(p / c if c > 0 else float("inf") for p, c in zip(
                added["pure"], added["compiled"], strict=True))
            print(f"detection's own cost, compiled / pure: {gain:.2f}x faster "
                  "(median of paired rounds)")
        if not args.no_profile:
            print_profile(replay_args, packets, median)
    return 0


def print_profile(replay_args: dict[str, list[str]], packets: int,
                  median: dict[str, float]) -> None:
    """One in-process replay per configuration with stage clocks, as a table."""
    rows = {}
    for name, argv in replay_args.items():
        rows[name] = profile_replay(argv, packets)
    print("\nper-stage profile, microseconds per packet (one in-process run each; "
          "the stage clocks' own cost taken off)")
    print(f"{'stage':<12}" + "".join(f"{name:>22}" for name in rows))
    for stage in (*STAGES, "other"):
        print(f"{stage:<12}" + "".join(f"{per[stage]:>22.2f}" for per, _, _ in rows.values()))
    print(f"{'profiled':<12}" + "".join(f"{wall:>22.2f}" for _, wall, _ in rows.values()))
    print(f"{'unprofiled':<12}" + "".join(f"{median[n] / packets * 1e6:>22.2f}" for n in rows)
          + "  (median wall of the timed runs, process start included)")
    print("(setup: configuration and rule packs, once a run; other: the replay loop and "
          "what no stage covers)")
    unmeasured = sorted({u for _, _, missed in rows.values() for u in missed})
    if unmeasured:
        print("not measured (compiled; their time is in the calling stage): "
              + ", ".join(unmeasured))


if __name__ == "__main__":
    sys.exit(main())
