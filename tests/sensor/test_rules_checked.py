"""The shipped packs' manifest (``rules/checked.sha256``): start-up skips the schema walk
for unchanged shipped packs and for nothing else, and the manifest is never stale."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mamori.sensor.detection import checked, checked_write, loader
from mamori.sensor.detection.loader import SCHEMA_FILE, SHIPPED_RULES, RuleError, load_rules
from mamori.sensor.detection.settings import load_configured_rules, set_names


@pytest.fixture
def schema_walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the loads that asked for the jsonschema walk."""
    calls: list[int] = []
    real = loader._load_schema

    def counted() -> loader._SchemaCheck:
        calls.append(1)
        return real()

    monkeypatch.setattr(loader, "_load_schema", counted)
    return calls


def test_manifest_is_current() -> None:
    manifest = (SHIPPED_RULES / checked.MANIFEST_NAME).read_text(encoding="utf-8")
    assert manifest == checked_write.expected(SHIPPED_RULES), \
        "rules/checked.sha256 is stale: run `make rules-manifest`"
    assert checked_write.main(["--check"]) == 0
    names = {p.name for p in loader.pack_files([SHIPPED_RULES])}
    assert {line.split()[1] for line in manifest.splitlines()[3:]} == names


def test_start_up_loads_the_shipped_packs_without_jsonschema() -> None:
    code = ("import sys\n"
            "from mamori.sensor.detection import replay_cli\n"
            "from mamori.sensor.detection.settings import load_configured_rules\n"
            "rules = load_configured_rules(None)\n"
            "print(len(rules), 'jsonschema' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(len(load_rules([SHIPPED_RULES], set_names()))), "False"]


def test_trusted_load_gives_the_same_rules(schema_walks: list[int]) -> None:
    full = load_rules([SHIPPED_RULES], set_names())
    assert schema_walks
    schema_walks.clear()
    fast = load_rules([SHIPPED_RULES], set_names(), trust_checked=True)
    assert not schema_walks
    assert list(fast) == list(full)
    assert fast.chains == full.chains and fast.categories == full.categories


def test_daemon_and_replay_trust_it_but_rules_check_does_not(
        schema_walks: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    from mamori.sensor.cli import main

    load_configured_rules(None)
    assert not schema_walks
    assert main(["rules", "check", str(SHIPPED_RULES)]) == 0
    assert schema_walks and capsys.readouterr().out.startswith("ok: ")


def test_an_edited_shipped_pack_is_checked_in_full(tmp_path: Path,
                                                   schema_walks: list[int]) -> None:
    packs = tmp_path / "rules"
    shutil.copytree(SHIPPED_RULES, packs, ignore=shutil.ignore_patterns("__*"))
    modbus = packs / "modbus.yaml"
    text = modbus.read_text(encoding="utf-8")
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "severity:" in t)
    lines = text.splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].split("severity:")[0] + "severity: hgih\n"
    modbus.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(RuleError) as err:
        load_rules([packs], set_names(), trust_checked=True)
    assert len(schema_walks) == 1  # the five unchanged packs skip it, the edited one not
    in_modbus = [str(p) for p in err.value.problems if p.file == str(modbus)]
    assert len(in_modbus) == 1 and in_modbus[0].startswith(f"{modbus}:{line}: rule ")
    assert "severity: 'hgih' is not one of" in in_modbus[0]


def test_an_unlisted_pack_is_checked_in_full(tmp_path: Path, schema_walks: list[int]) -> None:
    (tmp_path / "site.yaml").write_text(
        "pack: site\nrules:\n  - id: site.one\n    precursor: M1\n    title: t\n"
        "    severity: high\n    attack: [T0814]\n    match: {proto: modbus, fc: 8}\n"
        "    extra: 1\n", encoding="utf-8")
    with pytest.raises(RuleError, match="unknown key"):
        load_rules([tmp_path], set_names(), trust_checked=True)
    assert schema_walks


@pytest.mark.parametrize("manifest", [
    None,  # missing
    "schema 0000\n",  # made for another schema
    "{schema}\nnot-a-digest  modbus.yaml\n",  # a malformed line
    "{schema}\n{pack}  modbus.yaml  extra\n",
    "",  # empty
    b"\xff\xfe",  # not UTF-8
])
def test_a_manifest_that_is_not_right_trusts_nothing(tmp_path: Path,
                                                     manifest: str | bytes | None) -> None:
    schema = SCHEMA_FILE.read_text(encoding="utf-8")
    pack = (SHIPPED_RULES / "modbus.yaml").read_text(encoding="utf-8")
    path = tmp_path / checked.MANIFEST_NAME
    if isinstance(manifest, bytes):
        path.write_bytes(manifest)
    elif manifest is not None:
        path.write_text(manifest.format(schema=f"schema {checked.digest(schema)}",
                                        pack=checked.digest(pack)), encoding="utf-8")
    assert checked.trusted(tmp_path, schema) == frozenset()


def test_a_right_manifest_trusts_exactly_its_packs(tmp_path: Path) -> None:
    schema = SCHEMA_FILE.read_text(encoding="utf-8")
    pack = (SHIPPED_RULES / "modbus.yaml").read_text(encoding="utf-8")
    (tmp_path / checked.MANIFEST_NAME).write_text(
        checked.render(schema, [("modbus.yaml", pack)]), encoding="utf-8")
    assert checked.trusted(tmp_path, schema) == {checked.digest(pack)}
    assert checked.trusted(tmp_path, schema + "\n") == frozenset()  # another schema


def test_check_says_when_the_manifest_is_stale(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(checked_write, "expected", lambda _dir: "something else\n")
    assert checked_write.main(["--check"]) == 1
    assert "stale: run `make rules-manifest`" in capsys.readouterr().err
