"""A hostile collector against a real sensor process: every bad offer and chunk is
counted and dropped, nothing is applied, and the same link then delivers a genuine
bundle in many chunks, including a chunk whose first request went unanswered.

The collector here is the test itself: a CURVE ROUTER on a real socket that sends
what a compromised collector could, frame by frame. The sensor is a real Forwarder
with its RuleReceiver in another process; what it counted comes back in its
heartbeats, which is how an operator at the centre would see it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from nacl.signing import SigningKey

from mamori.parsers.wire import (
    MAX_CONTROL_BYTES,
    RULES_CHUNK_BYTES,
    WIRE_VERSION,
    Envelope,
    Kind,
    RulesChunk,
    RulesFetch,
    RulesOffer,
    decode,
    encode_chunk,
    encode_offer,
    pack,
)
from mamori.sensor.detection.bundle import MAX_BUNDLE_BYTES, build
from mamori.sensor.forwarding.keys import generate, load_pair
from tests.ports import free_port
from tests.sensor.test_collector import PROJECT, Site

SENSOR = """
import sys
from mamori.sensor import config as cfg
from mamori.sensor.detection.settings import bundle_store
from mamori.sensor.forwarding.forwarder import Forwarder
from mamori.sensor.detection.rulepush import RuleReceiver
conf = cfg.load(sys.argv[1])
receiver = RuleReceiver(bundle_store(conf), conf.get("detection", "trusted_rule_keys"))
fw = Forwarder(conf, rules=receiver).start()
sys.stdin.read()  # until the test closes it
fw.close(0)
"""
PACK = """\
pack: site.push
rules:
  - id: site.push.listen_only
    precursor: M1
    title: Listen only, pushed
    severity: critical
    attack: [T0814]
    match: {{proto: modbus, type: request, fc: 8, sub: 4}}
{padding}"""


class HostileCollector:
    """A CURVE server the sensor trusts (it holds its key), saying anything."""

    def __init__(self, tmp: Path, name: str = "collector") -> None:
        generate(name, tmp / "ckeys")
        self.public_file = tmp / "ckeys" / f"{name}.pub"
        pair = load_pair(tmp / "ckeys" / f"{name}.secret")
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.curve_server = True
        self.sock.curve_secretkey = pair.secret
        self.sock.curve_publickey = pair.public
        self.sock.linger = 0
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.sock.bind(self.endpoint)
        self.identity = b""
        self.fetches: list[RulesFetch] = []
        self.heartbeat: dict[str, Any] = {}

    def read(self, timeout: float = 0.2) -> Envelope | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        self.identity, frame = self.sock.recv_multipart()
        env = decode(frame)
        if env.kind is Kind.RULES_FETCH:
            self.fetches.append(env.body)
        elif env.kind is Kind.HEARTBEAT:
            self.heartbeat = env.body
        return env

    def until(self, what: str, check: Any, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read()
            if check():
                return
        raise AssertionError(f"timed out waiting for {what}; last heartbeat "
                             f"{self.heartbeat}")

    def fetch(self, timeout: float = 10.0) -> RulesFetch:
        self.fetches.clear()
        self.until("a fetch request", lambda: self.fetches, timeout)
        return self.fetches[0]

    def send(self, frame: bytes) -> None:
        self.sock.send_multipart([self.identity, frame])

    def serve(self, raw: bytes, first: RulesFetch) -> int:
        """Answer ``first`` and every following request for ``raw``; chunks sent."""
        sha, req, sent = hashlib.sha256(raw).digest(), first, 0
        while True:
            assert (req.sha256, req.offset) == (sha, sent * RULES_CHUNK_BYTES), req
            self.send(encode_chunk(RulesChunk(sha, req.offset,
                                              raw[req.offset:req.offset + RULES_CHUNK_BYTES])))
            sent += 1
            if sent * RULES_CHUNK_BYTES >= len(raw):
                return sent
            req = self.fetch()

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@contextlib.contextmanager
def sensor_of(tmp_path: Path, collectors: list[HostileCollector]
              ) -> Iterator[tuple[subprocess.Popen[str], Path, SigningKey]]:
    """A sensor process forwarding to ``collectors``, trusting a fresh centre key."""
    state = tmp_path / "sensor"
    generate("sensor", state / "keys")
    centre = SigningKey.generate()
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "centre.pub").write_text(bytes(centre.verify_key).hex() + "\n")
    conf = tmp_path / "sensor.toml"
    links = ", ".join(f'{{endpoint = "{c.endpoint}", server_key = "{c.public_file}"}}'
                      for c in collectors)
    conf.write_text(
        f'[sensor]\nstate_dir = "{state}"\n[detection]\ntrusted_rule_keys = "{trusted}"\n'
        f'[forward]\nheartbeat_interval = 0.3\ncollectors = [{links}]\n')
    proc = subprocess.Popen([sys.executable, "-c", SENSOR, str(conf)], cwd=PROJECT,
                            stdin=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(PROJECT)))
    try:
        yield proc, state, centre
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for collector in collectors:
            collector.close()


@pytest.fixture
def parties(tmp_path: Path) -> Iterator[tuple[HostileCollector, subprocess.Popen[str], Path,
                                              SigningKey]]:
    collector = HostileCollector(tmp_path)
    with sensor_of(tmp_path, [collector]) as (proc, state, centre):
        yield collector, proc, state, centre


def drops(c: HostileCollector) -> dict[str, int]:
    return dict(c.heartbeat.get("rules_drops") or {})


def test_a_hostile_collector_is_counted_and_never_applied(
        parties: tuple[HostileCollector, subprocess.Popen[str], Path, SigningKey],
        tmp_path: Path) -> None:
    c, proc, state, centre = parties
    c.until("the first heartbeat", lambda: c.heartbeat)
    assert c.heartbeat["rules"] == 0
    pack_file = tmp_path / "push.yaml"  # three chunks and a bit: the chunking is exercised
    pack_file.write_text(PACK.format(padding=("# " + "x" * 78 + "\n")
                                     * (3 * RULES_CHUNK_BYTES // 80)))
    raw = build([pack_file], centre, 3)
    sha = hashlib.sha256(raw).digest()
    assert len(raw) > 3 * RULES_CHUNK_BYTES

    # An offer past the sensor's bundle cap is never fetched.
    c.send(encode_offer(RulesOffer(3, MAX_BUNDLE_BYTES + 1, sha)))
    c.until("offer_too_large counted", lambda: drops(c).get("offer_too_large") == 1)
    # A frame past the control cap, and a chunk nobody asked for.
    c.send(pack([WIRE_VERSION, int(Kind.RULES_CHUNK),
                 [sha, 0, b"\0" * RULES_CHUNK_BYTES, b"\0" * 512]]))
    c.send(b"\xc1")  # not msgpack at all
    assert len(pack([WIRE_VERSION, int(Kind.RULES_CHUNK), [sha, 0, b"\0" * RULES_CHUNK_BYTES,
                                                           b"\0" * 512]])) > MAX_CONTROL_BYTES
    c.send(encode_chunk(RulesChunk(sha, 0, b"unasked")))
    c.until("the bad frames counted", lambda: c.heartbeat.get("control_errors") == 2
            and drops(c).get("chunk_unexpected") == 1)
    # An offer whose size is a lie: the chunk runs past it.
    c.send(encode_offer(RulesOffer(3, 100, sha)))
    first = c.fetch()
    assert (first.sha256, first.offset) == (sha, 0)
    c.send(encode_chunk(RulesChunk(sha, 0, raw[:RULES_CHUNK_BYTES])))
    c.until("chunk_overrun counted", lambda: drops(c).get("chunk_overrun") == 1)
    assert c.heartbeat["rules_offer"] == [sha.hex(), "failed", "chunk_overrun"]
    # An offer whose hash is not that of the bytes served.
    liar = hashlib.sha256(b"something else").digest()
    c.send(encode_offer(RulesOffer(3, len(raw), liar)))
    offset = 0
    while offset < len(raw):
        req = c.fetch()
        assert (req.sha256, req.offset) == (liar, offset)
        c.send(encode_chunk(RulesChunk(liar, offset, raw[offset:offset + RULES_CHUNK_BYTES])))
        offset += RULES_CHUNK_BYTES
    c.until("hash_mismatch counted", lambda: drops(c).get("hash_mismatch") == 1)
    # Offered again, either one: not fetched again (the collector would send the same).
    c.send(encode_offer(RulesOffer(3, len(raw), liar)))
    c.send(encode_offer(RulesOffer(3, 100, sha)))
    c.fetches.clear()
    quiet = time.monotonic() + 1.5
    while time.monotonic() < quiet:
        c.read(0.1)
    assert not c.fetches
    assert c.heartbeat["rules"] == 0 and not (state / "rules" / "active").exists()
    assert proc.poll() is None

    # The genuine bundle, on the same link: one request left unanswered is asked again.
    honest = build([pack_file], centre, 4)
    digest = hashlib.sha256(honest).digest()
    c.send(encode_offer(RulesOffer(4, len(honest), digest)))
    assert c.fetch().offset == 0  # not answered
    started = time.monotonic()
    again = c.fetch(timeout=10)
    assert again.offset == 0 and time.monotonic() - started > 2.0  # after FETCH_TIMEOUT
    offset, chunks = 0, 0
    while True:
        c.send(encode_chunk(RulesChunk(digest, offset,
                                       honest[offset:offset + RULES_CHUNK_BYTES])))
        chunks += 1
        offset += RULES_CHUNK_BYTES
        if offset >= len(honest):
            break
        assert c.fetch().offset == offset
    c.until("bundle 4 running", lambda: c.heartbeat.get("rules") == 4)
    assert chunks == 4
    assert c.heartbeat["rules_offer"] == [digest.hex(), "applied", "version 4"]
    assert (state / "rules" / "bundles" / "4" / "push.yaml").read_text() == pack_file.read_text()

    # Restarted, the sensor remembers: none of these is fetched again, nothing alerts.
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(15) == 0
    again_proc = subprocess.Popen([sys.executable, "-c", SENSOR, str(tmp_path / "sensor.toml")],
                                  cwd=PROJECT, stdin=subprocess.PIPE, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(PROJECT)))
    try:
        c.heartbeat = {}
        c.until("the restarted sensor's heartbeat", lambda: c.heartbeat.get("rules") == 4)
        assert c.heartbeat["rules_offer"] == [digest.hex(), "applied", "version 4"]
        c.fetches.clear()
        for offered in (RulesOffer(3, 100, sha), RulesOffer(3, len(raw), liar),
                        RulesOffer(4, len(honest), digest)):
            c.send(encode_offer(offered))
        quiet = time.monotonic() + 1.5
        while time.monotonic() < quiet:
            c.read(0.1)
        assert not c.fetches and "rules_drops" not in c.heartbeat
    finally:
        assert again_proc.stdin is not None
        again_proc.stdin.close()
        again_proc.wait(15)


def test_push_rules_names_what_it_cannot_offer(tmp_path: Path) -> None:
    mamori = str(Path(sys.executable).parent / "mamori")
    generate("s1", tmp_path / "keys" / "sensors")
    pack_file = tmp_path / "push.yaml"
    pack_file.write_text(PACK.format(padding=""))
    bundle = tmp_path / "b.mrb"
    bundle.write_bytes(build([pack_file], SigningKey.generate(), 1))

    def push(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([mamori, "collect", "push-rules", "--state-dir", str(tmp_path),
                               str(bundle), *args], capture_output=True, text=True, timeout=60)

    done = push("--sensors", "s1", "nobody")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done
    assert f"nobody: no such sensor in the allow-list {tmp_path / 'keys' / 'sensors'}" \
        in done.stderr
    assert not (tmp_path / "collector").exists()  # nothing stored
    done = push()
    assert done.returncode == 0 and "offered to 1 sensor(s): s1" in done.stdout, done


def test_a_sensor_that_asks_and_never_reads_is_limited(tmp_path: Path) -> None:
    """The real collector serves a sensor at most twice its bundle per minute, and
    nothing that is not offered to it; the rest is counted against its key."""
    from mamori.parsers.wire import decode_control, encode

    site = Site(tmp_path)
    site.start_collector()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        pair = load_pair(tmp_path / "s0" / "keys" / "sensor.secret")
        sock.curve_secretkey, sock.curve_publickey = pair.secret, pair.public
        sock.curve_serverkey = load_pair(site.coll_dir / "keys" / "collector.secret").public
        sock.linger = 0
        sock.connect(site.endpoint)
        sock.send(encode(1, 0, time.time(), Kind.HEARTBEAT, {"up": 1.0}))
        pack_file = tmp_path / "push.yaml"
        pack_file.write_text(PACK.format(padding=""))
        bundle = tmp_path / "b.mrb"
        raw = build([pack_file], SigningKey.generate(), 1)
        bundle.write_bytes(raw)
        done = subprocess.run([str(Path(sys.executable).parent / "mamori"), "collect",
                               "push-rules", "--config", str(site.collector_conf), str(bundle)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert sock.poll(10_000), "no offer"
        offer = decode_control(sock.recv())
        assert isinstance(offer, RulesOffer) and offer.size == len(raw)
        for _ in range(300):
            sock.send(encode(1, 0, time.time(), Kind.RULES_FETCH, [offer.sha256, 0]))
        sock.send(encode(1, 0, time.time(), Kind.RULES_FETCH, [b"\1" * 32, 0]))
        sock.send(encode(1, 0, time.time(), Kind.RULES_FETCH, [offer.sha256, len(raw)]))
        time.sleep(1.5)
        chunks = 0
        while sock.poll(200):
            message = decode_control(sock.recv())
            if isinstance(message, RulesChunk):
                assert message.data == raw
                chunks += 1
        assert chunks == 2 * 1 + 8
        site.stop_collector()
        storage = site.storage()
        try:
            rejects = storage.rejects()
        finally:
            storage.close()
        key = site.sensor_key("s0")
        assert rejects[(key, "rules_fetch_limited")] == 300 - chunks
        assert rejects[(key, "rules_not_offered")] == 2
    finally:
        sock.close(0)
        ctx.term()
        if site.proc is not None:
            site.proc.kill()
            site.proc.wait(10)


def test_two_collectors_offering_two_bundles_each_hear_their_own(tmp_path: Path) -> None:
    """One transfer at a time: B's offer during A's transfer waits for B's next offer.
    Each collector's heartbeat then names the bundle it offered, and what became of it."""
    a, b = HostileCollector(tmp_path, "a"), HostileCollector(tmp_path, "b")
    with sensor_of(tmp_path, [a, b]) as (_, state, centre):
        for c in (a, b):
            c.until("a heartbeat", lambda c=c: c.heartbeat)
        pack_file = tmp_path / "push.yaml"
        pack_file.write_text(PACK.format(padding=("# " + "y" * 78 + "\n") * 300))
        five, six = build([pack_file], centre, 5), build([pack_file], centre, 6)
        a.send(encode_offer(RulesOffer(5, len(five), hashlib.sha256(five).digest())))
        first = a.fetch()
        b.send(encode_offer(RulesOffer(6, len(six), hashlib.sha256(six).digest())))
        b.fetches.clear()
        b.until("B told its offer waits", lambda: b.heartbeat.get("rules_offer", [""])[0]
                == hashlib.sha256(six).hexdigest())
        assert b.heartbeat["rules_offer"][1] == "waiting" and not b.fetches
        a.until("A told its offer is fetched", lambda: a.heartbeat.get("rules_offer", ["", ""])[1]
                == "fetching")
        assert a.serve(five, first) == 2
        a.until("5 running", lambda: a.heartbeat.get("rules") == 5)
        b.send(encode_offer(RulesOffer(6, len(six), hashlib.sha256(six).digest())))
        b.serve(six, b.fetch())
        for c, raw, n in ((a, five, 5), (b, six, 6)):
            c.until("6 running, and the outcome of its own offer",
                    lambda c=c, raw=raw, n=n: c.heartbeat.get("rules") == 6
                    and c.heartbeat["rules_offer"] == [hashlib.sha256(raw).hexdigest(),
                                                       "applied", f"version {n}"])
        assert {p.name for p in (state / "rules" / "bundles").iterdir()} == {"5", "6"}
