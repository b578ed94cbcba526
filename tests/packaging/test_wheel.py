"""``pip install`` of the built wheel gives a working sensor (issue 19 item 3).

The wheel is built from this checkout, installed into a fresh venv in a temporary
directory (its dependencies come from the package index, or pip's cache), and run
from a directory outside the checkout, so nothing of the source tree can stand in
for what the wheel lacks: the rule packs and their schema, the web templates.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import PROJECT

SAMPLE = PROJECT / "samples" / "modbus_demo.pcap"


def run(*args: str | Path, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel (and its dependencies) installed."""
    root = tmp_path_factory.mktemp("wheel")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps",
                "-w", root / "dist", PROJECT, cwd=root)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((root / "dist").glob("mamori-*.whl"))
    env = root / "venv"
    venv.create(env, with_pip=True, clear=True)
    done = run(env / "bin" / "pip", "install", "-q", wheel, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    return env


def test_the_wheel_carries_the_rules_and_installs_no_checkout_paths(installed: Path) -> None:
    probe = run(installed / "bin" / "python", "-c",
                "import json, importlib.util as u, mamori, mamori.sensor.detection.loader as l; "
                "print(json.dumps([mamori.__file__, str(l.SHIPPED_RULES), str(l.SCHEMA_FILE), "
                "[n for n in ('sensor', 'parsers', 'rules') if u.find_spec(n)]]))",
                cwd=installed.parent)
    assert probe.returncode == 0, probe.stderr
    module, rules, schema, generic = json.loads(probe.stdout)
    assert Path(module).is_relative_to(installed), module
    # One ``mamori`` namespace: no generic top-level names land in site-packages.
    assert generic == [], generic
    assert Path(rules).is_relative_to(installed) and Path(schema).is_file(), rules
    assert {p.name for p in Path(rules).glob("*.yaml")} == {
        p.name for p in (PROJECT / "rules").glob("*.yaml")}
    web = run(installed / "bin" / "python", "-c",
              "import importlib.resources as r; print(sorted(p.name for p in "
              "r.files('mamori.sensor.web').joinpath('templates').iterdir()))",
              cwd=installed.parent)
    assert web.returncode == 0, web.stderr
    assert web.stdout.strip() == str(sorted(
        p.name for p in (PROJECT / "sensor" / "web" / "templates").iterdir())), web.stdout


def test_the_installed_wheel_replays_a_capture_with_detection(installed: Path,
                                                               tmp_path: Path) -> None:
    alerts = tmp_path / "alerts.jsonl"
    done = run(installed / "bin" / "mamori", "replay", "--no-progress", "--store",
               tmp_path / "store.db", "--alerts", alerts, SAMPLE, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rules = {json.loads(line)["rule"] for line in alerts.read_text().splitlines()}
    # The bundled sample's intruder: listen-only, restart, clear counters, point scan.
    assert {"mamori.modbus.listen_only", "mamori.modbus.restart_communications"} <= rules, rules
    checked = run(installed / "bin" / "mamori", "rules", "check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr


def test_the_base_install_has_no_extras_and_names_them_when_needed(installed: Path,
                                                                    tmp_path: Path) -> None:
    """pyshark (``mamori verify``) and psycopg (a collector on PostgreSQL) are the extras
    ``verify`` and ``postgres``: a plain ``pip install`` does without them, and the one
    command that would need one says in one line which to install."""
    probe = run(installed / "bin" / "python", "-c",
                "import importlib.util as u; print([n for n in ('pyshark', 'psycopg') "
                "if u.find_spec(n)])", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]", probe.stdout
    for argv, extra in ((["verify", SAMPLE], "verify"),
                        (["collect", "status", "--dsn", "dbname=mamori"], "postgres")):
        done = run(installed / "bin" / "mamori", *argv, cwd=tmp_path)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and f"pip install 'mamori[{extra}]'" in lines[0], done.stderr
