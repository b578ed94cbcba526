"""A synthetic plant of any size for the map tests, written through the store's own API.

Masters (SCADA servers) sit in 10.0.0.0/24; outstations fill 10.1.k.0/24 twenty at a
time; every 25th outstation is also a master of the next one (a gateway, role
"both"). Every third outstation speaks DNP3, every seventh both protocols, every
tenth has a second master. Open alerts of every severity, some in the last hour,
some in the last day, some older; the baseline was frozen an hour ago, and every
seventeenth outstation (and its edges) appeared after that.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.alerting.store import Store
from mamori.sensor.web.maplayout import CHAR_EM

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


# -- geometry: the same checks on the browser's boxes and on the SVG's own numbers ----

def overlap(a: list[float], b: list[float], eps: float = 0.5) -> bool:
    return (a[0] + eps < b[0] + b[2] and b[0] + eps < a[0] + a[2]
            and a[1] + eps < b[1] + b[3] and b[1] + eps < a[1] + a[3])


def inside(inner: list[float], outer: list[float], eps: float = 0.5) -> bool:
    return (inner[0] >= outer[0] - eps and inner[1] >= outer[1] - eps
            and inner[0] + inner[2] <= outer[0] + outer[2] + eps
            and inner[1] + inner[3] <= outer[1] + outer[3] + eps)


def overlapping(boxes: list[tuple[str, list[float]]]) -> list[tuple[str, str]]:
    """Pairs of named boxes that overlap (sweep on x: fine for thousands)."""
    ordered = sorted(boxes, key=lambda b: b[1][0])
    found = []
    for i, (name, a) in enumerate(ordered):
        for other, b in ordered[i + 1:]:
            if b[0] >= a[0] + a[2]:
                break
            if overlap(a, b):
                found.append((name, other))
    return found


def assert_readable(geo: dict[str, Any]) -> None:
    """No node, label or group title overlaps another; each text inside its box."""
    width, height = geo["width"], geo["height"]
    canvas = [0.0, 0.0, width, height]
    rects = {n["ip"]: n["rect"] for n in geo["nodes"]}
    for n in geo["nodes"]:
        assert n["visible"], n["ip"]
        assert n["rect"][2] > 0 and n["rect"][3] > 0 and inside(n["rect"], canvas), n
        for t in n["texts"]:
            assert t[2] > 0 and inside(t, n["rect"]), (n["ip"], t, n["rect"])
    assert overlapping([(n["ip"], n["rect"]) for n in geo["nodes"]]) == []
    texts = [(f"{n['ip']} text {i}", t) for n in geo["nodes"]
             for i, t in enumerate(n["texts"])]
    texts += [(f"edge {e['master']}>{e['outstation']} {e['proto']}", e["chip"])
              for e in geo["edges"]]
    texts += [(f"group {g['key']}", g["chip"]) for g in geo["groups"]]
    assert overlapping(texts) == []
    for e in geo["edges"]:
        label, chip, target = e["label"], e["chip"], rects[e["outstation"]]
        assert inside(label, chip) and inside(chip, canvas), e
        assert target[0] <= chip[0] and chip[0] + chip[2] <= target[0] + target[2] + 0.5, e
        assert chip[1] >= target[1] + target[3] - 0.5, e  # under its outstation's box
        hits = [ip for ip, r in rects.items() if overlap(chip, r)]
        assert hits == [], (e, hits)
    assert overlapping([(g["key"], g["rect"]) for g in geo["groups"]]) == []
    for g in geo["groups"]:
        assert inside(g["rect"], canvas) and inside(g["chip"], g["rect"]), g
        assert inside(g["title"], g["chip"]), g


SVG = "{http://www.w3.org/2000/svg}"
ASCENT, DESCENT = 0.93, 0.24  # em: DejaVu Sans Mono's, as Chromium's getBBox measures


def _text_box(text: ElementTree.Element) -> list[float]:
    """A <text>'s extent by the layout's own arithmetic (its lines: tspans or itself)."""
    size = float(text.get("font-size", "12"))
    lines = list(text.iter(f"{SVG}tspan")) or [text]
    xs = [float(t.get("x", "0")) for t in lines]
    ys = [float(t.get("y", "0")) for t in lines]
    width = max(len(t.text or "") for t in lines) * size * CHAR_EM
    top = min(ys) - ASCENT * size
    return [min(xs), top, width, max(ys) + DESCENT * size - top]


def _rect(el: ElementTree.Element | None) -> list[float]:
    assert el is not None
    return [float(el.get(k, "0")) for k in ("x", "y", "width", "height")]


def svg_geometry(svg: str) -> dict[str, Any]:
    """What GEOMETRY_JS reads in the browser, read from the SVG text instead."""
    root = ElementTree.fromstring(svg)
    nodes, edges, groups = [], [], []
    heads: dict[str, dict[str, list[float]]] = {}
    for g in root.iter(f"{SVG}g"):
        cls = g.get("class", "")
        if cls.split()[:1] == ["node"]:
            nodes.append({"ip": g.get("data-ip"), "role": g.get("data-role"), "cls": cls,
                          "severity": g.get("data-severity"), "rect": _rect(g.find(f"{SVG}rect")),
                          "texts": [_text_box(t) for t in g.findall(f"{SVG}text")],
                          "visible": True})
        elif cls.split()[:1] == ["edge"]:
            label = g.find(f"{SVG}text")
            assert label is not None
            edges.append({"master": g.get("data-master"), "outstation": g.get("data-outstation"),
                          "proto": g.get("data-proto"), "cls": cls,
                          "severity": g.get("data-severity"), "label": _text_box(label),
                          "chip": _rect(g.find(f"{SVG}rect")),
                          "text": " ".join(t.text or "" for t in label)})
        elif cls == "group":
            groups.append({"key": g.get("data-group"), "rect": _rect(g.find(f"{SVG}rect"))})
        elif cls == "group-head":
            title = g.find(f".//{SVG}text")
            assert title is not None
            heads[str(g.get("data-group"))] = {"title": _text_box(title),
                                               "chip": _rect(g.find(f"{SVG}rect"))}
    for group in groups:
        group.update(heads[str(group["key"])])
    size = re.search(r'data-width="(\d+)" data-height="(\d+)"', svg)
    assert size
    return {"width": float(size.group(1)), "height": float(size.group(2)), "nodes": nodes,
            "edges": edges, "groups": groups}
