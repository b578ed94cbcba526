"""End to end on a SPAN port in network namespaces: live traffic in, alerts at the collector.

This is the acceptance test of the live daemon (see ``tests/netns.py`` for the lab):

* ``mamori run`` captures on ``cap0`` (no IP, ARP off, IPv6 off before link up), with a
  local collector in its namespace and a NOTIFY_SOCKET bound by the test;
* a pymodbus server and client talk across two other namespaces, the client forcing
  listen-only mode (M1) and restarting communications (M2);
* ``nmap --script +modbus-discover`` sweeps the server's unit ids with Report Server
  ID (device identification harvesting, M4; unit-id sweep, M6);
* tcpreplay puts a DNP3 cold restart (D1) and a Modbus capture on the wire;
* the expected alerts must arrive at the collector, the capture interface must have
  sent nothing (``tx_packets`` 0), and the heartbeats must carry the drop counter.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT, corpus_path, stop_all
from tests.netns import CLIENT_IP, SERVER_IP, SpanLab, lab_or_skip

MAMORI = str(Path(sys.executable).parent / "mamori")
SAMPLE_PEER = str(PROJECT / "samples" / "make_modbus_sample.py")
COLLECTOR_PORT = 7790


@pytest.fixture
def lab() -> Iterator[SpanLab]:
    with lab_or_skip("mme2e") as span:
        yield span


def _keys(base: Path) -> None:
    subprocess.run([MAMORI, "keys", "generate", "collector", "--dir",
                    str(base / "collector" / "keys")], check=True, capture_output=True)
    subprocess.run([MAMORI, "keys", "generate", "sensor", "--dir",
                    str(base / "sensor" / "keys")], check=True, capture_output=True)
    allow = base / "collector" / "keys" / "sensors"
    allow.mkdir(parents=True)
    shutil.copy(base / "sensor" / "keys" / "sensor.pub", allow / "sensor.pub")


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_span_port_end_to_end(lab: SpanLab, tmp_path: Path) -> None:
    base = tmp_path
    _keys(base)
    siem = base / "collector" / "siem.jsonl"
    (base / "collector.toml").write_text(
        f'[sensor]\nstate_dir = "{base}/collector"\n\n'
        f'[collect]\nlisten = ["tcp://127.0.0.1:{COLLECTOR_PORT}"]\npublish = ""\n'
        f'jsonl = "{siem}"\n')
    (base / "sensor.toml").write_text(
        f'[sensor]\nstate_dir = "{base}/sensor"\n\n'
        f'[capture]\ninterfaces = ["cap0"]\nring_mb = 8\n\n'
        f'[health]\nstats_interval = 1.0\n\n'
        f'[forward]\ncollectors = [{{ endpoint = "tcp://127.0.0.1:{COLLECTOR_PORT}", '
        f'server_key = "{base}/collector/keys/collector.pub" }}]\nheartbeat_interval = 1.0\n')
    notify_path = base / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    messages: list[str] = []

    def heard(needle: str) -> bool:
        try:
            while True:
                messages.append(notify.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            pass
        return any(needle in m for m in messages)

    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="2000000")
    procs: list[subprocess.Popen[str]] = []
    try:
        collector = lab.popen(lab.sensor, [MAMORI, "collect", "--config",
                                           str(base / "collector.toml"), "--duration", "300"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(collector)
        sensor = lab.popen(lab.sensor, [MAMORI, "run", "--config", str(base / "sensor.toml")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        procs.append(sensor)
        _wait(lambda: heard("READY=1"), 30, "READY=1 from mamori run")
        _wait(lambda: heard("WATCHDOG=1"), 10, "WATCHDOG=1")

        server = lab.popen(lab.srv, [sys.executable, SAMPLE_PEER, "--serve", "502", SERVER_IP],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(server)
        time.sleep(2.0)
        # The scripted session: SCADA polling, then an intruder (listen-only, restart).
        lab.ns(lab.cli, sys.executable, SAMPLE_PEER, "--drive", "502", SERVER_IP, timeout=120)
        nmap = lab.ns(lab.cli, "nmap", "-Pn", "-n", "-p", "502", "--script",
                      "+modbus-discover", "--script-args", "modbus-discover.aggressive=true",
                      SERVER_IP, timeout=180)
        assert "502/tcp" in nmap.stdout, nmap.stdout
        # Corpus traffic straight onto the sensor's wire, addresses mapped onto our hosts.
        lab.replay(corpus_path("ICS-Security-Tools/pcaps/dnp3/cold_restart_and_response.pcap"),
                   pps=100, rewrite_to=base / "dnp3.pcap")
        lab.replay(corpus_path("suricata-verify/tests/modbus/modbus.pcap"), pps=500,
                   rewrite_to=base / "modbus.pcap")

        # M4/M6: nmap sweeping unit ids with Report Server ID (FC 17).
        wanted = {"M1", "M2", "M3", "M4", "M6", "D1"}

        def arrived() -> set[str]:
            if not siem.exists():
                return set()
            return {json.loads(line)["precursor"] for line in siem.read_text().splitlines()
                    if line.strip()}

        _wait(lambda: wanted <= arrived(), 60,
              f"alerts {sorted(wanted)} at the collector (have {sorted(arrived())})")
        _wait(lambda: heard("dropped"), 10, "a STATUS line with the drop counter")
        assert lab.counter("tx_packets") == 0
        assert lab.counter("rx_packets") > 100

        db = sqlite3.connect(base / "collector" / "collector" / "collector.db")
        bodies = [json.loads(row[0]) for row in db.execute("SELECT body FROM heartbeats")]
        db.close()
        assert bodies and "drops" in bodies[0] and "pps" in bodies[0], bodies

        sensor.terminate()
        out, _ = sensor.communicate(timeout=30)
        assert sensor.returncode == 0, out
        alerts = [json.loads(line) for line in siem.read_text().splitlines() if line.strip()]
        sources = {a.get("src") for a in alerts}
        assert sources <= {CLIENT_IP, SERVER_IP, None, "cap0"}, sources
    finally:
        stop_all(procs)
        notify.close()
