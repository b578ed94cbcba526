"""The communication map as server-rendered SVG: masters left, outstations right.

Deterministic (sorted by address, fixed geometry), so a test can find every node and
edge by its ``data-*`` attributes, and no JavaScript graph library is shipped. Colours
are SVG presentation attributes, not CSS: the same picture works inline in the page
and as ``/map.svg`` on its own, and needs no ``style=`` (which the CSP forbids).

An edge is one (master, outstation, protocol) with every unit id or link address of
its pairs, labelled with the function-code classes seen. Nodes and edges with open
(unacknowledged) alerts are drawn red and thicker.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from sensor.web.fcclass import classify

NODE_W, NODE_H, GAP, MARGIN, WIDTH, TOP = 230, 58, 26, 20, 980, 40
ALERT, NORMAL, EDGE = "#c62828", "#37474f", "#607d8b"


@dataclass
class Edge:
    master: str
    outstation: str
    proto: str
    functions: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)  # "unit 1", "link 1→10"
    alert: int | None = None  # highest open severity

    @property
    def classes(self) -> list[str]:
        return classify(self.proto, self.functions)


@dataclass
class Node:
    ip: str
    column: int  # 0 master, 1 outstation
    detail: str = ""
    alert: int | None = None


def _ip_key(ip: str) -> tuple[int, int, str]:
    try:
        addr = ipaddress.ip_address(ip)
        return (addr.version, int(addr), ip)
    except ValueError:
        return (9, 0, ip)


def build_graph(assets: Sequence[Mapping[str, Any]], pairs: Sequence[Mapping[str, Any]],
                open_peers: Iterable[tuple[str | None, str | None, str, int]]
                ) -> tuple[list[Node], list[Edge]]:
    """Nodes and edges from the stored inventory, with open alerts attached."""
    edges: dict[tuple[str, str, str], Edge] = {}
    for p in pairs:
        key = (str(p["client"]), str(p["server"]), str(p["proto"]))
        edge = edges.setdefault(key, Edge(*key))
        edge.functions.update(str(f) for f in p.get("functions", ()))
        if p.get("unit") is not None:
            edge.addresses.add(f"unit {p['unit']}")
        if p.get("link_master") is not None:
            edge.addresses.add(f"link {p['link_master']}→{p['link_outstation']}")
    masters = {e.master for e in edges.values()}
    by_ip = {str(a["ip"]): a for a in assets}
    ips = set(by_ip) | masters | {e.outstation for e in edges.values()}
    nodes: dict[str, Node] = {}
    for ip in ips:
        roles = set(by_ip.get(ip, {}).get("roles", ()))
        column = 0 if ip in masters or roles == {"master"} else 1
        nodes[ip] = Node(ip, column, _detail(by_ip.get(ip, {})))
    for src, dst, proto, severity in open_peers:
        for peer in (src, dst):
            hit = nodes.get(peer) if peer is not None else None
            if hit is not None:
                hit.alert = max(hit.alert or 0, severity)
        for a, b in ((src, dst), (dst, src)):
            found = edges.get((str(a), str(b), proto))
            if found is not None:
                found.alert = max(found.alert or 0, severity)
    ordered = sorted(nodes.values(), key=lambda n: (n.column, _ip_key(n.ip)))
    return ordered, sorted(edges.values(), key=lambda e: (_ip_key(e.master),
                                                          _ip_key(e.outstation), e.proto))


_IDENTITY_KEYS = ("VendorName", "ProductCode", "vendor", "product")


def _detail(asset: Mapping[str, Any]) -> str:
    """Vendor and product from the identity strings (keys like ``unit1.VendorName``)."""
    identity: Mapping[str, Any] = asset.get("identity") or {}
    parts: list[str] = []
    for want in _IDENTITY_KEYS:
        for key, value in sorted(identity.items()):
            if key.rsplit(".", 1)[-1] == want and str(value) not in parts:
                parts.append(str(value))
                break
    return " ".join(parts)[:34]


def render_svg(nodes: Sequence[Node], edges: Sequence[Edge]) -> str:
    """The map as a standalone SVG document (also valid inline in HTML)."""
    rows = [sum(1 for n in nodes if n.column == c) for c in (0, 1)]
    height = TOP + max(1, *rows) * (NODE_H + GAP) + MARGIN
    x_of = (MARGIN, WIDTH - MARGIN - NODE_W)
    pos: dict[str, tuple[float, float]] = {}
    counters = [0, 0]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="commap" width="{WIDTH}" '
           f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" '
           f'aria-label="communication map">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
           'markerWidth="8" markerHeight="8" orient="auto-start-reverse">'
           f'<path d="M 0 0 L 10 5 L 0 10 z" fill="{EDGE}"/></marker>'
           '<marker id="arrow-alert" viewBox="0 0 10 10" refX="10" refY="5" '
           'markerWidth="8" markerHeight="8" orient="auto-start-reverse">'
           f'<path d="M 0 0 L 10 5 L 0 10 z" fill="{ALERT}"/></marker></defs>',
           f'<text x="{MARGIN}" y="24" font-family="sans-serif" font-size="13" '
           f'fill="{NORMAL}">masters</text>',
           f'<text x="{x_of[1]}" y="24" font-family="sans-serif" font-size="13" '
           f'fill="{NORMAL}">outstations</text>']
    for node in nodes:
        y = TOP + counters[node.column] * (NODE_H + GAP)
        counters[node.column] += 1
        pos[node.ip] = (x_of[node.column], y)
    if not nodes:
        out.append(f'<text x="{MARGIN}" y="{TOP + 24}" font-family="sans-serif" '
                   f'font-size="14" fill="{NORMAL}">No communication seen yet.</text>')
    for i, edge in enumerate(edges):
        out.append(_edge(edge, pos, i))
    for node in nodes:
        out.append(_node(node, *pos[node.ip]))
    out.append("</svg>")
    return "\n".join(out)


def _edge(edge: Edge, pos: Mapping[str, tuple[float, float]], index: int) -> str:
    (mx, my), (ox, oy) = pos[edge.master], pos[edge.outstation]
    colour = ALERT if edge.alert is not None else EDGE
    marker = "arrow-alert" if edge.alert is not None else "arrow"
    x1, y1 = mx + NODE_W, my + NODE_H / 2
    x2, y2 = ox, oy + NODE_H / 2
    if x2 <= x1:  # same column (a host polling itself, or master to master): a loop
        x2, y2 = ox + NODE_W, oy + NODE_H * 0.8
        y1 = my + NODE_H * 0.2
        bulge = x1 + 120 + 30 * (index % 3)
        shape = (f'<path d="M {x1:.0f} {y1:.0f} C {bulge:.0f} {y1 - 20:.0f} {bulge:.0f} '
                 f'{y2 + 20:.0f} {x2:.0f} {y2:.0f}" fill="none" ')
        lx, ly = bulge - 20, (y1 + y2) / 2 + 4
        anchor = "start"
    else:
        shape = f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" '
        t = 0.3 + 0.4 * ((index % 3) / 2)
        lx, ly = x1 + (x2 - x1) * t, y1 + (y2 - y1) * t - 6
        anchor = "middle"
    label = f"{edge.proto}: {', '.join(edge.classes) or 'no requests'}"
    cls = "edge alert" if edge.alert is not None else "edge"
    title = f"{edge.master} → {edge.outstation} {edge.proto} " + \
        " ".join(sorted(edge.addresses)) + " fc " + " ".join(sorted(edge.functions))
    return (f'<g class={quoteattr(cls)} data-master={quoteattr(edge.master)} '
            f'data-outstation={quoteattr(edge.outstation)} data-proto={quoteattr(edge.proto)} '
            f'data-classes={quoteattr(" ".join(edge.classes))}>'
            f'<title>{escape(title)}</title>'
            f'{shape}stroke="{colour}" stroke-width="{3 if edge.alert is not None else 1.5}" '
            f'marker-end="url(#{marker})"/>'
            f'<text x="{lx:.0f}" y="{ly:.0f}" font-family="sans-serif" font-size="12" '
            f'text-anchor="{anchor}" fill="{colour}" stroke="#ffffff" stroke-width="3" '
            f'paint-order="stroke">{escape(label)}</text></g>')


def _node(node: Node, x: float, y: float) -> str:
    colour = ALERT if node.alert is not None else NORMAL
    cls = "node alert" if node.alert is not None else "node"
    role = "master" if node.column == 0 else "outstation"
    return (f'<g class={quoteattr(cls)} data-ip={quoteattr(node.ip)} data-role="{role}">'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="6" '
            f'fill="#ffffff" stroke="{colour}" '
            f'stroke-width="{3 if node.alert is not None else 1.5}"/>'
            f'<text x="{x + 10:.0f}" y="{y + 23:.0f}" font-family="monospace" '
            f'font-size="15" font-weight="bold" fill="{colour}">{escape(node.ip)}</text>'
            f'<text x="{x + 10:.0f}" y="{y + 44:.0f}" font-family="sans-serif" '
            f'font-size="12" fill="{NORMAL}">{escape(node.detail or role)}</text></g>')
