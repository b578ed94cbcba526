"""Collector acceptance with real sockets and processes: outage, SIGKILL, hostile clients,
50 sensors. Every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from mamori.parsers.wire import Kind
from mamori.sensor.collector.storage import PostgresStorage, SqliteStorage, SqlStorage
from mamori.sensor.forwarding.keys import generate, load_pair, read_key
from tests.ports import free_port

PROJECT = Path(__file__).resolve().parents[2]

# A sensor process: N alerts with ids 1..N, one every INTERVAL s, each committed seq
# printed as it returns; then flush (up to FLUSH s) and exit.
SENSOR = """
import sys, time
from pathlib import Path
from mamori.sensor import config as cfg
from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.forwarding.forwarder import Forwarder
conf, n, interval, flush = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
fw = Forwarder(cfg.load(conf), health=lambda: {"pps": 1.0, "drops": 0, "flows": 1}).start()
print("epoch", fw.epoch, flush=True)
for i in range(1, n + 1):
    t = time.time()
    seq = fw.submit_alert(Alert("mamori.test", "M3", Severity.HIGH, ("T0836",), "test",
                                "modbus", t, t, src="10.0.0.1", sport=40000 + i,
                                dst="10.0.0.2", dport=502, unit=1, evidence={"fc": 6}, id=i))
    print("seq", seq, flush=True)
    time.sleep(interval)
fw.close(flush)
"""


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Site:
    """A collector state dir with keys, and sensor state dirs, in ``tmp``; its store is
    SQLite, or the PostgreSQL database ``dsn`` names."""

    def __init__(self, tmp: Path, sensors: int = 1, extra: str = "", dsn: str = "") -> None:
        self.tmp = tmp
        self.dsn = dsn
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.coll_dir = tmp / "collector"
        generate("collector", self.coll_dir / "keys")
        self.jsonl = tmp / "siem.jsonl"
        self.collector_conf = tmp / "collector.toml"
        self.collector_conf.write_text(
            f'[sensor]\nstate_dir = "{self.coll_dir}"\n[collect]\n'
            f'listen = ["{self.endpoint}"]\npublish = ""\njsonl = "{self.jsonl}"\n'
            f'replay_interval = 0.2\n{extra}' + (f'dsn = "{dsn}"\n' if dsn else ""))
        self.sensor_confs = [self.add_sensor(f"s{i}") for i in range(sensors)]
        self.proc: subprocess.Popen[bytes] | None = None

    def add_sensor(self, name: str) -> Path:
        state = self.tmp / name
        generate(name, self.coll_dir / "keys" / "sensors")
        (state / "keys").mkdir(parents=True)
        secret = self.coll_dir / "keys" / "sensors" / f"{name}.secret"
        (state / "keys" / "sensor.secret").write_bytes(secret.read_bytes())
        os.chmod(state / "keys" / "sensor.secret", 0o600)
        conf = self.tmp / f"{name}.toml"
        conf.write_text(
            f'[sensor]\nstate_dir = "{state}"\n[forward]\nheartbeat_interval = 0.5\n'
            f'ack_timeout = 1.0\ncollectors = [{{endpoint = "{self.endpoint}", '
            f'server_key = "{self.coll_dir / "keys" / "collector.pub"}"}}]\n')
        return conf

    def sensor_key(self, name: str) -> str:
        return read_key(self.coll_dir / "keys" / "sensors" / f"{name}.pub").decode()

    def start_collector(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mamori.sensor.forwarding.cli", "collect", "--config",
             str(self.collector_conf), "--duration", "60"], cwd=PROJECT,
            stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on ..." once bound
        assert b"listening" in line, line

    def stop_collector(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
            self.proc = None

    def storage(self) -> SqlStorage:
        if self.dsn:
            return PostgresStorage(self.dsn)
        return SqliteStorage(self.coll_dir / "collector" / "collector.db")

    def sensor(self, conf: Path, n: int, interval: float = 0.0,
               flush: float = 20.0) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", SENSOR, str(conf), str(n),
                                 str(interval), str(flush)], cwd=PROJECT,
                                stdout=subprocess.PIPE, text=True)

    def jsonl_alerts(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.jsonl.read_text().splitlines()]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    yield s
    if s.proc is not None:
        s.proc.kill()
        s.proc.wait(timeout=10)


def alert_seqs(site: Site, name: str) -> list[tuple[int, int]]:
    st = site.storage()
    try:
        return st.sequence(site.sensor_key(name), int(Kind.ALERT))
    finally:
        st.close()


def test_collector_outage_loses_nothing_and_keeps_order(site: Site) -> None:
    site.start_collector()
    sensor = site.sensor(site.sensor_confs[0], 300, 0.005, flush=25)
    time.sleep(0.5)
    site.stop_collector()  # the sensor keeps producing into its journal
    time.sleep(1.5)
    site.start_collector()
    out, _ = sensor.communicate(timeout=40)
    assert sensor.returncode == 0
    committed = [int(line.split()[1]) for line in out.splitlines() if line.startswith("seq")]
    assert len(committed) == 300
    wait_for(lambda: len(alert_seqs(site, "s0")) == 300, 20, "all alerts stored")
    site.stop_collector()
    assert alert_seqs(site, "s0") == [(1, s) for s in committed]
    published = [(d["epoch"], d["seq"]) for d in site.jsonl_alerts()]
    assert published == [(1, s) for s in committed]  # once each, in seq order


def test_sensor_sigkill_loses_nothing_committed_and_starts_a_new_epoch(site: Site) -> None:
    site.start_collector()
    sensor = site.sensor(site.sensor_confs[0], 100_000, 0.002)
    assert sensor.stdout is not None
    committed: list[int] = []
    deadline = time.monotonic() + 20
    while len(committed) < 400 and time.monotonic() < deadline:
        line = sensor.stdout.readline()
        if line.startswith("seq"):
            committed.append(int(line.split()[1]))
    sensor.send_signal(signal.SIGKILL)
    rest = sensor.stdout.read()  # seqs printed before the kill landed were committed too
    committed += [int(x.split()[1]) for x in rest.splitlines() if x.startswith("seq")]
    sensor.wait(timeout=10)
    again = site.sensor(site.sensor_confs[0], 50, 0.0, flush=20)
    out, _ = again.communicate(timeout=40)
    assert out.splitlines()[0] == "epoch 2"
    wait_for(lambda: len(alert_seqs(site, "s0")) >= len(committed) + 50, 20, "replay")
    site.stop_collector()
    got = alert_seqs(site, "s0")
    epoch1 = [s for e, s in got if e == 1]
    assert set(committed) <= set(epoch1)  # nothing committed is lost
    assert epoch1 == list(range(2, len(epoch1) + 2))  # gap-free (seq 1 is the start record)
    assert [s for e, s in got if e == 2] == list(range(2, 52))
    st = site.storage()
    try:
        assert (2, 1) in st.sequence(site.sensor_key("s0"), int(Kind.HEALTH))  # announced
        status = {r.name: r for r in st.status()}["s0"]
        assert status.epoch == 2 and status.behind == 0 and status.lost == 0
    finally:
        st.close()


def _client(ctx: zmq.Context[zmq.Socket[bytes]], site: Site, public: bytes | None,
            secret: bytes | None) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if public is not None and secret is not None:
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = read_key(site.coll_dir / "keys" / "collector.pub")
    sock.connect(site.endpoint)
    return sock


def test_hostile_clients_are_rejected_and_counted_while_good_sensors_are_served(
        tmp_path: Path) -> None:
    site = Site(tmp_path, sensors=2)
    site.start_collector()
    try:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        stranger = zmq.curve_keypair()
        unknown = _client(ctx, site, *stranger)
        plaintext = _client(ctx, site, None, None)
        pair = load_pair(site.tmp / "s1" / "keys" / "sensor.secret")
        bad = _client(ctx, site, pair.public, pair.secret)
        for sock in (unknown, plaintext):
            sock.send(msgpack.packb([1, 1, 1, time.time(), 4, {}]), zmq.NOBLOCK)
        for frame in [b"garbage\xc1", b"\x00" * 70_000, msgpack.packb([1, "x", 1, 0.0, 1, []]),
                      msgpack.packb([1, 1, 1, 0.0, 42, {}]), msgpack.packb({"sensor": "s0"})]:
            bad.send(frame)
        good = site.sensor(site.sensor_confs[0], 20, 0.0)
        good.communicate(timeout=30)
        wait_for(lambda: len(alert_seqs(site, "s0")) == 20, 10, "the good sensor's alerts")
        status = subprocess.run(
            [sys.executable, "-m", "mamori.sensor.forwarding.cli", "collect", "status", "--config",
             str(site.collector_conf), "--json"], cwd=PROJECT, capture_output=True,
            timeout=30, check=True)
        rows = {r["name"]: r for r in json.loads(status.stdout)}
        assert rows["s0"]["last_seq"] == 21 and rows["s0"]["rejected"] == {}
        bad_counts = rows["s1"]["rejected"]
        assert bad_counts["not_msgpack"] >= 1 and bad_counts["too_large"] >= 1
        assert bad_counts["bad_type"] >= 1 and bad_counts["unknown_kind"] >= 1
        assert bad_counts["bad_envelope"] >= 1
        anonymous = rows["(unauthenticated)"]["rejected"]
        assert anonymous["unknown_key"] >= 1 and anonymous["handshake_failed"] >= 1
        assert site.proc is not None and site.proc.poll() is None  # still serving
        for sock in (unknown, plaintext, bad):
            sock.close(0)
        ctx.term()
    finally:
        site.stop_collector()


SWARM = """
import sys, time
from mamori.sensor import config as cfg
from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.forwarding.forwarder import Forwarder
n = int(sys.argv[1])
fws = [Forwarder(cfg.load(c)).start() for c in sys.argv[2:]]
for i in range(1, n + 1):
    for fw in fws:
        t = time.time()
        fw.submit_alert(Alert("mamori.test", "R2", Severity.LOW, (), "t", "modbus", t, t,
                              src="10.0.0.1", dst="10.0.0.2", dport=502, id=i))
for fw in fws:
    fw.close(30)
"""


def test_fifty_sensors_are_served(tmp_path: Path) -> None:
    site = Site(tmp_path, sensors=50)
    site.start_collector()
    try:
        procs = [subprocess.Popen([sys.executable, "-c", SWARM, "20",
                                   *map(str, site.sensor_confs[i:i + 10])], cwd=PROJECT)
                 for i in range(0, 50, 10)]
        for proc in procs:
            assert proc.wait(timeout=50) == 0

        def all_in() -> bool:
            st = site.storage()
            try:
                return sum(r.last_seq for r in st.status()) == 50 * 21
            finally:
                st.close()
        wait_for(all_in, 20, "every sensor's alerts")
    finally:
        site.stop_collector()
    st = site.storage()
    try:
        rows = st.status()
        assert len(rows) == 50 and all(r.last_seq == 21 and not r.rejected for r in rows)
    finally:
        st.close()
