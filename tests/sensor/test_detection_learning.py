"""Learning that cannot be poisoned (issue 15 item 1), on traffic made in the test.

Modbus: a pymodbus server and, from 127.0.0.5, a benign SCADA poller (a read and a
write every 50 ms, all along). After a quiet start, an attacker (127.0.0.2)
starts while the sensor is learning: Report Server ID, device identification
against five units, a unit-id sweep, then writes; a rogue client (127.0.0.3)
only writes; nmap's modbus-discover probes from 127.0.0.1. DNP3: a real opendnp3
master polls a real outstation, then a second master from 127.0.0.2 uses the
same master link address (a spoofed master).

With the default configuration (seven days of learning) every one of them alerts
within its first minute and is refused as a master, while the poller raises
nothing; it is learned once it has polled for ``learning_min_span`` (shortened
here), and ``mamori baseline status`` says who was learned, who was refused and
why. ``mamori replay --learn-for`` learns the quiet start and enforces the rest.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor import config as cfg
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.cli import main
from mamori.sensor.detection import Detector, load_rules
from mamori.sensor.detection.inventory import MasterState
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import build_detector, set_names
from tests.conftest import captured_on_lo, require_tool, unavailable
from tests.peers import dnp3_peer, modbus_peer
from tests.peers.capture import capture
from tests.ports import free_port

RULES = load_rules([SHIPPED_RULES], set_names())
POLLER, ATTACKER, ROGUE, NMAP = "127.0.0.5", "127.0.0.2", "127.0.0.3", "127.0.0.1"
FIRST_MINUTE = 60.0
RECON = {"mamori.modbus.report_server_id", "mamori.modbus.device_id_read",
         "mamori.modbus.device_id_sweep"}
SHORT = "[detection]\nlearning_min_span = 1\n"  # the poller polls for ~4 s


@dataclass
class Modbus:
    pcap: Path
    port: int
    start: float  # the poller's first request (packet time)
    marker: float  # end of the quiet start: only the poller before this


def _client(port: int, source: str) -> Any:
    import pymodbus.client as pymodbus_client
    client = pymodbus_client.ModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0,
                                             source_address=(source, 0))
    assert client.connect()
    return client


@pytest.fixture(scope="module")
def modbus(tmp_path_factory: pytest.TempPathFactory) -> Modbus:
    require_tool("tcpdump")
    nmap = require_tool("nmap")
    port = free_port()
    pcap = tmp_path_factory.mktemp("learning") / "modbus.pcap"
    stop = threading.Event()
    with capture(pcap, port), modbus_peer.server(port):
        poller = _client(port, POLLER)

        def poll() -> None:
            while not stop.is_set():
                poller.read_holding_registers(0, count=10, device_id=1)
                poller.write_register(10, 5, device_id=1)
                time.sleep(0.05)

        thread = threading.Thread(target=poll)
        start = time.time()
        thread.start()
        try:
            time.sleep(1.5)
            marker = time.time()
            attacker = _client(port, ATTACKER)
            attacker.report_device_id(device_id=1)
            for unit in range(1, 6):
                attacker.read_device_information(read_code=1, object_id=0, device_id=unit)
            for unit in range(1, 11):
                attacker.read_holding_registers(0, count=1, device_id=unit)
            attacker.write_register(10, 99, device_id=1)
            attacker.write_coil(0, True, device_id=1)
            attacker.close()
            rogue = _client(port, ROGUE)
            rogue.write_register(11, 1, device_id=1)
            rogue.write_register(11, 2, device_id=1)
            rogue.close()
            subprocess.run([nmap, "-n", "-Pn", "-p", str(port), "--script", "+modbus-discover",
                            "127.0.0.1"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60, check=False)
            time.sleep(1.0)
        finally:
            stop.set()
            thread.join(10)
            poller.close()
    if pcap.stat().st_size < 1000:
        unavailable("tcpdump captured nothing on lo")
    return Modbus(pcap, port, start, marker)


def _detect(pcap: Path, ports: PipelineConfig, config: str | None, tmp: Path) -> Detector:
    path = None
    if config is not None:
        path = tmp / "sensor.toml"
        path.write_text(config, encoding="utf-8")
    detector = build_detector(cfg.load(path), RULES)
    replay_files([pcap], ports, extra_sinks=[detector.process])
    return detector


def _ports(port: int) -> PipelineConfig:
    return PipelineConfig(modbus_ports=frozenset({port}))


def _loud(alerts: list[Alert], src: str) -> list[Alert]:
    return [a for a in alerts if a.src == src and a.severity >= Severity.MEDIUM]


def test_attacker_during_learning_alerts_from_the_first_minute(modbus: Modbus,
                                                              tmp_path: Path) -> None:
    detector = _detect(modbus.pcap, _ports(modbus.port), None, tmp_path)  # the defaults
    inv = detector.inventory
    assert not inv.enforcing  # all of it inside the seven days of learning
    alerts = detector.alerts()
    attacker = {a.rule: a for a in _loud(alerts, ATTACKER)}
    assert RECON | {"mamori.modbus.unauthorised_write"} <= set(attacker), sorted(attacker)
    rogue = {a.rule: a for a in _loud(alerts, ROGUE)}
    assert set(rogue) == {"mamori.modbus.unauthorised_write"}  # held, never excused
    assert rogue["mamori.modbus.unauthorised_write"].count == 2
    assert {a.rule for a in _loud(alerts, NMAP)} & RECON  # modbus-discover: FC 17
    for alert in [*attacker.values(), *rogue.values()]:
        assert alert.first_ts - modbus.start < FIRST_MINUTE, alert
        assert alert.first_ts >= modbus.marker  # nothing before the attack began
    # refused, with the alert that did it; never learned
    for ip, reason in ((ATTACKER, "mamori.modbus.report_server_id"),
                       (ROGUE, "mamori.modbus.unauthorised_write"),
                       (NMAP, "mamori.modbus.")):
        assert inv.assets[ip].master is MasterState.REFUSED
        assert inv.assets[ip].reason.startswith(reason), inv.assets[ip].reason
    # the poller raised nothing: its start-up writes were held, then excused
    assert _loud(alerts, POLLER) == []
    poller = inv.assets[POLLER]
    assert poller.master is MasterState.CANDIDATE and poller.poller and poller.excused >= 1
    assert POLLER not in inv.learned_masters  # ~4 s of polling is not 10 minutes
    assert inv.learned_masters == set()
    assert detector.stats.refused == 3


def test_a_sustained_poller_is_learned_and_the_attackers_are_not(modbus: Modbus,
                                                                 tmp_path: Path) -> None:
    detector = _detect(modbus.pcap, _ports(modbus.port), SHORT, tmp_path)
    inv = detector.inventory
    assert not inv.enforcing
    assert inv.learned_masters == {POLLER}
    assert inv.assets[POLLER].best_cycles >= 20
    assert _loud(detector.alerts(), POLLER) == []
    assert {ip for ip, a in inv.assets.items() if a.master is MasterState.REFUSED} == {
        ATTACKER, ROGUE, NMAP}
    # freezing now vouches for clean pollers only: the refused stay out
    inv.freeze()
    assert inv.learned_masters == {POLLER}
    assert all(p.learned == (p.key[1] == POLLER) for p in inv.pairs.values())


def test_a_single_connection_is_never_enough(modbus: Modbus, tmp_path: Path) -> None:
    """The same capture with the learning period ending by itself: nobody vouches,
    and ~4 s of polling is far from 20 cycles over 10 minutes."""
    detector = _detect(modbus.pcap, _ports(modbus.port), "[detection]\nlearning_period = 1\n",
                       tmp_path)
    assert detector.inventory.enforcing and detector.inventory.learned_masters == set()


def test_baseline_status_shows_learned_and_refused(modbus: Modbus, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "sensor.toml"
    conf.write_text(SHORT, encoding="utf-8")
    store = tmp_path / "mamori.db"
    assert main(["replay", str(modbus.pcap), "--no-progress", "--modbus-ports",
                 str(modbus.port), "--config", str(conf), "--store", str(store)]) == 0
    capsys.readouterr()
    assert main(["baseline", "status", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "state learning" in out
    lines = {line.split()[1]: line for line in out.splitlines()[1:]}
    assert lines[POLLER].startswith("learned ") and "poll cycles over" in lines[POLLER]
    assert lines[ATTACKER].startswith("refused ")
    assert "mamori.modbus.report_server_id (M4)" in lines[ATTACKER]
    assert "mamori.modbus.unauthorised_write (M7)" in lines[ROGUE]


def test_baseline_freeze_vouches_for_a_clean_poller_only(modbus: Modbus, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    store = tmp_path / "mamori.db"
    assert main(["replay", str(modbus.pcap), "--no-progress", "--modbus-ports",
                 str(modbus.port), "--store", str(store)]) == 0  # the defaults: nobody learned
    capsys.readouterr()
    assert main(["baseline", "status", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"candidate {POLLER}  not learned: " in out and "/20 poll cycles" in out
    assert main(["baseline", "freeze", "--store", str(store)]) == 0
    assert f"vouched for 1 polling candidate(s): {POLLER}" in capsys.readouterr().out
    assert main(["baseline", "status", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("state enforcing") and f"learned   {POLLER}" in out
    assert f"refused   {ATTACKER}" in out


def test_replay_learn_for_learns_then_enforces_in_one_run(
        modbus: Modbus, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "alerts.jsonl"
    learn = modbus.marker - modbus.start - 0.2
    assert main(["replay", str(modbus.pcap), "--no-progress", "--modbus-ports",
                 str(modbus.port), "--learn-for", f"{learn:.3f}s", "--alerts", str(out)]) == 0
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    loud = [a for a in alerts if Severity.parse(a["severity"]) >= Severity.MEDIUM]
    assert [a for a in loud if a["src"] == POLLER] == []  # learned in the first part
    assert all(a["first_ts"] >= modbus.marker for a in loud)
    by_src = {ip: {a["rule"] for a in loud if a["src"] == ip} for ip in (ATTACKER, ROGUE)}
    # enforcing now: new masters of a known server and new pairs, as well as M7 and recon
    for ip in (ATTACKER, ROGUE):
        assert {"mamori.modbus.new_master", "mamori.baseline.new_pair",
                "mamori.modbus.unauthorised_write"} <= by_src[ip], by_src
    assert by_src[ATTACKER] >= RECON


def test_replay_learn_for_refuses_bad_durations_and_a_baseline(
        modbus: Modbus, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "-5", "nan", "soon"):
        with pytest.raises(SystemExit) as exit_:
            main(["replay", str(modbus.pcap), "--learn-for", bad])
        assert exit_.value.code == 2
        assert "--learn-for" in capsys.readouterr().err
    baseline = tmp_path / "baseline.json"
    assert main(["replay", str(modbus.pcap), "--no-progress", "--modbus-ports",
                 str(modbus.port), "--store", str(tmp_path / "a.db")]) == 0
    assert main(["baseline", "export", str(baseline), "--store", str(tmp_path / "a.db")]) == 0
    capsys.readouterr()
    assert main(["replay", str(modbus.pcap), "--learn-for", "1m", "--baseline",
                 str(baseline)]) == 2
    err = capsys.readouterr().err
    assert "--learn-for" in err and "--baseline" in err and len(err.splitlines()) == 1


# -- DNP3: a spoofed master link address while learning --------------------------------

def _make_spoofed(tmp: Path) -> tuple[Path, int, float]:
    port = dnp3_peer.free_port()
    pcap = tmp / "dnp3.pcap"
    with dnp3_peer.capture(pcap, port), dnp3_peer.Stacks(port) as stacks:
        start = time.time()
        for _ in range(6):
            assert stacks.integrity_poll() == "SUCCESS"
            time.sleep(0.2)
        stacks.master.Disable()  # one connection per outstation: the spoofer takes it
        time.sleep(0.2)
        with dnp3_peer.Stacks(port, outstation=False, source=ATTACKER) as spoof:
            assert spoof.integrity_poll() == "SUCCESS"
        with contextlib.suppress(Exception):
            stacks.master.Enable()
    if pcap.stat().st_size < 500:
        unavailable("tcpdump captured nothing on lo")
    return pcap, port, start


@pytest.fixture(scope="module")
def spoofed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, float]:
    return captured_on_lo(_make_spoofed, tmp_path_factory, "spoof")


def test_spoofed_link_address_alerts_while_learning(spoofed: tuple[Path, int, float],
                                                    tmp_path: Path) -> None:
    pcap, port, start = spoofed
    ports = PipelineConfig(modbus_ports=frozenset(), dnp3_ports=frozenset({port}))
    detector = _detect(pcap, ports, None, tmp_path)  # the defaults
    inv = detector.inventory
    assert not inv.enforcing
    alerts = detector.alerts()
    (d15,) = [a for a in alerts if a.rule == "mamori.dnp3.address_binding_drift"]
    assert d15.src == ATTACKER and d15.link_src == dnp3_peer.MASTER_ADDR
    assert d15.first_ts - start < FIRST_MINUTE
    assert inv.assets[ATTACKER].master is MasterState.REFUSED
    assert "address_binding_drift (D15)" in inv.assets[ATTACKER].reason
    # the genuine master: a clean poller, nothing loud; the binding stays its own
    assert _loud(alerts, "127.0.0.1") == []
    assert inv.assets["127.0.0.1"].poller
    assert inv.link_ips[("master", dnp3_peer.MASTER_ADDR)] == {"127.0.0.1"}


def test_new_master_is_modbus_only(spoofed: tuple[Path, int, float], tmp_path: Path) -> None:
    """M8 is the Modbus rule: a new DNP3 master after learning is B1 (and here D15),
    never ``mamori.modbus.new_master``."""
    pcap, port, _ = spoofed
    ports = PipelineConfig(modbus_ports=frozenset(), dnp3_ports=frozenset({port}))
    first: list[float] = []
    replay_files([pcap], ports, extra_sinks=[
        lambda ev: first.extend(e.ts for e in ev if (flow := getattr(e, "flow", None)) is not None
                                and flow.client == ATTACKER)])
    assert first
    detector = Detector(RULES)
    frozen = False

    def sink(events: list[Any]) -> None:
        nonlocal frozen
        if not frozen and events and events[0].ts >= first[0]:
            detector.inventory.freeze(events[0].ts)
            frozen = True
        detector.process(events)

    replay_files([pcap], ports, extra_sinks=[sink])
    rules = {a.rule for a in detector.alerts() if a.src == ATTACKER}
    assert {"mamori.baseline.new_pair", "mamori.dnp3.address_binding_drift"} <= rules, rules
    assert "mamori.modbus.new_master" not in rules
    assert "127.0.0.1" in detector.inventory.learned_masters  # the genuine master, vouched
