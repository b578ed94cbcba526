"""What campaign chains and maintenance windows cost the detector, as ratios in one run.

Two event streams, built in memory (parser event classes, as the pipeline makes
them), each run twice through a ``Detector`` with the shipped rules:

* ``writes``: ``--events`` looping register writes from one workstation to one
  asset (every one an M7 occurrence), without a maintenance window and with one
  that covers them all (each occurrence asks the window).
* ``targets``: an FC 17 identification then a write to each of ``--targets``
  distinct outstations (a chain completes on each one), with the shipped chains
  and with none.

Printed: seconds per run and the ratio with / without. No assertion: a ratio to
read, not a timed test.

    .venv/bin/python bench/bench_chains.py
    .venv/bin/python bench/bench_chains.py --events 50000 --targets 5000 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mamori.parsers.modbus.events import ModbusRequest
from mamori.parsers.modbus.pdu import EmptyPdu, WriteSingleRegister
from mamori.parsers.stream import FlowId, Transport
from mamori.sensor.detection import Detector, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names
from mamori.sensor.detection.windows import v_windows

RULES = load_rules([SHIPPED_RULES], set_names())
START = 1_700_000_000.0


def _run(detector: Detector, events: list[Any]) -> float:
    detector.inventory.freeze()
    started = time.perf_counter()
    for i in range(0, len(events), 500):
        detector.process(events[i:i + 500])
    detector.alerts()
    return time.perf_counter() - started


def writes(n: int) -> dict[str, float]:
    flow = FlowId(Transport.TCP, "10.0.5.20", 40000, "10.0.0.5", 502)
    pdu = WriteSingleRegister(10, 7)
    events = [ModbusRequest(START + i * 0.001, flow, i & 0xFFFF, 1, 6, None, 10, 1, pdu)
              for i in range(n)]
    window = v_windows([{"name": "all", "weekly": "daily 00:00-24:00",
                         "workstations": ["10.0.5.20"], "assets": ["10.0.0.0/24"]}])
    plain = _run(Detector(RULES), events)
    covered = _run(Detector(RULES, windows=window), events)
    return {"without": plain, "with_window": covered, "ratio": covered / plain}


def targets(n: int) -> dict[str, float]:
    events: list[Any] = []
    for i in range(n):
        server = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        ts = START + i * 0.01
        events.append(ModbusRequest(ts, FlowId(Transport.TCP, "10.9.9.9", 40000, server, 502),
                                    1, 1, 17, None, None, None, EmptyPdu()))
        events.append(ModbusRequest(ts + 0.005,
                                    FlowId(Transport.TCP, "10.9.9.9", 40001, server, 502),
                                    2, 1, 6, None, 10, 1, WriteSingleRegister(10, 7)))
    without = _run(Detector(RULES, chains=()), events)
    detector = Detector(RULES)
    chained = _run(detector, events)
    return {"without": without, "with_chains": chained, "ratio": chained / without,
            "chains_completed": float(detector.stats.chains)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--targets", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = {"writes": writes(args.events), "targets": targets(args.targets)}
    if args.json:
        print(json.dumps(out))
        return 0
    w, t = out["writes"], out["targets"]
    print(f"{args.events} looping writes: {w['without']:.2f}s without a window, "
          f"{w['with_window']:.2f}s inside one (ratio {w['ratio']:.2f})")
    print(f"{args.targets} targets, recon then write: {t['without']:.2f}s without chains, "
          f"{t['with_chains']:.2f}s with ({t['ratio']:.2f}); "
          f"{int(t['chains_completed'])} chains completed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
