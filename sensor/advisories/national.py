"""Issue 18 at the national tier: which sites run affected devices, per advisory.

Sensors forward the identity their inventory learned (wire kind 3, "asset"),
one record per device when its identity changes: :class:`IdentityFeed` decides
which, on the sensor. The collector keeps every record (``messages``); the
latest per (sensor, device) is what that site runs. :func:`national_view`
matches those identities against the collector's own advisory index, so
importing an advisory at the collector re-evaluates what every sensor already
reported, without a word to the sensors.

Only identity leaves the box in an asset record (vendor, product, revision
strings and first/last seen), never process values, so it carries no more than
an alert's evidence on identity already does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamori.parsers.wire import MAX_MAP, MAX_MESSAGE_BYTES, MAX_STR
from mamori.sensor.advisories.index import AdvisoryIndex
from mamori.sensor.advisories.matcher import Confidence, Matcher
from mamori.sensor.advisories.normalise import Tables, default_tables

IDENTITY_ENTRIES = MAX_MAP  # the wire's map limit; an asset's identity rarely has 20
IDENTITY_BYTES = MAX_MESSAGE_BYTES - 1024  # the envelope, ip and timestamps fit in 1 kB


def asset_body(asset: Mapping[str, Any]) -> dict[str, Any] | None:
    """The asset record forwarded for one inventory asset, or None if it has no identity.

    Bounded to what the wire accepts: at most ``MAX_MAP`` identity strings (sorted,
    so the same ones every time) of at most ``MAX_STR`` bytes, and no more
    bytes than fit one message with room for the envelope.
    """
    identity = asset.get("identity") or {}
    kept: dict[str, str] = {}
    budget = IDENTITY_BYTES
    for k, v in sorted(identity.items()):
        key, value = _cut(str(k)), _cut(str(v))
        cost = len(key.encode()) + len(value.encode()) + 10  # msgpack headers
        if not value.strip() or cost > budget:
            continue
        kept[key] = value
        budget -= cost
        if len(kept) == IDENTITY_ENTRIES:
            break
    if not kept:
        return None
    body: dict[str, Any] = {"ip": str(asset.get("ip", ""))[:64], "identity": kept}
    for key in ("first_seen", "last_seen"):
        if isinstance(asset.get(key), int | float):
            body[key] = float(asset[key])
    return body


def _cut(text: str) -> str:
    """At most ``MAX_STR`` bytes of UTF-8 (the wire's string limit), whole characters."""
    return text.encode()[:MAX_STR].decode(errors="ignore")


class IdentityFeed:
    """On the sensor: the asset records to forward, one per device whose identity changed.

    Remembers what it sent in this process, for the assets the inventory still
    holds (it is capped; a forgotten device seen again is sent again); a restarted
    daemon sends every identity once more, which the collector takes as the
    latest, unchanged.
    """

    def __init__(self) -> None:
        self._sent: dict[str, str] = {}

    def changed(self, assets: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        out = []
        present: set[str] = set()
        for asset in assets:
            present.add(str(asset.get("ip", ""))[:64])  # as asset_body names it
            body = asset_body(asset)
            if body is None:
                continue
            text = json.dumps(body["identity"], sort_keys=True)
            if self._sent.get(body["ip"]) != text:
                self._sent[body["ip"]] = text
                out.append(body)
        if len(self._sent) > len(present):  # devices the inventory forgot: not kept here
            self._sent = {ip: t for ip, t in self._sent.items() if ip in present}
        return out


@dataclass(frozen=True, slots=True)
class ReportedAsset:
    sensor: str  # the sensor's public key (Z85)
    name: str  # its name as the collector knows it
    site: str  # "sector/site" from its heartbeat, or its name
    asset: Mapping[str, Any]
    received: float


@dataclass
class AdvisoryRow:
    """One advisory and the devices, per site, that it affects or possibly affects."""

    advisory: str
    title: str
    cves: tuple[str, ...]
    cvss: float | None
    devices: list[dict[str, Any]] = field(default_factory=list)

    def sites(self) -> list[str]:
        return sorted({d["site"] for d in self.devices})

    def to_dict(self) -> dict[str, Any]:
        return {"advisory": self.advisory, "title": self.title, "cves": list(self.cves),
                "cvss": self.cvss, "sites": self.sites(), "devices": self.devices}


def reported_assets(storage: Any) -> list[ReportedAsset]:
    """The latest asset record of every (sensor, device) in the collector's storage."""
    sites = {}
    for status in storage.status():
        reported = status.reported
        site = "/".join(reported.get(k, "") for k in ("sector", "site")).strip("/")
        sites[status.sensor] = (status.name, site or reported.get("name") or status.name)
    out = []
    for sensor, body, received in storage.latest_assets():
        name, site = sites.get(sensor, ("?", "?"))
        out.append(ReportedAsset(sensor, name, site, body, received))
    return out


def national_view(index_path: Path, reported: Sequence[ReportedAsset], *,
                  tables: Tables | None = None) -> list[AdvisoryRow]:
    """Advisories that affect (exact) or possibly affect (product) a reported device."""
    with AdvisoryIndex(index_path, readonly=True) as index:
        matcher = Matcher(index.affected_products(), tables or default_tables())
        summaries = {s.id: s for s in index.summaries()}
    rows: dict[str, AdvisoryRow] = {}
    for rep in reported:
        for m in matcher.match_asset(rep.asset):
            if m.confidence is Confidence.VENDOR:
                continue
            summary = summaries.get(m.advisory_id)
            row = rows.get(m.advisory_id)
            if row is None:
                row = rows[m.advisory_id] = AdvisoryRow(
                    m.advisory_id, summary.title if summary else "",
                    summary.cves if summary else m.cves,
                    summary.cvss if summary else m.cvss)
            row.devices.append({
                "site": rep.site, "sensor": rep.name, "sensor_key": rep.sensor,
                "ip": m.ip, "confidence": m.confidence.value,
                "affected": m.confidence.affected, "products": list(m.products),
                "ranges": list(m.ranges), "version": m.evidence.get("version"),
                "identity": m.evidence.get("identity", {}), "reported": rep.received})
    return sorted(rows.values(), key=lambda r: (-len(r.sites()), -(r.cvss or 0.0), r.advisory))
