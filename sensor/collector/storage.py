"""Collector storage: one SQL schema, two engines (SQLite by default, PostgreSQL by DSN).

The collector writes a batch of accepted messages, the stream positions they moved
and any counters, then commits once, and only then acknowledges: an ack always means
"stored durably". Tables::

    sensors   (sensor PK = Z85 public key, name, first_seen, last_seen)
    streams   (sensor, epoch, contig, last_ts, received)  contig = highest seq with no gap
    messages  (sensor, epoch, seq, kind, ts, received, body)   body = JSON; PK dedups
    alerts    (sensor, akey, epoch, seq, count, last_ts, doc)  latest per sensor alert id
    heartbeats(sensor PK, epoch, seq, ts, received, body)      the latest one
    rejects   (sensor, reason, count, last_ts)     sensor '' = not authenticated
    lost      (sensor, epoch, first, last, received)  ranges the sensor evicted unacked
    complete  (sensor PK, ts)   the last time every epoch the sensor holds was stored whole
    rule_bundles (sha256 PK, version, size, created, data)  bundles `collect push-rules` stored
    rule_offers  (sensor PK, sha256, version, ts)  the bundle offered to each sensor

Both engines take the same statements; only the placeholder, a few column types and
the key of ``messages`` differ, so the two cannot drift apart. In PostgreSQL
``messages`` is partitioned by day of ``received`` (``mamori.sensor.collector.partitions``), so
retention drops whole days; SQLite deletes rows.

Writes are group commits: ``store_batch`` takes every message of a collector round in
one ``executemany`` (SQLite) or ``COPY`` (PostgreSQL), inside the round's transaction,
and ``commit`` is the one fsync the round costs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from mamori.sensor.collector import partitions
from mamori.sensor.paths import describe_mkdir

if TYPE_CHECKING:
    from mamori.sensor.collector.server import CollectorSettings

_orjson: Any
try:
    import orjson as _orjson
except ImportError:  # a distribution without it: json does the same, slower
    _orjson = None

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sensors (
    sensor TEXT PRIMARY KEY, name TEXT NOT NULL, first_seen {real} NOT NULL,
    last_seen {real} NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    sensor TEXT NOT NULL, epoch {int} NOT NULL, contig {int} NOT NULL, last_ts {real} NOT NULL,
    received {real} NOT NULL, PRIMARY KEY (sensor, epoch));
CREATE TABLE IF NOT EXISTS messages (
    sensor TEXT NOT NULL, epoch {int} NOT NULL, seq {int} NOT NULL, kind {int} NOT NULL,
    ts {real} NOT NULL, received {real} NOT NULL, body TEXT NOT NULL,
    {messages_key};
CREATE TABLE IF NOT EXISTS alerts (
    sensor TEXT NOT NULL, akey TEXT NOT NULL, epoch {int} NOT NULL, seq {int} NOT NULL,
    count {int} NOT NULL, last_ts {real} NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (sensor, akey));
CREATE TABLE IF NOT EXISTS heartbeats (
    sensor TEXT PRIMARY KEY, epoch {int} NOT NULL, seq {int} NOT NULL, ts {real} NOT NULL,
    received {real} NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejects (
    sensor TEXT NOT NULL, reason TEXT NOT NULL, count {int} NOT NULL, last_ts {real} NOT NULL,
    PRIMARY KEY (sensor, reason));
CREATE TABLE IF NOT EXISTS lost (
    sensor TEXT NOT NULL, epoch {int} NOT NULL, first {int} NOT NULL, last {int} NOT NULL,
    received {real} NOT NULL);
CREATE TABLE IF NOT EXISTS complete (sensor TEXT PRIMARY KEY, ts {real} NOT NULL);
CREATE TABLE IF NOT EXISTS rule_bundles (
    sha256 TEXT PRIMARY KEY, version {int} NOT NULL, size {int} NOT NULL,
    created {real} NOT NULL, data {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS rule_offers (
    sensor TEXT PRIMARY KEY, sha256 TEXT NOT NULL, version {int} NOT NULL, ts {real} NOT NULL);
"""


def _loads(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _skew(body: dict[str, Any], received: float) -> float | None:
    clock = body.get("clock")
    if isinstance(clock, int | float) and not isinstance(clock, bool):
        return round(received - float(clock), 3)
    return None


def _owed(body: dict[str, Any], sensor: str,
          contigs: dict[tuple[str, int], int]) -> list[tuple[int, int, int]]:
    """Older epochs the last heartbeat said the sensor still holds, with how much of
    each is stored here: (epoch, stored gap-free up to, last)."""
    out = []
    for item in body.get("owed") or []:
        if isinstance(item, list) and len(item) == 3 and all(isinstance(x, int) for x in item):
            stored = contigs.get((sensor, item[0]), 0)
            if stored < item[2]:
                out.append((item[0], stored, item[2]))
    return out


def _hex(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _rules(body: dict[str, Any], offer: tuple[str, int] | None) -> dict[str, Any]:
    """The rule bundle a sensor runs (its last heartbeat) and what became of the one
    offered to it: ``pending`` until its heartbeat names the offer, then the sensor's
    state (fetching, waiting, applied, refused, failed, stalled) and detail (a reason)."""
    running = body.get("rules")
    doc: dict[str, Any] = {"running": running if isinstance(running, int)
                           and not isinstance(running, bool) else None}
    if offer is None:
        return doc
    doc.update({"offered": offer[1], "sha256": offer[0], "state": "pending", "detail": ""})
    said = body.get("rules_offer")
    if isinstance(said, list) and len(said) == 3 and said[0] == offer[0] \
            and all(isinstance(x, str) for x in said):
        doc.update(state=said[1][:16], detail=said[2][:64])
    if isinstance(body.get("rules_drops"), dict):
        doc["drops"] = {str(k)[:32]: v for k, v in body["rules_drops"].items()
                        if isinstance(v, int)}
    return doc



_ENCODE = json.JSONEncoder(separators=(",", ":"), default=_hex).encode


def dumps(value: Any) -> str:
    """JSON for the store and the SIEM; raw bytes (rare, in evidence) as hex.

    With orjson (a dependency; optional for a distribution that lacks it) a tenth of
    the cost of ``json``, the largest single cost of a collector at full load. The text
    is the same but for non-ASCII characters, which orjson leaves as UTF-8 where
    ``json`` writes ``\\u`` escapes: the same JSON either way. What orjson refuses
    (integers past 64 bits) goes through ``json``."""
    if _orjson is not None:
        try:
            text: str = _orjson.dumps(value, default=_hex).decode()
            return text
        except TypeError:  # orjson.JSONEncodeError
            pass
    return _ENCODE(value)


class StoredMessage(NamedTuple):
    """One accepted journaled message, for the batch writer (a named tuple: one per
    message at full load, where a frozen dataclass costs three times as much)."""

    sensor: str
    epoch: int
    seq: int
    kind: int
    ts: float
    received: float
    body: Any  # JSON-ready
    alert_key: str | None = None  # set for alerts: latest per (sensor, alert key)
    alert_count: int = 0
    alert_last_ts: float = 0.0
    text: str = ""  # ``body`` already as JSON (the collector builds it once), or ""


INSERT_MESSAGE = "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
# The latest of each sensor alert id wins, whatever order rows arrive in.
UPSERT_ALERT_FROM = (
    " ON CONFLICT (sensor, akey) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq, "
    "count = excluded.count, last_ts = excluded.last_ts, doc = excluded.doc "
    "WHERE alerts.epoch < excluded.epoch OR "
    "(alerts.epoch = excluded.epoch AND alerts.seq < excluded.seq)")
UPSERT_ALERT = "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?)" + UPSERT_ALERT_FROM

MessageRow = tuple[str, int, int, int, float, float, str]
AlertRow = tuple[str, str, int, int, int, float, str]


def _row_key(row: Sequence[Any]) -> tuple[Any, ...]:
    """The key columns of a row (sensor, then epoch or name): never the JSON body."""
    return tuple(row[:2])


def message_rows(msgs: Sequence[StoredMessage]) -> tuple[list[MessageRow], list[AlertRow]]:
    """The rows of a batch: one per message, and one per (sensor, alert id), the latest
    (an upsert cannot touch the same row twice in one statement). Each body is turned
    into JSON once, for both tables."""
    rows: list[MessageRow] = []
    latest: dict[tuple[str, str], AlertRow] = {}
    append = rows.append
    for sensor, epoch, seq, kind, ts, received, body, akey, count, last_ts, text in msgs:
        if not text:
            text = dumps(body)
        append((sensor, epoch, seq, kind, ts, received, text))
        if akey is not None:
            key = (sensor, akey)
            seen = latest.get(key)
            if seen is None or (seen[2], seen[3]) < (epoch, seq):
                latest[key] = (sensor, akey, epoch, seq, count, last_ts, text)
    return rows, list(latest.values())


@dataclass(frozen=True, slots=True)
class SensorStatus:
    """One line of ``mamori collect status``."""

    sensor: str
    name: str
    epoch: int
    last_seq: int
    last_ts: float
    last_received: float
    heartbeat_ts: float | None
    heartbeat_seq: int | None
    behind: int  # heartbeat's last seq minus what is stored gap-free (current epoch)
    messages: int
    lost: int
    rejected: dict[str, int]
    reported: dict[str, str] = field(default_factory=dict)  # name, site, sector it sent
    skew: float | None = None  # our receive time minus its clock, at the last heartbeat
    owed: list[tuple[int, int, int]] = field(default_factory=list)  # (epoch, stored, last)
    complete_ts: float | None = None  # when every epoch it held was last stored whole
    rules: dict[str, Any] = field(default_factory=dict)  # running, offered, state, detail

    def lag(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.last_ts

    @property
    def outstanding(self) -> int:
        """Messages the sensor holds that are not stored here yet, all epochs."""
        return self.behind + sum(last - stored for _, stored, last in self.owed)

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        return {"sensor": self.sensor, "name": self.name, "epoch": self.epoch,
                "last_seq": self.last_seq, "lag": round(self.lag(now), 3),
                "last_ts": self.last_ts, "heartbeat_ts": self.heartbeat_ts,
                "heartbeat_seq": self.heartbeat_seq, "behind": self.behind,
                "messages": self.messages, "lost": self.lost, "rejected": self.rejected,
                "reported": self.reported, "skew": self.skew,
                "owed": [list(o) for o in self.owed], "outstanding": self.outstanding,
                "complete_ts": self.complete_ts, "rules": self.rules}


class SqlStorage:
    """The collector's store over a DB-API connection; subclasses choose the engine."""

    placeholder = "?"
    types = {"int": "INTEGER", "real": "REAL", "blob": "BLOB",
             "messages_key": "PRIMARY KEY (sensor, epoch, seq))"}

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._prepare()
        for statement in _SCHEMA.format(**self.types).split(";"):
            if statement.strip():
                self._exec(statement)
        self.commit()

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self._sql(sql), params)

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self._exec(sql, params).fetchall())

    def _prepare(self) -> None:
        """Before the schema is created: the engine's own checks (PostgreSQL migrates)."""

    def commit(self) -> None:
        self._conn.commit()

    def rollback(self) -> None:
        self._conn.rollback()

    def close(self) -> None:
        self._conn.close()

    # -- writes (inside the current transaction) ----------------------------------------

    def position(self, sensor: str, epoch: int) -> int:
        rows = self._all("SELECT contig FROM streams WHERE sensor = ? AND epoch = ?",
                         (sensor, epoch))
        return int(rows[0][0]) if rows else 0

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for many rows (psycopg pipelines them: one round trip), in
        key order, so that collectors sharing a database lock rows in the same order."""
        if rows:
            self._conn.cursor().executemany(self._sql(sql), sorted(rows, key=_row_key))

    def touch_sensor(self, sensor: str, name: str, now: float) -> None:
        self.touch_sensors([(sensor, name, now)])

    def touch_sensors(self, rows: Sequence[tuple[str, str, float]]) -> None:
        """(sensor, allow-list name, now) of each sensor heard from in the round."""
        self._many("INSERT INTO sensors VALUES (?, ?, ?, ?) ON CONFLICT (sensor) DO UPDATE "
                   "SET name = excluded.name, last_seen = excluded.last_seen",
                   [(sensor, name, now, now) for sensor, name, now in rows])

    def store(self, msg: StoredMessage) -> None:
        self.store_batch([msg])

    def store_batch(self, msgs: Sequence[StoredMessage]) -> None:
        """Every message of a round in one statement per table (the group commit)."""
        rows, alerts = message_rows(msgs)
        cur = self._conn.cursor()
        cur.executemany(self._sql(INSERT_MESSAGE), rows)
        if alerts:
            cur.executemany(self._sql(UPSERT_ALERT), alerts)

    def advance(self, sensor: str, epoch: int, contig: int, last_ts: float,
                received: float) -> None:
        self.advance_many([(sensor, epoch, contig, last_ts, received)])

    def advance_many(self, rows: Sequence[tuple[str, int, int, float, float]]) -> None:
        """(sensor, epoch, contig, last_ts, received) of each stream the round moved."""
        # Never backwards: collectors sharing one database each advance a stream as far
        # as they accepted it, and the one that is behind must not undo the other's work.
        self._many("INSERT INTO streams VALUES (?, ?, ?, ?, ?) ON CONFLICT (sensor, epoch) "
                   "DO UPDATE SET contig = CASE WHEN excluded.contig > streams.contig "
                   "THEN excluded.contig ELSE streams.contig END, last_ts = excluded.last_ts, "
                   "received = excluded.received", rows)

    def heartbeat(self, sensor: str, epoch: int, seq: int, ts: float, received: float,
                  body: Any) -> None:
        self.heartbeats([(sensor, epoch, seq, ts, received, body)])

    def heartbeats(self, rows: Sequence[tuple[str, int, int, float, float, Any]]) -> None:
        """(sensor, epoch, seq, ts, received, body) of each sensor's latest heartbeat."""
        self._many("INSERT INTO heartbeats VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sensor) "
                   "DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq, ts = excluded.ts,"
                   " received = excluded.received, body = excluded.body",
                   [(*row[:5], dumps(row[5])) for row in rows])

    def reject(self, sensor: str, reason: str, count: int, now: float) -> None:
        self._exec("INSERT INTO rejects VALUES (?, ?, ?, ?) ON CONFLICT (sensor, reason) "
                   "DO UPDATE SET count = rejects.count + excluded.count, "
                   "last_ts = excluded.last_ts", (sensor, reason, count, now))

    def mark_lost(self, sensor: str, epoch: int, first: int, last: int, now: float) -> None:
        self._exec("INSERT INTO lost VALUES (?, ?, ?, ?, ?)", (sensor, epoch, first, last, now))

    def mark_complete(self, sensor: str, now: float) -> None:
        self._exec("INSERT INTO complete VALUES (?, ?) ON CONFLICT (sensor) DO UPDATE "
                   "SET ts = excluded.ts", (sensor, now))

    def offer_rules(self, sha256: str, version: int, data: bytes, sensors: Sequence[str],
                    now: float) -> None:
        """Store a bundle and offer it to ``sensors`` (each sensor's previous offer
        goes); bundles no sensor is offered any more are deleted. Commits."""
        self._exec("INSERT INTO rule_bundles VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                   (sha256, version, len(data), now, data))
        for sensor in sensors:
            self._exec("INSERT INTO rule_offers VALUES (?, ?, ?, ?) ON CONFLICT (sensor) "
                       "DO UPDATE SET sha256 = excluded.sha256, version = excluded.version, "
                       "ts = excluded.ts", (sensor, sha256, version, now))
        self._exec("DELETE FROM rule_bundles WHERE sha256 NOT IN "
                   "(SELECT sha256 FROM rule_offers)")
        self.commit()

    def rule_offers(self) -> dict[str, tuple[str, int]]:
        """sensor -> (sha256 hex, version) of the bundle offered to it."""
        return {r[0]: (str(r[1]), int(r[2])) for r in self._all(
            "SELECT sensor, sha256, version FROM rule_offers")}

    def rule_bundle(self, sha256: str) -> bytes | None:
        rows = self._all("SELECT data FROM rule_bundles WHERE sha256 = ?", (sha256,))
        return bytes(rows[0][0]) if rows else None

    # -- upkeep and retention -----------------------------------------------------------

    def maintain(self, now: float) -> None:
        """Between rounds, with no transaction open: whatever the engine needs ahead."""

    def expire(self, cutoff: float) -> int:
        """Forget messages received before ``cutoff``, and alerts last seen before it,
        in its own transaction; returns how many messages went. Stream positions stay,
        so a sensor resending something this old is still told it is stored."""
        gone = int(self._exec("DELETE FROM messages WHERE received < ?", (cutoff,)).rowcount)
        self._expire_rest(cutoff)
        self.commit()
        return gone

    def _expire_rest(self, cutoff: float) -> None:
        self._exec("DELETE FROM alerts WHERE last_ts < ?", (cutoff,))
        self._exec("DELETE FROM lost WHERE received < ?", (cutoff,))

    # -- reads --------------------------------------------------------------------------

    def rejects(self) -> dict[tuple[str, str], int]:
        return {(r[0], r[1]): int(r[2]) for r in self._all(
            "SELECT sensor, reason, count FROM rejects")}

    def sequence(self, sensor: str, kind: int | None = None) -> list[tuple[int, int]]:
        """(epoch, seq) of every stored message of a sensor, in storage order."""
        if kind is None:
            rows = self._all("SELECT epoch, seq FROM messages WHERE sensor = ? "
                             "ORDER BY epoch, seq", (sensor,))
        else:
            rows = self._all("SELECT epoch, seq FROM messages WHERE sensor = ? AND kind = ? "
                             "ORDER BY epoch, seq", (sensor, kind))
        return [(int(e), int(s)) for e, s in rows]

    def latencies(self) -> list[float]:
        return [float(r[0]) for r in self._all("SELECT received - ts FROM messages")]

    def received_times(self) -> list[tuple[str, int, int, float]]:
        """(sensor, epoch, seq, received) of every stored message (for benchmarks)."""
        return [(str(r[0]), int(r[1]), int(r[2]), float(r[3])) for r in self._all(
            "SELECT sensor, epoch, seq, received FROM messages")]

    def latest_assets(self) -> list[tuple[str, dict[str, Any], float]]:
        """(sensor, body, received) of the latest asset record per (sensor, device ip)."""
        latest: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        for sensor, body, received in self._all(
                "SELECT sensor, body, received FROM messages WHERE kind = 3 "
                "ORDER BY sensor, epoch, seq"):
            doc = _loads(body)
            if isinstance(doc.get("ip"), str):
                latest[(sensor, doc["ip"])] = (doc, float(received))
        return [(sensor, doc, received) for (sensor, _), (doc, received)
                in sorted(latest.items())]

    def alerts(self, sensor: str) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = [json.loads(r[0]) for r in self._all(
            "SELECT doc FROM alerts WHERE sensor = ? ORDER BY akey", (sensor,))]
        return docs

    def status(self) -> list[SensorStatus]:
        names = {r[0]: r[1] for r in self._all("SELECT sensor, name FROM sensors")}
        heartbeats = {r[0]: r[1:] for r in self._all(
            "SELECT sensor, epoch, seq, ts, received, body FROM heartbeats")}
        contigs = {(r[0], int(r[1])): int(r[2]) for r in self._all(
            "SELECT sensor, epoch, contig FROM streams")}
        complete = {r[0]: float(r[1]) for r in self._all("SELECT sensor, ts FROM complete")}
        offers = self.rule_offers()
        counts = {r[0]: int(r[1]) for r in self._all(
            "SELECT sensor, COUNT(*) FROM messages GROUP BY sensor")}
        lost = {r[0]: int(r[1]) for r in self._all(
            "SELECT sensor, SUM(last - first + 1) FROM lost GROUP BY sensor")}
        rejected: dict[str, dict[str, int]] = {}
        for (sensor, reason), count in self.rejects().items():
            rejected.setdefault(sensor, {})[reason] = count
        out = []
        latest = {r[0]: r[1:] for r in self._all(
            "SELECT s.sensor, s.epoch, s.contig, s.last_ts, s.received FROM streams s "
            "WHERE s.epoch = (SELECT MAX(epoch) FROM streams t WHERE t.sensor = s.sensor)")}
        for sensor, hb in heartbeats.items():  # heard from, nothing stored yet
            latest.setdefault(sensor, (hb[0], 0, 0.0, 0.0))
        for sensor in sorted(latest):
            epoch, contig, last_ts, received = latest[sensor]
            hb = heartbeats.get(sensor)
            behind = int(hb[1]) - int(contig) if hb and int(hb[0]) == int(epoch) else 0
            body = _loads(hb[4]) if hb else {}
            out.append(SensorStatus(
                sensor, names.get(sensor, "?"), int(epoch), int(contig), float(last_ts),
                float(received), float(hb[2]) if hb else None, int(hb[1]) if hb else None,
                max(0, behind), counts.get(sensor, 0), lost.get(sensor, 0),
                rejected.pop(sensor, {}),
                {k: body[k] for k in ("name", "site", "sector") if isinstance(body.get(k), str)},
                _skew(body, float(hb[3])) if hb else None,
                _owed(body, sensor, contigs), complete.get(sensor),
                _rules(body, offers.get(sensor))))
        for sensor, reasons in sorted(rejected.items()):  # never stored anything
            out.append(SensorStatus(sensor, names.get(sensor, "(unauthenticated)"
                                    if sensor == "" else "?"), 0, 0, 0.0, 0.0, None, None, 0,
                                    0, 0, reasons))
        return out


    # -- reads for the JetStream publisher (mamori.sensor.collector.jetstream) -----------------

    def contigs(self) -> dict[tuple[str, int], int]:
        """Every stream and how far it is stored gap-free."""
        return {(r[0], int(r[1])): int(r[2]) for r in self._all(
            "SELECT sensor, epoch, contig FROM streams")}

    def messages_after(self, sensor: str, epoch: int, after: int, upto: int,
                       limit: int) -> list[tuple[int, int, float, float, str]]:
        """(seq, kind, ts, received, JSON body) of a stream's messages after ``after``."""
        return [(int(r[0]), int(r[1]), float(r[2]), float(r[3]), str(r[4])) for r in self._all(
            "SELECT seq, kind, ts, received, body FROM messages WHERE sensor = ? AND epoch = ?"
            " AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?", (sensor, epoch, after, upto, limit))]

    def identity(self, sensor: str, epoch: int) -> tuple[str, dict[str, Any]]:
        """The allow-list name, and what the sensor said of itself in the epoch's start
        record (or else its last heartbeat): name, site, sector."""
        names = self._all("SELECT name FROM sensors WHERE sensor = ?", (sensor,))
        said: dict[str, Any] = {}
        for sql in ("SELECT body FROM heartbeats WHERE sensor = ?",
                    "SELECT body FROM messages WHERE sensor = ? AND epoch = ? AND seq = 1"):
            rows = self._all(sql, (sensor,) if "heartbeats" in sql else (sensor, epoch))
            if rows:
                said.update(_loads(str(rows[0][0])))
        return (str(names[0][0]) if names else "?"), said


class SqliteStorage(SqlStorage):
    """The default: one file, WAL, full sync (an ack means the row is on disk).

    A new file gets pages of ``PAGE_SIZE`` (SQLite's default is 4096): a round's commit
    writes about a megabyte to the WAL, one frame (and two writes) per page, and the
    checkpoint copies each page again, so half the pages is half those system calls
    (measured: 8.4 instead of 9.0 us of storage CPU per alert); durability is the same.
    An existing file keeps the size it was made with (a WAL file cannot change it
    without a VACUUM)."""

    PAGE_SIZE = 8192

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=10, check_same_thread=False)
        conn.execute(f"PRAGMA page_size={self.PAGE_SIZE}")  # before WAL: a new file only
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        super().__init__(conn)


# The stream rows of a batch, made if new and locked in key order (so that collectors
# sharing a database lock them in the same order), with how far each is stored and
# whether anything past that is stored already. The no-op update is what takes the
# lock; RETURNING shows the row as it is after any other collector's commit (the
# EXISTS sees the statement's snapshot, from before a wait, but what that collector
# committed is all at or before the position it committed with it).
_LOCK_STREAMS = (
    "INSERT INTO streams SELECT k.sensor, k.epoch, 0, 0, 0 "
    "FROM unnest(%s::text[], %s::bigint[]) AS k(sensor, epoch) ORDER BY 1, 2 "
    "ON CONFLICT (sensor, epoch) DO UPDATE SET contig = streams.contig "
    "RETURNING sensor, epoch, contig, EXISTS (SELECT 1 FROM messages m "
    "WHERE m.sensor = streams.sensor AND m.epoch = streams.epoch AND m.seq > streams.contig)")
# The seqs stored past the positions of some streams, on any day (one index range per
# stream and partition; there are none unless something stored without advancing).
_PAST = (
    "SELECT m.sensor, m.epoch, m.seq FROM messages m JOIN unnest(%s::text[], %s::bigint[], "
    "%s::bigint[]) AS k(sensor, epoch, contig) ON m.sensor = k.sensor "
    "AND m.epoch = k.epoch AND m.seq > k.contig")


class PostgresStorage(SqlStorage):
    """PostgreSQL through psycopg 3, for collectors serving many sensors; ``messages``
    partitioned by day (``mamori.sensor.collector.partitions``)."""

    placeholder = "%s"
    types = {"int": "BIGINT", "real": "DOUBLE PRECISION", "blob": "BYTEA",
             "messages_key": "PRIMARY KEY (sensor, epoch, seq, received)) "
                             "PARTITION BY RANGE (received)"}

    def __init__(self, dsn: str) -> None:
        import psycopg  # only collectors configured with a DSN need it

        self._days: set[int] = set()
        super().__init__(psycopg.connect(dsn, autocommit=False))
        # The alerts' COPY target, private to this session and emptied by every commit:
        # a DELETE would leave dead rows that nothing vacuums (autovacuum skips
        # temporary tables), and each round's INSERT ... SELECT would scan them again.
        self._exec("CREATE TEMP TABLE IF NOT EXISTS alerts_in (LIKE alerts) "
                   "ON COMMIT DELETE ROWS")
        # Binary COPY: a third of the server's and the client's cost of text, which
        # spells out every number and parses it back. It needs each column's type;
        # the catalog's, so that the rows fit the tables as they are.
        self._columns = {table: [str(r[0]) for r in self._all(
            "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = "
            "?::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (table,))]
            for table in ("messages", "alerts_in")}
        self.commit()
        self.ahead(time.time())

    def _prepare(self) -> None:
        if partitions.relkind(self._conn, "messages") == "r":  # the unpartitioned schema
            messages = next(s for s in _SCHEMA.split(";") if " messages (" in s)
            partitions.migrate(self._conn, messages.format(**self.types))
            self.commit()

    def maintain(self, now: float) -> None:
        self.ahead(now)

    def ahead(self, now: float) -> None:
        """Today's and tomorrow's partitions, in a transaction of their own: call it
        between batches, when this connection holds no locks."""
        today = partitions.day_of(now)
        self._days = partitions.existing(self._conn)
        missing = {today, today + 1} - self._days
        if missing:
            partitions.create(self._conn, missing)
            self.commit()
            self._days |= missing

    def store_batch(self, msgs: Sequence[StoredMessage]) -> None:
        """COPY the batch straight into ``messages``, less what is stored already.

        The primary key contains ``received`` (the partition key), so it cannot by itself
        catch a resend received on another day. What does: each touched stream's row is
        locked first and only seqs past its stored position go in. Another collector
        writing the same stream waits on that lock and then sees the position this one
        committed: stored exactly once.

        The collector stores a stream in order and moves its position in the same
        transaction, so nothing past a position is stored and the filtered batch needs
        no conflict probe per row. Where the lock finds rows past a position (a caller
        that stored without advancing), their seqs are read and left out too, as is a
        seq the batch repeats (the first copy stays)."""
        if not msgs:
            return
        days = {partitions.day_of(m.received) for m in msgs} - self._days
        if days:  # the clock passed midnight before ahead() ran: rare, done inline
            partitions.create(self._conn, days)
            self._days |= days
        cur = self._conn.cursor()
        keys = sorted({(m.sensor, m.epoch) for m in msgs})
        locked = cur.execute(_LOCK_STREAMS, ([k[0] for k in keys],
                                             [k[1] for k in keys])).fetchall()
        stored = {(r[0], int(r[1])): int(r[2]) for r in locked}
        past = [r for r in locked if r[3]]
        seen: set[tuple[str, int, int]] = set()
        if past:
            seen.update((r[0], int(r[1]), int(r[2])) for r in cur.execute(_PAST, (
                [r[0] for r in past], [r[1] for r in past], [r[2] for r in past])))
        fresh = []
        for m in msgs:
            if m.seq > stored.get((m.sensor, m.epoch), 0):
                key = (m.sensor, m.epoch, m.seq)
                if key not in seen:
                    seen.add(key)
                    fresh.append(m)
        rows, alerts = message_rows(fresh)
        self._copy(cur, "messages", rows)
        if alerts:
            self._copy(cur, "alerts_in", alerts)
            cur.execute("INSERT INTO alerts SELECT * FROM alerts_in ORDER BY sensor, akey"
                        + UPSERT_ALERT_FROM)

    def _copy(self, cur: Any, table: str, rows: Sequence[Sequence[Any]]) -> None:
        """Binary COPY of ``rows`` into ``table``."""
        with cur.copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(self._columns[table])
            for row in rows:
                copy.write_row(row)

    def expire(self, cutoff: float) -> int:
        """Drop the days wholly before ``cutoff``; returns how many partitions went."""
        gone = partitions.drop_before(self._conn, cutoff)
        self._expire_rest(cutoff)
        self.commit()
        self._days -= {d for d in self._days if (d + 1) * partitions.DAY <= cutoff}
        return len(gone)


def open_storage(db: Path, dsn: str = "") -> SqlStorage:
    """PostgreSQL when a DSN is given, else SQLite at ``db``."""
    return PostgresStorage(dsn) if dsn else SqliteStorage(db)


def storage_errors(settings: CollectorSettings) -> tuple[type[Exception], ...]:
    """What opening the collector store raises when it cannot (not a programming error)."""
    errors: tuple[type[Exception], ...] = (sqlite3.Error, OSError)
    if settings.dsn:
        try:
            import psycopg
        except ImportError:
            return (*errors, ImportError)  # reported as "PostgreSQL needs psycopg"
        errors = (*errors, psycopg.Error)
    return errors


def storage_problem(settings: CollectorSettings, err: Exception) -> str:
    """An error opening the collector store, naming the store (never the DSN: a password)."""
    if isinstance(err, ImportError):
        return ("[collect] dsn is set, but psycopg (PostgreSQL) is not installed: "
                "pip install 'mamori[postgres]' (Debian: apt install python3-psycopg)")
    if settings.dsn:
        return f"PostgreSQL ([collect] dsn): {err}".strip()
    if isinstance(err, OSError):
        return describe_mkdir(err) if err.filename is not None else \
            f"{settings.db}: {err.strerror or err}"
    text = str(err)
    return text if settings.dsn or str(settings.db) in text else f"{settings.db}: {text}"
