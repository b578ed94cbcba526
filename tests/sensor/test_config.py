"""The config schema: defaults, validation, and errors that name file, line and key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sensor import config as cfg


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sensor.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    conf = cfg.load(None)
    assert conf.get("ports", "modbus") == frozenset({502})
    assert conf.sources[("ports", "modbus")] == "default"


def test_file_values_are_validated_and_located(tmp_path: Path) -> None:
    path = write(tmp_path, '[ports]\nmodbus = [502, 15020]\n\n[limits]\ntcp_idle_timeout = "15m"\n')
    conf = cfg.load(path)
    assert conf.get("ports", "modbus") == frozenset({502, 15020})
    assert conf.get("limits", "tcp_idle_timeout") == 900.0
    assert conf.sources[("limits", "tcp_idle_timeout")] == f"{path}:5"


@pytest.mark.parametrize(("text", "line", "key", "words"), [
    ("[ports]\nmodbus = [502, 70000]\n", 2, "[ports] modbus", "70000"),
    ("[ports]\n\n\nmodbsu = 502\n", 4, "[ports] modbsu", "unknown key"),
    ("[sensor]\nname = 'x'\n[portz]\nmodbus = 1\n", 3, "[portz]", "unknown section"),
    ("[limits]\nmax_flows = true\n", 2, "[limits] max_flows", "whole number"),
    ("[limits]\ntcp_idle_timeout = \"soon\"\n", 2, "[limits] tcp_idle_timeout", "duration"),
    ("[ports]\nmodbus = [502\n", None, None, "not valid TOML"),
])
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int | None,
                                       key: str | None, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert err.value.file == str(path)
    if line is not None:
        assert err.value.line == line
    assert err.value.key == key
    assert words in str(err.value)
    assert str(err.value).startswith(f"{path}:")


def test_toml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[ports]\nmodbus = 502\ndnp3 = = 1\n')
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert err.value.line == 3


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load(tmp_path / "absent.toml")
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(cfg.ConfigError, match="UTF-8"):
        cfg.load(binary)


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[ports]\nmodbus = 502\n")
    parser = argparse.ArgumentParser()
    cfg.add_flags(parser)
    args = parser.parse_args(["--modbus-ports", "1502,2502"])
    conf = cfg.load(path, cfg.flag_overrides(args))
    assert conf.get("ports", "modbus") == frozenset({1502, 2502})
    assert conf.sources[("ports", "modbus")] == "--modbus-ports"
    bad = parser.parse_args(["--modbus-ports", "0"])
    with pytest.raises(cfg.ConfigError, match="--modbus-ports"):
        cfg.load(None, cfg.flag_overrides(bad))


def test_dump_round_trips(tmp_path: Path) -> None:
    conf = cfg.load(write(tmp_path, "[ports]\ndnp3 = [20000, 20001]\n"))
    again = cfg.load(write(tmp_path, cfg.dump(conf)))
    assert again.values == conf.values


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("15m", 900.0),
                                                ("2h", 7200.0), ("7d", 604800.0),
                                                ("250ms", 0.25)])
def test_durations(text: str, seconds: float) -> None:
    assert cfg.parse_duration(text) == seconds
