"""The sensor side of forwarding: journal first, then send, until acknowledged.

One ZeroMQ DEALER per configured collector *connects out* (CURVE client) to the
collector's ROUTER, so the box needs no inbound firewall opening. Over that one
channel go data and heartbeats one way, acks and replay requests the other (and
rule bundle offers and chunks, handed to mamori.sensor.detection.rulepush). PUB/SUB could not carry
the requests back and drops silently; see ``docs/wire.md``.

Delivery is go-back-N over the journal. Per collector the forwarder keeps a send
cursor (a journal row id) and a window of unacknowledged messages in flight. The
cursor only moves back: to the first unacknowledged message when a connection is
(re)established or acks stop coming for ``ack_timeout``, and to a message the
collector asks for again. The collector accepts only the next seq of each epoch, so
the stream arrives exactly once and in order however the link behaves, and every
epoch's backlog drains, oldest first (``tests/sensor/test_forwarding_faults.py``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.wire import (
    MAX_CONTROL_BYTES,
    Ack,
    FieldPolicy,
    Kind,
    ReplayRequest,
    RulesChunk,
    RulesFetch,
    RulesOffer,
    WireError,
    decode_control,
    encode,
)
from mamori.sensor import config as cfg
from mamori.sensor.forwarding.audit import Sent, shape_json
from mamori.sensor.forwarding.journal import (
    SHARED,
    AlertJournal,
    AuditEntry,
    Eviction,
    JournalFull,
    Outgoing,
)
from mamori.sensor.forwarding.keys import load_pair, resolve_key
from mamori.sensor.forwarding.options import CollectorSpec, journal_path, pseudonym_key_path
from mamori.sensor.forwarding.policy import DEFAULT_POLICY, DestinationPolicy, PolicySpec, Shaped
from mamori.sensor.forwarding.pseudonym import Pseudonymiser, load_key

if TYPE_CHECKING:
    from mamori.sensor.detection.rulepush import RuleReceiver

log = logging.getLogger("mamori.forwarder")

EVICTION_RULE = "mamori.sensor.journal_eviction"
CLOCK_RULE = "mamori.sensor.clock"
UNREACHABLE_RULE = "mamori.sensor.collector_unreachable"
CLOCK_STEP = 2.0  # a wall clock that moves this much against the monotonic one was stepped
TIMESYNC_DIR = Path("/run/systemd/timesync")  # systemd-timesyncd's state, where it runs
FINAL_LINGER_MS = 500  # how long close() lets the last heartbeat reach a connected collector


HealthSource = Callable[[], Mapping[str, float]]
_HEALTH_KEYS = ("pps", "drops", "flows", "unstored", "never_stored")


@dataclass(frozen=True, slots=True)
class ForwarderSettings:
    """The ``[forward]`` section resolved against the state dir."""

    collectors: tuple[CollectorSpec, ...]
    secret_key: Path
    journal: Path
    journal_max_bytes: int
    heartbeat_interval: float
    ack_timeout: float
    window: int
    policy: FieldPolicy
    state_dir: Path
    identity: tuple[tuple[str, str], ...] = ()  # name, site, sector as configured
    unreachable_after: float = 300.0
    policies: tuple[tuple[str, PolicySpec, Path], ...] = ()  # name, spec, key file
    audit_max_rows: int = 1_000_000
    pseudonyms_max: int = 100_000

    @classmethod
    def from_config(cls, config: cfg.Config, state_dir: Path | None = None) -> ForwarderSettings:
        base = state_dir or Path(config.get("sensor", "state_dir"))
        s = config.section("forward")
        try:
            policy = FieldPolicy(tuple(s["allow_fields"]), tuple(s["deny_fields"]))
        except ValueError as err:
            raise cfg.ConfigError("config", None, "[forward] deny_fields", str(err)) from None
        specs: dict[str, PolicySpec] = s["policies"]
        for spec in s["collectors"]:
            if spec.policy != DEFAULT_POLICY and spec.policy not in specs:
                where = config.sources.get(("forward", "collectors"), "config")
                raise cfg.ConfigError(where, None, "[forward] collectors",
                                      f"{spec.endpoint}: no policy {spec.policy!r}")
        keyed = config if state_dir is None else _rebased(config, base)
        policies = tuple((name, spec, pseudonym_key_path(keyed, spec))
                         for name, spec in sorted(specs.items()))
        said = {k: str(config.get("sensor", k)) for k in ("name", "site", "sector")
                if config.get("sensor", k)}
        if config.get("sensor", "instance"):
            said["instance"] = config.get("sensor", "instance")
        interfaces = config.values.get(("capture", "interfaces"))  # set by mamori run
        if interfaces:
            said["interface"] = ",".join(interfaces)
        journal, configured = journal_path(config), Path(config.get("sensor", "state_dir"))
        if journal.is_relative_to(configured):  # under a state_dir given here instead
            journal = base / journal.relative_to(configured)
        return cls(s["collectors"], base / s["secret_key"], journal,
                   s["journal_max_bytes"], s["heartbeat_interval"], s["ack_timeout"],
                   s["window"], policy, base, tuple(said.items()), s["unreachable_after"],
                   policies, s["audit_max_rows"], s["pseudonyms_max"])

    def destination_policies(self) -> dict[str, DestinationPolicy]:
        """Each collector's policy with its key loaded (created 0600 if missing).

        Policies that share a key file share one pseudonymiser: the same host gets
        the same pseudonym under one key, whichever policy uses it.
        """
        default = DestinationPolicy(PolicySpec(DEFAULT_POLICY, self.policy), None)
        named = {name: (spec, key) for name, spec, key in self.policies}
        keyed: dict[Path, Pseudonymiser] = {}
        out: dict[str, DestinationPolicy] = {}
        for collector in self.collectors:
            if collector.policy == DEFAULT_POLICY:
                out[collector.endpoint] = default
                continue
            spec, key = named[collector.policy]
            pseudonymiser = None
            if spec.pseudonymise:
                if key not in keyed:
                    keyed[key] = Pseudonymiser(load_key(key, create=True),
                                               refresh_after=max(1, self.pseudonyms_max // 2))
                pseudonymiser = keyed[key]
            out[collector.endpoint] = DestinationPolicy(spec, pseudonymiser)
        return out or {SHARED: default}


def _rebased(config: cfg.Config, base: Path) -> cfg.Config:
    """``config`` with its state dir replaced (the daemon may run with another one)."""
    values = dict(config.values)
    values[("sensor", "state_dir")] = base
    return cfg.Config(values, config.sources)


class _Link:
    """One collector connection and its go-back-N state."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], spec: CollectorSpec,
                 public: bytes, secret: bytes, server_key: bytes, window: int) -> None:
        self.name = spec.endpoint
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self.sock.curve_secretkey = secret
        self.sock.curve_publickey = public
        self.sock.curve_serverkey = server_key
        for option, value in ((zmq.LINGER, 0), (zmq.IMMEDIATE, 1), (zmq.SNDHWM, window + 64),
                              (zmq.RCVHWM, 10_000), (zmq.MAXMSGSIZE, 4 * MAX_CONTROL_BYTES),
                              (zmq.RECONNECT_IVL, 100),
                              (zmq.RECONNECT_IVL_MAX, 2000), (zmq.HEARTBEAT_IVL, 2000),
                              (zmq.HEARTBEAT_TIMEOUT, 6000)):
            self.sock.setsockopt(option, value)
        self.monitor: zmq.Socket[bytes] = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.sock.connect(spec.endpoint)
        self.cursor = 0  # journal id of the last message sent
        self.max_sent = 0  # highest id ever sent by this process (audit: retransmit)
        self.inflight: deque[tuple[int, int, int]] = deque()  # (id, epoch, seq)
        self.last_progress = time.monotonic()
        self.connected = False
        self.rewinds = 0
        self.down_since: float | None = time.monotonic()  # never connected yet
        self.unreachable_reported = False

    def rewind(self, to_id: int) -> None:
        """Go back so that the next message sent is the one after journal id ``to_id``.

        Only ever backwards: what was sent after ``to_id`` leaves the window (it is sent
        again), what was sent before stays in flight. Jumping the cursor forward could
        skip messages no collector has acknowledged, which is how an earlier epoch's
        backlog once stalled after one window.
        """
        to_id = max(0, to_id)
        if to_id < self.cursor:
            self.cursor = to_id
            while self.inflight and self.inflight[-1][0] > to_id:
                self.inflight.pop()
            self.rewinds += 1
        self.last_progress = time.monotonic()

    def acknowledge(self, epoch: int, seq: int) -> None:
        """Drop from the window what the cumulative ack (epoch, seq) covers.

        Acks are per epoch: an ack of a newer epoch says nothing about an older one,
        and the entries it covers need not be at the head of the window.
        """
        if any(e == epoch and s <= seq for _, e, s in self.inflight):
            self.inflight = deque(x for x in self.inflight if x[1] != epoch or x[2] > seq)

    def close(self, linger_ms: int = 0) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(linger_ms)


def allocate_epoch(journal: AlertJournal, counter: Path) -> int:
    """The journal's new epoch, unique among every journal of this state directory.

    Several daemons of one box (mamori-sensor@eth1, @eth2) share its key, so the
    collector tells their streams apart only by epoch: each takes the next number of
    one box-wide counter (``forward/epoch``, under an exclusive lock) that is also past
    its own journal's last. The counter is written before the journal, so a crash
    between the two wastes a number and never hands it out twice.
    """
    counter.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(counter, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        handed = int(text) if text.isdigit() else 0
        epoch = max(handed, journal.last_epoch()) + 1
        data = f"{epoch}\n".encode()
        os.ftruncate(fd, 0)
        if os.pwrite(fd, data, 0) != len(data):
            raise OSError(errno.ENOSPC, "short write", str(counter))
        os.fsync(fd)
        return journal.start_epoch(at_least=epoch)
    finally:
        os.close(fd)  # and the lock with it


class Forwarder:
    """Journal, send, heartbeat, resend. Call ``start()`` for a thread, or ``poll()``."""

    def __init__(self, config: cfg.Config | ForwarderSettings, state_dir: Path | None = None,
                 *, health: HealthSource | None = None,
                 on_meta_alert: Callable[[Alert], object] | None = None,
                 rules: RuleReceiver | None = None) -> None:
        self.settings = (config if isinstance(config, ForwarderSettings)
                         else ForwarderSettings.from_config(config, state_dir))
        s = self.settings
        self.health = health
        self.on_meta_alert = on_meta_alert
        self.rules = rules  # pushed rule bundles; None: offers are counted and ignored
        if rules is not None:
            rules.raise_alert = self._raise
        self.ignored_offers = 0
        self.started = time.time()
        self.policies = s.destination_policies()
        self.journal = AlertJournal(
            s.journal, [c.endpoint for c in s.collectors], s.journal_max_bytes,
            shared=[c.endpoint for c in s.collectors if c.policy == DEFAULT_POLICY],
            audit_max_rows=s.audit_max_rows, pseudonyms_max=s.pseudonyms_max)
        self.epoch = allocate_epoch(self.journal, s.state_dir / "forward" / "epoch")
        self.control_errors = 0
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._links: list[_Link] = []
        if s.collectors:
            pair = load_pair(s.secret_key)
            for spec in s.collectors:
                self._links.append(_Link(self._ctx, spec, pair.public, pair.secret,
                                         resolve_key(spec.server_key, s.state_dir), s.window))
        for link in self._links:  # start at the first message this collector lacks
            first = self.journal.first_unacked_id(link.name)
            link.cursor = first - 1 if first is not None else self.journal.last_id()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._next_heartbeat = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._poll_lock = threading.Lock()
        self._clock_offset = time.time() - time.monotonic()
        self._meta: deque[Alert] = deque(maxlen=1000)
        self._synced = timesync_state()
        # Disk full (issue 12): writes the journal could not make. Acks and audit rows
        # are only bookkeeping (a missed ack means a resend the collector drops);
        # health alerts raised here are still kept locally through on_meta_alert.
        self.unjournaled = Counter[str]()
        # The first journaled message of every epoch announces it, and who is speaking.
        self.submit(Kind.HEALTH, {"event": "start", "epoch": self.epoch,
                                  **dict(s.identity)})

    # -- producing --------------------------------------------------------------------

    def submit_alert(self, alert: Alert) -> int:
        """Journal an alert (or an update of an aggregated one) for each destination
        whose policy lets it leave, shaped by that policy; its seq in the first
        such destination's stream (0: it leaves for none)."""
        return self._append(self._shape_alert(alert))

    def submit_alerts(self, alerts: Sequence[Alert],
                      sync: tuple[str, int] | None = None) -> list[int]:
        """Journal several alerts in one transaction; ``sync`` = (store id, revision)
        moves the store's journaled mark with them, atomically. Raises ``JournalFull``
        when the disk is full (then nothing of the call was journaled)."""
        items = [item for alert in alerts for item in self._shape_alert(alert)]
        seqs, evictions = self.journal.append_many(items, sync=sync,
                                                   pseudonyms=self._new_pseudonyms())
        self._wake()
        if evictions:
            self._data_loss(evictions)
        return seqs

    def submit(self, kind: Kind, body: Mapping[str, Any]) -> int:
        """Journal an asset change or health record; returns its seq."""
        if kind not in (Kind.ASSET, Kind.HEALTH):
            raise ValueError(f"submit() takes asset or health, not {kind.name.lower()}")
        items = []
        for collector, policy in self.policies.items():
            shaped = policy.shape(kind, body)
            if shaped is not None or kind is Kind.HEALTH:  # health announces the epoch
                items.append(self._outgoing(kind, collector, policy, shaped or Shaped(
                    dict(body), tuple(sorted(body)), (), ())))
        return self._append(items)

    def _shape_alert(self, alert: Alert) -> list[Outgoing]:
        out = []
        for collector, policy in self.policies.items():
            shaped = policy.shape_alert(alert)
            if shaped is not None:
                out.append(self._outgoing(Kind.ALERT, collector, policy, shaped))
        return out

    @staticmethod
    def _outgoing(kind: Kind, collector: str, policy: DestinationPolicy,
                  shaped: Shaped) -> Outgoing:
        return Outgoing(kind, shaped.body, ",".join(shaped.sent), collector,
                        shape_json(policy.name, policy.digest, shaped.withheld,
                                   shaped.pseudonymised))

    def _new_pseudonyms(self) -> list[Any]:
        """Mappings made since the last append, for the journal's resolve map."""
        seen = {id(p.pseudonymiser): p.pseudonymiser for p in self.policies.values()
                if p.pseudonymiser is not None}
        return [m for p in seen.values() for m in p.take_new()]

    def _append(self, items: list[Outgoing]) -> int:
        """Journal one message's copies (one per destination); the first copy's seq."""
        if not items:
            return 0
        seqs, evictions = self.journal.append_many(items, pseudonyms=self._new_pseudonyms())
        self._wake()
        if evictions:
            self._data_loss(evictions)
        return seqs[0]

    def _data_loss(self, evictions: list[Eviction]) -> None:
        """Unacknowledged messages were evicted: say so loudly (S4), locally and upstream.

        Each destination is told of the ranges of its own stream (seqs are per stream:
        another's would name messages it has); the local alert lists them all.
        """
        now = time.time()
        alert = Alert(
            rule=EVICTION_RULE, precursor="S4", severity=Severity.HIGH, attack=(),
            title="Forwarding journal full: unacknowledged messages evicted",
            proto="sensor", first_ts=now, last_ts=now,
            count=sum(e.count for e in evictions),
            evidence={"ranges": [[e.epoch, e.first, e.last] for e in evictions]})
        if self.on_meta_alert is not None:
            local = {e.collector for e in evictions} - {SHARED}
            self.on_meta_alert(replace(alert, evidence={**alert.evidence, "collectors": [
                e.collector for e in evictions]}) if local else alert)
        items = []
        for collector, policy in self.policies.items():
            mine = [e for e in evictions if e.collector in (collector, SHARED)]
            shaped = policy.shape_alert(replace(
                alert, count=sum(e.count for e in mine),
                evidence={"ranges": [[e.epoch, e.first, e.last] for e in mine]}))
            if mine and shaped is not None:
                items.append(self._outgoing(Kind.ALERT, collector, policy, shaped))
        try:
            _, more = self.journal.append_many(items, pseudonyms=self._new_pseudonyms())
        except JournalFull:
            self._unjournaled("health alert")
            return
        if more and self.on_meta_alert is not None:  # do not recurse: report once more
            self.on_meta_alert(alert)

    def _unjournaled(self, what: str, n: int = 1) -> None:
        """Count a write the full disk refused; log the first of each kind."""
        if not self.unjournaled[what]:
            log.error("forwarding journal %s: disk full, %s not journaled (counted)",
                      self.journal.path, what)
        self.unjournaled[what] += n

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    # -- the send loop ----------------------------------------------------------------

    def poll(self, timeout: float = 0.1) -> None:
        """One round: read control and monitor events, send what the window allows."""
        with self._poll_lock:
            poller = zmq.Poller()
            for link in self._links:
                poller.register(link.sock, zmq.POLLIN)
                poller.register(link.monitor, zmq.POLLIN)
            poller.register(self._wake_r, zmq.POLLIN)
            ready = dict(poller.poll(int(timeout * 1000)))
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            for link in self._links:
                if link.monitor in ready:
                    self._monitor(link)
                if link.sock in ready:
                    self._control(link)
            audit: list[AuditEntry] = []
            sent: list[Sent] = []
            for link in self._links:
                self._send(link, audit, sent)
            if self.rules is not None:
                self._fetch(self.rules.tick(time.monotonic()))
            try:
                self.journal.record_audit(audit, sent=sent)
            except JournalFull:
                self._unjournaled("audit record", len(audit))
            if time.monotonic() >= self._next_heartbeat:
                self.heartbeat()

    def _monitor(self, link: _Link) -> None:
        while True:
            try:
                msg = link.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = parse_monitor_message(msg)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                link.connected = True
                if link.unreachable_reported:
                    self._health_alert(UNREACHABLE_RULE, "S6", Severity.LOW,
                                       f"Collector {link.name} reachable again",
                                       {"collector": link.name, "state": "reachable"})
                link.down_since, link.unreachable_reported = None, False
                link.rewind((self.journal.first_unacked_id(link.name) or 1) - 1)
                self._next_heartbeat = 0.0  # announce epoch and last seq at once
            elif event == zmq.EVENT_DISCONNECTED:
                link.connected = False
                if link.down_since is None:
                    link.down_since = time.monotonic()

    def _control(self, link: _Link) -> None:
        for _ in range(10_000):
            try:
                frame = link.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = decode_control(frame)
            except WireError:
                self.control_errors += 1
                continue
            if isinstance(message, Ack):
                self._on_ack(link, message)
            elif isinstance(message, ReplayRequest):
                self._on_replay(link, message)
            else:
                self._on_rules(link, message)

    def _on_rules(self, link: _Link, message: RulesOffer | RulesChunk) -> None:
        if self.rules is None:
            self.ignored_offers += 1
            return
        now = time.monotonic()
        try:
            if isinstance(message, RulesOffer):
                requests = self.rules.offer(link, link.name, message, now)
            else:
                requests = self.rules.chunk(link, message, now)
        except Exception:  # whatever a bundle does to the installer, forwarding goes on
            log.exception("pushed rule bundle from %s", link.name)
            self.rules.drops["internal_error"] += 1
            return
        self._fetch(requests)
        if self.rules.settled():
            self._next_heartbeat = 0.0  # say at once what became of it

    def _fetch(self, requests: list[tuple[object, RulesFetch]]) -> None:
        for link, req in requests:
            assert isinstance(link, _Link)
            frame = encode(self.epoch, self.journal.last_seq(link.name), time.time(),
                           Kind.RULES_FETCH,
                           [req.sha256, req.offset])
            with contextlib.suppress(zmq.Again):
                link.sock.send(frame, zmq.NOBLOCK)

    def heartbeat_soon(self) -> None:
        """Send a heartbeat at the next round (the daemon: new rules are loaded)."""
        self._next_heartbeat = 0.0
        self._wake()

    def _on_ack(self, link: _Link, ack: Ack) -> None:
        try:
            if self.journal.ack(link.name, ack.epoch, ack.seq):
                link.last_progress = time.monotonic()
        except JournalFull:
            # Not recorded: after a restart these are resent and the collector, which
            # stored them, drops the copies and acks again. The link goes on meanwhile.
            self._unjournaled("ack")
            link.last_progress = time.monotonic()
        link.acknowledge(ack.epoch, ack.seq)

    def _on_replay(self, link: _Link, req: ReplayRequest) -> None:
        if req.epoch > self.epoch:
            return
        row_id, missing_to = self.journal.locate(link.name, req.epoch, req.first)
        if missing_to >= req.first:  # evicted before it was acknowledged: tell, don't hang
            frame = encode(req.epoch, missing_to, time.time(), Kind.LOST, [req.first])
            with contextlib.suppress(zmq.Again):
                link.sock.send(frame, zmq.NOBLOCK)
        if row_id is not None and row_id <= link.cursor:  # sent, and lost on the way
            link.rewind(row_id - 1)

    def _send(self, link: _Link, audit: list[AuditEntry], sent: list[Sent]) -> None:
        if time.monotonic() - link.last_progress > self.settings.ack_timeout:
            self._resume(link)
        room = self.settings.window - len(link.inflight)
        while room > 0:
            rows = self.journal.pending(link.name, link.cursor, min(room, 500))
            if not rows:
                return
            for row in rows:
                try:
                    link.sock.send(row.frame, zmq.NOBLOCK)
                except zmq.Again:
                    return
                link.cursor = row.id
                link.inflight.append((row.id, row.epoch, row.seq))
                audit.append(AuditEntry(link.name, row.kind, row.fields, len(row.frame),
                                        row.id <= link.max_sent))
                if row.id > link.max_sent:  # the chain records first sends only
                    sent.append(Sent(link.name, row.epoch, row.seq, row.kind, row.frame,
                                     row.fields, row.shape))
                link.max_sent = max(link.max_sent, row.id)
            room = self.settings.window - len(link.inflight)

    def _resume(self, link: _Link) -> None:
        """No ack for ``ack_timeout``: resend from the first message ``link`` lacks.

        Also when nothing is in flight, in case the collector dropped what it got (a
        restart before its commit): anything unacknowledged at or before the cursor
        would otherwise never be sent again. The journal is asked at most once per
        ``ack_timeout`` while the link is idle.
        """
        first = self.journal.first_unacked_id(link.name)
        if first is not None and first <= link.cursor:
            link.rewind(first - 1)
        else:
            link.last_progress = time.monotonic()

    def heartbeat(self) -> None:
        """Last seq, identity, health and what each collector is still owed; not
        journaled (it is only news).

        ``owed`` lists the older epochs whose messages that collector has not
        acknowledged, so it can see (and ask for) a backlog it would otherwise only
        learn of when it arrives. ``clock`` is this box's wall clock, which the
        collector compares with its own (S5); ``synced`` is systemd-timesyncd's view.
        """
        self._next_heartbeat = time.monotonic() + self.settings.heartbeat_interval
        self._check_clock()
        self._check_links()
        self._send_heartbeat()

    def _send_heartbeat(self) -> None:
        now = time.time()
        body: dict[str, Any] = {"up": round(now - self.started, 3), "clock": now,
                                **dict(self.settings.identity)}
        if self._synced is not None:
            body["synced"] = self._synced
        if self.health is not None:
            try:
                values = self.health()
            except Exception:  # a broken health source must not stop forwarding
                values = {}
            body.update({k: values[k] for k in _HEALTH_KEYS
                         if isinstance(values.get(k), int | float)})
        if self.control_errors:  # frames from a collector that were not valid control
            body["control_errors"] = self.control_errors
        for link in self._links:
            owed = [list(o) for o in self.journal.owed(link.name) if o[0] != self.epoch]
            said = {**body, **self.rules.report(link.name)} if self.rules else body
            frame = encode(self.epoch, self.journal.last_seq(link.name), now, Kind.HEARTBEAT,
                           {**said, "owed": owed} if owed else said)
            with contextlib.suppress(zmq.Again):
                link.sock.send(frame, zmq.NOBLOCK)

    def _check_clock(self) -> None:
        """S5 when the wall clock is stepped back (alert times would run backwards) or
        time synchronisation is lost."""
        offset = time.time() - time.monotonic()
        step, self._clock_offset = offset - self._clock_offset, offset
        if step < -CLOCK_STEP:
            self._health_alert(CLOCK_RULE, "S5", Severity.MEDIUM,
                               f"Sensor clock stepped back by {-step:.1f} s",
                               {"step": round(step, 3)})
        synced = timesync_state()
        if self._synced and synced is False:
            self._health_alert(CLOCK_RULE, "S5", Severity.MEDIUM,
                               "Sensor lost time synchronisation", {"synced": False})
        self._synced = synced

    def _check_links(self) -> None:
        """S6 once per outage when a collector stays unreachable too long."""
        now = time.monotonic()
        for link in self._links:
            if (link.down_since is not None and not link.unreachable_reported
                    and now - link.down_since >= self.settings.unreachable_after):
                link.unreachable_reported = True
                self._health_alert(
                    UNREACHABLE_RULE, "S6", Severity.MEDIUM,
                    f"Collector {link.name} unreachable for {now - link.down_since:.0f} s",
                    {"collector": link.name, "state": "unreachable",
                     "for": round(now - link.down_since, 1)})

    def _health_alert(self, rule: str, precursor: str, severity: Severity, title: str,
                      evidence: dict[str, Any]) -> None:
        """A sensor-health alert raised by forwarding itself: kept locally through
        ``on_meta_alert`` and journaled, so it is forwarded once a link allows."""
        now = time.time()
        self._raise(Alert(rule=rule, precursor=precursor, severity=severity, attack=(),
                          title=title, proto="sensor", first_ts=now, last_ts=now,
                          evidence=evidence))

    def _raise(self, alert: Alert) -> None:
        if self.on_meta_alert is not None:
            if threading.current_thread() is self._thread:
                self._meta.append(alert)  # the owner's store is not ours to touch
            else:
                self.on_meta_alert(alert)
        try:
            _, evictions = self.journal.append_many(self._shape_alert(alert),
                                                    pseudonyms=self._new_pseudonyms())
        except JournalFull:
            self._unjournaled("health alert")
            return
        if evictions:
            self._data_loss(evictions)

    def deliver_meta(self) -> int:
        """Hand the health alerts raised on the forwarder's thread (S5, S6) to
        ``on_meta_alert`` on the caller's thread; the daemon calls it every tick."""
        n = 0
        while self._meta and self.on_meta_alert is not None:
            self.on_meta_alert(self._meta.popleft())
            n += 1
        return n

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Forwarder:
        """Run ``poll`` on a background thread until ``close``."""
        def loop() -> None:
            while not self._stop.is_set():
                self.poll(0.2)
        self._thread = threading.Thread(target=loop, name="mamori-forwarder", daemon=True)
        self._thread.start()
        return self

    def unacked(self) -> int:
        return self.journal.stats()["unacked"]

    def close(self, flush_timeout: float = 5.0) -> None:
        """Try to get everything acknowledged within ``flush_timeout``, then stop.

        Whatever is still unacknowledged stays in the journal for the next start.
        When everything is acknowledged, a last heartbeat tells each collector so:
        it marks a stream complete only on a heartbeat that follows the last ack,
        and a run that ends between heartbeats would otherwise never be marked.
        """
        deadline = time.monotonic() + flush_timeout
        while self._links and self.unacked() and time.monotonic() < deadline:
            if self._thread is None:
                self.poll(0.05)
            else:
                time.sleep(0.05)
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        final = bool(self._links) and not self.unacked() and (
            self._thread is None or not self._thread.is_alive())
        if final:
            self._send_heartbeat()
        for link in self._links:
            link.close(FINAL_LINGER_MS if final else 0)
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.journal.close()

    def link_state(self) -> list[dict[str, Any]]:
        return [{"collector": ln.name, "connected": ln.connected, "inflight": len(ln.inflight),
                 "cursor": ln.cursor, "rewinds": ln.rewinds} for ln in self._links]


def timesync_state(directory: Path = TIMESYNC_DIR) -> bool | None:
    """systemd-timesyncd's word on the clock: True when synchronised, False when it
    runs but is not, None where it does not run (nothing to say)."""
    if not directory.is_dir():
        return None
    return (directory / "synchronized").exists()
