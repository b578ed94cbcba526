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
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sensor.alerts import Alert, Severity

SCHEMA_VERSION = 1

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


class Store:
    """One connection to the store file. Not shared between threads."""

    def __init__(self, path: str | Path, *, max_age: float = 90 * 86400.0,
                 max_bytes: int = 512 * 1024 * 1024, readonly: bool = False) -> None:
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
            version = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: not a usable store: {err}") from None
        if version is None or int(version[0]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store schema {version} is not {SCHEMA_VERSION}")
        self._ids: dict[int, int] = {}  # detector alert id -> row id

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- alerts -----------------------------------------------------------------------

    def save_alerts(self, alerts: Iterable[Alert]) -> list[int]:
        """Insert new aggregates, update known ones; one transaction; returns row ids.

        ``Alert.id`` is the detector's number for the aggregate; the store maps it
        to its own row id for the lifetime of this Store object.
        """
        now = time.time()
        out: list[int] = []
        with self._db:
            for alert in alerts:
                row = self._ids.get(alert.id) if alert.id else None
                if row is not None:
                    self._db.execute(
                        "UPDATE alerts SET count=?, last_ts=?, updated=? WHERE id=?",
                        (alert.count, alert.last_ts, now, row))
                else:
                    cur = self._db.execute(
                        "INSERT INTO alerts (rule, precursor, severity, attack, title, proto,"
                        " first_ts, last_ts, count, src, sport, dst, dport, unit, link_src,"
                        " link_dst, evidence, updated) VALUES"
                        " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (alert.rule, alert.precursor, int(alert.severity),
                         json.dumps(list(alert.attack)), alert.title, alert.proto,
                         alert.first_ts, alert.last_ts, alert.count, alert.src, alert.sport,
                         alert.dst, alert.dport, alert.unit, alert.link_src, alert.link_dst,
                         json.dumps(dict(alert.evidence), default=str), now))
                    row = int(cur.lastrowid or 0)
                    if alert.id:
                        self._ids[alert.id] = row
                out.append(row)
        return out

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
        """
        now = time.time()
        with self._db:
            self._merge_rows("assets", "ip", [(str(a["ip"]), a) for a in assets],
                             _merge_asset)
            self._merge_rows("pairs", "key", [(_pair_key(p), p) for p in pairs], _merge_pair)
            if baseline is not None:
                self._save_baseline(baseline, now)

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
        with self._db:
            self._save_baseline(doc, time.time())

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


def _span(old: Mapping[str, Any], new: Mapping[str, Any], merged: dict[str, Any]) -> None:
    """first_seen is the earliest, last_seen the latest; learned once is learned."""
    for key, pick in (("first_seen", min), ("last_seen", max)):
        if isinstance(old.get(key), int | float):
            merged[key] = pick(old[key], new[key])
    merged["learned"] = bool(new.get("learned")) or bool(old.get("learned"))


def _merge_asset(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A stored asset row and the same host seen now: what both say."""
    merged = dict(new)
    merged["mac"] = new.get("mac") or old.get("mac")
    for key in ("roles", "units", "links"):
        merged[key] = _union(old.get(key), new.get(key) or [])
    identity = dict(old.get("identity") or {})
    identity.update(new.get("identity") or {})
    merged["identity"] = dict(sorted(identity.items()))
    _span(old, new, merged)
    return merged


def _merge_pair(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
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
    _span(old, new, merged)
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
