"""Issue 18 at the collector: two live sensors report a device each, the collector says
which sites run affected devices per advisory, and an import there re-evaluates them.

Real processes throughout: a ``mamori collect`` collector, two ``mamori run`` daemons
on ``lo`` forwarding to it (one after the other, so each sees only its own site's
device), and pymodbus servers announcing a Siemens SENTRON PAC3200 (V2.4.4 at the
first site, inside ICSA-21-068-06's ``< V2.4.7``; V2.4.7 at the second, outside it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.wire import MAX_MAP, MAX_MESSAGE_BYTES, MAX_STR, Kind, decode, encode
from mamori.sensor.advisories.national import IdentityFeed, asset_body
from mamori.sensor.cli import main
from tests.conftest import csaf_path, unavailable
from tests.ports import free_port
from tests.sensor.test_advisories_traffic import (
    AFFECTED_HOST,
    AFFECTED_REV,
    ALL_VERSIONS,
    FILES,
    FIXED_HOST,
    FIXED_REV,
    _poll_identity,
    _server,
)
from tests.sensor.test_collector import Site
from tests.sensor.test_daemon import MAMORI, NotifySocket

SITES = {"s0": ("north", AFFECTED_HOST, AFFECTED_REV), "s1": ("south", FIXED_HOST, FIXED_REV)}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    if os.geteuid() != 0:
        unavailable("packet sockets need root")
    s = Site(tmp_path, sensors=2)
    yield s
    if s.proc is not None:
        s.proc.kill()
        s.proc.wait(timeout=10)


def _run_sensor(site: Site, name: str, port: int) -> None:
    """One ``mamori run`` that sees its site's PAC3200 answer FC 43/14, then stops."""
    region, host, revision = SITES[name]
    conf = site.tmp / f"{name}.toml"
    text = conf.read_text(encoding="utf-8").replace(
        "[sensor]\n", f'[sensor]\nname = "{name}"\nsite = "{region}"\nsector = "water"\n', 1)
    conf.write_text(text + f'[capture]\ninterfaces = ["lo"]\n[ports]\nmodbus = [{port}]\n',
                    encoding="utf-8")
    notify = NotifySocket(site.tmp / f"notify-{name}")
    proc = subprocess.Popen([MAMORI, "run", "--config", str(conf)],
                            env=dict(os.environ, NOTIFY_SOCKET=str(notify.path)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert notify.wait_for("READY=1", 15), notify.messages
        with _server(host, port, revision):
            _poll_identity(host, port)
        time.sleep(0.5)  # capture blocks retire on their timeout
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        notify.close()
    assert proc.returncode == 0, err


def _view(capsys: pytest.CaptureFixture[str], site: Site, *extra: str
          ) -> dict[str, dict[str, Any]]:
    status = main(["collect", "advisories", "--config", str(site.collector_conf), "--json",
                   *extra])
    out, err = capsys.readouterr()
    assert status == 0, err
    return {row["advisory"]: row for row in map(json.loads, out.splitlines())}


def test_collector_lists_sites_per_advisory_and_reevaluates_on_import(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    site.start_collector()
    for name in SITES:
        _run_sensor(site, name, port)
    site.stop_collector()  # the national view needs no running collector, nor sensors

    storage = site.storage()
    try:
        reported = storage.latest_assets()
    finally:
        storage.close()
    by_ip = {body["ip"]: body for _, body, _ in reported}
    assert by_ip[AFFECTED_HOST]["identity"]["unit1.MajorMinorRevision"] == AFFECTED_REV
    assert by_ip[FIXED_HOST]["identity"]["unit1.MajorMinorRevision"] == FIXED_REV

    # The collector's index first holds only the 2024 advisory (no fix: both sites).
    first = _view(capsys, site, "--import", str(csaf_path(FILES[2])))
    assert set(first) == {ALL_VERSIONS}
    assert first[ALL_VERSIONS]["sites"] == ["water/north", "water/south"]
    assert first[ALL_VERSIONS]["cves"] == ["CVE-2024-41798"]

    # Importing the older advisories at the collector re-evaluates what was reported:
    # the north site's V2.4.4 is affected, the south site's V2.4.7 is not.
    second = _view(capsys, site, "--import", str(csaf_path(FILES[0])),
                   "--import", str(csaf_path(FILES[1])))
    assert set(second) == {ALL_VERSIONS, "ICSA-21-068-06", "ICSA-20-343-05"}
    for adv in ("ICSA-21-068-06", "ICSA-20-343-05"):
        row = second[adv]
        assert row["sites"] == ["water/north"], row
        assert [(d["ip"], d["sensor"], d["affected"], d["version"]) for d in row["devices"]] \
            == [(AFFECTED_HOST, "s0", True, AFFECTED_REV)]
        assert row["cves"] and row["cvss"]

    status = main(["collect", "advisories", "--config", str(site.collector_conf)])
    text, err = capsys.readouterr()
    assert status == 0 and "ICSA-21-068-06" in text and "water/north" in text
    assert "3 advisory(ies) affect devices at 2 site(s); 2 device identity(ies)" in err


def test_asset_record_fits_the_wire() -> None:
    """An identity beyond the wire's limits is cut to them, never refused by the collector."""
    identity = {f"unit{i}.VendorName": "x" * (MAX_STR + 50) for i in range(MAX_MAP + 40)}
    body = asset_body({"ip": "10.0.0.9", "identity": identity, "first_seen": 1.0})
    assert body is not None
    assert 40 < len(body["identity"]) <= MAX_MAP  # as many as fit one message
    assert all(len(v) == MAX_STR for v in body["identity"].values())
    frame = encode(1, 1, 1.0, Kind.ASSET, body)
    assert len(frame) <= MAX_MESSAGE_BYTES
    assert decode(frame).body["ip"] == "10.0.0.9"  # the collector's own validation
    wide = {f"unit{i}.ProductName": "\u00e9" * MAX_STR for i in range(MAX_MAP)}  # 2 B/char
    frame = encode(1, 1, 1.0, Kind.ASSET, asset_body({"ip": "10.0.0.9", "identity": wide}))
    assert all(len(v) == MAX_STR // 2 for v in decode(frame).body["identity"].values())
    few = {f"unit{i}.VendorName": "Siemens AG" for i in range(MAX_MAP + 40)}
    body = asset_body({"ip": "10.0.0.9", "identity": few})
    assert body is not None and len(body["identity"]) == MAX_MAP
    assert asset_body({"ip": "10.0.0.9", "identity": {"unit1.VendorName": " "}}) is None


def test_identity_feed_sends_changes_only() -> None:
    feed = IdentityFeed()
    asset = {"ip": "10.0.0.9", "identity": {"unit1.VendorName": "Siemens AG"},
             "last_seen": 1.0}
    assert [b["ip"] for b in feed.changed([asset])] == ["10.0.0.9"]
    assert feed.changed([dict(asset, last_seen=2.0)]) == []  # seen again, same identity
    changed = dict(asset, identity={"unit1.VendorName": "Siemens AG",
                                    "unit1.MajorMinorRevision": "V2.4.4"})
    assert len(feed.changed([changed])) == 1
