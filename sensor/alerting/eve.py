"""Alerts as EVE-style records: the JSON a SIEM already parses from Suricata.

One alert aggregate becomes one record each time it is published (new, or its
count moved), so a SIEM sees the same ``mamori.alert_id`` again with a higher
``count``. The Suricata fields come first and mean what they mean there:

* ``timestamp``: RFC 3339 / ISO 8601 in UTC, the aggregate's last occurrence;
* ``event_type``: ``"alert"``;
* ``src_ip``/``src_port``/``dest_ip``/``dest_port``, ``proto`` (``"TCP"``/``"UDP"``)
  and ``app_proto`` (``"modbus"``, ``"dnp3"``);
* ``community_id``: the Community ID v1 of the 5-tuple (mamori.parsers.communityid), and
  ``flow_id``: the first 63 bits of the same hash as an integer, so every alert of
  one connection shares it across sensors and restarts (Suricata's own flow_id is a
  per-process counter, which a passive box that restarts could not keep stable);
* ``alert``: ``signature_id`` (a stable 32-bit number derived from the rule id, which
  is given too as ``rule``), ``signature``, ``category`` (the precursor), ``severity``
  (Suricata's scale, 1 most severe: critical and high 1, medium 2, low 3, info 4),
  ``attack`` with the ATT&CK for ICS ids, and Suricata-style ``metadata`` lists;
* ``host``: the sensor's name, and ``sensor`` with its name, site and sector.

Alerts without a flow (the sensor's health, an advisory match on an asset) carry
the addresses they have and no ``community_id``/``flow_id``. Modbus and TCP
anomalies are TCP; DNP3 is TCP unless the alert's evidence says ``"transport":
"udp"`` (the detector records it for UDP flows).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.communityid import community_id
from mamori.sensor.timefmt import iso_time

APP_PROTOS = frozenset({"modbus", "dnp3"})
SURICATA_SEVERITY = {Severity.CRITICAL: 1, Severity.HIGH: 1, Severity.MEDIUM: 2,
                     Severity.LOW: 3, Severity.INFO: 4}


def signature_id(rule: str) -> int:
    """A stable number for a rule id (SIEMs index Suricata's integer ``signature_id``)."""
    return int.from_bytes(hashlib.sha256(rule.encode()).digest()[:4], "big")


def transport_of(alert: Alert) -> str | None:
    """``"TCP"``/``"UDP"`` for an alert on a flow, None for one without ports."""
    if alert.sport is None and alert.dport is None:
        return None
    if alert.proto == "dnp3" and str(alert.evidence.get("transport", "")).lower() == "udp":
        return "UDP"
    if alert.proto in ("modbus", "dnp3", "tcp"):
        return "TCP"
    return None


def flow_hashes(alert: Alert) -> tuple[str, int] | None:
    """(community_id, flow_id) of the alert's 5-tuple, or None without one."""
    proto = transport_of(alert)
    if proto is None or alert.src is None or alert.dst is None \
            or alert.sport is None or alert.dport is None:
        return None
    try:
        cid = community_id(alert.src, alert.dst, proto, alert.sport, alert.dport)
    except ValueError:
        return None  # not addresses we can hash (a name from a hostile log): no ids
    digest = base64.b64decode(cid[2:])
    return cid, int.from_bytes(digest[:8], "big") >> 1


def eve_alert(alert: Alert, sensor: Mapping[str, str]) -> dict[str, Any]:
    """One EVE record for ``alert``; ``sensor`` holds name, site and sector."""
    record: dict[str, Any] = {"timestamp": iso_time(alert.last_ts)}
    hashes = flow_hashes(alert)
    if hashes is not None:
        record["flow_id"] = hashes[1]
    record["event_type"] = "alert"
    for key, value in (("src_ip", alert.src), ("src_port", alert.sport),
                       ("dest_ip", alert.dst), ("dest_port", alert.dport)):
        if value is not None:
            record[key] = value
    proto = transport_of(alert)
    if proto is not None:
        record["proto"] = proto
    if hashes is not None:
        record["community_id"] = hashes[0]
    if alert.proto in APP_PROTOS:
        record["app_proto"] = alert.proto
    record["alert"] = {
        "action": "allowed",  # a passive sensor never blocks
        "gid": 1, "signature_id": signature_id(alert.rule), "rev": 1,
        "rule": alert.rule, "signature": alert.title, "category": alert.precursor,
        "severity": SURICATA_SEVERITY[alert.severity],
        "attack": list(alert.attack),
        "metadata": {"mitre_technique_id": list(alert.attack),
                     "mamori_rule": [alert.rule], "mamori_precursor": [alert.precursor],
                     "mamori_severity": [alert.severity.label]},
    }
    name = str(sensor.get("name") or "")
    record["host"] = name
    record["sensor"] = {k: str(sensor.get(k) or "") for k in ("name", "site", "sector")}
    peers = {k: v for k, v in (("unit", alert.unit), ("link_src", alert.link_src),
                               ("link_dst", alert.link_dst)) if v is not None}
    record["mamori"] = {"alert_id": alert.id, "count": alert.count,
                        "first_seen": iso_time(alert.first_ts),
                        "last_seen": iso_time(alert.last_ts), **peers,
                        "evidence": {k: (v.hex() if isinstance(v, bytes) else v)
                                     for k, v in alert.evidence.items()}}
    return record


def eve_health(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A collector health record (S5 clock skew, ...) with an EVE ``timestamp`` in front."""
    ts = doc.get("ts")
    head: dict[str, Any] = {}
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        head["timestamp"] = iso_time(float(ts))
    head["event_type"] = str(doc.get("event_type") or "health")
    return head | {k: v for k, v in doc.items() if k not in head}
