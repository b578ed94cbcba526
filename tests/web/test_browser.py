"""The page in a real browser: Debian's chromium driven by Playwright, against
``mamori web`` serving a store made by replaying corpus captures.

Screenshots go to the test's tmp dir and are copied to ``out/screenshots/`` (an
artefact, gitignored). Playwright's own browser download is never used.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT, unavailable
from tests.web.conftest import WebProcess, replay_into_store

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = PROJECT / "out" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

from playwright import sync_api  # noqa: E402


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[sync_api.Page]:
    if not CHROMIUM.exists():
        unavailable("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM),
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()


def _shot(page: sync_api.Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTEFACTS / path.name)


def _login(page: sync_api.Page, url: str, token: str) -> None:
    page.goto(f"{url}/login")
    page.fill("#operator", "Aiko Tanaka")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(f"{url}/alerts")


def test_browser_alerts_filters_map_and_live_update(
        browser_page: sync_api.Page, web_server: WebProcess, token: str, modbus_store: Path,
        dnp3_capture: Path, tmp_path: Path) -> None:
    page = browser_page
    url = web_server.url

    # Unauthenticated: the page sends the browser to the login form, the API refuses.
    page.goto(f"{url}/alerts")
    assert page.url == f"{url}/login"
    assert page.request.get(f"{url}/api/alerts").status == 401
    _shot(page, tmp_path, "01-login")

    _login(page, url, token)
    rows = page.locator("#alerts tbody tr")
    precursors = {rows.nth(i).get_attribute("data-precursor") for i in range(rows.count())}
    assert {"M1", "M2", "M3", "M5", "M14"} <= precursors
    assert page.locator("#alerts", has_text="Modbus Force Listen Only Mode").count() == 1
    _shot(page, tmp_path, "02-alerts")

    # Filters: precursor, then severity.
    page.select_option("#f-precursor", "M1")
    page.click("#f-apply")
    page.wait_for_url("**precursor=M1**")
    assert {rows.nth(i).get_attribute("data-precursor") for i in range(rows.count())} == {"M1"}
    _shot(page, tmp_path, "03-filter-precursor")
    page.goto(f"{url}/alerts")
    page.select_option("#f-severity", "high")
    page.click("#f-apply")
    page.wait_for_url("**severity=high**")
    assert {rows.nth(i).get_attribute("data-precursor")
            for i in range(rows.count())} == {"M1", "M2", "M7", "C1", "C2"}

    # Detail: ATT&CK names and guidance; acknowledge records the operator.
    page.goto(f"{url}/alerts?precursor=M1")
    page.locator("#alerts tbody tr a").first.click()
    assert "Denial of Service" in page.inner_text("#attack")
    assert "power-cycle" in page.inner_text("#guidance")
    page.click("#ack")
    assert "Aiko Tanaka" in page.inner_text("#acks")
    _shot(page, tmp_path, "04-alert-detail")

    # Live update: a DNP3 cold restart is replayed into the store while the list is open.
    page.goto(f"{url}/alerts")
    assert page.locator('#alerts tr[data-precursor="D1"]').count() == 0
    replay_into_store(modbus_store, [dnp3_capture])
    # two D1 rows: the restart, and (its master not learned yet) the unauthorised one
    d1 = page.locator('#alerts tr[data-precursor="D1"]')
    d1.first.wait_for(timeout=10_000)
    assert d1.count() == 2
    assert all("restart" in d1.nth(i).inner_text().lower() for i in range(2))
    _shot(page, tmp_path, "05-live-update")

    # Map: nodes and edges, labelled with FC classes, highlighted where alerts are open.
    page.goto(f"{url}/map")
    svg = page.locator("#map svg")
    for ip in ("127.0.0.1", "192.168.60.1", "192.168.60.130"):
        assert svg.locator(f'g.node[data-ip="{ip}"]').count() == 1
    dnp3 = svg.locator('g.edge[data-master="192.168.60.1"][data-outstation="192.168.60.130"]')
    assert dnp3.count() == 1
    assert dnp3.get_attribute("data-proto") == "dnp3"
    assert "diagnostics" in (dnp3.get_attribute("data-classes") or "")
    assert "alert" in (dnp3.get_attribute("class") or "")
    modbus = svg.locator('g.edge[data-master="127.0.0.1"][data-proto="modbus"]')
    assert {"read", "write", "diagnostics"} <= set(
        (modbus.get_attribute("data-classes") or "").split())
    assert "dnp3: diagnostics" in (dnp3.text_content() or "")
    _shot(page, tmp_path, "06-map")

    page.goto(f"{url}/assets")
    assert "Mamori Test Works" in page.inner_text("#assets")
    _shot(page, tmp_path, "07-assets")
    page.goto(f"{url}/health")
    assert page.locator("#not-live").count() == 1
    _shot(page, tmp_path, "08-health")


def test_browser_security_headers_hold_no_console_errors(
        browser_page: sync_api.Page, web_server: WebProcess, token: str) -> None:
    """The CSP blocks nothing the page needs: no console errors, live.js runs."""
    page = browser_page
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    _login(page, web_server.url, token)
    response = page.goto(f"{web_server.url}/map")
    assert response is not None
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    page.wait_for_timeout(2500)  # one live poll
    assert errors == []
