"""What serving metrics costs: the event counter on the hot path, and one scrape.

1. The only counting added for the endpoint is ``EventKinds.consume`` (one
   ``Counter.update(map(type, events))`` per batch). A public Modbus capture, looped,
   goes through the pipeline alone and through the pipeline plus the counter, in the
   same run; the ratio of the two is the overhead.
2. A scrape of a store of ``--alerts`` alerts (a GROUP BY over the alerts table on a
   read-only connection), against a bare ``SELECT COUNT(*)`` of the same table.

    .venv/bin/python bench/bench_metrics.py [--capture FILE] [--loops 20] [--alerts 100000]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from mamori.parsers.alerts import Alert, Severity  # noqa: E402
from mamori.parsers.events import Event  # noqa: E402
from mamori.parsers.pipeline import Pipeline  # noqa: E402
from mamori.sensor.alerting.store import Store  # noqa: E402
from mamori.sensor.capture.pcapfile import read_capture_tuples  # noqa: E402
from mamori.sensor.metrics.sensor_metrics import EventKinds, store_metrics  # noqa: E402

CAPTURE = PROJECT.parent / "shared" / "corpus" / "suricata-verify" / "tests" / "modbus" / \
    "modbus.pcap"


def _run(frames: list[tuple[float, int, bytes]], loops: int, count: bool) -> float:
    kinds = EventKinds()
    started = time.perf_counter()
    for _ in range(loops):
        pipeline = Pipeline()
        packet = pipeline.packet
        batch: list[Event] = []
        for ts, linktype, data in frames:
            events = packet(ts, linktype, data)
            if events:
                batch.extend(events)
            if len(batch) >= 64:  # the daemon hands over what one ring read gave
                if count:
                    kinds.consume(batch)
                batch = []
        if count and batch:
            kinds.consume(batch)
    return time.perf_counter() - started


def _store(path: Path, n: int) -> None:
    with Store(path) as store:
        batch = []
        for i in range(n):
            batch.append(Alert(rule=f"r{i % 40}", precursor=f"M{i % 14 + 1}",
                               severity=Severity(i % 5), attack=(), title="t",
                               proto="modbus", first_ts=float(i), last_ts=float(i),
                               src=f"10.0.{i % 250}.{i % 200}", evidence={}))
            if len(batch) == 5000:
                store.save_alerts(batch, forward=False)
                batch = []
        store.save_alerts(batch, forward=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture", type=Path, default=CAPTURE)
    ap.add_argument("--loops", type=int, default=20)
    ap.add_argument("--alerts", type=int, default=100_000)
    args = ap.parse_args()
    frames = [(ts, lt, data) for ts, lt, data, _ in read_capture_tuples(args.capture)]
    plain = min(_run(frames, args.loops, False) for _ in range(3))
    counted = min(_run(frames, args.loops, True) for _ in range(3))
    n = len(frames) * args.loops
    print(f"hot path: {n} frames, pipeline {plain / n * 1e6:.2f} us/frame, with the event "
          f"counter {counted / n * 1e6:.2f} us/frame: ratio {counted / plain:.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "mamori.db"
        _store(db, args.alerts)
        started = time.perf_counter()
        list(store_metrics(db))
        scrape = time.perf_counter() - started
        conn = sqlite3.connect(db)
        started = time.perf_counter()
        conn.execute("SELECT COUNT(*) FROM alerts").fetchone()
        floor = time.perf_counter() - started
        conn.close()
    print(f"scrape of a store of {args.alerts} alerts: {scrape * 1e3:.1f} ms "
          f"(a bare COUNT(*): {floor * 1e3:.1f} ms, ratio {scrape / floor:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
