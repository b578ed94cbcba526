"""The page's data tables and helpers: FC classes, ATT&CK names, bind rules, token
file, the SVG map."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from mamori.sensor.web.attack import ATTACK_ICS, attack_name
from mamori.sensor.web.auth import Authenticator, TokenFileError, create_token_file, read_token_file
from mamori.sensor.web.bind import BindRefused, check_bind
from mamori.sensor.web.commap import build_graph, render_svg
from mamori.sensor.web.fcclass import classify
from tests.conftest import PROJECT


def test_every_attack_id_in_the_rule_packs_has_a_name() -> None:
    used: set[str] = set()
    for pack in (PROJECT / "rules").glob("*.yaml"):
        for line in pack.read_text().splitlines():
            if m := re.match(r"\s*attack:\s*\[(.*)\]", line):
                used.update(t.strip() for t in m.group(1).split(",") if t.strip())
    assert used, "no attack ids found in rules/"
    assert sorted(used - set(ATTACK_ICS)) == []
    assert attack_name("T1691.002").startswith("Block Reporting Message")
    assert attack_name("T9999") == ""


@pytest.mark.parametrize(("proto", "labels", "classes"), [
    ("modbus", ["3", "4"], ["read"]),
    ("modbus", ["23"], ["read", "write"]),
    ("modbus", ["8", "8/4"], ["diagnostics"]),
    ("modbus", ["90", "125"], ["programming"]),
    ("modbus", ["200"], ["other"]),
    ("dnp3", ["1", "g60"], ["read"]),
    ("dnp3", ["3", "4", "13"], ["control", "diagnostics"]),
    ("dnp3", ["25", "18"], ["programming"]),
    ("dnp3", ["2"], ["write"]),
])
def test_fc_classes(proto: str, labels: list[str], classes: list[str]) -> None:
    assert classify(proto, labels) == classes


def _no_addresses(name: str) -> list[str]:
    return {"eth1": ["10.1.1.5/24"], "mgmt0": ["192.0.2.10/24"]}.get(name, [])


def test_bind_rules() -> None:
    assert check_bind("127.0.0.1", ["eth1"], "", _no_addresses) == "127.0.0.1"
    assert check_bind("::1", [], "", _no_addresses) == "::1"
    with pytest.raises(BindRefused, match="capture interface eth1"):
        check_bind("10.1.1.5", ["eth1"], "mgmt0", _no_addresses)
    with pytest.raises(BindRefused, match="management_interface"):
        check_bind("0.0.0.0", ["eth1"], "", _no_addresses)
    assert check_bind("0.0.0.0", ["eth1"], "mgmt0", _no_addresses) == "0.0.0.0"
    assert check_bind("192.0.2.10", ["eth1"], "mgmt0", _no_addresses) == "192.0.2.10"
    with pytest.raises(BindRefused, match="not an address of management"):
        check_bind("192.0.2.99", ["eth1"], "mgmt0", _no_addresses)
    with pytest.raises(BindRefused, match="is a capture interface"):
        check_bind("0.0.0.0", ["eth1"], "eth1", _no_addresses)
    with pytest.raises(BindRefused, match="not an IP address"):
        check_bind("sensor.local", [], "", _no_addresses)


def test_token_file_is_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "web" / "token"
    create_token_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = read_token_file(path)
    with pytest.raises(TokenFileError, match="exists"):
        create_token_file(path)
    create_token_file(path, force=True)
    assert read_token_file(path) != token
    path.chmod(0o644)
    with pytest.raises(TokenFileError, match="chmod 600"):
        read_token_file(path)
    with pytest.raises(TokenFileError, match="mamori web token"):
        read_token_file(tmp_path / "missing")


def test_sessions() -> None:
    auth = Authenticator("s" * 32, lifetime=60)
    assert auth.login("Aiko", "wrong") is None
    sid = auth.login("Aiko", "s" * 32)
    session = auth.session(sid)
    assert session is not None and session.operator == "Aiko"
    assert auth.bearer_ok("Bearer " + "s" * 32) and not auth.bearer_ok("Basic x")
    auth.logout(sid)
    assert auth.session(sid) is None


def test_map_layout_and_highlight() -> None:
    assets: list[dict[str, Any]] = [
              {"ip": "10.0.0.1", "roles": ["master"]},
              {"ip": "10.0.0.9", "roles": ["outstation"],
               "identity": {"unit1.VendorName": "ACME", "unit1.ProductCode": "<PLC>"}},
              {"ip": "10.0.0.10", "roles": ["outstation"]}]
    pairs = [{"proto": "modbus", "client": "10.0.0.1", "server": "10.0.0.9", "unit": 1,
              "functions": ["3", "16"]},
             {"proto": "modbus", "client": "10.0.0.1", "server": "10.0.0.10", "unit": 1,
              "functions": ["3"]}]
    nodes, edges = build_graph(assets, pairs, [("10.0.0.1", "10.0.0.9", "modbus", 3)])
    assert [(n.ip, n.role) for n in nodes] == [("10.0.0.1", "master"),
                                               ("10.0.0.9", "outstation"),
                                               ("10.0.0.10", "outstation")]
    svg = render_svg(nodes, edges)
    assert svg == render_svg(*build_graph(assets, pairs, [("10.0.0.1", "10.0.0.9",
                                                           "modbus", 3)]))  # deterministic
    assert 'class="edge alert" data-master="10.0.0.1" data-outstation="10.0.0.9"' in svg
    assert 'class="edge" data-master="10.0.0.1" data-outstation="10.0.0.10"' in svg
    assert "&lt;PLC&gt;" in svg and "<PLC>" not in svg
    ns = {"s": "http://www.w3.org/2000/svg"}
    label = ElementTree.fromstring(svg).find(
        ".//s:g[@class='edge alert'][@data-outstation='10.0.0.9']/s:text", ns)
    assert label is not None  # the label's wrapped lines, read in order
    assert " ".join(t.text or "" for t in label) == "← 10.0.0.1 modbus: read, write"
