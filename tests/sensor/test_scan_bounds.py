"""A SYN sweep of a whole /16 past every cap, with real flows in the middle of it.

The capture is written here as a real pcap (tests/stormcap.py frames, correct
checksums): a master polls a server over one long-lived connection; a scanner
sends a SYN to port 502 of each of the 65,536 addresses of 10.1.0.0/16 in 3.3
seconds, one in eight answered by a RST (refused) and one in 32 by a SYN-ACK
that the scanner resets (half-open), the rest never answered; halfway through
the sweep, while the handshake table is full, a second master opens a new
connection and restarts the server's communications (M2).

Caps: 256 flows and 1,024 handshakes in progress, 1,024 entries per detection
table; the sweep is 64 times the handshake cap and 256 times the flow cap. It
must not evict a flow, the real flows must be parsed whole and alerted on, the
sweep must be reported (and the full table said so), and no table may pass its
cap. The negative is the same capture without the sweep.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert
from mamori.parsers.handshake import TransportEvent, TransportKind
from mamori.parsers.modbus import ModbusRequest, ModbusResponse
from mamori.parsers.pipeline import Pipeline, PipelineConfig
from mamori.sensor.capture.pcapfile import read_capture_tuples
from mamori.sensor.detection import Detector, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names
from tests.stormcap import ACK, PORT, START, SYN, Frame, modbus, session, tcp_frame, write_pcap

RULES = load_rules([SHIPPED_RULES], set_names())
RST = 0x04
SCANNER = "10.200.0.1"
MASTER, SECOND, SERVER = "10.0.0.1", "10.0.0.2", "10.0.0.5"
SWEEP = 65536
POLLS = 60
CONFIG = PipelineConfig(max_flows=256, max_handshakes=1024)
MAX_STATE = 1024
SWEEP_RULES = sorted(["mamori.health.handshake_table_full", "mamori.network.ics_sweep",
                      "mamori.network.refused_connections", "mamori.network.half_open_scan"])


def _read(tid: int) -> tuple[bytes, bytes]:
    return (modbus(tid, 1, struct.pack("!BHH", 3, 0, 10)),
            modbus(tid, 1, bytes([3, 20]) + bytes(20)))


def _sweep(t0: float) -> Iterator[Frame]:
    for i in range(SWEEP):
        target = f"10.1.{i >> 8}.{i & 0xFF}"
        sport = 40000 + (i & 0x3FFF)
        t = t0 + i * 0.00005
        yield t, tcp_frame(SCANNER, sport, target, PORT, 7000 + i, 0, SYN)
        if i % 32 == 0:
            yield t + 0.00001, tcp_frame(target, PORT, SCANNER, sport, 9000, 7001 + i,
                                         SYN | ACK)
            yield t + 0.00002, tcp_frame(SCANNER, sport, target, PORT, 7001 + i, 0, RST)
        elif i % 8 == 0:
            yield t + 0.00001, tcp_frame(target, PORT, SCANNER, sport, 0, 7001 + i, RST | ACK)


def _real() -> Iterator[Frame]:
    yield from session(MASTER, 50000, START, [_read(t) for t in range(1, POLLS + 1)],
                       server=SERVER, gap=0.1, close=False)
    restart = modbus(100, 1, struct.pack("!BHH", 8, 1, 0))
    yield from session(SECOND, 50001, START + 3.5, [_read(101), (restart, restart)],
                       server=SERVER, gap=0.01)


@cache
def _capture(tmp: Path, sweep: bool) -> Path:
    frames = list(_real())
    if sweep:
        frames += _sweep(START + 2.0)
    frames.sort(key=lambda f: f[0])
    path = tmp / ("sweep.pcap" if sweep else "real.pcap")
    write_pcap(path, frames)
    return path


class Run:
    def __init__(self, path: Path) -> None:
        self.pipeline = Pipeline(CONFIG)
        self.detector = Detector(RULES, max_state=MAX_STATE)
        self.requests: dict[str, int] = {}
        self.full_reports: list[int] = []  # attempts each table-full report forgot
        self.responses = 0
        self.handshakes_peak = 0
        self.sizes_peak: dict[str, int] = {}
        for n, (ts, linktype, data, _) in enumerate(read_capture_tuples(path)):
            events = self.pipeline.packet(ts, linktype, data, n + 1)
            self._count(events)
            if n % 4096 == 0:
                self._peaks()
        self._count(self.pipeline.finish())
        self._peaks()

    def _count(self, events: Any) -> None:
        for ev in events:
            if isinstance(ev, ModbusRequest):
                self.requests[ev.flow.client] = self.requests.get(ev.flow.client, 0) + 1
            elif isinstance(ev, ModbusResponse) and not ev.unsolicited:
                self.responses += 1
            elif isinstance(ev, TransportEvent) and ev.kind is TransportKind.HANDSHAKE_TABLE_FULL:
                self.full_reports.append(ev.count)
        self.detector.process(list(events))

    def _peaks(self) -> None:
        self.handshakes_peak = max(self.handshakes_peak, len(self.pipeline.handshakes))
        for name, size in self.detector.state_sizes().items():
            self.sizes_peak[name] = max(self.sizes_peak.get(name, 0), size)

    def alerts(self) -> list[Alert]:
        return self.detector.alerts()


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(_capture(tmp_path_factory.mktemp("sweep"), True))


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(_capture(tmp_path_factory.mktemp("real"), False))


@pytest.mark.parametrize("rule", SWEEP_RULES)
def test_a_slash16_sweep_past_every_cap(rule: str, swept: Run) -> None:
    found = [a for a in swept.alerts() if a.rule == rule]
    assert found, rule
    if rule != "mamori.health.handshake_table_full":
        assert {a.src for a in found} == {SCANNER}


@pytest.mark.parametrize("rule", SWEEP_RULES)
def test_the_real_flows_alone_raise_none(rule: str, real: Run) -> None:
    assert rule not in {a.rule for a in real.alerts()}


def test_the_sweep_evicts_no_flow_and_every_real_message_is_parsed(swept: Run,
                                                                   real: Run) -> None:
    stats = swept.pipeline.stats
    assert stats.flows_evicted == 0
    assert stats.flows_created < CONFIG.max_flows  # the SYN-ACKed ones that became flows
    assert swept.requests == {MASTER: POLLS, SECOND: 2} == real.requests
    assert swept.responses == real.responses == POLLS + 2


def test_the_real_flows_are_still_alerted_on_during_the_sweep(swept: Run) -> None:
    (restart,) = [a for a in swept.alerts() if a.rule == "mamori.modbus.restart_communications"]
    assert (restart.src, restart.dst) == (SECOND, SERVER)
    assert START + 2.0 < restart.first_ts < START + 2.0 + SWEEP * 0.00005  # mid-sweep


def test_no_table_passes_its_cap(swept: Run) -> None:
    table = swept.pipeline.handshakes
    assert swept.handshakes_peak <= CONFIG.max_handshakes
    assert table.evicted > SWEEP // 2  # far past the cap: most attempts were forgotten
    assert table.known_servers <= table.max_servers
    assert all(size <= MAX_STATE for name, size in swept.sizes_peak.items()
               if name != "alerts"), swept.sizes_peak
    assert swept.sizes_peak["alerts"] < 50


def test_the_full_table_is_reported_with_its_count_and_rate_limited(swept: Run) -> None:
    (full,) = [a for a in swept.alerts() if a.rule == "mamori.health.handshake_table_full"]
    assert "forgot" in full.evidence["detail"] and "(1024)" in full.evidence["detail"]
    # Once per minute of packet time (the sweep lasts 3.3 s), then the rest at the end,
    # so the reports add up to every attempt forgotten.
    assert full.count == len(swept.full_reports) == 2
    assert sum(swept.full_reports) == swept.pipeline.handshakes.evicted


def _arp(sender_mac: bytes, sender_ip: str, target_ip: str, op: int = 2) -> bytes:
    """An Ethernet ARP frame from ``sender_mac`` (broadcast when a request)."""
    dst = b"\xff" * 6 if op == 1 else b"\x02\0\0\0\0\x01"
    return (dst + sender_mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
            + sender_mac + bytes(int(x) for x in sender_ip.split("."))
            + bytes(6) + bytes(int(x) for x in target_ip.split(".")))


def test_a_forged_arp_flood_cannot_evict_an_asset_binding(tmp_path: Path) -> None:
    """20,000 gratuitous ARPs for random addresses, 20 times the table cap, then the poisoner
    claims the server's IP: the server's binding (from ARP and its flow) is still there."""
    server_mac = b"\x02\0" + bytes(int(x) for x in SERVER.split("."))
    attacker = b"\x02\xaa\0\0\0\x66"
    frames: list[Frame] = [(START - 1.0, _arp(server_mac, SERVER, MASTER))]
    frames += _real()
    frames += [(START + 1.0 + i * 0.0001, _arp(attacker, f"10.9.{i >> 8}.{i & 0xFF}",
                                              f"10.9.{i >> 8}.{i & 0xFF}"))
               for i in range(20 * MAX_STATE)]
    frames.append((START + 4.0, _arp(attacker, SERVER, MASTER)))
    frames.sort(key=lambda f: f[0])
    path = tmp_path / "arpflood.pcap"
    write_pcap(path, frames)
    run = Run(path)
    assert run.pipeline.stats.arp == 20 * MAX_STATE + 2
    changed = [a for a in run.alerts() if a.rule == "mamori.network.ip_mac_changed"]
    assert [a.src for a in changed] == [SERVER]
    assert "02:aa:00:00:00:66" in changed[0].evidence["detail"]
    assert run.sizes_peak["address_bindings"] <= MAX_STATE
    assert run.detector.evictions()["ARP-seen MAC bindings"] > 0  # the flood was forgotten
    assert run.requests == {MASTER: POLLS, SECOND: 2}
