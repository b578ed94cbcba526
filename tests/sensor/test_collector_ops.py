"""The collector under operations (issue 19): SIGHUP reloads the allow-list of sensor
keys and reopens the SIEM file, and the shipped logrotate file rotates it for real.

Real processes throughout: a ``mamori collect`` subprocess, forwarder subprocesses,
``kill -HUP`` and ``/usr/sbin/logrotate``. Every wait is bounded.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mamori.parsers.wire import Kind
from mamori.sensor.collector.storage import SqliteStorage
from mamori.sensor.forwarding.keys import read_key
from tests.conftest import PROJECT, unavailable
from tests.sensor.test_collector import Site, wait_for

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
SHIPPED = PROJECT / "packaging" / "logrotate" / "mamori"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, sensors=2)
    yield s
    if s.proc is not None:
        s.proc.kill()
        s.proc.wait(timeout=10)


def stored(site: Site, key: str) -> int:
    st = SqliteStorage(site.coll_dir / "collector" / "collector.db")
    try:
        return len(st.sequence(key, int(Kind.ALERT)))
    finally:
        st.close()


def hup(site: Site) -> None:
    assert site.proc is not None
    site.proc.send_signal(signal.SIGHUP)
    assert site.proc.stderr is not None
    line = site.proc.stderr.readline()  # said once the loop has reloaded
    assert b"reloaded" in line, line


def test_sighup_reloads_the_allow_list_without_a_restart(site: Site) -> None:
    """s1's key written over s0's file in place: the directory's mtime does not change,
    so only the HUP makes the collector see it. After it s1 is served, s0 refused."""
    keys = site.coll_dir / "keys" / "sensors"
    k0, k1 = site.sensor_key("s0"), site.sensor_key("s1")
    (keys / "s1.pub").unlink()  # s1 is not allowed yet
    site.start_collector()
    s0 = site.sensor(site.sensor_confs[0], 1200, interval=0.05, flush=1.0)
    s1 = site.sensor(site.sensor_confs[1], 5, flush=40.0)
    try:
        wait_for(lambda: stored(site, k0) >= 3, 20, "s0's first alerts")
        with (keys / "s0.pub").open("r+b") as same_inode:  # no new directory entry
            same_inode.truncate()
            same_inode.write(k1.encode() + b"\n")
        assert read_key(keys / "s0.pub") == k1.encode()
        time.sleep(3.0)  # past the collector's own 2 s directory check
        assert stored(site, k1) == 0, "s1 admitted before the HUP"
        before = stored(site, k0)
        assert before > 3, "s0 stopped being served before the HUP"
        hup(site)
        wait_for(lambda: stored(site, k1) == 5, 30, "s1's alerts after the HUP")
        assert site.proc is not None and site.proc.poll() is None  # HUP did not kill it
        settled = stored(site, k0)
        time.sleep(1.5)  # s0 still sends one alert every 50 ms; none is taken now
        assert s0.poll() is None, "s0 finished too early to show the refusal"
        assert stored(site, k0) == settled
    finally:
        for proc in (s0, s1):
            proc.kill()
            proc.wait(timeout=10)
    site.stop_collector()
    st = SqliteStorage(site.coll_dir / "collector" / "collector.db")
    try:
        rows = {r.sensor: r for r in st.status()}
    finally:
        st.close()
    # counted, as every message of a key no longer allowed, under the unauthenticated row
    assert sum(r.rejected.get("revoked_key", 0) for r in rows.values()) > 0, rows


def _staged_logrotate(site: Site, tmp: Path) -> Path:
    """The shipped file with its path pointed at the test's SIEM file and postrotate's
    ``systemctl kill`` replaced by the HUP it sends, to this collector's pid."""
    assert site.proc is not None
    text = SHIPPED.read_text(encoding="utf-8")
    assert "/var/log/mamori/*.jsonl {" in text
    lines = [line for line in text.splitlines() if "systemctl kill" not in line]
    staged = "\n".join(lines).replace("/var/log/mamori/*.jsonl",
                                      str(site.jsonl.parent / "*.jsonl"))
    staged = staged.replace("\tpostrotate\n", f"\tpostrotate\n\t\tkill -HUP {site.proc.pid}\n")
    out = tmp / "logrotate.conf"
    out.write_text(staged + "\n", encoding="utf-8")
    return out


def test_logrotate_rotates_the_siem_file_and_the_collector_writes_a_new_one(
        site: Site, tmp_path: Path) -> None:
    import subprocess

    if not Path(LOGROTATE).exists():
        unavailable("logrotate not installed (apt-get install logrotate)")
    site.start_collector()
    k0 = site.sensor_key("s0")
    first = site.sensor(site.sensor_confs[0], 4)
    assert first.wait(timeout=40) == 0
    wait_for(lambda: site.jsonl.exists() and len(site.jsonl_alerts()) == 4, 20,
             "4 SIEM lines")
    conf = _staged_logrotate(site, tmp_path)
    rotated = subprocess.run([LOGROTATE, "--force", "--state", str(tmp_path / "state"),
                              str(conf)], capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    assert site.proc is not None and site.proc.stderr is not None
    assert b"reloaded" in site.proc.stderr.readline()
    old = site.jsonl.with_name(site.jsonl.name + ".1")
    assert len(old.read_text().splitlines()) == 4
    assert site.jsonl.read_text() == ""  # nocreate: the collector's reopen made it
    second = site.sensor(site.sensor_confs[0], 3)
    assert second.wait(timeout=40) == 0
    wait_for(lambda: stored(site, k0) == 7 and site.jsonl.exists()
             and len(site.jsonl_alerts()) == 3, 20, "3 SIEM lines in the new file")
    old_ids = [(d["epoch"], d["seq"]) for d in map(json.loads, old.read_text().splitlines())]
    new_ids = [(a["epoch"], a["seq"]) for a in site.jsonl_alerts()]
    assert len(old_ids) == 4 and len(new_ids) == 3
    assert not set(old_ids) & set(new_ids)  # nothing twice, nothing lost
    site.stop_collector()


def test_the_shipped_logrotate_file_passes_logrotate_debug(tmp_path: Path) -> None:
    import subprocess

    if not Path(LOGROTATE).exists():
        unavailable("logrotate not installed (apt-get install logrotate)")
    proc = subprocess.run([LOGROTATE, "-d", "--state", str(tmp_path / "state"), str(SHIPPED)],
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "error" not in out.lower(), out
    assert "rotating pattern: /var/log/mamori/*.jsonl" in out, out
