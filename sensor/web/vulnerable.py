"""The asset view's "vulnerable devices": inventory identities against the CSAF index.

The same matching as ``mamori assets --vulnerable`` (mamori.sensor.advisories): the index
beside the store (``advisories.db``, written by ``mamori advisories import``), the
device identity the inventory learned from the wire, and only matches that name the
product (exact: version in an affected range; product: version unknown or
unreadable). Vendor-only matches are not shown: they say nothing about the device.

Preparing the matcher reads every affected product of the index (about a second for
the full set of 2,379 advisories), so it is kept and rebuilt only when the index file
changes; a page view then costs a few milliseconds per asset with identity.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamori.sensor.advisories.index import AdvisoryIndex, AdvisoryIndexError
from mamori.sensor.advisories.matcher import Confidence, Match, Matcher, frame_of
from mamori.sensor.advisories.normalise import TablesError, default_tables


@dataclass(frozen=True, slots=True)
class VulnerableDevice:
    """One (asset, advisory) row of the page."""

    ip: str
    advisory: str
    confidence: str  # "exact" (version in range) or "product" (version not known)
    affected: bool
    products: tuple[str, ...]
    cves: tuple[str, ...]
    cvss: float | None
    remediations: tuple[tuple[str, str], ...]  # (category, details)
    # (identity key, value, message, first frame, first seen, last frame, last seen)
    evidence: tuple[tuple[Any, ...], ...] = ()


def evidence_rows(m: Match) -> tuple[tuple[Any, ...], ...]:
    """The identity strings a match rests on, each with the frames that carried it."""
    frames = m.evidence.get("frames") or {}
    rows = []
    for key, value in (m.evidence.get("identity") or {}).items():
        f = frames.get(key) or {}
        rows.append((key, value, f.get("message") or frame_of(key), f.get("first_frame"),
                     f.get("first_seen"), f.get("last_frame"), f.get("last_seen")))
    return tuple(rows)


class VulnerableView:
    """Matches for the page, from the advisory index at ``index_path`` (may not exist)."""

    def __init__(self, index_path: Path) -> None:
        self.index_path = index_path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._matcher: Matcher | None = None
        self.problem: str | None = None  # why the index could not be read, for the page

    def _current(self) -> Matcher | None:
        try:
            st = self.index_path.stat()
        except FileNotFoundError:
            self._stamp, self._matcher, self.problem = None, None, None
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                with AdvisoryIndex(self.index_path, readonly=True) as index:
                    self._matcher = Matcher(index.affected_products(), default_tables())
                self.problem = None
            except (AdvisoryIndexError, TablesError, OSError) as err:
                self._matcher, self.problem = None, f"advisory index: {err}"
            self._stamp = stamp
        return self._matcher

    def devices(self, assets: list[dict[str, Any]]) -> list[VulnerableDevice]:
        """Affected and possibly affected devices, affected first, then by CVSS."""
        with self._lock:
            matcher = self._current()
        if matcher is None:
            return []
        matches = [m for asset in assets if asset.get("identity")
                   for m in matcher.match_asset(asset) if m.confidence is not Confidence.VENDOR]
        if not matches:
            return []
        out = []
        try:
            with AdvisoryIndex(self.index_path, readonly=True) as index:
                for m in matches:
                    fixes = index.remediations(m.advisory_id, list(m.product_ids))
                    out.append(VulnerableDevice(
                        m.ip, m.advisory_id, m.confidence.value, m.confidence.affected,
                        m.products, m.cves, m.cvss, tuple(fixes), evidence_rows(m)))
        except AdvisoryIndexError as err:
            self.problem = f"advisory index: {err}"
            return []
        return sorted(out, key=lambda d: (not d.affected, -(d.cvss or 0.0), d.ip, d.advisory))
