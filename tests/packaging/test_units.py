"""The shipped systemd units and default configuration (packaging/).

- ``systemd-analyze verify``: any message is a failure, warnings included.
- ``systemd-analyze security --offline=yes``: each service's exposure is at most 2.0.
- The units run the command lines the daemon, the collector and the key tool accept.
- ``packaging/sensor.toml`` passes the real schema, and so does every commented-out
  example in it once uncommented (the file cannot drift from ``sensor/config.py``).

Skipped, saying why, where systemd-analyze is absent (CI installs systemd).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "packaging" / "systemd"
DEFAULT_CONFIG = ROOT / "packaging" / "sensor.toml"
COLLECTOR_CONFIG = ROOT / "packaging" / "collector.toml"
SERVICES = ["mamori-sensor@.service", "mamori-collector.service", "mamori-keygen.service"]
MAX_EXPOSURE = 2.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None,
                                   reason="systemd-analyze not installed (apt-get install systemd)")


def _stage(tmp_path: Path) -> Path:
    """The units, with /usr/bin/mamori pointed at this checkout's CLI.

    verify checks that ExecStart= binaries exist; on a machine without the package the
    venv's ``mamori`` stands in. Nothing else in the units is changed.
    """
    cli = Path(sys.executable).with_name("mamori")
    target = "/usr/bin/mamori" if Path("/usr/bin/mamori").exists() or not cli.exists() \
        else str(cli)
    out = tmp_path / "units"
    out.mkdir()
    for unit in UNITS.iterdir():
        text = unit.read_text(encoding="utf-8").replace("/usr/bin/mamori", target)
        (out / unit.name).write_text(text, encoding="utf-8")
    return out


@needs_analyze
def test_verify_has_no_messages(tmp_path: Path) -> None:
    assert ANALYZE is not None
    staged = _stage(tmp_path)
    # A template is verified through an instance, as systemd would load it.
    instance = staged / "mamori-sensor@eth1.service"
    shutil.copy(staged / "mamori-sensor@.service", instance)
    files = [str(instance)] + [str(staged / n) for n in
                               ("mamori-collector.service", "mamori-keygen.service",
                                "mamori.target")]
    result = subprocess.run([ANALYZE, "verify", "--man=no", *files], capture_output=True,
                            text=True, cwd=staged, timeout=120)
    messages = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not messages, messages


def _exposure(path: Path) -> float:
    assert ANALYZE is not None
    result = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(path)],
                            capture_output=True, text=True, timeout=120, cwd=path.parent)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_analyze
@pytest.mark.parametrize("service", SERVICES)
def test_security_exposure_at_most_2(tmp_path: Path, service: str) -> None:
    score = _exposure(_stage(tmp_path) / service)
    assert score <= MAX_EXPOSURE, f"{service}: exposure {score} > {MAX_EXPOSURE}"


def _directives(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_sensor_unit_is_minimal() -> None:
    unit = _directives("mamori-sensor@.service")
    assert unit["ExecStart"] == [
        "/usr/bin/mamori run --config /etc/mamori/sensor.toml --interface %I --instance %I"]
    assert unit["Type"] == ["notify"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_RAW"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_RAW"]
    assert unit["RestrictAddressFamilies"] == ["AF_PACKET AF_UNIX AF_INET AF_INET6"]
    assert unit["User"] == ["mamori"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "MemoryDenyWriteExecute",
                "LockPersonality", "ProtectClock", "RestrictNamespaces",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs"):
        assert unit[key] == ["yes"], key
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["SystemCallFilter"][0] == "@system-service"


@pytest.mark.parametrize("service", ["mamori-collector.service", "mamori-keygen.service"])
def test_other_units_have_no_capabilities(service: str) -> None:
    unit = _directives(service)
    assert unit["CapabilityBoundingSet"] == [""]
    assert unit["AmbientCapabilities"] == [""]
    assert "AF_PACKET" not in unit["RestrictAddressFamilies"][0]


def test_keygen_matches_the_forwarder_default() -> None:
    unit = _directives("mamori-keygen.service")
    assert unit["ExecStart"] == [
        "/usr/bin/mamori keys generate sensor --dir /var/lib/mamori/keys"]
    assert unit["ConditionPathExists"] == ["!/var/lib/mamori/keys/sensor.secret"]


def _full_schema() -> None:
    """Import every module that adds config sections, as ``mamori run`` does."""
    import importlib

    for module in ("mamori.sensor.daemon.run", "mamori.sensor.forwarding.forwarder"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def test_default_config_validates() -> None:
    from mamori.sensor import config as cfg

    _full_schema()
    conf = cfg.load(DEFAULT_CONFIG)
    assert str(conf.get("sensor", "state_dir")) == "/var/lib/mamori"


@pytest.mark.parametrize("shipped", [DEFAULT_CONFIG, COLLECTOR_CONFIG], ids=lambda p: p.name)
def test_commented_examples_validate(tmp_path: Path, shipped: Path) -> None:
    """Uncomment every ``# key = value`` under its ``[section]`` (or ``[[section.key]]``):
    still a valid config."""
    from mamori.sensor import config as cfg

    _full_schema()
    known = {o.section for o in cfg.SCHEMA}
    lines = []
    section = None
    for raw in shipped.read_text(encoding="utf-8").splitlines():
        text = raw.lstrip("# ").rstrip() if raw.startswith("#") else raw
        # [section], or [[section.key]] (an array of tables: [[maintenance.windows]])
        if m := re.match(r"^\[(\w+)\]$|^\[\[(\w+)\.\w+\]\]$", text):
            section = m.group(1) or m.group(2)
            if section in known:
                lines.append(text)
        elif re.match(r"^\w+ = ", text) and section in known:
            lines.append(text)
    uncommented = tmp_path / "all.toml"
    uncommented.write_text("\n".join(lines) + "\n", encoding="utf-8")
    conf = cfg.load(uncommented)
    assert any(source != "default" for source in conf.sources.values())


def test_shipped_collector_config_passes_check_config() -> None:
    """What debian/rules and deb-test run on it: every error at once, none expected."""
    proc = subprocess.run([sys.executable, "-m", "mamori.sensor.cli", "check-config", "--config",
                           str(COLLECTOR_CONFIG), "--dump"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "/var/log/mamori/collector-alerts.jsonl" in proc.stdout
    assert "/var/lib/mamori-collector" in proc.stdout


def test_versions_agree() -> None:
    changelog = (ROOT / "packaging" / "debian" / "changelog").read_text(encoding="utf-8")
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    deb = re.match(r"mamori \(([^)]+)\)", changelog)
    py = re.search(r'^version = "([^"]+)"', project, re.M)
    assert deb and py and deb.group(1) == py.group(1)


def test_collector_writes_only_its_state_directory() -> None:
    unit = _directives("mamori-collector.service")
    assert unit["ExecStart"] == [
        "/usr/bin/mamori collect --config /etc/mamori/collector.toml "
        "--state-dir /var/lib/mamori-collector"]
    assert unit["StateDirectory"] == ["mamori-collector"]
    assert unit["ConditionPathExists"] == ["/etc/mamori/collector.toml"]
    assert unit["LogsDirectory"] == ["mamori"]  # the SIEM file of the shipped config
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_collector_unit_starts_with_the_shipped_config(tmp_path: Path) -> None:
    """The unit's ExecStartPre and ExecStart, run for real: only the paths are moved
    under tmp (state, log, config) and the endpoints onto free loopback ports."""
    import socket

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            found: int = s.getsockname()[1]
            return found

    unit = _directives("mamori-collector.service")
    cli = str(Path(sys.executable).with_name("mamori"))
    config = tmp_path / "collector.toml"
    moves = {"/var/lib/mamori-collector": str(tmp_path / "state"),
             "/var/log/mamori": str(tmp_path / "log"), "/etc/mamori/collector.toml":
             str(config), "/usr/bin/mamori": cli}

    def moved(text: str) -> str:
        for old, new in moves.items():
            text = text.replace(old, new)
        return text

    config.write_text(moved(COLLECTOR_CONFIG.read_text(encoding="utf-8")), encoding="utf-8")
    (tmp_path / "log").mkdir()  # LogsDirectory=
    (pre,) = unit["ExecStartPre"]
    assert pre.startswith("/bin/sh -c '") and pre.endswith("'")
    for _ in range(2):  # the second start keeps the key pair
        done = subprocess.run(["/bin/sh", "-c", moved(pre)[len("/bin/sh -c '"):-1]],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    public = tmp_path / "state" / "keys" / "collector.pub"
    key = public.read_bytes()
    assert (tmp_path / "state" / "keys" / "sensors").is_dir()  # the allow-list, empty
    (start,) = unit["ExecStart"]
    argv = [*moved(start).split(), "--listen", f"tcp://127.0.0.1:{port()}",
            "--publish", f"tcp://127.0.0.1:{port()}", "--duration", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "listening on" in proc.stderr and "stopped" in proc.stderr, proc.stderr
    assert public.read_bytes() == key
    assert (tmp_path / "log" / "collector-alerts.jsonl").exists()  # the SIEM file opened


def test_unit_command_lines_parse() -> None:
    """The subcommands and flags the units use exist in this tree's CLI."""
    from mamori.sensor.cli import build_parser

    parser = build_parser()
    commands = [
        ["run", "--config", "/etc/mamori/sensor.toml", "--interface", "eth1",
         "--instance", "eth1"],
        ["keys", "generate", "sensor", "--dir", "/var/lib/mamori/keys"],
        ["collect", "--config", "/etc/mamori/collector.toml",
         "--state-dir", "/var/lib/mamori-collector"],
    ]
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"mamori {' '.join(argv)}: not accepted by this tree's CLI")


def test_collector_unit_has_descriptors_for_ten_thousand_sensors() -> None:
    """One descriptor per sensor connection; the unit's filter forbids setrlimit, so
    LimitNOFILE is the limit the collector runs with (docs/scale.md)."""
    from mamori.sensor.collector.limits import fds_needed

    unit = _directives("mamori-collector.service")
    assert unit["LimitNOFILE"] and int(unit["LimitNOFILE"][0]) >= fds_needed(10_000)
