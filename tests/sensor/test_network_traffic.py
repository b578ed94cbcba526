"""Reconnaissance and adversary-in-the-middle, made for real in network namespaces.

A hub (a bridge that forgets MACs, tests/netns.py) joins four namespaces, and
the sensor's capture port sees every frame, as on a SPAN port::

    srv  10.250.1.1, .10-.14   pymodbus on 502 and an opendnp3 outstation on 20000
    cli  10.250.1.2, .15-.17   the SCADA master, polling .10-.12; nothing listens
    atk  10.250.1.66           nmap, arpspoof (Debian's dsniff), IP forwarding on

One capture, labelled by wall-clock time (the pcap's own clock): a benign phase
(the master polls), then ``nmap -sS`` and ``nmap -sT`` of ports 502 and 20000 on
.10-.17, an ``nmap -sS`` of 100 ports on one server, an ``nmap -sn`` ARP sweep of
the /24, and arpspoof poisoning the master and server .10 both ways while the
master keeps polling through the attacker (the servers' host forgets its ARP
cache meanwhile and re-resolves the master, as a real host would). Each rule
must fire inside its own window; the negative for each is the benign phase
alone. The whole test takes about
30 seconds, most of it arpspoof's two-second cadence.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.capture.pcapfile import read_capture_tuples
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.detection import Detector, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names
from tests import netns
from tests.conftest import PROJECT, require_tool, unavailable
from tests.peers.modbus_peer import terminate
from tests.stormcap import write_pcap

RULES = load_rules([SHIPPED_RULES], set_names())
PORTS = PipelineConfig()  # 502 and 20000
SERVERS = [f"10.250.1.{i}" for i in range(10, 15)]
CLOSED = [f"10.250.1.{i}" for i in range(15, 18)]
POLLED = SERVERS[:3]
ATTACKER = "10.250.1.66"
MASTER = netns.CLIENT_IP

# rule -> the labelled window it must fire in
WINDOWS: dict[str, str] = {
    "mamori.network.half_open_scan": "syn_scan",
    "mamori.network.refused_connections": "syn_scan",
    "mamori.network.ics_sweep": "syn_scan",
    "mamori.network.empty_connections": "connect_scan",
    "mamori.network.port_scan": "port_scan",
    "mamori.network.arp_sweep": "host_sweep",
    "mamori.network.ip_mac_changed": "aitm",
    "mamori.network.duplicate_ip": "aitm",
    "mamori.network.arp_reply_storm": "aitm",
    "mamori.network.flow_mac_changed": "aitm",
}
TRAFFIC_RULES = sorted(WINDOWS)


class ReconLab(netns.SpanLab):
    """SpanLab plus an attacker namespace and the extra server and closed addresses."""

    def __init__(self) -> None:
        super().__init__("mrn")
        self.atk = f"{self.prefix}-atk"

    def setup(self) -> ReconLab:
        super().setup()
        netns.sh("ip", "netns", "add", self.atk)
        self.ns(self.atk, "ip", "link", "set", "lo", "up")
        self._veth(self.tap, "atk0p", self.atk, "atk0")
        self.ns(self.atk, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                    "net.ipv4.conf.atk0.send_redirects=0"):
            self.ns(self.atk, "sysctl", "-qw", key)
        self.ns(self.atk, "ip", "addr", "add", f"{ATTACKER}/24", "dev", "atk0")
        self.ns(self.atk, "ip", "link", "set", "atk0", "up")
        self.ns(self.tap, "ip", "link", "set", "atk0p", "master", "br0")
        self.ns(self.tap, "ip", "link", "set", "atk0p", "up")
        for ns, dev, ips in ((self.srv, "srv0", SERVERS), (self.cli, "cli0", CLOSED)):
            for ip in ips:
                self.ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
        return self

    def close(self) -> None:
        super().close()
        netns.sh("ip", "netns", "del", self.atk, check=False)


def _wait_line(proc: subprocess.Popen[str], word: str, stream: str = "stdout",
               timeout: float = 15.0) -> None:
    pipe = getattr(proc, stream)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = pipe.readline()
        if word in line:
            return
        if not line and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited before saying {word!r}")
    raise TimeoutError(f"{proc.args!r} did not say {word!r}")


def _wait_listening(lab: ReconLab, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.ns(lab.srv, "ss", "-Hltn", f"sport = :{port}").stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port} in {lab.srv}")


@contextlib.contextmanager
def _running(lab: ReconLab, namespace: str, args: list[str], ready: str | None = None,
             stream: str = "stdout") -> Iterator[subprocess.Popen[str]]:
    pipes: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if ready is not None:
        pipes[stream] = subprocess.PIPE
    proc = lab.popen(namespace, args, cwd=PROJECT, **pipes)
    try:
        if ready is not None:
            _wait_line(proc, ready, stream)
        yield proc
    finally:
        if proc.poll() is None:
            terminate(proc)


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _arpspoof(lab: ReconLab, target: str, host: str) -> subprocess.Popen[str]:
    return lab.popen(lab.atk, ["arpspoof", "-i", "atk0", "-t", target, host],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _record(lab: ReconLab, pcap: Path) -> dict[str, tuple[float, float]]:
    windows: dict[str, tuple[float, float]] = {}

    def phase(name: str, *commands: list[str]) -> None:
        start = time.time()
        for command in commands:
            lab.ns(lab.atk, *command, timeout=120)
        time.sleep(0.5)
        windows[name] = (start, time.time())

    nmap = ["nmap", "-n", "-T4", "--max-retries", "1"]
    targets = "10.250.1.10-17"
    with _running(lab, lab.sensor, ["tcpdump", "-i", "cap0", "-U", "--immediate-mode",
                                    "-B", "8192", "-w", str(pcap)], "listening", "stderr"), \
            _running(lab, lab.srv, _python("tests.peers.modbus_peer", "502", "2.4.1")), \
            _running(lab, lab.srv, _python("tests.peers.dnp3_peer", "0.0.0.0", "20000"),
                     "listening"):
        _wait_listening(lab, 502)
        start = time.time()
        with _running(lab, lab.cli, _python("tests.peers.poller", "0.2", *POLLED), "polling"):
            time.sleep(3)
            windows["benign"] = (start, time.time())
            phase("syn_scan", [*nmap, "-sS", "-p", "502,20000", targets])
            phase("connect_scan", [*nmap, "-sT", "-p", "502,20000", targets])
            phase("port_scan", [*nmap, "-sS", "-p", "1-100", SERVERS[1]])
            phase("host_sweep", [*nmap, "-sn", "10.250.1.0/24"])
            start = time.time()
            spoofers = [_arpspoof(lab, MASTER, SERVERS[0]), _arpspoof(lab, SERVERS[0], MASTER)]
            try:
                time.sleep(6)
                # The real server forgets and re-resolves the master (its next poll
                # answer needs it): its own ARP request claims its address again.
                lab.ns(lab.srv, "ip", "neigh", "flush", "dev", "srv0")
                time.sleep(6)
            finally:
                for proc in spoofers:
                    proc.send_signal(signal.SIGINT)  # arpspoof re-ARPs the true bindings
                for proc in spoofers:
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
            time.sleep(1)
            windows["aitm"] = (start, time.time())
    return windows


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[float,
                                                                                   float]]]:
    why = netns.available()
    if why:
        unavailable(why)
    for tool in ("tcpdump", "nmap", "arpspoof", "ss"):
        require_tool(tool)
    pcap = tmp_path_factory.mktemp("network") / "network.pcap"
    lab = ReconLab().setup()
    try:
        windows = _record(lab, pcap)
    finally:
        lab.close()
    return pcap, windows


def _detect(pcap: Path) -> list[Alert]:
    detector = Detector(RULES)
    replay_files([pcap], PORTS, extra_sinks=[detector.process])
    return detector.alerts()


@pytest.fixture(scope="module")
def alerts(traffic: tuple[Path, dict[str, tuple[float, float]]]) -> list[Alert]:
    return _detect(traffic[0])


@pytest.fixture(scope="module")
def benign_alerts(traffic: tuple[Path, dict[str, tuple[float, float]]],
                  tmp_path_factory: pytest.TempPathFactory) -> list[Alert]:
    pcap, windows = traffic
    end = windows["benign"][1]
    records = [(ts, data) for ts, _, data, _ in read_capture_tuples(pcap) if ts < end]
    assert len(records) > 50  # the master polled three servers for three seconds
    benign = tmp_path_factory.mktemp("benign") / "benign.pcap"
    write_pcap(benign, records)
    return _detect(benign)


@pytest.mark.parametrize("rule", TRAFFIC_RULES)
def test_rule_fires_in_its_labelled_window(
        rule: str, alerts: list[Alert],
        traffic: tuple[Path, dict[str, tuple[float, float]]]) -> None:
    start, end = traffic[1][WINDOWS[rule]]
    times = [a.first_ts for a in alerts if a.rule == rule]
    assert any(start <= t <= end for t in times), (rule, WINDOWS[rule], times)


@pytest.mark.parametrize("rule", TRAFFIC_RULES)
def test_rule_quiet_on_the_benign_phase(rule: str, benign_alerts: list[Alert]) -> None:
    assert rule not in {a.rule for a in benign_alerts}


def test_the_benign_phase_raises_nothing_at_all(benign_alerts: list[Alert]) -> None:
    assert [(a.rule, a.count) for a in benign_alerts] == []


def test_each_window_is_attributed_to_its_attacker(
        alerts: list[Alert], traffic: tuple[Path, dict[str, tuple[float, float]]]) -> None:
    windows = traffic[1]
    recon = [a for a in alerts if a.rule in WINDOWS and WINDOWS[a.rule] != "aitm"]
    assert recon and {a.src for a in recon if a.src is not None} == {ATTACKER}
    sweep = [a for a in alerts if a.rule == "mamori.network.ics_sweep"]
    assert sweep and all(a.evidence.get("anomaly") for a in sweep)
    # The servers share one interface, hence one ARP cache: poisoning it for the
    # master sends the answers of all three polled servers through the attacker.
    flows = {(a.src, a.dst, a.dport) for a in alerts
             if a.rule == "mamori.network.flow_mac_changed"}
    assert flows == {(MASTER, server, 502) for server in POLLED}
    changed = {a.src for a in alerts if a.rule == "mamori.network.ip_mac_changed"}
    assert {MASTER, SERVERS[0]} <= changed <= {MASTER, *POLLED}, changed
    duplicated = {a.src for a in alerts if a.rule == "mamori.network.duplicate_ip"}
    assert duplicated == {MASTER, SERVERS[0]}, duplicated
    start, _ = windows["syn_scan"]
    assert not [a for a in alerts if a.rule.startswith("mamori.network.")
                and a.first_ts < start], "nothing before the first attack"


def test_the_poisoned_flow_is_still_parsed_through_the_attacker(
        traffic: tuple[Path, dict[str, tuple[float, float]]]) -> None:
    from mamori.parsers.modbus import ModbusResponse

    pcap, windows = traffic
    start, end = windows["aitm"]
    answered: list[float] = []

    def sink(events: list[Any]) -> None:
        answered.extend(e.ts for e in events if isinstance(e, ModbusResponse)
                        and e.flow.server == SERVERS[0] and start <= e.ts <= end)

    replay_files([pcap], PORTS, extra_sinks=[sink])
    assert len(answered) > 20  # polled every 0.2 s through the attacker
