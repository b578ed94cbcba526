"""Every bad path, permission, port and output the ``mamori`` CLI can be given.

Each case runs the installed ``mamori`` as a real process and asserts what an
operator sees: a non-zero exit, exactly one line on stderr, that line naming the
path or address at fault (and why), and never a traceback. Permissions are
exercised as the ``nobody`` user when the suite runs as root (root reads any
file), so the site directory lives outside pytest's root-only temporary tree.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mamori.sensor.web.auth import create_token_file
from tests.conftest import PROJECT, corpus_path, mamori_without

MAMORI = str(Path(sys.executable).parent / "mamori")
SAMPLE = PROJECT / "samples" / "modbus_demo.pcap"
AS_ROOT = os.geteuid() == 0


@dataclass(frozen=True)
class Site:
    """A directory of good and bad files, readable by the unprivileged user."""

    root: Path

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def __str__(self) -> str:
        return str(self.root)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="mamori-cli-errors-"))
    root.chmod(0o755)
    try:
        shutil.copy(SAMPLE, root / "capture.pcap")
        (root / "capture.pcap").chmod(0o644)
        shutil.copy(SAMPLE, root / "unreadable.pcap")
        (root / "unreadable.pcap").chmod(0o000)
        (root / "closed").mkdir(mode=0o700)  # nobody may not enter it
        (root / "zeek").mkdir()
        (root / "zeek" / "modbus.log").write_text("#separator \\x09\n")
        (root / "zeek" / "modbus.log").chmod(0o000)
        shutil.copy(SAMPLE, root / "closed" / "capture.pcap")
        (root / "readonly").mkdir(mode=0o755)  # nobody may not write in it
        (root / "a_dir").mkdir()
        (root / "loop1").symlink_to(root / "loop2")
        (root / "loop2").symlink_to(root / "loop1")
        (root / "afile").write_text("a file where a directory should be\n")
        (root / "junk.db").write_text("not a database\n")
        (root / "junk.json").write_text("{not json\n")
        filled = run(["replay", "--no-progress", str(root / "capture.pcap"),
                      "--store", str(root / "sensor.db")])  # a real sensor store
        assert filled.returncode == 0, filled.stderr
        conn = sqlite3.connect(root / "other.db")
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
        (root / "unreadable.toml").write_text("[sensor]\nname = 'x'\n")
        (root / "unreadable.toml").chmod(0o000)
        (root / "forward-bad").mkdir()
        (root / "forward-bad" / "forward").mkdir()
        shutil.copy(root / "sensor.db", root / "forward-bad" / "forward" / "journal.db")
        (root / "forward-junk" / "forward").mkdir(parents=True)
        (root / "forward-junk" / "forward" / "journal.db").write_text("junk\n")
        create_token_file(root / "web" / "token")
        for name, key in (("no-key", "absent.pub"), ("bad-key", "afile")):
            (root / f"{name}.toml").write_text(
                f"[sensor]\nstate_dir = '{root}'\n\n[forward]\ncollectors = [\n"
                f"  {{endpoint = 'tcp://127.0.0.1:7700', server_key = '{key}'}},\n]\n")
        for name, journal in (("journal-under-a-file", "afile/j.db"),
                              ("journal-directory", "a_dir"),
                              ("journal-sensor-store", "sensor.db")):
            (root / f"{name}.toml").write_text(
                f"[sensor]\nstate_dir = '{root}'\n\n[forward]\njournal = '{journal}'\n"
                "collectors = [{endpoint = 'tcp://127.0.0.1:7700', server_key = 'k.pub'}]\n")
        for path in root.rglob("*"):
            if path.is_dir() and path.name != "closed":
                path.chmod(0o755)
        yield Site(root)
    finally:
        shutil.rmtree(root)


def run(argv: list[str], *, unprivileged: bool = False,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if unprivileged and AS_ROOT:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) is needed to drop root"
        prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([*prefix, MAMORI, *argv], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=env, stdin=subprocess.DEVNULL)


def assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, one stderr line containing every needle, no traceback."""
    lines = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode != 0, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


Case = Callable[[Site], tuple[list[str], list[str]]]  # -> argv, what the line must say

REPLAY = ["replay", "--no-progress"]


def replay_output(flag: str, target: str, why: str) -> Case:
    """``replay --FLAG TARGET`` (relative to the site); the line names TARGET and why."""
    def case(s: Site) -> tuple[list[str], list[str]]:
        out = str(s / target)  # an absolute target stays itself
        return [*REPLAY, str(s / "capture.pcap"), f"--{flag}", out], [out, why]
    return case

CASES: dict[str, Case] = {
    # capture files
    "replay-directory": lambda s: (
        [*REPLAY, str(s / "a_dir")], [str(s / "a_dir"), "is a directory"]),
    "replay-missing": lambda s: (
        [*REPLAY, str(s / "missing.pcap")], [str(s / "missing.pcap"), "no such file"]),
    "replay-missing-after-good": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), str(s / "missing.pcap")],
        [str(s / "missing.pcap"), "no such file"]),
    "replay-symlink-loop": lambda s: (
        [*REPLAY, str(s / "loop1")], [str(s / "loop1"), "Too many levels of symbolic links"]),
    "verify-directory": lambda s: (
        ["verify", str(s / "a_dir")], [str(s / "a_dir"), "is a directory"]),
    "replay-zeek-logs-file": lambda s: (
        [*REPLAY, "--zeek-logs", str(s / "afile")], [str(s / "afile"), "not a directory"]),
    "replay-zeek-logs-missing": lambda s: (
        [*REPLAY, "--zeek-logs", str(s / "nodir")], [str(s / "nodir"), "no such directory"]),
    # output paths
    **{f"replay-{flag}-{name}": replay_output(flag, target, why)
       for flag in ("events", "alerts")
       for name, target, why in (
           ("missing-dir", "nodir/out.jsonl", "does not exist"),
           ("proc-version", "/proc/version", "cannot write"),
           ("under-a-file", "afile/out.jsonl", "is a file"),
           ("directory", "a_dir", "is a directory"),
           ("dev-full", "/dev/full", "No space left on device"))},
    "replay-zeek-logs-events-proc": lambda s: (
        [*REPLAY, "--zeek-logs", str(s / "a_dir"), "--events", "/proc/version"],
        ["/proc/version", "cannot write"]),
    "run-events-proc": lambda s: (
        ["run", "--config", "/dev/null", "--state-dir", str(s / "state-run"),
         "--events", "/proc/version"], ["/proc/version", "cannot write"]),
    "run-events-missing-dir": lambda s: (
        ["run", "--config", "/dev/null", "--state-dir", str(s / "state-run"),
         "--events", str(s / "nodir" / "e.jsonl")], [str(s / "nodir" / "e.jsonl")]),
    # stores
    "replay-store-directory": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--store", str(s / "a_dir")],
        [str(s / "a_dir"), "is a directory"]),
    "replay-store-under-a-file": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--store", str(s / "afile" / "x.db")],
        [str(s / "afile"), "is a file, not a directory"]),
    "replay-store-junk": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--store", str(s / "junk.db")],
        [str(s / "junk.db"), "not a usable store"]),
    "alerts-store-junk": lambda s: (
        ["alerts", "--config", "/dev/null", "--store", str(s / "junk.db")],
        [str(s / "junk.db"), "not a usable store"]),
    "alerts-store-directory": lambda s: (
        ["alerts", "--config", "/dev/null", "--store", str(s / "a_dir")],
        [str(s / "a_dir"), "is a directory"]),
    "alerts-store-missing": lambda s: (
        ["alerts", "--config", "/dev/null", "--store", str(s / "missing.db")],
        [str(s / "missing.db"), "no store"]),
    "assets-store-foreign": lambda s: (
        ["assets", "--config", "/dev/null", "--store", str(s / "other.db")],
        [str(s / "other.db"), "not a usable store"]),
    "baseline-freeze-under-a-file": lambda s: (
        ["baseline", "freeze", "--config", "/dev/null", "--store",
         str(s / "afile" / "x.db")], [str(s / "afile"), "is a file, not a directory"]),
    "run-store-under-a-file": lambda s: (
        ["run", "--config", "/dev/null", "--state-dir", str(s / "state-run"),
         "--interface", "lo", "--store", str(s / "afile" / "x.db")],
        [str(s / "afile"), "is a file, not a directory"]),
    "web-store-directory": lambda s: (
        ["web", "--config", "/dev/null", "--state-dir", str(s), "--port", "0",
         "--store", str(s / "a_dir")], [str(s / "a_dir"), "is a directory"]),
    "web-store-junk": lambda s: (
        ["web", "--config", "/dev/null", "--state-dir", str(s), "--port", "0",
         "--store", str(s / "junk.db")], [str(s / "junk.db"), "not a usable store"]),
    # baselines
    "baseline-import-missing": lambda s: (
        ["baseline", "import", str(s / "missing.json"), "--config", "/dev/null",
         "--store", str(s / "state-b" / "b.db")],
        [str(s / "missing.json"), "No such file"]),
    "baseline-import-directory": lambda s: (
        ["baseline", "import", str(s / "a_dir"), "--config", "/dev/null",
         "--store", str(s / "state-b" / "b.db")], [str(s / "a_dir"), "is a directory"]),
    "baseline-import-not-json": lambda s: (
        ["baseline", "import", str(s / "junk.json"), "--config", "/dev/null",
         "--store", str(s / "state-b" / "b.db")], [f"{s / 'junk.json'}:1:2", "not JSON"]),
    "baseline-export-missing-dir": lambda s: (
        ["baseline", "export", str(s / "nodir" / "b.json"), "--config", "/dev/null",
         "--store", str(s / "sensor.db")], [str(s / "nodir" / "b.json"), "does not exist"]),
    "baseline-export-proc": lambda s: (
        ["baseline", "export", "/proc/version", "--config", "/dev/null",
         "--store", str(s / "sensor.db")], ["/proc/version", "cannot write"]),
    "baseline-export-directory": lambda s: (
        ["baseline", "export", str(s / "a_dir"), "--config", "/dev/null",
         "--store", str(s / "sensor.db")], [str(s / "a_dir"), "is a directory"]),
    "baseline-export-dev-full": lambda s: (
        ["baseline", "export", "/dev/full", "--config", "/dev/null",
         "--store", str(s / "sensor.db")], ["/dev/full", "No space left on device"]),
    "replay-baseline-missing": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--baseline", str(s / "missing.json")],
        [str(s / "missing.json"), "No such file"]),
    "replay-baseline-directory": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--baseline", str(s / "a_dir")],
        [str(s / "a_dir"), "is a directory"]),
    # configuration and rules
    "replay-config-missing": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--config", str(s / "missing.toml")],
        [str(s / "missing.toml"), "cannot read"]),
    "replay-config-directory": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--config", str(s / "a_dir")],
        [str(s / "a_dir"), "is a directory"]),
    "replay-server-key-missing": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--config", str(s / "no-key.toml")],
        [f"{s / 'no-key.toml'}:5", "[forward] collectors", str(s / "absent.pub")]),
    "replay-server-key-malformed": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--config", str(s / "bad-key.toml")],
        [f"{s / 'bad-key.toml'}:5", "[forward] collectors", str(s / "afile"),
         "not a Z85 CURVE key"]),
    "replay-journal-under-a-file": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--config", str(s / "journal-under-a-file.toml")],
        [f"{s / 'journal-under-a-file.toml'}:5: [forward] journal", str(s / "afile"),
         "is a file, not a directory"]),
    "replay-journal-directory": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--config", str(s / "journal-directory.toml")],
        [f"{s / 'journal-directory.toml'}:5: [forward] journal", str(s / "a_dir"),
         "is a directory"]),
    "run-journal-sensor-store": lambda s: (
        ["run", "--config", str(s / "journal-sensor-store.toml"), "--interface", "lo"],
        [f"{s / 'journal-sensor-store.toml'}:5: [forward] journal", str(s / "sensor.db"),
         "not a forwarding journal"]),
    "replay-rules-missing": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--rules", str(s / "norules")],
        [str(s / "norules")]),
    "rules-check-dev-zero": lambda s: (
        ["rules", "check", "/dev/zero"], ["/dev/zero", "not a regular file"]),
    "replay-rules-dev-zero": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--rules", "/dev/zero"],
        ["/dev/zero", "not a regular file"]),
    "baseline-import-dev-zero": lambda s: (
        ["baseline", "import", "/dev/zero", "--config", "/dev/null",
         "--store", str(s / "state-b" / "b.db")], ["/dev/zero", "not a regular file"]),
    "replay-baseline-dev-zero": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--baseline", "/dev/zero"],
        ["/dev/zero", "not a regular file"]),
    "rules-check-missing": lambda s: (
        ["rules", "check", str(s / "norules")], [str(s / "norules")]),
    "check-config-missing": lambda s: (
        ["check-config", "--config", str(s / "missing.toml")],
        [str(s / "missing.toml"), "cannot read"]),
    "check-config-dev-zero": lambda s: (
        ["check-config", "--config", "/dev/zero"], ["/dev/zero", "not a configuration file"]),
    "check-config-directory": lambda s: (
        ["check-config", "--config", str(s / "a_dir")], [str(s / "a_dir"), "is a directory"]),
    "check-config-state-dir-file": lambda s: (
        ["check-config", "--config", "/dev/null", "--state-dir", str(s / "afile")],
        [str(s / "afile"), "not a directory", "state_dir"]),
    # keys and tokens
    "keys-into-a-file": lambda s: (
        ["keys", "generate", "k", "--dir", str(s / "afile")],
        [str(s / "afile"), "not a directory"]),
    "keys-into-a-symlink-loop": lambda s: (
        ["keys", "generate", "k", "--dir", str(s / "loop1")],
        [str(s / "loop1"), "Too many levels of symbolic links"]),
    "keys-under-a-file": lambda s: (
        ["keys", "generate", "k", "--dir", str(s / "afile" / "keys")],
        [str(s / "afile"), "not a directory"]),
    "web-token-under-a-file": lambda s: (
        ["web", "token", "--config", "/dev/null", "--token-file",
         str(s / "afile" / "token")], [str(s / "afile"), "not a directory"]),
    # the collector and the forwarding journal
    "collect-jsonl-proc": lambda s: (
        ["collect", "--state-dir", str(s / "state-c"), "--listen", "tcp://127.0.0.1:0",
         "--publish", "", "--jsonl", "/proc/version", "--duration", "1"],
        ["/proc/version", "cannot write"]),
    "collect-bad-endpoint": lambda s: (
        ["collect", "--state-dir", str(s / "state-c"), "--listen", "tcp://192.0.2.1:7700",
         "--publish", "", "--duration", "1"],
        ["tcp://192.0.2.1:7700", "Cannot assign requested address"]),
    "collect-db-sensor-store": lambda s: (
        ["collect", "--state-dir", str(s / "state-c"), "--listen", "tcp://127.0.0.1:0",
         "--publish", "", "--db", str(s / "sensor.db"), "--duration", "1"],
        [str(s / "sensor.db"), "not a collector store"]),
    "collect-db-under-a-file": lambda s: (
        ["collect", "--state-dir", str(s / "state-c"), "--listen", "tcp://127.0.0.1:0",
         "--publish", "", "--db", str(s / "afile" / "c.db"), "--duration", "1"],
        [str(s / "afile"), "not a directory"]),
    "collect-status-junk": lambda s: (
        ["collect", "status", "--state-dir", str(s), "--db", str(s / "junk.db")],
        [str(s / "junk.db"), "not a collector store"]),
    "collect-status-sensor-store": lambda s: (
        ["collect", "status", "--state-dir", str(s), "--db", str(s / "sensor.db")],
        [str(s / "sensor.db"), "not a collector store"]),
    "collect-status-directory": lambda s: (
        ["collect", "status", "--state-dir", str(s), "--db", str(s / "a_dir")],
        [str(s / "a_dir"), "is a directory"]),
    "collect-status-missing": lambda s: (
        ["collect", "status", "--state-dir", str(s), "--db", str(s / "missing.db")],
        [str(s / "missing.db"), "no collector store"]),
    "push-rules-missing-bundle": lambda s: (
        ["collect", "push-rules", "--state-dir", str(s), str(s / "missing.mrb")],
        [str(s / "missing.mrb"), "No such file"]),
    "push-rules-not-a-bundle": lambda s: (
        ["collect", "push-rules", "--state-dir", str(s), str(s / "junk.db")],
        [str(s / "junk.db"), "not offered (MALFORMED)"]),
    "push-rules-dev-zero": lambda s: (
        ["collect", "push-rules", "--state-dir", str(s), "/dev/zero"],
        ["/dev/zero", "not offered (MALFORMED)", "over 16777216"]),
    "audit-sensor-store": lambda s: (
        ["audit", "--state-dir", str(s / "forward-bad")],
        [str(s / "forward-bad" / "forward" / "journal.db"), "not a forwarding journal"]),
    "audit-junk": lambda s: (
        ["audit", "--state-dir", str(s / "forward-junk")],
        [str(s / "forward-junk" / "forward" / "journal.db"), "not a forwarding journal"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line(site: Site, name: str) -> None:
    argv, needles = CASES[name](site)
    before = {p: p.stat().st_mtime_ns for p in (site / "sensor.db", site / "other.db")}
    assert_one_line(run(argv), *needles)
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before  # a refused command wrote nothing into files it was shown
    assert not (site / "state-b").exists()  # nor created a store for a bad import


UNPRIVILEGED: dict[str, Case] = {
    "replay-unreadable": lambda s: (
        [*REPLAY, str(s / "unreadable.pcap")],
        [str(s / "unreadable.pcap"), "Permission denied"]),
    "replay-in-closed-directory": lambda s: (
        [*REPLAY, str(s / "closed" / "capture.pcap")],
        [str(s / "closed" / "capture.pcap"), "Permission denied"]),
    "verify-unreadable": lambda s: (
        ["verify", str(s / "unreadable.pcap")],
        [str(s / "unreadable.pcap"), "Permission denied"]),
    "replay-events-readonly-dir": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--events", str(s / "readonly" / "e.jsonl")],
        [str(s / "readonly" / "e.jsonl"), "Permission denied"]),
    "replay-alerts-readonly-dir": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--alerts", str(s / "readonly" / "a.jsonl")],
        [str(s / "readonly" / "a.jsonl"), "Permission denied"]),
    "replay-store-readonly-dir": lambda s: (
        [*REPLAY, str(s / "capture.pcap"), "--store", str(s / "readonly" / "new" / "s.db")],
        [str(s / "readonly"), "Permission denied"]),
    "replay-zeek-logs-unreadable-log": lambda s: (
        [*REPLAY, "--zeek-logs", str(s / "zeek")],
        [str(s / "zeek" / "modbus.log"), "Permission denied"]),
    "replay-zeek-logs-closed-directory": lambda s: (
        [*REPLAY, "--zeek-logs", str(s / "closed")], [str(s / "closed"), "Permission denied"]),
    "check-config-unreadable": lambda s: (
        ["check-config", "--config", str(s / "unreadable.toml")],
        [str(s / "unreadable.toml"), "Permission denied"]),
    "baseline-export-readonly-dir": lambda s: (
        ["baseline", "export", str(s / "readonly" / "b.json"), "--config", "/dev/null",
         "--store", str(s / "sensor.db")], [str(s / "readonly" / "b.json"),
                                            "Permission denied"]),
    "keys-readonly-dir": lambda s: (
        ["keys", "generate", "k", "--dir", str(s / "readonly" / "keys")],
        [str(s / "readonly" / "keys"), "Permission denied"]),
}


@pytest.mark.parametrize("name", sorted(UNPRIVILEGED))
def test_permission_denied_is_one_line(site: Site, name: str) -> None:
    argv, needles = UNPRIVILEGED[name](site)
    assert_one_line(run(argv, unprivileged=True, cwd=site.root), *needles)


def test_the_unprivileged_user_can_replay_a_readable_capture(site: Site) -> None:
    """The permission cases above fail for the permission, not for the user."""
    proc = run([*REPLAY, str(site / "capture.pcap")], unprivileged=True, cwd=site.root)
    assert proc.returncode == 0, proc.stderr
    assert "packets    238" in proc.stdout


@pytest.mark.parametrize("which", ["listen", "publish"])
def test_collect_on_a_port_in_use_names_the_address(site: Site, which: str) -> None:
    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))
        busy = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        spare = f"tcp://127.0.0.1:{free.getsockname()[1]}"
        free.close()  # a port nothing holds, for the endpoint that is not under test
        listen, publish = (busy, spare) if which == "listen" else (spare, busy)
        proc = run(["collect", "--state-dir", str(site / "state-c"), "--listen", listen,
                    "--publish", publish, "--duration", "5"])
    assert_one_line(proc, busy, "Address already in use")


@pytest.mark.parametrize(("module", "extra", "argv"), [
    ("pyshark", "verify", ["verify", str(SAMPLE)]),
    ("psycopg", "postgres", ["collect", "status", "--dsn", "dbname=mamori"]),
])
def test_a_missing_extra_is_one_line_naming_it(site: Site, module: str, extra: str,
                                               argv: list[str]) -> None:
    """pyshark and psycopg are extras of the pip install: without them the command that
    needs one says which to install, and the rest of mamori does not notice."""
    proc = mamori_without([module], *argv, cwd=site.root)
    assert_one_line(proc, module, f"pip install 'mamori[{extra}]'")
    assert proc.returncode == 2
    present = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    assert present.returncode == 0, f"the test venv has {module} (the test extra)"


def test_collect_listen_and_publish_on_one_port(site: Site) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    proc = run(["collect", "--state-dir", str(site / "state-c"), "--listen", endpoint,
                "--publish", endpoint, "--duration", "5"])
    assert_one_line(proc, endpoint, "Address already in use")


def test_web_on_a_port_in_use_names_the_address(site: Site) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run(["web", "--config", "/dev/null", "--state-dir", str(site),
                    "--store", str(site / "sensor.db"), "--port", str(port)])
    assert_one_line(proc, f"127.0.0.1:{port}", "Address already in use")


@pytest.mark.parametrize("command", [["alerts", "--json"], ["assets"],
                                     ["check-config", "--dump"]])
def test_a_full_standard_output_is_one_line(site: Site, command: list[str]) -> None:
    argv = [*command, "--config", "/dev/null"]
    if command[0] != "check-config":
        argv += ["--store", str(site / "sensor.db")]
    with open("/dev/full", "w") as full:
        proc = subprocess.run([MAMORI, *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    assert_one_line(proc, "standard output", "No space left on device")


@pytest.mark.corpus
def test_zeek_events_onto_a_full_disk_name_the_file(tmp_path: Path) -> None:
    """The write that fails is the flush at close, which knows no file name by itself."""
    log = corpus_path("icsnpp-modbus/testing/baseline/analyzer.basic/modbus_detailed.log")
    (tmp_path / "logs").mkdir()
    shutil.copy(log, tmp_path / "logs" / "modbus.log")
    command = [*REPLAY, "--zeek-logs", str(tmp_path / "logs")]
    proc = run([*command, "--events", "/dev/full"])
    assert_one_line(proc, "/dev/full", "No space left on device")
    written = run([*command, "--events", str(tmp_path / "e.jsonl")])
    assert written.returncode == 0, written.stderr
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) > 10  # it had events


def test_a_journal_that_cannot_be_opened_at_start_up_is_named(tmp_path: Path) -> None:
    """The fallback when load's checks were skipped or the journal changed since."""
    import sqlite3

    from mamori.sensor import config as cfg
    from mamori.sensor.forwarding.forwarder import Forwarder
    from mamori.sensor.forwarding.keys import generate
    from mamori.sensor.forwarding.options import forwarding_problem

    generate("sensor", tmp_path / "keys")
    generate("collector", tmp_path / "keys")
    (tmp_path / "forward" / "journal.db").mkdir(parents=True)
    conf = cfg.load(None, {("sensor", "state_dir"): str(tmp_path), ("forward", "collectors"): [
        {"endpoint": "tcp://127.0.0.1:7700", "server_key": "keys/collector.pub"}]})
    with pytest.raises(sqlite3.Error) as err:
        Forwarder(conf)
    assert forwarding_problem(conf, err.value).startswith(
        f"{tmp_path / 'forward' / 'journal.db'}: ")
