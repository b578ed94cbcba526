"""The communication map as server-rendered SVG: assets grouped by subnet or role.

Why server-side SVG and no drawing library: the page's CSP allows scripts from this
origin only and the Debian package ships what it runs; the one graph library Debian
packages (libjs-d3) is a 2016 release. A deterministic layout computed here
(:mod:`mamori.sensor.web.maplayout`) needs none of that, makes ``/map.svg`` the same picture as
the page, and lets a test find every node and edge by its ``data-*`` attributes. The
page's only script for the map (``static/map.js``) zooms and pans by the viewBox.

Filters are query parameters (:class:`MapFilter`), applied before layout: what a
filter hides is not drawn at all. An edge is one (master, outstation, protocol) with
every unit id or link address of its pairs, labelled with the function-code classes
seen; its label sits under the outstation's box, naming the master. Colour means an
open alert, by the worst severity (the palette of the alert list); what appeared after
the baseline was frozen is drawn dashed and says "new". Colours are presentation
attributes, not CSS, so the SVG works on its own and needs no ``style=``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode
from xml.sax.saxutils import escape, quoteattr

from mamori.parsers.alerts import Severity
from mamori.sensor.web.fcclass import classify
from mamori.sensor.web.maplayout import (
    FONT,
    LABEL_INDENT,
    LINE,
    PAD,
    PANEL_HEAD_TOP,
    TITLE_FONT,
    CellSpec,
    GroupSpec,
    Panel,
    Rect,
    box_chars,
    label_chars,
    layout,
    text_width,
    wrap,
)

NORMAL, EDGE, PANEL = "#37474f", "#90a4ae", "#cfd8dc"
# The alert list's severity colours (app.css .sev-*), worst last.
SEVERITY_COLOURS = ("#78909c", "#1e88e5", "#fb8c00", "#e53935", "#b71c1c")
# What XML 1.0 cannot hold at all (C0 controls but tab and newline, DEL..C1, surrogates,
# U+FFFE/U+FFFF): an identity string off the wire may carry any of it.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _esc(text: str) -> str:
    return escape(_NOT_XML.sub("\ufffd", text))


def _attr(text: str) -> str:
    return quoteattr(_NOT_XML.sub("\ufffd", text))


ROLES = ("master", "both", "outstation")
ROLE_TITLES = {"master": "masters", "both": "masters and outstations",
               "outstation": "outstations"}
GROUPINGS = ("subnet", "role", "none")
PROTOCOLS = ("modbus", "dnp3")
WINDOWS = {"hour": 3600.0, "day": 86400.0, "all": None}
SHOWS = ("all", "alerts", "changed")
# The filter form: (parameter, label, [(value, text)]), the first value the default.
MAP_CHOICES: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("group", "Group by", (("subnet", "subnet (/24)"), ("role", "role"), ("none", "nothing"))),
    ("proto", "Protocol", (("all", "all"), ("modbus", "Modbus"), ("dnp3", "DNP3"))),
    ("severity", "Alerts of at least", (("any", "any severity"),
                                        *((s.label, s.label) for s in Severity))),
    ("since", "Alerts last seen", (("all", "any time"), ("day", "in the last day"),
                                   ("hour", "in the last hour"))),
    ("show", "Show", (("all", "all assets"), ("alerts", "only with open alerts"),
                      ("changed", "only new since baseline"))),
)
MAX_NODES = 2000  # drawn at most; a larger inventory is narrowed with the filters
MAX_DETAIL_LINES = 3  # identity strings come off the wire: the rest is in the tooltip


@dataclass
class Edge:
    master: str
    outstation: str
    proto: str
    functions: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)  # "unit 1", "link 1→10"
    alert: int | None = None  # highest open severity
    first_seen: float | None = None
    new: bool = False  # first seen after the baseline was frozen

    @property
    def classes(self) -> list[str]:
        return classify(self.proto, self.functions)

    @property
    def label(self) -> str:
        source = "itself" if self.master == self.outstation else self.master
        text = f"← {source} {self.proto}: {', '.join(self.classes) or 'no requests'}"
        return text + " (new)" if self.new else text


@dataclass
class Node:
    ip: str
    roles: set[str] = field(default_factory=set)  # "master", "outstation"
    detail: str = ""
    alert: int | None = None
    first_seen: float | None = None
    new: bool = False
    protos: set[str] = field(default_factory=set)

    @property
    def role(self) -> str:
        if {"master", "outstation"} <= self.roles:
            return "both"
        return "master" if "master" in self.roles else "outstation"


def _ip_key(ip: str) -> tuple[int, int, str]:
    try:
        addr = ipaddress.ip_address(ip)
        return (addr.version, int(addr), ip)
    except ValueError:
        return (9, 0, ip)


def _time(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def build_graph(assets: Sequence[Mapping[str, Any]], pairs: Sequence[Mapping[str, Any]],
                open_peers: Iterable[tuple[str | None, str | None, str, int]],
                frozen_at: float | None = None) -> tuple[list[Node], list[Edge]]:
    """Nodes and edges from the stored inventory, with open alerts attached.

    ``frozen_at``: when the baseline was frozen (packet time, as ``first_seen``); an
    asset or edge first seen after it is ``new``. None: not frozen, nothing is new.
    """
    edges: dict[tuple[str, str, str], Edge] = {}
    for p in pairs:
        key = (str(p["client"]), str(p["server"]), str(p["proto"]))
        edge = edges.setdefault(key, Edge(*key))
        edge.functions.update(str(f) for f in p.get("functions", ()))
        edge.first_seen = _earliest(edge.first_seen, _time(p.get("first_seen")))
        if p.get("unit") is not None:
            edge.addresses.add(f"unit {p['unit']}")
        if p.get("link_master") is not None:
            edge.addresses.add(f"link {p['link_master']}→{p['link_outstation']}")
    nodes: dict[str, Node] = {}
    for asset in assets:
        node = nodes.setdefault(str(asset["ip"]), Node(str(asset["ip"])))
        node.roles.update(str(r) for r in asset.get("roles", ()))
        node.detail = _detail(asset)
        node.first_seen = _time(asset.get("first_seen"))
    for edge in edges.values():
        for ip, role in ((edge.master, "master"), (edge.outstation, "outstation")):
            node = nodes.setdefault(ip, Node(ip))
            node.roles.add(role)
            node.protos.add(edge.proto)
    if frozen_at is not None:
        items: list[Node | Edge] = [*nodes.values(), *edges.values()]
        for item in items:
            item.new = item.first_seen is not None and item.first_seen > frozen_at
    for src, dst, proto, severity in open_peers:
        for peer in (src, dst):
            hit = nodes.get(peer) if peer is not None else None
            if hit is not None:
                hit.alert = max(hit.alert or 0, severity)
        for a, b in ((src, dst), (dst, src)):
            found = edges.get((str(a), str(b), proto))
            if found is not None:
                found.alert = max(found.alert or 0, severity)
    return (sorted(nodes.values(), key=lambda n: _ip_key(n.ip)),
            sorted(edges.values(), key=lambda e: (_ip_key(e.outstation), _ip_key(e.master),
                                                  e.proto)))


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
    return " ".join(" ".join(parts).split())  # newlines and tabs: one line of spaces


# -- filters --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MapFilter:
    """The map's query parameters. Severity and window choose the alerts that count
    (colour, and ``show=alerts``); the others choose what is drawn."""

    group: str = "subnet"
    proto: str | None = None
    min_severity: Severity | None = None
    window: str = "all"
    show: str = "all"
    within: str | None = None  # one group's key: that group and its peers

    def since(self, now: float) -> float | None:
        span = WINDOWS[self.window]
        return None if span is None else now - span

    def value(self, key: str) -> str:
        """The form's value of parameter ``key``."""
        return {"group": self.group, "proto": self.proto or "all",
                "severity": self.min_severity.label if self.min_severity is not None
                else "any", "since": self.window, "show": self.show,
                "in": self.within or ""}[key]

    def query(self) -> dict[str, str]:
        """The parameters that differ from the defaults (for links and the download)."""
        default = MapFilter()
        return {k: self.value(k) for k in ("group", "proto", "severity", "since", "show", "in")
                if self.value(k) != default.value(k)}

    def all_groups(self) -> str:
        """The query string of this map with every group (for the page's link)."""
        return urlencode({k: v for k, v in self.query().items() if k != "in"})


def parse_map_filter(params: Mapping[str, Any]) -> tuple[MapFilter, list[str]]:
    """The filter from query parameters and what was wrong with them (shown, not fatal)."""
    raw = {k: str(params.get(k, "")).strip()[:100]
           for k in ("group", "proto", "severity", "since", "show", "in")}
    problems: list[str] = []

    def choice(key: str, allowed: Iterable[str], default: str) -> str:
        value = raw[key] or default
        if value not in allowed:
            problems.append(f"{key}: {value!r} is not one of {', '.join(allowed)}")
            return default
        return value

    severity = None
    if raw["severity"] and raw["severity"] != "any":
        try:
            severity = Severity.parse(raw["severity"])
        except ValueError as err:
            problems.append(str(err))
    proto = choice("proto", ("all", *PROTOCOLS), "all")
    return MapFilter(group=choice("group", GROUPINGS, "subnet"),
                     proto=None if proto == "all" else proto, min_severity=severity,
                     window=choice("since", tuple(WINDOWS), "all"),
                     show=choice("show", SHOWS, "all"), within=raw["in"] or None), problems


def group_of(node: Node, grouping: str) -> str:
    """The key of ``node``'s group: its /24 (IPv6: /64), its role, or one for all."""
    if grouping == "role":
        return node.role
    if grouping == "none":
        return "all"
    try:
        addr = ipaddress.ip_address(node.ip)
    except ValueError:
        return "other"
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def _group_sort(key: str, grouping: str) -> tuple[int, int, str]:
    if grouping == "role":
        return (ROLES.index(key) if key in ROLES else len(ROLES), 0, key)
    try:
        net = ipaddress.ip_network(key)
        return (net.version, int(net.network_address), key)
    except ValueError:
        return (9, 0, key)


def apply_filter(nodes: Sequence[Node], edges: Sequence[Edge], filt: MapFilter
                 ) -> tuple[list[Node], list[Edge]]:
    """What ``filt`` keeps: edges first, then the nodes they need, in the given order."""
    kept_edges = [e for e in edges if filt.proto is None or e.proto == filt.proto]
    if filt.proto is not None:
        candidates = [n for n in nodes if filt.proto in n.protos]
    else:
        candidates = list(nodes)
    if filt.show == "alerts":
        kept_edges = [e for e in kept_edges if e.alert is not None]
        wanted = {n.ip for n in candidates if n.alert is not None}
    elif filt.show == "changed":
        kept_edges = [e for e in kept_edges if e.new]
        wanted = {n.ip for n in candidates if n.new}
    else:
        wanted = {n.ip for n in candidates}
    if filt.within is not None:
        inside = {n.ip for n in candidates if group_of(n, filt.group) == filt.within}
        wanted &= inside
        kept_edges = [e for e in kept_edges if e.master in inside or e.outstation in inside]
    allowed = {n.ip for n in candidates}
    kept_edges = [e for e in kept_edges if e.master in allowed and e.outstation in allowed]
    for e in kept_edges:  # an edge brings both its ends
        wanted.update((e.master, e.outstation))
    return [n for n in candidates if n.ip in wanted], kept_edges


# -- drawing --------------------------------------------------------------------------


def _colour(severity: int | None, normal: str) -> str:
    if severity is None:
        return normal
    return SEVERITY_COLOURS[max(0, min(severity, len(SEVERITY_COLOURS) - 1))]


def _severity_name(severity: int) -> str:
    try:
        return Severity(severity).label
    except ValueError:
        return str(severity)


def _box_lines(node: Node, chars: int) -> list[str]:
    """The box's text under the address: role and identity, then alert and change."""
    role = "master and outstation" if node.role == "both" else node.role
    lines = wrap(f"{role} · {node.detail}" if node.detail else role, chars)
    if len(lines) > MAX_DETAIL_LINES:
        lines = lines[:MAX_DETAIL_LINES]
        lines[-1] = lines[-1][:chars - 1] + "…"
    status = []
    if node.alert is not None:
        status.append(f"open alert: {_severity_name(node.alert)}")
    if node.new:
        status.append("new since baseline")
    if status:
        lines += wrap(" · ".join(status), chars)
    return lines


def render_svg(nodes: Sequence[Node], edges: Sequence[Edge], grouping: str = "subnet",
               link_query: Mapping[str, str] | None = None) -> str:
    """The map as a standalone SVG document (also valid inline in HTML).

    An edge is drawn when both its ends are among ``nodes`` (filters drop nodes).
    ``link_query``: when given, each group's title links to the map of that group
    alone (with these other parameters).
    """
    by_ip = {n.ip: n for n in nodes}
    edges = [e for e in edges if e.master in by_ip and e.outstation in by_ip]
    chars = box_chars(max((len(n.ip) for n in nodes), default=0))
    texts = {n.ip: _box_lines(n, chars) for n in nodes}
    incoming: dict[str, list[tuple[Edge, list[str]]]] = {}
    for edge in edges:
        incoming.setdefault(edge.outstation, []).append(
            (edge, wrap(edge.label, label_chars(chars))))
    groups: dict[str, list[Node]] = {}
    for node in nodes:
        groups.setdefault(group_of(node, grouping), []).append(node)
    order = sorted(groups, key=lambda k: _group_sort(k, grouping))
    specs = [GroupSpec(key, _heading(key, groups[key], grouping),
                       [CellSpec(n.ip, 1 + len(texts[n.ip]),
                                 sum(len(lines) for _, lines in incoming.get(n.ip, ())))
                        for n in sorted(groups[key], key=lambda n: (ROLES.index(n.role),
                                                                    _ip_key(n.ip)))])
             for key in order]
    plan = layout(specs, chars)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="commap" '
           f'width="{plan.width:.0f}" height="{plan.height:.0f}" '
           f'viewBox="0 0 {plan.width:.0f} {plan.height:.0f}" role="img" '
           f'aria-label="communication map" data-nodes="{len(nodes)}" '
           f'data-edges="{len(edges)}" data-width="{plan.width:.0f}" '
           f'data-height="{plan.height:.0f}">', _markers()]
    if not nodes:
        out.append(f'<text x="{PAD * 2}" y="{PAD * 2 + TITLE_FONT}" font-family="monospace" '
                   f'font-size="{TITLE_FONT}" fill="{NORMAL}">Nothing to show: no '
                   'communication seen yet, or none that the filters let through.</text>')
    cells = {c.key: c for p in plan.panels for c in p.cells}
    headings = []
    for panel in plan.panels:
        background, heading = _panel(panel, grouping, link_query)
        out.append(background)
        headings.append(heading)
    lines_layer, labels_layer = [], []  # every label above every line: none is crossed
    for ip, arriving in incoming.items():
        cell = cells[ip]
        assert cell.labels is not None
        y = cell.labels.y + 4
        for edge, lines in arriving:
            line, label = _edge(edge, cells[edge.master].box, cell.labels.x, y, lines)
            lines_layer.append(line)
            labels_layer.append(label)
            y += LINE * len(lines)
    out += lines_layer + labels_layer + headings
    for ip, cell in cells.items():
        out.append(_node(by_ip[ip], cell.box, texts[ip]))
    out.append("</svg>")
    return "\n".join(out)


def _markers() -> str:
    out = ["<defs>"]
    for name, colour in (("arrow", EDGE), *((f"arrow-{i}", c)
                                            for i, c in enumerate(SEVERITY_COLOURS))):
        out.append(f'<marker id="{name}" viewBox="0 0 10 10" refX="10" refY="5" '
                   'markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" '
                   'orient="auto-start-reverse">'
                   f'<path d="M 0 0 L 10 5 L 0 10 z" fill="{colour}"/></marker>')
    out.append("</defs>")
    return "".join(out)


def _heading(key: str, members: Sequence[Node], grouping: str) -> str:
    title = ROLE_TITLES.get(key, key) if grouping == "role" else (
        "all assets" if grouping == "none" else key)
    alerting = sum(1 for n in members if n.alert is not None)
    new = sum(1 for n in members if n.new)
    summary = [f"{len(members)} asset{'s' if len(members) != 1 else ''}"]
    if alerting:
        summary.append(f"{alerting} with open alerts")
    if new:
        summary.append(f"{new} new since baseline")
    return f"{title} · {', '.join(summary)}"


def _panel(panel: Panel, grouping: str, link_query: Mapping[str, str] | None
           ) -> tuple[str, str]:
    """The panel's background (under everything) and its heading (on a chip, above
    the lines that cross the panel; a link to the group alone)."""
    rect = panel.rect
    lines = "".join(f'<tspan x="{rect.x + PAD:.0f}" y="{rect.y + PANEL_HEAD_TOP + i * LINE:.0f}">'
                    f'{_esc(line)}</tspan>' for i, line in enumerate(panel.heading))
    text = (f'<text class="group-title" font-family="monospace" font-size="{FONT}" '
            f'font-weight="bold" fill="{NORMAL}">{lines}</text>')
    if link_query is not None and grouping != "none":
        href = "/map?" + urlencode({**link_query, "group": grouping, "in": panel.key})
        text = f'<a href={_attr(href)}>{text}</a>'
    width = text_width(max(len(line) for line in panel.heading)) + 6
    chip = (f'<rect class="chip" x="{rect.x + PAD - 3:.0f}" '
            f'y="{rect.y + PANEL_HEAD_TOP - 13:.0f}" width="{width:.0f}" '
            f'height="{LINE * (len(panel.heading) - 1) + 17:.0f}" rx="3" fill="#f7f9fa" '
            'fill-opacity="0.92"/>')
    title = f'<title>{_esc(" ".join(panel.heading))}</title>'
    return (f'<g class="group" data-group={_attr(panel.key)}>{title}'
            f'<rect x="{rect.x:.0f}" y="{rect.y:.0f}" width="{rect.w:.0f}" '
            f'height="{rect.h:.0f}" rx="8" fill="#f7f9fa" stroke="{PANEL}"/></g>',
            f'<g class="group-head" data-group={_attr(panel.key)}>{title}{chip}{text}</g>')


def _clip(box: Rect, tx: float, ty: float) -> tuple[float, float]:
    """Where the line from the centre of ``box`` towards (tx, ty) leaves the box."""
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    dx, dy = tx - cx, ty - cy
    if dx == 0 and dy == 0:
        return cx, cy
    scale = min(box.w / 2 / abs(dx) if dx else float("inf"),
                box.h / 2 / abs(dy) if dy else float("inf"))
    return cx + dx * min(1.0, scale), cy + dy * min(1.0, scale)


def _edge(edge: Edge, source: Rect, x: float, y: float, lines: Sequence[str]
          ) -> tuple[str, str]:
    """The line from the master's box to its label at (x, y), and the label: a ``g.edge``
    with the edge's data, drawn on a white chip over the lines of other edges."""
    colour = _colour(edge.alert, EDGE)
    marker = "arrow" if edge.alert is None else f"arrow-{min(edge.alert, 4)}"
    tx, ty = x + LABEL_INDENT - 4, y + LINE / 2
    if edge.master == edge.outstation:  # a host polling itself: down from its box
        x1, y1 = x + LABEL_INDENT / 2 - 2, source.y + source.h
        shape = (f'<path d="M {x1:.0f} {y1:.0f} L {x1:.0f} {ty:.0f} L {tx:.0f} {ty:.0f}" '
                 'fill="none" ')
    else:
        x1, y1 = _clip(source, tx, ty)
        shape = f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{tx:.0f}" y2="{ty:.0f}" '
    dash = ' stroke-dasharray="6 4"' if edge.new else ""
    flags = (["alert"] if edge.alert is not None else []) + (["new"] if edge.new else [])
    data = (f'data-master={_attr(edge.master)} data-outstation={_attr(edge.outstation)} '
            f'data-proto={_attr(edge.proto)}')
    alerting = edge.alert is not None
    opacity = "" if alerting else ' stroke-opacity="0.6"'
    line = (f'{shape[:-1]} class={_attr(" ".join(["edge-line", *flags]))} {data} '
            f'stroke="{colour}" stroke-width="{2.5 if alerting else 1.2}"'
            f'{opacity}{dash} '
            f'marker-end="url(#{marker})"/>')
    title = f"{edge.master} → {edge.outstation} {edge.proto} " + \
        " ".join(sorted(edge.addresses)) + " fc " + " ".join(sorted(edge.functions))
    text = "".join(
        f'<tspan x="{x + LABEL_INDENT:.0f}" y="{y + (i + 1) * LINE - 4:.0f}">'
        f'{_esc(line)}</tspan>' for i, line in enumerate(lines))
    chip_w = text_width(max(len(line) for line in lines)) + 6
    severity = (f' data-severity="{_severity_name(edge.alert)}"' if edge.alert is not None
                else "")
    label = (f'<g class={_attr(" ".join(["edge", *flags]))} {data} '
             f'data-classes={_attr(" ".join(edge.classes))}{severity}>'
             f'<title>{_esc(title)}</title>'
             f'<rect class="chip" x="{x + LABEL_INDENT - 3:.0f}" y="{y:.0f}" '
             f'width="{chip_w:.0f}" height="{LINE * len(lines):.0f}" rx="3" fill="#ffffff" '
             f'fill-opacity="0.92"/>'
             f'<text class="edge-label" font-family="monospace" font-size="{FONT}" '
             f'fill="{_colour(edge.alert, NORMAL)}">{text}</text></g>')
    return line, label


def _node(node: Node, box: Rect, lines: Sequence[str]) -> str:
    colour = _colour(node.alert, NORMAL)
    cls = " ".join(["node"] + (["alert"] if node.alert is not None else [])
                   + (["new"] if node.new else []))
    dash = ' stroke-dasharray="7 4"' if node.new else ""
    severity = f' data-severity="{_severity_name(node.alert)}"' if node.alert is not None else ""
    body = "".join(
        f'<text x="{box.x + PAD:.0f}" y="{box.y + PAD + (i + 2) * LINE - 4:.0f}" '
        f'font-family="monospace" font-size="{FONT}" fill="{NORMAL}">{_esc(line)}</text>'
        for i, line in enumerate(lines))
    tooltip = " ".join(filter(None, (node.ip, node.detail)))
    return (f'<g class={_attr(cls)} data-ip={_attr(node.ip)} '
            f'data-role="{node.role}"{severity}><title>{_esc(tooltip)}</title>'
            f'<rect x="{box.x:.0f}" y="{box.y:.0f}" width="{box.w:.0f}" height="{box.h:.0f}" '
            f'rx="6" fill="#ffffff" stroke="{colour}" '
            f'stroke-width="{3 if node.alert is not None else 1.2}"{dash}/>'
            f'<text x="{box.x + PAD:.0f}" y="{box.y + PAD + LINE - 3:.0f}" '
            f'font-family="monospace" font-size="{TITLE_FONT}" font-weight="bold" '
            f'fill="{colour}">{_esc(node.ip)}</text>{body}</g>')


def map_for(assets: Sequence[Mapping[str, Any]], pairs: Sequence[Mapping[str, Any]],
            open_peers: Iterable[tuple[str | None, str | None, str, int]],
            frozen_at: float | None, filt: MapFilter, page: bool = True
            ) -> tuple[str, int, int]:
    """The filtered map's SVG, how many nodes matched, and how many are drawn."""
    nodes, edges = apply_filter(*build_graph(assets, pairs, open_peers, frozen_at), filt)
    matched = len(nodes)
    if matched > MAX_NODES:
        nodes = nodes[:MAX_NODES]
        keep = {n.ip for n in nodes}
        edges = [e for e in edges if e.master in keep and e.outstation in keep]
    svg = render_svg(nodes, edges, filt.group, filt.query() if page else None)
    return svg, matched, len(nodes)
