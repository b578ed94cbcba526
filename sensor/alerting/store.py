"""The local store: alerts, assets and the baseline in one SQLite file (WAL mode).

SQLite in WAL mode because the sensor writes while operators read (``mamori
alerts --follow``), and because a committed transaction survives a crash or a
kill -9 of the writer: the WAL is replayed on the next open. ``synchronous =
NORMAL`` keeps that guarantee for process crashes (only a power cut can lose the
last transactions, never corrupt the file).

Retention is by age (alerts last seen before ``now - max_age``) and by size
(oldest alerts first until the file is under ``max_bytes``; pages are given
back with incremental vacuum).

Alerts are upserted by the detector's aggregate: ``save_alerts`` inserts new
ones and updates count/last-seen of known ones, in one transaction.

Every write of a forwardable alert stamps it with the next store revision
(``alerts.rev``, counter in ``meta``), so "everything committed since revision N"
is one indexed query: the forwarding journal keeps the last revision it holds, and
after a disk-full episode journals the rest from here (``mamori.sensor.alerting.dispatch``).

A full disk is a state, not a crash (issue 12): SQLite rolls back on
``SQLITE_FULL``; ``save_alerts`` then keeps what fits, in chunks, and returns the
ids of that prefix; the inventory and baseline snapshot and retention are skipped
and retried at the next call. ``full``, ``unstored`` and ``skipped_snapshots`` say
what happened, for the health alert and the status output.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.configkit import Config
from mamori.sensor.paths import check_creatable, describe

SCHEMA_VERSION = 1
_CHUNK = 50  # alerts per transaction once a whole batch did not fit on the disk
_MAX_PCAPS_HELD = 10_000  # pcap paths waiting for their alert's first write
# Detector aggregates whose row this Store remembers, least recently written first.
# Twice the detector's open table (mamori.sensor.detection.engine.DEFAULT_MAX_OPEN): an
# aggregate that can still count up was written more recently than all but that many.
MAX_IDS = 32_768

log = logging.getLogger("mamori.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL, precursor TEXT NOT NULL, severity INTEGER NOT NULL,
    attack TEXT NOT NULL, title TEXT NOT NULL, proto TEXT NOT NULL,
    first_ts REAL NOT NULL, last_ts REAL NOT NULL, count INTEGER NOT NULL,
    src TEXT, sport INTEGER, dst TEXT, dport INTEGER, unit INTEGER,
    link_src INTEGER, link_dst INTEGER, evidence TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_last_ts ON alerts (last_ts);
CREATE INDEX IF NOT EXISTS alerts_severity ON alerts (severity, last_ts);
CREATE TABLE IF NOT EXISTS assets (
    ip TEXT PRIMARY KEY, doc TEXT NOT NULL, last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pairs (
    key TEXT PRIMARY KEY, doc TEXT NOT NULL, last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS baseline (
    id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL, saved REAL NOT NULL
);
"""

_COLUMNS = ("id", "rule", "precursor", "severity", "attack", "title", "proto", "first_ts",
            "last_ts", "count", "src", "sport", "dst", "dport", "unit", "link_src",
            "link_dst", "evidence")


class StoreError(Exception):
    """The store file cannot be opened or is not a Mamori store (names the path)."""


class StoreFull(StoreError):
    """The disk has no room: for an explicit write (``save_baseline``, nothing
    changed) or to open the store at all."""


def is_disk_full(err: BaseException) -> bool:
    """SQLite's SQLITE_FULL: the disk (or a quota) has no room for the transaction.

    Also SQLITE_IOERR_SHMSIZE, which is what opening a WAL database on a full disk
    gives (its shared-memory file cannot grow). Checked by code, not message, where
    Python gives the code (3.11+). SQLite rolls the transaction back itself in that
    case, so the database is unchanged.
    """
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code in (sqlite3.SQLITE_FULL, _SQLITE_IOERR_SHMSIZE)
    return "database or disk is full" in str(err)


_SQLITE_IOERR_SHMSIZE = 4874  # sqlite3.SQLITE_IOERR_SHMSIZE (named from Python 3.11)


class Store:
    """One connection to the store file. Not shared between threads."""

    def __init__(self, path: str | Path, *, max_age: float = 90 * 86400.0,
                 max_bytes: int = 512 * 1024 * 1024, readonly: bool = False,
                 max_ids: int = MAX_IDS) -> None:
        if max_ids < 1:
            raise ValueError("max_ids must be at least 1")
        self.path = Path(path)
        self.max_age = max_age
        self.max_bytes = max_bytes
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreError(f"{self.path}: no store (has the sensor run yet?)")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                           timeout=10.0)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=10.0)
                new = self._db.execute("PRAGMA page_count").fetchone()[0] == 0
                if new:
                    self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
                with self._db:
                    self._db.executescript(_SCHEMA)
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                                     (str(SCHEMA_VERSION),))
                    self._migrate()
            version = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            ident = self._db.execute("SELECT value FROM meta WHERE key='id'").fetchone()
        except sqlite3.DatabaseError as err:
            if is_disk_full(err):
                raise StoreFull(f"{self.path}: disk full, cannot open the store ({err}); "
                                f"free some space") from None
            raise StoreError(f"{self.path}: not a usable store: {err}") from None
        if version is None or int(version[0]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store schema {version} is not {SCHEMA_VERSION}")
        self.id = str(ident[0]) if ident else ""  # names this store in the journal's marks
        # detector alert id -> row id, least recently written first, at most max_ids
        self._ids: OrderedDict[int, int] = OrderedDict()
        self.max_ids = max_ids
        self.ids_forgotten = 0  # mappings dropped at max_ids, cumulative
        self._pcaps: dict[int, str] = {}  # detector alert id -> pcap, until its row exists
        self.full = False  # the last write failed for lack of space
        self.unstored = 0  # alert writes that did not fit, cumulative
        self.skipped_snapshots = 0  # inventory/baseline/retention passes skipped (full)

    def _migrate(self) -> None:
        """Add the revision column, its counter and the store's id to older stores
        (same schema version: old readers ignore them)."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(alerts)")}
        if "rev" not in columns:
            self._db.execute("ALTER TABLE alerts ADD COLUMN rev INTEGER NOT NULL DEFAULT 0")
        self._db.execute("CREATE INDEX IF NOT EXISTS alerts_rev ON alerts (rev)")
        # the web page's timeline (alerts per hour first seen, by severity, without the
        # folded health alerts): covering index ranges per hour, not table scans
        self._db.execute("CREATE INDEX IF NOT EXISTS alerts_first_ts"
                         " ON alerts (first_ts, severity, precursor)")
        if "pcap" not in columns:  # issue 20: the local file of the packets behind it
            self._db.execute("ALTER TABLE alerts ADD COLUMN pcap TEXT")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('rev', '0')")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (uuid.uuid4().hex,))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- alerts -----------------------------------------------------------------------

    def save_alerts(self, alerts: Iterable[Alert], *, forward: bool = True) -> list[int]:
        """Insert new aggregates, update known ones; one transaction; returns row ids.

        ``Alert.id`` is the detector's number for the aggregate; the store maps it
        to its own row id for the lifetime of this Store object. On a full disk the
        ids returned are those of the prefix that fitted (see ``commit_alerts``).
        """
        return [row for row, _ in self.commit_alerts(alerts, forward=forward)]

    def commit_alerts(self, alerts: Iterable[Alert], *,
                      forward: bool = True) -> list[tuple[int, int]]:
        """``save_alerts`` returning (row id, revision) per alert committed.

        ``forward=False`` (alerts the forwarder journals itself) leaves revision 0, so
        the journal's catch-up never sends them twice. When the whole batch does not
        fit, it is retried in chunks and stops at the first chunk that does not: the
        result is the prefix that was kept, in order; the rest is counted in
        ``unstored`` and the caller decides whether to hold it.
        """
        batch = list(alerts)
        if not batch:
            return []
        try:
            out = self._commit(batch, forward)
        except sqlite3.Error as err:
            if not is_disk_full(err):
                raise
            out = []
            for start in range(0, len(batch), _CHUNK):
                try:
                    out += self._commit(batch[start:start + _CHUNK], forward)
                except sqlite3.Error as chunk_err:
                    if not is_disk_full(chunk_err):
                        raise
                    break
            self._disk_full(f"{len(batch) - len(out)} of {len(batch)} alerts not stored")
            self.unstored += len(batch) - len(out)
            return out
        self._space_back()
        return out

    def attach_pcap(self, alert_id: int, path: str) -> None:
        """Record the pcap of the packets behind detector alert ``alert_id`` (issue 20).

        The path lives in the store's row only, never in the alert: what is forwarded
        carries neither the frames nor where they are. An alert raised but not yet
        stored gets it with its first write; at most ``_MAX_PCAPS_HELD`` wait.
        """
        row = self._ids.get(alert_id)
        if row is None:
            if len(self._pcaps) >= _MAX_PCAPS_HELD:
                del self._pcaps[next(iter(self._pcaps))]
            self._pcaps[alert_id] = path
            return
        try:
            with self._db:
                self._db.execute("UPDATE alerts SET pcap = ? WHERE id = ?", (path, row))
        except sqlite3.Error as err:
            if not is_disk_full(err):
                raise
            self._disk_full("the path of an alert's pcap not recorded")

    def pcap(self, row_id: int) -> str | None:
        """The pcap recorded for the alert of row ``row_id`` (None: none, or a store
        older than issue 20 opened read-only)."""
        return pcap_of(self._db, row_id)

    def _commit(self, batch: Sequence[Alert], forward: bool) -> list[tuple[int, int]]:
        now = time.time()
        out: list[tuple[int, int]] = []
        added: list[int] = []  # detector ids mapped in this transaction: undone if it fails
        try:
            with self._db:
                rev = 0
                if forward:
                    self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? "
                                     "WHERE key = 'rev'", (len(batch),))
                    top = self._db.execute("SELECT value FROM meta WHERE key = 'rev'").fetchone()
                    rev = int(top[0]) - len(batch) if top else 0
                for alert in batch:
                    if forward:
                        rev += 1
                    alert = self.resolve_steps(alert)  # a chain's steps: after them in batch
                    row = self._ids.get(alert.id) if alert.id else None
                    if row is not None:
                        self._ids.move_to_end(alert.id)
                        self._db.execute(
                            # evidence too: an aggregate's (a storm's source count) grows
                            "UPDATE alerts SET count=?, last_ts=?, evidence=?, updated=?, rev=?"
                            " WHERE id=?",
                            (alert.count, alert.last_ts,
                             json.dumps(dict(alert.evidence), default=str), now, rev, row))
                    else:
                        cur = self._db.execute(
                            "INSERT INTO alerts (rule, precursor, severity, attack, title,"
                            " proto, first_ts, last_ts, count, src, sport, dst, dport, unit,"
                            " link_src, link_dst, evidence, updated, rev) VALUES"
                            " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            (alert.rule, alert.precursor, int(alert.severity),
                             json.dumps(list(alert.attack)), alert.title, alert.proto,
                             alert.first_ts, alert.last_ts, alert.count, alert.src,
                             alert.sport, alert.dst, alert.dport, alert.unit,
                             alert.link_src, alert.link_dst,
                             json.dumps(dict(alert.evidence), default=str), now, rev))
                        row = int(cur.lastrowid or 0)
                        if alert.id:
                            self._ids[alert.id] = row
                            added.append(alert.id)
                            pcap = self._pcaps.get(alert.id)
                            if pcap is not None:
                                self._db.execute("UPDATE alerts SET pcap = ? WHERE id = ?",
                                                 (pcap, row))
                    out.append((row, rev))
        except BaseException:
            for ident in added:
                self._ids.pop(ident, None)
            raise
        for ident in added:
            self._pcaps.pop(ident, None)
        self._forget_ids()
        return out

    def _forget_ids(self) -> None:
        """Keep ``_ids`` at ``max_ids``: the least recently written go (a daemon writes
        millions of alerts over its years). Counted in ``ids_forgotten``. An alert whose
        mapping went and that is written again becomes a second row; the detector's
        open table (half this size, also least recently joined first) forgets an
        aggregate before this does, so its later occurrences are a new alert anyway."""
        ids = self._ids
        if len(ids) <= self.max_ids:
            return
        if not self.ids_forgotten:
            log.warning("%s: remembering the rows of the %d most recently written alerts "
                        "only; older ones are not updated again", self.path, self.max_ids)
        while len(ids) > self.max_ids:
            ids.popitem(last=False)
            self.ids_forgotten += 1

    def resolve_steps(self, alert: Alert) -> Alert:
        """A chain alert (``mamori.sensor.detection.chains``) with its steps' store ids.

        The detector names each step by its number for the step's aggregate; the
        operator and the collectors know that alert by its row id here, so the
        evidence gets the row ids. A step is always written before its chain (the
        detector raised it first), so its row is known; one that was never stored
        (disk full) says so: ``alert`` null, ``detector_alert`` its number.
        ``ids: "store"`` marks evidence already resolved.
        """
        evidence = alert.evidence
        steps = evidence.get("steps") if "chain" in evidence else None
        if not isinstance(steps, list) or evidence.get("ids") == "store":
            return alert
        out = []
        for step in steps:
            step = dict(step)
            ident = step.get("alert")
            row = self._ids.get(ident) if isinstance(ident, int) and ident > 0 else None
            if row is None:
                step["alert"], step["detector_alert"] = None, ident
            else:
                step["alert"] = row
            out.append(step)
        return replace(alert, evidence={**evidence, "steps": out, "ids": "store"})

    def _disk_full(self, what: str) -> None:
        if not self.full:
            log.error("%s: disk full: %s; kept what fitted, retrying as space returns",
                      self.path, what)
        self.full = True

    def _space_back(self) -> None:
        if self.full:
            log.warning("%s: writing again (disk space is back)", self.path)
        self.full = False

    def rev(self) -> int:
        """The newest revision given to a forwardable alert (0: none yet)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'rev'").fetchone()
        return int(row[0]) if row else 0

    def owe_journal(self, rev: int) -> None:
        """Forwarding is configured but its journal cannot be opened (a full disk):
        remember that what comes after ``rev`` is owed to it, so the journal, when it
        first sees this store, starts there instead of adopting the store as it is.
        Keeps the oldest such revision; on a full disk this too may not be kept."""
        try:
            with self._db:
                self._db.execute("INSERT INTO meta VALUES ('journal_owed', ?) "
                                 "ON CONFLICT (key) DO NOTHING", (str(rev),))
        except sqlite3.Error as err:
            if not is_disk_full(err):
                raise
            self._disk_full("note of alerts owed to the journal not saved")

    def journal_owed(self) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'journal_owed'").fetchone()
        return None if row is None else int(row[0])

    def clear_journal_owed(self) -> None:
        """The journal holds a mark for this store now (it does not fail: a delete on
        a full disk is retried by the next journal's first sight of the store)."""
        try:
            with self._db:
                self._db.execute("DELETE FROM meta WHERE key = 'journal_owed'")
        except sqlite3.Error as err:
            if not is_disk_full(err):
                raise

    def unjournaled(self, after_rev: int, limit: int = 500) -> list[tuple[int, Alert]]:
        """(revision, alert as stored now) of forwardable alerts written after
        ``after_rev``, oldest revision first: the journal's catch-up after a full disk.
        An aggregate updated several times is there once, at its latest state."""
        sql = (f"SELECT rev, {', '.join(_COLUMNS)} FROM alerts WHERE rev > ? "
               f"ORDER BY rev LIMIT ?")
        return [(int(r[0]), _alert(r[1:])) for r in self._db.execute(sql, (after_rev, limit))]

    def alerts(self, *, since: float | None = None, min_severity: Severity | None = None,
               after_id: int = 0, limit: int | None = None) -> list[Alert]:
        """Alerts last seen at or after ``since``, oldest first."""
        where = ["id > ?"]
        params: list[Any] = [after_id]
        if since is not None:
            where.append("last_ts >= ?")
            params.append(since)
        if min_severity is not None:
            where.append("severity >= ?")
            params.append(int(min_severity))
        sql = f"SELECT {', '.join(_COLUMNS)} FROM alerts WHERE {' AND '.join(where)} ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_alert(row) for row in self._db.execute(sql, params)]

    def alert_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM alerts").fetchone()[0])

    # -- assets and baseline ----------------------------------------------------------

    def save_inventory(self, assets: Sequence[Mapping[str, Any]],
                       pairs: Sequence[Mapping[str, Any]],
                       baseline: Mapping[str, Any] | None) -> None:
        """Merge assets and pairs into the stored inventory; replace the baseline; atomically.

        The stored inventory only grows: a host or pair that is not in ``assets``
        or ``pairs`` (an earlier capture's, or one the detector's bounded
        inventory forgot) stays as stored, and one that is there is merged with
        its stored row (:func:`_merge_asset`, :func:`_merge_pair`). The merge is
        idempotent, because a daemon saves the same growing inventory again and
        again: sets are unions, first/last seen are min/max, and a pair's count is
        the larger of the two (the most one run has counted).

        ``learned`` is the one flag that can go back: with a ``baseline`` saved
        beside them, a row in this save says whether it is in that baseline now (a
        freeze demotes the pairs of a client that never became a learned master,
        and the stored row must not keep saying learned). Without one, learned once
        is learned.
        """
        now = time.time()
        try:
            with self._db:
                current = baseline is not None
                self._merge_rows("assets", "ip", [(str(a["ip"]), a) for a in assets],
                                 lambda old, new: _merge_asset(old, new, current))
                self._merge_rows("pairs", "key", [(_pair_key(p), p) for p in pairs],
                                 lambda old, new: _merge_pair(old, new, current))
                if baseline is not None:
                    self._save_baseline(baseline, now)
        except sqlite3.Error as err:
            if not is_disk_full(err):
                raise
            # A snapshot of state the caller still holds: the next save merges it.
            self.skipped_snapshots += 1
            self._disk_full("inventory and baseline not saved")
        else:
            self._space_back()

    def _merge_rows(self, table: str, column: str,
                    rows: Sequence[tuple[str, Mapping[str, Any]]],
                    merge: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]],
                    ) -> None:
        """Upsert ``rows`` (key, doc) into ``table``, merging each with its stored doc."""
        for start in range(0, len(rows), _MERGE_CHUNK):
            chunk = rows[start:start + _MERGE_CHUNK]
            keys = [key for key, _ in chunk]
            stored: dict[str, Any] = {}
            for key, doc in self._db.execute(
                    f"SELECT {column}, doc FROM {table} WHERE {column} IN"
                    f" ({','.join('?' * len(keys))})", keys):
                try:
                    stored[key] = json.loads(doc)
                except ValueError:
                    continue  # an unreadable row is replaced by what was seen now
            out = []
            for key, doc in chunk:
                old = stored.get(key)
                merged = dict(doc) if not isinstance(old, dict) else merge(old, doc)
                out.append((key, json.dumps(merged), merged["last_seen"]))
            self._db.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?,?,?)", out)

    def save_baseline(self, doc: Mapping[str, Any]) -> None:
        """An operator's explicit save: on a full disk it raises ``StoreFull``."""
        try:
            with self._db:
                self._save_baseline(doc, time.time())
        except sqlite3.Error as err:
            if is_disk_full(err):
                raise StoreFull(f"{self.path}: disk full, baseline not saved") from None
            raise

    def _save_baseline(self, doc: Mapping[str, Any], now: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO baseline VALUES (1, ?, ?)",
                         (json.dumps(doc), now))

    def load_baseline(self) -> dict[str, Any] | None:
        row = self._db.execute("SELECT doc FROM baseline WHERE id = 1").fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def assets(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._db.execute("SELECT doc FROM assets ORDER BY ip")]

    def pairs(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._db.execute("SELECT doc FROM pairs ORDER BY key")]

    # -- retention --------------------------------------------------------------------

    def prune(self, now: float | None = None) -> int:
        """Apply retention by age and by size; returns the number of alerts deleted.

        Age counts from when the store last wrote the alert (``updated``, wall clock),
        not from its packet time: an analyst replaying a capture from 2015 into the
        store keeps those alerts for ``max_age`` like any others.
        """
        now = time.time() if now is None else now
        try:
            return self._prune(now)
        except sqlite3.Error as err:
            if not is_disk_full(err):
                raise
            # Deleting needs room in the WAL too; retention runs again next time.
            self.skipped_snapshots += 1
            self._disk_full("retention pass skipped")
            return 0

    def _prune(self, now: float) -> int:
        deleted = 0
        with self._db:
            cur = self._db.execute("DELETE FROM alerts WHERE updated < ?",
                                   (now - self.max_age,))
            deleted += cur.rowcount
        while self.size_bytes() > self.max_bytes:
            with self._db:
                cur = self._db.execute(
                    "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts ORDER BY last_ts"
                    " LIMIT max(100, (SELECT count(*) FROM alerts) / 10))")
            if cur.rowcount == 0:
                break
            deleted += cur.rowcount
            self._db.execute("PRAGMA incremental_vacuum")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def size_bytes(self) -> int:
        """Pages in use (the file minus free pages), which retention keeps under the cap."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def integrity_ok(self) -> bool:
        return bool(self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")


_MERGE_CHUNK = 500  # keys per SELECT ... IN (...): under SQLite's variable limit


def _pair_key(p: Mapping[str, Any]) -> str:
    return json.dumps([p["proto"], p["client"], p["server"], p["port"], p["unit"],
                       p["link_master"], p["link_outstation"]])


def _union(old: Any, new: Any) -> list[Any]:
    items = list(new) + [x for x in (old if isinstance(old, list) else ()) if x not in new]
    return sorted(items, key=lambda x: (str(type(x)), x))


def _span(old: Mapping[str, Any], new: Mapping[str, Any], merged: dict[str, Any],
          current: bool) -> None:
    """first_seen is the earliest, last_seen the latest; learned as the baseline says.

    Both times come from all four: a row an older sensor saved with its last_seen
    before its first_seen (packet times out of order, fixed in the inventory) still
    says the host was seen at both, so the merge heals it to the span covering both.
    ``current``: ``new`` was saved with the baseline it belongs to, so its
    ``learned`` is the truth; otherwise learned once is learned.
    """
    times = [t for doc in (old, new) for t in (doc.get("first_seen"), doc.get("last_seen"))
             if isinstance(t, int | float)]
    if times:
        merged["first_seen"], merged["last_seen"] = min(times), max(times)
    merged["learned"] = bool(new.get("learned")) or (not current and bool(old.get("learned")))


def _merge_asset(old: Mapping[str, Any], new: Mapping[str, Any], current: bool
                 ) -> dict[str, Any]:
    """A stored asset row and the same host seen now: what both say."""
    merged = dict(new)
    merged["mac"] = new.get("mac") or old.get("mac")
    for key in ("roles", "units", "links"):
        merged[key] = _union(old.get(key), new.get(key) or [])
    old_identity = old.get("identity") or {}
    identity = dict(old_identity)
    identity.update(new.get("identity") or {})
    merged["identity"] = dict(sorted(identity.items()))
    merged["identity_seen"] = _merge_sightings(old_identity, old.get("identity_seen"),
                                               new.get("identity") or {},
                                               new.get("identity_seen"))
    _span(old, new, merged, current)
    return merged


def _merge_sightings(old_identity: Mapping[str, Any], old: Any, new_identity: Mapping[str, Any],
                     new: Any) -> dict[str, Any]:
    """Per identity key, the first and the last sighting of its current value.

    A value that changed starts afresh from the new row; the same value keeps the
    earlier first sighting and the later last one (frame numbers belong to the
    capture or the daemon run they were counted in, and travel with their time).
    """
    old = old if isinstance(old, Mapping) else {}
    new = new if isinstance(new, Mapping) else {}
    out: dict[str, Any] = {k: dict(v) for k, v in old.items() if isinstance(v, Mapping)
                           and (k not in new_identity or new_identity[k] == old_identity.get(k))}
    for key, seen in new.items():
        if not isinstance(seen, Mapping):
            continue
        have = out.get(key)
        if have is None or old_identity.get(key) != new_identity.get(key):
            out[key] = dict(seen)
            continue
        if _before(seen.get("first_seen"), have.get("first_seen")):
            have["first_seen"], have["first_frame"] = seen.get("first_seen"), seen.get(
                "first_frame")
        if _before(have.get("last_seen"), seen.get("last_seen")):
            have["last_seen"], have["last_frame"] = seen.get("last_seen"), seen.get(
                "last_frame")
    return dict(sorted(out.items()))


def _before(a: Any, b: Any) -> bool:
    """``a`` is a time earlier than ``b`` (or ``b`` is none at all)."""
    if not isinstance(a, int | float):
        return False
    return not isinstance(b, int | float) or a < b


def _merge_pair(old: Mapping[str, Any], new: Mapping[str, Any], current: bool
                ) -> dict[str, Any]:
    """A stored pair row and the same pair seen now: functions and ranges of both."""
    merged = dict(new)
    functions = set(map(str, new.get("functions") or []))
    functions.update(map(str, old.get("functions") or []))
    merged["functions"] = sorted(functions)
    ranges: dict[str, list[int]] = {}
    for source in (old.get("ranges"), new.get("ranges")):
        for label, span in (source or {}).items():
            if not (isinstance(span, list) and len(span) == 2):
                continue
            have = ranges.get(label)
            ranges[label] = list(span) if have is None else [min(have[0], span[0]),
                                                              max(have[1], span[1])]
    merged["ranges"] = ranges
    if merged.get("period") is None:
        merged["period"] = old.get("period")
    if isinstance(old.get("count"), int):
        merged["count"] = max(old["count"], int(new.get("count") or 0))
    _span(old, new, merged, current)
    return merged


def _alert(row: Sequence[Any]) -> Alert:
    d = dict(zip(_COLUMNS, row, strict=True))
    return Alert(
        rule=d["rule"], precursor=d["precursor"], severity=Severity(d["severity"]),
        attack=tuple(json.loads(d["attack"])), title=d["title"], proto=d["proto"],
        first_ts=d["first_ts"], last_ts=d["last_ts"], count=d["count"], src=d["src"],
        sport=d["sport"], dst=d["dst"], dport=d["dport"], unit=d["unit"],
        link_src=d["link_src"], link_dst=d["link_dst"], evidence=json.loads(d["evidence"]),
        id=d["id"])


def pcap_of(db: sqlite3.Connection, row_id: int) -> str | None:
    """``alerts.pcap`` of one row; None when unset or the column is not there yet."""
    try:
        found = db.execute("SELECT pcap FROM alerts WHERE id = ?", (row_id,)).fetchone()
    except sqlite3.OperationalError:  # no such column: a store no newer sensor opened
        return None
    return None if found is None or found[0] is None else str(found[0])


def open_store(path: Path, config: Config, readonly: bool) -> Store:
    """The store at ``path``, bounded by ``[store]``; StoreError, naming the path, for
    anything in the way.

    A directory there or a file where a directory should be would otherwise come
    out of SQLite as ``disk I/O error`` or out of ``mkdir`` as ``File exists``.
    """
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not a store")
    if not readonly and (problem := check_creatable(path)) is not None:
        raise StoreError(problem)
    try:
        return Store(path, readonly=readonly, max_age=config.get("store", "max_age"),
                     max_bytes=config.get("store", "max_bytes"))
    except OSError as err:  # its directory cannot be made (permissions, read-only fs)
        raise StoreError(f"{path}: cannot open the store: {describe(err)}") from None
