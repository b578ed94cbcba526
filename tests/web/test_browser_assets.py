"""Asset pages, the alert timeline and readable evidence in Debian's chromium, against
``mamori web`` serving a store of 300 assets: three corpus captures replayed, and
their hosts, pairs and alerts repeated onto more addresses (the alerts spread over
two days, so the timeline has bars to draw).

Screenshots: the test's tmp dir and ``out/screenshots/`` (gitignored).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.alerting.store import Store
from mamori.sensor.web.timeline import HOUR
from tests.conftest import corpus_path
from tests.web.conftest import WebProcess, replay_into_store
from tests.web.test_asset_pages import DNP3, MODBUS, POLLED, _replay_with_baseline
from tests.web.test_browser import _login, _shot, browser_page

pytestmark = pytest.mark.browser
__all__ = ["browser_page"]  # the fixture, imported for this module's tests

ASSETS = 300
BASE = 1_764_547_200.0  # 2025-12-01 00:00 UTC: where the repeated alerts start


def _renumber(doc: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    out = dict(doc)
    for key in ("ip", "client", "server"):
        if key in out:
            out[key] = mapping[out[key]]
    return out


def fill_store(path: Path, assets: int = ASSETS) -> None:
    """Real captures, then copies of their inventory and alerts on new addresses until
    the store holds ``assets`` assets."""
    _replay_with_baseline(path, corpus_path(POLLED))
    replay_into_store(path, [corpus_path(MODBUS)])
    replay_into_store(path, [corpus_path(DNP3)])
    with Store(path) as db:
        real_assets, real_pairs, real_alerts = db.assets(), db.pairs(), db.alerts()
        copies = 0
        new_assets: list[dict[str, Any]] = []
        new_pairs: list[dict[str, Any]] = []
        new_alerts: list[Alert] = []
        while len(real_assets) + len(new_assets) < assets:
            copies += 1
            mapping = {a["ip"]: str(ipaddress.IPv4Address(f"10.{100 + copies}.0.0") + i + 1)
                       for i, a in enumerate(real_assets)}
            room = assets - len(real_assets) - len(new_assets)
            chosen = real_assets[:room]
            kept = {a["ip"] for a in chosen}
            new_assets += [_renumber(a, mapping) for a in chosen]
            new_pairs += [_renumber(p, mapping) for p in real_pairs
                          if p["client"] in kept and p["server"] in kept]
            for n, a in enumerate(real_alerts):
                if (a.src and a.src not in kept) or (a.dst and a.dst not in kept):
                    continue
                at = BASE + ((copies * 7 + n * 5) % 48) * HOUR + n
                new_alerts.append(replace(
                    a, id=0, src=mapping.get(a.src or "", a.src),
                    dst=mapping.get(a.dst or "", a.dst), first_ts=at, last_ts=at + 30))
        db.save_alerts(new_alerts)
        db.save_inventory(new_assets, new_pairs, None)
        assert len(db.assets()) == assets


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "mamori.db"
    fill_store(path)
    return path


@pytest.fixture
def big_server(big_store: Path, token_file: Path) -> Iterator[WebProcess]:
    server = WebProcess(big_store, token_file)
    yield server
    server.stop()


def test_browser_asset_pages_timeline_and_evidence(
        browser_page: sync_api.Page, big_server: WebProcess, big_store: Path, token: str,
        tmp_path: Path) -> None:
    page = browser_page
    url = big_server.url
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    with Store(big_store, readonly=True) as db:
        alerts = db.alerts()
    _login(page, url, token)

    # The alert list: the timeline's bars add up to the store's alerts in its window.
    bars = page.locator("#timeline svg g.hour")
    assert bars.count() > 24
    timeline = page.locator("#timeline")
    start = int(timeline.get_attribute("data-start") or "0")
    hours = int(timeline.get_attribute("data-hours") or "0")
    folded = [a for a in alerts if start <= a.first_ts < start + hours * HOUR
              and not (a.precursor.startswith("S") and a.severity <= Severity.LOW)]
    assert sum(int(bars.nth(i).get_attribute("data-total") or "0")
               for i in range(bars.count())) == len(folded)
    assert int(timeline.get_attribute("data-total") or "0") == len(folded)
    hidden = page.locator("#health-folded")
    assert "sensor-health alerts" in hidden.inner_text()
    assert page.locator('#alerts tr[data-precursor="S2"]').count() == 0
    _shot(page, tmp_path, "20-alerts-timeline")
    page.goto(f"{url}/alerts?asset=10.0.0.57")  # its capture began mid-stream: S2
    assert page.locator('#alerts tr[data-precursor="S2"]').count() == 0
    page.click("#show-health")
    page.wait_for_url("**health=show**")
    assert page.locator('#alerts tr[data-precursor="S2"]').count() > 0
    _shot(page, tmp_path, "21-alerts-health-shown")

    # From the list to an asset page, and from there to a peer's.
    page.goto(f"{url}/alerts?precursor=M7")
    link = page.locator("#alerts tbody tr a.asset-link").first
    ip = link.inner_text()
    link.click()
    page.wait_for_url(f"**/assets/{ip}")
    assert ip in page.inner_text("h1")
    page.goto(f"{url}/assets/141.81.0.86")
    assert "learned:" in page.inner_text("#asset-peers")
    assert "Read Input Registers" in page.inner_text("#asset-functions")
    assert page.locator("#timeline").count() == 1
    _shot(page, tmp_path, "22-asset-page")
    peer = page.locator("#asset-peers a.asset-link").first
    peer_ip = peer.inner_text()
    peer.click()
    page.wait_for_url(f"**/assets/{peer_ip}")
    assert "141.81.0.86" in page.inner_text("#asset-peers")
    page.goto(f"{url}/assets/10.0.0.3")
    assert "Server ID (FC 17)" in page.inner_text("#asset-identity")
    assert page.locator("#timeline svg g.hour").count() > 0
    _shot(page, tmp_path, "23-asset-page-modbus-dnp3")

    # An alert's evidence in words: a DNP3 control with its CROB header.
    d7 = next(a for a in alerts if a.precursor == "D7" and a.dst == "192.168.66.34"
              and "objects" in a.evidence)
    page.goto(f"{url}/alerts/{d7.id}")
    evidence = page.inner_text("#evidence")
    assert "3 Select" in evidence and "g12v1 q0x28 count 1 (binary output command)" in evidence
    assert "None" not in evidence and "{'" not in evidence
    _shot(page, tmp_path, "24-alert-evidence-dnp3")
    m7 = next(a for a in alerts if a.precursor == "M7" and a.evidence.get("address"))
    page.goto(f"{url}/alerts/{m7.id}")
    assert f"start {m7.evidence['address']}" in page.inner_text("#evidence")
    _shot(page, tmp_path, "25-alert-evidence-modbus")

    page.goto(f"{url}/assets")
    assert page.locator("#assets tbody tr").count() == ASSETS
    _shot(page, tmp_path, "26-assets-300")
    page.goto(f"{url}/map")  # every page at this size, for the record
    assert page.locator("svg.commap g.node").count() == ASSETS
    _shot(page, tmp_path, "27-map-300")
    page.goto(f"{url}/health")
    _shot(page, tmp_path, "28-health")
    assert errors == []  # the CSP blocked nothing the pages need
