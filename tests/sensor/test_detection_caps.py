"""The detector's alert tables stay capped over a daemon's years, and say so when a cap bites.

Three tables hold alerts: the open aggregates an occurrence may still join
(``max_open``), what changed since the last drain, and the drained history kept
for ``alerts()`` (``max_history``); the store maps aggregates to rows
(``Store.max_ids``). Each test goes many times past a cap and checks the count,
the S7 health finding (or, for the tables that blind nothing, that none is
raised), and that a run which stays below the cap gives exactly what the default
caps give.
"""

from __future__ import annotations

from pathlib import Path

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.modbus.events import ModbusRequest
from mamori.parsers.modbus.pdu import WriteSingleRegister
from mamori.parsers.stream import FlowId, Transport
from mamori.sensor.alerting.store import MAX_IDS, Store
from mamori.sensor.detection import Detector, load_rules
from mamori.sensor.detection.derived import DerivedKind
from mamori.sensor.detection.engine import DEFAULT_MAX_HISTORY, DEFAULT_MAX_OPEN
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names

RULES = load_rules([SHIPPED_RULES], set_names())
WRITE = "mamori.modbus.unauthorised_write"
FULL = "mamori.health.detection_state_full"
CAP = 16
SOURCES = 25 * CAP  # each source opens two aggregates (the write and its new pair)


def write(ts: float, i: int) -> ModbusRequest:
    flow = FlowId(Transport.TCP, f"10.7.{i >> 8}.{i & 0xFF}", 40000, "10.0.0.5", 502)
    return ModbusRequest(ts, flow, 1, 1, 6, None, 10, 1, WriteSingleRegister(10, 7))


def detector(max_open: int = DEFAULT_MAX_OPEN,
             max_history: int = DEFAULT_MAX_HISTORY) -> Detector:
    d = Detector(RULES, storm_max_alerts=1_000_000,  # no storm folding here
                 max_open=max_open, max_history=max_history)
    d.inventory.freeze()
    return d


def run(d: Detector, rounds: int = 1, drain: bool = False) -> tuple[list[Alert], int]:
    """Every source writes once per round (0.01 s apart); returns what was drained and
    the largest open table seen."""
    drained: list[Alert] = []
    peak = 0
    for r in range(rounds):
        for i in range(SOURCES):
            d.process([write(r * 10.0 + i * 0.01, i)])
            peak = max(peak, d.state_sizes()["open_aggregates"])
            if drain and i % 10 == 9:
                drained += d.drain()
    d.tick(rounds * 10.0 + 100.0)  # past the next ageing pass: the caps are looked at
    drained += d.drain()
    return drained, peak


def s7(alerts: list[Alert], table: str) -> list[Alert]:
    return [a for a in alerts if a.rule == FULL and f"'{table}'" in a.evidence["detail"]]


def test_open_aggregates_past_the_cap_are_forgotten_counted_and_reported() -> None:
    d = detector(max_open=CAP)
    drained, peak = run(d, rounds=2)
    assert peak <= CAP
    evicted = d.evictions()["open alert aggregates"]
    opened = len(d.alerts())  # none aged out yet (the dedup window is 300 s)
    assert evicted == opened - d.state_sizes()["open_aggregates"] > 2 * SOURCES
    (full,) = s7(d.alerts(), "open alert aggregates")
    assert full.precursor == "S7" and "forgotten" in full.evidence["detail"]
    # what the cap costs: an occurrence of a forgotten aggregate opens a new alert
    writes = [a for a in d.alerts() if a.rule == WRITE]
    assert len(writes) == 2 * SOURCES and {a.count for a in writes} == {1}
    assert len({a.id for a in drained}) == len(d.alerts())  # nothing raised went unwritten


def test_below_the_open_cap_nothing_changes() -> None:
    default, _ = run(detector(), rounds=2)
    exact = detector(max_open=2 * SOURCES)  # exactly what two rounds keep open
    capped, peak = run(exact, rounds=2)
    assert peak == 2 * SOURCES and capped == default
    writes = [a for a in capped if a.rule == WRITE]
    assert len(writes) == SOURCES and {a.count for a in writes} == {2}  # joined, not split
    assert "open alert aggregates" not in exact.evictions() and not s7(capped, "open")
    assert DEFAULT_MAX_OPEN >= 2 * SOURCES


def test_drained_history_is_capped_quietly_and_drain_returns_only_what_changed() -> None:
    d = detector(max_history=CAP)
    drained, _ = run(d, drain=True)
    assert len(drained) == len({a.id for a in drained}) == 2 * SOURCES
    assert d.drain() == [] and d.state_sizes()["undrained"] == 0
    kept = d.alerts()
    assert [a.id for a in kept] == sorted(a.id for a in drained)[-CAP:]  # the newest
    assert d.evictions()["alert history"] == 2 * SOURCES - CAP
    assert not [a for a in kept if a.rule == FULL]  # forgotten drained alerts are stored
    d.process([write(15.0, 3)])  # one aggregate joined again, long after it was forgotten
    assert d.state_sizes()["undrained"] == 1
    (again,) = [a for a in d.drain() if a.rule == WRITE]
    assert again.count == 2 and again.id == next(
        a.id for a in drained if a.rule == WRITE and a.src == "10.7.0.3")


def test_below_the_history_cap_alerts_are_all_kept() -> None:
    d = detector(max_history=2 * SOURCES)
    drained, _ = run(d, drain=True)
    assert d.alerts() == sorted(drained, key=lambda a: a.id) == run(detector())[0]
    assert "alert history" not in d.evictions()


def test_s7_for_a_table_is_said_at_most_once_an_hour_of_packet_time() -> None:
    d = detector(max_open=CAP)
    run(d)
    assert d.stats.derived["DETECTION_STATE_FULL"] == 1
    for i in range(SOURCES):  # more forgotten within the hour: not said again
        d.process([write(200.0 + i * 0.01, i)])
    d.tick(400.0)
    assert d.stats.derived["DETECTION_STATE_FULL"] == 1
    for i in range(SOURCES):
        d.process([write(4000.0 + i * 0.01, i)])
    d.tick(4100.0)
    assert d.stats.derived["DETECTION_STATE_FULL"] == 2
    assert DerivedKind.DETECTION_STATE_FULL.value[2] == "S7"


def alert(i: int, count: int = 1) -> Alert:
    return Alert(rule="r", precursor="M7", severity=Severity.HIGH, attack=(), title="t",
                 proto="modbus", first_ts=1000.0, last_ts=1000.0 + count, count=count,
                 src="10.0.0.9", dst="10.0.0.5", dport=502, unit=1, evidence={}, id=i)


def test_store_forgets_the_least_recently_written_mappings(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_ids=CAP) as store:
        total = 20 * CAP
        for start in range(1, total + 1, 8):
            store.save_alerts([alert(i) for i in range(start, start + 8)])
            store.save_alerts([alert(1, count=start + 1)])  # one long-lived aggregate
        assert len(store._ids) == CAP and store.ids_forgotten == total - CAP
        rows = store.alert_count()
        assert rows == total
        store.save_alerts([alert(i, count=2) for i in range(total - CAP + 2, total + 1)])
        store.save_alerts([alert(1, count=total + 2)])
        assert store.alert_count() == rows  # the recent ones and the busy one: updated
        (first,) = [a for a in store.alerts() if a.count == total + 2]
        assert first.first_ts == 1000.0
        store.save_alerts([alert(2, count=2)])  # forgotten long ago: a second row
        assert store.alert_count() == rows + 1
    assert MAX_IDS >= 2 * DEFAULT_MAX_OPEN


def test_store_below_its_cap_updates_every_row(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", max_ids=CAP) as store:
        store.save_alerts([alert(i) for i in range(1, CAP + 1)])
        store.save_alerts([alert(i, count=3) for i in range(1, CAP + 1)])
        assert store.alert_count() == CAP and store.ids_forgotten == 0
        assert {a.count for a in store.alerts()} == {3}


def test_zeek_udp_connection_ids_are_capped_newest_kept() -> None:
    from mamori.sensor.capture.zeek.mapping import MAX_UDP_UIDS, ZeekEventMapper

    mapper = ZeekEventMapper()
    for i in range(3 * MAX_UDP_UIDS):
        mapper.note_udp(f"C{i}")
    assert len(mapper.transports) == MAX_UDP_UIDS
    assert mapper.stats["conn: UDP connection ids forgotten (cap)"] == 2 * MAX_UDP_UIDS
    assert f"C{3 * MAX_UDP_UIDS - 1}" in mapper.transports and "C0" not in mapper.transports
    below = ZeekEventMapper()
    for i in range(MAX_UDP_UIDS):
        below.note_udp(f"C{i}")
    assert len(below.transports) == MAX_UDP_UIDS and not below.stats


def test_identity_feed_keeps_only_the_devices_the_inventory_holds() -> None:
    from mamori.sensor.advisories.national import IdentityFeed

    feed = IdentityFeed()

    def assets(first: int, n: int) -> list[dict[str, object]]:
        return [{"ip": f"10.5.{i >> 8}.{i & 0xFF}", "identity": {"vendor": "V"}}
                for i in range(first, first + n)]

    for start in range(0, 20 * CAP, CAP):  # the inventory (capped) moves on
        assert len(feed.changed(assets(start, CAP))) == CAP
        assert len(feed._sent) == CAP
    assert feed.changed(assets(19 * CAP, CAP)) == []  # below the cap: nothing sent twice
