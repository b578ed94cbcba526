"""The config schema: defaults, validation, and errors that name file, line and key."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from mamori.sensor import config as cfg
from mamori.sensor.forwarding.keys import generate


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


def test_an_endless_file_is_refused_after_a_bounded_read() -> None:
    with pytest.raises(cfg.ConfigError, match="larger than 1 MiB"):
        cfg.load("/dev/zero")


def test_bytes_that_are_not_utf8_are_located(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[sensor]\n\nsite = 'M\xfcnchen'\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert (err.value.line, str(err.value)) == (3, f"{path}:3: not UTF-8 text")


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


# -- hardening (issue 12 item 4) ----------------------------------------------------------
def located(err: cfg.ConfigError) -> list[tuple[str, int | None, str | None]]:
    return [(p.file, p.line, p.key) for p in err.problems]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+inf", "-nan"])
@pytest.mark.parametrize(("section", "key"), [("detection", "dedup_window"),
                                              ("limits", "tcp_idle_timeout"),
                                              ("forward", "ack_timeout"),
                                              ("collect", "max_clock_skew")])
def test_nan_and_inf_durations_are_refused(tmp_path: Path, section: str, key: str,
                                           value: str) -> None:
    """A NaN window compares false with everything: it would switch aggregation off."""
    path = write(tmp_path, f"[sensor]\nname = 'x'\n\n[{section}]\n{key} = {value}\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert (err.value.file, err.value.line, err.value.key) == (
        str(path), 5, f"[{section}] {key}")
    assert "finite" in str(err.value)
    assert str(err.value).startswith(f"{path}:5: [{section}] {key}: ")


@pytest.mark.parametrize("value", ["1e300", "9223372036854775807", "'3000000000d'",
                                   "'99999999999999999999w'"])
def test_durations_beyond_a_century_are_refused(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"[limits]\nudp_idle_timeout = {value}\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert (err.value.line, err.value.key) == (2, "[limits] udp_idle_timeout")


def test_a_century_is_the_longest_duration() -> None:
    assert cfg.v_seconds(cfg.MAX_SECONDS) == cfg.MAX_SECONDS
    assert cfg.v_seconds("36500d") == cfg.MAX_SECONDS
    with pytest.raises(ValueError, match="100 years"):
        cfg.v_seconds(cfg.MAX_SECONDS + 1)


def forwarding(tmp_path: Path, server_key: str, *, secret: bool = True,
               tables: bool = False) -> Path:
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True, exist_ok=True)
    if secret:
        generate("sensor", state / "keys")
    if tables:
        text = (f"[sensor]\nstate_dir = '{state}'\n\n[[forward.collectors]]\n"
                f"endpoint = 'tcp://127.0.0.1:7700'\nserver_key = '{server_key}'\n")
    else:
        text = (f"[sensor]\nstate_dir = '{state}'\n\n[forward]\nwindow = 10\ncollectors = "
                f"[{{endpoint = 'tcp://127.0.0.1:7700', server_key = '{server_key}'}}]\n")
    return write(tmp_path, text)


@pytest.mark.parametrize("tables", [False, True], ids=["inline", "array-of-tables"])
def test_a_missing_server_key_file_is_refused_with_file_line_and_key(
        tmp_path: Path, tables: bool) -> None:
    path = forwarding(tmp_path, "collector.pub", tables=tables)
    cfg.load(path)  # the values are valid: 'keys generate' may still read this file
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, check_files=True)
    assert located(err.value) == [(str(path), 6, "[forward] collectors")]
    message = str(err.value)
    assert message.startswith(f"{path}:6: [forward] collectors: ")
    assert str(tmp_path / "state" / "collector.pub") in message
    assert "no such key file" in message


def test_each_collector_table_is_located(tmp_path: Path) -> None:
    """Two [[forward.collectors]]: the problem points at the second one's server_key."""
    state = tmp_path / "state"
    generate("sensor", state / "keys")
    generate("one", state)
    path = write(tmp_path, f"[sensor]\nstate_dir = '{state}'\n\n"
                           "[[forward.collectors]]\nendpoint = 'tcp://10.0.0.1:7700'\n"
                           "server_key = 'one.pub'\n\n"
                           "[[forward.collectors]]\nendpoint = 'tcp://10.0.0.2:7700'\n"
                           "server_key = 'two.pub'\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, check_files=True)
    assert located(err.value) == [(str(path), 10, "[forward] collectors")]
    assert "tcp://10.0.0.2:7700" in str(err.value)


def test_a_server_key_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state" / "keys" / "c.pub").mkdir(parents=True)
    path = forwarding(tmp_path, "keys/c.pub")
    with pytest.raises(cfg.ConfigError, match="is a directory, not a key file"):
        cfg.load(path, check_files=True)


def test_a_missing_secret_key_is_refused_at_the_collectors_line(tmp_path: Path) -> None:
    """The default secret_key is not in the file: point at what makes it needed."""
    path = forwarding(tmp_path, "Y" * 40, secret=False)  # an inline Z85 server key
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, check_files=True)
    assert located(err.value) == [(str(path), 6, "[forward] secret_key")]
    assert str(tmp_path / "state" / "keys" / "sensor.secret") in str(err.value)


def test_present_key_files_pass(tmp_path: Path) -> None:
    generate("collector", tmp_path / "state" / "keys")
    conf = cfg.load(forwarding(tmp_path, "keys/collector.pub"), check_files=True)
    assert conf.get("forward", "collectors")[0].server_key == "keys/collector.pub"


def test_a_malformed_server_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "c.pub").write_text("# a comment, and no key\n")
    path = forwarding(tmp_path, "c.pub")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, check_files=True)
    assert located(err.value) == [(str(path), 6, "[forward] collectors")]
    assert f"{tmp_path / 'state' / 'c.pub'}: not a Z85 CURVE key" in str(err.value)


def test_a_secret_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = forwarding(tmp_path, "Y" * 40)
    (tmp_path / "state" / "keys" / "sensor.secret").chmod(0o644)
    with pytest.raises(cfg.ConfigError, match="accessible by others"):
        cfg.load(path, check_files=True)


def test_no_forwarding_needs_no_key_files(tmp_path: Path) -> None:
    cfg.load(write(tmp_path, f"[sensor]\nstate_dir = '{tmp_path / 'absent'}'\n"),
             check_files=True)


def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    path = write(tmp_path, f"[sensor]\nname = 'x'\nstate_dir = '{tmp_path / 'file' / 'sub'}'\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, check_files=True)
    assert located(err.value) == [(str(path), 3, "[sensor] state_dir")]
    assert f"{tmp_path / 'file'} is a file" in str(err.value)


@pytest.mark.parametrize(("text", "line", "column"), [
    ("[ports]\nmodbus = 502\ndnp3 = = 1\n", 3, 8),
    ("[sensor]\nname = 'a' 'b'\n", 2, 12),
    ("[sensor]\nname = 'x'\nname = 'y'\n", 3, 11),
    ("[sensor\nname = 'x'\n", 1, 8),
    ("[sensor]\nname = \"x", 2, 10),  # at the end of the file: still a column
    ("[sensor]\nname = [1,\n", 3, 1),
])
def test_toml_syntax_errors_carry_line_and_column(tmp_path: Path, text: str, line: int,
                                                   column: int) -> None:
    path = write(tmp_path, text)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert (err.value.line, err.value.column) == (line, column)
    assert str(err.value).startswith(f"{path}:{line}:{column}: not valid TOML: ")
    assert "(at line" not in str(err.value)  # said once, in front


@pytest.mark.parametrize(("text", "line", "key", "words"), [
    ("[ports]\nmodbus = 502\n\nsensor.name = 5\n", 4, "[ports] sensor", "unknown table"),
    ("# top\n\nsensor.name = 5\n", 3, "[sensor] name", "not a string"),
    ("sensor . 'name' = 5\n", 1, "[sensor] name", "not a string"),
    ("[sensor]\nname = 'x'\n\n[sensor.sub]\nkey = 1\n", 4, "[sensor] sub", "unknown table"),
    ("[sensor]\nname = 'x'\nsub.key = 1\n", 3, "[sensor] sub", "unknown table [sensor.sub]"),
    ("[ports]\nmodbus = 502\n[sensor.\"odd key\"]\nx = 1\n", 3, "[sensor] odd key",
     "unknown table"),
    ("[sensor]\nname = '''\n[bogus]\nsite = 1\n'''\nsite = 5\n", 6, "[sensor] site",
     "not a string"),  # lines inside a multi-line string are not keys
])
def test_dotted_keys_and_sub_tables_are_located(tmp_path: Path, text: str, line: int,
                                                key: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert (err.value.line, err.value.key) == (line, key)
    assert words in str(err.value)


def test_every_problem_is_listed(tmp_path: Path) -> None:
    path = write(tmp_path, "[sensor]\nname = ''\n\n[ports]\nmodbus = 0\n\n[bogus]\nx = 1\n\n"
                           "[limits]\nfoo = 1\ntcp_idle_timeout = nan\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert located(err.value) == [
        (str(path), 2, "[sensor] name"), (str(path), 5, "[ports] modbus"),
        (str(path), 7, "[bogus]"), (str(path), 11, "[limits] foo"),
        (str(path), 12, "[limits] tcp_idle_timeout")]
    assert err.value is err.value.problems[0]  # reads as the first


def test_check_config_prints_every_problem(tmp_path: Path) -> None:
    """The real command: each problem a line with file, line and key, then the count."""
    path = write(tmp_path, f"[sensor]\nstate_dir = '{tmp_path}'\n\n[detection]\n"
                           "dedup_window = nan\n\n[limits]\ntcp_idle_timeout = inf\n"
                           "max_flows = 'many'\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "mamori"), "check-config",
                           "--config", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"mamori: {path}:5: [detection] dedup_window: nan is not a duration "
        "(a finite number of seconds)",
        f"mamori: {path}:8: [limits] tcp_idle_timeout: inf is not a duration "
        "(a finite number of seconds)",
        f"mamori: {path}:9: [limits] max_flows: 'many' is not a whole number",
        "mamori: 3 problems"]


def test_check_config_refuses_a_missing_server_key(tmp_path: Path) -> None:
    path = forwarding(tmp_path, "absent.pub")
    proc = subprocess.run([str(Path(sys.executable).parent / "mamori"), "check-config",
                           "--config", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"mamori: {path}:6: [forward] collectors: server_key of tcp://127.0.0.1:7700: "
        f"{tmp_path / 'state' / 'absent.pub'}: no such key file (mamori keys generate)"]


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "-1", "1e999", "soon", ""])
def test_duration_flags_refuse_what_the_file_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cfg.seconds_flag(text)


def test_duration_flags_take_numbers_and_units() -> None:
    assert cfg.seconds_flag("2.5") == 2.5
    assert cfg.seconds_flag("2m") == 120.0


def test_collect_duration_nan_is_a_usage_error() -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "mamori"), "collect",
                           "--duration", "nan"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--duration: nan is not a duration" in proc.stderr.splitlines()[-1]


def test_file_checks_are_listed_with_value_problems(tmp_path: Path) -> None:
    """A bad value elsewhere does not hide a missing key file, nor the other way round."""
    path = forwarding(tmp_path, "absent.pub")
    path.write_text(path.read_text() + "\n[detection]\ndedup_window = nan\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, check_files=True)
    assert located(err.value) == [(str(path), 9, "[detection] dedup_window"),
                                  (str(path), 6, "[forward] collectors")]


def test_a_check_is_skipped_when_a_value_it_reads_is_invalid(tmp_path: Path) -> None:
    """An invalid state_dir is read as the default: its key paths would be noise."""
    path = write(tmp_path, "[sensor]\nstate_dir = 5\n[forward]\n"
                           "collectors = [{endpoint = 'tcp://x:1', server_key = 'absent.pub'}]\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, check_files=True)
    assert located(err.value) == [(str(path), 2, "[sensor] state_dir")]


def test_the_handshake_limits_reach_the_pipeline_and_a_zero_timeout_is_refused(
        tmp_path: Path) -> None:
    from mamori.sensor.daemon.run import pipeline_config

    path = tmp_path / "sensor.toml"
    path.write_text("[limits]\nmax_handshakes = 64\nhandshake_timeout = \"2s\"\n")
    config = pipeline_config(cfg.load(path))
    assert (config.max_handshakes, config.handshake_timeout) == (64, 2.0)
    path.write_text("[limits]\nhandshake_timeout = 0\n")
    with pytest.raises(cfg.ConfigError, match=r"sensor.toml:2: \[limits\] handshake_timeout: "
                                              r".*longer than 0 s"):
        cfg.load(path)
