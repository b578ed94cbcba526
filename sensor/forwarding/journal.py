"""The outbound journal: every forwarded message is committed here before it is sent.

SQLite in WAL mode with ``synchronous=FULL``: once ``append`` returns, the message
survives kill -9 and power loss, so the forwarder can resend it until a collector
acknowledges it (principle 4, "nothing committed is lost").

Tables::

    epochs   (epoch PK, started, last_seq)          one row per sensor start
    streams  (collector, epoch, last_seq)           last seq per destination and epoch
    messages (id PK, collector, epoch, seq, ts, kind, frame, fields, shape, acked)
                                                    frame = the exact wire bytes sent
    acks     (collector, epoch, seq)                cumulative ack per collector, epoch
    evicted  (epoch, first, last, ts, collector)    unacked ranges lost to the size cap
    audit    (hour, collector, kind, fields, messages, retransmits, bytes, first_ts, last_ts)
    store_sync (store PK, rev)                     how far the local store is journaled
    audit_log, audit_anchor, pseudonyms            the audit chain (forwarding.audit)

Each destination has its own stream: its policy shapes the frame (fields, pseudonyms)
and may keep a message from it altogether, so each collector's seqs count only what
it is sent and stay contiguous. Rows with ``collector = ''`` are *shared*: journaled
with no collector configured, or by a version-1 journal (migrated in place); they go
to every collector on the default policy (``shared``), the only policy that
existed when they were shaped.

``messages.id`` orders all epochs: the forwarder walks it as its send cursor, so old
epochs' unacknowledged messages go out first after a restart. A message is ``acked``
once every configured collector acknowledged it; only then is it the first to go
when the journal exceeds its byte budget. Evicting an unacknowledged message is data
loss, which ``append`` reports to the caller (the forwarder raises an S4 meta-alert).

A full disk is not a crash: SQLite rolls the transaction back itself on
``SQLITE_FULL`` and ``append`` raises ``JournalFull`` (an ``OSError`` with ENOSPC,
so callers that already refuse to start on OSError keep doing so), leaving the
journal exactly as it was. ``store_sync`` is how nothing the local store committed
is lost for forwarding: each append of store alerts moves, in the same transaction,
the mark of the highest store revision journaled, so after a disk-full episode the
alerts above the mark are journaled from the store (``mamori.sensor.alerting.dispatch``).
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamori.parsers.wire import Kind, encode
from mamori.sensor.alerting.store import is_disk_full
from mamori.sensor.forwarding import audit as chain
from mamori.sensor.forwarding.pseudonym import Mapping

SHARED = ""  # the collector of a shared row

_MESSAGES = """CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY, collector TEXT NOT NULL DEFAULT '', epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL, ts REAL NOT NULL, kind INTEGER NOT NULL, frame BLOB NOT NULL,
    fields TEXT NOT NULL DEFAULT '', shape TEXT NOT NULL DEFAULT '',
    acked INTEGER NOT NULL DEFAULT 0, UNIQUE (collector, epoch, seq))"""
_SCHEMA = _MESSAGES + """;
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY, started REAL NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS streams (
    collector TEXT NOT NULL, epoch INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    PRIMARY KEY (collector, epoch));
CREATE INDEX IF NOT EXISTS messages_acked ON messages (acked, id);
CREATE INDEX IF NOT EXISTS messages_dest ON messages (collector, epoch, seq);
CREATE TABLE IF NOT EXISTS acks (
    collector TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (collector, epoch));
CREATE TABLE IF NOT EXISTS evicted (
    epoch INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, ts REAL NOT NULL,
    collector TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS audit (
    hour INTEGER NOT NULL, collector TEXT NOT NULL, kind INTEGER NOT NULL,
    fields TEXT NOT NULL, messages INTEGER NOT NULL, retransmits INTEGER NOT NULL,
    bytes INTEGER NOT NULL, first_ts REAL NOT NULL, last_ts REAL NOT NULL,
    PRIMARY KEY (hour, collector, kind, fields));
CREATE TABLE IF NOT EXISTS store_sync (store TEXT PRIMARY KEY, rev INTEGER NOT NULL);
""" + chain.SCHEMA

# A version-1 journal: one shared stream, (epoch, seq) unique. Rebuilt in place, its
# rows kept as shared rows, so nothing unacknowledged is lost by the upgrade.
_MIGRATE_V1 = (
    "ALTER TABLE messages RENAME TO messages_v1",
    "DROP INDEX IF EXISTS messages_acked",
    _MESSAGES,
    "INSERT INTO messages (id, collector, epoch, seq, ts, kind, frame, fields, acked) "
    "SELECT id, '', epoch, seq, ts, kind, frame, fields, acked FROM messages_v1",
    "DROP TABLE messages_v1",
    "ALTER TABLE evicted ADD COLUMN collector TEXT NOT NULL DEFAULT ''",
)


class JournalFull(OSError):
    """The journal's disk is full: nothing of the failed write was kept.

    An ``OSError`` (ENOSPC) because that is what it is, and because the callers that
    open a journal already treat OSError as "cannot forward" rather than crashing.
    """

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(errno.ENOSPC, f"disk full, {what}", str(path))


class JournalError(OSError):
    """The journal file cannot be opened (damaged, not a journal, unreadable)."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(errno.EIO, f"not a usable forwarding journal: {what}", str(path))


@dataclass(frozen=True, slots=True)
class JournalRow:
    """One journaled message as the sender needs it."""

    id: int
    epoch: int
    seq: int
    kind: int
    frame: bytes
    fields: str
    shape: str = ""  # policy, its hash, fields withheld and pseudonymised (JSON)
    collector: str = SHARED


@dataclass(frozen=True, slots=True)
class Eviction:
    """Unacknowledged messages ``first..last`` of ``epoch`` were dropped for space."""

    epoch: int
    first: int
    last: int
    collector: str = SHARED

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One send of one message to one collector, before aggregation."""

    collector: str
    kind: int
    fields: str
    size: int
    retransmit: bool


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message shaped for one destination (``SHARED``: for all), to journal."""

    kind: Kind
    body: Any
    fields: str = ""
    collector: str = SHARED
    shape: str = ""


class AlertJournal:
    """The durable outbound queue. Thread-safe: one connection behind one lock.

    ``shared`` are the collectors that take shared rows (default: all of them);
    the forwarder leaves out those whose policy is not the default one.
    """

    def __init__(self, path: Path, collectors: Sequence[str] = (),
                 max_bytes: int = 64 * 1024 * 1024, *, shared: Sequence[str] | None = None,
                 audit_max_rows: int = 1_000_000, pseudonyms_max: int = 100_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.collectors = tuple(collectors)
        self.shared = tuple(self.collectors if shared is None else shared)
        self.max_bytes = max_bytes
        self.pseudonyms_max = pseudonyms_max
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA journal_size_limit=8388608")
            self._migrate()
            self._db.executescript(_SCHEMA)
            row = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(frame)), 0) FROM messages").fetchone()
            self._chain = chain.AuditChain(self._db, audit_max_rows)
            self._settle_orphans()
        except sqlite3.Error as err:
            self._db.close()
            if is_disk_full(err):
                raise JournalFull(path, "cannot open the journal") from None
            raise JournalError(path, str(err)) from None
        self._bytes = int(row[0])
        self.epoch = 0
        self._seqs: dict[str, int] = {}  # last seq per destination in this epoch

    @property
    def seq(self) -> int:
        """The highest seq assigned in this epoch, over all destinations."""
        return max(self._seqs.values(), default=0)

    def last_seq(self, collector: str) -> int:
        """The last seq of this epoch in ``collector``'s stream (its own, else shared)."""
        return self._seqs.get(collector, self._seqs.get(SHARED, 0))

    def _settle_orphans(self) -> None:
        """Rows no configured collector will ever take count as delivered.

        A collector removed from the configuration, or shared rows when every
        collector has a policy of its own (shared rows were shaped by the default
        one), would otherwise stay unacknowledged for ever: ``close`` would wait its
        whole flush timeout and eviction would report them as lost. They stay in the
        journal until evicted (acknowledged rows go first), so a collector configured
        again later still gets what is left of them. Opened without collectors (the
        audit commands) nothing is touched.
        """
        if not self.collectors:
            return
        marks = ",".join("?" * len(self.collectors))
        self._db.execute(f"UPDATE messages SET acked = 1 WHERE acked = 0 AND collector != '' "
                         f"AND collector NOT IN ({marks})", self.collectors)
        if not self.shared:
            self._db.execute("UPDATE messages SET acked = 1 WHERE acked = 0 AND collector = ''")

    def _migrate(self) -> None:
        """A version-1 journal (no ``collector`` column) becomes shared rows, in one
        transaction: an interrupted upgrade leaves the old journal as it was."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(messages)")}
        if not columns or "collector" in columns:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATE_V1:
                self._db.execute(statement)
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    # -- writing ----------------------------------------------------------------------

    def last_epoch(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COALESCE(MAX(epoch), 0) FROM epochs").fetchone()
        return int(row[0])

    def start_epoch(self, now: float | None = None, at_least: int = 0) -> int:
        """A new boot epoch, persisted before anything of it is sent: the next one, or
        ``at_least`` if larger (epochs handed out box-wide, see forwarding.forwarder)."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(MAX(epoch), 0) FROM epochs").fetchone()
            epoch = max(int(row[0]) + 1, at_least)
            try:
                self._db.execute("INSERT INTO epochs (epoch, started) VALUES (?, ?)",
                                 (epoch, time.time() if now is None else now))
            except sqlite3.Error as err:
                if is_disk_full(err):
                    raise JournalFull(self.path, "new epoch not journaled") from None
                raise
            self.epoch, self._seqs = epoch, {}
        return self.epoch

    def append(self, kind: Kind, body: Any, fields: str = "",
               ts: float | None = None) -> tuple[int, list[Eviction]]:
        """Commit one shared message; returns its seq and any unacknowledged evictions."""
        seqs, evictions = self.append_many([Outgoing(kind, body, fields)], ts)
        return seqs[0], evictions

    def append_many(self, items: Iterable[Outgoing],
                    ts: float | None = None, sync: tuple[str, int] | None = None,
                    pseudonyms: Sequence[Mapping] = ()) -> tuple[list[int], list[Eviction]]:
        """Commit several messages in one transaction (one fsync); their seqs, each in
        its destination's stream.

        ``sync`` = (store id, revision) records, atomically with the messages, that the
        store's alerts up to that revision are journaled; ``pseudonyms`` are the new
        mappings the messages use, kept for ``resolve`` in the same transaction.
        Raises ``JournalFull`` when the disk is full; then nothing of this call was
        kept (seqs and byte count too).
        """
        if self.epoch == 0:
            raise RuntimeError("start_epoch() before append")
        stamp = time.time() if ts is None else ts
        out: list[int] = []
        with self._lock:
            size = self._bytes
            seqs = dict(self._seqs)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for item in items:
                    seq = seqs[item.collector] = seqs.get(item.collector, 0) + 1
                    frame = encode(self.epoch, seq, stamp, item.kind, item.body)
                    self._db.execute(
                        "INSERT INTO messages (collector, epoch, seq, ts, kind, frame, fields,"
                        " shape) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (item.collector, self.epoch, seq, stamp, int(item.kind), frame,
                         item.fields, item.shape))
                    self._bytes += len(frame)
                    out.append(seq)
                for collector, seq in seqs.items():
                    if seq != self._seqs.get(collector):
                        self._db.execute(
                            "INSERT INTO streams VALUES (?, ?, ?) ON CONFLICT (collector, "
                            "epoch) DO UPDATE SET last_seq = excluded.last_seq",
                            (collector, self.epoch, seq))
                self._db.execute("UPDATE epochs SET last_seq = ? WHERE epoch = ?",
                                 (max(seqs.values(), default=0), self.epoch))
                if sync is not None:
                    self._set_sync(*sync)
                chain.remember(self._db, pseudonyms, stamp, self.pseudonyms_max)
                evictions = self._evict() if self._bytes > self.max_bytes else []
                self._db.execute("COMMIT")
            except BaseException as err:
                self._bytes = size
                self._rollback()
                if isinstance(err, sqlite3.Error) and is_disk_full(err):
                    raise JournalFull(self.path, "messages not journaled") from None
                raise
            self._seqs = seqs
        return out, evictions

    def _rollback(self) -> None:
        """Roll back if a transaction is still open: on SQLITE_FULL (and a few other
        errors) SQLite has already rolled it back, and a second ROLLBACK would raise
        "cannot rollback - no transaction is active" over the real error."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _set_sync(self, store: str, rev: int) -> None:
        self._db.execute("INSERT INTO store_sync VALUES (?, ?) ON CONFLICT (store) "
                         "DO UPDATE SET rev = MAX(rev, excluded.rev)", (store, rev))

    def sync_mark(self, store: str) -> int | None:
        """The highest revision of ``store`` known to be journaled (None: never seen)."""
        with self._lock:
            row = self._db.execute("SELECT rev FROM store_sync WHERE store = ?",
                                   (store,)).fetchone()
        return None if row is None else int(row[0])

    def set_sync_mark(self, store: str, rev: int) -> None:
        """Adopt ``store`` at revision ``rev`` (what is older was never ours to send).
        Raises ``JournalFull`` on a full disk; the caller retries with the next append."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._set_sync(store, rev)
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                if is_disk_full(err):
                    raise JournalFull(self.path, "store mark not journaled") from None
                raise

    def _evict(self) -> list[Eviction]:
        """Drop the oldest acknowledged messages, then, if still over, unacknowledged ones."""
        evictions: list[Eviction] = []
        for acked in (1, 0):
            while self._bytes > self.max_bytes:
                rows = self._db.execute(
                    "SELECT id, collector, epoch, seq, LENGTH(frame) FROM messages "
                    "WHERE acked = ? ORDER BY id LIMIT 256", (acked,)).fetchall()
                if not rows:
                    break
                cut: list[tuple[int, str, int, int, int]] = []
                for row in rows:
                    cut.append(row)
                    self._bytes -= row[4]
                    if self._bytes <= self.max_bytes * 0.9:
                        break
                self._db.execute(f"DELETE FROM messages WHERE id IN "
                                 f"({','.join('?' * len(cut))})", [r[0] for r in cut])
                if not acked:
                    evictions.extend(_ranges([(r[1], r[2], r[3]) for r in cut]))
        now = time.time()
        for ev in evictions:
            self._db.execute("INSERT INTO evicted VALUES (?, ?, ?, ?, ?)",
                             (ev.epoch, ev.first, ev.last, now, ev.collector))
        return evictions

    def ack(self, collector: str, epoch: int, seq: int) -> bool:
        """Record a cumulative ack; True when it moved. Marks rows all collectors acked."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM acks WHERE collector = ? AND epoch = ?",
                                   (collector, epoch)).fetchone()
            if row is not None and row[0] >= seq:
                return False
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO acks VALUES (?, ?, ?) ON CONFLICT (collector, epoch) "
                    "DO UPDATE SET seq = MAX(seq, excluded.seq)", (collector, epoch, seq))
                self._db.execute("UPDATE messages SET acked = 1 WHERE collector = ? AND "
                                 "epoch = ? AND seq <= ? AND acked = 0", (collector, epoch, seq))
                if collector in self.shared:
                    floor = min(self._acked_seq(c, epoch) for c in self.shared or (collector,))
                    self._db.execute("UPDATE messages SET acked = 1 WHERE collector = '' AND "
                                     "epoch = ? AND seq <= ? AND acked = 0", (epoch, floor))
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                if is_disk_full(err):
                    raise JournalFull(self.path, "ack not journaled") from None
                raise
            return True

    def _acked_seq(self, collector: str, epoch: int) -> int:
        row = self._db.execute("SELECT seq FROM acks WHERE collector = ? AND epoch = ?",
                               (collector, epoch)).fetchone()
        return int(row[0]) if row else 0

    def record_audit(self, entries: Sequence[AuditEntry], now: float | None = None,
                     sent: Sequence[chain.Sent] = ()) -> None:
        """Count sends per hour, collector, kind and forwarded field set; add a chain
        row for each message in ``sent`` (first sends) in the same transaction."""
        if not entries and not sent:
            return
        stamp = time.time() if now is None else now
        hour = int(stamp // 3600)
        with self._lock:
            head = (self._chain.n, self._chain.head, self._chain.count)
            try:
                self._db.execute("BEGIN")
                self._chain.record(self._db, sent, stamp)
                for e in entries:
                    self._db.execute(
                        "INSERT INTO audit VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?) "
                        "ON CONFLICT (hour, collector, kind, fields) DO UPDATE SET "
                        "messages = messages + 1, "
                        "retransmits = retransmits + excluded.retransmits,"
                        " bytes = bytes + excluded.bytes, last_ts = excluded.last_ts",
                        (hour, e.collector, e.kind, e.fields, int(e.retransmit), e.size,
                         stamp, stamp))
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._chain.n, self._chain.head, self._chain.count = head
                self._rollback()
                if is_disk_full(err):
                    raise JournalFull(self.path, "audit records not journaled") from None
                raise

    # -- reading ----------------------------------------------------------------------

    def takes_shared(self, collector: str) -> bool:
        """Whether ``collector``'s stream includes the shared rows."""
        return collector in self.shared or not self.collectors

    def _mine(self, collector: str) -> tuple[str, tuple[Any, ...]]:
        """SQL: the rows of ``collector``'s stream (its own, and shared ones if it takes them)."""
        return _mine_sql(self.takes_shared(collector)), (collector,)

    def backlog(self, collector: str) -> int:
        """How many messages ``collector`` has not acknowledged (``pending``, counted)."""
        with self._lock:
            return count_backlog(self._db, collector, self.takes_shared(collector))

    def pending(self, collector: str, after_id: int, limit: int) -> list[JournalRow]:
        """Messages after ``after_id`` that ``collector`` has not acknowledged, in order."""
        mine, args = self._mine(collector)
        with self._lock:
            rows = self._db.execute(
                "SELECT m.id, m.epoch, m.seq, m.kind, m.frame, m.fields, m.shape, m.collector "
                "FROM messages m LEFT JOIN acks a ON a.collector = ? AND a.epoch = m.epoch "
                f"WHERE {mine} AND m.id > ? AND m.seq > COALESCE(a.seq, 0) ORDER BY m.id "
                "LIMIT ?", (collector, *args, after_id, limit)).fetchall()
        return [JournalRow(*r) for r in rows]

    def first_unacked_id(self, collector: str) -> int | None:
        rows = self.pending(collector, 0, 1)
        return rows[0].id if rows else None

    def owed(self, collector: str, limit: int = 32) -> list[tuple[int, int, int]]:
        """(epoch, first, last) of each epoch with messages ``collector`` has not
        acknowledged, oldest first: what heartbeats tell the collector it is still owed."""
        mine, args = self._mine(collector)
        with self._lock:
            rows = self._db.execute(
                "SELECT m.epoch, MIN(m.seq), MAX(m.seq) FROM messages m "
                "LEFT JOIN acks a ON a.collector = ? AND a.epoch = m.epoch "
                f"WHERE {mine} AND m.acked = 0 AND m.seq > COALESCE(a.seq, 0) "
                "GROUP BY m.epoch ORDER BY m.epoch LIMIT ?",
                (collector, *args, limit)).fetchall()
        return [(int(e), int(f), int(last)) for e, f, last in rows]

    def last_id(self) -> int:
        """The newest message's id (0 for an empty journal)."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()
        return int(row[0])

    def locate(self, collector: str, epoch: int, seq: int) -> tuple[int | None, int]:
        """For a replay from ``seq`` of ``collector``'s stream: the id of the first kept
        message at or after it in ``epoch`` (None if none), and the last seq missing
        before it (``seq - 1`` if none)."""
        mine, args = self._mine(collector)
        with self._lock:
            row = self._db.execute(
                f"SELECT m.id, m.seq FROM messages m WHERE {mine} AND m.epoch = ? AND "
                "m.seq >= ? ORDER BY m.seq LIMIT 1", (*args, epoch, seq)).fetchone()
            if row is not None:
                return int(row[0]), int(row[1]) - 1
            last = self._db.execute(
                "SELECT last_seq FROM streams WHERE collector = ? AND epoch = ? UNION ALL "
                "SELECT last_seq FROM epochs WHERE epoch = ? AND NOT EXISTS (SELECT 1 FROM "
                "streams WHERE epoch = ? AND collector != '')",
                (collector, epoch, epoch, epoch)).fetchone()
        return None, int(last[0]) if last else seq - 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            total, unacked = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(acked = 0), 0) FROM messages").fetchone()
            evicted = self._db.execute(
                "SELECT COALESCE(SUM(last - first + 1), 0) FROM evicted").fetchone()[0]
        return {"messages": int(total), "unacked": int(unacked), "bytes": self._bytes,
                "evicted_unacked": int(evicted)}

    def audit(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Audit rows whose last send is at or after ``since`` (``mamori audit``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT hour, collector, kind, fields, messages, retransmits, bytes, first_ts,"
                " last_ts FROM audit WHERE last_ts >= ? ORDER BY hour, collector, kind, fields",
                (since,)).fetchall()
        out = []
        for hour, collector, kind, fields, messages, retrans, size, first, last in rows:
            out.append({"hour": hour * 3600, "collector": collector,
                        "kind": Kind(kind).name.lower(), "fields": fields.split(",") if fields
                        else [], "messages": messages, "retransmits": retrans, "bytes": size,
                        "first_ts": first, "last_ts": last})
        return out

    def audit_rows(self, destination: str | None, since: float,
                   until: float) -> list[dict[str, Any]]:
        """The chain's rows for ``destination`` (all when None) within [since, until]."""
        with self._lock:
            return chain.rows(self._db, destination, since, until)

    def verify_audit(self) -> chain.Verdict:
        with self._lock:
            return chain.verify(self._db)

    def resolve(self, pseudonym: str) -> dict[str, Any] | None:
        with self._lock:
            return chain.resolve(self._db, pseudonym)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _ranges(rows: Iterable[tuple[str, int, int]]) -> list[Eviction]:
    """(collector, epoch, seq) rows folded into ranges of consecutive seqs per stream."""
    out: list[Eviction] = []
    for collector, epoch, seq in sorted(rows):
        last = out[-1] if out else None
        if last and (last.collector, last.epoch, last.last + 1) == (collector, epoch, seq):
            out[-1] = Eviction(epoch, last.first, seq, collector)
        else:
            out.append(Eviction(epoch, seq, seq, collector))
    return out


def _mine_sql(takes_shared: bool) -> str:
    return "m.collector IN (?, '')" if takes_shared else "m.collector = ?"


def count_backlog(db: sqlite3.Connection, collector: str, takes_shared: bool) -> int:
    """Messages of ``collector``'s stream it has not acknowledged, on any connection to
    the journal: the metrics endpoint reads it over its own read-only one, so a scrape
    never waits for the journal's lock (see :meth:`AlertJournal.backlog`)."""
    row = db.execute(
        "SELECT COUNT(*) FROM messages m LEFT JOIN acks a ON a.collector = ? AND "
        f"a.epoch = m.epoch WHERE {_mine_sql(takes_shared)} AND m.seq > COALESCE(a.seq, 0)",
        (collector, collector)).fetchone()
    return int(row[0])
