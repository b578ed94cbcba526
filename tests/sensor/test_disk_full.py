"""Disk full is a state, not a crash (issue 12 item 2), on real small tmpfs mounts.

Each test mounts its own tmpfs (a few MB), fills it with a real run, checks that nothing
crashed, that what could not be stored is counted and that a health alert says so, then
gives the filesystem more room (``mount -o remount,size=...``) or deletes a filler file
and checks that everything the store committed reaches a real collector process.

* the daemon (``mamori run`` on ``lo``, traffic sent with tcpreplay) with its state
  directory, store and journal together, on a 2 MB tmpfs;
* ``mamori replay`` into a store and journal on a full tmpfs, then a second run with
  room, which journals what the first one stored but could not journal;
* the collector with its database and SIEM file on a full tmpfs: nothing unstored is
  acknowledged, and the sensor's resends bring it all once there is room.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mamori.parsers.wire import Kind
from mamori.sensor.alerting.dispatch import DISK_BACK_RULE, DISK_FULL_RULE
from mamori.sensor.forwarding.keys import generate, read_key
from tests.conftest import require_tool
from tests.pcaprewrite import ip_checksum
from tests.ports import free_port
from tests.sensor.test_collector import SENSOR, wait_for
from tests.sensor.test_daemon import NotifySocket
from tests.sensor.test_forwarding_faults import Collector

PROJECT = Path(__file__).resolve().parents[2]
MAMORI = str(Path(sys.executable).parent / "mamori")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mount and packet sockets need root")


# -- tmpfs mounts -------------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """``tmpfs(name, size)`` mounts a tmpfs of ``size`` at ``tmp_path / name``."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                               "tmpfs", str(where)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def grow(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def fill(where: Path, leave: int = 0) -> Path:
    """A filler file taking all the free space of ``where`` but ``leave`` bytes."""
    filler = where / "filler"
    free = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
    with filler.open("wb") as f, contextlib.suppress(OSError):
        chunk = b"\0" * 65536
        left = max(free - leave, 0)
        while left > 0:
            f.write(chunk[:left])
            left -= min(left, len(chunk))
        f.flush()
    return filler


# -- traffic ------------------------------------------------------------------------------



def _frame(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 1, 5 << 4, 0x18, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    tcp = tcp[:16] + struct.pack("!H", ip_checksum(pseudo + tcp + payload)) + tcp[18:]
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp + payload


def sources_pcap(path: Path, first: int, n: int, port: int) -> Path:
    """``n`` clients (10.100.x.y from number ``first``) each sending one Modbus Report
    Server ID request to 10.0.0.2:``port`` in the middle of its connection: each flow is
    one distinct alert (the sensor picked the stream up mid-way)."""
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        start = time.time()
        for i in range(first, first + n):
            src = bytes([10, 100 + (i >> 16), (i >> 8) & 255, i & 255])
            frame = _frame(src, bytes([10, 0, 0, 2]), 20000 + i % 40000, port,
                           struct.pack("!HHHBB", 1, 0, 2, 1, 17))
            ts = start + (i - first) * 1e-4
            f.write(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(frame),
                                len(frame)))
            f.write(frame)
    return path


# -- what was committed, what arrived -----------------------------------------------------

def store_alerts(path: Path, forwardable: bool = True) -> dict[int, int]:
    """Store row id -> count (the forwardable ones: a store revision above 0)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        where = " WHERE rev > 0" if forwardable else ""
        return {int(i): int(c) for i, c in db.execute(f"SELECT id, count FROM alerts{where}")}
    finally:
        db.close()


def store_rules(path: Path) -> list[str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT rule FROM alerts ORDER BY id")]
    finally:
        db.close()


def collector_alerts(collector: Collector, sensor: str) -> dict[int, int]:
    st = collector.storage()
    try:
        return {int(d["id"]): int(d["count"]) for d in st.alerts(sensor)}
    finally:
        st.close()


def sensor_state(root: Path, collector: Collector, extra: str = "") -> tuple[Path, str]:
    """A sensor state directory forwarding to ``collector``; its config and key."""
    generate("sensor", root / "keys")
    collector.allow(root / "keys" / "sensor.pub")
    conf = root / "sensor.toml"
    conf.write_text(
        f'[sensor]\nstate_dir = "{root}"\n{extra}'
        f'[forward]\nsecret_key = "keys/sensor.secret"\nheartbeat_interval = 0.5\n'
        f'ack_timeout = 1.0\ncollectors = [{{endpoint = "{collector.endpoint}", '
        f'server_key = "{collector.root / "keys" / "collector.pub"}"}}]\n')
    return conf, read_key(root / "keys" / "sensor.pub").decode()


def _status(notify: NotifySocket) -> str:
    """The daemon's latest status line (reads what it sent for a moment first)."""
    notify.wait_for("\0", 0.3)
    lines = [m for m in notify.messages if m.startswith("STATUS=") and "frames" in m]
    return lines[-1] if lines else ""


def _frames(status: str) -> int:
    return int(status.split("STATUS=")[1].split()[0]) if status else 0


# -- the daemon -----------------------------------------------------------------------------

@needs_root
def test_daemon_fills_its_state_dir_keeps_detecting_and_forwards_all_committed(
        tmp_path: Path, tmpfs: Callable[[str, str], Path]) -> None:
    tcpreplay = require_tool("tcpreplay")
    state = tmpfs("state", "2m")
    collector = Collector(tmp_path / "collector")
    port = free_port()
    conf, key = sensor_state(
        state, collector, f'[capture]\ninterfaces = ["lo"]\n[ports]\nmodbus = [{port}]\n'
        f'[health]\nstats_interval = 0.3\n'
        # One alert per distinct source is the volume that fills the disk here; the
        # storm cap, which would fold them (tests/sensor/test_storm.py), is set above it.
        f'[detection]\nstorm_max_alerts = 1000000\n'
        # Their FC 17 would also be reconnaissance from hosts not learned (M4): declared
        # workstations, so the volume stays one alert (the mid-stream pickup) per source.
        f'[sets]\nengineering_workstations = ["10.100.0.0/14"]\n')
    first, later = 8000, 1500  # clients before the disk is full, and after
    burst1 = sources_pcap(tmp_path / "burst1.pcap", 0, first, port)
    burst2 = sources_pcap(tmp_path / "burst2.pcap", first, later, port)
    notify = NotifySocket(tmp_path / "notify")
    log = tmp_path / "daemon.log"
    collector.start()
    with log.open("w") as err:
        proc = subprocess.Popen([MAMORI, "run", "--config", str(conf)], stderr=err,
                                stdout=subprocess.DEVNULL,
                                env=dict(os.environ, NOTIFY_SOCKET=str(notify.path)))
    try:
        assert notify.wait_for("READY=1", 20), notify.messages
        subprocess.run([tcpreplay, "-q", "-i", "lo", "--pps", "4000", str(burst1)],
                       check=True, capture_output=True)
        assert notify.wait_for("DISK FULL", 30), (notify.messages[-3:], log.read_text())
        full = _status(notify)
        # Still capturing and detecting: a second burst is seen and held.
        subprocess.run([tcpreplay, "-q", "-i", "lo", "--pps", "4000", str(burst2)],
                       check=True, capture_output=True)
        wait_for(lambda: _frames(_status(notify)) >= first + later, 30,
                 "the daemon to see the second burst")
        assert proc.poll() is None
        during = _status(notify)
        stored_full = len(store_alerts(state / "mamori.db", forwardable=False))
        grow(state, "64m")
        wait_for(lambda: "DISK FULL" not in _status(notify), 60, "the daemon to recover")
        time.sleep(1.5)  # a tick to raise the "space back" alert
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "disk full" in output.lower()
    rules = store_rules(state / "mamori.db")
    assert DISK_FULL_RULE in rules and DISK_BACK_RULE in rules
    # The counts the status line gave while full: refused alerts, held, none lost.
    refused = int(during.split("DISK FULL: ")[1].split()[0])
    held = int(during.split("refused by the store, ")[1].split()[0])
    lost = int(during.split(" held, ")[1].split()[0])
    assert refused > 0 and held > 0 and lost == 0, during
    committed = store_alerts(state / "mamori.db")
    produced = first + later
    assert len([r for r in rules if r == "mamori.health.tcp_gap"]) == produced
    wait_for(lambda: collector_alerts(collector, key) == committed, 120,
             "the collector to hold every committed alert")
    collector.stop()
    print(f"\ndaemon on a 2 MB tmpfs: {produced} alerts produced; {stored_full} stored "
          f"when the disk was full; status then: {full.split('DISK FULL: ')[1]}; "
          f"later: {during.split('DISK FULL: ')[1]}; after recovery {len(committed)} "
          f"committed = {len(collector_alerts(collector, key))} at the collector")


@needs_root
def test_daemon_started_on_a_full_disk_waits_for_space_then_runs(
        tmp_path: Path, tmpfs: Callable[[str, str], Path]) -> None:
    """Not an exit into systemd's start limit: READY with a status saying why, the
    watchdog fed, and capture as soon as there is room."""
    tcpreplay = require_tool("tcpreplay")
    state = tmpfs("state", "1m")
    port = free_port()
    conf = state / "sensor.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{state}"\n[capture]\ninterfaces = ["lo"]\n'
                    f'[ports]\nmodbus = [{port}]\n')
    filler = fill(state)
    notify = NotifySocket(tmp_path / "notify")
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        proc = subprocess.Popen([MAMORI, "run", "--config", str(conf)], stderr=err,
                                stdout=subprocess.DEVNULL,
                                env=dict(os.environ, NOTIFY_SOCKET=str(notify.path),
                                         WATCHDOG_USEC="2000000"))
    try:
        assert notify.wait_for("waiting for disk space", 20), (notify.messages,
                                                                log.read_text())
        notify.messages.clear()
        assert notify.wait_for("WATCHDOG=1", 5), notify.messages
        assert proc.poll() is None
        filler.unlink()
        assert notify.wait_for("capturing on lo", 20), (notify.messages, log.read_text())
        pcap = sources_pcap(tmp_path / "few.pcap", 0, 20, port)
        subprocess.run([tcpreplay, "-q", "-i", "lo", str(pcap)], check=True,
                       capture_output=True)
        time.sleep(2.5)  # a tick publishes them
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    output = log.read_text()
    assert proc.returncode == 0 and "Traceback" not in output, output[-3000:]
    assert "waiting for disk space" in output
    assert store_rules(state / "mamori.db").count("mamori.health.tcp_gap") == 20


# -- mamori replay --------------------------------------------------------------------------

@needs_root
def test_replay_on_a_full_disk_counts_and_the_next_run_forwards_what_was_committed(
        tmp_path: Path, tmpfs: Callable[[str, str], Path]) -> None:
    state = tmpfs("state", "4m")
    collector = Collector(tmp_path / "collector")
    conf, key = sensor_state(state, collector)
    # The replay's own copy, with the storm cap above the one alert per source that
    # fills the disk (tests/sensor/test_storm.py tests the cap); the forwarding-only
    # sensor below reads the plain one.
    replay_conf = tmp_path / "replay.toml"
    replay_conf.write_text(conf.read_text() + "[detection]\nstorm_max_alerts = 1000000\n")
    store = state / "mamori.db"
    n = 6000
    pcap = sources_pcap(tmp_path / "sources.pcap", 0, n, 502)
    collector.start()

    def replay(capture: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MAMORI, "replay", str(capture), "--no-progress", "--store",
                               str(store), "--config", str(replay_conf)],
                              capture_output=True,
                              text=True, timeout=300, cwd=PROJECT)

    # Create the store and the journal, then leave the disk almost no room.
    first = replay(PROJECT / "samples" / "modbus_demo.pcap")
    assert first.returncode == 0, first.stderr
    filler = fill(state, leave=384 * 1024)
    run = replay(pcap)
    out = run.stdout + run.stderr
    assert "Traceback" not in out, out[-3000:]
    assert run.returncode == 1, out[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("disk full"))
    refused = int(line.split(": ")[1].split()[0])
    never = int(line.split("stored late, ")[1].split()[0])
    behind = int(line.split("never stored; ")[1].split()[0])
    assert refused > 0 and never > 0, line
    kept = len(store_alerts(store, forwardable=False))
    assert kept < n + 5
    # Room again: the next run (a small capture) journals what the last one stored.
    filler.unlink()
    again = replay(PROJECT / "samples" / "modbus_demo.pcap")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Traceback" not in again.stdout + again.stderr
    committed = store_alerts(store)
    assert DISK_BACK_RULE in store_rules(store) or behind == 0
    # Everything committed is at the collector (the replay's flush may end first).
    subprocess.run([sys.executable, "-c", SENSOR, str(conf), "0", "0", "60"], cwd=PROJECT,
                   check=True, timeout=120, capture_output=True)
    wait_for(lambda: collector_alerts(collector, key) == committed, 60,
             "the collector to hold every committed alert")
    collector.stop()
    print(f"\nreplay on a full 4 MB tmpfs: {n} alerts produced; {kept - 5} stored, "
          f"{refused} refused ({never} never stored), {behind} stored but not journaled; "
          f"next run: {len(committed)} committed = "
          f"{len(collector_alerts(collector, key))} at the collector")


# -- the collector --------------------------------------------------------------------------

@needs_root
def test_collector_disk_full_acks_nothing_unstored_and_recovers(
        tmp_path: Path, tmpfs: Callable[[str, str], Path]) -> None:
    disk = tmpfs("collector", "2m")
    collector = Collector(disk)
    errors = tmp_path / "collector.err"
    sensor_root = tmp_path / "sensor"
    conf, key = sensor_state(sensor_root, collector)
    n = 4000
    collector.proc = subprocess.Popen(
        [sys.executable, "-m", "mamori.sensor.forwarding.cli", "collect", "--config",
         str(collector.conf), "--duration", "900"], cwd=PROJECT,
        stderr=errors.open("w"))
    wait_for(lambda: b"listening" in errors.read_bytes(), 20, "the collector to listen")
    filler = fill(disk, leave=256 * 1024)
    sensor = subprocess.Popen([sys.executable, "-c", SENSOR, str(conf), str(n), "0", "180"],
                              cwd=PROJECT, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: "storage disk full" in errors.read_text(), 60,
                 "the collector to find its disk full")
        journal_db = sensor_root / "forward" / "journal.db"

        def journaled_all() -> bool:
            db = sqlite3.connect(journal_db)
            try:
                return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]) > n
            finally:
                db.close()

        wait_for(journaled_all, 60, "the sensor to journal every alert")
        time.sleep(3)  # resends meet the full disk again
        assert collector.proc.poll() is None and sensor.poll() is None  # no crash
        stored_full = len(collector.stored(key))
        db = sqlite3.connect(journal_db)
        (acked,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM acks").fetchone()
        db.close()
        # What the collector did not store it did not acknowledge.
        assert acked <= stored_full < n + 1, (acked, stored_full)
        filler.unlink()
        grow(disk, "64m")  # the filler alone is less than the messages take
        wait_for(lambda: len(collector.stored(key)) >= n + 1, 120,
                 "the collector to store everything once there is room")
        sensor.wait(timeout=200)
    finally:
        if sensor.poll() is None:
            sensor.kill()
    collector.stop()
    assert sensor.returncode == 0
    journal = sqlite3.connect(sensor_root / "forward" / "journal.db")
    journaled = {(e, s) for e, s in journal.execute("SELECT epoch, seq FROM messages")}
    alerts = {(e, s) for e, s, k in journal.execute("SELECT epoch, seq, kind FROM messages")
              if k == int(Kind.ALERT)}
    unacked = journal.execute("SELECT COUNT(*) FROM messages WHERE acked = 0").fetchone()[0]
    journal.close()
    stored = collector.stored(key)
    assert set(stored) == journaled and len(stored) == len(set(stored))
    siem = collector.siem()
    assert sorted(siem) == sorted(alerts), (len(siem), len(alerts))
    assert unacked == 0
    text = errors.read_text()
    assert "Traceback" not in text and "writing again" in text, text[-2000:]
    lines = [json.loads(x) for x in collector.jsonl.read_text().splitlines()]
    events = [d.get("event") for d in lines if d.get("event_type") == "health"]
    assert "storage_ok" in events
    print(f"\ncollector on a full 2 MB tmpfs: {n} alerts sent; {stored_full} messages "
          f"stored before it was full; after recovery {len(stored)} stored = "
          f"{len(journaled)} journaled, {len(siem)} SIEM lines, none twice")


# -- the limits, at the API -----------------------------------------------------------------

def test_held_alerts_are_bounded_and_the_journal_stays_as_it_was(
        tmp_path: Path, tmpfs: Callable[[str, str], Path]) -> None:
    """Past ``max_pending`` the store's refusals are dropped and counted (health alerts
    are still held); a refused journal write leaves the journal exactly as it was."""
    from mamori.parsers.alerts import Alert, Severity
    from mamori.sensor import config as cfg
    from mamori.sensor.alerting.dispatch import AlertOutputs
    from mamori.sensor.alerting.store import Store
    from mamori.sensor.forwarding.forwarder import Forwarder
    from mamori.sensor.forwarding.journal import JournalFull

    disk = tmpfs("small", "1m")
    conf = disk / "sensor.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{disk}"\n')
    store = Store(disk / "mamori.db")
    forwarder = Forwarder(cfg.load(conf))
    outputs = AlertOutputs(store, forwarder, max_pending=100)

    def alert(i: int) -> Alert:
        return Alert("mamori.test.flood", "M3", Severity.HIGH, (), f"client {i}", "modbus",
                     1.0, 1.0, src=f"10.1.{i >> 8}.{i & 255}", dst="10.0.0.2", dport=502,
                     evidence={"pad": "x" * 200}, id=i)

    outputs.publish([alert(i) for i in range(1, 51)])
    assert outputs.status()["unstored"] == 0
    filler = fill(disk)
    before = (forwarder.journal.seq, forwarder.journal.stats())
    outputs.publish([alert(i) for i in range(51, 351)])
    state = outputs.status()
    assert state["unstored"] == 300 + 1 and state["store_full"]  # the S4 alert too
    assert state["dropped"] == 300 - 100 and state["held"] == 100 + 1  # and the S4 alert
    with pytest.raises(JournalFull):  # not "cannot rollback - no transaction is active"
        forwarder.submit_alerts([alert(i) for i in range(1000, 1100)], sync=(store.id, 10**6))
    assert (forwarder.journal.seq, forwarder.journal.stats()) == before
    assert forwarder.journal.sync_mark(store.id) == 50
    filler.unlink()
    outputs.publish([])
    state = outputs.status()
    assert state["held"] == 0 and state["journal_behind"] == 0 and not state["store_full"]
    assert state["stored_late"] == 101
    rules = store_rules(disk / "mamori.db")
    assert rules.count("mamori.test.flood") == 150
    assert DISK_FULL_RULE in rules and DISK_BACK_RULE in rules
    forwarder.close(0)
    store.close()
    db = sqlite3.connect(disk / "forward" / "journal.db")
    journaled = db.execute("SELECT COUNT(*) FROM messages WHERE kind = ?",
                           (int(Kind.ALERT),)).fetchone()[0]
    db.close()
    assert journaled == len(store_alerts(disk / "mamori.db"))  # each committed alert once
