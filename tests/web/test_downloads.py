"""The page's CSV downloads: behind the login, filtered like the list, streamed in pages."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.alerting.export import ALERT_COLUMNS, ASSET_COLUMNS
from mamori.sensor.alerting.store import Store
from mamori.sensor.web import downloads
from tests.web.test_app import _client, _login


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_csv_downloads_need_a_login_and_follow_the_filters(modbus_store: Path,
                                                           token_file: Path, token: str) -> None:
    client = _client(modbus_store, token_file)
    for path in ("/alerts.csv", "/assets.csv"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login"
    bearer = client.get("/alerts.csv", headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 200

    _login(client, token)
    page = client.get("/alerts?precursor=M1").text
    assert 'href="/alerts.csv?precursor=M1"' in page  # the link carries the filters
    assert 'href="/assets.csv"' in client.get("/assets").text

    r = client.get("/alerts.csv")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="mamori-alerts.csv"'
    assert r.headers["x-content-type-options"] == "nosniff"  # the page's headers apply
    assert r.text.splitlines()[0] == ",".join(ALERT_COLUMNS)
    rows = _rows(r.text)
    with Store(modbus_store, readonly=True) as store:
        stored = {a.id: a for a in store.alerts()}
    assert sorted(int(row["id"]) for row in rows) == sorted(stored)
    for row in rows:
        a = stored[int(row["id"])]
        assert (row["rule"], row["precursor"], row["severity"], int(row["count"])) == (
            a.rule, a.precursor, a.severity.label, a.count)
    only = _rows(client.get("/alerts.csv?precursor=M1").text)
    assert {row["precursor"] for row in only} == {"M1"} and len(only) == 1
    assert client.get("/alerts.csv?since=yesterday-ish").status_code == 400

    assets = _rows(client.get("/assets.csv").text)
    with Store(modbus_store, readonly=True) as store:
        assert [row["ip"] for row in assets] == [a["ip"] for a in store.assets()]
    assert list(assets[0]) == list(ASSET_COLUMNS)


def test_alert_csv_streams_past_one_page(tmp_path: Path, token_file: Path, token: str) -> None:
    store_path = tmp_path / "many.db"
    n = downloads.PAGE * 2 + 7  # three keyset pages
    with Store(store_path) as store:
        store.save_alerts([Alert(f"mamori.test.{i % 3}", "M3", Severity.MEDIUM, ("T0836",),
                                 "=cmd|' /C calc'!A0", "modbus", 1000.0 + i, 1000.0 + i,
                                 src="10.0.0.1", dst="10.0.0.2", dport=502, unit=i % 250)
                           for i in range(n)])
    client = _client(store_path, token_file)
    _login(client, token)
    rows = _rows(client.get("/alerts.csv").text)
    assert len(rows) == n and len({row["id"] for row in rows}) == n
    assert [int(r["id"]) for r in rows] == sorted((int(r["id"]) for r in rows), reverse=True)
    assert {row["title"] for row in rows} == {"'=cmd|' /C calc'!A0"}  # no formula
