"""Sensor identity, completeness and clock integrity as the collector sees them (issue 16,
items 5 and 6), with real sockets: the configured name, site and sector travel in the
start record and heartbeats; heartbeats name the older epochs still owed and the
collector asks for them; a sensor clock hours off is reported (S5); the sensor raises
S5 when its own clock is stepped back and S6 when a collector stays unreachable."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from mamori.parsers.alerts import Alert
from mamori.parsers.wire import Kind
from mamori.sensor import config as cfg
from mamori.sensor.collector.storage import SqliteStorage
from mamori.sensor.forwarding.forwarder import (
    CLOCK_RULE,
    UNREACHABLE_RULE,
    Forwarder,
    timesync_state,
)
from mamori.sensor.forwarding.keys import load_pair, read_key
from tests.sensor.test_collector import PROJECT, Site, wait_for


def _status(site: Site) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "mamori.sensor.forwarding.cli", "collect", "status", "--config",
         str(site.collector_conf), "--json"], cwd=PROJECT, capture_output=True, timeout=30,
        check=True)
    return {r["name"]: r for r in json.loads(out.stdout)}


def test_identity_travels_and_a_skewed_clock_is_reported(tmp_path: Path) -> None:
    site = Site(tmp_path, sensors=2)
    conf = site.sensor_confs[0]
    conf.write_text(conf.read_text().replace(
        "[sensor]\n", '[sensor]\nname = "rtu-gw-3"\nsite = "harbour-east"\nsector = "port"\n'))
    site.start_collector()
    try:
        site.sensor(conf, 5, 0.0).communicate(timeout=30)
        # s1 speaks raw frames: a heartbeat whose clock is three hours behind ours.
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        pair = load_pair(site.tmp / "s1" / "keys" / "sensor.secret")
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.curve_publickey, sock.curve_secretkey = pair.public, pair.secret
        sock.curve_serverkey = read_key(site.coll_dir / "keys" / "collector.pub")
        sock.connect(site.endpoint)
        skewed = time.time() - 3 * 3600
        sock.send(msgpack.packb([1, 1, 0, skewed, int(Kind.HEARTBEAT),
                                 {"clock": skewed, "up": 1.0}]))
        wait_for(lambda: "s1" in _status(site), 10, "the skewed heartbeat")
        wait_for(lambda: _status(site)["s0"]["complete_ts"] is not None, 10,
                 "s0's closing heartbeat")
        sock.close(0)
        ctx.term()
        rows = _status(site)
        assert rows["s0"]["reported"] == {"name": "rtu-gw-3", "site": "harbour-east",
                                          "sector": "port"}
        assert rows["s0"]["outstanding"] == 0 and rows["s0"]["complete_ts"] is not None
        skew = rows["s1"]["skew"]
        assert isinstance(skew, float) and abs(skew - 3 * 3600) < 60
        assert isinstance(rows["s0"]["skew"], float) and abs(rows["s0"]["skew"]) < 30
        health = [d for d in site.jsonl_alerts() if d.get("event_type") == "health"]
        assert [(d["event"], d["precursor"], d["sensor"]) for d in health] == [
            ("clock_skew", "S5", "s1")]
        st = site.storage()
        try:
            start = st._all("SELECT body FROM messages WHERE kind = ? AND seq = 1",
                            (int(Kind.HEALTH),))
            assert json.loads(start[0][0])["site"] == "harbour-east"
        finally:
            st.close()
        table = subprocess.run(
            [sys.executable, "-m", "mamori.sensor.forwarding.cli", "collect", "status", "--config",
             str(site.collector_conf)], cwd=PROJECT, capture_output=True, text=True,
            timeout=30, check=True).stdout
        assert "port/harbour-east" in table and "+1080" in table  # +10800 s, give or take
    finally:
        site.stop_collector()


def test_a_clean_close_marks_the_stream_complete_without_waiting_for_a_heartbeat(
        tmp_path: Path) -> None:
    """The collector marks a stream complete on a heartbeat that follows the last
    ack; with heartbeats an hour apart, only the one ``close()`` sends can do it."""
    site = Site(tmp_path, sensors=1)
    conf = site.sensor_confs[0]
    conf.write_text(conf.read_text().replace("heartbeat_interval = 0.5",
                                             "heartbeat_interval = 3600"))
    site.start_collector()
    try:
        site.sensor(conf, 20, 0.1).communicate(timeout=30)  # outlasts the handshake
        st = site.storage()
        try:
            (last,), = st._all("SELECT MAX(received) FROM messages")
        finally:
            st.close()

        def marked_after_last() -> bool:
            done = _status(site)["s0"]["complete_ts"]
            return isinstance(done, float) and done >= float(last)
        wait_for(marked_after_last, 10, "the closing heartbeat")
        assert _status(site)["s0"]["outstanding"] == 0
    finally:
        site.stop_collector()


def test_heartbeats_name_owed_epochs_and_status_shows_them(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "c.db")
    try:
        now = time.time()
        st.advance("K", 1, 40, now, now)
        st.advance("K", 2, 3, now, now)
        st.heartbeat("K", 2, 5, now, now, {"clock": now - 2.5, "owed": [[1, 30, 100]],
                                           "name": "n"})
        st.commit()
        (row,) = st.status()
        assert row.owed == [(1, 40, 100)] and row.behind == 2 and row.outstanding == 62
        assert row.skew == 2.5 and row.reported == {"name": "n"} and row.complete_ts is None
    finally:
        st.close()


def _forwarder(tmp_path: Path, meta: list[Alert],
               extra: dict[tuple[str, str], object] | None = None) -> Forwarder:
    site = Site(tmp_path)  # keys and a collector address nobody listens on
    overrides: dict[tuple[str, str], object] = {
        ("sensor", "state_dir"): str(tmp_path / "s0"),
        ("forward", "collectors"): [{"endpoint": site.endpoint, "server_key": str(
            site.coll_dir / "keys" / "collector.pub")}], **(extra or {})}
    return Forwarder(cfg.load(None, overrides), on_meta_alert=meta.append)


def test_unreachable_collector_raises_s6_once(tmp_path: Path) -> None:
    meta: list[Alert] = []
    fw = _forwarder(tmp_path, meta, {("forward", "unreachable_after"): 0.3,
                                     ("forward", "heartbeat_interval"): 0.1})
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            fw.poll(0.05)
        s6 = [a for a in meta if a.rule == UNREACHABLE_RULE]
        assert len(s6) == 1 and s6[0].precursor == "S6"
        assert s6[0].evidence["state"] == "unreachable"
        (collector,) = fw.journal.collectors
        journaled = [r for r in fw.journal.pending(collector, 0, 1000)
                     if r.kind == Kind.ALERT]
        assert len(journaled) == 1  # forwarded once a link allows
    finally:
        fw.close(0)


def test_clock_stepped_back_raises_s5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta: list[Alert] = []
    fw = _forwarder(tmp_path, meta)
    try:
        fw.heartbeat()
        assert not [a for a in meta if a.rule == CLOCK_RULE]
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 600)
        fw.heartbeat()
        monkeypatch.undo()
        (s5,) = [a for a in meta if a.rule == CLOCK_RULE]
        assert s5.precursor == "S5" and -601 < s5.evidence["step"] < -599
        fw.heartbeat()  # the clock stays where it is now: no second alert
        assert len([a for a in meta if a.rule == CLOCK_RULE]) == 1
    finally:
        fw.close(0)


def test_timesync_state(tmp_path: Path) -> None:
    assert timesync_state(tmp_path / "absent") is None
    assert timesync_state(tmp_path) is False
    (tmp_path / "synchronized").touch()
    assert timesync_state(tmp_path) is True
