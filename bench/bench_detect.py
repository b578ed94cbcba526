"""Detection cost against decoding, on the same capture in the same run.

Decodes a capture once into the pipeline's event batches (timed: decode,
reassembly and the protocol parsers), then runs a fresh ``Detector`` with the
shipped rules over those batches (timed: rules, inventory, baseline, the flood
and replay state). Best of ``--rounds`` each; the ratio detect/decode is the
figure to compare between checkouts, since both halves see the same load::

    .venv/bin/python bench/bench_detect.py ../shared/corpus/generated/modbus_big.pcap
    PYTHONPATH=OTHER_CHECKOUT .venv/bin/python bench/bench_detect.py CAPTURE

Ports: Modbus 502 and 15020, DNP3 20000 and 20030-20034 (the corpus' own).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.detection import Detector, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names

PORTS = PipelineConfig(modbus_ports=frozenset({502, 15020}),
                       dnp3_ports=frozenset({20000, *range(20030, 20035)}))


def _collect(into: list[list[Any]]) -> Any:
    return lambda ev: into.append(list(ev)) if ev else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    rules = load_rules([SHIPPED_RULES], set_names())
    decode = detect = float("inf")
    batches: list[list[Any]] = []
    for _ in range(max(1, args.rounds)):
        batches = []
        start = time.perf_counter()
        replay_files([args.capture], PORTS, extra_sinks=[_collect(batches)])
        decode = min(decode, time.perf_counter() - start)
        detector = Detector(rules)
        start = time.perf_counter()
        for batch in batches:
            detector.process(batch)
        detect = min(detect, time.perf_counter() - start)
    events = sum(map(len, batches))
    print(f"capture  {args.capture.name}: {events} events, best of {args.rounds}")
    print(f"decode   {decode:8.3f} s")
    print(f"detect   {detect:8.3f} s  {events / detect:12,.0f} events/s")
    print(f"ratio    detect/decode {detect / decode:.3f}")


if __name__ == "__main__":
    main()
