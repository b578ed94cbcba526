"""The communication map of a 300-asset plant in Debian's chromium: every node drawn,
nothing overlapping, the filters and groupings doing what they say, zoom working,
and the CSP never in the way.

Geometry is measured in the page, by the browser's own text metrics (``getBBox``),
so the layout's assumption about monospace widths is checked against a real font.
The 1:1 map is saved as ``out/map-300.png`` (an artefact, gitignored).
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT
from tests.web.conftest import WebProcess
from tests.web.mapsite import Site, assert_readable, inside, make_site, write_site
from tests.web.test_browser import _login, browser_page  # noqa: F401  (a fixture)

pytestmark = pytest.mark.browser

from playwright import sync_api  # noqa: E402

ARTEFACTS = PROJECT / "out"
COUNT = 300

# Every box the map draws, in map units (independent of zoom), and what it belongs to.
GEOMETRY_JS = """() => {
  const svg = document.querySelector('#map svg.commap, svg.commap');
  const box = (el) => { const b = el.getBBox(); return [b.x, b.y, b.width, b.height]; };
  const nodes = [...svg.querySelectorAll('g.node')].map((g) => ({
    ip: g.dataset.ip, role: g.dataset.role, cls: g.getAttribute('class'),
    severity: g.dataset.severity || null, rect: box(g.querySelector('rect')),
    texts: [...g.querySelectorAll('text')].map(box),
    visible: getComputedStyle(g).visibility === 'visible' &&
             getComputedStyle(g).display !== 'none'}));
  const edges = [...svg.querySelectorAll('g.edge')].map((g) => ({
    master: g.dataset.master, outstation: g.dataset.outstation, proto: g.dataset.proto,
    cls: g.getAttribute('class'), severity: g.dataset.severity || null,
    label: box(g.querySelector('text.edge-label')), chip: box(g.querySelector('rect.chip')),
    text: g.querySelector('text.edge-label').textContent}));
  const heads = new Map([...svg.querySelectorAll('g.group-head')].map((g) =>
    [g.dataset.group, g]));
  const groups = [...svg.querySelectorAll('g.group')].map((g) => ({
    key: g.dataset.group, rect: box(g.querySelector('rect')),
    title: box(heads.get(g.dataset.group).querySelector('text.group-title')),
    chip: box(heads.get(g.dataset.group).querySelector('rect.chip'))}));
  return {width: Number(svg.dataset.width), height: Number(svg.dataset.height),
          nodes, edges, groups};
}"""


@pytest.fixture
def site_server(tmp_path: Path, token_file: Path) -> Iterator[tuple[WebProcess, Site]]:
    site = make_site(COUNT)
    store = tmp_path / "plant.db"
    write_site(store, site)
    server = WebProcess(store, token_file)
    yield server, site
    server.stop()


def _geometry(page: sync_api.Page, query: str = "") -> dict[str, Any]:
    url = page.url.split("/map")[0].split("/alerts")[0]
    response = page.goto(f"{url}/map{query}")
    assert response is not None and response.status == 200, query
    geo: dict[str, Any] = page.evaluate(GEOMETRY_JS)
    return geo


def test_map_of_300_assets_readable_filtered_grouped_zoomable(
        browser_page: sync_api.Page, site_server: tuple[WebProcess, Site], token: str,  # noqa: F811
        tmp_path: Path) -> None:
    page = browser_page
    server, site = site_server
    violations: list[str] = []
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.add_init_script("document.addEventListener('securitypolicyviolation', (e) =>"
                         " { (window.__csp = window.__csp || []).push(e.violatedDirective"
                         " + ' ' + e.blockedURI); });")
    _login(page, server.url, token)

    # Everything, grouped by subnet: every asset once, readable.
    geo = _geometry(page)
    assert sorted(n["ip"] for n in geo["nodes"]) == sorted(site.ips())
    assert len(geo["edges"]) == len({(p["client"], p["server"], p["proto"])
                                     for p in site.pairs})
    assert_readable(geo)
    subnets = {str(ipaddress.ip_network(f"{ip}/24", strict=False)) for ip in site.ips()}
    assert {g["key"] for g in geo["groups"]} == subnets
    # colour only where alerts are: the rest are drawn in the one neutral colour
    alerting = [n for n in geo["nodes"] if "alert" in n["cls"].split()]
    assert 0 < len(alerting) < len(geo["nodes"]) // 3
    assert {n["severity"] for n in alerting} == {"info", "low", "medium", "high", "critical"}
    assert all(n["severity"] is None for n in geo["nodes"] if n not in alerting)
    new = {n["ip"] for n in geo["nodes"] if "new" in n["cls"].split()}
    assert new == {str(a["ip"]) for a in site.assets if a["first_seen"] > site.frozen_at}
    assert new and any(e["text"].endswith("(new)") for e in geo["edges"])
    page.wait_for_timeout(500)
    violations += page.evaluate("window.__csp || []")

    # Zoom and pan move the viewBox; the whole map fits the view; a click focuses.
    svg = page.locator("#map svg.commap")
    scale = float(svg.get_attribute("data-scale") or "0")
    assert 0 < scale <= 1
    page.click("#map-tools button[data-zoom=in]")
    assert float(svg.get_attribute("data-scale") or "0") == pytest.approx(scale * 1.25, rel=1e-3)
    before = svg.get_attribute("viewBox")
    box = page.locator("#map").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 300, box["y"] + 300)
    page.mouse.down()
    page.mouse.move(box["x"] + 200, box["y"] + 150, steps=5)
    page.mouse.up()
    assert svg.get_attribute("viewBox") != before
    page.mouse.wheel(0, -300)
    page.wait_for_function(f"Number(document.querySelector('#map svg').dataset.scale) > "
                           f"{scale * 1.25}")
    page.click("#map-fit")
    view = page.locator("#map").bounding_box()
    assert view is not None
    outside = page.evaluate("""(v) => [...document.querySelectorAll('#map g.node rect')]
      .map((r) => [r.parentNode.dataset.ip, r.getBoundingClientRect()])
      .filter(([ip, b]) => b.width <= 0 || b.left < v.x - 1 || b.top < v.y - 1
              || b.right > v.x + v.width + 1 || b.bottom > v.y + v.height + 1)
      .map(([ip]) => ip)""", view)
    assert outside == []
    page.screenshot(path=str(tmp_path / "map-300-whole.png"))
    master = sorted(ip for ip in site.ips() if ip.startswith("10.0.0."))[0]
    page.locator(f'#map g.node[data-ip="{master}"] rect').click()  # a real click, at fit
    assert "focus" in (svg.get_attribute("class") or "")
    on = page.evaluate("[...document.querySelectorAll('#map g.edge.on, #map .edge-line.on')]"
                       ".map((e) => [e.tagName, e.dataset.master, e.dataset.outstation])")
    expected = {(p["client"], p["server"]) for p in site.pairs if master in
                (p["client"], p["server"])}
    assert expected and {(m, o) for tag, m, o in on if tag == "g"} == expected
    assert {(m, o) for tag, m, o in on if tag == "line"} == expected
    page.keyboard.press("Escape")  # the click focused the map (tabindex)
    assert "focus" not in (svg.get_attribute("class") or "")
    page.click("#map-tools button[data-zoom=actual]")
    assert float(svg.get_attribute("data-scale") or "0") == 1.0
    page.focus("#map")
    page.keyboard.press("-")
    assert float(svg.get_attribute("data-scale") or "0") == pytest.approx(0.8, rel=1e-3)
    x0 = float((svg.get_attribute("viewBox") or "").split()[0])
    page.keyboard.press("ArrowRight")
    assert float((svg.get_attribute("viewBox") or "").split()[0]) > x0
    page.goto(f"{server.url}/map")
    page.screenshot(path=str(tmp_path / "map-300-page.png"))

    # Protocol: DNP3 hides every Modbus-only asset and edge.
    geo = _geometry(page, "?proto=dnp3")
    shown = {n["ip"] for n in geo["nodes"]}
    assert shown == site.ips("dnp3")
    assert site.ips("modbus") - site.ips("dnp3")  # there were Modbus-only ones to hide
    assert {e["proto"] for e in geo["edges"]} == {"dnp3"}
    assert_readable(geo)
    assert page.locator("#m-proto").input_value() == "dnp3"

    # Grouping by role: three panels, each node in its own role's panel.
    geo = _geometry(page, "?group=role")
    assert [g["key"] for g in geo["groups"]] == ["master", "both", "outstation"]
    panels = {g["key"]: g["rect"] for g in geo["groups"]}
    for n in geo["nodes"]:
        assert inside(n["rect"], panels[n["role"]]), n
    assert {n["role"] for n in geo["nodes"] if n["ip"].startswith("10.0.0.")} == {"master"}
    assert_readable(geo)
    geo = _geometry(page, "?group=none")
    assert [g["key"] for g in geo["groups"]] == ["all"] and len(geo["nodes"]) == COUNT
    assert_readable(geo)

    # One group alone (its title links there): its assets and their peers.
    page.goto(f"{server.url}/map")
    page.click("#map-fit")
    page.click('#map g.group-head[data-group="10.1.3.0/24"] a')
    page.wait_for_url("**in=10.1.3.0%2F24**")
    geo = page.evaluate(GEOMETRY_JS)
    members = {ip for ip in site.ips() if ip.startswith("10.1.3.")}
    peers = {str(p[k]) for p in site.pairs for k in ("client", "server")
             if p["client"] in members or p["server"] in members}
    assert {n["ip"] for n in geo["nodes"]} == members | peers
    assert_readable(geo)

    # Severity and time choose the alerts that count; show=alerts keeps only those.
    def worst(since: float | None, at_least: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in site.alerts:
            if int(a.severity) >= at_least and (since is None or a.last_ts >= since):
                for ip in (a.src, a.dst):
                    assert ip is not None
                    out[ip] = max(out.get(ip, 0), int(a.severity))
        return out
    names = ["info", "low", "medium", "high", "critical"]
    for query, since, at_least in (("?severity=high", None, 3),
                                   ("?since=hour", site.now - 3600, 0),
                                   ("?since=day&severity=medium", site.now - 86400, 2)):
        geo = _geometry(page, query)
        assert {n["ip"]: n["severity"] for n in geo["nodes"] if n["severity"]} == {
            ip: names[s] for ip, s in worst(since, at_least).items()}, query
        geo = _geometry(page, query + "&show=alerts")
        assert {n["ip"] for n in geo["nodes"]} == set(worst(since, at_least)), query
        assert all("alert" in e["cls"] for e in geo["edges"])
        assert_readable(geo)

    # Changed since the baseline: the new assets and the ends of the new edges.
    geo = _geometry(page, "?show=changed")
    new_edges = [p for p in site.pairs if p["first_seen"] > site.frozen_at]
    assert {n["ip"] for n in geo["nodes"]} == new | {
        str(p[k]) for p in new_edges for k in ("client", "server")}
    assert geo["edges"] and all("new" in e["cls"].split() for e in geo["edges"])

    violations += page.evaluate("window.__csp || []")
    assert violations == [] and errors == []

    # A bad parameter is said, not a crash; the map still shows.
    response = page.goto(f"{server.url}/map?group=vendor&proto=s7")
    assert response is not None and response.status == 400
    assert "group: 'vendor' is not one of" in page.inner_text("main")
    assert page.locator("#map g.node").count() == COUNT
    assert page.evaluate("window.__csp || []") == []
    assert errors == ["Failed to load resource: the server responded with a status of 400 "
                      "(Bad Request)"]  # the page's own status, nothing else

    # Without map.js (blocked, or scripts off) the map is the plain picture, scrollable.
    page.route("**/static/map.js", lambda route: route.abort())
    page.goto(f"{server.url}/map")
    assert page.locator("#map-tools").is_hidden()
    plain = page.locator("#map svg.commap")
    assert plain.get_attribute("width") == plain.get_attribute("data-width")
    assert page.evaluate("getComputedStyle(document.getElementById('map')).overflow") == "auto"
    assert page.evaluate("document.getElementById('map').scrollHeight") > 900
    page.unroute("**/static/map.js")

    # The whole map at 1:1, as /map.svg (the same drawing): the artefact.
    # (Inlined in a blank page: Chromium's full-page shot of a bare SVG document hangs.)
    page.set_viewport_size({"width": 1800, "height": 1000})
    drawing = page.request.get(f"{server.url}/map.svg")
    assert drawing.status == 200 and drawing.headers["content-type"] == "image/svg+xml"
    page.set_content(f"<!doctype html><body>{drawing.text()}</body>")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(tmp_path / "map-300.png"), full_page=True)
    for name in ("map-300.png", "map-300-page.png", "map-300-whole.png"):
        shutil.copy(tmp_path / name, ARTEFACTS / name)
    assert_readable(page.evaluate(GEOMETRY_JS))  # standalone, with no CSS or script
