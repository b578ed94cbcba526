"""Engine behaviour: aggregation, thresholds, clock-driven checks, baseline files, journald."""

from __future__ import annotations

import time

from mamori.parsers.alerts import Severity
from mamori.parsers.modbus.events import ModbusRequest
from mamori.parsers.modbus.pdu import ReadRequest, WriteSingleRegister
from mamori.parsers.stream import FlowId, Transport
from mamori.sensor.alerting.journald import PRIORITY, JournaldAlertSink, fields, message_id
from mamori.sensor.detection import Detector, Inventory, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names

RULES = load_rules([SHIPPED_RULES], set_names())
FLOW = FlowId(Transport.TCP, "10.9.9.9", 40000, "10.0.0.5", 502)


def write(ts: float, value: int = 7, unit: int = 1, address: int = 10) -> ModbusRequest:
    return ModbusRequest(ts, FLOW, 1, unit, 6, None, address, 1,
                         WriteSingleRegister(address, value))


def read(ts: float, unit: int = 1, address: int = 0) -> ModbusRequest:
    return ModbusRequest(ts, FLOW, 1, unit, 3, None, address, 10, ReadRequest(address, 10))


def test_storm_of_100k_looping_writes_is_one_alert() -> None:
    detector = Detector(RULES, sets={"allowed_masters": ["10.0.0.1"]})
    detector.inventory.freeze()  # enforcing, and 10.9.9.9 is nobody's master
    pdu = WriteSingleRegister(10, 7)
    events = [ModbusRequest(1000.0 + i * 0.001, FLOW, i & 0xFFFF, 1, 6, None, 10, 1, pdu)
              for i in range(100_000)]
    started = time.perf_counter()
    for i in range(0, len(events), 1000):
        detector.process(events[i:i + 1000])
    elapsed = time.perf_counter() - started
    writes = [a for a in detector.alerts() if a.rule == "mamori.modbus.unauthorised_write"]
    assert len(writes) == 1
    (alert,) = writes
    assert alert.count == 100_000
    assert alert.first_ts == 1000.0 and alert.last_ts == events[-1].ts
    assert alert.severity is Severity.HIGH and alert.precursor == "M7"
    assert "value" not in alert.evidence  # metadata only
    assert elapsed < 10


def test_dedup_window_splits_alerts() -> None:
    detector = Detector(RULES, dedup_window=60.0)
    detector.inventory.freeze()
    detector.process([write(0.0), write(30.0), write(200.0)])
    counts = [a.count for a in detector.alerts()
              if a.rule == "mamori.modbus.unauthorised_write"]
    assert counts == [2, 1]


def test_values_only_when_rule_and_site_allow() -> None:
    detector = Detector(RULES, values_allowed=True)
    detector.inventory.freeze()
    detector.process([write(0.0, value=99)])
    (alert,) = [a for a in detector.alerts() if a.rule == "mamori.modbus.unauthorised_write"]
    assert "value" not in alert.evidence  # the rule is not about a value


def test_drain_returns_changed_alerts_once() -> None:
    detector = Detector(RULES)
    detector.inventory.freeze()
    detector.process([write(0.0)])
    first = detector.drain()
    assert {a.rule for a in first} == {"mamori.modbus.unauthorised_write",
                                       "mamori.baseline.new_pair"}
    assert detector.drain() == []
    detector.process([write(1.0)])
    assert [(a.rule, a.count) for a in detector.drain()] == [
        ("mamori.modbus.unauthorised_write", 2)]


def test_silence_by_tick_and_by_packet_time() -> None:
    detector = Detector(RULES, silence_after=60.0)
    detector.process([write(0.0)])
    detector.tick(30.0)
    assert not [a for a in detector.alerts() if a.precursor == "S3"]
    detector.tick(61.0)
    (alert,) = [a for a in detector.alerts() if a.precursor == "S3"]
    assert alert.first_ts == 60.0
    detector.tick(62.0)  # still the same silence: no second alert
    assert len([a for a in detector.alerts() if a.precursor == "S3"]) == 1


def test_learning_period_ends_by_packet_time() -> None:
    inventory = Inventory(learning_period=100.0)
    detector = Detector(RULES, inventory=inventory)
    detector.process([write(0.0), write(50.0)])
    assert not inventory.enforcing
    detector.process([write(150.0)])
    assert inventory.enforcing


def test_baseline_export_import_round_trip() -> None:
    inventory = Inventory()
    detector = Detector(RULES, inventory=inventory)
    detector.process([e for t in range(20) for e in (read(float(t)), write(t + 0.5))])
    assert inventory.export()["masters"] == []  # 19 poll cycles over 19 s: not yet
    inventory.freeze()  # the operator vouches: a clean poller becomes a learned master
    doc = inventory.export()
    assert doc["masters"] == ["10.9.9.9"] and len(doc["pairs"]) == 1
    again = Inventory()
    again.import_baseline(doc)
    assert again.enforcing and again.export()["pairs"] == doc["pairs"]
    enforced = Detector(RULES, inventory=again)
    enforced.process([write(100.0), write(101.0, address=150)])
    rules = {a.rule for a in enforced.alerts()}
    assert "mamori.modbus.write_outside_range" in rules  # M9
    assert "mamori.baseline.address_range" in rules  # B3
    assert "mamori.modbus.unauthorised_write" not in rules  # a learned master


def test_bad_baseline_file_is_refused() -> None:
    import pytest

    from mamori.sensor.detection import BaselineError
    with pytest.raises(BaselineError, match="format"):
        Inventory().import_baseline({"format": "other"})
    doc = Inventory().export()
    del doc["pairs"]
    with pytest.raises(BaselineError, match="pairs"):
        Inventory().import_baseline(doc)


def test_journald_fields() -> None:
    detector = Detector(RULES)
    detector.inventory.freeze()
    sent: list[dict[str, str]] = []
    detector.on_alert = JournaldAlertSink(lambda **kw: sent.append(kw))
    detector.process([write(0.0), write(1.0)])
    assert len(sent) == len(detector.alerts())
    (m7,) = [s for s in sent if s["MAMORI_RULE"] == "mamori.modbus.unauthorised_write"]
    assert m7["MESSAGE_ID"] == message_id("mamori.modbus.unauthorised_write")
    assert len(m7["MESSAGE_ID"]) == 32 and m7["PRIORITY"] == "3"
    assert m7["MAMORI_SRC"] == "10.9.9.9" and m7["MAMORI_DPORT"] == "502"
    assert m7["MAMORI_ATTACK"] == "T0855,T0836,T0831"
    assert PRIORITY[Severity.CRITICAL] == 2
    assert fields(detector.alerts()[0])["SYSLOG_IDENTIFIER"] == "mamori"


def test_journald_real_binding_accepts_fields() -> None:
    import pytest
    from systemd import journal
    detector = Detector(RULES)
    detector.inventory.freeze()
    detector.process([write(0.0)])
    # sendv returns None, or raises if a field is malformed; no journald is fine
    try:
        journal.send(**fields(detector.alerts()[0]))
    except OSError:
        pytest.skip("no journald socket here")


def _writer(ip: str, ts: float, server: str = "10.0.0.5") -> ModbusRequest:
    flow = FlowId(Transport.TCP, ip, 40000, server, 502)
    return ModbusRequest(ts, flow, 1, 1, 6, None, 10, 1, WriteSingleRegister(10, 7))


def test_held_start_up_writes_past_every_bound_become_alerts_not_losses() -> None:
    """While learning, writes from clients that do not poll are held: more holding
    clients than ``max_state`` release the oldest early, one client holding more
    than _HELD_PER_HOST alert keys releases them at once; nothing is dropped."""
    from mamori.sensor.detection.engine import _HELD_PER_HOST

    detector = Detector(RULES, max_state=16, storm_max_alerts=10_000)  # no storm folding
    hosts = [f"10.7.0.{i}" for i in range(1, 41)]  # 40 holding clients, table of 16
    detector.process([_writer(ip, float(i)) for i, ip in enumerate(hosts)])
    assert detector.state_sizes()["held"] <= 16
    released = {a.src for a in detector.drain() if a.rule == "mamori.modbus.unauthorised_write"}
    assert released == set(hosts[:40 - 16])  # the oldest, before their time was up
    servers = _HELD_PER_HOST + 10  # one client writing to more servers than it may hold
    detector.process([_writer("10.8.0.1", 100.0 + n * 0.001, f"10.1.{n >> 8}.{n & 255}")
                      for n in range(servers)])
    wide = [a for a in detector.drain() if a.src == "10.8.0.1"
            and a.rule == "mamori.modbus.unauthorised_write"]
    # released at the first key past the limit (then refused: the rest alert directly)
    assert len(wide) == servers and "10.8.0.1" not in detector._held
    assert detector.inventory.assets["10.8.0.1"].reason.startswith(
        "mamori.modbus.unauthorised_write")
    everyone = {a.src for a in detector.alerts() if a.rule == "mamori.modbus.unauthorised_write"}
    assert everyone == {*hosts, "10.8.0.1"}  # the end of the run releases the rest
    assert detector.stats.excused == 0 and detector.stats.held == 40 + _HELD_PER_HOST + 1


def test_a_poller_s_held_writes_are_excused() -> None:
    detector = Detector(RULES)
    detector.process([write(0.0)])  # a write first: held
    assert detector.state_sizes()["held"] == 1
    detector.process([read(float(t)) for t in range(1, 6)])  # then a regular read cycle
    assert detector.state_sizes()["held"] == 0 and detector.stats.excused == 1
    assert [a for a in detector.alerts() if a.severity >= Severity.MEDIUM] == []
    assert detector.inventory.assets["10.9.9.9"].excused == 1
