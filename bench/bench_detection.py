"""Detection alone: CPU microseconds per packet of the detector over a replay's events.

``bench_replay.py`` times whole replays, in which detection is the difference of two
noisy wall times. This replays the capture once, keeping every batch of events the
session hands the detector and every flush (a drain), then runs fresh detectors,
built as ``mamori replay`` builds them, over exactly that sequence several times and
reports the thread CPU time of each run: on a shared machine, time spent waiting for
a core does not count, so runs of two trees compare even under load. A digest of the
alerts shows both trees said the same.

Which tree it measures is whichever ``PYTHONPATH`` names first (pure or compiled),
so a before/after pair alternates runs of two trees::

    PYTHONPATH=build/compiled/lib.linux-x86_64-cpython-311 \\
        .venv/bin/python bench/bench_detection.py modbus
    .venv/bin/python bench/bench_detection.py dnp3 --rounds 5

``modbus`` is generated/modbus_big.pcap (port 15020), ``dnp3`` yadnp3.pcap looped to
100,000 packets as ``bench_replay.py`` loops it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # for ``bench``; last, so a tree on PYTHONPATH is the one timed

# bound before bench_replay puts the checkout first on sys.path: the tree it binds
# (PYTHONPATH's, else the installed one) is where every mamori module comes from
import mamori  # noqa: E402, F401
from bench.bench_replay import CORPUS, looped, packet_count  # noqa: E402


def record(argv: list[str]) -> tuple[list[list[Any] | None], Any]:
    """Replay ``argv``; (the detector's batches in order, ``None`` for each flush;
    the parsed arguments, to build more detectors from)."""
    from mamori.sensor.cli import program
    from mamori.sensor.detection import cli, session

    seq: list[list[Any] | None] = []
    held: dict[str, Any] = {}
    sinks, flush = session.Session._sinks, session.Session.flush
    from_args = cli.ReplayDetection.from_args.__func__  # type: ignore[attr-defined]

    def recording_sinks(self: session.Session) -> Callable[[list[Any]], None]:
        fan = sinks(self)

        def keep(events: list[Any]) -> None:
            seq.append(list(events))
            fan(events)
        return keep

    def recording_flush(self: session.Session, now: float) -> None:
        seq.append(None)
        flush(self, now)

    def keeping_args(cls: type[cli.ReplayDetection], args: Any) -> Any:
        held["args"] = args
        return from_args(cls, args)

    session.Session._sinks = recording_sinks  # type: ignore[method-assign]
    session.Session.flush = recording_flush  # type: ignore[method-assign]
    cli.ReplayDetection.from_args = classmethod(keeping_args)  # type: ignore[method-assign,assignment]
    try:
        with contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            program(["replay", "--no-progress", *argv])
    finally:
        session.Session._sinks = sinks  # type: ignore[method-assign]
        session.Session.flush = flush  # type: ignore[method-assign]
        cli.ReplayDetection.from_args = classmethod(from_args)  # type: ignore[method-assign,assignment]
    return seq, held["args"]


def run(seq: list[list[Any] | None], args: Any) -> tuple[float, str]:
    """One fresh detector over ``seq``: (CPU seconds, digest of its alerts)."""
    from mamori.sensor.detection.cli import ReplayDetection

    made = ReplayDetection.from_args(args)
    assert made is not None
    detector = made.detector
    process, drain = detector.process, detector.drain
    start = time.thread_time()
    for batch in seq:
        if batch is None:
            drain()
        else:
            process(batch)
    spent = time.thread_time() - start
    digest = hashlib.sha1(repr(detector.alerts()).encode()).hexdigest()[:12]
    return spent, digest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("proto", choices=("modbus", "dnp3"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from mamori.sensor.detection import engine

    with tempfile.TemporaryDirectory() as tmp:
        if args.proto == "modbus":
            capture, ports = CORPUS / "generated" / "modbus_big.pcap", ["--modbus-ports", "15020"]
        else:
            capture = looped(CORPUS / "generated" / "yadnp3.pcap", 100_000, Path(tmp))
            ports = ["--dnp3-ports", "20030"]
        packets = packet_count(capture)
        seq, parsed = record([*ports, str(capture)])
        with contextlib.redirect_stderr(io.StringIO()):  # the tables' overflow warnings
            runs = [run(seq, parsed) for _ in range(args.rounds)]
    events = sum(len(b) for b in seq if b is not None)
    kind = "pure" if engine.__file__.endswith(".py") else "compiled"
    print(f"{capture.name}: {packets} packets, {events} events, {kind}; alerts {runs[0][1]}")
    print("detection, CPU µs per packet: "
          + " ".join(f"{t / packets * 1e6:.2f}" for t, _ in runs)
          + f" (best {min(t for t, _ in runs) / packets * 1e6:.2f})")
    return 0 if len({d for _, d in runs}) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
