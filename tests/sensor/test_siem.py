"""SIEM records: Community ID against the specification's vectors and tshark, EVE records
from a real replay, RFC 5424 syslog to real UDP and unix-socket receivers (and a file),
and the collector's EVE SIEM file and syslog from a real forwarding sensor.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.communityid import community_id
from mamori.sensor.alerting.eve import eve_alert, signature_id
from mamori.sensor.alerting.syslog5424 import (
    BOM,
    MAX_DATAGRAM,
    SyslogSender,
    format_message,
    parse_target,
)
from tests.conftest import PROJECT, require_tool

VECTORS = json.loads((Path(__file__).with_name("community_id_baseline.json")).read_text())
DEMO = PROJECT / "samples" / "modbus_demo.pcap"

# RFC 5424 section 6: HEADER SP STRUCTURED-DATA [SP MSG]
RFC5424 = re.compile(
    rb"<(?P<pri>\d{1,3})>(?P<version>1) (?P<ts>\S+) (?P<host>[\x21-\x7e]{1,255}) "
    rb"(?P<app>[\x21-\x7e]{1,48}) (?P<procid>[\x21-\x7e]{1,128}) (?P<msgid>[\x21-\x7e]{1,32}) "
    rb"(?P<sd>-|(?:\[[^ =\]\"]{1,32}(?: [^ =\]\"]{1,32}=\"(?:[^\"\\\]]|\\[\"\\\]])*\")*\])+)"
    rb"(?: (?P<msg>.*))?\Z", re.DOTALL)
SD_PARAM = re.compile(r'([^ =\]"]+)="((?:[^"\\\]]|\\["\\\]])*)"')


@pytest.mark.parametrize("vector", VECTORS["vectors"],
                         ids=lambda v: f"{v['proto']}-{v['saddr']}-{v['sport']}")
def test_community_id_matches_the_specification_baseline(vector: dict[str, Any]) -> None:
    args = (vector["saddr"], vector["daddr"], vector["proto"], vector["sport"], vector["dport"])
    assert community_id(*args) == vector["communityid"]
    assert community_id(*args, seed=1) == vector["communityid_seed1"]


def test_community_id_refuses_what_is_not_a_flow() -> None:
    for bad in (("10.0.0.1", "::1", 6, 1, 2), ("10.0.0.1", "10.0.0.2", 6, 70000, 2),
                ("not-an-ip", "10.0.0.2", 6, 1, 2), ("10.0.0.1", "10.0.0.2", 300, 1, 2)):
        with pytest.raises(ValueError):
            community_id(*bad)
    with pytest.raises(ValueError):
        community_id("10.0.0.1", "10.0.0.2", 6, 1, 2, seed=1 << 16)


def _replay_eve(tmp: Path, extra: str = "") -> tuple[list[dict[str, Any]], Path]:
    from mamori.sensor.cli import main

    conf = tmp / "sensor.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{tmp}"\nname = "plant-a"\nsite = "Osaka"\n'
                    f'sector = "water"\n[output]\neve = "eve.json"\n{extra}', encoding="utf-8")
    assert main(["replay", "--no-progress", "--config", str(conf), "--store",
                 str(tmp / "store.db"), str(DEMO)]) == 0
    return [json.loads(line) for line in (tmp / "eve.json").read_text().splitlines()], conf


def test_replay_writes_eve_records_whose_community_id_is_tsharks(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]
                                                                 ) -> None:
    require_tool("tshark")
    records, _ = _replay_eve(tmp_path)
    capsys.readouterr()
    from mamori.sensor.alerting.store import Store
    with Store(tmp_path / "store.db", readonly=True) as store:
        alerts = {a.id: a for a in store.alerts()}
    # the demo's alerts, the intruder's identification reads and write among them (M4, M7:
    # it shares the SCADA's address, which is still being learned), and the two campaign
    # chains they complete on the server (C1, C2: a target, not one connection)
    assert len(records) == len(alerts) == 10
    chains = [r for r in records if r["alert"]["category"] in ("C1", "C2")]
    assert len(chains) == 2
    for r in chains:  # no connection of its own: no ports, no flow, no Community ID
        assert "src_port" not in r and "flow_id" not in r and "community_id" not in r
        assert (r["dest_ip"], r["dest_port"]) == ("127.0.0.1", 502)
        assert r["alert"]["severity"] == 1 and r["alert"]["metadata"]["mamori_severity"] == [
            "critical"]
    records = [r for r in records if r not in chains]
    # Wireshark's own Community ID of every TCP conversation in the capture.
    out = subprocess.run(
        ["tshark", "-r", str(DEMO), "--enable-protocol", "communityid",
         "-o", "communityid.do_base64:TRUE", "-T", "fields", "-e", "tcp.srcport",
         "-e", "tcp.dstport", "-e", "communityid"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    tshark = {(int(a), int(b)): cid for a, b, cid in (line.split("\t") for line in out.split("\n")
                                                        if line.count("\t") == 2)}
    for r in records:
        alert = alerts[r["mamori"]["alert_id"]]
        assert r["event_type"] == "alert" and r["host"] == "plant-a"
        assert r["sensor"] == {"name": "plant-a", "site": "Osaka", "sector": "water"}
        when = dt.datetime.fromisoformat(r["timestamp"])
        assert when.tzinfo is not None and when.timestamp() == pytest.approx(alert.last_ts)
        assert (r["src_ip"], r["src_port"], r["dest_ip"], r["dest_port"]) == (
            alert.src, alert.sport, alert.dst, alert.dport)
        assert r["proto"] == "TCP" and r["app_proto"] == "modbus"
        assert alert.sport is not None and alert.dport is not None
        assert r["community_id"] == tshark[(alert.sport, alert.dport)]
        assert isinstance(r["flow_id"], int) and 0 < r["flow_id"] < 2**63
        a = r["alert"]
        assert a["rule"] == alert.rule and a["signature_id"] == signature_id(alert.rule)
        assert a["signature"] == alert.title and a["category"] == alert.precursor
        assert a["attack"] == list(alert.attack) == a["metadata"]["mitre_technique_id"]
        assert a["severity"] == {"high": 1, "medium": 2, "low": 3}[alert.severity.label]
    # one connection, one flow id, whichever way the alert points
    by_flow: dict[str, set[int]] = {}
    for r in records:
        by_flow.setdefault(r["community_id"], set()).add(r["flow_id"])
    assert all(len(ids) == 1 for ids in by_flow.values())


def test_signature_ids_of_the_shipped_rules_are_distinct() -> None:
    from mamori.sensor.config import load
    from mamori.sensor.detection.settings import load_configured_rules
    rules = load_configured_rules(load(None))
    assert len({signature_id(r.id) for r in rules}) == len({r.id for r in rules}) > 30


def _parse(datagram: bytes) -> dict[str, Any]:
    m = RFC5424.match(datagram)
    assert m is not None, datagram[:200]
    msg = m.group("msg") or b""
    assert msg.startswith(BOM.encode()), msg[:10]  # RFC 5424 6.4: UTF-8 MSG starts with BOM
    sd = m.group("sd").decode()
    return {"pri": int(m.group("pri")), "ts": dt.datetime.fromisoformat(m.group("ts").decode()),
            "host": m.group("host").decode(), "app": m.group("app").decode(),
            "procid": m.group("procid").decode(), "msgid": m.group("msgid").decode(),
            "sd_id": sd[1:].split(" ", 1)[0].rstrip("]"),
            "params": {k: re.sub(r"\\(.)", r"\1", v) for k, v in SD_PARAM.findall(sd)},
            "msg": json.loads(msg[len(BOM.encode()):].decode())}


def _alert(i: int, **kw: Any) -> Alert:
    base: dict[str, Any] = dict(
        rule="mamori.modbus.listen_only", precursor="M1", severity=Severity.HIGH,
        attack=("T0814", "T0804"), title='Force listen-only "mode" ]\\', proto="modbus",
        first_ts=1_790_000_000.25, last_ts=1_790_000_010.5 + i, count=3, src="10.1.0.5",
        sport=40000 + i, dst="10.1.0.9", dport=502, unit=1, evidence={"fc": 8, "sub": 4},
        id=i)
    base.update(kw)
    return Alert(**base)


@pytest.fixture
def udp_receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_syslog_to_a_udp_receiver_is_rfc5424(udp_receiver: socket.socket) -> None:
    port = udp_receiver.getsockname()[1]
    sender = SyslogSender(f"udp://127.0.0.1:{port}", "local3", hostname="sensor box 1")
    alerts = [_alert(1), _alert(2, severity=Severity.LOW, rule="mamori.asset.x", sport=None,
                                 dport=None, proto="asset", src=None)]
    sender.send_alerts([(a, eve_alert(a, {"name": "plant-a"})) for a in alerts])
    first, second = (_parse(udp_receiver.recv(65535)) for _ in alerts)
    assert first["pri"] == 19 * 8 + 3 and second["pri"] == 19 * 8 + 5  # local3.err/.notice
    assert first["ts"] == dt.datetime.fromtimestamp(alerts[0].last_ts, dt.UTC)
    assert first["host"] == "sensor_box_1"  # no spaces in a header field
    assert (first["app"], first["msgid"]) == ("mamori", "alert") and first["procid"].isdigit()
    assert first["sd_id"] == "mamori@32473"
    assert first["params"] == {"rule": "mamori.modbus.listen_only",
                               "sid": str(signature_id("mamori.modbus.listen_only")),
                               "severity": "high", "precursor": "M1", "attack": "T0814,T0804",
                               "alert_id": "1", "count": "3"}
    assert first["msg"]["alert"]["signature"] == 'Force listen-only "mode" ]\\'
    assert first["msg"]["community_id"] == community_id("10.1.0.5", "10.1.0.9", 6, 40001, 502)
    assert "community_id" not in second["msg"] and second["msg"]["dest_ip"] == "10.1.0.9"
    assert sender.sent == 2 and sender.dropped == 0


def test_syslog_datagrams_stay_under_the_limit(udp_receiver: socket.socket) -> None:
    port = udp_receiver.getsockname()[1]
    sender = SyslogSender(f"udp://127.0.0.1:{port}")
    big = _alert(1, evidence={"detail": "x" * (4 * MAX_DATAGRAM)})
    huge_title = _alert(2, title="y" * (2 * MAX_DATAGRAM))
    sender.send_alerts([(a, eve_alert(a, {"name": "n"})) for a in (big, huge_title)])
    one = udp_receiver.recv(65535)
    assert len(one) <= MAX_DATAGRAM
    assert _parse(one)["msg"]["mamori"]["evidence"] == {"truncated": True}
    two = udp_receiver.recv(65535)  # even without evidence too long: cut, header intact
    assert len(two) == MAX_DATAGRAM
    head = RFC5424.match(two)
    assert head is not None and head.group("pri") == b"131"
    with pytest.raises(ValueError):
        json.loads(head.group("msg")[3:])
    assert sender.truncated == 2


def test_syslog_to_a_unix_socket_survives_the_receiver_going_away(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    sender = SyslogSender(f"unix://{path}")
    sender.send_alerts([(_alert(1), eve_alert(_alert(1), {"name": "n"}))])  # nobody there
    assert (sender.sent, sender.dropped) == (0, 1)
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(5)
    try:
        sender.send_alerts([(_alert(2), eve_alert(_alert(2), {"name": "n"}))])
        assert _parse(receiver.recv(65535))["params"]["alert_id"] == "2"
        receiver.close()
        path.unlink()  # the receiver restarts: a new socket at the same path
        sender.send_alerts([(_alert(3), eve_alert(_alert(3), {"name": "n"}))])
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(path))
        receiver.settimeout(5)
        sender.send_alerts([(_alert(4), eve_alert(_alert(4), {"name": "n"}))])
        assert _parse(receiver.recv(65535))["params"]["alert_id"] == "4"
    finally:
        receiver.close()
    assert (sender.sent, sender.dropped) == (2, 2)


def test_syslog_file_target_and_bad_targets(tmp_path: Path) -> None:
    log = tmp_path / "mamori.log"
    sender = SyslogSender(f"file://{log}", "daemon")
    sender.send_alerts([(a, eve_alert(a, {"name": "n"})) for a in (_alert(1), _alert(2))])
    sender.close()
    lines = log.read_bytes().splitlines()
    assert [_parse(line)["pri"] for line in lines] == [3 * 8 + 3] * 2
    for bad in ("tcp://h:1", "udp://:514", "udp://h:99999", "unix://rel/path", "file:x", ""):
        with pytest.raises(ValueError):
            parse_target(bad)
    with pytest.raises(ValueError):
        SyslogSender("udp://127.0.0.1:514", "local9")
    with pytest.raises(ValueError):
        format_message(facility=24, severity=0, ts=0.0, hostname="h", app_name="a",
                       procid="1", msgid="m", sd="-", msg="")


def test_replay_sends_syslog_from_the_output_config(tmp_path: Path,
                                                    udp_receiver: socket.socket,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    port = udp_receiver.getsockname()[1]
    records, _ = _replay_eve(tmp_path, f'syslog = "udp://127.0.0.1:{port}"\n'
                                       f'syslog_facility = "local7"\n')
    capsys.readouterr()
    got = [_parse(udp_receiver.recv(65535)) for _ in records]
    assert [g["msg"] for g in got] == records  # the same EVE record, one datagram each
    assert {g["pri"] // 8 for g in got} == {23}


def test_bad_output_config_is_a_located_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from mamori.sensor.cli import main
    conf = tmp_path / "sensor.toml"
    conf.write_text('[output]\nsyslog = "tcp://siem:514"\nsyslog_facility = "local9"\n',
                    encoding="utf-8")
    assert main(["check-config", "--config", str(conf)]) != 0
    err = capsys.readouterr().err
    assert f"{conf}:2" in err and "[output] syslog" in err
    assert f"{conf}:3" in err and "syslog_facility" in err
    # Output files are checked before any input is read, as every other output is.
    conf.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\n[output]\n'
                    f'eve = "{tmp_path}/missing/eve.json"\n'
                    f'syslog = "file://{tmp_path}/missing/syslog.log"\n', encoding="utf-8")
    assert main(["replay", "--no-progress", "--config", str(conf), str(DEMO)]) == 2
    err = capsys.readouterr().err
    assert f"{conf}:4: [output] eve: {tmp_path}/missing/eve.json: cannot write" in err
    assert main(["check-config", "--config", str(conf)]) != 0  # lists every problem
    err = capsys.readouterr().err
    assert f"{conf}:4: [output] eve: {tmp_path}/missing/eve.json: cannot write" in err
    assert f"{conf}:5: [output] syslog: {tmp_path}/missing/syslog.log: cannot write" in err
    assert not (tmp_path / "missing").exists()


def test_collector_writes_eve_records_and_syslog_for_accepted_alerts(
        tmp_path: Path, udp_receiver: socket.socket) -> None:
    """A real sensor process forwards five alerts over CURVE; the collector's SIEM file
    holds EVE records naming that sensor, its site and sector, and a UDP receiver gets
    the same records as RFC 5424 messages."""
    from tests.sensor.test_collector import Site, wait_for

    port = udp_receiver.getsockname()[1]
    site = Site(tmp_path, extra=f'jsonl_format = "eve"\nsyslog = "udp://127.0.0.1:{port}"\n'
                                'syslog_facility = "local1"\n')
    conf = site.sensor_confs[0]
    conf.write_text(conf.read_text().replace("[sensor]\n", '[sensor]\nname = "kobe-1"\n'
                                             'site = "Kobe"\nsector = "energy"\n', 1))
    site.start_collector()
    try:
        sensor = site.sensor(conf, 5)
        sensor.communicate(timeout=40)
        assert sensor.returncode == 0
        wait_for(lambda: site.jsonl.exists() and len(site.jsonl.read_text().splitlines()) >= 5,
                 20, "five EVE records")
    finally:
        site.stop_collector()
    records = site.jsonl_alerts()
    assert len(records) == 5
    for i, r in enumerate(sorted(records, key=lambda r: r["mamori"]["alert_id"]), start=1):
        assert r["event_type"] == "alert" and r["host"] == "s0"  # the allow-list name
        assert r["sensor"] == {"name": "s0", "site": "Kobe", "sector": "energy",
                               "key": site.sensor_key("s0")}
        assert r["community_id"] == community_id("10.0.0.1", "10.0.0.2", 6, 40000 + i, 502)
        assert (r["src_port"], r["dest_port"], r["proto"], r["app_proto"]) == (
            40000 + i, 502, "TCP", "modbus")
        assert r["alert"]["attack"] == ["T0836"] and r["alert"]["severity"] == 1
        dt.datetime.fromisoformat(r["timestamp"])
    messages = [_parse(udp_receiver.recv(65535)) for _ in records]
    assert sorted((m["msg"] for m in messages), key=lambda r: r["mamori"]["alert_id"]) == \
        sorted(records, key=lambda r: r["mamori"]["alert_id"])
    assert {m["pri"] for m in messages} == {17 * 8 + 3}


def test_dnp3_over_udp_records_udp_and_tsharks_community_id(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Zeek's DNP3/UDP trace: the alert's evidence says UDP, so the hash is of a UDP flow."""
    from mamori.sensor.cli import main
    from tests.conftest import corpus_path

    require_tool("tshark")
    pcap = corpus_path("zeek/Traces/dnp3/dnp3_udp_select_operate.pcap")
    conf = tmp_path / "sensor.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\n[output]\neve = "eve.json"\n',
                    encoding="utf-8")
    assert main(["replay", "--no-progress", "--config", str(conf), "--store",
                 str(tmp_path / "s.db"), str(pcap)]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (tmp_path / "eve.json").read_text().splitlines()]
    assert records
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "--enable-protocol", "communityid", "-T", "fields",
         "-e", "udp.srcport", "-e", "udp.dstport", "-e", "communityid"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    tshark = {(int(a), int(b)): cid for a, b, cid in (line.split("\t") for line in out.split("\n")
                                                        if line.count("\t") == 2)}
    for r in records:
        assert (r["proto"], r["app_proto"]) == ("UDP", "dnp3")
        assert r["community_id"] == tshark[(r["src_port"], r["dest_port"])]


def test_eve_and_syslog_files_are_reopened_after_logrotate(tmp_path: Path) -> None:
    """logrotate renames the files, then sends SIGHUP; ``reopen`` must write on at the
    same paths, and no line goes to the rotated files afterwards."""
    from mamori.sensor.alerting.siem import SensorSiem
    from mamori.sensor.alerting.syslog5424 import SyslogSender

    eve, log = tmp_path / "eve.json", tmp_path / "syslog.log"
    siem = SensorSiem({"name": "plant-a", "site": "", "sector": ""}, eve,
                      SyslogSender(f"file://{log}"))
    siem([_alert(1), _alert(2)])
    eve.rename(tmp_path / "eve.json.1")
    log.rename(tmp_path / "syslog.log.1")
    siem.reopen()
    assert eve.exists()  # created anew at once, before any alert
    siem([_alert(3)])
    siem.close()

    def ids(path: Path) -> list[int]:
        return [json.loads(line)["mamori"]["alert_id"] for line in path.read_text().splitlines()]
    assert ids(tmp_path / "eve.json.1") == [1, 2] and ids(eve) == [3]
    assert len((tmp_path / "syslog.log.1").read_text().splitlines()) == 2
    assert len(log.read_text().splitlines()) == 1
