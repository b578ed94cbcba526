"""Alerts and peak memory of ``mamori replay --store`` under a storm of distinct sources.

The capture (``tests/stormcap.py``): one legitimate master polls and writes to one
Modbus server for the learning period, then ``--sources`` distinct IPv4 hosts
each open a TCP connection to that server, send one Write Single Register and
close, 1 ms apart. Each is a rogue master (M7 unauthorised write, M8 new master,
B1 new pair) and leaves state in every per-source table.

The reference, measured in the same run: the same capture with every storm
connection sent by the learned master instead, i.e. the same number of packets,
connections and bytes from a single source. The ratio storm / reference is what
the distinct sources cost on top of the traffic itself.

Each replay runs in its own child process with the shipped rules and defaults (a
generated config sets only the learning period); its peak RSS is the child's
``ru_maxrss`` (``os.wait4``), and the alerts are read back from the store it wrote.

    .venv/bin/python bench/bench_storm.py                 # 30,000 sources
    .venv/bin/python bench/bench_storm.py --sources 5000  # a quicker look
    .venv/bin/python bench/bench_storm.py --json          # one JSON object
    .venv/bin/python bench/bench_storm.py --open          # connections never closed

``--open`` is the other shape: the storm's connections stay open, so each one is
a live flow in the pipeline's table (bounded by ``limits.max_flows``, not by the
detection limits) for the rest of the capture.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import stormcap  # noqa: E402

MAMORI = str(ROOT / ".venv" / "bin" / "mamori")
LIMIT_MB = 100.0  # issue 12: the 30,000-source storm stays under this


def replay(capture: Path, config: Path, store: Path, log: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one ``mamori replay`` in a child process."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([MAMORI, "replay", "--no-progress", "--config", str(config),
                                 "--store", str(store), str(capture)],
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"mamori replay {capture} exited {proc.returncode}:\n{log.read_text()}")
    return elapsed, usage.ru_maxrss / 1024  # kB on Linux


def stored(store: Path) -> dict[str, Any]:
    db = sqlite3.connect(store)
    try:
        rows = db.execute("SELECT rule, count(*), sum(count) FROM alerts GROUP BY rule"
                          " ORDER BY rule").fetchall()
        storms = db.execute("SELECT rule, dst, count, evidence FROM alerts"
                            " WHERE json_extract(evidence, '$.storm')").fetchall()
        assets = db.execute("SELECT count(*) FROM assets").fetchone()[0]
        pairs = db.execute("SELECT count(*) FROM pairs").fetchone()[0]
    finally:
        db.close()
    return {
        "alerts": sum(r[1] for r in rows), "occurrences": sum(r[2] for r in rows),
        "by_rule": {r[0]: {"alerts": r[1], "occurrences": r[2]} for r in rows},
        "storm_alerts": [{"rule": r, "dst": d, "count": c,
                          "sources": json.loads(e).get("sources")} for r, d, c, e in storms],
        "stored_assets": assets, "stored_pairs": pairs,
    }


def run(work: Path, name: str, sources: int, learn: float, reference: bool,
        config: Path, close: bool) -> dict[str, Any]:
    capture = work / f"{name}.pcap"
    packets = stormcap.write_pcap(capture, stormcap.storm_frames(
        sources, learn, reference=reference, close=close))
    store = work / f"{name}.db"
    elapsed, peak = replay(capture, config, store, work / f"{name}.log")
    return {"packets": packets, "bytes": capture.stat().st_size, "seconds": round(elapsed, 2),
            "peak_rss_mb": round(peak, 1), **stored(store)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=30_000)
    ap.add_argument("--learn", type=float, default=60.0, help="learning period, seconds")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--open", action="store_true", help="the storm's connections stay open")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "sensor.toml"
        config.write_text(f"[detection]\nlearning_period = {args.learn}\n", encoding="utf-8")
        close = not args.open
        storm = run(work, "storm", args.sources, args.learn, False, config, close)
        reference = run(work, "reference", args.sources, args.learn, True, config, close)
    ratio = storm["peak_rss_mb"] / reference["peak_rss_mb"]
    figures = {"sources": args.sources, "connections": "open" if args.open else "closed",
               "storm": storm, "reference": reference,
               "rss_ratio": round(ratio, 2), "limit_mb": LIMIT_MB,
               "under_limit": storm["peak_rss_mb"] < LIMIT_MB}
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"sources          {args.sources} distinct rogue masters, 1 ms apart, "
          f"connections {figures['connections']}")
    for name, fig in (("storm", storm), ("reference (one source)", reference)):
        print(f"{name}")
        print(f"  packets        {fig['packets']}  ({fig['bytes']} bytes)")
        print(f"  replay         {fig['seconds']} s")
        print(f"  peak RSS       {fig['peak_rss_mb']} MB")
        print(f"  alerts         {fig['alerts']} for {fig['occurrences']} occurrences")
        for rule, v in fig["by_rule"].items():
            print(f"    {rule:<40} alerts {v['alerts']:>6}  occurrences {v['occurrences']}")
        for s in fig["storm_alerts"]:
            print(f"    storm {s['rule']} -> {s['dst']}: x{s['count']}, {s['sources']} sources")
        print(f"  stored         {fig['stored_assets']} assets, {fig['stored_pairs']} pairs")
    print(f"RSS ratio        {ratio:.2f} (storm / reference)")
    print(f"under {LIMIT_MB:.0f} MB     {'yes' if figures['under_limit'] else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
