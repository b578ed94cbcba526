"""Floods and replays (B6, D16-D18, M16) on traffic made in the test, in labelled windows.

Modbus, one capture of a pymodbus server on loopback. Learning: a fast poller
(127.0.0.1, unit 1: a read and a rewrite of one setpoint every 50 ms, about 36
requests a second) and a slow poller (127.0.0.1, unit 2, four reads a second).
Then, enforcing: the fast poller keeps its rate (a negative), the slow poller
speeds up ten times (still below the ceiling: only its learned rate says it is
a flood), the fast poller's own connection floods as fast as it can, a new
host (127.0.0.3) floods 1,500 reads, and another (127.0.0.2) sends 30 identical
writes back to back (below the 50 a second of M11's write burst).

DNP3, one capture of a live opendnp3 outstation and master (yadnp3). Learning:
the master polls, operates a CROB, confirms unsolicited events and reconnects
once (a new connection repeating its start-up requests from the same host). A
second tcpdump records a slice of that session. Then: the recorded requests are
replayed to the outstation from 127.0.0.2 (D16, and the CROB operates again);
from the master's own address, twice over one connection (the second pass takes
the sequence number back: D16 in-session); hand-built requests reuse a sequence
number with another request and take it back (D17); a CONFIRM answers an
unsolicited response that was never sent (D18). The master is disabled during
the attacks, so the outstation (which keeps one connection) is not taken away.

Request rates are counted in one-second windows with a ceiling of 60 here
(10 s and 1,000 by default; the new host's flood is also checked with those).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.capfile import CaptureFileParser
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.detection import Detector, Inventory, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names
from tests.conftest import captured_on_lo, corpus_path, unavailable
from tests.peers import dnp3_peer, modbus_peer
from tests.peers.capture import capture, capture_complete
from tests.ports import free_port

RULES = load_rules([SHIPPED_RULES], set_names())
FLOOD = "mamori.baseline.request_flood"
REPLAY, SESSION = "mamori.dnp3.request_replay", "mamori.dnp3.session_replay"
SEQUENCE, CONFIRM = "mamori.dnp3.sequence_anomaly", "mamori.dnp3.confirm_unmatched"
BURST = "mamori.modbus.identical_write_burst"
FULL = "mamori.health.detection_state_full"
NEW = (FLOOD, REPLAY, SESSION, SEQUENCE, CONFIRM, BURST, FULL)
WINDOW, CEILING = 1.0, 60
MASTER, OUTSTATION = dnp3_peer.MASTER_ADDR, dnp3_peer.OUTSTATION_ADDR
BENIGN = ("ct-samples/Protocols/Modbus/ModbusTCP/Plant1_ModbusTCP.pcap",
          "zeek/Traces/modbus/modbusBig.pcap", "zeek/Traces/modbus/modbusSmall.pcap",
          "generated/yadnp3.pcap")
CORPUS_PORTS = PipelineConfig(modbus_ports=frozenset({502, 15020}),
                              dnp3_ports=frozenset({20000, 20030}))
# rule -> (its positive, its negatives), for the coverage registry
TESTS = {
    FLOOD: ("test_request_flood_fires_in_its_windows",
            ("test_fast_poller_at_its_learned_rate_is_quiet",
             "test_new_rules_quiet_on_the_learning_parts",
             "test_new_rules_quiet_on_benign_captures")),
    BURST: ("test_identical_write_burst_fires_in_its_window",
            ("test_new_rules_quiet_on_the_learning_parts",
             "test_new_rules_quiet_on_benign_captures")),
    REPLAY: ("test_replay_from_another_host_fires_in_its_window",
             ("test_new_rules_quiet_on_the_learning_parts",
              "test_new_rules_quiet_on_benign_captures")),
    SESSION: ("test_replay_inside_one_connection_fires_in_its_window",
              ("test_new_rules_quiet_on_the_learning_parts",
               "test_new_rules_quiet_on_benign_captures")),
    SEQUENCE: ("test_sequence_reuse_and_going_back_fire_in_their_window",
               ("test_new_rules_quiet_on_the_learning_parts",
                "test_new_rules_quiet_on_benign_captures")),
    CONFIRM: ("test_confirm_of_nothing_fires_in_its_window",
              ("test_new_rules_quiet_on_the_learning_parts",
               "test_new_rules_quiet_on_benign_captures")),
}

Window = tuple[float, float]


# ---------------------------------------------------------------- Modbus capture


@dataclass
class ModbusTraffic:
    pcap: Path
    port: int
    learned: float  # packet time the baseline is frozen at
    steady: Window  # the fast poller at its learned rate, enforcing
    slow_flood: Window  # the slow poller ten times faster
    fast_flood: Window  # the fast poller's pair as fast as it goes
    new_flood: Window  # 1,500 reads from 127.0.0.3
    burst: Window  # 30 identical writes from 127.0.0.2
    sent: dict[str, int] = field(default_factory=dict)


def _loop(client: Any, unit: int, period: float, stop: threading.Event, sent: list[int],
          write: bool) -> None:
    while not stop.is_set():
        client.read_holding_registers(0, count=10, device_id=unit)
        sent[0] += 1
        if write:
            client.write_register(10, 5, device_id=unit)
            sent[0] += 1
        stop.wait(period)


class _Poller:
    """One pymodbus client polling in a thread; ``period`` may change while it runs."""

    def __init__(self, port: int, unit: int, period: float, write: bool) -> None:
        import pymodbus.client as pymodbus_client

        self.client = pymodbus_client.ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert self.client.connect()
        self.unit, self.period, self.write = unit, period, write
        self.sent = [0]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=_loop, args=(
            self.client, self.unit, self.period, self._stop, self.sent, self.write))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive()


def _timed(action: Callable[[], object]) -> Window:
    start = time.time()
    action()
    return start, time.time()


@pytest.fixture(scope="module")
def modbus(tmp_path_factory: pytest.TempPathFactory) -> ModbusTraffic:
    return captured_on_lo(_make_modbus, tmp_path_factory, "floods")


def _make_modbus(tmp: Path) -> ModbusTraffic | None:
    import pymodbus.client as pymodbus_client
    port = free_port()
    pcap = tmp / "modbus.pcap"
    with capture(pcap, port), modbus_peer.server(port):
        fast = _Poller(port, 1, 0.05, write=True)
        slow = _Poller(port, 2, 0.25, write=False)
        fast.start()
        slow.start()
        time.sleep(4.5)  # learning: four full windows and more
        learned = time.time()
        time.sleep(1.5)
        steady = (time.time(), 0.0)
        time.sleep(2.5)
        steady = (steady[0], time.time())
        slow.stop()
        slow.period = 0.02  # ten times the learned rate, below the ceiling of 60 a second

        def speed_up() -> None:
            slow.start()
            time.sleep(2.0)
            slow.stop()

        slow_flood = _timed(speed_up)
        fast.stop()

        def flood(client: Any, unit: int, count: int) -> None:
            for _ in range(count):
                client.read_holding_registers(0, count=1, device_id=unit)

        fast_flood = _timed(lambda: flood(fast.client, 1, 600))
        fast.client.close()
        slow.client.close()
        newcomer = pymodbus_client.ModbusTcpClient("127.0.0.1", port=port, timeout=2,
                                                   source_address=("127.0.0.3", 0))
        assert newcomer.connect()
        new_flood = _timed(lambda: flood(newcomer, 1, 1500))
        newcomer.close()
        time.sleep(0.3)
        intruder = pymodbus_client.ModbusTcpClient("127.0.0.1", port=port, timeout=2,
                                                   source_address=("127.0.0.2", 0))
        assert intruder.connect()

        def identical_writes() -> None:
            for _ in range(30):
                intruder.write_register(20, 7, device_id=1)

        burst = _timed(identical_writes)
        intruder.close()
    if pcap.stat().st_size < 1000:
        unavailable("tcpdump captured nothing on lo")
    if not capture_complete(pcap):  # a loaded host: tcpdump dropped frames of the floods
        return None
    return ModbusTraffic(pcap, port, learned, steady, slow_flood, fast_flood, new_flood,
                         burst, {"fast": fast.sent[0], "slow": slow.sent[0]})


def _inventory(**kwargs: Any) -> Inventory:
    settings: dict[str, Any] = {"request_window": WINDOW, "request_ceiling": CEILING}
    settings.update(kwargs)
    return Inventory(**settings)


def _replay(pcap: Path, ports: PipelineConfig, learn_until: float | None,
            keep: Callable[[Any], bool] = lambda e: True,
            inventory: Inventory | None = None) -> list[Alert]:
    """Learn until ``learn_until`` then enforce (``None``: learn throughout)."""
    detector = Detector(RULES, inventory=inventory or _inventory())
    frozen = learn_until is None

    def sink(events: list[Any]) -> None:
        nonlocal frozen
        events = [e for e in events if keep(e)]
        if not frozen and events and events[0].ts >= learn_until:
            detector.inventory.freeze(events[0].ts)
            frozen = True
        detector.process(events)

    replay_files([pcap], ports, extra_sinks=[sink])
    return detector.alerts()


def _modbus_ports(port: int) -> PipelineConfig:
    return PipelineConfig(modbus_ports=frozenset({port}), dnp3_ports=frozenset())


def _within(alert: Alert, window: Window) -> bool:
    return window[0] <= alert.first_ts <= window[1] + 0.5


def _mine(alerts: list[Alert], rule: str) -> list[Alert]:
    return [a for a in alerts if a.rule == rule]


def test_request_flood_fires_in_its_windows(modbus: ModbusTraffic) -> None:
    floods = _mine(_replay(modbus.pcap, _modbus_ports(modbus.port), modbus.learned), FLOOD)
    slow = [a for a in floods if a.unit == 2 and _within(a, modbus.slow_flood)]
    assert slow and "learned peak" in slow[0].evidence["detail"]  # below the ceiling
    fast = [a for a in floods if a.unit == 1 and a.src == "127.0.0.1"
            and _within(a, modbus.fast_flood)]
    assert fast and "learned peak" in fast[0].evidence["detail"]
    new = [a for a in floods if a.src == "127.0.0.3"]
    assert new and all(_within(a, modbus.new_flood) for a in new)
    assert "no learned rate" in new[0].evidence["detail"]
    windows = (modbus.slow_flood, modbus.fast_flood, modbus.new_flood, modbus.burst)
    assert all(any(_within(a, w) for w in windows) for a in floods), floods
    assert all(a.severity is Severity.MEDIUM and "T0814" in a.attack for a in floods)


def test_request_flood_with_the_default_window_and_ceiling(modbus: ModbusTraffic) -> None:
    """1,500 requests in a few seconds from a new host pass the default 1,000 per 10 s."""
    floods = _mine(_replay(modbus.pcap, _modbus_ports(modbus.port), modbus.learned,
                           inventory=Inventory()), FLOOD)
    assert [a.src for a in floods] == ["127.0.0.3"]
    assert _within(floods[0], modbus.new_flood)


def test_fast_poller_at_its_learned_rate_is_quiet(modbus: ModbusTraffic) -> None:
    """The fast poller, learned, then enforced at the same rate: no finding. It sends
    more than a learned pair's floor (a tenth of the ceiling), so what keeps it quiet
    is its own learned peak; the slow poller at that rate is a flood (above)."""
    steady = modbus.steady

    def keep(e: Any) -> bool:
        return bool(e.ts < modbus.learned or steady[0] <= e.ts <= steady[1])

    alerts = _replay(modbus.pcap, _modbus_ports(modbus.port), modbus.learned, keep)
    assert [a for a in alerts if a.rule in NEW] == []
    per_second = _rate(modbus.pcap, modbus.port, steady, unit=1)
    assert per_second > 2 * CEILING / 10, per_second


def _rate(pcap: Path, port: int, window: Window, unit: int) -> float:
    """Requests a second to ``unit`` within ``window``, counted by the parser alone."""
    from mamori.parsers.modbus.events import ModbusRequest

    count = [0]

    def sink(events: list[Any]) -> None:
        count[0] += sum(1 for e in events if e.__class__ is ModbusRequest and e.unit == unit
                        and window[0] <= e.ts <= window[1])

    replay_files([pcap], _modbus_ports(port), extra_sinks=[sink])
    return count[0] / (window[1] - window[0])


def test_identical_write_burst_fires_in_its_window(modbus: ModbusTraffic) -> None:
    alerts = _replay(modbus.pcap, _modbus_ports(modbus.port), modbus.learned)
    bursts = _mine(alerts, BURST)
    assert [(a.src, a.unit, a.evidence["address"]) for a in bursts] == [("127.0.0.2", 1, 20)]
    assert _within(bursts[0], modbus.burst)
    assert bursts[0].count == 29 - 10 + 1  # 29 repeats; the rule counts from the 10th
    assert "mamori.modbus.write_burst" not in {a.rule for a in alerts}  # 30 < 50 a second


# ---------------------------------------------------------------- DNP3 capture


@dataclass
class Dnp3Traffic:
    pcap: Path
    port: int
    learned: float
    replay: Window  # the recorded requests from 127.0.0.2
    session: Window  # the recorded requests twice over one connection from 127.0.0.1
    sequence: Window  # seq reused with another request, then gone back
    confirm: Window  # a CONFIRM of an unsolicited response never sent
    recorded: int  # requests in the recording
    crobs: tuple[int, int]  # CROBs operated before and after the replay


def _master_payloads(pcap: Path, port: int) -> list[bytes]:
    """The master's TCP payloads toward the outstation, in order, retransmissions dropped."""
    parser = CaptureFileParser()
    parser.receive(pcap.read_bytes())
    records = parser.records()
    parser.close()
    out: list[bytes] = []
    seen: set[int] = set()
    for rec in records:
        frame = rec.data
        if rec.linktype != 1 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ihl = (frame[14] & 0x0F) * 4
        tcp = 14 + ihl
        if int.from_bytes(frame[tcp + 2:tcp + 4], "big") != port:
            continue
        data = frame[tcp + (frame[tcp + 12] >> 4) * 4:14 + int.from_bytes(frame[16:18], "big")]
        seq = int.from_bytes(frame[tcp + 4:tcp + 8], "big")
        if data and seq not in seen:
            seen.add(seq)
            out.append(bytes(data))
    return out


def _request(seq: int, fc: int, objects: bytes, *, tseq: int, con: bool = False,
             uns: bool = False) -> bytes:
    """One single-fragment request as a link frame: transport FIR|FIN, app FIR|FIN."""
    app = bytes([0xC0 | (0x20 if con else 0) | (0x10 if uns else 0) | seq, fc]) + objects
    return dnp3_peer.raw_link_frame(4, OUTSTATION, MASTER,
                                    user_data=bytes([0xC0 | tseq]) + app)


CLASS0 = bytes([60, 1, 0x06])
CLASS1 = bytes([60, 2, 0x06])


CLASS3 = bytes([60, 4, 0x06])


def _make_dnp3(tmp: Path) -> Dnp3Traffic | None:
    port = dnp3_peer.free_port()
    pcap, recording = tmp / "dnp3.pcap", tmp / "recorded.pcap"
    with capture(pcap, port), dnp3_peer.Stacks(port) as stacks:
        stacks.integrity_poll()
        with capture(recording, port):  # the attacker's recording of the session
            assert stacks.integrity_poll() == "SUCCESS"
            assert stacks.direct_operate(3) == "SUCCESS"
            stacks.emit_events(2)
            dnp3_peer.wait_for(lambda: stacks.unsolicited_seen() >= 2, what="unsolicited")
        stacks.emit_events(2)
        dnp3_peer.wait_for(lambda: stacks.unsolicited_seen() >= 4, what="unsolicited")
        stacks.master.Disable()  # the outstation keeps one connection: leave it to others
        time.sleep(0.3)
        # the master restarted: same host and link address, a new connection, the same
        # start-up requests with the same sequence numbers
        with dnp3_peer.Stacks(port, outstation=False) as restarted:
            assert restarted.integrity_poll() == "SUCCESS"
        time.sleep(0.2)
        learned = time.time()
        time.sleep(0.2)
        recorded = _master_payloads(recording, port)
        with stacks.seen.lock:
            before = len(stacks.seen.crobs)
        replay = _timed(lambda: dnp3_peer.send_raw(port, recorded, gap=0.05,
                                                   source="127.0.0.2") and None)
        time.sleep(0.2)
        with stacks.seen.lock:
            after = len(stacks.seen.crobs)
        session = _timed(lambda: dnp3_peer.send_raw(port, recorded + recorded, gap=0.05)
                         and None)
        time.sleep(0.2)
        sequence = _timed(lambda: dnp3_peer.send_raw(port, source="127.0.0.5", frames=[
            _request(5, 1, CLASS0, tseq=0),
            _request(5, 1, CLASS3, tseq=1),  # seq 5 again, another request: no retry
            _request(6, 1, CLASS0, tseq=2),
            _request(3, 1, CLASS3 + CLASS0, tseq=3),  # back from 6 to 3, never sent before
        ], gap=0.1) and None)
        time.sleep(0.2)
        stacks.emit_events(2)  # class 1 events wait in the outstation's buffer
        confirm = _timed(lambda: dnp3_peer.send_raw(port, source="127.0.0.4", frames=[
            _request(1, 1, CLASS1, tseq=0),  # answered with the events, CON set
            # CONFIRMs of responses 9 and 12, never sent (the outstation's own null
            # unsolicited response at connect has a sequence number of its own choosing,
            # so none of these claim to confirm an unsolicited one)
            _request(9, 0, b"", tseq=1),
            _request(12, 0, b"", tseq=2),
        ], gap=0.2) and None)
    if pcap.stat().st_size < 1000:
        unavailable("tcpdump captured nothing on lo")
    if not dnp3_peer.capture_complete(pcap):
        return None
    requests = sum(1 for p in recorded if len(p) > 12 and p[12] != 0)
    return Dnp3Traffic(pcap, port, learned, replay, session, sequence, confirm, requests,
                       (before, after))


@pytest.fixture(scope="module")
def dnp3(tmp_path_factory: pytest.TempPathFactory) -> Dnp3Traffic:
    return captured_on_lo(_make_dnp3, tmp_path_factory, "floods_dnp3")


def _dnp3_ports(port: int) -> PipelineConfig:
    return PipelineConfig(modbus_ports=frozenset(), dnp3_ports=frozenset({port}))


def _dnp3_alerts(traffic: Dnp3Traffic) -> list[Alert]:
    return _replay(traffic.pcap, _dnp3_ports(traffic.port), traffic.learned)


def test_the_recording_and_the_outstation(dnp3: Dnp3Traffic) -> None:
    """The oracle side: a poll and a CROB were recorded, and the replay operated it again."""
    assert dnp3.recorded >= 2
    before, after = dnp3.crobs
    assert after == before + 1


def test_replay_from_another_host_fires_in_its_window(dnp3: Dnp3Traffic) -> None:
    replays = _mine(_dnp3_alerts(dnp3), REPLAY)
    assert replays and all(_within(a, dnp3.replay) for a in replays)
    assert {(a.src, a.link_src, a.link_dst) for a in replays} == {
        ("127.0.0.2", MASTER, OUTSTATION)}
    assert replays[0].count >= dnp3.recorded  # every recorded request, the CROB included
    assert "identical to a request 127.0.0.1 sent" in replays[0].evidence["detail"]


def test_replay_inside_one_connection_fires_in_its_window(dnp3: Dnp3Traffic) -> None:
    alerts = _dnp3_alerts(dnp3)
    replays = _mine(alerts, SESSION)
    assert replays and all(_within(a, dnp3.session) for a in replays)
    assert {a.src for a in replays} == {"127.0.0.1"}
    # the master's own address: not "another host", and its reconnect repeated its
    # start-up requests on a new connection without a finding
    assert all(a.src != "127.0.0.1" for a in _mine(alerts, REPLAY))


def test_sequence_reuse_and_going_back_fire_in_their_window(dnp3: Dnp3Traffic) -> None:
    found = _mine(_dnp3_alerts(dnp3), SEQUENCE)
    assert found and all(_within(a, dnp3.sequence) for a in found)
    assert [(a.src, a.count) for a in found] == [("127.0.0.5", 2)]  # 5 reused; 6 back to 3
    assert "seq 5 repeated with a different request" in found[0].evidence["detail"]


def test_confirm_of_nothing_fires_in_its_window(dnp3: Dnp3Traffic) -> None:
    alerts = _mine(_dnp3_alerts(dnp3), CONFIRM)
    found = [a for a in alerts if a.src == "127.0.0.4"]
    assert [a.count for a in found] == [2] and _within(found[0], dnp3.confirm)
    assert found[0].evidence["fc"] == 0 and "CONFIRM seq 9" in found[0].evidence["detail"]
    # the replays also carried the recorded session's CONFIRMs, which answer nothing
    # on the replaying connection; none before the attacks
    assert all(a.first_ts >= dnp3.learned for a in alerts)


# ---------------------------------------------------------------- negatives


def _learning_part(pcap: Path, ports: PipelineConfig, until: float) -> list[Alert]:
    """The slice before ``until``: learned alone, and learned then enforced again."""
    def keep(e: Any) -> bool:
        return bool(e.ts < until)

    learned = Detector(RULES, inventory=_inventory())
    replay_files([pcap], ports, extra_sinks=[lambda ev: learned.process(
        [e for e in ev if keep(e)])])
    learned.inventory.freeze()
    again = Detector(RULES, inventory=learned.inventory)
    replay_files([pcap], ports, extra_sinks=[lambda ev: again.process(
        [e for e in ev if keep(e)])])
    return learned.alerts() + again.alerts()


def test_new_rules_quiet_on_the_learning_parts(modbus: ModbusTraffic, dnp3: Dnp3Traffic
                                               ) -> None:
    """Real pollers, a setpoint rewritten each cycle, a master's CROB, its confirms of
    unsolicited events and its reconnect: none of it is a flood or a replay."""
    alerts = _learning_part(modbus.pcap, _modbus_ports(modbus.port), modbus.learned)
    alerts += _learning_part(dnp3.pcap, _dnp3_ports(dnp3.port), dnp3.learned)
    assert [(a.rule, a.src, a.evidence.get("detail")) for a in alerts if a.rule in NEW] == []


@pytest.mark.corpus
@pytest.mark.parametrize("capture_name", BENIGN)
def test_new_rules_quiet_on_benign_captures(capture_name: str) -> None:
    """Learning (a fresh sensor) and learned-then-enforced, with the default settings."""
    path = corpus_path(capture_name)
    fresh = Detector(RULES, inventory=Inventory(7 * 86400.0))
    replay_files([path], CORPUS_PORTS, extra_sinks=[fresh.process])
    first = Detector(RULES)
    replay_files([path], CORPUS_PORTS, extra_sinks=[first.process])
    first.inventory.freeze()
    second = Detector(RULES, inventory=first.inventory)
    replay_files([path], CORPUS_PORTS, extra_sinks=[second.process])
    alerts = fresh.alerts() + first.alerts() + second.alerts()
    assert [(a.rule, a.count) for a in alerts if a.rule in NEW] == []


# real captures where a stack does what the rules look for (opendnp3's conformance
# suite sends a CONFIRM with the wrong sequence number, and repeats one sequence
# number with new requests; two hosts send one DISABLE_UNSOLICITED in Zeek's trace)
CONF = "ICS-Security-Tools/pcaps/dnp3/opendnp3-3/conformance/"
REAL = {
    CONFIRM: CONF + "8.11.2.4/dump.pcap",
    SEQUENCE: CONF + "8.2.5.2.1/dump.pcap",
    REPLAY: "ICS-Security-Tools/pcaps/bro/dnp3/dnp3.pcap",
}


@pytest.mark.corpus
@pytest.mark.parametrize("rule", sorted(REAL))
def test_new_dnp3_rules_fire_on_real_captures(rule: str) -> None:
    detector = Detector(RULES)
    replay_files([corpus_path(REAL[rule])], CORPUS_PORTS, extra_sinks=[detector.process])
    assert rule in {a.rule for a in detector.alerts()}
