"""D9 against the learned unsolicited rate, and D7 Select without Operate, on opendnp3.

One capture of a real opendnp3 master and outstation. Learning: the master polls,
the outstation reports an event unsolicited about 15 times a second, and two
SELECT/OPERATE pairs succeed. Then, enforcing: the outstation reports twice as
often for a second (more than the absolute ceiling, well within four times its
learned peak), then a burst of events as fast as the stacks confirm them; the
points are then locked (the outstation answers SELECT with LOCAL) and the master
tries four SELECT/OPERATEs, of which it can send only the SELECTs.

The unsolicited window is one second here (ten by default), so the capture
takes seconds; the ceiling and the factor are the defaults.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.detection import Detector, Inventory, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names
from tests.conftest import captured_on_lo, unavailable
from tests.peers import dnp3_peer

RULES = load_rules([SHIPPED_RULES], set_names())
STORM, SBO = "mamori.dnp3.unsolicited_storm", "mamori.dnp3.select_without_operate"
WINDOW = 1.0
# rule -> (its positive, its negatives), for the coverage registry
TESTS = {
    STORM: ("test_storm_fires_on_a_burst_many_times_the_learned_rate",
            ("test_storm_quiet_on_a_learned_outstation_reporting_often",
             "test_storm_quiet_while_learning")),
    SBO: ("test_select_without_operate_fires_on_refused_selects",
          ("test_select_without_operate_quiet_on_select_and_operate",)),
}


@dataclass
class Capture:
    pcap: Path
    port: int
    learned: float  # end of learning
    doubled: tuple[float, float]  # the second at twice the learned rate
    burst: tuple[float, float]
    locked: float  # the refused SELECTs from here
    results: dict[str, list[str]]
    operated: int  # CROBs the outstation operated


def _make_traffic(tmp: Path) -> Capture:
    port = dnp3_peer.free_port()
    pcap = tmp / "dnp3.pcap"
    results: dict[str, list[str]] = {"accepted": [], "refused": []}
    with dnp3_peer.capture(pcap, port), dnp3_peer.Stacks(port) as stacks:
        stacks.integrity_poll()
        stacks.emit_events(45, gap=1 / 15)
        for index in (1, 2):
            results["accepted"].append(stacks.select_and_operate(index))
        stacks.emit_events(15, gap=1 / 15)
        time.sleep(0.3)
        learned = time.time()
        time.sleep(0.3)
        doubled = time.time()
        stacks.emit_events(30, gap=1 / 30)
        doubled_end = time.time()
        time.sleep(1.2)
        burst = time.time()
        stacks.emit_events(150, gap=0.002)
        burst_end = time.time()
        time.sleep(1.2)
        stacks.iin["refuse_select"] = True
        locked = time.time()
        for index in (1, 2, 3, 4):
            results["refused"].append(stacks.select_and_operate(index))
        with stacks.seen.lock:
            operated = len(stacks.seen.crobs)
    if pcap.stat().st_size < 1000:
        unavailable("tcpdump captured nothing on lo")
    return Capture(pcap, port, learned, (doubled, doubled_end), (burst, burst_end), locked,
                   results, operated)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    return captured_on_lo(_make_traffic, tmp_path_factory, "rates")


def _ports(port: int) -> PipelineConfig:
    return PipelineConfig(modbus_ports=frozenset(), dnp3_ports=frozenset({port}))


def _run(cap: Capture, learn_until: float | None, keep: Callable[[Any], bool] = lambda e: True
         ) -> list[Alert]:
    """Learn until ``learn_until`` then enforce (``None``: enforce an empty baseline)."""
    detector = Detector(RULES, inventory=Inventory(unsolicited_window=WINDOW))
    if learn_until is None:
        detector.inventory.freeze()
    frozen = learn_until is None

    def sink(events: list[Any]) -> None:
        nonlocal frozen
        events = [e for e in events if keep(e)]
        if not frozen and events and events[0].ts >= learn_until:
            detector.inventory.freeze(events[0].ts)
            frozen = True
        detector.process(events)

    replay_files([cap.pcap], _ports(cap.port), extra_sinks=[sink])
    return detector.alerts()


def _between(span: tuple[float, float]) -> Callable[[Any], bool]:
    return lambda e: span[0] <= e.ts <= span[1] + 0.5


def test_the_stacks_did_what_the_rules_look_for(traffic: Capture) -> None:
    assert traffic.results["accepted"] == ["SUCCESS", "SUCCESS"]
    assert len(traffic.results["refused"]) == 4  # answered (status LOCAL) ...
    assert traffic.operated == 2  # ... and never operated: only the first two were


def test_storm_fires_on_a_burst_many_times_the_learned_rate(traffic: Capture) -> None:
    storms = [a for a in _run(traffic, traffic.learned) if a.rule == STORM]
    assert storms, "no storm on the burst"
    assert all(traffic.burst[0] <= a.first_ts <= traffic.burst[1] + 0.5 for a in storms)
    (storm,) = storms
    assert storm.src == "127.0.0.1" and storm.link_src == dnp3_peer.OUTSTATION_ADDR
    assert "learned peak" in storm.evidence["detail"]


def test_storm_quiet_on_a_learned_outstation_reporting_often(traffic: Capture) -> None:
    """Twice the learned rate is more than the absolute ceiling: an outstation never
    seen reporting alerts on it, a learned one does not."""
    span = _between(traffic.doubled)
    learned = traffic.learned
    assert STORM not in {a.rule for a in _run(traffic, learned,
                                               lambda e: e.ts < learned or span(e))}
    never_seen = [a for a in _run(traffic, None, span) if a.rule == STORM]
    assert never_seen and "never seen reporting" in never_seen[0].evidence["detail"]


def test_storm_quiet_while_learning(traffic: Capture) -> None:
    assert STORM not in {a.rule for a in _run(traffic, traffic.learned,
                                               lambda e: e.ts < traffic.learned)}


def test_select_without_operate_fires_on_refused_selects(traffic: Capture) -> None:
    alerts = [a for a in _run(traffic, traffic.learned) if a.rule == SBO]
    assert alerts, "no D7 on four SELECTs without OPERATE"
    assert all(a.first_ts >= traffic.locked for a in alerts)
    assert {(a.src, a.link_src, a.link_dst) for a in alerts} == {
        ("127.0.0.1", dnp3_peer.MASTER_ADDR, dnp3_peer.OUTSTATION_ADDR)}


def test_select_without_operate_quiet_on_select_and_operate(traffic: Capture) -> None:
    before = [a for a in _run(traffic, traffic.learned, lambda e: e.ts < traffic.locked)
              if a.rule in (SBO, "mamori.dnp3.operate_without_select")]
    assert before == []
