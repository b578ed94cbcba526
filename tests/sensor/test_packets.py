"""Packets behind alerts (issue 20 item 8): the ring's bounds, the pcaps, retention, CLI, daemon.

The pcaps are checked with tshark, the frames against the original capture by the
MD5 of each frame's bytes as tshark computes it, so "the pcap holds the packet that
raised the alert" is proven by a reader that is not ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.packetring import FLOW_OVERHEAD, FRAME_OVERHEAD, PacketRing
from mamori.parsers.wire import Kind, alert_body, encode
from mamori.sensor import config as cfg
from mamori.sensor.alerting.store import Store
from mamori.sensor.capture.packet_evidence import PCAP_NAME, PacketEvidence, pcap_bytes
from mamori.sensor.cli import main
from tests.conftest import corpus_path
from tests.ports import free_port
from tests.sensor.test_daemon import Daemon
from tests.sensor.test_disk_full import fill, needs_root
from tests.sensor.test_disk_full import tmpfs as tmpfs_mount

ARKIME = "arkime/tests/pcap/modbus.pcap"
DNP3_RESTART = "ICS-Security-Tools/pcaps/dnp3/cold_restart_and_response.pcap"
CODE_FIELD = {"modbus": "modbus.func_code", "dnp3": "dnp3.al.func"}


def tshark_frames(path: Path, field: str = "modbus.func_code",
                  extra: tuple[str, ...] = ()) -> list[tuple[str, float, str]]:
    """(frame MD5, time, function code) of every frame, as tshark reads the file."""
    done = subprocess.run(
        ["tshark", "-r", str(path), *extra, "-o", "frame.generate_md5_hash:TRUE", "-T", "fields",
         "-e", "frame.md5_hash", "-e", "frame.time_epoch", "-e", field],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"tshark cannot open {path}: {done.stderr}"
    rows = []
    for line in done.stdout.splitlines():
        md5, when, code = [*line.split("\t"), "", ""][:3]
        rows.append((md5, float(when), code))
    return rows


def replay_store(tmp_path: Path, capture: Path, config: str = "") -> Path:
    conf = tmp_path / "sensor.toml"
    conf.write_text(config)
    store = tmp_path / "mamori.db"
    assert main(["replay", "--no-progress", "--config", str(conf), "--store", str(store),
                 str(capture)]) == 0
    return store


def flow_alerts(store: Path) -> list[tuple[Alert, str | None]]:
    """Medium+ alerts that name a flow (both ends with ports), with their pcap."""
    with Store(store, readonly=True) as db:
        return [(a, db.pcap(a.id)) for a in db.alerts(min_severity=Severity.MEDIUM)
                if None not in (a.src, a.sport, a.dst, a.dport)]


# -- corpus replays ------------------------------------------------------------------------

@pytest.mark.corpus
@pytest.mark.usefixtures("tshark")
@pytest.mark.parametrize("relative", [ARKIME, DNP3_RESTART])
def test_every_flow_alert_gets_a_pcap_tshark_opens_holding_its_packet(
        tmp_path: Path, relative: str, capsys: pytest.CaptureFixture[str]) -> None:
    capture = corpus_path(relative)
    store = replay_store(tmp_path, capture)
    assert "pcaps      " in capsys.readouterr().out
    alerts = flow_alerts(store)
    assert len(alerts) >= 2
    proto = "dnp3" if "dnp3" in relative else "modbus"
    original = tshark_frames(capture, CODE_FIELD[proto])
    known = {md5 for md5, _, _ in original}
    for alert, pcap in alerts:
        assert pcap is not None, alert
        path = Path(pcap)
        assert path.parent == tmp_path / "pcaps" and PCAP_NAME.match(path.name)
        ours = tshark_frames(path, CODE_FIELD[proto])
        assert ours, pcap
        assert {md5 for md5, _, _ in ours} <= known  # the capture's own bytes, unaltered
        # The packet that raised it: the frame at the alert's time carrying its code.
        trigger = [row for row in ours if abs(row[1] - alert.first_ts) < 2e-6]
        assert trigger, (alert.rule, alert.first_ts, [r[1] for r in ours])
        fc = alert.evidence.get("fc")
        if fc is not None and alert.rule.split(".")[1] in ("modbus", "dnp3") \
                and "malformed" not in alert.rule:
            assert any(str(fc) in row[2].split(",") for row in trigger), (alert.rule, trigger)
    # Neither the frames nor the path leave the box: the stored alert, as forwarded.
    with Store(store, readonly=True) as db:
        for alert in db.alerts():
            wire = encode(1, 1, 0.0, _alert_kind(), alert_body(alert))
            assert b".pcap" not in wire and b"pcaps" not in wire
            assert "pcap" not in json.dumps(alert.to_dict())


def _alert_kind() -> Kind:
    return Kind.ALERT


@pytest.mark.corpus
def test_packets_off_writes_nothing(tmp_path: Path) -> None:
    store = replay_store(tmp_path, corpus_path(ARKIME), "[packets]\nenabled = false\n")
    assert not (tmp_path / "pcaps").exists()
    alerts = flow_alerts(store)
    assert alerts and all(pcap is None for _, pcap in alerts)


@pytest.mark.corpus
def test_min_severity_and_directory_are_configurable(tmp_path: Path) -> None:
    elsewhere = tmp_path / "evidence"
    store = replay_store(tmp_path, corpus_path(ARKIME),
                         f'[packets]\nmin_severity = "critical"\ndirectory = "{elsewhere}"\n')
    pcaps = {a.rule: p for a, p in flow_alerts(store) if p is not None}
    assert set(pcaps) == {"mamori.modbus.programming"}  # the capture's one critical alert
    assert Path(pcaps["mamori.modbus.programming"]).parent == elsewhere


@pytest.mark.corpus
def test_alerts_show_prints_the_pcap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = replay_store(tmp_path, corpus_path(ARKIME))
    capsys.readouterr()
    alert, pcap = next((a, p) for a, p in flow_alerts(store) if p is not None)
    assert main(["alerts", "--store", str(store), "--show", str(alert.id)]) == 0
    out = capsys.readouterr().out
    assert f"pcap       {pcap}\n" in out and alert.rule in out
    assert main(["alerts", "--store", str(store), "--show", str(alert.id), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pcap"] == pcap
    Path(pcap).unlink()  # as retention would
    assert main(["alerts", "--store", str(store), "--show", str(alert.id)]) == 0
    assert "(deleted by retention)" in capsys.readouterr().out
    assert main(["alerts", "--store", str(store), "--show", str(10**30)]) == 1
    assert "no alert" in capsys.readouterr().err
    assert main(["alerts", "--store", str(store), "--show", "1", "--follow"]) == 2


def test_bad_packets_config_names_file_line_and_key(tmp_path: Path) -> None:
    conf = tmp_path / "sensor.toml"
    conf.write_text("[packets]\nflow_bytes = 65536\ntotal_bytes = 65536\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(conf, check_files=True)
    assert str(err.value).startswith(f"{conf}:3: [packets] total_bytes: must be at least")
    conf.write_text('[packets]\nmin_severity = "loud"\n')
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(conf)
    assert str(err.value).startswith(f"{conf}:2: [packets] min_severity: 'loud' is not")


# -- the ring's bounds ---------------------------------------------------------------------

def _key(n: int) -> tuple[int, bytes, int, bytes, int]:
    return (6, b"\x0a\x00\x00\x01", 502, struct.pack("!I", 0x0B000000 + n), 1024 + n % 60000)


def test_a_flow_over_its_allowance_keeps_only_its_newest_frames() -> None:
    ring = PacketRing(flow_bytes=16 * 1024, total_bytes=1024 * 1024, max_age=60.0)
    key = _key(0)
    frames = [bytes([i]) * 1000 for i in range(100)]
    for i, frame in enumerate(frames):
        ring.add(key, 1.0 + i * 0.01, 1, frame)
    kept = ring.frames(key)
    fits = 16 * 1024 // (1000 + FRAME_OVERHEAD)  # 14 frames of 1,160 counted bytes
    assert [f[2] for f in kept] == frames[-fits:]
    assert ring.bytes == fits * (1000 + FRAME_OVERHEAD) + FLOW_OVERHEAD
    # One beyond the cap: a frame larger than the whole allowance is not kept at all.
    ring.add(key, 3.0, 1, b"x" * 16 * 1024)
    assert ring.stats.too_big == 1 and [f[2] for f in ring.frames(key)] == frames[-fits:]


def test_frames_older_than_max_age_are_dropped() -> None:
    ring = PacketRing(flow_bytes=64 * 1024, total_bytes=1024 * 1024, max_age=10.0)
    key = _key(1)
    for t in range(30):
        ring.add(key, float(t), 1, b"f%d" % t)
    assert [f[0] for f in ring.frames(key)] == [float(t) for t in range(19, 30)]  # 19..29
    ring.add(_key(2), 45.0, 1, b"other")  # time moves on: flow 1 is all older than 10 s
    assert ring.frames(key) == []


def test_quiet_flows_are_swept_and_their_bytes_given_back() -> None:
    ring = PacketRing(flow_bytes=64 * 1024, total_bytes=64 * 1024 * 1024, max_age=5.0)
    for n in range(5000):
        ring.add(_key(n), 0.0, 1, b"q" * 60)
    assert len(ring) == 5000
    busy = _key(99999)
    for i in range(PacketRing._SWEEP_EVERY):
        ring.add(busy, 100.0 + i * 1e-3, 1, b"b" * 60)
    assert len(ring) == 1
    assert ring.bytes == sum(len(f[2]) + FRAME_OVERHEAD for f in ring.frames(busy)) \
        + FLOW_OVERHEAD


def test_a_many_flow_flood_far_past_the_total_stays_bounded_in_memory() -> None:
    total = 2 * 1024 * 1024
    ring = PacketRing(flow_bytes=64 * 1024, total_bytes=total, max_age=3600.0)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        offered = 0
        for n in range(120_000):  # ~15x the total, in 3-frame flows of small frames
            for j in range(3):
                frame = os.urandom(40 + (n + j) % 80)
                offered += len(frame) + FRAME_OVERHEAD
                ring.add(_key(n), n * 1e-3, 1, frame)
            assert ring.bytes <= total
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert offered > 10 * total
    assert held < 1.3 * total, (held, ring.bytes)  # what is counted is what is held
    assert ring.stats.shed_frames > 0
    assert len(ring.frames(_key(119_999))) == 3  # the newest flows are the ones kept
    assert ring.frames(_key(0)) == []


def test_pcap_bytes_keeps_one_link_type_and_microseconds() -> None:
    data = pcap_bytes([(1.5, 113, b"cooked"), (2.25, 1, b"eth-a"), (3.000001, 1, b"eth-b")])
    magic, major, minor, _, _, snap, link = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, link) == (0xA1B2C3D4, 2, 4, 1) and snap >= 65535
    first = struct.unpack_from("<IIII", data, 24)
    assert first == (2, 250000, 5, 5) and data[40:45] == b"eth-a"
    assert struct.unpack_from("<IIII", data, 45) == (3, 1, 5, 5)
    assert len(data) == 24 + 2 * 16 + 10


# -- retention and a full disk -------------------------------------------------------------

class _Rows:
    """Stands in for the store in the retention tests: the paths it was given."""

    def __init__(self) -> None:
        self.paths: dict[int, str] = {}

    def attach_pcap(self, alert_id: int, path: str) -> None:
        self.paths[alert_id] = path


def _alert(n: int, ts: float, severity: Severity = Severity.HIGH) -> Alert:
    return Alert(rule="t.rule", precursor="M7", severity=severity, attack=(), title="t",
                 proto="modbus", first_ts=ts, last_ts=ts, src=f"11.0.0.{n % 250 + 1}",
                 sport=1024 + n, dst="10.0.0.1", dport=502, id=n)


def _evidence(directory: Path, rows: _Rows, **kw: Any) -> PacketEvidence:
    ring = PacketRing(flow_bytes=64 * 1024, total_bytes=8 * 1024 * 1024, max_age=60.0)
    return PacketEvidence(ring, directory, rows, **kw)


def _raise(ev: PacketEvidence, n: int, size: int = 1000) -> str | None:
    alert = _alert(n, 1000.0 + n)
    key = (6, bytes([10, 0, 0, 1]), 502, bytes([11, 0, 0, n % 250 + 1]), 1024 + n)
    ev.ring.add(key, alert.first_ts, 1, b"\0" * size)
    ev.on_alert(alert)
    assert isinstance(ev.store, _Rows)
    return ev.store.paths.get(n)


def test_retention_by_size_deletes_the_oldest(tmp_path: Path) -> None:
    one = 24 + 16 + 1000  # a pcap of one 1,000-byte frame
    rows = _Rows()
    directory = tmp_path / "pcaps"
    ev = _evidence(directory, rows, retention_bytes=5 * one)
    written = []
    for n in range(1, 9):
        path = _raise(ev, n)
        assert path is not None
        written.append(path)
        assert sorted(str(p) for p in directory.glob("*.pcap")) == sorted(written[-5:])
    assert ev.stats.deleted == 3
    # What another instance sharing the directory wrote is seen at the next listing.
    foreign = directory / "notes.txt"
    foreign.write_text("the operator's own file")
    theirs = directory / "20991231T000000Z-0123456789ab.pcap"
    theirs.write_bytes(b"\0" * one)
    ev.retain()
    assert theirs.exists()  # not listed yet
    ev.retain(rescan=True)
    left = sorted(str(p) for p in directory.glob("*.pcap"))
    assert left == sorted([*written[-4:], str(theirs)])  # the oldest of ours went
    assert foreign.exists() and ev.stats.deleted == 4


def test_retention_by_age_and_stale_partial_files(tmp_path: Path) -> None:
    now = [time.time()]
    rows = _Rows()
    ev = _evidence(tmp_path / "pcaps", rows, retention_age=3600.0, clock=lambda: now[0])
    old, young = _raise(ev, 1), _raise(ev, 2)
    assert old and young
    now[0] += 3599.5  # the tracked pcaps age without a listing
    ev.retain()
    assert Path(old).exists() and Path(young).exists()
    now[0] += 1.0
    ev.retain()
    assert not Path(old).exists() and not Path(young).exists()
    # A listing finds files by their mtime, and partial files of killed writes.
    again = _raise(ev, 3)
    assert again
    os.utime(again, (now[0] - 3601, now[0] - 3601))
    stale = Path(again).with_name("20000101T000000Z-0123456789ab.pcap.part")
    stale.write_bytes(b"killed mid-write")
    os.utime(stale, (now[0] - 61, now[0] - 61))
    fresh = Path(again).with_name("20000101T000000Z-ba9876543210.pcap.part")
    fresh.write_bytes(b"another instance, writing now")
    os.utime(fresh, (now[0], now[0]))
    ev.retain(rescan=True)
    assert not Path(again).exists() and not stale.exists() and fresh.exists()


def test_no_frames_or_low_severity_writes_nothing(tmp_path: Path) -> None:
    rows = _Rows()
    ev = _evidence(tmp_path / "pcaps", rows)
    ev.on_alert(_alert(1, 5.0))  # no frame held for that flow
    key = (6, bytes([10, 0, 0, 1]), 502, bytes([11, 0, 0, 3]), 1026)
    ev.ring.add(key, 5.0, 1, b"frame")
    ev.on_alert(_alert(2, 5.0, Severity.LOW))
    assert ev.stats.no_frames == 1 and ev.stats.written == 0 and not rows.paths
    assert not (tmp_path / "pcaps").exists()


tmpfs = tmpfs_mount  # the fixture: a small tmpfs of our own to fill


@needs_root
def test_a_full_disk_refuses_the_pcap_and_keeps_the_alert(
        tmpfs: Callable[[str, str], Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    where = tmpfs("full", "1m")
    store_path = tmp_path / "mamori.db"
    with Store(store_path) as store:
        ring = PacketRing(flow_bytes=64 * 1024, total_bytes=8 * 1024 * 1024, max_age=60.0)
        ev = PacketEvidence(ring, where / "pcaps", store)
        (where / "pcaps").mkdir()
        fill(where)
        for n in (1, 2, 3):
            alert = _alert(n, 100.0 + n)
            ring.add((6, bytes([10, 0, 0, 1]), 502, bytes([11, 0, 0, n + 1]), 1024 + n),
                     alert.first_ts, 1, b"\1" * 30_000)
            ev.on_alert(alert)
            store.save_alerts([alert])
        assert ev.stats.refused == 3 and ev.stats.written == 0
        assert [store.pcap(a.id) for a in store.alerts()] == [None, None, None]
        assert len(store.alerts()) == 3  # the alerts themselves are stored
        assert list((where / "pcaps").iterdir()) == []  # no partial file left behind
        said = [r for r in caplog.records if "cannot write the packets" in r.getMessage()]
        assert len(said) == 1  # once, not per alert
        (where / "filler").unlink()  # space returns: the next alert has its pcap
        alert = _alert(4, 104.0)
        ring.add((6, bytes([10, 0, 0, 1]), 502, bytes([11, 0, 0, 5]), 1028), 104.0, 1, b"ok")
        ev.on_alert(alert)
        store.save_alerts([alert])
        assert store.pcap(store.alerts()[-1].id) is not None


def test_store_migration_adds_the_pcap_column_to_an_older_store(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with Store(path) as store:
        store.save_alerts([_alert(1, 1.0)])
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE alerts DROP COLUMN pcap")  # as a store before issue 20
    db.commit()
    db.close()
    with Store(path, readonly=True) as old:
        assert old.pcap(1) is None  # read-only readers of old stores say "none"
    with Store(path) as store:
        store.attach_pcap(2, "/x/20200101T000000Z-0123456789ab.pcap")
        store.save_alerts([_alert(2, 2.0)])
        assert store.pcap(2) == "/x/20200101T000000Z-0123456789ab.pcap"
        assert store.pcap(1) is None


# -- the live daemon -----------------------------------------------------------------------

@contextlib.contextmanager
def _server(port: int) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(1)
        yield server


@needs_root
@pytest.mark.usefixtures("tshark")
def test_the_daemon_writes_the_pcap_of_a_live_alert(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    config = (f'[sensor]\nstate_dir = "{state}"\n\n[capture]\ninterfaces = ["lo"]\n\n'
              f'[ports]\nmodbus = [{port}]\n\n[detection]\nlearning_hold = 0\n')
    with Daemon(tmp_path, config) as daemon:
        with _server(port) as server, \
                socket.create_connection(("127.0.0.1", port)) as client:
            peer, _ = server.accept()
            with peer:
                # Diagnostics 0x08 sub 0x0004: force listen-only mode (a high alert)
                request = bytes.fromhex("00070000000601080004" "0000")
                client.sendall(request)
                peer.recv(100)
                peer.sendall(request)  # the echo is the answer to a diagnostics request
                client.recv(100)
                time.sleep(3.0)  # past the 2 s post-window, by the daemon's clock
        daemon.stop()
    with Store(state / "mamori.db", readonly=True) as db:
        found = [(a, db.pcap(a.id)) for a in db.alerts()
                 if a.rule == "mamori.modbus.listen_only"]
    assert found, "no listen-only alert"
    alert, pcap = found[0]
    assert pcap is not None and Path(pcap).parent == state / "pcaps"
    rows = tshark_frames(Path(pcap), extra=("-d", f"tcp.port=={port},mbtcp"))
    assert any(code == "8" and abs(when - alert.first_ts) < 2e-6 for _, when, code in rows), \
        (rows, alert.first_ts)
    # and the answer, from the post-window
    assert [code for _, when, code in rows if when > alert.first_ts + 2e-6].count("8") == 1


@pytest.mark.parametrize("enabled", [True, False])
def test_the_daemon_feeds_the_ring_only_when_packets_are_on(tmp_path: Path,
                                                             enabled: bool) -> None:
    from mamori.sensor.daemon.run import build_sensor

    conf_file = tmp_path / "sensor.toml"
    conf_file.write_text(f'[sensor]\nstate_dir = "{tmp_path / "state"}"\n\n'
                         f'[packets]\nenabled = {"true" if enabled else "false"}\n')
    sensor = build_sensor(cfg.load(conf_file), str(conf_file))
    try:
        frame = bytes.fromhex(  # Ethernet, IPv4, TCP 10.0.0.2:40000 -> 10.0.0.1:502, payload
            "0200000000010200000000020800" "45000030000100004006" "0000" "0a000002" "0a000001"
            "9c4001f6" "00000001" "00000001" "5018ffff" "0000" "0000"
            "000100000002" "0103")
        sensor.pipeline.packet(1.0, 1, frame)
        snap = sensor.snapshot()
        if enabled:
            assert sensor.pipeline.ring is sensor.evidence.ring
            assert snap["pcaps"]["ring_flows"] == 1 and snap["pcaps"]["refused"] == 0
            assert snap["pcaps"]["ring_bytes"] >= len(frame)
        else:
            assert sensor.pipeline.ring is None and "pcaps" not in snap
    finally:
        sensor.shutdown()


# -- the post-window -----------------------------------------------------------------------

def _times(path: str) -> list[float]:
    return [round(when, 6) for _, when, _ in tshark_frames(Path(path))]


@pytest.mark.usefixtures("tshark")
def test_the_pcap_holds_the_frames_of_the_post_window_and_no_later(tmp_path: Path) -> None:
    rows = _Rows()
    ring = PacketRing(flow_bytes=16 * 1024, total_bytes=8 * 1024 * 1024, max_age=60.0)
    ev = PacketEvidence(ring, tmp_path / "pcaps", rows, after=2.0)
    key = (6, bytes([10, 0, 0, 1]), 502, bytes([11, 0, 0, 2]), 1025)
    other = (6, bytes([10, 0, 0, 1]), 502, bytes([11, 0, 0, 9]), 1032)  # _alert(8)
    frame = bytes(14) + b"x" * 986  # Ethernet header of zeros, a 1,000-byte frame
    for t in (0.0, 0.5, 1.0):
        ring.add(key, 100.0 + t, 1, frame)
    ev.on_alert(_alert(1, 101.0))
    assert not rows.paths  # waiting for the window
    for t in (1.5, 2.0, 2.9):  # within the window (to 103.0)
        ring.add(key, 100.0 + t, 1, frame)
    ring.add(other, 102.95, 1, frame)  # another flow's frames stay out
    assert not rows.paths
    ring.add(key, 103.5, 1, frame)  # past the deadline: written, without this one
    assert _times(rows.paths[1]) == [100.0, 100.5, 101.0, 101.5, 102.0, 102.9]
    assert ring.due_at == float("inf")
    # A frame at the deadline itself is in the window.
    ev.on_alert(_alert(8, 103.5))
    ring.add(other, 105.5, 1, frame)
    assert _times(rows.paths[8]) == [102.95, 105.5]


@pytest.mark.usefixtures("tshark")
def test_a_busy_post_window_keeps_the_trigger_and_the_newest_after_it(tmp_path: Path) -> None:
    rows = _Rows()
    ring = PacketRing(flow_bytes=16 * 1024, total_bytes=8 * 1024 * 1024, max_age=60.0)
    ev = PacketEvidence(ring, tmp_path / "pcaps", rows, after=2.0)
    key = (6, bytes([10, 0, 0, 1]), 502, bytes([11, 0, 0, 2]), 1025)
    frame = bytes(14) + b"y" * 986
    ring.add(key, 10.0, 1, frame)  # the trigger
    ev.on_alert(_alert(1, 10.0))
    for i in range(1, 101):  # 100 frames in the window: far over the flow's 16 KiB
        ring.add(key, 10.0 + i * 0.01, 1, frame)
    ring.add(key, 13.0, 1, frame)
    times = _times(rows.paths[1])
    fits = 16 * 1024 // (1000 + FRAME_OVERHEAD)
    assert times[0] == 10.0  # kept from the moment of the alert
    # After it, what the ring still held when the window ended: its newest ``fits``
    # frames, less the one past the deadline (13.0) that ended the window.
    assert times[1:] == [round(10.0 + i * 0.01, 6) for i in range(102 - fits, 101)]


def test_a_quiet_flow_is_written_by_the_clock_and_at_the_end(tmp_path: Path) -> None:
    rows = _Rows()
    ring = PacketRing(flow_bytes=64 * 1024, total_bytes=8 * 1024 * 1024, max_age=60.0)
    ev = PacketEvidence(ring, tmp_path / "pcaps", rows, after=2.0)
    for n in (1, 2):
        ring.add((6, bytes([10, 0, 0, 1]), 502, bytes([11, 0, 0, n + 1]), 1024 + n),
                 50.0 + n, 1, b"z" * 60)
        ev.on_alert(_alert(n, 50.0 + n))
    ev.due(53.5)  # the daemon's tick: the first window (to 53.0) is over, not the second
    assert set(rows.paths) == {1}
    ev.flush()  # the end of a run
    assert set(rows.paths) == {1, 2} and ring.due_at == float("inf")


def test_many_alerts_at_once_do_not_wait_beyond_the_pending_bound(tmp_path: Path) -> None:
    from mamori.sensor.capture.packet_evidence import MAX_PENDING

    rows = _Rows()
    ring = PacketRing(flow_bytes=64 * 1024, total_bytes=64 * 1024 * 1024, max_age=60.0)
    ev = PacketEvidence(ring, tmp_path / "pcaps", rows, after=2.0)
    for n in range(1, MAX_PENDING + 11):
        ring.add((6, bytes([10, 0, 0, 1]), 502, bytes([11, 0, n // 250, n % 250 + 1]),
                  1024 + n), 50.0, 1, b"z" * 60)
        alert = _alert(n, 50.0)
        ev.on_alert(Alert(**{**{f: getattr(alert, f) for f in alert.__slots__},
                             "src": f"11.0.{n // 250}.{n % 250 + 1}"}))
    assert len(rows.paths) == 10  # past the bound: written at once, not held
    ev.flush()
    assert len(rows.paths) == MAX_PENDING + 10


def test_what_waits_for_its_window_is_bounded_by_the_ring_total(tmp_path: Path) -> None:
    rows = _Rows()
    total = 64 * 1024 + FLOW_OVERHEAD
    ring = PacketRing(flow_bytes=64 * 1024, total_bytes=total, max_age=60.0)
    ev = PacketEvidence(ring, tmp_path / "pcaps", rows, after=2.0)
    big = b"b" * 40_000  # two of these do not fit in the total
    for n in (1, 2):
        ring.add((6, bytes([10, 0, 0, 1]), 502, bytes([11, 0, 0, n + 1]), 1024 + n),
                 50.0, 1, big)
        ev.on_alert(_alert(n, 50.0))
    assert set(rows.paths) == {2}  # the second would have held more than the total
    ev.flush()
    assert set(rows.paths) == {1, 2}
