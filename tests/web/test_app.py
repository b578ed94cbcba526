"""The web app through Starlette's test client: auth, headers, filters, paging, ack."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor import config as cfg
from mamori.sensor.alerting.store import Store
from mamori.sensor.web.app import create_app, parse_filter
from mamori.sensor.web.server import build_context


def _client(store: Path, token_file: Path) -> TestClient:
    conf = cfg.load(None)
    return TestClient(create_app(build_context(conf, store, token_file=token_file)),
                      follow_redirects=False)


def _login(client: TestClient, token: str, name: str = "Aiko Tanaka") -> str:
    r = client.post("/login", data={"operator": name, "token": token})
    assert r.status_code == 303, r.text
    page = client.get("/alerts")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found
    return found.group(1)


@pytest.fixture
def client(modbus_store: Path, token_file: Path) -> TestClient:
    return _client(modbus_store, token_file)


def test_unauthenticated_requests_are_refused(client: TestClient) -> None:
    r = client.get("/alerts")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    for path in ("/api/alerts", "/api/health"):
        assert client.get(path).status_code == 401
    assert client.post("/alerts/1/ack", data={"csrf": "x"}).status_code == 401
    assert client.get("/api/alerts", headers={"Authorization": "Bearer wrong"}).status_code \
        == 401


def test_wrong_token_is_refused(client: TestClient) -> None:
    r = client.post("/login", data={"operator": "x", "token": "not-the-token"})
    assert r.status_code == 401
    assert "mamori_session" not in r.headers.get("set-cookie", "")


def test_session_cookie_and_security_headers(client: TestClient, token: str) -> None:
    r = client.post("/login", data={"operator": "Aiko", "token": token})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = client.get("/alerts")
    assert page.status_code == 200
    h = page.headers
    assert "default-src 'self'" in h["content-security-policy"]
    assert "frame-ancestors 'none'" in h["content-security-policy"]
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    assert h["cache-control"] == "no-store"
    assert "<script>" not in page.text and "style=" not in page.text  # CSP: no inline


def test_bearer_token_reads_the_api(client: TestClient, token: str) -> None:
    r = client.get("/api/alerts?after=0", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    # The sample's attack also completes two campaign chains (rules/chains.yaml):
    # reconnaissance then action (C1), and blinding (M3, counters cleared) then action (C2).
    assert {a["precursor"] for a in r.json()["alerts"]} == {"M1", "M2", "M3", "M4", "M5", "M7",
                                                            "M14", "C1", "C2"}


def test_filters(client: TestClient, token: str) -> None:
    _login(client, token)
    text = client.get("/alerts?precursor=M1").text
    assert 'data-precursor="M1"' in text and 'data-precursor="M2"' not in text
    high = client.get("/alerts?severity=high").text
    assert set(re.findall(r'data-precursor="(\w+)"', high)) == {"M1", "M2", "M7", "C1", "C2"}
    assert "No alerts match" in client.get("/alerts?asset=10.9.9.9").text
    assert 'data-precursor="M1"' in client.get("/alerts?asset=127.0.0.1").text
    assert "No alerts match" in client.get("/alerts?until=2001-01-01").text
    bad = client.get("/alerts?since=yesterday-ish")
    assert bad.status_code == 200 and "neither a duration" in bad.text


def test_parse_filter_times() -> None:
    filt, _, problems = parse_filter({"since": "2h", "until": "2025-01-31"}, now=10_000.0)
    assert not problems and filt.since == 10_000.0 - 7200
    assert filt.until == 1738281600.0


def test_alert_detail_shows_attack_names_and_guidance(client: TestClient, token: str) -> None:
    _login(client, token)
    listing = client.get("/alerts?precursor=M1").text
    alert_id = re.search(r'data-id="(\d+)"', listing)
    assert alert_id
    page = client.get(f"/alerts/{alert_id.group(1)}").text
    assert "T0814" in page and "Denial of Service" in page
    assert "Block Reporting Message" in page  # T0804 and its v19 id T1691.002
    assert "power-cycle" in page  # the rule's guidance
    assert "First seen" in page and "Evidence" in page
    assert client.get("/alerts/99999").status_code == 404


def test_acknowledge_needs_csrf_and_is_audited(client: TestClient, token: str,
                                               modbus_store: Path) -> None:
    csrf = _login(client, token, "Aiko Tanaka")
    assert client.post("/alerts/1/ack", data={"csrf": "forged"}).status_code == 403
    assert client.post("/alerts/1/ack", data={"csrf": csrf},
                       headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/alerts/1/ack", data={"csrf": csrf},
                       headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    r = client.post("/alerts/1/ack", data={"csrf": csrf})
    assert r.status_code == 303
    page = client.get("/alerts/1").text
    assert "Aiko Tanaka" in page and 'id="alert-state">acknowledged' in page
    rows = sqlite3.connect(modbus_store).execute(
        "SELECT operator, action, alert_id FROM operator_audit").fetchall()
    assert rows == [("Aiko Tanaka", "ack", 1)]
    assert "acknowledged" in client.get("/alerts?state=acked").text
    assert 'data-id="1"' not in client.get("/alerts?state=open").text


def test_acknowledged_alert_reopens_when_it_fires_again(client: TestClient, token: str,
                                                        modbus_store: Path) -> None:
    csrf = _login(client, token)
    client.post("/alerts/1/ack", data={"csrf": csrf})
    with sqlite3.connect(modbus_store) as db:
        db.execute("UPDATE alerts SET count = count + 1 WHERE id = 1")
    assert 'id="alert-state">open' in client.get("/alerts/1").text


def test_keyset_pagination(tmp_path: Path, token_file: Path, token: str) -> None:
    store = tmp_path / "many.db"
    with Store(store) as db:
        db.save_alerts(Alert(rule="r", precursor="M7", severity=Severity.LOW, attack=(),
                             title=f"alert {i}", proto="modbus", first_ts=float(i),
                             last_ts=float(i), src="10.0.0.1", dst="10.0.0.2")
                       for i in range(120))
    client = _client(store, token_file)
    _login(client, token)
    first = client.get("/alerts").text
    ids = [int(i) for i in re.findall(r'data-id="(\d+)"', first)]
    assert ids == list(range(120, 70, -1))
    older = re.search(r'href="/alerts\?before=(\d+)"', first)
    assert older and older.group(1) == "71"
    second = client.get("/alerts?before=71").text
    assert [int(i) for i in re.findall(r'data-id="(\d+)"', second)] == list(range(70, 20, -1))


def test_map_and_assets(client: TestClient, token: str) -> None:
    _login(client, token)
    svg = client.get("/map.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert 'data-master="127.0.0.1"' in svg.text and 'class="edge alert"' in svg.text
    assets = client.get("/assets").text
    assert "Mamori Test Works" in assets and "MTW-PLC-1" in assets
    assert "modbus 8/4" in assets


def test_health_standalone_says_it_is_not_live(client: TestClient, token: str) -> None:
    _login(client, token)
    page = client.get("/health").text
    assert 'id="not-live"' in page
    _login(client, token)


def test_read_only_store_disables_ack(modbus_store: Path, token_file: Path, token: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mamori.sensor.web import audit

    def refuse(self: audit.OperatorAudit) -> None:
        raise audit.AuditError("read-only")
    monkeypatch.setattr(audit.OperatorAudit, "ensure", refuse)
    client = _client(modbus_store, token_file)
    csrf = _login(client, token)
    assert client.post("/alerts/1/ack", data={"csrf": csrf}).status_code == 409
    assert "Acknowledging is unavailable" in client.get("/alerts/1").text


def test_a_chain_alert_lists_its_steps_linked_to_their_alerts(
        client: TestClient, token: str, modbus_store: Path) -> None:
    """The sample completes C1 (recon, then the intruder's write): its page names each
    step with its alert, rule and time, each linked to that alert's own page."""
    from mamori.sensor.alerting.store import Store

    _login(client, token)
    with Store(modbus_store, readonly=True) as db:
        alerts = {a.id: a for a in db.alerts()}
    chain = next(a for a in alerts.values() if a.precursor == "C1")
    steps = chain.evidence["steps"]
    page = client.get(f"/alerts/{chain.id}").text
    evidence = page[page.index('id="evidence"'):]
    evidence = evidence[:evidence.index("</table>")]
    assert 'data-key="ids"' not in evidence  # bookkeeping, not evidence
    for step in steps:
        stepped = alerts[step["alert"]]
        assert stepped.rule == step["rule"]
        assert (f'<a href="/alerts/{stepped.id}">{step["step"]}: alert {stepped.id}, '
                f'{stepped.rule}, {step["time"]}</a>') in evidence
