"""The operator audit table: who acknowledged which alert, when, from where.

It lives in the store file, not in the forwarding journal, because:

* the store exists on every sensor, the journal only when forwarding is configured;
* an acknowledgement is about a store alert (``alert_id`` is the store's row id; ids
  are AUTOINCREMENT, never reused after retention deletes a row), so the two are
  backed up, copied and inspected together (``sqlite3 mamori.db``);
* the journal's rows are wire frames under a byte budget that evicts; an audit
  record must not be evicted to make room for outbound messages.

This is the page's only write. It uses its own short connection that touches only
this table, so the rest of the page keeps its read-only connections. The row keeps
the alert's count at acknowledgement: an aggregate that fires again is open again.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

AUDIT_TABLE = "operator_audit"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL, operator TEXT NOT NULL, action TEXT NOT NULL,
    alert_id INTEGER, alert_count INTEGER, remote TEXT
);
CREATE INDEX IF NOT EXISTS {AUDIT_TABLE}_alert ON {AUDIT_TABLE} (alert_id);
"""


class AuditError(Exception):
    """The audit table cannot be written (read-only store file, missing alert)."""


class OperatorAudit:
    """Writes acknowledgements. ``ensure()`` at start-up; ``ack()`` per request."""

    def __init__(self, store: Path) -> None:
        self.store = store

    def _connect(self) -> sqlite3.Connection:
        if not self.store.exists():
            raise AuditError(f"{self.store}: no store")
        return sqlite3.connect(self.store, timeout=10.0)

    def ensure(self) -> None:
        """Create the table if needed; AuditError when the store is not writable."""
        try:
            db = self._connect()
            try:
                with db:
                    db.executescript(_SCHEMA)
            finally:
                db.close()
        except sqlite3.Error as err:
            raise AuditError(f"{self.store}: cannot write the audit table: {err}") from None

    def ack(self, alert_id: int, operator: str, remote: str | None,
            now: float | None = None) -> int:
        """Record an acknowledgement of the alert at its current count; returns that count."""
        if not -(2**63) <= alert_id < 2**63:  # sqlite3 would raise OverflowError
            raise AuditError(f"no alert {alert_id}")
        try:
            db = self._connect()
            try:
                with db:
                    db.executescript(_SCHEMA)
                    row = db.execute("SELECT count FROM alerts WHERE id = ?",
                                     (alert_id,)).fetchone()
                    if row is None:
                        raise AuditError(f"no alert {alert_id}")
                    db.execute(
                        f"INSERT INTO {AUDIT_TABLE} (ts, operator, action, alert_id,"
                        " alert_count, remote) VALUES (?, ?, 'ack', ?, ?, ?)",
                        (time.time() if now is None else now, operator, alert_id,
                         int(row[0]), remote))
                    return int(row[0])
            finally:
                db.close()
        except sqlite3.Error as err:
            raise AuditError(f"{self.store}: cannot record the acknowledgement: {err}"
                             ) from None
