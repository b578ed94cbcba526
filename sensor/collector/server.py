"""The collector: CURVE ROUTER with a counting ZAP allow-list, strict validation,
in-order acceptance per (sensor, epoch), storage, acks, replay requests, re-publish.

Sensors connect in with DEALER sockets. Our own ZAP handler (an inproc REP socket at
``inproc://zeromq.zap.01``) admits a connection only if its CURVE public key is in
the allow-list directory, and names the connection with that key (the ZAP user id),
which every frame then carries as ``User-Id``. That key, never a field in the
payload, says which sensor sent a message.

Acceptance is strictly in order: of each (sensor, epoch) stream the collector takes
only ``contig + 1``. A smaller seq is a duplicate (acked again, dropped); a larger one
means a gap, so it is dropped and the missing range is requested. With the sensor's
go-back-N resend this gives every message exactly once, in seq order, without a
reorder buffer that a hostile sensor could fill.

A batch of messages is committed to storage before it is acknowledged, published on
the local PUB socket and written to the SIEM JSON lines file.

A full disk is a state, not a crash (issue 12): a batch the storage cannot commit is
rolled back and not acknowledged, so the sensors keep it in their journals and resend
it; the collector says so once (stderr, a ``storage_full`` health record) and again
when writes work again. The SIEM file keeps, in memory and bounded, whatever bytes the
disk refused and writes them, whole lines in order, when space returns.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import operator
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import zmq
from zmq.backend import Socket as _BackendSocket
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from mamori.parsers.wire import (
    KNOWN_VERSIONS,
    Ack,
    Envelope,
    Kind,
    ReplayRequest,
    WireError,
    alert_json,
    encode_ack,
    encode_replay,
)
from mamori.parsers.wire import decode as decode_message
from mamori.sensor import config as cfg
from mamori.sensor.alerting.linefile import LineFile as SiemFile
from mamori.sensor.alerting.siem import CollectorSiem, CollectorSiemSettings
from mamori.sensor.collector.federation import Relay, RelayInbound, RelaySettings, ensure_routes
from mamori.sensor.collector.jetstream import JetStreamPublisher, JetStreamSettings
from mamori.sensor.collector.limits import ROUTER_OPTIONS, ensure_fd_limit
from mamori.sensor.collector.rule_offers import RuleOffers
from mamori.sensor.collector.storage import SqlStorage, StoredMessage, dumps, open_storage
from mamori.sensor.forwarding.keys import KeyFileError, load_allow_list, load_pair

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_NOBLOCK = int(zmq.NOBLOCK)  # flags as plain ints: an enum's ``|`` is a Python call
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
# The extension type's send, without pyzmq's Python-level wrapper (which only adds
# routing ids and groups, for draft socket types): two of them per published alert.
_send_frame = _BackendSocket.send
_RELAY, _ALERT, _ALERT_INT = Kind.RELAY, Kind.ALERT, int(Kind.ALERT)
_CONTROL = frozenset({Kind.HEARTBEAT, Kind.RULES_FETCH, Kind.LOST})  # not a stream's
_KIND_OF = operator.itemgetter(3)  # StoredMessage.kind
UNAUTHENTICATED = ""  # the rejects row for connections that never proved a key

@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """The ``[collect]`` section resolved against the state dir."""

    listen: tuple[str, ...]
    secret_key: Path
    keys_dir: Path
    db: Path
    dsn: str
    publish: str
    jsonl: str
    max_message_bytes: int
    replay_interval: float
    max_clock_skew: float = 30.0
    jetstream: JetStreamSettings | None = None  # [collect] nats_*: None = off
    siem: CollectorSiemSettings | None = None  # EVE records, syslog (mamori.sensor.alerting.siem)
    retention: float = 0.0  # seconds; 0 = keep everything
    relay_keys_dir: Path | None = None  # federation: lower tiers trusted to relay to us
    upstream: RelaySettings | None = None  # federation: relay what we accept upward
    io_threads: int = 2  # ZeroMQ I/O threads: CURVE and TCP for every sensor connection

    @classmethod
    def from_config(cls, config: cfg.Config,
                    state_dir: Path | None = None) -> CollectorSettings:
        base = state_dir or Path(config.get("sensor", "state_dir"))
        s = config.section("collect")
        return cls(tuple(s["listen"]), base / s["secret_key"], base / s["keys_dir"],
                   base / s["db"], s["dsn"], s["publish"], s["jsonl"],
                   s["max_message_bytes"], s["replay_interval"], s["max_clock_skew"],
                   JetStreamSettings.from_section(s, base),
                   CollectorSiemSettings.from_section(s), s["retention"],
                   base / s["relay_keys_dir"] if s["relay_keys_dir"] else None,
                   RelaySettings.from_section(s, base), s["io_threads"])


log = logging.getLogger("mamori.collector")

ROUND_SECONDS = 0.025  # reading time of one round at most (then commit, ack, publish)
HOUSEKEEPING_INTERVAL = 3600.0  # seconds between passes (the first at start)


def is_disk_full(err: BaseException) -> bool:
    """SQLite's SQLITE_FULL, PostgreSQL's disk_full (53100) or ENOSPC."""
    if isinstance(err, sqlite3.Error):
        code = getattr(err, "sqlite_errorcode", None)
        return bool(code == sqlite3.SQLITE_FULL) if code is not None \
            else "database or disk is full" in str(err)
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(err, "sqlstate", None) == "53100"


class CollectorServer:
    """One process, one thread: ``bind()``, then ``run()`` or ``poll()`` repeatedly."""

    def __init__(self, config: cfg.Config | CollectorSettings,
                 state_dir: Path | None = None, storage: SqlStorage | None = None) -> None:
        self.settings = (config if isinstance(config, CollectorSettings)
                         else CollectorSettings.from_config(config, state_dir))
        self.storage = storage or open_storage(self.settings.db, self.settings.dsn)
        self.counters: Counter[str] = Counter()
        self.kinds: Counter[int] = Counter()  # accepted messages by wire kind (metrics)
        self.rejected: Counter[str] = Counter()  # refused messages by reason (metrics)
        self.started = time.time()
        self._rejects: Counter[tuple[str, str]] = Counter()  # not yet in storage
        self._allow: dict[bytes, str] = {}
        self._allowed: frozenset[str] = frozenset()  # the same keys as text, per message
        self._allow_stamp = -1
        self._relays_seen: dict[bytes, str] = {}
        self._next_allow_check = 0.0
        self._contig: dict[tuple[str, int], int] = {}
        self._last_replay: dict[tuple[str, int], float] = {}
        self._routes: dict[str, bytes] = {}  # sensor key -> ROUTER identity of its link
        self._skewed: set[str] = set()  # sensors whose clock is past max_clock_skew now
        self._version_told: set[tuple[str, str]] = set()  # (sensor, version) logged once
        self._health: list[dict[str, Any]] = []  # the collector's own findings to publish
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._jsonl: SiemFile | None = None
        self._siem: CollectorSiem | None = None  # EVE lines and syslog, when configured
        self.storage_full = False  # the last commit failed for lack of space
        self.jetstream: JetStreamPublisher | None = None
        self.rule_offers = RuleOffers(self.storage)  # `collect push-rules` (issue 17)
        self._next_housekeeping = 0.0  # monotonic
        self._origins: dict[str, tuple[str, str]] = {}  # sensor -> (name, its JSON fields)
        self.relay: Relay | None = None  # federation, sending upward
        self.inbound = RelayInbound("", self.settings.relay_keys_dir)  # and receiving
        self._reply_to: dict[str, set[str]] = {}  # this batch: sensor -> "" direct, or relays
        self._max_bytes = self.settings.max_message_bytes
        # Address bytes -> text, for the decoder (bounded there, MAX_ADDRESS_TEXTS; emptied
        # by the hourly housekeeping so that addresses no longer seen make room).
        self._addresses: dict[bytes, str] = {}

    @property
    def allow(self) -> dict[bytes, str]:
        """The allow-list: Z85 key (as ZAP gives it) -> name. Replaced whole, never
        changed in place: the setter keeps the keys as text beside it (``_allowed``),
        which every message is checked against without an encode."""
        return self._allow

    @allow.setter
    def allow(self, keys: dict[bytes, str]) -> None:
        self._allow = keys
        self._allowed = frozenset(k.decode() for k in keys)

    # -- sockets ------------------------------------------------------------------------

    def bind(self) -> None:
        s = self.settings
        pair = load_pair(s.secret_key)
        self.inbound.own_key = pair.public.decode()
        self._reload_allow_list(force=True)
        if s.relay_keys_dir is not None:
            ensure_routes(self.storage)
        if (warning := ensure_fd_limit(len(self.allow))) is not None:
            log.warning("mamori collect: %s", warning)
        self._ctx = zmq.Context(io_threads=s.io_threads)
        self._zap = self._ctx.socket(zmq.REP)
        self._zap.linger = 0
        self._zap.bind(ZAP_ENDPOINT)  # before any CURVE socket accepts
        self.router = self._ctx.socket(zmq.ROUTER)
        self.router.curve_server = True
        self.router.curve_secretkey = pair.secret
        self.router.curve_publickey = pair.public
        self.router.zap_domain = b"mamori"
        for option, value in ((zmq.LINGER, 0), (zmq.RCVHWM, 100_000), (zmq.SNDHWM, 100_000),
                              (zmq.MAXMSGSIZE, 16 * s.max_message_bytes),
                              (zmq.ROUTER_MANDATORY, 1), *ROUTER_OPTIONS):
            self.router.setsockopt(option, value)
        self._monitor = self.router.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        for endpoint in s.listen:
            self.router.bind(endpoint)
        self._pub: zmq.Socket[bytes] | None = None
        if s.publish:
            self._pub = self._ctx.socket(zmq.PUB)
            self._pub.linger = 0
            # A round publishes up to a whole batch at once: the default 1000 would drop
            # alerts for a subscriber that keeps up on average but not within one burst.
            self._pub.sndhwm = 100_000
            self._pub.bind(s.publish)
        if s.jetstream is not None:  # its own thread: reads storage, never blocks us
            self.jetstream = JetStreamPublisher(s.jetstream, s.db, s.dsn).start()
        if s.upstream is not None:  # its own thread, also reading storage
            ensure_routes(self.storage)  # what it reads, even before anything is relayed
            self.relay = Relay(s.upstream, pair, s.db, s.dsn).start()
        if s.jsonl:
            self._jsonl = SiemFile(s.jsonl, who="mamori collect")
        if s.siem is not None and (s.siem.eve or s.siem.syslog):
            self._siem = CollectorSiem(s.siem)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.counters.update({f"relay_{k}": v for k, v in self.relay.counters.items()})
            self.relay = None
        if self.jetstream is not None:
            self.jetstream.stop()
            self.jetstream = None
        if self._ctx is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.router.disable_monitor()
            for sock in (self._monitor, self.router, self._zap, self._pub):
                if sock is not None:
                    sock.close(0)
            self._ctx.term()
            self._ctx = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._siem is not None:
            self._siem.close()
            self._siem = None
        self.storage.close()

    def reload(self) -> None:
        """SIGHUP: re-read the allow-list now (a key file replaced in place does not
        change the directory's mtime) and reopen the SIEM file (logrotate). A key
        removed from the list is refused from its next message on."""
        self._reload_allow_list(force=True)
        if self._jsonl is not None:
            try:
                self._jsonl.reopen()
            except OSError as err:  # keep the old file rather than stop serving
                log.error("mamori collect: %s: cannot reopen: %s; writing on to the old "
                          "file", self._jsonl.path, err.strerror or err)
        if self._siem is not None:
            self._siem.reopen()
        log.warning("mamori collect: reloaded: %d sensor keys", len(self.allow))

    def _reload_allow_list(self, force: bool = False) -> None:
        """Re-read the key directory when it changed (checked at most every 2 s)."""
        now = time.monotonic()
        if not force and now < self._next_allow_check:
            return
        self._next_allow_check = now + 2.0
        try:
            stamp = self.settings.keys_dir.stat().st_mtime_ns
        except OSError:
            stamp = -2
        relays = self.inbound.relays
        if self.settings.relay_keys_dir is not None:
            relays = self.inbound.reload()
        if stamp != self._allow_stamp or force or relays is not self._relays_seen:
            try:
                self.allow = {**load_allow_list(self.settings.keys_dir), **relays}
            except KeyFileError as err:
                if self._allow_stamp == -1:
                    raise  # at start: ``mamori collect`` says why and exits
                log.error("mamori collect: allow-list not reloaded, keeping its %d keys: "
                          "%s", len(self.allow), err)
            self._allow_stamp = stamp
            self._relays_seen = relays

    # -- the loop -----------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            self.poll(0.2)

    def poll(self, timeout: float = 0.2) -> int:
        """Serve one round; returns how many sensor messages were read."""
        poller = zmq.Poller()
        for sock in (self.router, self._zap, self._monitor):
            poller.register(sock, zmq.POLLIN)
        ready = dict(poller.poll(int(timeout * 1000)))
        self._reload_allow_list()
        self._offer_new_rules()
        if self._zap in ready:
            self._serve_zap()
        if self._monitor in ready:
            self._read_monitor()
        read = self._drain() if self.router in ready or self._rejects else 0
        if time.monotonic() >= self._next_housekeeping:
            self._housekeeping()
        return read

    def _housekeeping(self) -> None:
        """Hourly, between rounds: the storage's upkeep (PostgreSQL makes the
        coming days' partitions) and retention. A failure is counted and retried."""
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
        self._addresses = {}
        now = time.time()
        try:
            self.storage.maintain(now)
            if self.settings.retention:
                self.counters["expired"] += self.storage.expire(now - self.settings.retention)
        except Exception as err:
            self.counters["housekeeping_error"] += 1
            self.last_storage_error = repr(err)
            with contextlib.suppress(Exception):
                self.storage.rollback()

    def _offer_new_rules(self) -> None:
        """A bundle just pushed goes at once to the sensors connected now; the others
        are offered it with their next heartbeat."""
        try:
            changed = self.rule_offers.refresh()
        except Exception as err:  # a storage hiccup: the offers are read again later
            self.counters["storage_error"] += 1
            self.last_storage_error = repr(err)
            with contextlib.suppress(Exception):
                self.storage.rollback()
            return
        for sensor in changed:
            frame = self.rule_offers.offer_for(sensor, None)
            if frame is not None and sensor in self._routes:
                self.counters["rules_offers"] += 1
                self._send(sensor, frame)

    def _serve_zap(self) -> None:
        """ZAP 1.0 (RFC 27): admit a CURVE key only if it is in the allow-list."""
        for _ in range(1000):
            try:
                request = self._zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, request_id = [*request, b"", b""][:2]
            mechanism = request[5] if len(request) > 5 else b""
            key = request[6] if len(request) > 6 else b""
            user = z85.encode(key) if mechanism == b"CURVE" and len(key) == 32 else b""
            if user and user in self.allow:
                reply = [version, request_id, b"200", b"OK", user, b""]
            else:
                self._count(UNAUTHENTICATED, "unknown_key")
                # 300, "temporary": libzmq clients retry (with their reconnect back-off)
                # on it, and give up for good on a 400, so a sensor whose key is added
                # later (then SIGHUP) gets in without restarting it.
                reply = [version, request_id, b"300", b"not in the allow-list", b"", b""]
            self._zap.send_multipart(reply)

    def _read_monitor(self) -> None:
        for _ in range(1000):
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] != zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # ZAP counted those
                self._count(UNAUTHENTICATED, "handshake_failed")

    def _unknown_version(self, sensor: str, err: WireError) -> None:
        """A sensor speaks a wire version this collector does not know: say so once
        per sensor and version (every frame is still counted as ``bad_version``)."""
        version = str(err).partition(": ")[2]
        if (sensor, version) in self._version_told or len(self._version_told) >= 1024:
            return
        self._version_told.add((sensor, version))
        log.error("mamori collect: sensor %s (%s) sends wire version %s; this collector "
                  "reads %s: its messages are refused (counted as bad_version) until the "
                  "collector is upgraded", self.allow.get(sensor.encode(), "?"), sensor[:10],
                  version, ", ".join(str(v) for v in sorted(KNOWN_VERSIONS)))

    def _count(self, sensor: str, reason: str) -> None:
        self.counters[reason] += 1
        self.rejected[reason] += 1
        self._rejects[(sensor, reason)] += 1

    def _drain(self, limit: int = 5000) -> int:
        """One round, with the cyclic garbage collector paused (``_round``).

        A round makes a few containers per message (the unpacked frame, the document,
        the rows), all alive until the round ends and nearly all freed with it, none in
        a reference cycle. Left running, the collector walks each of them two or three
        times on its way to the oldest generation, a fifth of the per-message cost at
        full load, to find nothing. Paused, what the round frees never counts towards a
        collection; what outlives it is collected as usual after it. A round is bounded
        (``limit`` messages, ``ROUND_SECONDS``), so is what waits for the collector."""
        if not gc.isenabled():  # someone else paused it: leave it as it is
            return self._round(limit)
        gc.disable()
        try:
            return self._round(limit)
        finally:
            gc.enable()

    def _round(self, limit: int) -> int:
        """Read what is there (at most ``limit`` messages or ``ROUND_SECONDS`` of
        reading), commit it in one transaction, then ack and publish. The time bound
        keeps latency flat when the collector falls behind: a backlog is taken in rounds
        of a few thousand, each acked and published as soon as it is stored."""
        now = time.time()
        deadline = time.monotonic() + ROUND_SECONDS
        accepted: list[tuple[str, Envelope]] = []
        touched: dict[tuple[str, int], float] = {}
        acks: set[tuple[str, int]] = set()
        replays: list[tuple[str, ReplayRequest]] = []
        heartbeats: dict[str, Envelope] = {}
        count = 0
        # One message: the ROUTER's identity of the link, the last part (whose
        # ``User-Id`` names the sensor) and whether it was the only part after the
        # identity. A ROUTER always puts the identity first, with the message behind it,
        # so that part is taken as bytes (a ``Frame`` object costs more than the copy of a
        # few bytes); the rest by each frame's ``more`` flag (``recv_multipart`` asks the
        # socket, RCVMORE, after every part, which shows in a profile at full load). Read
        # here, not in a method of its own: a call per message is a cost of its own.
        recv = self.router.recv
        one = self._one
        for count in range(1, limit + 1):
            try:
                identity = recv(_NOBLOCK)
                payload = recv(_NOBLOCK, copy=False)
                whole = True
                while payload.more:  # the parts of a message arrive together
                    payload = recv(_NOBLOCK, copy=False)
                    whole = False
            except zmq.Again:
                count -= 1
                break
            try:
                one(identity, payload, whole, now, accepted, touched, acks, replays,
                    heartbeats)
            except Exception as err:  # never let one message stop the collector
                self._count(UNAUTHENTICATED, "internal_error")
                self.last_internal_error = repr(err)
            if not count & 127 and time.monotonic() > deadline:
                break
        try:
            stored = self._store(now, accepted, touched, heartbeats)
        except Exception as err:
            self.counters["storage_error"] += 1
            self.last_storage_error = repr(err)
            with contextlib.suppress(Exception):
                self.storage.rollback()
            self._contig.clear()  # reload positions; sensors will resend after a timeout
            if is_disk_full(err):
                self.counters["unstored_disk_full"] += len(accepted)
                self._disk_full(len(accepted), now)
            self._publish([])  # the health record; and the SIEM file's held lines
            return count
        if self.storage_full and accepted:  # messages fit again, not just a heartbeat
            self.storage_full = False
            log.warning("mamori collect: storage writing again (disk space is back)")
            self._health.append({"event_type": "health", "event": "storage_ok", "ts": now,
                                 "unstored": self.counters["unstored_disk_full"]})
        targets, self._reply_to = self._reply_to, {}
        for sensor, epoch in acks:
            for via in targets.get(sensor, ("",)):
                self._send(via or sensor, encode_ack(
                    Ack(epoch, self._contig[(sensor, epoch)], sensor if via else "")))
        for sensor, req in replays:
            for via in targets.get(sensor, ("",)):
                self._send(via or sensor, encode_replay(replace(req, origin=sensor) if via
                                                        else req))
        if self.jetstream is not None:  # committed: the publisher may read them now
            self.jetstream.notify({k: self._contig.get(k, 0) for k in touched}, self._health)
        if self.relay is not None and (touched or heartbeats):
            self.relay.notify()
        self._publish(stored)
        return count

    def _disk_full(self, n: int, now: float) -> None:
        """Said once per episode; the messages stay with the sensors (not acked)."""
        if self.storage_full:
            return
        self.storage_full = True
        log.error("mamori collect: storage disk full: %d messages not stored and not "
                  "acknowledged (the sensors keep and resend them); retrying", n)
        self._health.append({"event_type": "health", "event": "storage_full", "ts": now,
                             "unstored": self.counters["unstored_disk_full"]})

    def _one(self, identity: bytes, payload: zmq.Frame, whole: bool, now: float,
             accepted: list[tuple[str, Envelope]], touched: dict[tuple[str, int], float],
             acks: set[tuple[str, int]], replays: list[tuple[str, ReplayRequest]],
             heartbeats: dict[str, Envelope]) -> None:
        """One message. The usual one (the next seq of a known stream) takes the
        shortest way through; everything else goes on to ``_other``."""
        sensor = str(payload.get("User-Id"))
        if sensor not in self._allowed:
            self._count(UNAUTHENTICATED, "revoked_key")
            return
        if not whole:
            self._count(sensor, "bad_frames")
            return
        self._routes[sensor] = identity
        try:
            env = decode_message(payload.bytes, self._max_bytes, True, self._addresses)
        except WireError as err:
            self._count(sensor, err.reason)
            if err.reason == "bad_version":
                self._unknown_version(sensor, err)
            return
        via = ""
        epoch, seq, ts, kind, _ = env  # one unpacking, not four field lookups
        if kind is _RELAY:  # federation: the original sensor's message
            unwrapped = self.inbound.unwrap(sensor, env, self._count)
            if unwrapped is None:
                return
            via, (sensor, env) = sensor, unwrapped
            epoch, seq, ts, kind, _ = env
        replies = self._reply_to.get(sensor)
        if replies is None:
            replies = self._reply_to[sensor] = set()
        replies.add(via)
        stream = (sensor, epoch)
        contig = self._contig.get(stream)
        if contig is None:
            contig = self._position(stream)
        if kind not in _CONTROL:  # a stream's message: in order or not at all
            if seq == contig + 1:
                self._contig[stream] = seq
                accepted.append((sensor, env))
                touched[stream] = ts
                acks.add(stream)
            elif seq <= contig:
                self.counters["duplicate"] += 1
                acks.add(stream)
            else:
                self.counters["out_of_order"] += 1
                self._want(stream, contig + 1, seq - 1, replays)
            return
        self._other(sensor, env, via, stream, contig, now, touched, acks, replays, heartbeats)

    def _other(self, sensor: str, env: Envelope, via: str, stream: tuple[str, int],
               contig: int, now: float, touched: dict[tuple[str, int], float],
               acks: set[tuple[str, int]], replays: list[tuple[str, ReplayRequest]],
               heartbeats: dict[str, Envelope]) -> None:
        """A message that is not a stream's: heartbeat, rules fetch, lost range."""
        if env.kind is Kind.HEARTBEAT:
            heartbeats[sensor] = env
            if env.seq > contig:
                self._want(stream, contig + 1, env.seq, replays)
            for epoch, last in _owed(env):  # older epochs' backlog, asked for at once
                position = self._position((sensor, epoch))
                if position < last:
                    self._want((sensor, epoch), position + 1, last, replays)
            if via:  # relayed: late by design (its relay checks clocks), and not ours to
                return  # offer rules to
            self._check_clock(sensor, env, now)
            offer = self.rule_offers.offer_for(sensor, env.body)
            if offer is not None:
                self.counters["rules_offers"] += 1
                self._send(sensor, offer)
            return
        if env.kind is Kind.RULES_FETCH:
            chunk, refused = self.rule_offers.chunk_for(sensor, env.body)
            if chunk is None:
                self._count(sensor, refused)
            else:
                self.counters["rules_chunks"] += 1
                self._send(sensor, chunk)
            return
        if env.kind is Kind.LOST:
            first = int(env.body)
            if first <= contig + 1 <= env.seq:
                self.storage.mark_lost(sensor, env.epoch, contig + 1, env.seq, now)
                self.counters["lost"] += env.seq - contig
                self._contig[stream] = env.seq
                touched[stream] = env.ts
                acks.add(stream)

    def _check_clock(self, sensor: str, env: Envelope, now: float) -> None:
        """S5: the sensor's wall clock (its heartbeat's ``clock``) against ours.

        Reported once when the skew passes ``max_clock_skew`` and once when it is back,
        on the PUB socket and in the SIEM file; ``collect status`` shows it always.
        """
        clock = env.body.get("clock") if isinstance(env.body, dict) else None
        if not isinstance(clock, float | int) or isinstance(clock, bool):
            return
        skew = now - float(clock)
        over = abs(skew) > self.settings.max_clock_skew
        if over == (sensor in self._skewed):
            return
        if over:
            self._skewed.add(sensor)
            self.counters["clock_skew"] += 1
        else:
            self._skewed.discard(sensor)
        self._health.append({
            "event_type": "health", "precursor": "S5", "event": "clock_skew" if over
            else "clock_ok", "sensor": self._name(sensor),
            "sensor_key": sensor, "skew": round(skew, 3),
            "max_skew": self.settings.max_clock_skew, "ts": now})

    def _name(self, sensor: str) -> str:
        """The allow-list name; for a relayed sensor the name its first collector gave."""
        return self.allow.get(sensor.encode()) or self.inbound.names.get(sensor, "?")

    def _position(self, stream: tuple[str, int]) -> int:
        if stream not in self._contig:
            if len(self._contig) > 100_000:
                self._contig.clear()
            self._contig[stream] = self.storage.position(*stream)
        return self._contig[stream]

    def _want(self, stream: tuple[str, int], first: int, last: int,
              replays: list[tuple[str, ReplayRequest]]) -> None:
        now = time.monotonic()
        if now - self._last_replay.get(stream, 0.0) < self.settings.replay_interval:
            return
        self._last_replay[stream] = now
        self.counters["replay_requests"] += 1
        replays.append((stream[0], ReplayRequest(stream[1], first, last)))

    def _store(self, now: float, accepted: list[tuple[str, Envelope]],
               touched: dict[tuple[str, int], float],
               heartbeats: dict[str, Envelope]) -> list[StoredMessage]:
        """One transaction for the round (the group commit); what it stored, as rows."""
        st = self.storage
        rejecting = {s for s, _ in self._rejects if s != UNAUTHENTICATED}
        st.touch_sensors([(sensor, self._name(sensor), now) for sensor
                          in {s for s, _ in accepted} | set(heartbeats) | rejecting])
        self.inbound.store(st, now)
        stored = [_stored(sensor, env, now) for sensor, env in accepted]
        st.store_batch(stored)
        st.advance_many([(sensor, epoch, self._contig[(sensor, epoch)], ts, now)
                         for (sensor, epoch), ts in touched.items()])
        st.heartbeats([(sensor, env.epoch, env.seq, env.ts, now, env.body)
                       for sensor, env in heartbeats.items()])
        for sensor, env in heartbeats.items():
            if self._siem is not None:
                self._siem.heartbeat(sensor, env.body)
            if env.seq <= self._contig.get((sensor, env.epoch), 0) and all(
                    self._contig.get((sensor, e), 0) >= last for e, last in _owed(env)):
                st.mark_complete(sensor, now)
        for (sensor, reason), n in self._rejects.items():
            st.reject(sensor, reason, n, now)
        st.commit()
        self.counters["accepted"] += len(accepted)
        self.kinds.update(map(_KIND_OF, stored))  # one C call: no per-message Python code
        self._rejects = Counter()
        return stored

    def _send(self, sensor: str, frame: bytes) -> None:
        identity = self._routes.get(sensor)
        if identity is None:
            return
        try:
            self.router.send_multipart([identity, frame], zmq.NOBLOCK)
        except zmq.ZMQError:  # the link went away (ROUTER_MANDATORY) or is full
            self.counters["unroutable"] += 1

    def _origin_json(self, sensor: str) -> str:
        """``"sensor":NAME,"sensor_key":KEY`` of a published alert, made once per name."""
        name = self._name(sensor)
        cached = self._origins.get(sensor)
        if cached is None or cached[0] != name:
            cached = self._origins[sensor] = (
                name, f'"sensor":{json.dumps(name)},"sensor_key":{json.dumps(sensor)}')
        return cached[1]

    def _publish(self, stored: list[StoredMessage]) -> None:
        health, self._health = self._health, []
        if self._pub is None and self._jsonl is None and self._siem is None:
            return
        lines: list[str] = []
        pub = self._pub
        for doc in health:
            line = json.dumps(doc, separators=(",", ":"))
            if pub is not None:
                with contextlib.suppress(zmq.Again):
                    pub.send_multipart([b"health", line.encode()], _NOBLOCK)
            lines.append(line)
        keep = self._jsonl is not None  # the lines are for the SIEM file only
        origins: dict[str, str] = {}  # this round's, one lookup per sensor
        send = _send_frame
        for msg in stored:
            if msg.kind != _ALERT_INT:
                continue
            origin = origins.get(msg.sensor)
            if origin is None:
                origin = origins[msg.sensor] = self._origin_json(msg.sensor)
            line = published_line(msg, origin)
            if pub is not None:
                try:  # a PUB drops at its high-water mark rather than block; never Again
                    send(pub, b"alert", _MORE_NOBLOCK)
                    send(pub, line.encode(), _NOBLOCK)
                except zmq.Again:
                    pass
            if keep:
                lines.append(line)
        if self._siem is not None:  # EVE records in the SIEM file; syslog
            eve = self._siem.lines([(m, self.allow.get(m.sensor.encode(), "?"))
                                    for m in stored], health)
            lines = eve if self._siem.settings.eve else lines
        if self._jsonl is not None:
            self._jsonl.write(lines)
            if self._jsonl.dropped:
                self.counters["siem_dropped"] = self._jsonl.dropped


def _owed(env: Envelope) -> list[tuple[int, int]]:
    """(epoch, last seq) of each older epoch a heartbeat says is still unacknowledged.

    The field is the sensor's word, so it is checked like any other: a list of at most
    32 [epoch, first, last] triples of integers, older than the heartbeat's own epoch;
    anything else is ignored.
    """
    owed = env.body.get("owed") if isinstance(env.body, dict) else None
    if not isinstance(owed, list):
        return []
    out = []
    for item in owed[:32]:
        if (isinstance(item, list) and len(item) == 3
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                        for x in item) and 0 < item[0] < env.epoch):
            out.append((item[0], item[2]))
    return out


def published_line(msg: StoredMessage, origin: str) -> str:
    """The alert's published JSON: its stored document with where it came from added.

    The stored text is reused, not dumped again: the document is a JSON object, so
    the fields go in before its closing brace (the alert's own fields never use these
    names), the same document ``json.dumps`` of the merged dict would give. ``origin``
    is ``_origin_json``'s sensor name and key."""
    return (f'{msg.text[:-1]},{origin},"epoch":{msg.epoch},"seq":{msg.seq},'
            f'"sent_ts":{msg.ts!r}}}')


_new_stored = tuple.__new__  # a StoredMessage without its Python-level __new__ (half the cost)


def _stored(sensor: str, env: Envelope, now: float) -> StoredMessage:
    epoch, seq, ts, kind, body = env
    if kind is _ALERT:
        doc = body if isinstance(body, dict) else alert_json(body)
        id_ = doc["id"]
        msg: StoredMessage = _new_stored(StoredMessage, (
            sensor, epoch, seq, _ALERT_INT, ts, now, doc, str(id_) if id_ else f"{epoch}:{seq}",
            doc["count"], doc["last_ts"], dumps(doc)))
        return msg
    return StoredMessage(sensor, epoch, seq, int(kind), ts, now, body)
