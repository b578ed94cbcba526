"""Capture workers, live: N processes behind a PACKET_FANOUT group give one process's alerts.

``mamori run`` on the lab's capture interface (tests/netns.py) with ``[capture]
workers`` 1, 2 and 3, each time against the same traffic, whose detection spans
flows: nmap's ``modbus-discover`` with ``aggressive=true`` (a connection per unit
id) against a real server, and a generated capture (tests/workercap.py: a point
scan over many connections, many clients writing to one server, a DNP3 master
link address used from two hosts) put on the wire by tcpreplay. The alerts (rule,
peers, count) must be the same for every worker count, each worker must have seen
frames (the hash really spread the flows), and alerts still get their pcap.

A worker killed with SIGKILL must be restarted, raise S8 and be counted in the
systemd STATUS line; the traffic after the restart is still seen. So must a worker
that is alive but stalled (SIGSTOP): silent for HANG_TIMEOUT, it is killed and
restarted, and the S8 says it stalled.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mamori.sensor.capture.workers import HANG_TIMEOUT
from tests.conftest import PROJECT, stop_all
from tests.netns import SERVER_IP, SpanLab, lab_or_skip
from tests.stormcap import write_pcap
from tests.workercap import frames

MAMORI = str(Path(sys.executable).parent / "mamori")
SAMPLE_PEER = str(PROJECT / "samples" / "make_modbus_sample.py")
WORKER_LINE = re.compile(r"capture worker (\d+): (\d+) frames, (\d+) restarts")


@pytest.fixture(scope="module")
def lab() -> Iterator[SpanLab]:
    with lab_or_skip("mmwk") as span:
        yield span


def _config(base: Path, workers: int) -> Path:
    path = base / "sensor.toml"
    path.write_text(
        f'[sensor]\nstate_dir = "{base}/state"\n\n[capture]\ninterfaces = ["cap0"]\n'
        f'ring_mb = 8\nworkers = {workers}\n\n[health]\nstats_interval = 0.5\n')
    return path


class Daemon:
    """``mamori run`` in the sensor's namespace with a NOTIFY_SOCKET read all along."""

    def __init__(self, lab: SpanLab, config: Path, base: Path) -> None:
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(base / "notify"))
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        self.lines: list[str] = []
        self._stop = threading.Event()
        env = dict(os.environ, NOTIFY_SOCKET=str(base / "notify"))
        self.proc = lab.popen(lab.sensor, [MAMORI, "run", "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._listen, daemon=True)]
        for thread in self._threads:
            thread.start()
        _wait(lambda: self.said("READY=1") or self.proc.poll() is not None, 60, "READY=1")
        assert self.proc.poll() is None, "".join(self.lines)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def said(self, needle: str) -> bool:
        return any(needle in m for m in list(self.messages))

    def workers(self) -> list[int]:
        """The daemon's child processes (its capture workers)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(60)
        finally:
            stop_all([self.proc])
            self._stop.set()
            for thread in self._threads:
                thread.join(10)
            self.notify.close()
        out = "".join(self.lines)
        assert status == 0, out
        return out


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _alerts(base: Path) -> list[dict[str, Any]]:
    out = subprocess.run([MAMORI, "alerts", "--json", "--store",
                          str(base / "state" / "mamori.db")],
                         capture_output=True, text=True, timeout=30)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _summary(alerts: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    """What must not depend on the worker count: rule, peers and count of each alert."""
    return Counter((a["rule"], a["src"], a["dst"], a.get("unit"), a.get("link_src"),
                    a["count"]) for a in alerts if a["proto"] != "sensor")


def _pcaps(base: Path) -> dict[str, int]:
    db = sqlite3.connect(base / "state" / "mamori.db")
    try:
        rows = db.execute("SELECT rule, pcap FROM alerts").fetchall()
    finally:
        db.close()
    kept = Counter(rule for rule, pcap in rows if pcap and Path(pcap).stat().st_size > 24)
    return dict(kept)


@pytest.fixture(scope="module")
def server(lab: SpanLab) -> Iterator[None]:
    proc = lab.popen(lab.srv, [sys.executable, SAMPLE_PEER, "--serve", "502", SERVER_IP],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        waited = lab.ns(lab.srv, sys.executable, "-c",
                        "import sys; sys.path.insert(0, sys.argv[1]); "
                        "from tests.peers.listening import wait_listening; "
                        "sys.exit(0 if wait_listening(sys.argv[2], 502, 30) else 1)",
                        str(PROJECT), SERVER_IP, check=False, timeout=60)
        assert waited.returncode == 0, "the Modbus server did not listen"
        yield
    finally:
        stop_all([proc])


def _run(lab: SpanLab, base: Path, workers: int, capture: Path) -> tuple[str, Path]:
    base.mkdir()
    daemon = Daemon(lab, _config(base, workers), base)
    try:
        nmap = lab.ns(lab.cli, "nmap", "-Pn", "-n", "-p", "502", "--script",
                      "+modbus-discover", "--script-args", "modbus-discover.aggressive=true",
                      SERVER_IP, timeout=300)
        assert "502/tcp" in nmap.stdout, nmap.stdout
        lab.ns(lab.tap, "tcpreplay", "-q", "-i", "gen0", "--pps=1000", str(capture))
        time.sleep(3)  # the watermark, a flush and the packets' post-alert window
    finally:
        out = daemon.stop()
    return out, base


def test_same_alerts_with_one_two_and_three_workers(lab: SpanLab, server: None,
                                                    tmp_path: Path) -> None:
    capture = tmp_path / "spans.pcap"
    write_pcap(capture, frames())
    runs = {n: _run(lab, tmp_path / f"w{n}", n, capture) for n in (1, 2, 3)}
    summaries = {n: _summary(_alerts(base)) for n, (_, base) in runs.items()}
    one = summaries[1]
    rules = {key[0] for key in one}
    # the detections that span flows are there to compare
    assert {"mamori.modbus.point_scan", "mamori.modbus.device_id_sweep",
            "mamori.modbus.unit_sweep", "mamori.modbus.unauthorised_write",
            "mamori.dnp3.address_binding_drift"} <= rules, sorted(rules)
    assert sum(1 for key in one if key[0] == "mamori.modbus.unauthorised_write") >= 24
    for n in (2, 3):
        assert summaries[n] == one, (n, sorted(summaries[n] - one), sorted(one - summaries[n]))
        seen = {int(m[0]): int(m[1]) for m in WORKER_LINE.findall(runs[n][0])}
        assert sorted(seen) == list(range(n)), runs[n][0]
        assert all(count > 0 for count in seen.values()), seen  # the hash spread the flows
    assert not WORKER_LINE.search(runs[1][0])  # one worker: no worker process at all
    # packets behind alerts: the same alerts get a pcap with workers as without
    with_one, with_two = _pcaps(runs[1][1]), _pcaps(runs[2][1])
    assert with_one.get("mamori.modbus.unauthorised_write", 0) >= 24, with_one
    assert with_two == with_one


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stalled"])
def test_a_dead_or_stalled_worker_is_restarted_and_said(lab: SpanLab, tmp_path: Path,
                                                        sig: signal.Signals) -> None:
    """SIGKILL: the worker dies. SIGSTOP: it lives, silent, until HANG_TIMEOUT has
    passed and the daemon kills it. Either way it is restarted once, with one S8 that
    says which, and the traffic after it is all seen."""
    stalled = sig == signal.SIGSTOP
    capture = tmp_path / "spans.pcap"
    write_pcap(capture, frames())
    daemon = Daemon(lab, _config(tmp_path, 2), tmp_path)
    try:
        _wait(lambda: len(daemon.workers()) == 2, 30, "two capture workers")
        _wait(lambda: daemon.said("2/2 workers"), 30, "STATUS with both workers")
        victim = daemon.workers()[0]
        os.kill(victim, sig)
        hit = time.monotonic()
        if stalled:  # traffic while one worker holds the merge back
            lab.ns(lab.tap, "tcpreplay", "-q", "-i", "gen0", "--pps=1000", str(capture))
        _wait(lambda: daemon.said("1 restarts"), HANG_TIMEOUT + 30,
              "a STATUS line counting the restart")
        if stalled:
            assert time.monotonic() - hit >= HANG_TIMEOUT  # not before its time
        _wait(lambda: len(daemon.workers()) == 2 and victim not in daemon.workers(), 30,
              "the worker restarted")
        _wait(lambda: daemon.said("2/2 workers, 1 restarts"), 30, "STATUS with both workers")
        time.sleep(1)
        lab.ns(lab.tap, "tcpreplay", "-q", "-i", "gen0", "--pps=1000", str(capture))
        time.sleep(3)
    finally:
        out = daemon.stop()
    assert ("capture worker 0 sent nothing for" in out) == stalled, out
    alerts = _alerts(tmp_path)
    s8 = [a for a in alerts if a["precursor"] == "S8"]
    assert len(s8) == 1, out
    assert s8[0]["rule"] == "mamori.sensor.worker_restarted"
    assert s8[0]["evidence"]["status"] == -signal.SIGKILL  # stalled: killed by the daemon
    assert s8[0]["evidence"]["restarts"] == 1
    assert s8[0]["evidence"]["hung"] is stalled
    assert ("stalled" in s8[0]["title"]) == stalled
    # after the restart both workers see their share: every writer is still caught
    writers = {a["src"] for a in alerts if a["rule"] == "mamori.modbus.unauthorised_write"}
    assert len(writers) == 24, sorted(writers)
    restarts = {int(m[0]): int(m[2]) for m in WORKER_LINE.findall(out)}
    assert sum(restarts.values()) == 1, out


def test_ready_only_once_every_worker_reads(lab: SpanLab, tmp_path: Path) -> None:
    """READY=1 (and its log line) follows each worker's "reading": none still imports."""
    daemon = Daemon(lab, _config(tmp_path, 3), tmp_path)
    out = daemon.stop()
    ready = out.index("capturing on")
    for index in range(3):
        assert out.index(f"capture worker {index} is reading") < ready, out
