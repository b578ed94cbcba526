"""A synthetic plant of any size for the map tests, written through the store's own API.

Masters (SCADA servers) sit in 10.0.0.0/24; outstations fill 10.1.k.0/24 twenty at a
time; every 25th outstation is also a master of the next one (a gateway, role
"both"). Every third outstation speaks DNP3, every seventh both protocols, every
tenth has a second master. Open alerts of every severity, some in the last hour,
some in the last day, some older; the baseline was frozen an hour ago, and every
seventeenth outstation (and its edges) appeared after that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensor.alerts import Alert, Severity
from sensor.store import Store

PER_SUBNET = 20


@dataclass
class Site:
    now: float
    frozen_at: float
    assets: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)

    def ips(self, proto: str | None = None) -> set[str]:
        """Every asset, or those with an edge of ``proto``."""
        if proto is None:
            return {str(a["ip"]) for a in self.assets}
        return {str(p[k]) for p in self.pairs if p["proto"] == proto
                for k in ("client", "server")}


def _pair(proto: str, client: str, server: str, first_seen: float, now: float,
          functions: list[str]) -> dict[str, Any]:
    dnp3 = proto == "dnp3"
    return {"proto": proto, "client": client, "server": server,
            "port": 20000 if dnp3 else 502, "unit": None if dnp3 else 1,
            "link_master": 1 if dnp3 else None, "link_outstation": 10 if dnp3 else None,
            "functions": functions, "ranges": {}, "period": 1.0, "count": 100,
            "first_seen": first_seen, "last_seen": now, "learned": True}


def make_site(count: int, now: float | None = None) -> Site:
    """``count`` assets in all (masters included)."""
    now = time.time() if now is None else now
    site = Site(now=now, frozen_at=now - 3600)
    masters = max(1, count // 30)
    outstations = count - masters
    old = now - 30 * 86400
    master_ips = [f"10.0.0.{i + 10}" for i in range(masters)]
    for ip in master_ips:
        site.assets.append({"ip": ip, "roles": ["master"], "first_seen": old,
                            "last_seen": now, "identity": {}})
    for i in range(outstations):
        ip = f"10.1.{i // PER_SUBNET}.{i % PER_SUBNET + 10}"
        new = i % 17 == 16
        first = now - 600 if new else old
        roles = ["outstation"] + (["master"] if i % 25 == 24 else [])
        identity = {"unit1.VendorName": f"Vendor {i % 5}",
                    "unit1.ProductCode": f"PLC-{i % 11}00 series {i}"} if i % 2 else {}
        site.assets.append({"ip": ip, "roles": roles, "first_seen": first, "last_seen": now,
                            "identity": identity})
        protos = ["dnp3"] if i % 3 == 0 else ["modbus"]
        if i % 7 == 0:
            protos = ["modbus", "dnp3"]
        owners = [master_ips[i % masters]]
        if i % 10 == 9 and masters > 1:
            owners.append(master_ips[(i + 1) % masters])
        for proto in protos:
            functions = ["1", "2"] if proto == "dnp3" else ["3", "16"]
            if i % 13 == 0:
                functions.append("13" if proto == "dnp3" else "8/4")
            for owner in owners:
                site.pairs.append(_pair(proto, owner, ip, first, now, functions))
        if i % 25 == 24 and i + 1 < outstations:  # a gateway polls the next outstation
            nxt = f"10.1.{(i + 1) // PER_SUBNET}.{(i + 1) % PER_SUBNET + 10}"
            site.pairs.append(_pair("modbus", ip, nxt, first, now, ["3"]))
        if i % 9 == 4:
            severity = Severity(i % 5)
            last = (now - 60, now - 7200, now - 10 * 86400)[i % 3]
            proto = protos[0]
            site.alerts.append(Alert(
                rule="test.map", precursor="M7", severity=severity, attack=(),
                title=f"test alert {i}", proto=proto, first_ts=last - 5, last_ts=last,
                src=owners[0], dst=ip, dport=20000 if proto == "dnp3" else 502))
    return site


def write_site(path: Path, site: Site) -> None:
    """``site`` into the store at ``path``, with a frozen baseline."""
    with Store(path) as db:
        db.save_alerts(site.alerts)
        db.save_inventory(site.assets, site.pairs,
                          {"format": "mamori-baseline", "state": "enforcing",
                           "frozen_at": site.frozen_at, "pairs": [], "assets": [],
                           "masters": []})
