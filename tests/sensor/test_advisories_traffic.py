"""Issue 18 on traffic made in the test: pymodbus servers announcing a real advisory's product.

Two pymodbus servers on loopback (127.0.0.21 and 127.0.0.22, one port) announce
by FC 43/14 and FC 17 the identity of a Siemens SENTRON PAC3200 power meter, a
Modbus TCP device named in three real CISA advisories of ``../shared/csaf``:

* ICSA-21-068-06: SENTRON PAC3200 ``< V2.4.7``
* ICSA-20-343-05: SENTRON PAC3200 ``< V2.4.5``
* ICSA-24-284-04: SENTRON 7KM PAC3200 ``vers:all/*`` (no fix)

The first announces V2.4.4 (inside both bounded ranges), the second V2.4.7
(outside both). tcpdump captures ``lo``, the capture is replayed through the
sensor's pipeline and inventory, and what the inventory learned is matched.
Then the same capture goes through the CLI: the inventory is stored, the
advisories are imported, ``mamori assets --vulnerable`` lists the affected
device, and the import raised one low alert per (asset, advisory), once.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor import config as cfg
from mamori.sensor.advisories.csaf import read_document
from mamori.sensor.advisories.index import AdvisoryIndex
from mamori.sensor.advisories.live import AdvisoryWatch
from mamori.sensor.advisories.matcher import Confidence, Match, Matcher
from mamori.sensor.alerting.store import Store
from mamori.sensor.cli import main
from mamori.sensor.web.app import create_app
from mamori.sensor.web.auth import create_token_file
from mamori.sensor.web.server import build_context
from tests.conftest import csaf_path, require_tool, unavailable
from tests.peers.capture import capture
from tests.peers.listening import wait_listening
from tests.peers.modbus_peer import terminate
from tests.ports import free_port
from tests.sensor.test_advisories_match import replay_inventory

AFFECTED_HOST, FIXED_HOST = "127.0.0.21", "127.0.0.22"
AFFECTED_REV, FIXED_REV = "V2.4.4", "V2.4.7"
BOUNDED = ("ICSA-21-068-06", "ICSA-20-343-05")  # < V2.4.7 and < V2.4.5
ALL_VERSIONS = "ICSA-24-284-04"
FILES = ("ot/2021/icsa-21-068-06.json", "ot/2020/icsa-20-343-05.json",
         "ot/2024/icsa-24-284-04.json")

# What a PAC3200 announces (vendor, order number, firmware, product, model). Run as
# ``python -c SERVER HOST PORT REVISION``; the identity is fixed, the revision varies.
SERVER = """
import asyncio, sys
from pymodbus import ModbusDeviceIdentification
from pymodbus.server import StartAsyncTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType
host, port, revision = sys.argv[1], int(sys.argv[2]), sys.argv[3]
device = SimDevice(id=1, simdata=([SimData(0, count=10, values=0, datatype=DataType.BITS)],
    [SimData(0, count=10, values=0, datatype=DataType.BITS)],
    [SimData(0, count=10, values=1, datatype=DataType.REGISTERS)],
    [SimData(0, count=10, values=1, datatype=DataType.REGISTERS)]))
identity = ModbusDeviceIdentification(info_name={
    "VendorName": "Siemens AG", "ProductCode": "7KM2112-0BA00-3AA0",
    "MajorMinorRevision": revision, "VendorUrl": "http://www.siemens.com",
    "ProductName": "SENTRON PAC3200", "ModelName": "PAC3200"})
asyncio.run(StartAsyncTcpServer(context=[device], identity=identity, address=(host, port)))
"""


@contextlib.contextmanager
def _server(host: str, port: int, revision: str) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, host, str(port), revision],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not wait_listening(host, port, 10, proc):
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            unavailable(f"pymodbus server on {host}:{port} did not start: {err[-300:]}")
        yield
    finally:
        terminate(proc)




@dataclass
class Traffic:
    pcap: Path
    port: int
    assets: dict[str, dict[str, Any]]  # ip -> the inventory's asset dict


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    require_tool("tcpdump")
    import pymodbus.client as pymodbus_client

    port = free_port()
    pcap = tmp_path_factory.mktemp("advisory-traffic") / "pac3200.pcap"
    with capture(pcap, port):
        for host, revision in ((AFFECTED_HOST, AFFECTED_REV), (FIXED_HOST, FIXED_REV)):
            with _server(host, port, revision):
                scada = pymodbus_client.ModbusTcpClient(host, port=port, timeout=2)
                scada.connect()
                scada.read_holding_registers(0, count=2, device_id=1)
                scada.read_device_information(read_code=1, object_id=0, device_id=1)
                scada.read_device_information(read_code=2, object_id=0, device_id=1)
                scada.report_device_id(device_id=1)
                scada.close()
    if pcap.stat().st_size < 500:
        unavailable("tcpdump captured nothing on lo")
    inventory = replay_inventory([pcap], PipelineConfig(modbus_ports=frozenset({port})))
    assets = {a.ip: a.to_dict() for a in inventory.assets.values()}
    return Traffic(pcap, port, assets)




def _by_id(matches: list[Match]) -> dict[str, Match]:
    return {m.advisory_id: m for m in matches}


def _tshark_frames(pcap: Path, option: tuple[str, str], display_filter: str) -> list[int]:
    """Wireshark's numbers of the frames that match ``display_filter``."""
    out = subprocess.run(["tshark", "-r", str(pcap), *option, "-Y", display_filter,
                          "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [int(line) for line in out.split()]


def test_identity_sightings_name_the_frames_wireshark_shows(traffic: Traffic) -> None:
    """Each identity string keeps the frames of its first and last FC 43/14 (or 17) response.

    The client asks twice (basic, then regular objects): VendorName is in both
    responses, ProductName only in the second, and the FC 17 answer is a third.
    """
    require_tool("tshark")
    for host in (AFFECTED_HOST, FIXED_HOST):
        where = f"ip.src == {host} && tcp.srcport == {traffic.port}"
        port = ("-o", f"mbtcp.tcp.port:{traffic.port}")  # responses come from this port
        mei = _tshark_frames(traffic.pcap, port,
                             f"{where} && modbus.func_code == 43 && modbus.mei == 14 && "
                             f'modbus.object_str_value == "Siemens AG"')
        fc17 = _tshark_frames(traffic.pcap, port, f"{where} && modbus.func_code == 17")
        assert len(mei) == 2 and len(fc17) == 1, (mei, fc17)
        seen = traffic.assets[host]["identity_seen"]
        assert (seen["unit1.VendorName"]["first_frame"],
                seen["unit1.VendorName"]["last_frame"]) == (mei[0], mei[1])
        assert (seen["unit1.ProductName"]["first_frame"],
                seen["unit1.ProductName"]["last_frame"]) == (mei[1], mei[1])
        assert seen["unit1.server_id_data"]["first_frame"] == fc17[0]
        vendor = seen["unit1.VendorName"]
        assert traffic.assets[host]["first_seen"] <= vendor["first_seen"] \
            < vendor["last_seen"] <= traffic.assets[host]["last_seen"]


def test_inventory_learned_the_announced_identity(traffic: Traffic) -> None:
    for host, revision in ((AFFECTED_HOST, AFFECTED_REV), (FIXED_HOST, FIXED_REV)):
        identity = traffic.assets[host]["identity"]
        assert identity["unit1.VendorName"] == "Siemens AG"
        assert identity["unit1.ProductName"] == "SENTRON PAC3200"
        assert identity["unit1.MajorMinorRevision"] == revision
        assert "unit1.server_id_data" in identity  # FC 17 was answered and decoded


def test_version_inside_the_range_matches(traffic: Traffic, matcher: Matcher) -> None:
    found = _by_id(matcher.match_asset(traffic.assets[AFFECTED_HOST]))
    for adv in (*BOUNDED, ALL_VERSIONS):
        assert found[adv].confidence is Confidence.EXACT, adv
    m = found["ICSA-21-068-06"]
    assert m.ranges == ("< V2.4.7",)
    assert m.cves and m.cvss is not None
    assert m.evidence["version"] == AFFECTED_REV
    assert m.evidence["identity"]["unit1.ProductName"] == "SENTRON PAC3200"
    assert m.evidence["first_seen"] is not None
    frames = m.evidence["frames"]["unit1.MajorMinorRevision"]
    assert frames["message"].startswith("Modbus FC 43/14")
    seen = traffic.assets[AFFECTED_HOST]["identity_seen"]["unit1.MajorMinorRevision"]
    assert frames["first_frame"] == seen["first_frame"] and frames["first_frame"] > 0
    assert frames["last_seen"] == seen["last_seen"]
    affected = {m.advisory_id for m in found.values() if m.confidence.affected}
    assert affected == {*BOUNDED, ALL_VERSIONS}, affected  # and no other Siemens product


def test_version_outside_the_range_does_not_match(traffic: Traffic, matcher: Matcher) -> None:
    found = _by_id(matcher.match_asset(traffic.assets[FIXED_HOST]))
    for adv in BOUNDED:
        assert adv not in found, adv  # not even vendor-only: the advisory names it as fixed
    # The 2024 advisory has no fix: every PAC3200 is affected, whatever it runs.
    assert found[ALL_VERSIONS].confidence is Confidence.EXACT
    assert {m.advisory_id for m in found.values() if m.confidence.affected} == {ALL_VERSIONS}


def test_vendor_only_matches_are_never_affected(traffic: Traffic, matcher: Matcher) -> None:
    matches = matcher.match_asset(traffic.assets[FIXED_HOST])
    vendor_only = [m for m in matches if m.confidence is Confidence.VENDOR]
    assert len(vendor_only) > 100  # Siemens has hundreds of advisories ...
    assert not any(m.confidence.affected for m in vendor_only)  # ... none says this device


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_import_vulnerable_view_and_one_alert_each(
        traffic: Traffic, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "sensor.toml"
    config.write_text("", encoding="utf-8")
    store_path, index = tmp_path / "store.db", tmp_path / "advisories.db"
    with Store(store_path) as store:
        store.save_inventory(list(traffic.assets.values()), [], None)
    files = [str(csaf_path(f)) for f in FILES]
    common = ("--index", str(index), "--store", str(store_path), "--config", str(config))

    status, out, err = _cli(capsys, "advisories", "import", *files, *common)
    assert status == 0, err
    assert "imported 3 document(s)" in out
    assert "4 new advisory alert(s)" in err  # 3 for V2.4.4, 1 (no fix) for V2.4.7

    status, out, err = _cli(capsys, "assets", "--vulnerable", "--json", *common)
    assert status == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert {(r["ip"], r["advisory"]) for r in rows} == {
        (AFFECTED_HOST, a) for a in (*BOUNDED, ALL_VERSIONS)} | {(FIXED_HOST, ALL_VERSIONS)}
    assert all(r["affected"] and r["cves"] and r["cvss"] for r in rows)
    assert all(r["remediations"] for r in rows)
    assert all(r["evidence"]["frames"]["unit1.MajorMinorRevision"]["first_frame"] ==
               traffic.assets[r["ip"]]["identity_seen"]["unit1.MajorMinorRevision"][
                   "first_frame"] for r in rows)
    status, text, _ = _cli(capsys, "assets", "--vulnerable", *common)
    assert status == 0 and "ICSA-21-068-06" in text and "vendor_fix" in text
    revision = traffic.assets[AFFECTED_HOST]["identity_seen"]["unit1.MajorMinorRevision"]
    assert (f"seen: unit1.MajorMinorRevision in Modbus FC 43/14 Read Device Identification "
            f"response, unit 1, MajorMinorRevision; frame {revision['first_frame']} at "
            f"20") in text

    with Store(store_path, readonly=True) as store:
        alerts = [a for a in store.alerts() if a.rule == "mamori.advisory.affected_device"]
    assert sorted((a.dst, a.evidence["advisory"]) for a in alerts) == sorted(
        (r["ip"], r["advisory"]) for r in rows)
    assert all(a.severity.label == "low" and a.evidence["cves"] for a in alerts)
    for a in alerts:  # the alert says which frames carried the version it matched
        assert a.evidence["frames"]["unit1.MajorMinorRevision"] == {
            "message": a.evidence["seen_in"]["unit1.MajorMinorRevision"],
            **traffic.assets[a.dst or ""]["identity_seen"]["unit1.MajorMinorRevision"]}

    # Importing again (same revisions) or matching again raises nothing new.
    status, out, err = _cli(capsys, "advisories", "import", *files, *common)
    assert status == 0 and "3 unchanged or older" in out and "new advisory alert" not in err
    status, _, err = _cli(capsys, "advisories", "match", "--alert", *common)
    assert status == 0 and "0 new advisory alert(s)" in err
    with Store(store_path, readonly=True) as store:
        assert len([a for a in store.alerts()
                    if a.rule == "mamori.advisory.affected_device"]) == len(alerts)


def test_daemon_watch_alerts_new_assets_once(traffic: Traffic, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """The daemon's side: the index is there first, then the devices appear."""
    index_path = tmp_path / "advisories.db"
    watch = AdvisoryWatch(index_path)
    assert watch.check(traffic.assets.values()) == []  # no index yet: nothing, no error
    with AdvisoryIndex(index_path) as index:
        for f in FILES:
            index.put(read_document(csaf_path(f)))

    fixed = traffic.assets[FIXED_HOST]
    first = watch.check([fixed], now=100.0)
    assert [(a.dst, a.evidence["advisory"]) for a in first] == [(FIXED_HOST, ALL_VERSIONS)]
    alert = first[0]
    assert alert.rule == "mamori.advisory.affected_device" and alert.severity.label == "low"
    assert alert.evidence["cves"] == ["CVE-2024-41798"]
    assert alert.evidence["seen_in"]["unit1.MajorMinorRevision"].startswith("Modbus FC 43/14")
    assert watch.check([fixed], now=101.0) == []  # unchanged inventory: not matched again

    both = watch.check(traffic.assets.values(), now=102.0)  # a new device appears
    assert sorted(a.evidence["advisory"] for a in both) == sorted((*BOUNDED, ALL_VERSIONS))
    assert {a.dst for a in both} == {AFFECTED_HOST}

    # A second watch (a restarted daemon) and an identity change alert nothing again.
    again = AdvisoryWatch(index_path)
    changed = dict(fixed, identity=dict(fixed["identity"],
                                        **{"unit1.MajorMinorRevision": AFFECTED_REV}))
    raised = again.check([traffic.assets[AFFECTED_HOST], changed], now=103.0)
    assert sorted(a.evidence["advisory"] for a in raised) == sorted(BOUNDED)  # downgraded
    assert again.check([traffic.assets[AFFECTED_HOST], changed], now=104.0) == []

    index_path.write_bytes(b"not sqlite" * 100)
    broken = AdvisoryWatch(index_path)
    with caplog.at_level("WARNING", logger="mamori.advisories"):
        assert broken.check(traffic.assets.values()) == []
    assert "advisory matching skipped" in caplog.text


def _poll_identity(host: str, port: int) -> None:
    import pymodbus.client as pymodbus_client

    scada = pymodbus_client.ModbusTcpClient(host, port=port, timeout=2)
    scada.connect()
    scada.read_device_information(read_code=1, object_id=0, device_id=1)
    scada.read_device_information(read_code=2, object_id=0, device_id=1)
    scada.close()


def test_live_daemon_alerts_a_new_affected_device(tmp_path: Path) -> None:
    """``mamori run`` on ``lo`` with the index already imported: the device appears live.

    The daemon learns the PAC3200's identity from the wire, matches it when it
    persists the inventory (here at SIGTERM), and stores one low alert per
    (asset, advisory); a restarted daemon that sees the device again raises none.
    """
    import os

    from tests.sensor.test_daemon import MAMORI, NotifySocket

    if os.geteuid() != 0:
        unavailable("packet sockets need root")
    port = free_port()
    config = tmp_path / "sensor.toml"
    config.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\nname = "substation-7"\n\n'
                      f'[capture]\ninterfaces = ["lo"]\n\n[ports]\nmodbus = [{port}]\n\n'
                      f'[output]\neve = "eve.json"\nsyslog = "file://{tmp_path}/syslog.log"\n',
                      encoding="utf-8")
    with AdvisoryIndex(tmp_path / "advisories.db") as index:
        for f in FILES:
            index.put(read_document(csaf_path(f)))

    def run_daemon_once() -> None:
        notify = NotifySocket(tmp_path / "notify")
        proc = subprocess.Popen([MAMORI, "run", "--config", str(config)],
                                env=dict(os.environ, NOTIFY_SOCKET=str(notify.path)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert notify.wait_for("READY=1", 15), notify.messages
            with _server(AFFECTED_HOST, port, AFFECTED_REV):
                _poll_identity(AFFECTED_HOST, port)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            notify.close()
            (tmp_path / "notify").unlink(missing_ok=True)
        assert proc.returncode == 0, err

    run_daemon_once()
    with Store(tmp_path / "mamori.db", readonly=True) as store:
        stored = store.alerts()  # the identity reads of a never-learned client are M4 too
        alerts = [a for a in stored if a.rule == "mamori.advisory.affected_device"]
        assets = {a["ip"]: a for a in store.assets()}
    assert assets[AFFECTED_HOST]["identity"]["unit1.MajorMinorRevision"] == AFFECTED_REV
    assert sorted((a.dst, a.evidence["advisory"]) for a in alerts) == sorted(
        (AFFECTED_HOST, adv) for adv in (*BOUNDED, ALL_VERSIONS))
    assert all(a.severity.label == "low" and a.evidence["confidence"] == "exact"
               for a in alerts)
    # Frames counted live on the interface: the second FC 43/14 answer came after the first.
    vendor = assets[AFFECTED_HOST]["identity_seen"]["unit1.VendorName"]
    assert 0 < vendor["first_frame"] < vendor["last_frame"], vendor
    assert all(a.evidence["frames"]["unit1.MajorMinorRevision"]["first_frame"] ==
               vendor["first_frame"] for a in alerts)

    # The daemon's [output]: each alert as an EVE record and an RFC 5424 line.
    eve = [json.loads(line) for line in (tmp_path / "eve.json").read_text().splitlines()]
    assert sorted(r["mamori"]["alert_id"] for r in eve) == sorted(a.id for a in stored)
    affected = [r for r in eve if r["alert"]["rule"] == "mamori.advisory.affected_device"]
    assert sorted((r["dest_ip"], r["mamori"]["evidence"]["advisory"]) for r in affected) == \
        sorted((a.dst, a.evidence["advisory"]) for a in alerts)
    assert all(r["host"] == "substation-7" for r in eve)
    assert all(r["alert"]["severity"] == 3 for r in affected)
    syslog = (tmp_path / "syslog.log").read_bytes().splitlines()
    assert len(syslog) == len(eve)
    assert sum(line.startswith(b"<133>1 ") for line in syslog) == len(alerts)  # local0.notice

    run_daemon_once()  # the same device, seen by a restarted daemon
    with Store(tmp_path / "mamori.db", readonly=True) as store:
        again = [a for a in store.alerts() if a.rule == "mamori.advisory.affected_device"]
    assert len(again) == len(alerts)


# -- DNP3: an opendnp3 master reads the group 0 device attributes of an outstation ------

RTU_VENDOR, RTU_PRODUCT = "Hitachi Energy", "RTU500 series CMU"
RTU_INSIDE, RTU_OUTSIDE = "12.7.2", "13.6.1"
# ICSA-23-143-02 ">=12.7.1|<=12.7.6" and ICSA-21-336-08 "12.7.*", among others;
# no advisory of the set names RTU500 firmware 13.6.
RTU_ADVISORIES = {"ICSA-21-336-08", "ICSA-21-341-01", "ICSA-22-235-07", "ICSA-22-242-04",
                  "ICSA-23-089-01", "ICSA-23-143-02", "ICSA-24-116-01"}


def _dnp3_identity(tmp: Path, revision: str) -> dict[str, Any]:
    """The inventory asset of an outstation announcing RTU500 ``revision`` in group 0."""
    from tests.peers import dnp3_peer

    port = dnp3_peer.free_port()
    pcap = tmp / f"rtu500-{revision}.pcap"
    attributes = {252: RTU_VENDOR, 250: RTU_PRODUCT, 242: revision, 243: "CMU 560CMU05"}
    with capture(pcap, port), \
            dnp3_peer.ScriptedOutstation(port, attributes=attributes) as outstation, \
            dnp3_peer.Stacks(port, outstation=False) as master:
        result, decoded = master.read_attributes()  # READ g0v254: all attributes
    assert result == "SUCCESS", result
    assert decoded == attributes  # opendnp3's master decodes what the sensor must
    assert 1 in outstation.requests
    inventory = replay_inventory([pcap], PipelineConfig(dnp3_ports=frozenset({port})))
    assets = [a.to_dict() for a in inventory.assets.values() if a.identity]
    assert len(assets) == 1, assets
    if shutil.which("tshark"):  # the frame that carried the attributes, as Wireshark sees it
        frames = _tshark_frames(pcap, ("-d", f"tcp.port=={port},dnp3"),
                                f"tcp.srcport == {port} && dnp3.al.func == 129 && "
                                f"dnp3.al.obj == 252")
        seen = assets[0]["identity_seen"]
        assert frames and {s["first_frame"] for s in seen.values()} == {frames[0]}, (frames,
                                                                                     seen)
    return assets[0]


@pytest.fixture(scope="module")
def rtu500(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    require_tool("tcpdump")
    tmp = tmp_path_factory.mktemp("advisory-dnp3")
    return {rev: _dnp3_identity(tmp, rev) for rev in (RTU_INSIDE, RTU_OUTSIDE)}


def test_dnp3_device_attributes_learned_from_the_wire(rtu500: dict[str, dict[str, Any]]
                                                      ) -> None:
    identity = rtu500[RTU_INSIDE]["identity"]
    link = next(k for k in identity).partition(".")[0]
    assert identity[f"{link}.g0v252"] == RTU_VENDOR
    assert identity[f"{link}.g0v250"] == RTU_PRODUCT
    assert identity[f"{link}.g0v242"] == RTU_INSIDE


def test_dnp3_version_inside_matches_outside_does_not(
        rtu500: dict[str, dict[str, Any]], matcher: Matcher) -> None:
    inside = _by_id(matcher.match_asset(rtu500[RTU_INSIDE]))
    affected = {a for a, m in inside.items() if m.confidence.affected}
    assert affected == RTU_ADVISORIES, affected
    m = inside["ICSA-23-143-02"]
    assert m.evidence["version"] == RTU_INSIDE
    assert all("group 0 variation" in frame for frame in m.evidence["seen_in"].values())
    assert all(f["first_frame"] and f["first_seen"] for f in m.evidence["frames"].values())
    outside = matcher.match_asset(rtu500[RTU_OUTSIDE])
    assert [m for m in outside if m.confidence is not Confidence.VENDOR] == []


def test_web_asset_view_shows_affected_devices_with_cves_and_remediation(
        traffic: Traffic, tmp_path: Path) -> None:
    """The operator page: the same matches as ``assets --vulnerable``, from the index beside
    the store, refreshed when the index changes (a vendor-only match is never listed)."""
    store_path, token_file = tmp_path / "mamori.db", tmp_path / "token"
    with Store(store_path) as store:
        store.save_inventory(list(traffic.assets.values()), [], None)
    create_token_file(token_file)
    client = TestClient(create_app(build_context(cfg.load(None), store_path,
                                                 token_file=token_file)))
    login = client.post("/login", data={"operator": "Aiko",
                                        "token": token_file.read_text().strip()})
    assert login.status_code in (200, 303), login.text

    def rows() -> set[tuple[str, str, str]]:
        page = client.get("/assets")
        assert page.status_code == 200, page.text
        return set(re.findall(r'<tr data-ip="([^"]+)" data-advisory="([^"]+)" '
                              r'data-confidence="([^"]+)">', page.text))

    assert rows() == set()  # no index imported yet: no section, no error
    with AdvisoryIndex(store_path.with_name("advisories.db")) as index:
        index.put(read_document(csaf_path(FILES[0])))
    assert rows() == {(AFFECTED_HOST, BOUNDED[0], "exact")}
    with AdvisoryIndex(store_path.with_name("advisories.db")) as index:
        for f in FILES[1:]:
            index.put(read_document(csaf_path(f)))
    assert rows() == {(AFFECTED_HOST, a, "exact") for a in (*BOUNDED, ALL_VERSIONS)} | {
        (FIXED_HOST, ALL_VERSIONS, "exact")}
    page = client.get("/assets").text
    section = page.split('<table id="vulnerable"', 1)[1].split("</table>", 1)[0]
    assert "CVE-" in section and "vendor_fix" in section
    revision = traffic.assets[AFFECTED_HOST]["identity_seen"]["unit1.MajorMinorRevision"]
    assert (f'<div data-key="unit1.MajorMinorRevision" '
            f'data-first-frame="{revision["first_frame"]}" '
            f'data-last-frame="{revision["last_frame"]}">') in section
    assert f"; frame {revision['first_frame']} at " in section
    assert f'<tr data-ip="{AFFECTED_HOST}" class="vulnerable">' in page
