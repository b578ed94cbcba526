"""The flood and replay state: what counts as a retry, and every cap, tested past its limit.

Events are the parser's own types, built here so each limit can be crossed by
thousands of distinct senders without a capture of that size. The traffic
tests (test_detection_floods.py) cover the same rules on real stacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.dnp3.events import (
    DNP3Anomaly,
    DNP3AnomalyEvent,
    DNP3Request,
    DNP3Unsolicited,
    ObjectHeader,
)
from mamori.parsers.modbus.events import ModbusRequest
from mamori.parsers.modbus.pdu import WriteSingleRegister
from mamori.parsers.stream import Direction, FlowId, Transport
from mamori.sensor import config as cfg
from mamori.sensor.detection import DerivedKind, Detector, Inventory, load_rules
from mamori.sensor.detection.floods import FloodWatch
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import build_inventory, set_names

RULES = load_rules([SHIPPED_RULES], set_names())
FULL = "mamori.health.detection_state_full"
SERVER = "10.0.0.5"
CLASS0 = (ObjectHeader(60, 1, 6, None, None, None, 0),)


def _flow(client: str = "10.0.0.9", port: int = 40000) -> FlowId:
    return FlowId(Transport.TCP, client, port, SERVER, 20000)


def _req(ts: float, seq: int, fc: int = 1, objects: tuple[ObjectHeader, ...] = CLASS0,
         flow: FlowId | None = None, link: tuple[int, int] = (1, 1024),
         paired: int | None = None, uns: bool = False) -> DNP3Request:
    control = 0xC0 | (0x10 if uns else 0) | seq
    return DNP3Request(ts, flow or _flow(), Direction.TO_SERVER, link[0], link[1], control,
                       seq, fc, None, objects, None, paired)


def _kinds(found: list[Any] | None) -> list[DerivedKind]:
    return [d.kind for d in found or ()]


def _range(start: int) -> tuple[ObjectHeader, ...]:
    return (ObjectHeader(30, 1, 1, start, start, 1, 0),)


def test_a_retry_a_next_request_and_a_jump_forward_are_quiet() -> None:
    watch = FloodWatch()
    assert watch.observe(_req(0.0, 3)) is None
    assert watch.observe(_req(0.5, 3)) is None  # the same request again: a retry
    assert watch.observe(_req(1.0, 4)) is None
    assert watch.observe(_req(2.0, 7)) is None  # requests the sensor missed
    assert watch.observe(_req(3.0, 8, fc=32)) is None  # Secure Authentication reply
    assert watch.observe(_req(3.5, 8)) is None  # ... keeps the number; this is the next


def test_reuse_and_going_back_are_found_and_a_gap_forgets() -> None:
    watch = FloodWatch()
    watch.observe(_req(0.0, 3))
    assert _kinds(watch.observe(_req(1.0, 3, objects=_range(1)))) == [
        DerivedKind.SEQUENCE_ANOMALY]
    assert _kinds(watch.observe(_req(2.0, 15, objects=_range(2)))) == [  # 3 -> 15: back 4
        DerivedKind.SEQUENCE_ANOMALY]
    watch.observe(DNP3AnomalyEvent(2.5, _flow(), Direction.TO_SERVER, DNP3Anomaly.GAP))
    assert watch.observe(_req(3.0, 9, objects=_range(3))) is None  # lost bytes: anything


def test_a_poll_repeats_its_fingerprint_every_sixteen_without_a_finding() -> None:
    watch = FloodWatch()
    for i in range(64):
        assert watch.observe(_req(float(i), i % 16)) is None
    # the same requests from another connection of the same host: a restarted master
    other = _flow(port=40001)
    for i in range(16):
        assert watch.observe(_req(100.0 + i, i, flow=other)) is None
    # ... and from another host: a replay, every one
    intruder = _flow("10.0.0.66")
    found = [watch.observe(_req(200.0 + i, i, flow=intruder)) for i in range(16)]
    assert all(_kinds(f) == [DerivedKind.FRAGMENT_REPLAY] for f in found)


def test_an_old_request_with_its_old_number_in_one_connection_is_a_session_replay() -> None:
    watch = FloodWatch()
    for i in range(6):
        watch.observe(_req(float(i), i, objects=_range(i)))
    assert _kinds(watch.observe(_req(10.0, 2, objects=_range(2)))) == [
        DerivedKind.SESSION_REPLAY]


def test_a_confirm_of_nothing_only_after_a_response_asked_for_one() -> None:
    watch = FloodWatch()
    assert watch.observe(_req(0.0, 4, fc=0)) is None  # picked up mid-stream: say nothing
    flow = _flow()
    unsolicited = DNP3Unsolicited(1.0, flow, Direction.TO_CLIENT, 1024, 1, 0xF0 | 2, 2, 130,
                                  0, ())
    watch.observe(unsolicited)
    assert watch.observe(_req(1.1, 2, fc=0, paired=130, uns=True)) is None  # matched
    assert _kinds(watch.observe(_req(1.2, 5, fc=0))) == [DerivedKind.CONFIRM_UNMATCHED]


def _write(ts: float, client: str, value: int, fc: int = 6) -> ModbusRequest:
    flow = FlowId(Transport.TCP, client, 40000, SERVER, 502)
    return ModbusRequest(ts, flow, 1, 1, fc, None, 20, 1, WriteSingleRegister(20, value))


def test_identical_writes_need_no_read_between() -> None:
    inventory = Inventory()

    def found(ev: ModbusRequest) -> list[DerivedKind]:
        return [k for k in _kinds(inventory.observe(ev)) if k is not DerivedKind.NEW_UNIT]

    assert found(_write(0.0, "10.0.0.9", 7)) == []
    assert found(_write(0.1, "10.0.0.9", 7)) == [DerivedKind.IDENTICAL_WRITE]
    assert found(_write(0.2, "10.0.0.9", 8)) == []  # another value
    read = ModbusRequest(0.3, FlowId(Transport.TCP, "10.0.0.9", 40000, SERVER, 502), 2, 1,
                         3, None, 0, 10, WriteSingleRegister(0, 0))
    assert found(read) == []
    assert found(_write(0.4, "10.0.0.9", 8)) == []  # a read between: a poll cycle
    assert found(_write(0.5, "10.0.0.9", 8)) == [DerivedKind.IDENTICAL_WRITE]


# ---------------------------------------------------------------- caps


def _fulls(detector: Detector) -> list[Any]:
    return [a for a in detector.alerts() if a.rule == FULL]


def test_connections_past_the_cap_are_forgotten_and_said_once_an_hour() -> None:
    detector = Detector(RULES, max_state=16)
    detector.inventory.freeze()
    for i in range(1000):  # a thousand connections, each one request
        detector.process([_req(float(i) / 100, i % 16, flow=_flow(port=10000 + i))])
    assert detector.state_sizes()["flood_state"] <= 16
    assert detector.evictions()["DNP3 request sequences"] >= 1000 - 16
    (full,) = _fulls(detector)
    assert "DNP3 request sequences" in full.evidence["detail"]
    for i in range(100):  # an hour later, still overflowing: said again
        detector.process([_req(4000.0 + i, i % 16, flow=_flow(port=20000 + i))])
    assert [a.count for a in _fulls(detector)] == [1, 1]


def test_fingerprints_past_the_cap_forget_the_oldest_and_say_so() -> None:
    watch = FloodWatch(fingerprints=32)
    for i in range(100):  # a hundred distinct requests of one master
        watch.observe(_req(float(i), i % 16, objects=_range(i)))
    assert watch.fingerprints_evicted == 100 - 32
    intruder = _flow("10.0.0.66")
    forgotten = watch.observe(_req(200.0, 0, objects=_range(0), flow=intruder))
    assert DerivedKind.FRAGMENT_REPLAY not in _kinds(forgotten)  # the limit: not seen
    recent = watch.observe(_req(201.0, 99 % 16, objects=_range(99), flow=intruder))
    assert _kinds(recent) == [DerivedKind.FRAGMENT_REPLAY]


def test_the_fingerprint_cap_is_reported() -> None:
    watch = FloodWatch(fingerprints=4)
    found = [watch.observe(_req(float(i), i, objects=_range(i))) for i in range(5)]
    assert _kinds(found[3]) == [] and _kinds(found[4]) == [DerivedKind.DETECTION_STATE_FULL]
    assert found[4] is not None
    assert "fingerprints per association" in found[4][0].detail


def test_link_pairs_per_connection_are_capped() -> None:
    watch = FloodWatch()
    for link in range(40):
        watch.observe(_req(float(link), 0, link=(link, 1024)))
    assert watch.links_ignored == 40 - 16
    assert watch.evicted["DNP3 link pairs per connection"] == 24


def test_write_runs_and_request_rates_are_bounded_with_the_pairs() -> None:
    detector = Detector(RULES, max_state=16, inventory=Inventory(max_assets=16))
    for i in range(2000):  # two thousand hosts, each two identical writes
        client = f"10.1.{i // 250}.{i % 250}"
        detector.process([_write(i / 1000, client, 1), _write(i / 1000, client, 1)])
    sizes = detector.state_sizes()
    assert sizes["pairs"] <= 16 and sizes["flood_state"] == 0
    assert detector.evictions()["inventory pairs"] >= 2000 - 16


def test_a_learned_request_rate_survives_export_and_import() -> None:
    learning = Inventory(request_window=1.0, request_ceiling=100)
    flow = FlowId(Transport.TCP, "10.0.0.9", 40000, SERVER, 502)
    for i in range(50):  # 10 a second for 5 s: peak 10
        learning.observe(ModbusRequest(i / 10, flow, i, 1, 3, None, 0, 10,
                                       WriteSingleRegister(0, 0)))
    learning.freeze(5.0)
    doc = learning.export()
    (pair,) = doc["pairs"]
    assert pair["rate"] == {"peak": 10, "windows": 4}
    enforcing = Inventory(request_window=1.0, request_ceiling=100)
    enforcing.import_baseline(doc)
    found = []
    for i in range(60):  # 60 in one second: past 4 x 10, under the ceiling
        found += enforcing.observe(ModbusRequest(100 + i / 100, flow, i, 1, 3, None, 0, 10,
                                                 WriteSingleRegister(0, 0))) or []
    floods = [d for d in found if d.kind is DerivedKind.REQUEST_FLOOD]
    assert len(floods) == 1 and "learned peak 10" in floods[0].detail


def test_the_request_keys_come_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "mamori.toml"
    path.write_text("[detection]\nrequest_window = \"2s\"\nrequest_ceiling = 30\n"
                    "request_factor = 2.5\n", encoding="utf-8")
    inventory = build_inventory(cfg.load(path))
    assert (inventory.request_window, inventory.request_ceiling,
            inventory.request_factor) == (2.0, 30, 2.5)


@pytest.mark.parametrize(("line", "words"), [
    ("request_ceiling = 0", "out of range"),
    ("request_factor = 0.5", "not a number from 1"),
    ("request_factor = true", "not a number from 1"),
    ("request_window = 0", "longer than 0 s"),
])
def test_bad_request_keys_name_file_line_and_key(tmp_path: Path, line: str, words: str
                                                 ) -> None:
    path = tmp_path / "mamori.toml"
    path.write_text(f"[detection]\n{line}\n", encoding="utf-8")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    key = line.split(" =")[0]
    assert (err.value.line, err.value.key) == (2, f"[detection] {key}")
    assert words in str(err.value) and str(err.value).startswith(f"{path}:")


def test_a_backup_master_in_allowed_masters_is_no_replay() -> None:
    """Two masters sharing a link address (a hot standby that polls too) send the same
    requests; the standby, declared, is quiet, an undeclared host is not."""
    def run(sets: dict[str, list[str]]) -> list[str]:
        detector = Detector(RULES, sets=sets)
        for i in range(16):
            detector.process([_req(float(i), i)])
        for i in range(16):
            detector.process([_req(100.0 + i, i, flow=_flow("10.0.0.10"))])
        return [a.rule for a in detector.alerts() if a.rule.startswith("mamori.dnp3.")
                and "replay" in a.rule]
    assert run({}) == ["mamori.dnp3.request_replay"]
    assert run({"allowed_masters": ["10.0.0.10/32"]}) == []
