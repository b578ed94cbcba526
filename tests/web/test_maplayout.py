"""The map's layout, filters and drawing without a browser: no overlap at 1 to 1,000
nodes, a bounded size, every character kept, filters and baseline changes as said.

The geometry checker is the one the Chromium test uses (``tests.web.mapsite``), fed
from the SVG's own numbers; it is first shown to catch what it is meant to catch.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.alerting.store import Store
from mamori.sensor.web.commap import (
    MAX_DETAIL_LINES,
    MAX_NODES,
    MapFilter,
    apply_filter,
    build_graph,
    map_for,
    parse_map_filter,
    render_svg,
)
from mamori.sensor.web.data import AlertFilter, StoreReader
from mamori.sensor.web.maplayout import (
    MAX_WIDTH,
    CellSpec,
    GroupSpec,
    box_height,
    labels_height,
    layout,
    wrap,
)
from tests.web.mapsite import assert_readable, make_site, overlapping, svg_geometry, write_site


def _peers(site_alerts: list[Alert]) -> list[tuple[str | None, str | None, str, int]]:
    return [(a.src, a.dst, a.proto, int(a.severity)) for a in site_alerts]


def test_the_checker_catches_overlap_overflow_and_a_label_off_its_node() -> None:
    site = make_site(30)
    svg, _, _ = map_for(site.assets, site.pairs, _peers(site.alerts), site.frozen_at,
                        MapFilter())
    good = svg_geometry(svg)
    assert_readable(good)
    for spoil in ("overlap", "overflow", "label"):
        geo = svg_geometry(svg)
        a, b = geo["nodes"][0], geo["nodes"][1]
        if spoil == "overlap":
            b["rect"] = [a["rect"][0] + 5, a["rect"][1] + 5, *b["rect"][2:]]
        elif spoil == "overflow":
            t = a["texts"][0]
            a["texts"][0] = [t[0], t[1], a["rect"][2], t[3]]  # runs past the box's edge
        else:
            e = geo["edges"][0]
            e["chip"] = [e["chip"][0] + 400, *e["chip"][1:]]
            e["label"] = [e["label"][0] + 400, *e["label"][1:]]
        with pytest.raises(AssertionError):
            assert_readable(geo)


@pytest.mark.parametrize("count", [1, 54, 300, 1000])
@pytest.mark.parametrize("group", ["subnet", "role", "none"])
def test_no_overlap_and_bounded_size(count: int, group: str) -> None:
    site = make_site(count)
    svg, matched, drawn = map_for(site.assets, site.pairs, _peers(site.alerts),
                                  site.frozen_at, MapFilter(group=group))
    geo = svg_geometry(svg)
    assert matched == drawn == count == len(geo["nodes"])
    assert sorted(n["ip"] for n in geo["nodes"]) == sorted(site.ips())
    assert_readable(geo)
    # Bounded: never wider than the shelf limit, and the area per node stays within a
    # constant of the cells' own (no runaway whitespace at any size).
    box_w = geo["nodes"][0]["rect"][2]
    assert geo["width"] <= MAX_WIDTH
    cells = sum(n["rect"][3] for n in geo["nodes"]) + sum(e["chip"][3] for e in geo["edges"])
    assert geo["width"] * geo["height"] <= 3.5 * cells * box_w + 400_000
    if count >= 300:  # a plant, not a ribbon: the whole map is roughly screen-shaped
        assert 0.4 <= geo["width"] / geo["height"] <= 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(1, 8), st.integers(0, 12)), min_size=1,
                         max_size=40), min_size=1, max_size=12),
       st.integers(30, 60))
def test_layout_never_overlaps_whatever_the_cells(groups: list[list[tuple[int, int]]],
                                                   chars: int) -> None:
    specs = [GroupSpec(f"g{i}", f"group {i} " + "x" * (i * 7),
                       [CellSpec(f"{i}.{j}", box, labels) for j, (box, labels) in enumerate(g)])
             for i, g in enumerate(groups)]
    plan = layout(specs, chars)
    cells = [c for p in plan.panels for c in p.cells]
    assert [c.key for c in cells] == [s.key for g in specs for s in g.cells]
    outlines = [(c.key, [c.outline.x, c.outline.y, c.outline.w, c.outline.h]) for c in cells]
    assert overlapping(outlines) == []
    assert overlapping([(p.key, [p.rect.x, p.rect.y, p.rect.w, p.rect.h])
                        for p in plan.panels]) == []
    spec_of = {s.key: s for g in specs for s in g.cells}
    for panel in plan.panels:
        for cell in panel.cells:
            assert panel.rect.contains(cell.outline)
            assert cell.box.h == box_height(spec_of[cell.key].box_lines)
            if spec_of[cell.key].label_lines:
                assert cell.labels is not None
                assert cell.labels.h == labels_height(spec_of[cell.key].label_lines)
        assert panel.rect.x + panel.rect.w <= plan.width
        assert panel.rect.y + panel.rect.h <= plan.height
        assert all(len(line) * 12 * 0.62 <= panel.rect.w - 16 for line in panel.heading)
    assert plan.width <= max(MAX_WIDTH, max(p.rect.w for p in plan.panels) + 32)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300),
       st.integers(1, 40))
def test_wrap_keeps_every_character(text: str, chars: int) -> None:
    lines = wrap(text, chars)
    assert all(len(line) <= chars for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")


def test_deterministic_whatever_the_input_order() -> None:
    site = make_site(120)
    peers = _peers(site.alerts)
    first = map_for(site.assets, site.pairs, peers, site.frozen_at, MapFilter())[0]
    rng = random.Random(7)
    for _ in range(3):
        assets, pairs = list(site.assets), list(site.pairs)
        rng.shuffle(assets)
        rng.shuffle(pairs)
        assert map_for(assets, pairs, list(reversed(peers)), site.frozen_at,
                       MapFilter())[0] == first


def test_filters_protocol_alerts_changes_and_one_group() -> None:
    site = make_site(300)
    nodes, edges = build_graph(site.assets, site.pairs, _peers(site.alerts), site.frozen_at)
    kept, kept_edges = apply_filter(nodes, edges, MapFilter(proto="dnp3"))
    assert {n.ip for n in kept} == site.ips("dnp3") != site.ips()
    assert {e.proto for e in kept_edges} == {"dnp3"}
    kept, kept_edges = apply_filter(nodes, edges, MapFilter(show="alerts"))
    alerting = {ip for a in site.alerts for ip in (a.src, a.dst)}
    assert {n.ip for n in kept} == alerting
    assert kept_edges and all(e.alert is not None for e in kept_edges)
    kept, kept_edges = apply_filter(nodes, edges, MapFilter(show="changed"))
    new = {str(a["ip"]) for a in site.assets if a["first_seen"] > site.frozen_at}
    assert new <= {n.ip for n in kept}
    assert kept_edges and all(e.new for e in kept_edges)
    assert {n.ip for n in kept} == new | {ip for e in kept_edges
                                          for ip in (e.master, e.outstation)}
    kept, _ = apply_filter(nodes, edges, MapFilter(within="10.1.2.0/24"))
    members = {ip for ip in site.ips() if ip.startswith("10.1.2.")}
    assert members <= {n.ip for n in kept} and len(kept) < len(nodes)
    assert {n.ip for n in kept} - members <= {ip for ip in site.ips()
                                              if ip.startswith("10.0.0.")} | \
        {ip for ip in site.ips() if ip.startswith("10.1.1.")}  # its masters and gateway
    kept, _ = apply_filter(nodes, edges, MapFilter(within="10.9.9.0/24"))
    assert kept == []
    svg = render_svg(kept, [])
    assert "Nothing to show" in svg
    # render_svg draws an edge only between the nodes it is given
    some = [n for n in nodes if n.ip.startswith("10.0.0.") or n.ip.startswith("10.1.0.")]
    geo = svg_geometry(render_svg(some, edges))
    ips = {n.ip for n in some}
    assert geo["edges"] and all({e["master"], e["outstation"]} <= ips for e in geo["edges"])
    # not frozen: nothing is new
    nodes, edges = build_graph(site.assets, site.pairs, [], None)
    assert not any(n.new for n in nodes) and not any(e.new for e in edges)


def test_parse_map_filter_says_what_is_wrong_and_round_trips() -> None:
    filt, problems = parse_map_filter({"group": "role", "proto": "dnp3", "severity": "high",
                                       "since": "hour", "show": "alerts", "in": "master"})
    assert problems == []
    assert filt == MapFilter("role", "dnp3", Severity.HIGH, "hour", "alerts", "master")
    assert parse_map_filter(filt.query()) == (filt, [])
    assert filt.since(1000.0) == 1000.0 - 3600
    assert MapFilter().query() == {} and MapFilter().since(5.0) is None
    filt, problems = parse_map_filter({"group": "vendor", "proto": "s7", "severity": "loud",
                                       "since": "week", "show": "x" * 5000})
    assert filt == MapFilter() and len(problems) == 5
    assert "group: 'vendor' is not one of subnet, role, none" in problems
    assert all(len(p) < 200 for p in problems)  # the 5000 characters are not echoed


def test_hostile_identity_and_long_addresses_stay_inside_their_boxes() -> None:
    v6 = "fd00:1234:5678:9abc:def0:1234:5678:9abc"
    assets: list[dict[str, Any]] = [
              {"ip": "10.0.0.1", "roles": ["master"]},
              {"ip": "10.0.0.2", "roles": ["outstation"],
               "identity": {"unit1.VendorName": "A" * 5000 + "\n\x00<b>",
                            "unit1.ProductCode": "word " * 400}},
              {"ip": v6, "roles": ["outstation"]}]
    pairs = [{"proto": "modbus", "client": "10.0.0.1", "server": ip, "unit": 1,
              "functions": [str(f) for f in range(1, 130)]} for ip in ("10.0.0.2", v6)]
    nodes, edges = build_graph(assets, pairs, [("10.0.0.1", "10.0.0.2", "modbus", 99)])
    svg = render_svg(nodes, edges)
    geo = svg_geometry(svg)
    assert_readable(geo)
    node = next(n for n in geo["nodes"] if n["ip"] == "10.0.0.2")
    # address, at most MAX_DETAIL_LINES of role and identity, the alert line
    assert len(node["texts"]) == 1 + MAX_DETAIL_LINES + 1
    assert "…" in svg and "<b>" not in svg and "\x00" not in svg
    assert "&lt;b&gt;" in svg  # the whole value is in the tooltip, escaped
    label = next(e for e in geo["edges"] if e["outstation"] == "10.0.0.2")["text"]
    assert label.replace(" ", "") == ("← 10.0.0.1 modbus: read, write, diagnostics, "
                                      "programming, other").replace(" ", "")
    assert 'data-severity="99"' in svg  # an unknown severity is drawn as the worst


def test_more_than_max_nodes_are_capped_and_counted() -> None:
    site = make_site(MAX_NODES + 300)
    svg, matched, drawn = map_for(site.assets, site.pairs, [], None, MapFilter(group="none"))
    assert (matched, drawn) == (MAX_NODES + 300, MAX_NODES)
    assert svg.count('class="node') == MAX_NODES


def test_store_reader_baseline_and_counted_alerts(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    site = make_site(60, now=1_000_000.0)
    with Store(path) as db:
        db.save_inventory(site.assets, site.pairs, None)
    reader = StoreReader(path)
    assert reader.baseline_frozen_at() is None  # no baseline
    write_site(path, site)
    assert reader.baseline_frozen_at() == site.frozen_at
    with Store(path) as db:
        db.save_baseline({"state": "learning", "frozen_at": None})
    assert reader.baseline_frozen_at() is None
    with Store(path) as db:
        db._db.execute("UPDATE baseline SET doc = ?", ("{not json",))
        db._db.commit()
    assert reader.baseline_frozen_at() is None
    with Store(path) as db:
        db._db.execute("UPDATE baseline SET doc = ?", (json.dumps([1, 2]),))
        db._db.commit()
    assert reader.baseline_frozen_at() is None
    every = reader.open_peers()
    assert len(every) == len(site.alerts)
    recent = reader.open_peers(AlertFilter(since=site.now - 3600))
    assert {(s, d) for s, d, _, _ in recent} == {
        (a.src, a.dst) for a in site.alerts if a.last_ts >= site.now - 3600}
    high = reader.open_peers(AlertFilter(min_severity=Severity.HIGH))
    assert high and all(sev >= Severity.HIGH for *_, sev in high)
    assert len(high) < len(every) and not math.isnan(len(high))
