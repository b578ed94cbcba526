"""Campaign chains and maintenance windows on real traffic: pymodbus peers on loopback.

One capture against one pymodbus server (listening on every loopback address, so
each 127.0.0.x is a target of its own). An intruder (127.0.0.2) identifies
127.0.0.10 (FC 17, FC 43/14), restarts its communications (FC 8/1) and writes a
register: the recon-then-action chain. It only identifies 127.0.0.11 and only
writes and restarts 127.0.0.12: two targets, no chain. It identifies 127.0.0.13
before a marker and writes to it after: a chain in the capture as recorded, none
in a copy whose packets after the marker are two hours later (the window is one
hour, and packet time decides). The engineering workstation 127.0.0.20 writes to
127.0.0.14 inside the site's maintenance window, and 127.0.0.21 does the same.
"""

from __future__ import annotations

import contextlib
import struct
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.alerting.dispatch import AlertOutputs
from mamori.sensor.alerting.store import Store
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.detection import Detector, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names
from mamori.sensor.detection.windows import MaintenanceWindow, v_windows
from tests.conftest import require_tool, unavailable
from tests.peers import modbus_peer
from tests.peers.capture import capture
from tests.ports import free_port

RULES = load_rules([SHIPPED_RULES], set_names())
CHAIN = "mamori.chain.recon_then_action"
WRITE = "mamori.modbus.unauthorised_write"
INTRUDER, STATION, OTHER = "127.0.0.2", "127.0.0.20", "127.0.0.21"
ZONE = ZoneInfo("Europe/Berlin")
LATER = 7200.0  # seconds the shifted copy moves the packets after the marker


def _client(port: int, source: str, target: str) -> Any:
    import pymodbus.client as pymodbus_client
    client = pymodbus_client.ModbusTcpClient(target, port=port, timeout=1, retries=0,
                                             source_address=(source, 0))
    assert client.connect(), f"{source} could not connect to {target}:{port}"
    return client


def _identify(port: int, target: str) -> None:
    client = _client(port, INTRUDER, target)
    client.report_device_id(device_id=1)  # FC 17
    client.read_device_information(read_code=1, object_id=0, device_id=1)  # FC 43/14
    client.close()


def _act(port: int, source: str, target: str, restart: bool = True) -> None:
    client = _client(port, source, target)
    if restart:
        with contextlib.suppress(Exception):  # FC 8/1: the answer is the server's business
            client.diag_restart_communication(False, device_id=1)
        client.close()
        client = _client(port, source, target)
    client.write_register(10, 9, device_id=1)
    client.write_register(11, 3, device_id=1)
    client.close()


def _shifted(pcap: Path, out: Path, after: float, by: float) -> Path:
    """A copy of a classic pcap whose packets from ``after`` on are ``by`` seconds later."""
    data = bytearray(pcap.read_bytes())
    magic = bytes(data[:4])
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
             b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if order is None:
        unavailable("tcpdump wrote a capture format this test does not shift")
    assert order is not None
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    at, moved = 24, 0
    while at + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack_from(order + "IIII", data, at)
        if sec + frac / (1e9 if nano else 1e6) >= after:
            struct.pack_into(order + "I", data, at, sec + int(by))
            moved += 1
        at += 16 + incl
    assert moved
    out.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int, float]:
    require_tool("tcpdump")
    port = free_port()
    folder = tmp_path_factory.mktemp("chains")
    pcap = folder / "chains.pcap"
    started = time.time()
    with capture(pcap, port), modbus_peer.server(port):
        _identify(port, "127.0.0.10")
        _act(port, INTRUDER, "127.0.0.10")
        _identify(port, "127.0.0.11")
        _act(port, INTRUDER, "127.0.0.12")
        _act(port, STATION, "127.0.0.14", restart=False)
        _act(port, OTHER, "127.0.0.14", restart=False)
        _identify(port, "127.0.0.13")
        time.sleep(0.3)
        marker = time.time()
        time.sleep(0.3)
        _act(port, INTRUDER, "127.0.0.13", restart=False)
    if pcap.stat().st_size < 1000:
        unavailable("tcpdump captured nothing on lo")
    return pcap, _shifted(pcap, folder / "later.pcap", marker, LATER), port, started


def _window(started: float, days: int = 0) -> MaintenanceWindow:
    """A weekly Berlin slot from an hour before the capture to three hours after it
    (``days`` later: a slot that does not cover the capture)."""
    start = datetime.fromtimestamp(started, ZONE) - timedelta(hours=1) + timedelta(days=days)
    end = start + timedelta(hours=4)
    spec = f"{start:%a} {start:%H:%M}-{end:%H:%M}"
    (window,) = v_windows([{"name": "plc-work", "timezone": "Europe/Berlin",
                            "weekly": spec, "workstations": [f"{STATION}/32"],
                            "assets": ["127.0.0.14"]}])
    return window


def _run(pcap: Path, port: int, windows: list[MaintenanceWindow] | None = None,
         store: Store | None = None) -> list[Alert]:
    detector = Detector(RULES, windows=windows or ())
    detector.inventory.freeze()  # enforcing: every client here is nobody's master
    outputs = AlertOutputs(store) if store is not None else None

    def sink(events: list[Any]) -> None:
        detector.process(events)
        if outputs is not None:
            outputs.publish(detector.drain())

    replay_files([pcap], PipelineConfig(modbus_ports=frozenset({port})), extra_sinks=[sink])
    alerts = detector.alerts()
    if outputs is not None:
        outputs.publish(detector.drain())
    return alerts


def _on(alerts: list[Alert], rule: str, target: str) -> list[Alert]:
    return [a for a in alerts if a.rule == rule and target in (a.src, a.dst)]


def test_recon_then_restart_and_writes_is_one_critical_alert_naming_each_step(
        traffic: tuple[Path, Path, int, float], tmp_path: Path) -> None:
    pcap, _, port, _ = traffic
    with Store(tmp_path / "mamori.db") as store:
        alerts = _run(pcap, port, store=store)
        stored = store.alerts()
    (chain,) = _on(alerts, CHAIN, "127.0.0.10")
    assert chain.severity is Severity.CRITICAL and chain.dst == "127.0.0.10"
    assert chain.src == INTRUDER
    steps = chain.evidence["steps"]
    assert [s["step"] for s in steps] == ["reconnaissance", "action"]
    assert steps[0]["rule"] in {"mamori.modbus.report_server_id",
                                "mamori.modbus.device_id_read"}
    assert steps[1]["rule"] == "mamori.modbus.restart_communications"
    for step in steps:  # each step is an alert of its own, with that id and time
        (alert,) = [a for a in alerts if a.id == step["alert"]]
        assert alert.rule == step["rule"] and alert.dst == "127.0.0.10"
        assert alert.first_ts <= step["ts"] <= alert.last_ts
    assert steps[0]["ts"] < steps[1]["ts"]
    assert _on(alerts, WRITE, "127.0.0.10")  # the writes after it: no second chain alert
    (kept,) = _on(stored, CHAIN, "127.0.0.10")  # stored, naming the steps' rows
    for step in kept.evidence["steps"]:
        (row,) = [a for a in stored if a.id == step["alert"]]
        assert row.rule == step["rule"] and row.dst == "127.0.0.10"


def test_steps_on_different_targets_make_no_chain(
        traffic: tuple[Path, Path, int, float]) -> None:
    pcap, _, port, _ = traffic
    alerts = _run(pcap, port)
    assert _on(alerts, "mamori.modbus.report_server_id", "127.0.0.11")
    assert _on(alerts, WRITE, "127.0.0.12")
    assert _on(alerts, "mamori.modbus.restart_communications", "127.0.0.12")
    for target in ("127.0.0.11", "127.0.0.12"):
        assert _on(alerts, CHAIN, target) == []
    chained = {a.dst for a in alerts if a.rule == CHAIN}
    assert chained == {"127.0.0.10", "127.0.0.13"}


def test_steps_further_apart_than_the_window_by_packet_time_make_no_chain(
        traffic: tuple[Path, Path, int, float]) -> None:
    pcap, later, port, _ = traffic
    assert _on(_run(pcap, port), CHAIN, "127.0.0.13")  # as recorded: within the hour
    alerts = _run(later, port)  # the write two hours after the identification
    assert _on(alerts, WRITE, "127.0.0.13")
    assert _on(alerts, CHAIN, "127.0.0.13") == []
    assert _on(alerts, CHAIN, "127.0.0.10")  # before the marker: unchanged


def test_maintenance_window_records_the_workstation_at_info_and_no_one_else(
        traffic: tuple[Path, Path, int, float], tmp_path: Path) -> None:
    pcap, _, port, started = traffic
    with Store(tmp_path / "mamori.db") as store:
        alerts = _run(pcap, port, [_window(started)], store=store)
        stored = store.alerts()
    (planned,) = [a for a in _on(alerts, WRITE, "127.0.0.14") if a.src == STATION]
    assert planned.severity is Severity.INFO and planned.count == 2
    assert planned.evidence["maintenance"] == {"window": "plc-work", "severity": "high"}
    (other,) = [a for a in _on(alerts, WRITE, "127.0.0.14") if a.src == OTHER]
    assert other.severity is Severity.HIGH and "maintenance" not in other.evidence
    (row,) = [a for a in stored if a.rule == WRITE and a.src == STATION]
    assert row.severity is Severity.INFO and row.evidence["maintenance"]["severity"] == "high"
    # the intruder's writes elsewhere are untouched by the window
    assert all(a.severity is Severity.HIGH for a in _on(alerts, WRITE, "127.0.0.12"))


def test_outside_the_window_the_workstation_alerts_as_before(
        traffic: tuple[Path, Path, int, float]) -> None:
    pcap, _, port, started = traffic
    alerts = _run(pcap, port, [_window(started, days=1)])
    writes = _on(alerts, WRITE, "127.0.0.14")
    assert {a.src for a in writes} == {STATION, OTHER}
    assert all(a.severity is Severity.HIGH and "maintenance" not in a.evidence
               for a in writes)
