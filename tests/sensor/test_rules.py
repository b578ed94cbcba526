"""Rule packs: the shipped ones load and cover the catalogue; bad ones fail with a place."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from mamori.sensor import config as cfg
from mamori.sensor.cli import main
from mamori.sensor.detection.cli import cmd_rules_check
from mamori.sensor.detection.loader import SHIPPED_RULES, RuleError, load_rules
from mamori.sensor.detection.settings import set_names

CATALOGUE = ([f"M{i}" for i in range(1, 17)] + [f"D{i}" for i in range(1, 19)]
             + [f"B{i}" for i in range(1, 7)] + [f"N{i}" for i in range(1, 8)] + ["S2", "S3", "S7"])

GOOD_RULE = """\
pack: site.test
rules:
  - id: site.test.one
    precursor: M1
    title: test
    severity: high
    attack: [T0814]
    match: {proto: modbus, type: request, fc: 8, sub: 4}
"""


def write(tmp_path: Path, text: str, name: str = "pack.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    write(tmp_path, text)
    with pytest.raises(RuleError) as err:
        load_rules([tmp_path], set_names())
    return [str(p) for p in err.value.problems]


def test_shipped_packs_cover_the_catalogue() -> None:
    rules = load_rules([SHIPPED_RULES], set_names())
    assert {r.precursor for r in rules} == set(CATALOGUE)
    assert len({r.id for r in rules}) == len(rules)
    for rule in rules:
        if not rule.precursor.startswith("S"):
            assert rule.attack, rule.id
        # both numbering schemes where ATT&CK v19 renumbered an id
        for legacy, v19 in (("T0804", "T1691.002"), ("T0857", "T1693.001"),
                            ("T0839", "T1693.002"), ("T0803", "T1691.001")):
            if legacy in rule.attack:
                assert v19 in rule.attack, rule.id


def test_good_pack_loads(tmp_path: Path) -> None:
    write(tmp_path, GOOD_RULE)
    (rule,) = load_rules([tmp_path], set_names())
    assert rule.match.fc == frozenset({8}) and rule.match.sub == frozenset({4})
    assert rule.source.endswith("pack.yaml:3")


def test_severity_typo_names_file_line_rule_and_key(tmp_path: Path) -> None:
    (msg,) = problems(tmp_path, GOOD_RULE.replace("severity: high", "severity: hgih"))
    assert msg == (f"{tmp_path / 'pack.yaml'}:6: rule site.test.one: severity: 'hgih' is not "
                   "one of info, low, medium, high, critical")


@pytest.mark.parametrize(("change", "line", "key", "fragment"), [
    (("    title: test\n", "    title: test\n    colour: red\n"), 6, "colour", "unknown key"),
    (("fc: 8,", "fc: [8, 'x-y'],"), 8, "match.fc[1]", "wrong form"),
    (("fc: 8,", "fc: '30-25',"), 8, "match.fc", "not a range"),
    (("    attack: [T0814]\n", ""), 3, None, "missing required key 'attack'"),
    (("attack: [T0814]", "attack: [T814]"), 7, "attack[0]", "wrong form"),
    (("proto: modbus,", "proto: modbuss,"), 8, "match.proto", "not a protocol"),
    (("sub: 4}", "sub: 4, anomaly: NOPE}"), 8, "match.anomaly", "not an anomaly of modbus"),
    (("sub: 4}", "sub: 4, src: [alowed_masters]}"), 8, "match.src", "not a known set"),
    (("sub: 4}", "sub: 4, iin: DEVICE_RESTARTED}"), 8, "match.iin", "not an IIN bit"),
    (("    title: test\n", "    title: test\n    title: again\n"), 6, "title", "duplicate key"),
    (("fc: 8,", "fc: {a: 1},"), 8, "match.fc", "is not a whole number or a string"),
    (("fc: 8,", "fc: 70000,"), 8, "match.fc", "70000 is above 65535"),
    (("fc: 8,", "fc: [],"), 8, "match.fc", "needs at least 1 item"),
    (("    attack: [T0814]\n", "    attack: T0814\n"), 7, "attack", "'T0814' is not a list"),
    (("    title: test\n", "    title: test\n    threshold: {count: 0, window: 5m}\n"), 6,
     "threshold.count", "0 is below 1"),
    (("    title: test\n", "    title: test\n    threshold: {count: 2, window: soon}\n"), 6,
     "threshold.window", "'soon' has the wrong form"),
])
def test_schema_and_semantic_errors_are_located(
        tmp_path: Path, change: tuple[str, str], line: int, key: str | None,
        fragment: str) -> None:
    text = GOOD_RULE.replace(*change)
    assert text != GOOD_RULE
    (msg,) = problems(tmp_path, text)
    where = f"{tmp_path / 'pack.yaml'}:{line}: rule site.test.one:"
    assert msg.startswith(where), msg
    if key:
        assert f" {key}: " in msg, msg
    assert fragment in msg, msg


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    (msg,) = problems(tmp_path, GOOD_RULE + "  - id: [unclosed\n")
    assert re.match(rf"{re.escape(str(tmp_path / 'pack.yaml'))}:1[01]: not valid YAML", msg)


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    write(tmp_path, GOOD_RULE, "a.yaml")
    write(tmp_path, GOOD_RULE, "b.yaml")
    with pytest.raises(RuleError, match=r"b.yaml:3: rule site.test.one: id: duplicate"):
        load_rules([tmp_path], set_names())


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = GOOD_RULE.replace("severity: high", "severity: hgih").replace("fc: 8", "fc: -1")
    assert len(problems(tmp_path, text)) == 2


def test_rules_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(SHIPPED_RULES)]) == 0
    assert "ok: " in capsys.readouterr().out
    write(tmp_path, GOOD_RULE.replace("severity: high", "severity: hgih"))
    assert main(["rules", "check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "pack.yaml:6: rule site.test.one: severity:" in err


def test_replay_refuses_bad_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, GOOD_RULE.replace("severity: high", "severity: hgih"))
    dummy = tmp_path / "x.pcap"
    dummy.write_bytes(b"")
    assert main(["replay", "--no-progress", "--rules", str(tmp_path), str(dummy)]) == 2
    assert "severity: 'hgih'" in capsys.readouterr().err


def test_bad_config_sets_are_located(tmp_path: Path) -> None:
    path = tmp_path / "sensor.toml"
    path.write_text('[sets]\nallowed_masters = ["10.0.0.1", "not-an-ip"]\n', encoding="utf-8")
    with pytest.raises(cfg.ConfigError, match=r"sensor.toml:2: \[sets\] allowed_masters: "
                                              r"'not-an-ip' is not an IP"):
        cfg.load(path)
    path.write_text("[sets]\nalowed_masters = []\n", encoding="utf-8")
    with pytest.raises(cfg.ConfigError, match=r"sensor.toml:2: \[sets\] alowed_masters: "
                                              "unknown key"):
        cfg.load(path)
    path.write_text("[detection]\ndedup_window = \"soon\"\n", encoding="utf-8")
    with pytest.raises(cfg.ConfigError, match=r":2: \[detection\] dedup_window"):
        cfg.load(path)


def test_rules_check_reports_bad_config(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sensor.toml"
    path.write_text("[detection]\nrules = 5\n", encoding="utf-8")
    import argparse
    assert cmd_rules_check(argparse.Namespace(dirs=[], config=path)) == 1
    assert "sensor.toml:2: [detection] rules:" in capsys.readouterr().err
