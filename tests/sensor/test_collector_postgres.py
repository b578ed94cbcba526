"""Collector storage on a real PostgreSQL server that the test starts and stops itself.

Needs Debian's ``postgresql`` (the server binaries under /usr/lib/postgresql/*/bin)
and the ``psycopg`` Python package. As root, the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.wire import Kind
from mamori.sensor import config as cfg
from mamori.sensor.collector.server import CollectorServer
from mamori.sensor.collector.storage import PostgresStorage, StoredMessage
from mamori.sensor.forwarding.forwarder import Forwarder
from mamori.sensor.forwarding.keys import generate
from tests.conftest import unavailable
from tests.peers.postgres import pg_bin, postgres_cluster
from tests.ports import free_port
from tests.sensor.test_collector import wait_for


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    bindir = pg_bin()
    if bindir is None:
        unavailable("PostgreSQL server binaries (Debian package postgresql) not installed")
        return
    with postgres_cluster(bindir) as found:
        yield found


def test_storage_dedups_keeps_latest_alert_and_reports_status(dsn: str) -> None:
    st = PostgresStorage(dsn)
    try:
        now = time.time()
        for seq, count in [(1, 1), (2, 5), (2, 5), (3, 9)]:
            st.store(StoredMessage("K1", 1, seq, int(Kind.ALERT), now, now, {"count": count},
                                   "7", count, now))
        st.advance("K1", 1, 3, now, now)
        st.touch_sensor("K1", "alpha", now)
        st.heartbeat("K1", 1, 5, now, now, {"pps": 1.5})
        st.reject("K1", "bad_type", 2, now)
        st.reject("K1", "bad_type", 1, now)
        st.commit()
        assert st.sequence("K1") == [(1, 1), (1, 2), (1, 3)]
        assert st.alerts("K1") == [{"count": 9}]
        (row,) = st.status()
        assert (row.name, row.last_seq, row.behind, row.rejected) == (
            "alpha", 3, 2, {"bad_type": 3})
        assert st.position("K1", 1) == 3 and st.position("K1", 2) == 0
    finally:
        st.close()


def test_rule_offers_keep_the_bytes_and_drop_unoffered_bundles(dsn: str) -> None:
    st = PostgresStorage(dsn)
    try:
        now = time.time()
        first, second = bytes(range(256)) * 100, b"\0\xff" * 30_000  # every byte value
        st.offer_rules("aa" * 32, 1, first, ["K1", "K2"], now)
        st.offer_rules("bb" * 32, 2, second, ["K1"], now)
        assert st.rule_offers() == {"K1": ("bb" * 32, 2), "K2": ("aa" * 32, 1)}
        assert st.rule_bundle("aa" * 32) == first and st.rule_bundle("bb" * 32) == second
        st.offer_rules("bb" * 32, 2, second, ["K2"], now)  # nobody is offered the first now
        assert st.rule_bundle("aa" * 32) is None
        st.heartbeat("K2", 1, 0, now, now, {"rules": 1, "rules_offer": ["bb" * 32, "refused",
                                                                        "DOWNGRADE"]})
        st.commit()
        (row,) = [r for r in st.status() if r.sensor == "K2"]
        assert row.rules == {"running": 1, "offered": 2, "sha256": "bb" * 32,
                             "state": "refused", "detail": "DOWNGRADE"}
    finally:
        st.close()


def test_collector_stores_a_sensor_stream_in_postgresql(dsn: str, tmp_path: Path) -> None:
    port = free_port()
    generate("collector", tmp_path / "keys")
    generate("pg1", tmp_path / "keys" / "sensors")
    endpoint = f"tcp://127.0.0.1:{port}"
    conf = cfg.load(None, {
        ("sensor", "state_dir"): str(tmp_path), ("collect", "listen"): endpoint,
        ("collect", "publish"): "", ("collect", "dsn"): dsn,
        ("forward", "collectors"): [{"endpoint": endpoint, "server_key": "keys/collector.pub"}],
        ("forward", "secret_key"): "keys/sensors/pg1.secret"})
    server = CollectorServer(conf)
    server.bind()
    stop = threading.Event()
    thread = threading.Thread(target=server.run, args=(stop.is_set,))
    thread.start()
    try:
        fw = Forwarder(conf).start()
        for i in range(1, 41):
            t = time.time()
            fw.submit_alert(Alert("mamori.test", "M3", Severity.HIGH, (), "t", "modbus", t, t,
                                  src="10.0.0.1", dst="10.0.0.2", dport=502, id=i))
        fw.close(20)
        wait_for(lambda: server.counters["accepted"] >= 41, 10, "storage")
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()
    st = PostgresStorage(dsn)
    try:
        (row,) = [r for r in st.status() if r.name == "pg1"]
        assert row.last_seq == 41 and row.messages == 41
        assert len(st.alerts(row.sensor)) == 40
    finally:
        st.close()
