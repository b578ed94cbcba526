"""The command line as Suricata's and Zeek's users expect it (issue 19).

``run --help`` lists the sensor's options only, ``replay -r FILE`` reads a capture,
``zeek-replay`` is gone (``replay --zeek-logs`` runs the rules on log rows and counts
them as records), and ``verify`` without pyshark says so in one line. Each runs the
real ``mamori`` command as a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT
from tests.sensor.test_zeek import CONN, DETAILED_FIELDS, DETAILED_TYPES, write_log

MAMORI = str(Path(sys.executable).parent / "mamori")
SAMPLE = PROJECT / "samples" / "modbus_demo.pcap"
COLLECTOR_FLAGS = ("--listen", "--keys-dir", "--db", "--dsn", "--publish", "--jsonl")


def mamori(*argv: str, python: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [python, "-m", "mamori.sensor.cli"] if python else [MAMORI]
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=120,
                          cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT)})


def test_run_help_shows_the_sensor_options_and_collect_the_collector_ones() -> None:
    run = mamori("run", "--help")
    assert run.returncode == 0, run.stderr
    for flag in ("--interface", "--state-dir", "--modbus-ports", "--rules", "--web"):
        assert flag in run.stdout
    for flag in COLLECTOR_FLAGS:
        assert flag not in run.stdout, flag
    collect = mamori("collect", "--help")
    for flag in COLLECTOR_FLAGS:
        assert flag in collect.stdout, flag
    refused = mamori("run", "--listen", "tcp://127.0.0.1:1")
    assert refused.returncode == 2 and "unrecognized arguments: --listen" in refused.stderr


def test_replay_dash_r_reads_a_capture_like_a_positional_file() -> None:
    positional = mamori("replay", "--no-progress", str(SAMPLE))
    dash_r = mamori("replay", "--no-progress", "-r", str(SAMPLE))
    twice = mamori("replay", "--no-progress", "-r", str(SAMPLE), "--read", str(SAMPLE))
    assert positional.returncode == dash_r.returncode == twice.returncode == 0, dash_r.stderr
    assert "packets    238" in dash_r.stdout
    assert dash_r.stdout.splitlines()[:4] == positional.stdout.splitlines()[:4]
    assert "files      2" in twice.stdout and "packets    476" in twice.stdout
    missing = mamori("replay", "-r", str(PROJECT / "nothing.pcap"))
    assert missing.returncode == 2 and "nothing.pcap" in missing.stderr


def test_zeek_replay_is_gone_and_replay_zeek_logs_runs_the_rules(tmp_path: Path) -> None:
    gone = mamori("zeek-replay", str(tmp_path))
    assert gone.returncode == 2 and "invalid choice: 'zeek-replay'" in gone.stderr
    write_log(tmp_path / "modbus_detailed.log", "modbus_detailed", DETAILED_FIELDS,
              DETAILED_TYPES, [["7.0", *CONN, "12", "2", "DIAGNOSTICS", "-", "-", "-", "-",
                                "-", "T", "Force Listen Only Mode", "-", "\\x00\\x00", "-",
                                "-", "-"]])
    alerts = tmp_path / "alerts.jsonl"
    proc = mamori("replay", "--zeek-logs", str(tmp_path), "--alerts", str(alerts))
    assert proc.returncode == 0, proc.stderr
    assert "records    1" in proc.stdout and "records/s" in proc.stdout
    assert "packets" not in proc.stdout
    fired = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert [a["rule"] for a in fired] == ["mamori.modbus.listen_only"], fired


def test_verify_without_pyshark_says_what_is_missing_in_one_line(tmp_path: Path) -> None:
    """Debian's python3 has no pyshark (Debian does not package it), as the .deb runs."""
    probe = subprocess.run(["/usr/bin/python3", "-c", "import pyshark"], capture_output=True)
    assert probe.returncode != 0, "this test needs a python3 without pyshark"
    proc = mamori("verify", str(SAMPLE), python="/usr/bin/python3")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mamori verify: needs pyshark")
    assert "pip install pyshark" in lines[0] and "Traceback" not in proc.stderr
    assert "pip install 'mamori[verify]'" in lines[0]  # for a pip install
    with_it = mamori("verify", str(SAMPLE))  # the venv has pyshark: it runs
    assert with_it.returncode == 0, with_it.stderr
