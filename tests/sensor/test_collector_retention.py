"""Collector storage schema and retention: PostgreSQL day partitions (dropped whole by
retention, an old unpartitioned database migrated, a resend on another day still stored
once, even past its stream's position; the COPY table empty after each commit), SQLite
retention by delete, and the collector running retention itself."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import psycopg

from mamori.parsers.wire import Kind
from mamori.sensor.collector import partitions
from mamori.sensor.collector.server import CollectorServer, CollectorSettings
from mamori.sensor.collector.storage import (
    PostgresStorage,
    SqliteStorage,
    SqlStorage,
    StoredMessage,
)
from mamori.sensor.forwarding.keys import generate
from tests.ports import free_port
from tests.sensor.test_collector_postgres import dsn  # noqa: F401 (a fixture)

DAY = 86400.0


def fill(st: SqlStorage, sensor: str, epoch: int, seqs: range, received: float) -> None:
    """Alerts ``seqs`` of a stream, received at ``received``, committed as the collector
    does (messages, then the stream position)."""
    st.store_batch([StoredMessage(sensor, epoch, seq, int(Kind.ALERT), received, received,
                                  {"id": seq}, str(seq), 1, received) for seq in seqs])
    st.advance(sensor, epoch, seqs[-1], received, received)
    st.touch_sensor(sensor, sensor, received)
    st.commit()


def fresh_database(dsn: str, name: str) -> str:  # noqa: F811
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return dsn.replace("dbname=postgres", f"dbname={name}")


def test_messages_are_partitioned_by_day_and_retention_drops_whole_days(
        dsn: str) -> None:  # noqa: F811
    st = PostgresStorage(fresh_database(dsn, "retention"))
    try:
        now = time.time()
        fill(st, "K1", 1, range(1, 11), now - 10 * DAY)
        fill(st, "K1", 2, range(1, 6), now - 5 * DAY)
        fill(st, "K1", 3, range(1, 4), now)
        days = partitions.existing(st._conn)
        today = partitions.day_of(now)
        assert {today - 10, today - 5, today, today + 1} <= days
        assert st.expire(now - 7 * DAY) == 1  # the day ten days ago, and nothing else
        assert today - 10 not in partitions.existing(st._conn)
        assert {today - 5, today, today + 1} <= partitions.existing(st._conn)
        assert st.sequence("K1") == [(2, s) for s in range(1, 6)] + [(3, 1), (3, 2), (3, 3)]
        assert st.position("K1", 1) == 10  # the positions stay: a late resend is a dup
        (row,) = st.status()
        assert row.messages == 8
    finally:
        st.close()


def test_a_resend_received_on_another_day_is_stored_once(dsn: str) -> None:  # noqa: F811
    st = PostgresStorage(fresh_database(dsn, "crossday"))
    try:
        now = time.time()
        fill(st, "K1", 1, range(1, 4), now - DAY)
        fill(st, "K1", 1, range(2, 6), now)  # 2 and 3 again, a day later
        assert st.sequence("K1") == [(1, s) for s in range(1, 6)]
    finally:
        st.close()


def alerts(sensor: str, epoch: int, seqs: list[int], received: float) -> list[StoredMessage]:
    return [StoredMessage(sensor, epoch, seq, int(Kind.ALERT), received, received, {"id": seq},
                          str(seq), 1, received) for seq in seqs]


def test_rows_stored_past_the_position_are_not_stored_again_another_day(
        dsn: str) -> None:  # noqa: F811
    """A caller that stores without moving the position (nothing in the collector does)
    leaves rows the position filter cannot see; the general path still drops them."""
    st = PostgresStorage(fresh_database(dsn, "pastposition"))
    try:
        now = time.time()
        st.store_batch(alerts("K1", 1, [5, 6], now - DAY))
        st.commit()
        st.store_batch(alerts("K1", 1, [4, 5, 6], now))
        st.commit()
        assert st.sequence("K1") == [(1, 4), (1, 5), (1, 6)]
    finally:
        st.close()


def test_a_batch_that_repeats_a_seq_stores_it_once(dsn: str) -> None:  # noqa: F811
    st = PostgresStorage(fresh_database(dsn, "repeats"))
    try:
        now = time.time()
        st.store_batch(alerts("K1", 1, [1, 2, 2, 3, 1], now))
        st.advance("K1", 1, 3, now, now)
        st.commit()
        assert st.sequence("K1") == [(1, 1), (1, 2), (1, 3)]
    finally:
        st.close()


def test_a_commit_empties_the_alerts_copy_table(dsn: str) -> None:  # noqa: F811
    """Dead rows included: nothing vacuums a temporary table, and rounds would scan
    what earlier ones left."""
    st = PostgresStorage(fresh_database(dsn, "copytable"))

    def held() -> tuple[int, int]:
        rows = st._all("SELECT count(*), pg_relation_size('alerts_in') FROM alerts_in")
        return int(rows[0][0]), int(rows[0][1])

    try:
        now = time.time()
        for first in (1, 201):
            st.store_batch(alerts("K1", 1, list(range(first, first + 200)), now))
            assert held()[0] == 200
            st.advance("K1", 1, first + 199, now, now)
            st.commit()
            assert held() == (0, 0)
        assert len(st.sequence("K1")) == 400 and len(st.alerts("K1")) == 400
    finally:
        st.close()


OLD_SCHEMA = """
CREATE TABLE messages (
    sensor TEXT NOT NULL, epoch BIGINT NOT NULL, seq BIGINT NOT NULL, kind BIGINT NOT NULL,
    ts DOUBLE PRECISION NOT NULL, received DOUBLE PRECISION NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (sensor, epoch, seq));
CREATE TABLE streams (
    sensor TEXT NOT NULL, epoch BIGINT NOT NULL, contig BIGINT NOT NULL,
    last_ts DOUBLE PRECISION NOT NULL, received DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (sensor, epoch))
"""


def test_a_database_of_the_unpartitioned_schema_is_migrated(dsn: str) -> None:  # noqa: F811
    target = fresh_database(dsn, "legacy")
    now = time.time()
    with psycopg.connect(target) as conn:
        for statement in OLD_SCHEMA.split(";"):
            conn.execute(statement)
        for seq, received in ((1, now - 3 * DAY), (2, now - 3 * DAY), (3, now)):
            conn.execute("INSERT INTO messages VALUES ('K1', 1, %s, 1, %s, %s, '{}')",
                         (seq, received, received))
        conn.execute("INSERT INTO streams VALUES ('K1', 1, 3, %s, %s)", (now, now))
    st = PostgresStorage(target)
    try:
        assert partitions.relkind(st._conn, "messages") == "p"
        assert partitions.relkind(st._conn, "messages_unpartitioned") is None
        today = partitions.day_of(now)
        assert {today - 3, today} <= partitions.existing(st._conn)
        assert st.sequence("K1") == [(1, 1), (1, 2), (1, 3)]
        fill(st, "K1", 1, range(4, 6), now)  # and it takes new rows
        assert st.sequence("K1")[-1] == (1, 5)
    finally:
        st.close()
    again = PostgresStorage(target)  # opening the migrated database changes nothing
    try:
        assert again.sequence("K1") == [(1, s) for s in range(1, 6)]
    finally:
        again.close()


def test_sqlite_retention_deletes_old_rows_and_keeps_its_schema(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "c.db")
    try:
        now = time.time()
        fill(st, "K1", 1, range(1, 11), now - 10 * DAY)
        fill(st, "K1", 2, range(1, 4), now)
        assert st.expire(now - 7 * DAY) == 10
        assert st.sequence("K1") == [(2, 1), (2, 2), (2, 3)]
        assert [d["id"] for d in st.alerts("K1")] == [1, 2, 3]
        assert st.position("K1", 1) == 10
    finally:
        st.close()
    conn = sqlite3.connect(tmp_path / "c.db")
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'messages'").fetchone()
    conn.close()
    assert "PRIMARY KEY (sensor, epoch, seq))" in sql


def test_the_collector_applies_its_retention(tmp_path: Path) -> None:
    generate("collector", tmp_path / "keys")
    generate("s0", tmp_path / "keys" / "sensors")
    db = tmp_path / "collector.db"
    st = SqliteStorage(db)
    now = time.time()
    fill(st, "K1", 1, range(1, 6), now - 40 * DAY)
    fill(st, "K1", 2, range(1, 3), now - DAY)
    st.close()
    settings = CollectorSettings((f"tcp://127.0.0.1:{free_port()}",),
                                 tmp_path / "keys" / "collector.secret",
                                 tmp_path / "keys" / "sensors", db, "", "", "", 65536, 1.0,
                                 retention=30 * DAY)
    server = CollectorServer(settings)
    server.bind()
    try:
        server.poll(0.01)  # the first round runs the first retention pass
        assert server.counters["expired"] == 5
    finally:
        server.close()
    st = SqliteStorage(db)
    try:
        assert st.sequence("K1") == [(2, 1), (2, 2)]
    finally:
        st.close()
