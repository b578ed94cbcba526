"""Federation with real processes: sensors -> site collector -> national collector.

The national tier must hold exactly what the site accepted, per original sensor (same
key, epoch, seq), once, and prove each sensor complete, while it is SIGKILLed again and
again with a backlog many times the relay's send window. Relayed messages from keys it
does not trust, or that went round a loop, are refused and counted. The tiers run on
SQLite and, as a national CERT would run them, on PostgreSQL (a database each, in a
cluster the test starts): the relay then reads what the site committed there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgpack
import psycopg
import pytest
import zmq

from mamori.parsers.alerts import Alert, Pseudonym, Severity
from mamori.parsers.wire import (
    Ack,
    Kind,
    WireError,
    alert_body,
    decode,
    decode_control,
    encode,
    encode_relayed,
    restore_pseudonyms,
)
from mamori.sensor.collector.federation import _wire_body
from mamori.sensor.collector.server import _stored as _stored_message
from mamori.sensor.collector.storage import message_rows
from mamori.sensor.forwarding.keys import generate, load_pair, read_key
from mamori.sensor.forwarding.policy import CATEGORIES, DestinationPolicy, PolicySpec
from mamori.sensor.forwarding.pseudonym import Pseudonymiser, load_key
from tests.sensor.test_collector import PROJECT, Site, wait_for
from tests.sensor.test_collector_postgres import dsn  # noqa: F401 (a fixture)

RELAY = int(Kind.RELAY)
WINDOW = 50  # the relay's send window in these tests
ALERTS = 1200  # per sensor: 2 sensors x 1200 = 48 windows of backlog


def _stop(site: Site, sig: signal.Signals = signal.SIGKILL) -> bytes:
    assert site.proc is not None and site.proc.stderr is not None
    site.proc.send_signal(sig)
    site.proc.wait(timeout=20)
    err = site.proc.stderr.read()
    site.proc = None
    return err


def _databases(request: pytest.FixtureRequest, names: tuple[str, ...]) -> tuple[str, ...]:
    """A fresh database per name in the module's PostgreSQL cluster; their DSNs."""
    server: str = request.getfixturevalue("dsn")
    suffix = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
    with psycopg.connect(server, autocommit=True) as conn:
        for name in names:
            conn.execute(f"DROP DATABASE IF EXISTS {name}_{suffix}")
            conn.execute(f"CREATE DATABASE {name}_{suffix}")
    return tuple(server.replace("dbname=postgres", f"dbname={name}_{suffix}")
                 for name in names)


@pytest.fixture(params=["sqlite", "postgres"])
def tiers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Site, Site]]:
    """(site, national): the site relays to the national tier, and, to make a loop,
    the national tier relays back to the site, each trusting the other."""
    site_dsn, national_dsn = (_databases(request, ("site", "national"))
                              if request.param == "postgres" else ("", ""))
    national = Site(tmp_path / "national", sensors=0, extra='relay_keys_dir = "keys/relays"\n',
                    dsn=national_dsn)
    (national.coll_dir / "keys" / "sensors").mkdir()  # it serves relays only
    site_dir = tmp_path / "site"
    site = Site(site_dir, sensors=2, dsn=site_dsn, extra=(
        f'relay_keys_dir = "keys/relays"\nupstream = "{national.endpoint}"\n'
        f'upstream_key = "{national.coll_dir / "keys" / "collector.pub"}"\n'
        f'upstream_window = {WINDOW}\nupstream_heartbeat = 0.5\nupstream_ack_timeout = 1.0\n'))
    with national.collector_conf.open("a") as conf:
        conf.write(f'upstream = "{site.endpoint}"\n'
                   f'upstream_key = "{site.coll_dir / "keys" / "collector.pub"}"\n'
                   'upstream_heartbeat = 0.5\nupstream_ack_timeout = 1.0\n')
    for a, b in ((site, national), (national, site)):
        (b.coll_dir / "keys" / "relays").mkdir(parents=True, exist_ok=True)
        shutil.copy(a.coll_dir / "keys" / "collector.pub",
                    b.coll_dir / "keys" / "relays" / f"{a.tmp.name}.pub")
    yield site, national
    for s in (site, national):
        if s.proc is not None:
            s.proc.kill()
            s.proc.wait(timeout=10)


def _stored(site: Site) -> dict[str, list[tuple[int, int]]]:
    st = site.storage()
    try:
        keys = [r[0] for r in st._all("SELECT DISTINCT sensor FROM messages")]
        return {k: st.sequence(k) for k in keys}
    finally:
        st.close()


def _status(site: Site) -> list[dict[str, object]]:
    out = subprocess.run([sys.executable, "-m", "mamori.sensor.forwarding.cli", "collect", "status",
                          "--config", str(site.collector_conf), "--json"], cwd=PROJECT,
                         capture_output=True, text=True, timeout=30, check=True)
    docs: list[dict[str, object]] = json.loads(out.stdout)
    return docs


def test_national_tier_stores_what_the_site_accepted_through_repeated_sigkill(
        tiers: tuple[Site, Site]) -> None:
    site, national = tiers
    national.start_collector()
    site.start_collector()
    sensors = [site.sensor(conf, ALERTS, interval=0.002, flush=60)
               for conf in site.sensor_confs]
    keys = [site.sensor_key(f"s{i}") for i in range(2)]
    kills = 0
    for _ in range(4):  # SIGKILL the national tier mid-flow, leave it down, restart it
        time.sleep(0.8)
        _stop(national)
        kills += 1
        time.sleep(1.2)  # the sensors go on; the site's backlog for the national grows
        national.start_collector()
    for proc in sensors:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-2000:]
    below = _stored(site)
    assert set(below) == set(keys)
    assert all(len(below[k]) > ALERTS for k in keys)  # start record + alerts
    backlog = sum(len(v) for v in below.values())
    assert backlog > 40 * WINDOW

    def caught_up() -> bool:
        above = _stored(national)
        return all(above.get(k) == below[k] for k in keys)

    wait_for(caught_up, 90, "the national tier to hold what the site stored")
    above = _stored(national)
    assert set(above) == set(keys)  # nothing of the site's own, nothing else
    for k in keys:
        assert above[k] == below[k]  # same epochs and seqs, in order, each once
    # Once more through a SIEM file that is written after each commit: no line twice.
    lines = Counter((d["sensor_key"], d["epoch"], d["seq"]) for d in national.jsonl_alerts()
                    if d.get("event_type") != "health")
    assert lines and max(lines.values()) == 1

    def complete() -> bool:
        rows = {str(r["sensor"]): r for r in _status(national)}
        return all(k in rows and rows[k].get("complete_ts") and rows[k]["outstanding"] == 0
                   for k in keys)

    wait_for(complete, 30, "the national tier to mark every original sensor complete")
    rows = {str(r["sensor"]): r for r in _status(national)}
    assert {rows[k]["via"] for k in keys} == {"site"}
    assert {rows[k]["name"] for k in keys} == {"s0", "s1"}
    assert all(rows[k]["path"] == [read_key(site.coll_dir / "keys" / "collector.pub").decode()]
               for k in keys)
    # The loop back (national -> site) sent nothing: every stream there came from the site.
    assert set(_stored(site)) == set(keys)
    err = _stop(national, signal.SIGTERM)
    assert b"relay_loop_skipped" in err, err[-500:]
    _stop(site, signal.SIGTERM)
    assert kills == 4


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], secret: Path, server: Path,
            endpoint: str) -> zmq.Socket[bytes]:
    pair = load_pair(secret)
    sock = ctx.socket(zmq.DEALER)
    sock.curve_secretkey, sock.curve_publickey = pair.secret, pair.public
    sock.curve_serverkey = read_key(server)
    sock.linger = 0
    sock.connect(endpoint)
    return sock


def test_relayed_messages_from_untrusted_keys_or_loops_are_refused_and_counted(
        tmp_path: Path) -> None:
    national = Site(tmp_path / "national", sensors=1, extra='relay_keys_dir = "keys/relays"\n')
    relays = national.coll_dir / "keys" / "relays"
    generate("relay", relays)
    national.start_collector()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        server = national.coll_dir / "keys" / "collector.pub"
        own = read_key(server).decode()
        relay_key = read_key(relays / "relay.pub").decode()
        sensor_key = national.sensor_key("s0")
        origin = read_key(relays / "relay.pub").decode()[::-1]  # any 40-char key
        sensor = _dealer(ctx, national.coll_dir / "keys" / "sensors" / "s0.secret", server,
                         national.endpoint)
        relay = _dealer(ctx, relays / "relay.secret", server, national.endpoint)
        start = {"event": "start", "epoch": 1}
        # A sensor key (allowed, not a relay) that relays: refused.
        sensor.send(encode_relayed(origin, "x", [sensor_key], 1, 1, time.time(), Kind.HEALTH,
                                   start))
        # A trusted relay whose path holds the receiver, or names the receiver as the
        # origin (it went round a loop), or does not end with the relay: refused.
        relay.send(encode_relayed(origin, "x", [own, relay_key], 1, 1, time.time(),
                                  Kind.HEALTH, start))
        relay.send(encode_relayed(own, "x", [relay_key], 1, 1, time.time(), Kind.HEALTH, start))
        relay.send(encode_relayed(origin, "x", [sensor_key], 1, 1, time.time(), Kind.HEALTH,
                                  start))
        # A relayed frame whose inner kind is itself a relay, and garbage in the path.
        relay.send(msgpack.packb([1, 1, 1, time.time(), RELAY,
                                  [origin, "x", [relay_key], RELAY, {}]]))
        relay.send(msgpack.packb([1, 1, 1, time.time(), RELAY, [origin, "x", [7], 4, start]]))
        # A relay does not fetch rules for the sensors behind it.
        relay.send(msgpack.packb([1, 1, 1, time.time(), RELAY,
                                  [origin, "x", [relay_key], int(Kind.RULES_FETCH),
                                   [bytes(32), 0]]]))
        # And a good one: stored under the original sensor, acked naming it (kind 20).
        relay.send(encode_relayed(origin, "plc-site-7", [relay_key], 1, 1, time.time(),
                                  Kind.HEALTH, start))
        # A plain sensor message still works beside all that.
        sensor.send(encode(1, 1, time.time(), Kind.HEALTH, start))
        assert relay.poll(10_000), "no ack for the good relayed message"
        ack = decode_control(relay.recv(), relayed=True)
        assert isinstance(ack, Ack)
        assert (ack.origin, ack.epoch, getattr(ack, "seq", None)) == (origin, 1, 1)
        assert sensor.poll(10_000)
        with pytest.raises(WireError, match="unknown_kind"):  # a sensor never takes 20
            decode_control(_relay_ack(origin))

        def counted() -> bool:
            st = national.storage()
            try:
                return sum(st.rejects().values()) >= 7
            finally:
                st.close()

        wait_for(counted, 10, "the refusals to be stored")
        st = national.storage()
        try:
            rejects = st.rejects()
            assert st.sequence(origin) == [(1, 1)]
            assert st.sequence(sensor_key) == [(1, 1)]
        finally:
            st.close()
        assert rejects == {(sensor_key, "untrusted_relay"): 1, (relay_key, "relay_loop"): 2,
                           (relay_key, "bad_relay_path"): 1, (relay_key, "unknown_kind"): 2,
                           (relay_key, "bad_body"): 1}
        rows = {str(r["sensor"]): r for r in _status(national)}
        assert rows[origin]["via"] == "relay" and rows[origin]["name"] == "plc-site-7"
    finally:
        ctx.destroy(0)
        national.stop_collector()


def _relay_ack(origin: str) -> bytes:
    data: bytes = msgpack.packb([1, int(Kind.RELAY_ACK), [origin, 1, 1]])
    return data


def test_an_upper_tier_that_appears_after_the_sensors_left_still_proves_them_complete(
        tiers: tuple[Site, Site]) -> None:
    """Every sensor heartbeat is older than the national tier's first ack: the relay
    must send each sensor's last heartbeat again once the upper tier acked more."""
    site, national = tiers
    site.start_collector()
    sensors = [site.sensor(conf, 300, flush=30) for conf in site.sensor_confs]
    for proc in sensors:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-2000:]
    keys = [site.sensor_key(f"s{i}") for i in range(2)]
    wait_for(lambda: all(r.get("complete_ts") for r in _status(site)), 30,
             "the site to mark its sensors complete")
    national.start_collector()

    def complete() -> bool:
        rows = {str(r["sensor"]): r for r in _status(national)}
        return all(k in rows and rows[k].get("complete_ts") and rows[k]["outstanding"] == 0
                   for k in keys)

    wait_for(complete, 60, "the national tier to mark both sensors complete")
    assert _stored(national) == _stored(site)


def test_pseudonyms_reach_the_upper_tier_typed_as_the_sensor_sent_them(tmp_path: Path) -> None:
    """Site stores a pseudonymised alert and asset as JSON; its relay must send the
    pseudonyms upward as the ext type again. As plain ``pn:`` text the upper tier took
    them for strings, and refused an alert whose unit or link address was one."""
    policy = DestinationPolicy(PolicySpec("all", pseudonymise=frozenset(CATEGORIES)),
                               Pseudonymiser(load_key(tmp_path / "k.key", create=True)))
    t = time.time()
    alert = Alert("mamori.modbus.write", "M3", Severity.HIGH, ("T0836",), "write", "modbus",
                  t, t, src="10.0.0.1", sport=40000, dst="10.0.0.2", dport=502, unit=7,
                  link_src=3, link_dst=4, evidence={"mac": "00:11:22:33:44:55", "fc": 6},
                  id=9)
    shaped = policy.shape_alert(alert)
    asset = policy.shape(Kind.ASSET, {"ip": "10.0.0.2", "mac": "00:11:22:33:44:55",
                                      "identity": {"vendor": "Acme"}})
    assert shaped is not None and asset is not None
    origin = "a" * 40
    for seq, kind, body in ((1, Kind.ALERT, shaped.body), (2, Kind.ASSET, asset.body)):
        site = decode(encode(1, seq, t, kind, body), documents=True)  # at the site
        (row,), _ = message_rows([_stored_message(origin, site, t)])
        text = row[6]  # the JSON the site commits
        assert "pn:" in text
        plain = json.loads(text)
        if kind is Kind.ALERT:
            # The old relay's frame: the stored text as it is. The upper tier refuses it.
            with pytest.raises(WireError, match="bad_type"):
                decode(encode_relayed(origin, "s", ["b" * 40], 1, seq, t, kind,
                                      alert_body(Alert.from_dict(plain))), documents=True)
        sent = _wire_body(int(kind), text)  # what the relay sends now
        upper = decode(encode_relayed(origin, "s", ["b" * 40], 1, seq, t, kind, sent),
                       documents=True)
        inner = upper.body.inner.body
        assert inner == site.body  # field for field what the site decoded
        typed = [v for v in _leaves(site.body) if isinstance(v, Pseudonym)]
        assert typed and all(isinstance(v, Pseudonym) for v in _leaves(inner)
                             if isinstance(v, str) and v.startswith("pn:"))
        assert len([v for v in _leaves(inner) if isinstance(v, Pseudonym)]) == len(typed)
    # A string that only starts like one stays a string.
    assert restore_pseudonyms(["pn:xyz", "pn:" + "0" * 23]) == ["pn:xyz", "pn:" + "0" * 23]


def _leaves(value: object) -> Iterator[object]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value
