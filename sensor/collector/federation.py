"""Federation: a collector forwards what it accepted to an upper-tier collector.

A site or sector collector (the *relay*) connects out to a national one over the same
CURVE DEALER/ROUTER link sensors use, authenticating with its own collector key pair,
and sends every stored message of every sensor stream as a kind 7 *relayed* message:
the original sensor key, its name here, the relay path, and the original epoch, seq,
timestamp, kind and body (``docs/wire.md``). The upper tier accepts each (original
sensor, epoch) stream exactly as it accepts a sensor's, only ``contig + 1``, and acks
and asks for replays naming the original sensor (kinds 20 and 21), so it proves
completeness per original sensor and stores each message once however many paths
bring it (the dedup key is the original (sensor, epoch, seq)).

Why read from storage, like the JetStream publisher: the relay then never holds
anything the collector has not committed, never slows ingest, and after any outage
simply resumes behind its persisted cursor (per stream, the highest seq the upper tier
acknowledged; a lost cursor update only means a resend the upper tier drops). The
sender is go-back-N over the stored streams with one window for the link: on a
(re)connection, after ``ack_timeout`` without acks and on a replay request for
something already sent it goes back to the upper tier's last ack.

Trust and loops. The upper tier takes relayed messages only from keys in its
``relay_keys_dir`` (everything else is refused and counted ``untrusted_relay``); the
last entry of the path must be that key. A message whose path already holds the
receiving collector's key, or whose origin is the receiver or the relay itself, went
round a loop: dropped and counted ``relay_loop``. A relay never sends a stream whose
path contains the upper tier's key (counted once per stream, ``loop_skipped``).

The original sensor's latest heartbeat is relayed too (its seq is the sensor's last
assigned seq), so the top tier sees how far behind each original sensor is and marks
it complete only once everything the sensor sent is stored there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from mamori.parsers.alerts import Alert
from mamori.parsers.wire import (
    MAX_RELAY_PATH,
    Ack,
    Envelope,
    Kind,
    Relayed,
    ReplayRequest,
    WireError,
    alert_body,
    decode_control,
    encode_relayed,
    restore_pseudonyms,
)
from mamori.sensor.collector.cursordb import open_cursor_db
from mamori.sensor.collector.storage import SqlStorage, open_storage
from mamori.sensor.forwarding.keys import KeyPair, load_allow_list, resolve_key

log = logging.getLogger("mamori.federation")

BATCH = 500  # messages read from storage per stream per round
STATE_EVERY = 0.5  # seconds between cursor writes

_ROUTES = """CREATE TABLE IF NOT EXISTS relayed (
    sensor TEXT PRIMARY KEY, name TEXT NOT NULL, via TEXT NOT NULL, via_name TEXT NOT NULL,
    path TEXT NOT NULL, last_seen {real} NOT NULL)"""


@dataclass(frozen=True, slots=True)
class RelayRoute:
    """How an original sensor's messages reach this collector: the relay that sent
    the latest one (its key and allow-list name) and the whole path."""

    sensor: str
    name: str
    via: str
    via_name: str
    path: tuple[str, ...]


def ensure_routes(storage: SqlStorage) -> None:
    storage._exec(_ROUTES.format(**storage.types))
    storage.commit()


def relay_routes(storage: SqlStorage) -> dict[str, RelayRoute]:
    """Original sensor -> its route here; empty on a store that never took relayed
    messages (``collect status`` reads older stores too)."""
    try:
        rows = storage._all("SELECT sensor, name, via, via_name, path FROM relayed")
    except Exception:  # no such table: never relayed to
        with contextlib.suppress(Exception):
            storage.rollback()
        return {}
    out = {}
    for sensor, name, via, via_name, path in rows:
        try:
            hops = tuple(str(p) for p in json.loads(path))
        except ValueError:
            hops = ()
        out[str(sensor)] = RelayRoute(str(sensor), str(name), str(via), str(via_name), hops)
    return out


# -- the upper tier: taking relayed messages --------------------------------------------


class RelayInbound:
    """The receiving side: which keys may relay, and what each relayed message says."""

    def __init__(self, own_key: str, relay_keys_dir: Path | None) -> None:
        self.own_key = own_key
        self.relay_keys_dir = relay_keys_dir
        self.relays: dict[bytes, str] = {}
        self._stamp = -1
        self._seen: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # this batch
        self.names: dict[str, str] = {}  # original sensor -> name given by its relay

    def reload(self) -> dict[bytes, str]:
        """Re-read the trusted relay keys when the directory changed."""
        if self.relay_keys_dir is None:
            return self.relays
        try:
            stamp = self.relay_keys_dir.stat().st_mtime_ns
        except OSError:
            stamp = -2
        if stamp != self._stamp:
            self.relays = load_allow_list(self.relay_keys_dir)
            self._stamp = stamp
        return self.relays

    def unwrap(self, relay: str, env: Envelope,
               count: Callable[[str, str], None]) -> tuple[str, Envelope] | None:
        """(original sensor, original message), or None when refused (counted)."""
        msg: Relayed = env.body
        if relay.encode() not in self.relays:
            count(relay, "untrusted_relay")
            return None
        if msg.path[-1] != relay:
            count(relay, "bad_relay_path")
            return None
        if self.own_key in msg.path or msg.origin in (self.own_key, relay):
            count(relay, "relay_loop")
            return None
        self._seen[msg.origin] = (msg.name, relay, msg.path)
        self.names[msg.origin] = msg.name
        return msg.origin, msg.inner

    def store(self, storage: SqlStorage, now: float) -> None:
        """Record the routes of this batch (inside the collector's transaction)."""
        for sensor, (name, via, path) in self._seen.items():
            storage._exec(
                "INSERT INTO relayed VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sensor) DO UPDATE "
                "SET name = excluded.name, via = excluded.via, via_name = excluded.via_name, "
                "path = excluded.path, last_seen = excluded.last_seen",
                (sensor, name, via, self.relays.get(via.encode(), "?"),
                 json.dumps(list(path)), now))
        self._seen.clear()


# -- the lower tier: the relay ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """``[collect] upstream*``: where to relay to, and how."""

    endpoint: str
    server_key: str  # Z85, or a .pub path (resolved against base when the relay starts)
    base: Path
    cursor: Path
    window: int
    heartbeat_interval: float
    ack_timeout: float

    @classmethod
    def from_section(cls, s: dict[str, Any], base: Path) -> RelaySettings | None:
        if not s["upstream"]:
            return None
        return cls(s["upstream"], s["upstream_key"], base, base / s["upstream_cursor"],
                   s["upstream_window"],
                   s["upstream_heartbeat"], s["upstream_ack_timeout"])


class RelayCursor:
    """Per (sensor, epoch), the highest seq the upper tier acknowledged."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self._conn = open_cursor_db(path, ["acked (sensor TEXT NOT NULL, epoch INTEGER NOT "
                                           "NULL, seq INTEGER NOT NULL, PRIMARY KEY (sensor, "
                                           "epoch))"], readonly)

    def load(self) -> dict[tuple[str, int], int]:
        return {(r[0], int(r[1])): int(r[2]) for r in self._conn.execute(
            "SELECT sensor, epoch, seq FROM acked")}

    def save(self, moved: dict[tuple[str, int], int]) -> None:
        self._conn.executemany(
            "INSERT INTO acked VALUES (?, ?, ?) ON CONFLICT (sensor, epoch) DO UPDATE "
            "SET seq = excluded.seq WHERE excluded.seq > acked.seq",
            [(s, e, q) for (s, e), q in moved.items()])
        self._conn.commit()

    def close(self) -> None:
        self._conn.close()


def _wire_body(kind: int, text: str) -> Any:
    """A stored JSON body back into its wire form (alerts are positional arrays, and
    pseudonyms their typed ext again: ``restore_pseudonyms``)."""
    doc = json.loads(text)
    if kind == Kind.ALERT:
        return restore_pseudonyms(alert_body(Alert.from_dict(doc)))
    return restore_pseudonyms(doc)


class Relay:
    """A thread: reads the collector's storage, sends upward, follows the acks."""

    def __init__(self, settings: RelaySettings, pair: KeyPair, db: Path, dsn: str = "",
                 open_store: Callable[[Path, str], SqlStorage] = open_storage) -> None:
        self.settings = settings
        self.own_key = pair.public.decode()
        self.server_key = resolve_key(settings.server_key, settings.base)  # KeyFileError
        self.upstream_key = self.server_key.decode()
        self._pair = pair
        self._db, self._dsn, self._open_store = db, dsn, open_store
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters: Counter[str] = Counter()  # read by other threads, written here
        self.connected = False
        self.last_error = ""

    def start(self) -> Relay:
        self._thread = threading.Thread(target=self._main, name="mamori-relay", daemon=True)
        self._thread.start()
        return self

    def notify(self) -> None:
        """The collector committed a batch: look for new messages now."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                _RelayLoop(self).run()
            except Exception as err:  # storage gone, cursor unwritable: retry, say so
                self.counters["relay_errors"] += 1
                self.last_error = repr(err)
                log.error("mamori collect: relay to %s: %r; retrying in 2 s",
                          self.settings.endpoint, err)
                self._stop.wait(2.0)


class _RelayLoop:
    """One life of the relay: its sockets, storage connection and go-back-N state."""

    def __init__(self, relay: Relay) -> None:
        self.r = relay
        s = relay.settings
        self.storage = relay._open_store(relay._db, relay._dsn)
        self.cursor = RelayCursor(s.cursor)
        self.acked = self.cursor.load()
        self.sent = dict(self.acked)  # highest seq sent per stream (go-back-N)
        self.moved: dict[tuple[str, int], int] = {}
        self.contig: dict[tuple[str, int], int] = {}
        self.routes: dict[str, RelayRoute] = {}
        self.names: dict[str, str] = {}
        self.skipped: set[str] = set()
        # sensor -> (received time of the heartbeat sent, the upper tier's acks then)
        self.beats: dict[str, tuple[float, int]] = {}
        self.next_beat = 0.0
        self.next_save = 0.0
        self.next_refresh = 0.0
        self.last_progress = time.monotonic()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.curve_secretkey = relay._pair.secret
        self.sock.curve_publickey = relay._pair.public
        self.sock.curve_serverkey = relay.server_key
        for option, value in ((zmq.LINGER, 0), (zmq.IMMEDIATE, 1),
                              (zmq.SNDHWM, s.window + 1024), (zmq.RCVHWM, 100_000),
                              (zmq.RECONNECT_IVL, 100), (zmq.RECONNECT_IVL_MAX, 2000),
                              (zmq.HEARTBEAT_IVL, 2000), (zmq.HEARTBEAT_TIMEOUT, 6000)):
            self.sock.setsockopt(option, value)
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.sock.connect(s.endpoint)

    def run(self) -> None:
        try:
            while not self.r._stop.is_set():
                self.round()
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._save()
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
        self.ctx.term()
        self.cursor.close()
        self.storage.close()

    def round(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        ready = dict(poller.poll(50))
        if self.monitor in ready:
            self._events()
        if self.sock in ready:
            self._control()
        now = time.monotonic()
        if self.r._wake.is_set() or now >= self.next_refresh:
            self.r._wake.clear()
            self.next_refresh = now + STATE_EVERY
            self._refresh()
        if self.connected_inflight() and now - self.last_progress > self.r.settings.ack_timeout:
            self._go_back()
        if self.r.connected:
            self._send()
            if now >= self.next_beat:
                self._heartbeats()
        if now >= self.next_save:
            self._save()

    def connected_inflight(self) -> bool:
        return any(self.sent.get(k, 0) > self.acked.get(k, 0) for k in self.sent)

    def _events(self) -> None:
        while True:
            try:
                event = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.r.connected = True
                self._go_back()
                self.beats.clear()  # tell the upper tier every sensor's position again
                self.next_beat = 0.0
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.r.connected = False

    def _go_back(self) -> None:
        """Resend from the upper tier's last ack, every stream."""
        if any(self.sent.get(k, 0) > v for k, v in self.acked.items()) or \
                len(self.sent) != len(self.acked):
            self.r.counters["rewinds"] += 1
        self.sent = dict(self.acked)
        self.last_progress = time.monotonic()

    def _control(self) -> None:
        for _ in range(100_000):
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = decode_control(frame, relayed=True)
            except WireError:
                self.r.counters["control_errors"] += 1
                continue
            if isinstance(message, Ack):
                self._ack((message.origin, message.epoch), message.seq)
            elif isinstance(message, ReplayRequest):
                self._replay((message.origin, message.epoch), message)
            else:  # decode_control(relayed=True) gives a relay acks and replays only
                self.r.counters["control_errors"] += 1

    def _ack(self, stream: tuple[str, int], seq: int) -> None:
        if seq > self.acked.get(stream, 0):
            self.acked[stream] = seq
            self.moved[stream] = seq
            self.last_progress = time.monotonic()
        if self.sent.get(stream, 0) < seq:  # acked past what we sent: stored via a
            self.sent[stream] = seq  # another path (the sensor forwards there too)

    def _replay(self, stream: tuple[str, int], req: ReplayRequest) -> None:
        """Only for what was sent already; the rest goes out in order anyway."""
        if req.first <= self.sent.get(stream, 0):
            self.sent[stream] = max(self.acked.get(stream, 0), req.first - 1)
            self.r.counters["replays"] += 1

    def _refresh(self) -> None:
        """Stream positions and routes from storage (a read, then the snapshot ends)."""
        self.contig = self.storage.contigs()
        self.routes = relay_routes(self.storage)
        self.names = {str(r[0]): str(r[1])
                      for r in self.storage._all("SELECT sensor, name FROM sensors")}
        self.storage.rollback()

    def _relayable(self, sensor: str) -> bool:
        route = self.routes.get(sensor)
        path = route.path if route is not None else ()
        if sensor in (self.r.upstream_key, self.r.own_key) or self.r.upstream_key in path \
                or self.r.own_key in path or len(path) >= MAX_RELAY_PATH:
            if sensor not in self.skipped:
                self.skipped.add(sensor)
                self.r.counters["loop_skipped"] += 1
            return False
        return True

    def _identity(self, sensor: str) -> tuple[str, list[str]]:
        route = self.routes.get(sensor)
        if route is None:
            return self.names.get(sensor, "?")[:64], [self.r.own_key]
        return route.name[:64], [*route.path, self.r.own_key]

    def _send(self) -> None:
        room = self.r.settings.window - sum(
            max(0, self.sent.get(k, 0) - self.acked.get(k, 0)) for k in self.sent)
        for stream in sorted(self.contig, key=lambda k: self.sent.get(k, 0) - self.contig[k]):
            if room <= 0:
                return
            top = self.contig[stream]
            after = self.sent.get(stream, 0)
            if top <= after or not self._relayable(stream[0]):
                continue
            sensor, epoch = stream
            name, path = self._identity(sensor)
            upto = min(top, after + room)
            rows = self.storage.messages_after(sensor, epoch, after, upto, min(BATCH, room))
            self.storage.rollback()
            frames: list[tuple[int, bytes]] = []
            expected = after + 1
            for seq, kind, ts, _received, body in rows:
                if seq > expected:  # the sensor lost expected..seq-1 (recorded here)
                    frames.append((seq - 1, encode_relayed(
                        sensor, name, path, epoch, seq - 1, ts, Kind.LOST, [expected])))
                frames.append((seq, encode_relayed(sensor, name, path, epoch, seq, ts,
                                                   Kind(kind), _wire_body(kind, body))))
                expected = seq + 1
            if len(rows) < min(BATCH, room) and expected <= upto:  # a lost range at the end
                frames.append((upto, encode_relayed(sensor, name, path, epoch, upto,
                                                    time.time(), Kind.LOST, [expected])))
            for seq, frame in frames:
                try:
                    self.sock.send(frame, zmq.NOBLOCK)
                except zmq.Again:
                    return
                room -= seq - self.sent.get(stream, after)
                self.sent[stream] = seq
                self.r.counters["sent"] += 1

    def _heartbeats(self) -> None:
        """Each original sensor's latest heartbeat, when it is newer than the one sent
        or the upper tier acknowledged more of the sensor since: it marks a sensor
        complete only on a heartbeat that follows the last ack, and a sensor that has
        gone quiet sends no new one."""
        self.next_beat = time.monotonic() + self.r.settings.heartbeat_interval
        rows = self.storage._all("SELECT sensor, epoch, seq, ts, received, body "
                                 "FROM heartbeats")
        self.storage.rollback()
        acked: Counter[str] = Counter()
        for (sensor, _), seq in self.acked.items():
            acked[sensor] += seq
        for sensor, epoch, seq, ts, received, body in rows:
            mark = (float(received), acked[sensor])
            if self.beats.get(sensor) == mark or not self._relayable(sensor):
                continue
            name, path = self._identity(sensor)
            try:
                doc = json.loads(body)
            except ValueError:
                continue
            frame = encode_relayed(sensor, name, path, int(epoch), int(seq), float(ts),
                                   Kind.HEARTBEAT,
                                   restore_pseudonyms(doc) if isinstance(doc, dict) else {})
            try:
                self.sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.beats[sensor] = mark

    def _save(self) -> None:
        self.next_save = time.monotonic() + STATE_EVERY
        if self.moved:
            self.cursor.save(self.moved)
            self.moved = {}
