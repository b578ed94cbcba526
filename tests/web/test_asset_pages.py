"""Asset pages, the alert timeline, the health-alert fold and readable evidence
(issue 20 items 2-4), through Starlette's test client on stores filled by replaying
real corpus captures."""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor import config as cfg
from mamori.sensor.alerting.store import Store
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.detection.settings import build_detector
from mamori.sensor.web.app import _ts, create_app
from mamori.sensor.web.evidence import evidence_rows, object_header
from mamori.sensor.web.server import build_context
from mamori.sensor.web.timeline import HOUR, Timeline, render_svg, window
from tests.conftest import corpus_path
from tests.web.conftest import replay_into_store

MODBUS = "arkime/tests/pcap/modbus.pcap"  # identity (FC 17), writes, S2 gaps, S3 silence
DNP3 = "zeek/Traces/dnp3/dnp3.pcap"  # object headers (g12v1 CROB, g60 class reads), IIN
POLLED = "ICS-Security-Tools/pcaps/ModbusTCP/ModbusTCP.pcap"  # a plant master polling, 1-2 s
DNP3_IDENTITY = "ICS-Security-Tools/pcaps/dnp3/dataset_exchange.pcap"  # g0 attributes
NEWER = "ICS-Security-Tools/pcaps/dnp3/direct_operate_analog_output.pcap"
OLDER = "ICS-Security-Tools/pcaps/dnp3/direct_operate_crob_malform_but_good_crc.pcap"


def _replay_with_baseline(store: Path, capture: Path) -> None:
    """Like ``replay_into_store``, and also the learned baseline (with its cycles)."""
    detector = build_detector(None)
    replay_files([capture], PipelineConfig(), extra_sinks=[detector.process])
    inv = detector.inventory
    with Store(store) as db:
        db.save_alerts(detector.drain())
        db.save_inventory(inv.asset_docs(),
                          [p.to_dict() for p in inv.pairs.values()], inv.export())


@pytest.fixture(scope="module")
def corpus_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("assets") / "mamori.db"
    _replay_with_baseline(path, corpus_path(POLLED))
    replay_into_store(path, [corpus_path(MODBUS)])
    replay_into_store(path, [corpus_path(DNP3)])
    replay_into_store(path, [corpus_path(DNP3_IDENTITY)])
    return path


def _client(store: Path, token_file: Path, token: str, page_size: int = 50) -> TestClient:
    ctx = build_context(cfg.load(None), store, token_file=token_file)
    ctx.page_size = page_size
    client = TestClient(create_app(ctx), follow_redirects=False)
    r = client.post("/login", data={"operator": "Aiko Tanaka", "token": token})
    assert r.status_code == 303
    return client


def _alerts(store: Path) -> list[Alert]:
    with Store(store, readonly=True) as db:
        return db.alerts()


def _doc(store: Path, ip: str) -> dict[str, Any]:
    with Store(store, readonly=True) as db:
        return next(a for a in db.assets() if a["ip"] == ip)


def _text(page: str) -> str:
    """The page's visible text, roughly: tags out, entities decoded, spaces squeezed."""
    body = re.sub(r"<(script|title)[^>]*>.*?</\1>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def _section(page: str, ident: str) -> str:
    found = re.search(rf'<(table|section|ul)[^>]*id="{ident}".*?</\1>', page, re.S)
    assert found, f"no #{ident} on the page"
    return found.group(0)


def _is_health(a: Alert) -> bool:
    return a.precursor.startswith("S") and a.severity <= Severity.LOW


# -- asset pages ------------------------------------------------------------------------

def test_modbus_asset_page_shows_what_the_store_knows(corpus_store: Path, token_file: Path,
                                                      token: str) -> None:
    client = _client(corpus_store, token_file, token)
    ip = "10.0.0.3"
    doc = _doc(corpus_store, ip)
    page = client.get(f"/assets/{ip}").text
    text = _text(page)
    assert "Asset 10.0.0.3" in text
    fields = _text(_section(page, "asset-fields"))
    assert f"Roles {', '.join(doc['roles'])}" in fields
    assert f"Modbus unit ids {', '.join(map(str, doc['units']))}" in fields
    assert doc["mac"] and doc["mac"] in fields
    assert "Protocols dnp3, modbus" in fields  # both corpus captures use this address
    # identity: FC 17 Report Server ID, named, with its value
    identity = _text(_section(page, "asset-identity"))
    assert doc["identity"]["unit10.server_id_data"] in identity
    assert "unit 10 Server ID (FC 17)" in identity
    # function codes used toward it, by name
    with Store(corpus_store, readonly=True) as db:
        pairs = [p for p in db.pairs() if ip in (p["client"], p["server"])]
    labels = {(p["proto"], f) for p in pairs for f in p["functions"]}
    functions = _section(page, "asset-functions")
    found = set(re.findall(r'data-proto="(\w+)" data-label="([^"]+)"', functions))
    assert found == labels
    assert "Force Listen Only Mode" in functions and "Write Single Coil" in functions
    # peers link to their own asset pages
    peers = _section(page, "asset-peers")
    for p in pairs:
        other = p["client"] if p["server"] == ip else p["server"]
        assert f'href="/assets/{other}"' in peers
    # first/last seen: the asset's span, widened by its pairs' (a flow's last request)
    first = min(doc["first_seen"], *(p["first_seen"] for p in pairs))
    last = max(doc["last_seen"], *(p["last_seen"] for p in pairs))
    assert f"First seen {_ts(first)}" in fields and f"Last seen {_ts(last)}" in fields
    assert last == doc["last_seen"]  # the inventory saved its pairs' span (asset_docs)
    # its alerts, each linked
    mine = [a for a in _alerts(corpus_store) if ip in (a.src, a.dst)]
    assert mine
    alerts = _section(page, "alerts")
    assert {int(i) for i in re.findall(r'<tr class="row-\w+" data-id="(\d+)"', alerts)} \
        == {a.id for a in mine}
    for a in mine:
        assert f'href="/alerts/{a.id}"' in alerts
    assert 'href="/alerts?asset=10.0.0.3"' in page


def test_asset_page_shows_the_learned_polling_periods(corpus_store: Path, token_file: Path,
                                                      token: str) -> None:
    with Store(corpus_store, readonly=True) as db:
        baseline = db.load_baseline()
    assert baseline is not None
    client = _client(corpus_store, token_file, token)
    ip = "141.81.0.86"
    learned = [c for bp in baseline["pairs"] if bp["server"] == ip for c in bp["cycles"]]
    assert learned, "the corpus capture polls this device"
    peers = _text(_section(client.get(f"/assets/{ip}").text, "asset-peers"))
    for c in learned:
        label, where = c["key"]
        assert f"FC {label} " in peers
        assert f"at address {where}: every {c['mean']:.3f} s ± {c['dev']:.3f} s " \
               f"({c['n']} intervals)" in peers
    assert "Read Input Registers at address" in peers
    master = client.get("/assets/141.81.0.10").text
    [state] = [m for m in baseline["master_states"] if m["ip"] == "141.81.0.10"]
    assert f"as a master: {state['state']}" in _text(_section(master, "asset-fields"))
    assert 'href="/assets/141.81.0.86"' in _section(master, "asset-peers")


def test_dnp3_asset_page_names_device_attributes_and_link_addresses(
        corpus_store: Path, token_file: Path, token: str) -> None:
    client = _client(corpus_store, token_file, token)
    page = client.get("/assets/192.168.77.235").text
    fields = _text(_section(page, "asset-fields"))
    assert "DNP3 link addresses 4" in fields
    identity = _text(_section(page, "asset-identity"))
    assert "link 4 Outstation-defined data set prototypes 1" in identity
    assert "link 4 Outstation-defined data sets 3" in identity
    outstation = client.get("/assets/10.0.0.3").text  # the DNP3 side of a shared address
    functions = _section(outstation, "asset-functions")
    assert 'data-proto="dnp3" data-label="13"' in functions
    assert "Cold Restart" in functions and "Disable Unsolicited" in functions


def test_asset_page_refuses_what_is_no_stored_asset(corpus_store: Path, token_file: Path,
                                                    token: str) -> None:
    client = _client(corpus_store, token_file, token)
    assert client.get("/assets/10.99.99.99").status_code == 404
    assert client.get("/assets/" + "1" * 5000).status_code == 404
    assert client.get("/assets/%3Cscript%3E").status_code == 404
    assert "<script>" not in client.get("/assets/%3Cscript%3E").text
    assert client.get("/assets/10.0.0.3", headers={}).status_code == 200
    anonymous = TestClient(client.app, follow_redirects=False)
    assert anonymous.get("/assets/10.0.0.3").status_code == 303


def test_ips_link_to_asset_pages_on_lists_and_detail(corpus_store: Path, token_file: Path,
                                                     token: str) -> None:
    client = _client(corpus_store, token_file, token)
    listing = client.get("/alerts?health=show").text
    shown = re.findall(r'<tr class="row-\w+" data-id="(\d+)"', listing)
    by_id = {a.id: a for a in _alerts(corpus_store)}
    for ident in shown:
        a = by_id[int(ident)]
        for ip in (a.src, a.dst):
            if ip:
                assert f'<a href="/assets/{ip}" class="asset-link">{ip}</a>' in listing
    m7 = next(a for a in by_id.values() if a.precursor == "M7")
    detail = client.get(f"/alerts/{m7.id}").text
    assert f'href="/assets/{m7.src}"' in _section(detail, "alert-fields")
    assert f'href="/assets/{m7.dst}"' in _section(detail, "alert-fields")
    assets = client.get("/assets").text
    with Store(corpus_store, readonly=True) as db:
        for asset in db.assets():
            assert f'<a href="/assets/{asset["ip"]}" class="asset-link">' in assets
    live = client.get("/api/alerts?after=0").json()["alerts"]
    assert all(a["src_url"] == f"/assets/{by_id[a['id']].src}" for a in live
               if by_id[a["id"]].src)


def test_first_seen_stays_before_last_seen_on_the_asset_page(
        tmp_path: Path, token_file: Path, token: str) -> None:
    """Regression (the inventory set last_seen to the latest packet's time): two
    captures of the same hosts replayed newest first."""
    store = tmp_path / "mamori.db"
    replay_into_store(store, [corpus_path(NEWER), corpus_path(OLDER)])
    doc = _doc(store, "192.168.10.4")
    assert doc["first_seen"] < doc["last_seen"]
    page = _client(store, token_file, token).get("/assets/192.168.10.4").text
    first = re.search(r'id="asset-first">([^<]+)<', page)
    last = re.search(r'id="asset-last">([^<]+)<', page)
    assert first and last
    assert first.group(1).startswith("2015-04-17") and last.group(1).startswith("2015-04-20")


# -- timeline ---------------------------------------------------------------------------

def _bars(page: str) -> dict[int, dict[str, int]]:
    svg = _section(page, "timeline")
    out = {}
    for g in re.finditer(r'<g class="hour" data-hour="(\d+)" data-total="(\d+)" ([^>]*)>', svg):
        per = {k: int(v) for k, v in re.findall(r'data-(\w+)="(\d+)"', g.group(3))}
        assert sum(per.values()) == int(g.group(2))
        out[int(g.group(1))] = {k: v for k, v in per.items() if v}
    return out


def _expected(alerts: list[Alert], start: int, hours: int) -> dict[int, dict[str, int]]:
    counts: dict[int, Counter[str]] = {}
    for a in alerts:
        hour = int(a.first_ts // HOUR) * HOUR
        if start <= hour < start + hours * HOUR:
            counts.setdefault(hour, Counter())[a.severity.label] += 1
    return {h: dict(c) for h, c in counts.items()}


def _window(page: str) -> tuple[int, int]:
    found = re.search(r'id="timeline" data-start="(\d+)" data-hours="(\d+)"', page)
    assert found
    return int(found.group(1)), int(found.group(2))


def test_timeline_counts_match_the_store(corpus_store: Path, token_file: Path,
                                         token: str) -> None:
    client = _client(corpus_store, token_file, token)
    alerts = _alerts(corpus_store)
    for query, chosen in (
            ("", [a for a in alerts if not _is_health(a)]),
            ("?health=show", alerts),
            ("?severity=high", [a for a in alerts if a.severity >= Severity.HIGH]),
            ("?since=2013-01-01&until=2013-01-10", alerts)):
        page = client.get(f"/alerts{query}").text
        start, hours = _window(page)
        expected = _expected(chosen, start, hours)
        if "since" not in query:
            assert expected, query  # the window ends at the newest alert: never empty
            newest = max(a.first_ts for a in chosen)
            assert start + (hours - 1) * HOUR <= newest < start + hours * HOUR
        assert _bars(page) == expected, query
        total = sum(sum(c.values()) for c in expected.values())
        assert f'data-total="{total}"' in page
    # a window of the filter's own: since..until, capped at 14 days of bars
    page = client.get("/alerts?since=2010-01-01&until=2016-01-01").text
    assert _window(page)[1] == 14 * 24 and "the last 14 days" in page
    # each asset page: that device's alerts
    for ip in ("10.0.0.3", "192.168.66.34"):
        page = client.get(f"/assets/{ip}").text
        start, hours = _window(page)
        assert _bars(page) == _expected([a for a in alerts if ip in (a.src, a.dst)],
                                        start, hours)
        assert _bars(page)


# -- health fold ------------------------------------------------------------------------

def test_low_severity_health_alerts_are_folded_and_shown_on_demand(
        corpus_store: Path, token_file: Path, token: str) -> None:
    client = _client(corpus_store, token_file, token, page_size=1000)
    alerts = _alerts(corpus_store)
    health = [a for a in alerts if _is_health(a)]
    assert {a.precursor for a in health} == {"S2"} and len(health) >= 4
    assert any(a.precursor == "S3" for a in alerts)  # medium: never folded

    def ids(page: str) -> set[int]:
        return {int(i) for i in re.findall(r'<tr class="row-\w+" data-id="(\d+)"', page)}

    page = client.get("/alerts").text
    assert ids(page) == {a.id for a in alerts if not _is_health(a)}
    summary = _text(_section_p(page, "health-folded"))
    assert f"{len(health)} sensor-health alerts" in summary and "hidden" in summary
    link = re.search(r'href="([^"]+)" id="show-health"', page)
    assert link and html.unescape(link.group(1)) == "/alerts?health=show"
    assert 'data-query="health=hide"' in page  # the live poll folds them too
    shown = client.get("/alerts?health=show").text
    assert ids(shown) == {a.id for a in alerts}
    assert 'id="health-folded"' not in shown and 'id="hide-health"' in shown
    # other filters stay in the show link, and the count follows them
    page = client.get("/alerts?asset=192.168.77.235").text
    mine = [a for a in health if "192.168.77.235" in (a.src, a.dst)]
    assert f"{len(mine)} sensor-health alert" in _text(_section_p(page, "health-folded"))
    assert "asset=192.168.77.235&amp;health=show" in page
    # asking for a health precursor shows it; the API and the CSV keep every alert
    assert ids(client.get("/alerts?precursor=S2").text) == {a.id for a in health}
    api = client.get("/api/alerts?after=0").json()["alerts"]
    assert {a["id"] for a in api} == {a.id for a in alerts}
    assert {a["id"] for a in client.get("/api/alerts?after=0&health=hide").json()["alerts"]} \
        == {a.id for a in alerts if not _is_health(a)}
    assert len(client.get("/alerts.csv").text.splitlines()) == len(alerts) + 1
    bad = client.get("/api/alerts?after=0&health=maybe")
    assert bad.status_code == 400 and "health" in bad.json()["error"]


def _section_p(page: str, ident: str) -> str:
    found = re.search(rf'<p[^>]*id="{ident}".*?</p>', page, re.S)
    assert found, f"no #{ident} on the page"
    return found.group(0)


# -- evidence ---------------------------------------------------------------------------

def test_evidence_is_readable_for_every_corpus_alert(corpus_store: Path, token_file: Path,
                                                     token: str) -> None:
    client = _client(corpus_store, token_file, token)
    alerts = _alerts(corpus_store)
    for a in alerts:
        page = client.get(f"/alerts/{a.id}").text
        evidence = _section(page, "evidence")
        text = _text(evidence)
        assert "None" not in text and "{'" not in text and "[{" not in text, (a, text)
        assert "None" not in _text(page)
        keys = set(re.findall(r'data-key="(\w+)"', evidence))
        # every key but a chain's bookkeeping "ids" (its step ids are the store's)
        assert keys == {k for k, v in a.evidence.items() if v is not None and k != "ids"
                        and not (k == "quantity" and "address" in a.evidence)}, a
    by = {a.precursor: a for a in alerts}
    texts = {p: _text(_section(client.get(f"/alerts/{by[p].id}").text, "evidence"))
             for p in ("M1", "M7", "M5", "D1", "D7", "D10", "D11", "S2")}
    assert "8 Diagnostics" in texts["M1"] and "4 Force Listen Only Mode (0x0004)" in texts["M1"]
    m7 = by["M7"].evidence
    assert f"{m7['fc']} Write Single" in texts["M7"]
    assert f"start {m7['address']}, count {m7['quantity']}" in texts["M7"]
    coil = next(a for a in alerts if a.precursor == "M7" and a.evidence["fc"] == 5)
    assert "5 Write Single Coil" in (coil_text := _text(_section(
        client.get(f"/alerts/{coil.id}").text, "evidence")))
    assert f"start {coil.evidence['address']}, count 1 " \
           f"(coil 0{coil.evidence['address'] + 1:04d})" in coil_text
    assert "Illegal" in texts["M5"]
    assert {13: "13 Cold Restart", 14: "14 Warm Restart"}[by["D1"].evidence["fc"]] \
        in texts["D1"]
    d7 = next(a for a in alerts if a.precursor == "D7"
              and any(h["group"] == 12 for h in a.evidence.get("objects", ())))
    d7_text = _text(_section(client.get(f"/alerts/{d7.id}").text, "evidence"))
    for header in d7.evidence["objects"]:
        want = f"g{header['group']}v{header['variation']} q0x{header['qualifier']:02x}"
        assert want in d7_text
    assert "g12v1 q0x28 count 1 (binary output command)" in d7_text
    assert "IIN1.7 device restart" in texts["D10"]
    assert by["D11"].evidence["iin"] == 4 and "0x0004: IIN2.2 parameter error" in texts["D11"]
    assert "Midstream pickup (MIDSTREAM_PICKUP)" in texts["S2"]


def test_evidence_is_named_rows_and_none_is_omitted(
        tmp_path: Path, token_file: Path, token: str) -> None:
    store = tmp_path / "mamori.db"
    with Store(store) as db:
        [row] = db.save_alerts([Alert(
            rule="mamori.modbus.write", precursor="M7", severity=Severity.HIGH, attack=(),
            title="write", proto="modbus", first_ts=1e9, last_ts=1e9, src="10.0.0.1",
            dst="10.0.0.2", evidence={"fc": 16, "address": 99, "quantity": 10, "start": None,
                                      "nested": {"a": None, "b": 2},
                                      "flag": True})])
    page = _client(store, token_file, token).get(f"/alerts/{row}").text
    evidence = _section(page, "evidence")
    text = _text(evidence)
    assert "16 Write Multiple Registers" in text
    assert "start 99, count 10 (holding registers 40100\u201340109)" in text
    assert "None" not in text and "start" not in re.findall(r'data-key="(\w+)"', evidence)
    assert "B: 2" in text and "yes" in text
    rows = evidence_rows("modbus", {"fc": 6, "detail": None})
    assert [(r.key, r.lines) for r in rows] == [("fc", ("6 Write Single Register",))]
    assert object_header({"group": 1, "variation": 2, "qualifier": 0, "start": 3, "stop": 9,
                          "count": None}) == "g1v2 q0x00 3\u20139 (binary input)"


def test_remembered_counts_follow_new_and_pruned_alerts(tmp_path: Path, token_file: Path,
                                                       token: str) -> None:
    """The timeline and the fold's count are remembered between requests; a new alert
    or a retention pass shows on the next one all the same."""
    store = tmp_path / "mamori.db"
    replay_into_store(store, [corpus_path(DNP3_IDENTITY)])  # two S2 alerts
    client = _client(store, token_file, token)

    def state() -> tuple[int, str]:
        page = client.get("/alerts").text
        total = re.search(r'id="timeline" data-start="\d+" data-hours="\d+" '
                          r'data-total="(\d+)"', page)
        hidden = re.search(r'id="health-hidden">(\d+)<', page)
        assert total
        return int(total.group(1)), hidden.group(1) if hidden else "-"

    assert state() == (0, "2")
    assert state() == (0, "2")  # remembered
    [s2] = _alerts(store)[:1]
    with Store(store) as db:
        db.save_alerts([replace(s2, id=0, first_ts=s2.first_ts + 60),
                        replace(s2, id=0, precursor="D1", severity=Severity.HIGH,
                                first_ts=s2.first_ts + 61)])
    assert state() == (1, "3")
    with Store(store) as db:
        assert db.prune(now=4e9) == 4  # every alert older than the retention: gone
    assert state() == (0, "-")


def test_ipv6_and_pseudonym_assets_have_pages(tmp_path: Path, token_file: Path,
                                              token: str) -> None:
    """Colons in the address are percent-encoded in the link and decoded by the route."""
    store = tmp_path / "mamori.db"
    base = {"mac": None, "roles": ["outstation"], "units": [1], "links": [],
            "identity": {"unit1.VendorName": "<b>Acme</b>"}, "first_seen": 1e9,
            "last_seen": 1e9 + 5, "learned": True}
    with Store(store) as db:
        # a pair last seen after its asset: a row an older sensor wrote (see asset_docs)
        pair = {"proto": "modbus", "client": "fd00::18", "server": "fd00::17", "port": 502,
                "unit": 1, "link_master": None, "link_outstation": None, "functions": ["3"],
                "ranges": {}, "period": None, "count": 3, "first_seen": 1e9,
                "last_seen": 1e9 + 3600, "learned": True}
        db.save_inventory([base | {"ip": "fd00::17"}, base | {"ip": "pn:" + "ab" * 12}],
                          [pair], None)
    client = _client(store, token_file, token)
    listing = client.get("/assets").text
    for ip, href in (("fd00::17", "/assets/fd00%3A%3A17"),
                     ("pn:" + "ab" * 12, "/assets/pn%3A" + "ab" * 12)):
        assert f'<a href="{href}" class="asset-link">{ip}</a>' in listing
        page = client.get(href)
        assert page.status_code == 200 and f"Asset {ip}" in _text(page.text)
        assert "&lt;b&gt;Acme&lt;/b&gt;" in page.text  # wire strings are escaped
    last = _text(_section(client.get("/assets/fd00%3A%3A17").text, "asset-fields"))
    assert f"Last seen {_ts(1e9 + 3600)}" in last  # widened by its pair
    assert f"Last seen {_ts(1e9 + 5)}" in _text(_section(
        client.get("/assets/pn%3A" + "ab" * 12).text, "asset-fields"))


@pytest.mark.parametrize("until", [253402387139.0, 1e15, -62135596800.0, -1e15])
def test_timeline_window_stays_inside_the_calendar(until: float) -> None:
    """An ``until`` past 9999-12-31 (``9999-12-31T23:59:59-23:59`` parses to one) or
    before year 1 drew labels ``datetime`` cannot name: a 500. The window stays inside."""
    for since in (None, until - 10 * HOUR, until - 1e9):
        win = window(None, since, until, 1e9)
        svg = render_svg(Timeline.from_rows(win, []))
        assert svg.startswith("<svg") and win.hours >= 1
