"""Rules on traffic made in the test: pymodbus peers and nmap on loopback, captured live.

One capture, two phases. Learning: a SCADA client (127.0.0.1) polls on a steady
cycle and reads the device identity. Then the baseline is frozen (at a packet
time recorded between the phases) and an attack phase follows: the server is
replaced by one reporting another firmware revision; the SCADA client polls
slower, adds a new function and writes outside its range; an intruder from
127.0.0.2 writes, broadcasts, toggles a coil and bursts writes; nmap's
modbus-discover probes unit ids; the intruder asks for the server id (FC 17),
polls a unit the server does not have, which pymodbus answers with exception
0x0B (gateway target failed to respond), and walks up the holding registers.
The negative for each rule is the learning phase alone, learned then enforced.

The SCADA client is the site's declared master (``allowed_masters``): its identity
reads at start-up would otherwise be reconnaissance from a host not yet learned,
and a host that raised an alert while learning is never learned.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.detection import Detector, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names
from tests.conftest import require_tool, unavailable
from tests.peers import modbus_peer
from tests.peers.capture import capture
from tests.ports import free_port

RULES = load_rules([SHIPPED_RULES], set_names())
SITE = {"allowed_masters": ["127.0.0.1/32"]}


def _poll(client: Any, rounds: int, period: float) -> None:
    for _ in range(rounds):
        client.read_holding_registers(0, count=10, device_id=1)
        client.write_register(10, 5, device_id=1)
        time.sleep(period)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, int]:
    require_tool("tcpdump")
    import pymodbus.client as pymodbus_client
    port = free_port()
    pcap = tmp_path_factory.mktemp("traffic") / "modbus.pcap"
    with capture(pcap, port):
        with modbus_peer.server(port, "2.4.1"):
            scada = pymodbus_client.ModbusTcpClient("127.0.0.1", port=port, timeout=2)
            scada.connect()
            scada.read_device_information(read_code=1, object_id=0, device_id=1)
            _poll(scada, 30, 0.05)
            scada.read_device_information(read_code=1, object_id=0, device_id=1)
            scada.close()
            marker = time.time()
            time.sleep(0.2)
        with modbus_peer.server(port, "3.0.0"):
            scada = pymodbus_client.ModbusTcpClient("127.0.0.1", port=port, timeout=2)
            scada.connect()
            scada.read_device_information(read_code=1, object_id=0, device_id=1)
            _poll(scada, 8, 0.25)  # four times slower: B4
            scada.read_coils(0, count=8, device_id=1)  # new function: B2
            scada.write_register(150, 1, device_id=1)  # outside learned range: B3, M9
            scada.close()
            intruder = pymodbus_client.ModbusTcpClient(
                "127.0.0.1", port=port, timeout=0.5, retries=0,
                source_address=("127.0.0.2", 0))
            intruder.connect()
            intruder.write_register(10, 9, device_id=1)  # M7, M8, B1
            with contextlib.suppress(Exception):
                intruder.write_coil(1, True, device_id=0, no_response_expected=True)  # M10
            for i in range(12):  # M11 coil toggling
                intruder.write_coil(3, bool(i % 2), device_id=1)
            for _ in range(60):  # M11 write burst
                intruder.write_register(20, 1, device_id=1)
            time.sleep(2.5)  # the SCADA cycle stops: B4 silence
            intruder.read_holding_registers(0, count=1, device_id=1)
            for unit in range(1, 6):  # M4 identification against many units
                intruder.read_device_information(read_code=1, object_id=0, device_id=unit)
            intruder.report_device_id(device_id=1)  # M4 Report Server ID (FC 17)
            for _ in range(6):  # M13: unit 42 is not behind this gateway: exception 0x0B
                intruder.read_holding_registers(0, count=1, device_id=42)
            for address in range(0, 160, 4):  # M5: walking up the holding registers
                intruder.read_holding_registers(address, count=4, device_id=1)
            intruder.close()
            nmap = require_tool("nmap")
            subprocess.run([nmap, "-n", "-Pn", "-p", str(port), "--script", "modbus-discover",
                            "--script-args", "modbus-discover.aggressive=true", "127.0.0.1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                           check=False)
    if pcap.stat().st_size < 1000:
        unavailable("tcpdump captured nothing on lo")
    return pcap, marker, port


def _run(pcap: Path, port: int, freeze_at: float | None, stop_at: float | None
         ) -> list[Alert]:
    detector = Detector(RULES, sets=SITE)
    frozen = False

    def sink(events: list[Any]) -> None:
        nonlocal frozen
        if stop_at is not None:
            events = [e for e in events if e.ts < stop_at]
        if freeze_at is not None and not frozen and events and events[0].ts >= freeze_at:
            detector.inventory.freeze(events[0].ts)
            frozen = True
        detector.process(events)

    replay_files([pcap], PipelineConfig(modbus_ports=frozenset({port})), extra_sinks=[sink])
    return detector.alerts()


TRAFFIC_RULES = {
    "mamori.modbus.unauthorised_write": "127.0.0.2",
    "mamori.modbus.new_master": "127.0.0.2",
    "mamori.baseline.new_pair": "127.0.0.2",
    "mamori.modbus.broadcast_write": "127.0.0.2",
    "mamori.modbus.coil_toggling": "127.0.0.2",
    "mamori.modbus.write_burst": "127.0.0.2",
    "mamori.modbus.device_id_sweep": None,
    "mamori.modbus.report_server_id": "127.0.0.2",
    "mamori.modbus.device_failure_rise": "127.0.0.2",  # answered to the intruder
    "mamori.modbus.address_sweep": "127.0.0.2",
    "mamori.baseline.new_function": "127.0.0.1",
    "mamori.baseline.address_range": "127.0.0.1",
    "mamori.modbus.write_outside_range": "127.0.0.1",
    "mamori.baseline.period_change": "127.0.0.1",
    "mamori.baseline.period_stopped": "127.0.0.1",
    "mamori.baseline.identity_changed": "127.0.0.1",
}


@pytest.mark.parametrize("rule", sorted(TRAFFIC_RULES))
def test_rule_fires_on_generated_traffic(traffic: tuple[Path, float, int], rule: str) -> None:
    pcap, marker, port = traffic
    alerts = [a for a in _run(pcap, port, marker, None) if a.rule == rule]
    assert alerts, f"{rule} did not fire"
    src = TRAFFIC_RULES[rule]
    if src is not None:
        assert any(src in (a.src, a.dst) for a in alerts)


@pytest.mark.parametrize("rule", sorted(TRAFFIC_RULES))
def test_rule_quiet_on_the_learning_phase(traffic: tuple[Path, float, int],
                                          rule: str) -> None:
    pcap, marker, port = traffic
    learned = Detector(RULES, sets=SITE)
    replay_files([pcap], PipelineConfig(modbus_ports=frozenset({port})),
                 extra_sinks=[lambda ev: learned.process([e for e in ev if e.ts < marker])])
    learned.inventory.freeze()
    again = Detector(RULES, sets=SITE, inventory=learned.inventory)
    replay_files([pcap], PipelineConfig(modbus_ports=frozenset({port})),
                 extra_sinks=[lambda ev: again.process([e for e in ev if e.ts < marker])])
    assert rule not in {a.rule for a in learned.alerts() + again.alerts()}
