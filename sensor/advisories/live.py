"""The low alerts of issue 18: one per (asset, advisory), from the daemon or from an import.

Two ways a device becomes known as affected: the sensor sees a new device (or a
changed identity) that matches an imported advisory, or an operator imports an
advisory that matches a device already seen. The first happens in the daemon,
the second in ``mamori advisories import``; both end here, and both record the
pair in the index's ``alerted`` table with :meth:`AdvisoryIndex.claim`, so each
(asset, advisory) alerts once whichever process sees it first.

:class:`AdvisoryWatch` is the daemon's side. It holds no connection between
calls (the index belongs to whoever imports into it), reloads the prepared
matcher only when an import changed the index, and re-matches only assets whose
identity changed: a check on an unchanged inventory costs one small query.
Nothing in it may stop detection: a missing, locked or broken index is logged
and the check returns no alerts.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.advisories.index import AdvisoryIndex, AdvisoryIndexError
from mamori.sensor.advisories.matcher import Confidence, Match, Matcher
from mamori.sensor.advisories.normalise import Tables, TablesError, default_tables

RULE = "mamori.advisory.affected_device"
PRECURSOR = "A1"  # a new catalogue family: advisories (the device, not the traffic)

log = logging.getLogger("mamori.advisories")


def index_beside(store_path: Path) -> Path:
    """Where the advisory index lives by default: ``advisories.db`` beside the store."""
    return store_path.with_name("advisories.db")


def alerts_for(matches: Sequence[Match], already: set[tuple[str, str]], now: float
               ) -> list[Alert]:
    """One low alert per new (asset, advisory) that is affected or possibly affected.

    A vendor-only match never alerts: a vendor has hundreds of products and the
    match says nothing about this one. A product-only match (the device did not
    say its revision, or the advisory's range is prose) alerts as "possibly
    affected", so an operator looks; the confidence is in the evidence.
    """
    out: list[Alert] = []
    seen = set(already)
    for m in matches:
        if m.confidence is Confidence.VENDOR or (m.ip, m.advisory_id) in seen:
            continue
        seen.add((m.ip, m.advisory_id))
        what = "affected" if m.confidence.affected else "possibly affected"
        cves = ", ".join(m.cves[:3]) + (" ..." if len(m.cves) > 3 else "")
        out.append(Alert(
            rule=RULE, precursor=PRECURSOR, severity=Severity.LOW, attack=(),
            title=f"device {what} by {m.advisory_id}" + (f" ({cves})" if cves else ""),
            proto="asset", first_ts=now, last_ts=now, dst=m.ip,
            evidence={"advisory": m.advisory_id, "cves": list(m.cves), "cvss": m.cvss,
                      "confidence": m.confidence.value, "products": list(m.products),
                      "ranges": list(m.ranges), "scope": m.evidence.get("scope"),
                      "version": m.evidence.get("version"),
                      "identity": m.evidence.get("identity", {}),
                      "seen_in": m.evidence.get("seen_in", {}),
                      "frames": m.evidence.get("frames", {})}))
    return out


def claim_alerts(index: AdvisoryIndex, matches: Sequence[Match], now: float) -> list[Alert]:
    """The alerts of ``matches`` that no process raised before, claimed in the index."""
    candidates = alerts_for(matches, index.alerted(), now)
    won = set(index.claim([(a.dst or "", str(a.evidence["advisory"])) for a in candidates],
                          now))
    return [a for a in candidates if (a.dst or "", str(a.evidence["advisory"])) in won]


class AdvisoryWatch:
    """Matches the daemon's inventory against the index; returns the alerts to publish.

    The daemon calls :meth:`check` with its assets (the dicts it stores) whenever
    it persists the inventory, and publishes what comes back like any alert.
    """

    def __init__(self, index_path: Path, tables: Tables | None = None) -> None:
        self.index_path = index_path
        self._tables = tables
        self._matcher: Matcher | None = None
        self._generation: tuple[int, float] | None = None
        self._identities: dict[str, str] = {}  # ip -> identity as JSON, when last matched
        self._warned = ""

    @classmethod
    def beside(cls, store_path: Path) -> AdvisoryWatch:
        return cls(index_beside(store_path))

    def check(self, assets: Iterable[Mapping[str, Any]], now: float | None = None
              ) -> list[Alert]:
        """Alerts for assets that newly match; never raises (logs once per kind of failure)."""
        if not self.index_path.exists():
            return []
        now = time.time() if now is None else now
        try:
            return self._check(list(assets), now)
        except (AdvisoryIndexError, TablesError, sqlite3.Error, OSError) as err:
            text = f"{type(err).__name__}: {err}"
            if text != self._warned:
                log.warning("advisory matching skipped: %s", text)
                self._warned = text
            return []

    def _check(self, assets: list[Mapping[str, Any]], now: float) -> list[Alert]:
        with AdvisoryIndex(self.index_path) as index:
            generation = index.generation()
            if self._matcher is None or generation != self._generation:
                tables = self._tables if self._tables is not None else default_tables()
                self._matcher = Matcher(index.affected_products(), tables)
                self._generation = generation
                self._identities.clear()  # a new index: every asset is matched again
            matches: list[Match] = []
            present: set[str] = set()
            for asset in assets:
                ip = str(asset.get("ip", ""))
                present.add(ip)
                identity = json.dumps(asset.get("identity") or {}, sort_keys=True)
                if self._identities.get(ip) == identity:
                    continue
                self._identities[ip] = identity
                matches.extend(self._matcher.match_asset(asset))
            if len(self._identities) > len(present):  # only assets the inventory holds
                self._identities = {ip: i for ip, i in self._identities.items()
                                    if ip in present}
            if not matches:
                return []
            alerts = claim_alerts(index, matches, now)
        self._warned = ""
        return alerts
