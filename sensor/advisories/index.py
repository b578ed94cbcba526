"""The local advisory index: imported CSAF documents in their own SQLite file.

Its own file, not a table of the alert store, because it is reference data with
another life cycle: it is filled from a USB stick on an air-gapped site, may be
copied between boxes, and can be deleted and re-imported at any time without
touching alerts or the baseline. One transaction per document: an advisory is
either wholly in the index at one revision, or not at all.

It stores what the documents say, not normalised keys: the normalisation tables
can change without a re-import, because matching normalises when it loads.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mamori.sensor.advisories.csaf import Advisory

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS advisories (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, publisher TEXT NOT NULL,
    version TEXT NOT NULL, revision_key TEXT NOT NULL, release_date TEXT NOT NULL,
    source TEXT NOT NULL, sha256 TEXT NOT NULL, imported REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS products (
    advisory_id TEXT NOT NULL REFERENCES advisories (id) ON DELETE CASCADE,
    product_id TEXT NOT NULL, vendor TEXT NOT NULL, family TEXT NOT NULL,
    name TEXT NOT NULL, full_name TEXT NOT NULL, version TEXT NOT NULL,
    version_kind TEXT NOT NULL,
    PRIMARY KEY (advisory_id, product_id)
);
CREATE TABLE IF NOT EXISTS vulnerabilities (
    advisory_id TEXT NOT NULL REFERENCES advisories (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, cve TEXT, title TEXT NOT NULL, cvss REAL, vector TEXT,
    affected TEXT NOT NULL,
    PRIMARY KEY (advisory_id, idx)
);
CREATE TABLE IF NOT EXISTS remediations (
    advisory_id TEXT NOT NULL REFERENCES advisories (id) ON DELETE CASCADE,
    vuln_idx INTEGER NOT NULL, category TEXT NOT NULL, details TEXT NOT NULL,
    product_ids TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS remediations_advisory ON remediations (advisory_id);
CREATE TABLE IF NOT EXISTS alerted (
    ip TEXT NOT NULL, advisory_id TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (ip, advisory_id)
);
"""


class AdvisoryIndexError(Exception):
    """The index file cannot be opened or is not an advisory index (names the path)."""


@dataclass(frozen=True, slots=True)
class IndexedProduct:
    """One affected product of one advisory, with what matching and display need."""

    advisory_id: str
    product_id: str
    vendor: str
    name: str
    full_name: str
    version: str
    version_kind: str
    cves: tuple[str, ...]
    cvss: float | None


@dataclass(frozen=True, slots=True)
class AdvisorySummary:
    id: str
    title: str
    version: str
    release_date: str
    cves: tuple[str, ...]
    cvss: float | None
    products: int


class AdvisoryIndex:
    """One connection to the index file. Not shared between threads."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:
                if not self.path.exists():
                    raise AdvisoryIndexError(f"{self.path}: no advisory index (run "
                                      "'mamori advisories import' first)")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=10)
                self._db.execute("PRAGMA journal_mode = WAL")
                # Reference data, re-importable from its source: a power cut may lose the
                # last documents, never corrupt the index (WAL), and an import of the
                # whole CISA set is 2,379 transactions, not 2,379 fsyncs.
                self._db.execute("PRAGMA synchronous = NORMAL")
                with self._db:
                    self._db.executescript(_SCHEMA)
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                                     (str(SCHEMA_VERSION),))
            self._db.execute("PRAGMA foreign_keys = ON")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as err:
            raise AdvisoryIndexError(f"{self.path}: not a usable advisory index: {err}") from None
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise AdvisoryIndexError(f"{self.path}: index schema {row} is not {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AdvisoryIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def revision(self, advisory_id: str) -> tuple[tuple[int, ...], str] | None:
        row = self._db.execute("SELECT revision_key FROM advisories WHERE id = ?",
                               (advisory_id,)).fetchone()
        if row is None:
            return None
        key, date = json.loads(row[0])
        return tuple(key), str(date)

    def put(self, adv: Advisory) -> str:
        """Add or replace; returns "added", "replaced", or "kept" (same or older revision)."""
        known = self.revision(adv.id)
        if known is not None and known >= adv.revision_key:
            return "kept"
        with self._db:
            self._db.execute("DELETE FROM advisories WHERE id = ?", (adv.id,))
            self._db.execute(
                "INSERT INTO advisories VALUES (?,?,?,?,?,?,?,?,?)",
                (adv.id, adv.title, adv.publisher, adv.version,
                 json.dumps([list(adv.revision_key[0]), adv.revision_key[1]]),
                 adv.release_date, adv.source, adv.sha256, time.time()))
            self._db.executemany(
                "INSERT INTO products VALUES (?,?,?,?,?,?,?,?)",
                [(adv.id, p.product_id, p.vendor, p.family, p.name, p.full_name, p.version,
                  p.version_kind) for p in adv.products])
            self._db.executemany(
                "INSERT INTO vulnerabilities VALUES (?,?,?,?,?,?,?)",
                [(adv.id, i, v.cve, v.title, v.cvss, v.vector, json.dumps(v.affected))
                 for i, v in enumerate(adv.vulnerabilities)])
            self._db.executemany(
                "INSERT INTO remediations VALUES (?,?,?,?,?)",
                [(adv.id, i, r.category, r.details, json.dumps(r.product_ids))
                 for i, v in enumerate(adv.vulnerabilities) for r in v.remediations])
        return "added" if known is None else "replaced"

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM advisories").fetchone()[0])

    def affected_products(self) -> Iterator[IndexedProduct]:
        """Every product some vulnerability lists as affected, with its CVEs and top CVSS."""
        per: dict[tuple[str, str], tuple[set[str], float | None]] = {}
        for adv_id, cve, cvss, affected in self._db.execute(
                "SELECT advisory_id, cve, cvss, affected FROM vulnerabilities"):
            for pid in json.loads(affected):
                cves, best = per.get((adv_id, pid), (set(), None))
                if cve:
                    cves.add(cve)
                if cvss is not None and (best is None or cvss > best):
                    best = cvss
                per[(adv_id, pid)] = (cves, best)
        for adv_id, pid, vendor, name, full_name, version, kind in self._db.execute(
                "SELECT advisory_id, product_id, vendor, name, full_name, version, version_kind"
                " FROM products ORDER BY advisory_id, product_id"):
            hit = per.get((adv_id, pid))
            if hit is None:
                continue
            yield IndexedProduct(adv_id, pid, vendor, name, full_name, version, kind,
                                 tuple(sorted(hit[0])), hit[1])

    def summaries(self, ids: list[str] | None = None) -> list[AdvisorySummary]:
        sql = ("SELECT a.id, a.title, a.version, a.release_date,"
               " (SELECT count(*) FROM products p WHERE p.advisory_id = a.id)"
               " FROM advisories a")
        params: list[str] = []
        if ids is not None:
            sql += f" WHERE a.id IN ({','.join('?' * len(ids))})"
            params = ids
        out = []
        for adv_id, title, version, date, nproducts in self._db.execute(
                sql + " ORDER BY a.release_date, a.id", params):
            cves: list[str] = []
            best: float | None = None
            for cve, cvss in self._db.execute(
                    "SELECT cve, cvss FROM vulnerabilities WHERE advisory_id = ? ORDER BY idx",
                    (adv_id,)):
                if cve and cve not in cves:
                    cves.append(cve)
                if cvss is not None and (best is None or cvss > best):
                    best = cvss
            out.append(AdvisorySummary(adv_id, title, version, date, tuple(cves), best,
                                       int(nproducts)))
        return out

    def remediations(self, advisory_id: str, product_ids: list[str]) -> list[tuple[str, str]]:
        """(category, details) for these products, or for the whole advisory if none name them."""
        out: list[tuple[str, str]] = []
        for category, details, pids in self._db.execute(
                "SELECT category, details, product_ids FROM remediations WHERE advisory_id = ?"
                " ORDER BY vuln_idx", (advisory_id,)):
            named = json.loads(pids)
            if (not named or set(named) & set(product_ids)) and (category, details) not in out:
                out.append((category, details))
        return out

    # -- which (asset, advisory) pairs were already alerted --------------------------

    def alerted(self) -> set[tuple[str, str]]:
        return {(ip, adv) for ip, adv in self._db.execute("SELECT ip, advisory_id FROM alerted")}

    def claim(self, pairs: list[tuple[str, str]], ts: float) -> list[tuple[str, str]]:
        """Record (asset, advisory) pairs as alerted; returns those not recorded before.

        One transaction, and the insert itself decides: the daemon (a new asset) and
        ``mamori advisories import`` (a new advisory) may evaluate the same pair at
        the same moment, and only the one whose insert lands raises the alert.
        At most once, then: a pair claimed by a process that dies before it
        publishes is not alerted again.
        """
        won: list[tuple[str, str]] = []
        with self._db:
            for ip, adv in dict.fromkeys(pairs):
                cur = self._db.execute("INSERT OR IGNORE INTO alerted VALUES (?,?,?)",
                                       (ip, adv, ts))
                if cur.rowcount == 1:
                    won.append((ip, adv))
        return won

    def generation(self) -> tuple[int, float]:
        """Changes whenever an import adds or replaces a document (cheap to poll)."""
        count, last = self._db.execute(
            "SELECT count(*), coalesce(max(imported), 0) FROM advisories").fetchone()
        return int(count), float(last)
