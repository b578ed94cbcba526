"""``mamori alerts`` and ``mamori assets`` on a collector's store: across sensors.

A sensor's store holds its own alerts and inventory; a collector's holds what every
sensor forwarded (``alerts``: the latest of each sensor alert id; ``messages`` kind 3:
asset records). Each row is shown with where it came from: the sensor's name in the
allow-list, and the name, site and sector the sensor reported of itself in its
heartbeats. ``--sensor``, ``--site`` and ``--sector`` select by those.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.collector.storage import SqlStorage
from mamori.sensor.paths import sqlite_tables


@dataclass(frozen=True, slots=True)
class Origin:
    """A sensor as the collector knows it."""

    key: str  # its CURVE public key (Z85)
    name: str  # its allow-list name
    reported: str  # the name it gave itself ("" if it said none)
    site: str
    sector: str

    @property
    def label(self) -> str:
        where = "/".join(p for p in (self.sector, self.site) if p)
        return f"{self.name}@{where}" if where else self.name

    def fields(self) -> dict[str, str]:
        return {"sensor": self.name, "sensor_key": self.key, "sensor_name": self.reported,
                "site": self.site, "sector": self.sector}


def is_collector_store(path: Path) -> bool:
    """An SQLite file made by a collector (its ``streams`` table; no sensor ``meta``)."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        tables = sqlite_tables(path)
    except (sqlite3.Error, OSError):
        return False  # the sensor store's own checks say what is wrong with it
    return "streams" in tables and "meta" not in tables


def origins(storage: SqlStorage, sensor: str | None = None, site: str | None = None,
            sector: str | None = None) -> dict[str, Origin]:
    """Every sensor the collector heard from, less those the filters leave out.

    ``sensor`` matches the allow-list name, the reported name or the key itself;
    ``site`` and ``sector`` match what the sensor reported. Exact, case-sensitive:
    the operator copies them from ``mamori collect status``."""
    out = {}
    for row in storage.status():
        if not row.sensor:  # the "(unauthenticated)" rejects line
            continue
        said = row.reported
        origin = Origin(row.sensor, row.name, said.get("name", ""), said.get("site", ""),
                        said.get("sector", ""))
        if sensor is not None and sensor not in (origin.name, origin.reported, origin.key):
            continue
        if (site is not None and origin.site != site) or \
                (sector is not None and origin.sector != sector):
            continue
        out[row.sensor] = origin
    return out


def alerts(storage: SqlStorage, selected: dict[str, Origin], since: float | None = None,
           min_severity: Severity | None = None) -> list[tuple[Origin, Alert, dict[str, Any]]]:
    """The latest state of every alert of the selected sensors, oldest last seen first.

    A stored document that is not an alert any more (hand-edited, another version) is
    skipped rather than stopping the listing."""
    out = []
    for key, origin in selected.items():
        for doc in storage.alerts(key):
            try:
                alert = Alert.from_dict(doc)
            except (KeyError, TypeError, ValueError):
                continue
            if since is not None and alert.last_ts < since:
                continue
            if min_severity is not None and alert.severity < min_severity:
                continue
            out.append((origin, alert, doc))
    out.sort(key=lambda item: (item[1].last_ts, item[0].name, item[1].id))
    return out


def assets(storage: SqlStorage,
           selected: dict[str, Origin]) -> list[tuple[Origin, dict[str, Any], float]]:
    """The latest asset record per (selected sensor, device ip)."""
    return [(selected[key], body, received) for key, body, received
            in storage.latest_assets() if key in selected]


def alert_json(origin: Origin, doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, **origin.fields()}


def asset_line(origin: Origin, body: dict[str, Any]) -> str:
    identity = body.get("identity")
    ident = "; ".join(f"{k}={v}" for k, v in identity.items()) \
        if isinstance(identity, dict) else ""
    return f"{origin.label:<24} {body.get('ip', '-')!s:<15} {ident}"
