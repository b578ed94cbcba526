"""Fault injection at volume: the forwarding backlog always drains.

Real processes on loopback: collectors (``mamori collect``) behind TCP proxies that can cut
the link, and sensor processes journaling alerts as fast as they can. A seeded schedule
(printed, and reproducible with ``MAMORI_FAULT_SEED``) runs several cycles. In each, a
sensor run starts while the link is up, then the collector is stopped (SIGTERM), killed
(SIGKILL) or cut off (the proxy drops every connection and refuses new ones), the sensor
journals a backlog of more than twenty send windows while the collector is away, and then
ends, killed or by running out of time to flush, so the backlog belongs to an epoch
whose process is gone (in some cycles the collector returns while the same run goes on).
The next cycle's sensor is a new epoch and must send it all.

The assertion is the one a national collector relies on: the set of (epoch, seq) the
collector stored equals the set in the sensor's journal, nothing is stored or written to the
SIEM file twice, and every stream is complete (no gaps, nothing marked lost).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mamori.parsers.wire import Kind
from mamori.sensor.collector.storage import PostgresStorage, SqliteStorage, SqlStorage
from mamori.sensor.forwarding.keys import generate, read_key
from tests.ports import free_port
from tests.sensor.test_collector import SENSOR, wait_for
from tests.sensor.test_collector_postgres import dsn  # noqa: F401 (a fixture)

PROJECT = Path(__file__).resolve().parents[2]
WINDOW = 100  # the sensors' send window in these tests
BACKLOG = 21 * WINDOW  # at least this many messages are journaled during each outage
SEEDS = [int(os.environ["MAMORI_FAULT_SEED"])] if "MAMORI_FAULT_SEED" in os.environ \
    else [20261203, 5]


class LinkProxy:
    """A TCP relay in front of a collector whose link can be cut and restored.

    ``down()`` closes the listening socket and every relayed connection, so the sensor
    sees a dead link (its reconnects are refused) while the collector keeps running.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def down(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()  # the collector is down: the link is refused too
                continue
            server.settimeout(None)
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@dataclass
class Collector:
    """One ``mamori collect`` process with its own keys, store and SIEM file."""

    root: Path
    dsn: str = ""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        generate("collector", self.root / "keys")
        (self.root / "keys" / "sensors").mkdir(exist_ok=True)
        self.proxy = LinkProxy(self.port)
        self.proxy.up()
        self.jsonl = self.root / "siem.jsonl"
        self.conf = self.root / "collector.toml"
        dsn_line = f'dsn = "{self.dsn}"\n' if self.dsn else ""
        self.conf.write_text(
            f'[sensor]\nstate_dir = "{self.root}"\n[collect]\n'
            f'listen = ["tcp://127.0.0.1:{self.port}"]\npublish = ""\n'
            f'jsonl = "{self.jsonl}"\nreplay_interval = 0.2\n{dsn_line}')

    @property
    def endpoint(self) -> str:  # what sensors connect to: the proxy
        return f"tcp://127.0.0.1:{self.proxy.port}"

    def allow(self, public_key: Path) -> None:
        (self.root / "keys" / "sensors" / public_key.name).write_bytes(public_key.read_bytes())

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mamori.sensor.forwarding.cli", "collect", "--config",
             str(self.conf), "--duration", "900"], cwd=PROJECT, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert b"listening" in line, line

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
            self.proc = None

    def storage(self) -> SqlStorage:
        if self.dsn:
            return PostgresStorage(self.dsn)
        return SqliteStorage(self.root / "collector" / "collector.db")

    def stored(self, sensor: str) -> list[tuple[int, int]]:
        st = self.storage()
        try:
            return st.sequence(sensor)
        finally:
            st.close()

    def streams(self, sensor: str) -> dict[int, int]:
        st = self.storage()
        try:
            rows = st._all("SELECT epoch, contig FROM streams WHERE sensor = ?", (sensor,))
            return {int(e): int(c) for e, c in rows}
        finally:
            st.close()

    def siem(self) -> list[tuple[int, int]]:
        if not self.jsonl.exists():
            return []
        docs = [json.loads(line) for line in self.jsonl.read_text().splitlines()]
        return [(int(d["epoch"]), int(d["seq"])) for d in docs
                if d.get("event_type") != "health"]


class Sensor:
    """A sensor state dir forwarding to ``collectors``; each ``run`` is a new epoch."""

    def __init__(self, root: Path, collectors: list[Collector]) -> None:
        self.root = root
        keys = root / "keys"
        generate("sensor", keys)
        for c in collectors:
            c.allow(keys / "sensor.pub")
        self.key = read_key(keys / "sensor.pub").decode()
        entries = ", ".join(
            f'{{endpoint = "{c.endpoint}", server_key = "{c.root / "keys" / "collector.pub"}"}}'
            for c in collectors)
        self.conf = root / "sensor.toml"
        self.conf.write_text(
            f'[sensor]\nstate_dir = "{root}"\n[forward]\nsecret_key = "keys/sensor.secret"\n'
            f'heartbeat_interval = 0.5\nack_timeout = 1.0\nwindow = {WINDOW}\n'
            f'collectors = [{entries}]\n')
        self.proc: subprocess.Popen[str] | None = None
        self.committed = 0
        self.flush = 0.0

    def start(self, n: int, flush: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SENSOR, str(self.conf), str(n),
                                      "0", str(flush)], cwd=PROJECT, stdout=subprocess.PIPE,
                                     text=True)
        self.committed = 0
        self.flush = flush

    def wait_committed(self, n: int, timeout: float = 120) -> None:
        """Read the sensor's output until it has committed ``n`` alerts of this run."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while self.committed < n:
            assert time.monotonic() < deadline, f"sensor committed only {self.committed}"
            line = self.proc.stdout.readline()
            assert line, f"sensor ended after {self.committed} commits"
            if line.startswith("seq"):
                self.committed += 1

    def end(self, how: str) -> None:
        assert self.proc is not None
        if how == "sigkill":
            self.proc.send_signal(signal.SIGKILL)
        out, _ = self.proc.communicate(timeout=self.flush + 60)
        if how != "sigkill":
            assert self.proc.returncode == 0, out[-2000:]
        self.proc = None

    def journal(self) -> tuple[set[tuple[int, int]], set[tuple[int, int]], dict[int, int]]:
        """Every journaled (epoch, seq), the alerts among them, and each epoch's last seq."""
        db = sqlite3.connect(self.root / "forward" / "journal.db")
        try:
            rows = db.execute("SELECT epoch, seq, kind FROM messages").fetchall()
            (evicted,) = db.execute("SELECT COUNT(*) FROM evicted").fetchone()
            last = dict(db.execute("SELECT epoch, last_seq FROM epochs").fetchall())
        finally:
            db.close()
        assert evicted == 0  # the budget is large: any loss here would be the test's fault
        return ({(e, s) for e, s, _ in rows},
                {(e, s) for e, s, k in rows if k == int(Kind.ALERT)}, last)


@dataclass(frozen=True)
class Cycle:
    """One outage: ``before`` alerts with the link up, then ``fault`` on the collectors
    named by ``targets``, ``during`` alerts journaled while they are away, then the sensor
    run ends by ``end`` (SIGKILL, or exit after a flush too short to drain)."""

    before: int
    fault: str  # sigterm | sigkill | link
    targets: tuple[int, ...]
    during: int
    end: str  # sigkill | exit | stay (the collector returns while the run goes on)


def schedule(seed: int, collectors: int, cycles: int = 4) -> list[Cycle]:
    rng = random.Random(seed)
    out = []
    for _ in range(cycles):
        n = rng.randint(1, collectors)
        out.append(Cycle(before=rng.randint(50, 400),
                         fault=rng.choice(["sigterm", "sigkill", "link"]),
                         targets=tuple(sorted(rng.sample(range(collectors), n))),
                         during=BACKLOG + rng.randint(0, 4 * WINDOW),
                         end=rng.choice(["sigkill", "exit", "stay"])))
    return out


def _fault(c: Collector, fault: str) -> None:
    if fault == "link":
        c.proxy.down()
    else:
        c.stop(signal.SIGKILL if fault == "sigkill" else signal.SIGTERM)


def _restore(c: Collector, fault: str) -> None:
    if fault == "link":
        c.proxy.up()
    else:
        c.start()


def run_schedule(tmp: Path, seed: int, collectors: list[Collector]) -> None:
    plan = schedule(seed, len(collectors))
    print(f"fault schedule (MAMORI_FAULT_SEED={seed}, window {WINDOW}):")
    for i, cycle in enumerate(plan, 1):
        print(f"  cycle {i}: {cycle}")
    sensor = Sensor(tmp / "sensor", collectors)
    for c in collectors:
        c.start()
    try:
        for cycle in plan:
            extra = WINDOW if cycle.end == "stay" else 0
            sensor.start(cycle.before + cycle.during + extra, flush=0.3)
            sensor.wait_committed(cycle.before)
            for i in cycle.targets:
                _fault(collectors[i], cycle.fault)
            sensor.wait_committed(cycle.before + cycle.during)
            if cycle.end == "stay":  # the collector returns to the same sensor process
                for i in cycle.targets:
                    _restore(collectors[i], cycle.fault)
                sensor.wait_committed(cycle.before + cycle.during + extra)
                sensor.end("exit")
                continue
            sensor.end(cycle.end)
            for i in cycle.targets:
                _restore(collectors[i], cycle.fault)
        # A last run with nothing new to say drains whatever the earlier epochs left.
        sensor.start(0, flush=120)
        sensor.end("exit")
        journaled, alerts, last_seq = sensor.journal()
        for c in collectors:
            def complete(c: Collector = c) -> bool:
                return len(c.stored(sensor.key)) >= len(journaled)
            wait_for(complete, 60, f"collector {c.root.name} complete")
            c.stop()
        report = []
        for c in collectors:
            stored = c.stored(sensor.key)
            siem = c.siem()
            dup_store = sum(n - 1 for n in Counter(stored).values())
            dup_siem = sum(n - 1 for n in Counter(siem).values())
            streams = c.streams(sensor.key)
            gaps = {e: last - streams.get(e, 0) for e, last in last_seq.items()
                    if streams.get(e, 0) != last}
            report.append(f"{c.root.name}: journaled {len(journaled)}, stored {len(stored)}, "
                          f"duplicated {dup_store}+{dup_siem}, gaps {gaps}")
            assert set(stored) == journaled, report[-1]
            assert dup_store == 0 and dup_siem == 0, report[-1]
            assert set(siem) <= alerts and gaps == {}, report[-1]
            st = c.storage()
            try:
                (status,) = [s for s in st.status() if s.sensor == sensor.key]
                assert status.lost == 0 and status.behind == 0, status
            finally:
                st.close()
        print("\n".join(report))
    finally:
        if sensor.proc is not None:
            sensor.proc.kill()
        for c in collectors:
            if c.proc is not None:
                c.proc.kill()
                c.proc.wait(timeout=10)
            c.proxy.down()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


@pytest.mark.parametrize("seed", SEEDS)
def test_backlog_of_older_epochs_drains_through_outages(workdir: Path, seed: int) -> None:
    run_schedule(workdir, seed, [Collector(workdir / "c1")])


@pytest.mark.parametrize("seed", SEEDS)
def test_backlog_drains_to_two_collectors_each(workdir: Path, seed: int) -> None:
    run_schedule(workdir, seed + 1, [Collector(workdir / "c1"), Collector(workdir / "c2")])


@pytest.mark.parametrize("seed", SEEDS)
def test_backlog_drains_into_postgresql(workdir: Path, seed: int,
                                        dsn: str) -> None:  # noqa: F811 (the fixture)
    run_schedule(workdir, seed + 2, [Collector(workdir / "c1", dsn=dsn)])


@pytest.mark.parametrize("seed", SEEDS)
def test_two_collectors_in_front_of_one_postgresql_store_each_alert_once(
        workdir: Path, seed: int, dsn: str) -> None:  # noqa: F811 (the fixture)
    run_schedule(workdir, seed + 3, [Collector(workdir / "c1", dsn=dsn),
                                     Collector(workdir / "c2", dsn=dsn)])


def test_schedule_is_reproducible_and_exceeds_the_window() -> None:
    a, b = schedule(7, 2), schedule(7, 2)
    assert a == b and a != schedule(8, 2)
    assert all(c.during >= 20 * WINDOW for c in a)
