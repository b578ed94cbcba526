"""Alerts the shipped rules raise on the benign corpus captures, by rule and severity.

The acceptance for a new rule is "no new alert at medium or above on benign
traffic", measured before and after the change on the same captures, the same
way the corpus test judges them (learn over the capture, freeze, run it again)::

    .venv/bin/python bench/benign_alerts.py                 # this tree
    PYTHONPATH=OLD_TREE .venv/bin/python bench/benign_alerts.py   # another checkout

``--all`` replays every capture of the corpus (learning only) instead, to see
where the rules fire at all. Only APIs older than this script are used, so it
runs against earlier checkouts too.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from mamori.parsers.alerts import Severity
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.detection import Detector, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
BENIGN = ("ct-samples/Protocols/Modbus/ModbusTCP/Plant1_ModbusTCP.pcap",
          "zeek/Traces/modbus/modbusBig.pcap", "zeek/Traces/modbus/modbusSmall.pcap",
          "generated/yadnp3.pcap")  # tests/sensor/test_detection_corpus.py BENIGN
PORTS = PipelineConfig(modbus_ports=frozenset({502, 15020}),
                       dnp3_ports=frozenset({20000, 20030}))


def alerts(path: Path, learn_then_enforce: bool) -> Counter[tuple[str, str]]:
    rules = load_rules([SHIPPED_RULES], set_names())
    first = Detector(rules)
    replay_files([path], PORTS, extra_sinks=[first.process])
    found = first.alerts()
    if learn_then_enforce:
        first.inventory.freeze()
        second = Detector(rules, inventory=first.inventory)
        replay_files([path], PORTS, extra_sinks=[second.process])
        found += second.alerts()
    return Counter((a.rule, a.severity.name.lower()) for a in found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every corpus capture, learning")
    args = parser.parse_args(argv)
    if args.all:
        captures = sorted(p for p in CORPUS.rglob("*") if p.suffix in {".pcap", ".pcapng"})
    else:
        captures = [CORPUS / c for c in BENIGN]
    total: Counter[tuple[str, str]] = Counter()
    loud = 0
    for path in captures:
        try:
            found = alerts(path, learn_then_enforce=not args.all)
        except Exception as err:  # a damaged capture is reported, the run goes on
            print(f"{path.relative_to(CORPUS)}: {err}", file=sys.stderr)
            continue
        total.update(found)
        medium = sum(n for (_, sev), n in found.items() if Severity[sev.upper()] >= Severity.MEDIUM)
        loud += medium
        if not args.all or medium:
            print(f"{path.relative_to(CORPUS)}: {sum(found.values())} alerts, {medium} medium+")
    print(f"{len(captures)} captures, {sum(total.values())} alerts, {loud} medium or above")
    for (rule, sev), n in sorted(total.items()):
        print(f"  {sev:<8} {rule:<48} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
