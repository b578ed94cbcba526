"""Day partitions of the PostgreSQL ``messages`` table.

``messages`` is range-partitioned on ``received`` (the collector's clock, never the
sensor's, so a sensor with a wrong clock cannot scatter rows over the years), one
partition per UTC day named ``messages_pYYYYMMDD``. Retention then drops whole days:
``DROP TABLE`` of a partition is instant and leaves no dead rows to vacuum, where a
``DELETE`` of millions of rows would not be.

A partitioned table's primary key must contain the partition key, so the key is
(sensor, epoch, seq, received) and cannot by itself stop a resend received on another
day; ``PostgresStorage.store_batch`` deduplicates against the stream positions instead,
under a row lock, which also holds for several collectors sharing one database.

Partitions are made ahead (today and tomorrow) while the connection holds no locks,
since ``CREATE TABLE ... PARTITION OF`` locks the parent table exclusively.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from typing import Any

DAY = 86400.0
_NAME = re.compile(r"^messages_p(\d{8})$")

log = logging.getLogger("mamori.collector")


def day_of(ts: float) -> int:
    """The UTC day number of a time (days since 1970-01-01)."""
    return int(ts // DAY)


def name(day: int) -> str:
    return "messages_p" + dt.datetime.fromtimestamp(day * DAY, dt.UTC).strftime("%Y%m%d")


def parse(table: str) -> int | None:
    """The day of a partition's name, or None for a table that is not one of ours."""
    match = _NAME.match(table)
    if match is None:
        return None
    try:
        when = dt.datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return day_of(when.timestamp())


def relkind(conn: Any, table: str) -> str | None:
    """'r' plain table, 'p' partitioned, None absent (in the current schema)."""
    row = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = %s AND n.nspname = current_schema()", (table,)).fetchone()
    return None if row is None else str(row[0])


def existing(conn: Any) -> set[int]:
    """Days that have a partition now."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'messages'::regclass").fetchall()
    return {day for day in (parse(str(r[0])) for r in rows) if day is not None}


def create(conn: Any, days: Iterable[int]) -> None:
    """Make the partitions of ``days`` (in the current transaction). Another collector
    making the same one at the same moment is not an error."""
    import psycopg

    for day in sorted(set(days)):
        try:
            with conn.transaction():  # a savepoint: a lost race undoes only this
                conn.execute(f"CREATE TABLE IF NOT EXISTS {name(day)} PARTITION OF messages "
                             f"FOR VALUES FROM ({day * DAY!r}) TO ({(day + 1) * DAY!r})")
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            pass


def drop_before(conn: Any, cutoff: float) -> list[str]:
    """Drop every partition whose whole day ends at or before ``cutoff``."""
    gone = []
    for day in sorted(existing(conn)):
        if (day + 1) * DAY <= cutoff:
            conn.execute(f"DROP TABLE IF EXISTS {name(day)}")
            gone.append(name(day))
    return gone


def migrate(conn: Any, create_messages: str) -> int:
    """Turn a ``messages`` table made by the unpartitioned schema into the partitioned
    one, in the caller's transaction: rename it, make the new table and the partitions
    its rows need, copy, drop the old. Returns the rows moved."""
    conn.execute("ALTER TABLE messages RENAME TO messages_unpartitioned")
    conn.execute("ALTER INDEX IF EXISTS messages_pkey RENAME TO messages_unpartitioned_pkey")
    conn.execute(create_messages)
    days = [int(r[0]) for r in conn.execute(
        "SELECT DISTINCT floor(received / %s)::bigint FROM messages_unpartitioned",
        (DAY,)).fetchall()]
    create(conn, days)
    moved = int(conn.execute("INSERT INTO messages SELECT * FROM messages_unpartitioned "
                             "ON CONFLICT DO NOTHING").rowcount)
    conn.execute("DROP TABLE messages_unpartitioned")
    log.warning("mamori collect: PostgreSQL messages table partitioned by day "
                "(%d rows over %d days moved)", moved, len(days))
    return moved
