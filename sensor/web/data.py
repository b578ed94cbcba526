"""What the page reads from the store, over a read-only connection per request.

The sensor writes the store while we read it (WAL), so every request opens its own
``mode=ro`` connection: cheap (well under a millisecond), safe across the server's
threads, and a read can never change the file. Rows become :class:`Alert` through the
store's own row mapping, so the page and ``mamori alerts`` read alerts the same way.

The alert list is paginated by keyset on ``id`` (newest first, ``before=<id>``):
page N costs the same as page 1, which an ``OFFSET`` would not with 100k alerts.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.alerting.store import _COLUMNS, _alert, pcap_of
from mamori.sensor.web.audit import AUDIT_TABLE
from mamori.sensor.web.limits import MAX_ID


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """The alert list's filters; every field optional. Times are epoch seconds."""

    min_severity: Severity | None = None
    precursor: str | None = None
    since: float | None = None
    until: float | None = None
    asset: str | None = None
    state: str | None = None  # "open" | "acked" | None (all)
    hide_health: bool = False  # fold low-severity sensor-health alerts (HEALTH_SQL)

    def where(self, acks: bool) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.min_severity is not None:
            clauses.append("severity >= ?")
            params.append(int(self.min_severity))
        if self.precursor:
            clauses.append("precursor = ?")
            params.append(self.precursor)
        if self.since is not None:
            clauses.append("last_ts >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("first_ts <= ?")
            params.append(self.until)
        if self.asset:
            clauses.append("(src = ? OR dst = ?)")
            params += [self.asset, self.asset]
        if self.state == "open":
            clauses.append(OPEN_SQL if acks else "1")
        elif self.state == "acked":
            clauses.append(f"NOT {OPEN_SQL}" if acks else "0")
        if self.hide_health:
            clauses.append(f"NOT {HEALTH_SQL}")
        return clauses, params


# The sensor's own low-severity health alerts (S2 capture gaps, S7 a full table): the
# precursors of blind spots, not of an attack; the alert list folds them by default.
# A medium or higher health alert (S3 silence, S4 lost alerts) is never folded.
HEALTH_FOLD_MAX = Severity.LOW
# A range on precursor rather than substr(): the store's (precursor, severity) index.
HEALTH_SQL = f"(precursor >= 'S' AND precursor < 'T' AND severity <= {int(HEALTH_FOLD_MAX)})"


# An alert is open until acknowledged at (or beyond) its current count: an aggregate
# that fires again after the acknowledgement is open again.
OPEN_SQL = (f"NOT EXISTS (SELECT 1 FROM {AUDIT_TABLE} a WHERE a.action = 'ack'"
            " AND a.alert_id = alerts.id AND a.alert_count >= alerts.count)")


PRECURSOR_CACHE = 30.0
HOUR = 3600
COUNT_CACHE = 64  # counts remembered (filters x windows), the oldest dropped first


def _sql_int(value: int) -> int:
    """``value`` within SQLite's 64-bit INTEGER, where a bound means the same.

    A larger Python int raises OverflowError in sqlite3. The page refuses such
    parameters itself (400/404); this keeps every other caller safe too. An id is never
    ``MAX_ID`` in practice (AUTOINCREMENT fails there), so ``id < MAX_ID`` loses nothing.
    """
    return max(-MAX_ID - 1, min(MAX_ID, value))


@dataclass(frozen=True, slots=True)
class AlertRow:
    alert: Alert
    open: bool


class StoreReader:
    """Read-only queries for the views. Opens the file per call (see module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._uri = f"{path.resolve().as_uri()}?mode=ro"
        self._precursors: tuple[float, list[str]] | None = None
        self._counted: dict[tuple[Any, ...], Any] = {}  # see _stamp

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self._uri, uri=True, timeout=10.0)
        try:
            yield db
        finally:
            db.close()

    @staticmethod
    def _has_acks(db: sqlite3.Connection) -> bool:
        row = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                         (AUDIT_TABLE,)).fetchone()
        return row is not None

    def _open_expr(self, acks: bool) -> str:
        return OPEN_SQL if acks else "1"

    # -- alerts -----------------------------------------------------------------------

    def alert_page(self, filt: AlertFilter, before: int | None, limit: int
                   ) -> tuple[list[AlertRow], int | None]:
        """Newest first, ids below ``before``; also the id to continue from (or None)."""
        with self._db() as db:
            acks = self._has_acks(db)
            clauses, params = filt.where(acks)
            if before is not None:
                clauses.append("id < ?")
                params.append(_sql_int(before))
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            rows = db.execute(
                f"SELECT {', '.join(_COLUMNS)}, {self._open_expr(acks)} FROM alerts {where}"
                f" ORDER BY id DESC LIMIT ?", [*params, limit + 1]).fetchall()
        page = [AlertRow(_alert(r[:-1]), bool(r[-1])) for r in rows[:limit]]
        more = page[-1].alert.id if len(rows) > limit and page else None
        return page, more

    def alerts_after(self, filt: AlertFilter, after: int, limit: int = 200) -> list[AlertRow]:
        """Alerts newer than ``after`` matching the filter, oldest first (live updates)."""
        with self._db() as db:
            acks = self._has_acks(db)
            clauses, params = filt.where(acks)
            clauses.append("id > ?")
            params.append(_sql_int(after))
            rows = db.execute(
                f"SELECT {', '.join(_COLUMNS)}, {self._open_expr(acks)} FROM alerts"
                f" WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?",
                [*params, limit]).fetchall()
        return [AlertRow(_alert(r[:-1]), bool(r[-1])) for r in rows]

    def alert(self, alert_id: int) -> AlertRow | None:
        if alert_id != _sql_int(alert_id):
            return None  # no such row can exist
        with self._db() as db:
            acks = self._has_acks(db)
            row = db.execute(
                f"SELECT {', '.join(_COLUMNS)}, {self._open_expr(acks)} FROM alerts"
                " WHERE id = ?", (alert_id,)).fetchone()
        return None if row is None else AlertRow(_alert(row[:-1]), bool(row[-1]))

    def pcap(self, alert_id: int) -> str | None:
        """Where the alert's pcap was written (issue 20), or None."""
        if alert_id != _sql_int(alert_id):
            return None
        with self._db() as db:
            return pcap_of(db, alert_id)

    def max_id(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM alerts").fetchone()[0])

    def precursors(self) -> list[str]:
        """Precursor ids present in the store, for the filter's choices.

        A full scan (no index on precursor), so it is cached for PRECURSOR_CACHE s.
        """
        now = time.monotonic()
        if self._precursors is not None and now - self._precursors[0] < PRECURSOR_CACHE:
            return self._precursors[1]
        with self._db() as db:
            found = [r[0] for r in db.execute("SELECT DISTINCT precursor FROM alerts")]
        ordered = sorted(found, key=lambda p: (p[:1], int(p[1:]) if p[1:].isdigit() else 0,
                                               p))
        self._precursors = (now, ordered)
        return ordered

    def counts(self) -> dict[str, int]:
        """All alerts and open ones: the header badge and the health page."""
        with self._db() as db:
            acks = self._has_acks(db)
            total = int(db.execute("SELECT count(*) FROM alerts").fetchone()[0])
            acked = 0 if not acks else int(db.execute(  # O(acks), not O(alerts)
                f"SELECT count(DISTINCT a.alert_id) FROM {AUDIT_TABLE} a JOIN alerts"
                " ON alerts.id = a.alert_id WHERE a.action = 'ack'"
                " AND a.alert_count >= alerts.count").fetchone()[0])
        return {"alerts": total, "open": total - acked}

    # -- the fold and the timeline: counts over many rows, remembered ------------------

    @staticmethod
    def _stamp(db: sqlite3.Connection) -> tuple[Any, Any]:
        """What says the set of stored alerts changed: the newest id and the row count.

        A count over many rows is remembered under it: the first_ts, severity,
        precursor and peers of a stored alert never change, only inserts and deletes
        (retention) change such a count. A state filter's counts move with acks and
        with an aggregate's count, so those are never remembered. Two statements:
        together they are one full table scan; apart, an O(1) lookup and a count over
        the smallest index.
        """
        return (db.execute("SELECT MAX(id) FROM alerts").fetchone()[0],
                db.execute("SELECT count(*) FROM alerts").fetchone()[0])

    def _remember(self, key: tuple[Any, ...], value: Any) -> None:
        while len(self._counted) >= COUNT_CACHE:
            del self._counted[next(iter(self._counted))]
        self._counted[key] = value

    @staticmethod
    def _first_ts_index(db: sqlite3.Connection) -> str:
        """``INDEXED BY`` the (first_ts, severity, precursor) index, if the store has it
        (one the sensor has not opened since it came lacks it: the planner decides).
        Named, because the planner prefers no index over it for some filters."""
        found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index'"
                           " AND name = 'alerts_first_ts'").fetchone()
        return "INDEXED BY alerts_first_ts" if found else ""

    def health_hidden(self, filt: AlertFilter) -> int:
        """How many alerts ``filt`` would show but folds as low-severity health alerts."""
        if not filt.hide_health:
            return 0
        with self._db() as db:
            key = ("hidden", filt, *self._stamp(db))
            if filt.state is None and key in self._counted:
                return int(self._counted[key])
            clauses, params = replace(filt, hide_health=False).where(self._has_acks(db))
            clauses.append(HEALTH_SQL)
            hidden = int(db.execute(
                f"SELECT count(*) FROM alerts {self._first_ts_index(db)}"
                f" WHERE {' AND '.join(clauses)}", params).fetchone()[0])
        if filt.state is None:
            self._remember(key, hidden)
        return hidden

    def newest_first_ts(self, filt: AlertFilter) -> float | None:
        """The latest first-seen time of the alerts ``filt`` matches (None: none)."""
        with self._db() as db:
            clauses, params = filt.where(self._has_acks(db))
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            # newest first down the first_ts index, to the first match
            row = db.execute(f"SELECT first_ts FROM alerts {where} ORDER BY first_ts DESC"
                             " LIMIT 1", params).fetchone()
        return None if row is None else float(row[0])

    def hourly(self, filt: AlertFilter, start: int, hours: int
               ) -> list[tuple[int, int, int]]:
        """(hour = first_ts // 3600, severity, alerts) of ``filt``'s alerts first seen
        in the ``hours`` whole hours from ``start``: the timeline's bars.

        One query per hour: each is a range of the store's (first_ts, severity,
        precursor) index, where one GROUP BY over the hour expression would sort every
        row of the window in a temporary B-tree (two to four times slower at 100k).
        """
        out: list[tuple[int, int, int]] = []
        with self._db() as db:
            key = ("hourly", filt, start, hours, *self._stamp(db))
            if filt.state is None and key in self._counted:
                return list(self._counted[key])
            clauses, params = filt.where(self._has_acks(db))
            clauses += ["first_ts >= ?", "first_ts < ?"]
            sql = (f"SELECT severity, count(*) FROM alerts {self._first_ts_index(db)}"
                   f" WHERE {' AND '.join(clauses)} GROUP BY severity")
            for i in range(hours):
                at = start + i * HOUR
                out += [(at // HOUR, int(sev), int(n))
                        for sev, n in db.execute(sql, [*params, at, at + HOUR])]
        if filt.state is None:
            self._remember(key, tuple(out))
        return out

    def open_peers(self, filt: AlertFilter | None = None
                   ) -> list[tuple[str | None, str | None, str, int]]:
        """(src, dst, proto, highest severity) of open alerts: what the map highlights.

        ``filt`` narrows the alerts that count (the map's severity and time window).
        """
        with self._db() as db:
            acks = self._has_acks(db)
            clauses, params = (filt or AlertFilter()).where(acks)
            clauses.append(self._open_expr(acks))
            rows = db.execute(
                f"SELECT src, dst, proto, MAX(severity) FROM alerts"
                f" WHERE {' AND '.join(clauses)} GROUP BY src, dst, proto", params).fetchall()
        return [(r[0], r[1], str(r[2]), int(r[3])) for r in rows]

    def baseline_frozen_at(self) -> float | None:
        """When the stored baseline was frozen, or None if it is not.

        The map marks what was first seen after it. Both are the sensor's clock: packet
        time when the learning period ran out, the wall clock of ``mamori baseline
        freeze`` (the same thing for a live sensor; not for a replay of an old
        capture). A baseline still learning, or a document this cannot read,
        compares with nothing.
        """
        with self._db() as db:
            row = db.execute("SELECT doc FROM baseline WHERE id = 1").fetchone()
        try:
            doc = json.loads(row[0]) if row is not None else None
        except ValueError:
            return None
        if not isinstance(doc, dict) or doc.get("state") != "enforcing":
            return None
        frozen = doc.get("frozen_at")
        return float(frozen) if isinstance(frozen, int | float) else None

    def acks(self, alert_id: int) -> list[dict[str, Any]]:
        if alert_id != _sql_int(alert_id):
            return []
        with self._db() as db:
            if not self._has_acks(db):
                return []
            rows = db.execute(
                f"SELECT ts, operator, alert_count, remote FROM {AUDIT_TABLE}"
                " WHERE action = 'ack' AND alert_id = ? ORDER BY id", (alert_id,)).fetchall()
        return [{"ts": r[0], "operator": r[1], "count": r[2], "remote": r[3]} for r in rows]

    # -- inventory --------------------------------------------------------------------

    def assets(self) -> list[dict[str, Any]]:
        with self._db() as db:
            return [json.loads(r[0]) for r in db.execute("SELECT doc FROM assets ORDER BY ip")]

    def pairs(self) -> list[dict[str, Any]]:
        with self._db() as db:
            return [json.loads(r[0]) for r in db.execute("SELECT doc FROM pairs ORDER BY key")]

    def asset(self, ip: str) -> dict[str, Any] | None:
        """One asset's stored document (the primary key: one indexed lookup)."""
        with self._db() as db:
            row = db.execute("SELECT doc FROM assets WHERE ip = ?", (ip,)).fetchone()
        if row is None:
            return None
        doc = json.loads(row[0])
        return doc if isinstance(doc, dict) else None

    def asset_pairs(self, ip: str) -> list[dict[str, Any]]:
        """The pairs ``ip`` is the master or the outstation of."""
        with self._db() as db:
            rows = db.execute(
                "SELECT doc FROM pairs WHERE json_extract(doc, '$.client') = ?"
                " OR json_extract(doc, '$.server') = ? ORDER BY key", (ip, ip)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def baseline(self) -> dict[str, Any] | None:
        """The learned baseline document the sensor saved (None: none yet)."""
        with self._db() as db:
            row = db.execute("SELECT doc FROM baseline WHERE id = 1").fetchone()
        if row is None:
            return None
        try:
            doc = json.loads(row[0])
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def summary(self) -> dict[str, Any]:
        """What the store alone says about the sensor (health when not under mamori run)."""
        with self._db() as db:
            last = db.execute("SELECT MAX(last_ts), MAX(updated) FROM alerts").fetchone()
            assets = int(db.execute("SELECT count(*) FROM assets").fetchone()[0])
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            size = db.execute("PRAGMA page_size").fetchone()[0]
        return {"last_alert_ts": last[0], "last_write": last[1], "assets": assets,
                "store_bytes": int(pages) * int(size)}
