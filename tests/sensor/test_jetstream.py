"""Subscribers on NATS JetStream, with real peers: ``nats-server`` nodes on loopback (a
three-node cluster, stream replicas 3), a ``mamori collect`` process publishing to them,
sensor processes forwarding over CURVE and ``mamori subscribe`` processes reading.

What a national CERT relies on: every alert the collector stored reaches a subscriber
exactly once, while a NATS node is killed under load and after a full NATS outage (during
which ingest goes on); and a subscriber sees only what its NATS permissions allow.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mamori.parsers.wire import Kind
from mamori.sensor import config as cfg
from mamori.sensor.collector.jetstream import (
    CursorStore,
    JetStreamSettings,
    status_report,
    subject,
    token,
)
from tests.peers.nats_cluster import USERS, NatsCluster, nats_server
from tests.sensor.test_collector import PROJECT, Site, wait_for

ALERTS = 3000  # per sensor: above the publisher's batch (500) and the send window (2000)

Key = tuple[str, int, int]


def _site(tmp: Path, cluster: NatsCluster, sectors: dict[str, str]) -> Site:
    extra = (f"nats_servers = {json.dumps(cluster.urls)}\nnats_user = \"collector\"\n"
             f"nats_password = \"{USERS['collector']}\"\n"
             f"nats_replicas = {len(cluster.nodes)}\n")
    site = Site(tmp, 0, extra)
    for name, sector in sectors.items():
        conf = site.add_sensor(name)
        conf.write_text(conf.read_text().replace(
            "[sensor]\n", f'[sensor]\nsector = "{sector}"\nsite = "plant {name}"\n', 1))
        site.sensor_confs.append(conf)
    return site


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nats_server()
    c = NatsCluster(tmp_path / "nats", 3)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def single(tmp_path: Path) -> Iterator[NatsCluster]:
    nats_server()
    c = NatsCluster(tmp_path / "nats", 1)
    c.start()
    yield c
    c.stop()


def _cleanup(site: Site) -> None:
    if site.proc is not None:
        site.proc.kill()
        site.proc.wait(timeout=10)


def subscribe(urls: list[str], *args: str, user: str = "national",
              password: str | None = None) -> subprocess.Popen[str]:
    servers = [a for u in urls for a in ("--server", u)]
    return subprocess.Popen(
        [sys.executable, "-m", "mamori.sensor.cli", "subscribe", *args, *servers, "--user", user,
         "--password", USERS[user] if password is None else password],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def received(proc: subprocess.Popen[str], timeout: float) -> tuple[list[dict[str, object]], str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()], err


def stored_alerts(site: Site) -> set[Key]:
    st = site.storage()
    try:
        return {(r.sensor, e, s) for r in st.status()
                for e, s in st.sequence(r.sensor, int(Kind.ALERT))}
    finally:
        st.close()


def jetstream_state(site: Site) -> dict[str, object]:
    settings = JetStreamSettings.from_config(cfg.load(site.collector_conf))
    assert settings is not None
    st = site.storage()
    try:
        return status_report(settings, st)
    finally:
        st.close()


def caught_up(site: Site) -> bool:
    state = jetstream_state(site)
    return bool(state["connected"]) and state["behind"] == 0


def keys_of(docs: list[dict[str, object]]) -> list[Key]:
    return [(str(d["sensor_key"]), int(str(d["epoch"])), int(str(d["seq"]))) for d in docs]


def test_subject_tokens_cannot_carry_wildcards_or_separators() -> None:
    assert token("energy") == "energy"
    assert token("a.b c*>\t") == "a_b_c___"
    assert token(None) == token("") == "_"
    said = {"sector": "en.ergy", "site": "north >"}
    assert subject("mamori", int(Kind.ALERT), "s 1", said,
                   {"severity": "high", "precursor": "M3"}) \
        == "mamori.alert.en_ergy.north__.s_1.high.M3"
    assert subject("mamori", int(Kind.ASSET), "s1", {}, {}) == "mamori.asset._._.s1"


def test_node_killed_while_alerts_flow_every_alert_arrives_once(
        tmp_path: Path, cluster: NatsCluster) -> None:
    site = _site(tmp_path, cluster, {"s0": "energy", "s1": "water"})
    try:
        site.start_collector()
        wait_for(lambda: caught_up(site), 30, "the publisher to connect")
        reader = subscribe(cluster.urls, "mamori.alert.>", "--durable", "national-all",
                           "--all", "--count", str(2 * ALERTS), "--idle", "60")
        sensors = [site.sensor(conf, ALERTS, 0.002, flush=60) for conf in site.sensor_confs]
        wait_for(lambda: len(stored_alerts(site)) > ALERTS // 2, 60, "alerts flowing")
        server = str(jetstream_state(site)["server"])
        victim = next(n for n in cluster.nodes if n.url == server)
        victim.stop(signal.SIGKILL)  # the node the collector publishes through
        assert len(stored_alerts(site)) < 2 * ALERTS, "the kill came after the flow"
        for proc in sensors:
            proc.communicate(timeout=120)
            assert proc.returncode == 0
        wait_for(lambda: len(stored_alerts(site)) == 2 * ALERTS, 60, "all alerts stored")
        wait_for(lambda: caught_up(site), 90, "the stream to catch up")
        docs, _ = received(reader, 120)
        got = keys_of(docs)
        assert len(got) == 2 * ALERTS
        assert not [k for k, n in Counter(got).items() if n > 1], "an alert came twice"
        assert set(got) == stored_alerts(site)
        # the subjects say where each alert came from
        sectors = {str(d["sensor"]): str(d["subject"]).split(".")[2] for d in docs}
        assert sectors == {"s0": "energy", "s1": "water"}
        status = subprocess.run(
            [sys.executable, "-m", "mamori.sensor.cli", "collect", "status", "--config",
             str(site.collector_conf)], cwd=PROJECT, capture_output=True, text=True,
            timeout=30)
        assert "jetstream: connected to nats://" in status.stdout, status.stdout
        assert "behind 0 messages" in status.stdout
    finally:
        _cleanup(site)


def test_full_outage_never_stops_ingest_and_the_stream_catches_up(
        tmp_path: Path, cluster: NatsCluster) -> None:
    site = _site(tmp_path, cluster, {"s0": "energy", "s1": "energy"})
    try:
        site.start_collector()
        wait_for(lambda: caught_up(site), 30, "the publisher to connect")
        for node in cluster.nodes:
            node.stop(signal.SIGKILL)
        sensors = [site.sensor(conf, ALERTS, 0.0, flush=60) for conf in site.sensor_confs]
        for proc in sensors:
            proc.communicate(timeout=120)
            assert proc.returncode == 0  # flushed: the collector acked everything
        assert len(stored_alerts(site)) == 2 * ALERTS  # stored while NATS was away
        state = jetstream_state(site)
        assert not state["connected"]
        assert int(str(state["behind"])) >= 2 * ALERTS
        status = subprocess.run(
            [sys.executable, "-m", "mamori.sensor.cli", "collect", "status", "--jetstream",
             "--config", str(site.collector_conf)], cwd=PROJECT, capture_output=True,
            text=True, timeout=30)
        assert "jetstream: NOT connected" in status.stdout, status.stdout
        cluster.start(60)
        wait_for(lambda: caught_up(site), 120, "the stream to catch up after the outage")
        reader = subscribe(cluster.urls, "mamori.alert.>", "--all", "--count",
                           str(2 * ALERTS), "--idle", "30")
        docs, _ = received(reader, 120)
        got = keys_of(docs)
        assert len(got) == len(set(got)) == 2 * ALERTS
        assert set(got) == stored_alerts(site)
    finally:
        _cleanup(site)


def test_credentials_and_subject_permissions_are_enforced(
        tmp_path: Path, single: NatsCluster) -> None:
    site = _site(tmp_path, single, {"e0": "energy", "w0": "water"})
    try:
        site.start_collector()
        sensors = [site.sensor(conf, 600, 0.0, flush=30) for conf in site.sensor_confs]
        for proc in sensors:
            proc.communicate(timeout=60)
        wait_for(lambda: caught_up(site), 60, "the stream to catch up")
        urls = single.urls

        wrong = subscribe(urls, "mamori.>", "--all", "--idle", "2", password="guess")
        out, err = wrong.communicate(timeout=60)
        assert wrong.returncode == 1 and out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert "authorization violation" in err.lower(), err

        for args in (["mamori.*.water.>", "--durable", "energy-cert"],
                     ["mamori.>", "--durable", "energy-cert"],
                     ["mamori.*.energy.>", "--durable", "someone-else"],
                     ["mamori.*.energy.>"]):
            outside = subscribe(urls, *args, "--all", "--idle", "2", user="energy")
            out, err = outside.communicate(timeout=60)
            assert outside.returncode == 1 and out == "", (args, out, err)
            assert len(err.strip().splitlines()) == 1, err
            assert "refused" in err and "ermissions" in err, err
        energy = subscribe(urls, "mamori.*.energy.>", "--durable", "energy-cert", "--all",
                           "--idle", "3", user="energy")
        docs, _ = received(energy, 60)
        assert len(docs) == 600 + 1  # its sensor's alerts and start record
        assert {d["sensor"] for d in docs} == {"e0"}
        assert {str(d["subject"]).split(".")[2] for d in docs} == {"energy"}

        # NATS itself records each refusal, with the user and the subject it wanted
        log = single.nodes[0].log_text()
        assert log.count('authentication error - User "national"') == 1
        assert log.count('Publish Violation - User "energy"') >= 3
    finally:
        _cleanup(site)


async def _stream_messages(url: str) -> int:
    import nats

    nc = await nats.connect(url, user="collector", password=USERS["collector"])
    try:
        info = await nc.jetstream().stream_info("MAMORI")
        return int(info.state.messages)
    finally:
        await nc.close()


def stream_messages(url: str) -> int:
    return asyncio.run(_stream_messages(url))


def test_collector_killed_mid_publish_republishes_and_jetstream_drops_the_copies(
        tmp_path: Path, single: NatsCluster) -> None:
    site = _site(tmp_path, single, {"s0": "energy"})
    try:
        site.start_collector()
        wait_for(lambda: caught_up(site), 30, "the publisher to connect")
        sensor = site.sensor(site.sensor_confs[0], 2 * ALERTS, 0.0005, flush=60)
        wait_for(lambda: len(stored_alerts(site)) > ALERTS // 2, 60, "alerts flowing")
        assert site.proc is not None
        site.proc.kill()  # between JetStream's acks and the next cursor write
        site.proc.wait(timeout=10)
        site.proc = None
        in_stream = stream_messages(single.urls[0])
        settings = JetStreamSettings.from_config(cfg.load(site.collector_conf))
        assert settings is not None
        cursor = CursorStore(settings.cursor, readonly=True)
        try:
            remembered = sum(cursor.load().values())
        finally:
            cursor.close()
        site.start_collector()
        sensor.communicate(timeout=120)
        assert sensor.returncode == 0
        wait_for(lambda: len(stored_alerts(site)) == 2 * ALERTS, 60, "all alerts stored")
        wait_for(lambda: caught_up(site), 60, "the stream to catch up")
        state = jetstream_state(site)
        # what was acked but not yet in the cursor went out again, and was dropped
        assert int(str(state["duplicates"])) == in_stream - remembered > 0, \
            (state, in_stream, remembered)
        reader = subscribe(single.urls, "mamori.alert.>", "--all", "--idle", "3")
        docs, _ = received(reader, 60)
        got = keys_of(docs)
        assert len(got) == len(set(got)) == 2 * ALERTS
        assert set(got) == stored_alerts(site)
        assert stream_messages(single.urls[0]) == 2 * ALERTS + 1  # and the start record
    finally:
        _cleanup(site)


def test_subscribe_refuses_bad_arguments_in_one_line(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from mamori.sensor.cli import main

    for argv, what in ((["mamori..alert"], "token 2"), (["mamori.>.x"], "token 2"),
                       (["--durable", "a.b"], "--durable"), (["--since", "yesterday"],
                                                             "--since"),
                       (["--creds", str(tmp_path / "none.creds")], "no such file"),
                       (["--from-seq", "0"], "--from-seq")):
        assert main(["subscribe", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and what in err, (argv, err)


def test_nats_options_are_checked_with_their_line(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    for line, what in (('nats_servers = ["http://x:4222"]', "nats_servers"),
                       ('nats_stream = "a.b"', "nats_stream"),
                       ("nats_replicas = 9", "nats_replicas")):
        conf.write_text(f"[collect]\npublish = \"\"\n{line}\n")
        with pytest.raises(cfg.ConfigError) as err:
            cfg.load(conf)
        assert f"c.toml:3: [collect] {what}" in str(err.value)
