"""The audit chain: one row per message sent to each destination, each hashing the last.

``mamori audit`` once only counted sends per hour. A site that must show a regulator
what left the box, for whom and under which rules needs more: for every message
first sent to a collector, a row with the destination, the policy's name and hash,
the fields sent, withheld and pseudonymised, the frame's size and SHA-256. Each row
carries the hash of the one before it (``prev``) and its own hash over both, so a
row altered, inserted or deleted in the SQLite file breaks the chain from there on,
and ``mamori audit verify`` names the first row that no longer fits.

The chain is bounded (``[forward] audit_max_rows``): the oldest rows are pruned and
``audit_anchor`` keeps the number and ``prev`` of the first row kept, so what stays
still verifies. (Someone able to rewrite the file and every later hash can forge a
consistent chain; ``verify`` prints the head hash so it can be recorded elsewhere.)

Also here: the bounded pseudonym map behind ``mamori audit resolve`` (the sensor's
own state, never sent).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mamori.parsers.wire import Kind
from mamori.sensor.forwarding.pseudonym import Mapping

GENESIS = "0" * 64
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    n INTEGER PRIMARY KEY, ts REAL NOT NULL, collector TEXT NOT NULL, epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL, kind INTEGER NOT NULL, policy TEXT NOT NULL,
    policy_hash TEXT NOT NULL, fields TEXT NOT NULL, withheld TEXT NOT NULL,
    pseudonymised TEXT NOT NULL, bytes INTEGER NOT NULL, frame_sha256 TEXT NOT NULL,
    prev TEXT NOT NULL, hash TEXT NOT NULL, UNIQUE (collector, epoch, seq));
CREATE INDEX IF NOT EXISTS audit_log_dest ON audit_log (collector, ts);
CREATE TABLE IF NOT EXISTS audit_anchor (
    one INTEGER PRIMARY KEY CHECK (one = 1), n INTEGER NOT NULL, prev TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pseudonyms (
    pseudonym TEXT PRIMARY KEY, key_id TEXT NOT NULL, domain TEXT NOT NULL,
    value TEXT NOT NULL, last_seen REAL NOT NULL);
CREATE INDEX IF NOT EXISTS pseudonyms_seen ON pseudonyms (last_seen);
"""
_COLUMNS = ("n", "ts", "collector", "epoch", "seq", "kind", "policy", "policy_hash", "fields",
            "withheld", "pseudonymised", "bytes", "frame_sha256")


@dataclass(frozen=True, slots=True)
class Sent:
    """One message first sent to one collector: what its audit row records."""

    collector: str
    epoch: int
    seq: int
    kind: int
    frame: bytes
    fields: str
    shape: str  # the JSON the journal kept with the message (policy, hash, withheld, ...)


def shape_json(policy: str, digest: str, withheld: Sequence[str],
               pseudonymised: Sequence[str]) -> str:
    """What the journal keeps with a message for its audit row, until it is sent."""
    return json.dumps({"policy": policy, "hash": digest, "withheld": list(withheld),
                       "pseudonymised": list(pseudonymised)}, separators=(",", ":"))


def row_hash(prev: str, values: Sequence[Any]) -> str:
    """A row's hash: its predecessor's hash and its own values, canonically."""
    text = prev + "\n" + json.dumps(list(values), separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


class AuditChain:
    """Appends to the chain inside the journal's transactions (the caller holds its lock)."""

    def __init__(self, db: sqlite3.Connection, max_rows: int) -> None:
        self.max_rows = max_rows
        row = db.execute("SELECT n, hash FROM audit_log ORDER BY n DESC LIMIT 1").fetchone()
        if row is None:
            anchor = db.execute("SELECT n, prev FROM audit_anchor").fetchone()
            self.n, self.head = (int(anchor[0]) - 1, str(anchor[1])) if anchor else (0, GENESIS)
        else:
            self.n, self.head = int(row[0]), str(row[1])
        self.count = int(db.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0])

    def record(self, db: sqlite3.Connection, sent: Iterable[Sent], now: float) -> int:
        """Add a row for each message not yet audited for its collector; rows added.

        A resend (same collector, epoch, seq) adds nothing: the row is of the first
        send, the hourly table counts the resends. Call inside a transaction; on
        rollback the caller restores ``n``, ``head`` and ``count`` as they were.
        """
        added = 0
        for s in sent:
            shape = json.loads(s.shape) if s.shape else {
                "policy": "default", "hash": "", "withheld": [], "pseudonymised": []}
            values = [self.n + 1, now, s.collector, s.epoch, s.seq, s.kind, shape["policy"],
                      shape["hash"], s.fields, ",".join(shape["withheld"]),
                      ",".join(shape["pseudonymised"]), len(s.frame),
                      hashlib.sha256(s.frame).hexdigest()]
            digest = row_hash(self.head, values)
            cur = db.execute(f"INSERT OR IGNORE INTO audit_log ({', '.join(_COLUMNS)}, prev, "
                             f"hash) VALUES ({', '.join('?' * (len(_COLUMNS) + 2))})",
                             (*values, self.head, digest))
            if cur.rowcount:
                self.n, self.head = self.n + 1, digest
                self.count += 1
                added += 1
        if self.count > self.max_rows:
            self._prune(db)
        return added

    def _prune(self, db: sqlite3.Connection) -> None:
        """Drop the oldest rows (to 90 % of the cap) behind an anchor that keeps the
        first kept row verifiable."""
        keep_from = self.n - int(self.max_rows * 0.9) + 1
        row = db.execute("SELECT n, prev FROM audit_log WHERE n >= ? ORDER BY n LIMIT 1",
                         (keep_from,)).fetchone()
        if row is None:
            return
        db.execute("DELETE FROM audit_log WHERE n < ?", (row[0],))
        db.execute("INSERT INTO audit_anchor VALUES (1, ?, ?) ON CONFLICT (one) DO UPDATE "
                   "SET n = excluded.n, prev = excluded.prev", (row[0], row[1]))
        self.count = int(db.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0])


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``verify`` found: rows checked, the head, and the first row that fails."""

    rows: int
    first: int  # number of the first row checked (after any pruned ones)
    head: str
    bad_row: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.bad_row is None


def verify(db: sqlite3.Connection) -> Verdict:
    """Recompute the chain from its anchor; the first row whose hash, link or number
    does not fit is the first altered (or the one after a deleted or inserted row)."""
    anchor = db.execute("SELECT n, prev FROM audit_anchor").fetchone()
    n, prev = (int(anchor[0]), str(anchor[1])) if anchor else (1, GENESIS)
    first, checked = n, 0
    rows = db.execute(f"SELECT {', '.join(_COLUMNS)}, prev, hash FROM audit_log ORDER BY n")
    for row in rows:
        values, row_prev, digest = list(row[:-2]), row[-2], row[-1]
        if values[0] != n:
            return Verdict(checked, first, prev, int(values[0]),
                           f"row {values[0]} follows row {n - 1}: rows deleted or inserted")
        if row_prev != prev:
            return Verdict(checked, first, prev, n, "its prev hash is not the hash of the "
                           "row before it")
        if row_hash(prev, values) != digest:
            return Verdict(checked, first, prev, n, "its contents do not match its hash "
                           "(the row was modified)")
        prev, n, checked = digest, n + 1, checked + 1
    return Verdict(checked, first, prev)


def rows(db: sqlite3.Connection, destination: str | None, since: float,
         until: float) -> list[dict[str, Any]]:
    """Audit rows for one destination (all when None) sent within [since, until]."""
    where = "ts >= ? AND ts <= ?"
    args: list[Any] = [since, until]
    if destination is not None:
        where += " AND collector = ?"
        args.append(destination)
    out = []
    for row in db.execute(f"SELECT {', '.join(_COLUMNS)}, hash FROM audit_log WHERE {where} "
                          "ORDER BY n", args):
        doc = dict(zip((*_COLUMNS, "hash"), row, strict=True))
        doc["kind"] = Kind(doc["kind"]).name.lower()
        for key in ("fields", "withheld", "pseudonymised"):
            doc[key] = doc[key].split(",") if doc[key] else []
        out.append(doc)
    return out


def remember(db: sqlite3.Connection, mappings: Sequence[Mapping], now: float,
             max_rows: int) -> None:
    """Keep new pseudonym mappings for ``resolve``; beyond ``max_rows`` the least
    recently seen go (they are re-added the next time they are used)."""
    if not mappings:
        return
    db.executemany("INSERT INTO pseudonyms VALUES (?, ?, ?, ?, ?) ON CONFLICT (pseudonym) "
                   "DO UPDATE SET last_seen = excluded.last_seen",
                   [(m.pseudonym, m.key_id, m.domain, m.value, now) for m in mappings])
    (count,) = db.execute("SELECT COUNT(*) FROM pseudonyms").fetchone()
    if count > max_rows:
        db.execute("DELETE FROM pseudonyms WHERE pseudonym IN (SELECT pseudonym FROM "
                   "pseudonyms ORDER BY last_seen LIMIT ?)", (count - max_rows,))


def resolve(db: sqlite3.Connection, text: str) -> dict[str, Any] | None:
    """What a pseudonym (``pn:HEX`` or ``HEX``) stands for, or None if not kept."""
    key = text.strip().lower().removeprefix("pn:")
    row = db.execute("SELECT pseudonym, key_id, domain, value, last_seen FROM pseudonyms "
                     "WHERE pseudonym = ?", (key,)).fetchone()
    if row is None:
        return None
    return dict(zip(("pseudonym", "key_id", "domain", "value", "last_seen"), row,
                    strict=True))
