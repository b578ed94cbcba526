"""``/alerts/ID/pcap`` (issue 20): the alert page links the packets; only our files are served."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mamori.parsers.alerts import Severity
from mamori.sensor import config as cfg
from mamori.sensor.alerting.store import Store
from mamori.sensor.cli import main
from mamori.sensor.web.app import create_app
from mamori.sensor.web.server import build_context
from tests.conftest import corpus_path

pytestmark = pytest.mark.corpus

ARKIME = "arkime/tests/pcap/modbus.pcap"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "mamori.db"
    assert main(["replay", "--no-progress", "--store", str(path), str(corpus_path(ARKIME))]) == 0
    return path


@pytest.fixture
def client(store: Path, token_file: Path, token: str) -> TestClient:
    app = create_app(build_context(cfg.load(None), store, token_file=token_file))
    client = TestClient(app, follow_redirects=False)
    assert client.post("/login", data={"operator": "Aiko", "token": token}).status_code == 303
    return client


def _with_and_without(store: Path) -> tuple[int, str, int]:
    with Store(store, readonly=True) as db:
        alerts = db.alerts(min_severity=Severity.MEDIUM)
        with_pcap = next((a.id, p) for a in alerts if (p := db.pcap(a.id)) is not None)
        without = next(a.id for a in alerts if db.pcap(a.id) is None)
    return with_pcap[0], with_pcap[1], without


@pytest.mark.usefixtures("tshark")
def test_the_alert_page_links_its_pcap_and_the_route_serves_it(
        client: TestClient, store: Path, tmp_path: Path) -> None:
    alert_id, pcap, without = _with_and_without(store)
    page = client.get(f"/alerts/{alert_id}")
    assert f'href="/alerts/{alert_id}/pcap"' in page.text
    r = client.get(f"/alerts/{alert_id}/pcap")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.tcpdump.pcap"
    assert r.headers["content-disposition"] == f'attachment; filename="alert-{alert_id}.pcap"'
    assert r.content == Path(pcap).read_bytes()
    download = tmp_path / "download.pcap"
    download.write_bytes(r.content)
    assert subprocess.run(["tshark", "-r", str(download)], capture_output=True).returncode == 0

    assert "/pcap" not in client.get(f"/alerts/{without}").text  # no pcap: no link
    assert client.get(f"/alerts/{without}/pcap").status_code == 404
    assert client.get(f"/alerts/{'9' * 5000}/pcap").status_code == 404
    Path(pcap).unlink()
    gone = client.get(f"/alerts/{alert_id}/pcap")
    assert gone.status_code == 404 and "deleted by retention" in gone.text


def test_the_pcap_route_needs_a_login_or_the_token(store: Path, token_file: Path,
                                                   token: str) -> None:
    alert_id, _, _ = _with_and_without(store)
    app = create_app(build_context(cfg.load(None), store, token_file=token_file))
    anonymous = TestClient(app, follow_redirects=False)
    r = anonymous.get(f"/alerts/{alert_id}/pcap")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    r = anonymous.get(f"/alerts/{alert_id}/pcap", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.content[:4] == b"\xd4\xc3\xb2\xa1"


def test_a_tampered_path_in_the_store_is_never_served(client: TestClient, store: Path,
                                                      tmp_path: Path) -> None:
    alert_id, pcap, _ = _with_and_without(store)
    outside = tmp_path / "elsewhere" / Path(pcap).name  # our name, another directory
    outside.parent.mkdir()
    outside.write_bytes(b"secret")
    link = Path(pcap).with_name("20000101T000000Z-0123456789ab.pcap")
    link.symlink_to(outside)  # our name, in the directory, pointing out of it
    for stored in ("/etc/passwd", str(outside), f"{Path(pcap).parent}/../mamori.db",
                   "pcaps/" + Path(pcap).name, str(link)):
        db = sqlite3.connect(store)
        db.execute("UPDATE alerts SET pcap = ? WHERE id = ?", (stored, alert_id))
        db.commit()
        db.close()
        r = client.get(f"/alerts/{alert_id}/pcap")
        assert r.status_code == 404, stored
        assert b"secret" not in r.content and b"root:" not in r.content
