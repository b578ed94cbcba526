"""``mamori run``: the long-running sensor on one or more capture interfaces.

Order of start-up, and why:

1. load and validate the configuration (a broken file stops us here, with file,
   line and key, before anything is opened);
2. open the capture sockets (needs CAP_NET_RAW) with the kernel port filter;
3. drop privileges to the configured user when started as root, so parsing and
   detection never run privileged (under the shipped unit we start unprivileged
   with only CAP_NET_RAW, and this step is a no-op);
4. build the pipeline and the consumers (detection, store, forwarding), then tell
   systemd READY=1.

The loop waits on the capture sockets and on a self-pipe that signal handlers
write to: handlers only wake the loop, the loop does the work. SIGHUP reloads
configuration and rules without losing flow or detection state; SIGTERM and
SIGINT flush the store and the journal and exit 0. A rule bundle pushed by a
collector (mamori.sensor.detection.rulepush, on the forwarder's thread) wakes the loop the same way,
and the loop loads it as SIGHUP would, keeping the configuration.

Health is measured here because only the daemon sees the interfaces: kernel
drops raise S1, silence on an interface for ``silence_alert`` raises S3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import logging
import os
import pwd
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.events import Event
from mamori.parsers.pipeline import Pipeline, PipelineConfig, PipelineStats
from mamori.sensor import config as cfg
from mamori.sensor.alerting.eventlog import JsonLinesWriter
from mamori.sensor.alerting.siem import SensorSiem
from mamori.sensor.capture import bpf, fanout
from mamori.sensor.capture.live import CaptureError, CaptureStats, LiveCapture
from mamori.sensor.capture.merge import Record
from mamori.sensor.capture.worker import Identity, become
from mamori.sensor.capture.workers import HANG_TIMEOUT, WorkerPool
from mamori.sensor.daemon.notify import Notifier
from mamori.sensor.daemon.settings import workers as resolve_workers
from mamori.sensor.detection.session import Session
from mamori.sensor.paths import describe

log = logging.getLogger("mamori.daemon")


def pipeline_config(conf: cfg.Config) -> PipelineConfig:
    return PipelineConfig(
        modbus_ports=conf.get("ports", "modbus"),
        dnp3_ports=conf.get("ports", "dnp3"),
        max_flows=conf.get("limits", "max_flows"),
        tcp_idle_timeout=conf.get("limits", "tcp_idle_timeout"),
        udp_idle_timeout=conf.get("limits", "udp_idle_timeout"),
        max_buffered_per_flow=conf.get("limits", "max_buffered_per_flow"),
        max_handshakes=conf.get("limits", "max_handshakes"),
        handshake_timeout=conf.get("limits", "handshake_timeout"),
    )


@dataclass
class InterfaceHealth:
    """Per-interface counters behind S1 (drops) and S3 (silence)."""

    name: str
    last_frame: float = field(default_factory=time.time)
    frames: int = 0
    bytes: int = 0  # of the frames read (the pipeline's byte count, per interface)
    dropped: int = 0
    silent: bool = False
    stats: CaptureStats | None = None


def health_alert(rule: str, precursor: str, title: str, now: float, interface: str,
                 severity: Severity, evidence: dict[str, Any]) -> Alert:
    return Alert(rule=rule, precursor=precursor, severity=severity, attack=(), title=title,
                 proto="sensor", first_ts=now, last_ts=now, src=interface,
                 evidence=evidence)


class Sensor:
    """The daemon's state and loop. Built by ``build_sensor``; tests drive it directly.

    The capture interfaces are the session's source: frames go through the
    pipeline, events to ``session.feed``, and the loop's second is ``session.tick``.
    """

    def __init__(self, conf: cfg.Config, config_path: str | None,
                 session: Session | None = None,
                 alert_sink: Callable[[Alert], object] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.conf = conf
        self.config_path = config_path
        self.session = session if session is not None else Session()
        self.alert_sink = alert_sink
        self.notifier = notifier or Notifier()
        self.captures: list[LiveCapture] = []  # every socket (N per interface with workers)
        self.workers: WorkerPool | None = None  # [capture] workers > 1 (capture/workers.py)
        self.health: dict[str, InterfaceHealth] = {}
        self.pipeline = Pipeline(pipeline_config(conf))
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._pending: list[int] = []
        self._running = False
        self.started = time.time()
        self.store: Any = None  # mamori.sensor.alerting.store.Store, closed at shutdown
        # mamori.sensor.forwarding.forwarder.Forwarder, flushed at shutdown
        self.forwarder: Any = None
        self.web: Any = None  # the operator page (build_sensor(web=...)), stopped first
        self.outputs: Any = None  # mamori.sensor.alerting.dispatch.AlertOutputs: disk-full counters
        self.rules: Any = None  # mamori.sensor.detection.rulepush.RuleReceiver: pushed rule bundles
        self.metrics: Any = None  # the [metrics] listen endpoint (mamori.sensor.metrics.server)
        self.event_kinds: Any = None  # events by class, counted only when metrics are served
        self.evidence: Any = None  # mamori.sensor.capture.packet_evidence.PacketEvidence (issue 20)
        self._rules_due = threading.Event()
        self.last_heartbeat: float | None = None  # wall time health was last sampled
        self._rate = (time.monotonic(), 0)

    # -- set-up -------------------------------------------------------------------------

    def open_captures(self) -> None:
        interfaces = self.conf.get("capture", "interfaces")
        if not interfaces:
            raise CaptureError("no capture interface configured ([capture] interfaces)")
        ports = self.conf.get("ports", "modbus") | self.conf.get("ports", "dnp3")
        ring = self.conf.get("capture", "ring_mb") * (1 << 20)
        block = 1 << 20 if ring >= (4 << 20) else 1 << 16
        expression = self.conf.get("capture", "filter")
        try:  # validated at load; compiled here, once, for every interface
            user = bpf.compile_expression(expression) if expression else None
        except ValueError as err:
            raise CaptureError(f"[capture] filter: {err}") from None
        count = resolve_workers(self.conf.get("capture", "workers"))
        # With workers the interface's ring is shared among their sockets: the memory
        # [capture] ring_mb promises per interface stays what it says.
        share = max(ring // count, 2 * (1 << 16))
        if share < ring:
            block = 1 << 20 if share >= (4 << 20) else 1 << 16
        per_worker: list[list[LiveCapture]] = [[] for _ in range(count)]
        for name in interfaces:
            group = [LiveCapture(
                name, ports, block_size=block, block_count=max(share // block, 2),
                promiscuous=self.conf.get("capture", "promiscuous"), user_filter=user)
                for _ in range(count)]
            self.captures.extend(group)
            self.health[name] = InterfaceHealth(name)
            if count > 1:
                fanout.join(group)
                for index, cap in enumerate(group):
                    per_worker[index].append(cap)
        if count > 1:
            self.workers = WorkerPool(per_worker, self.pipeline.config,
                                      self.pipeline.ring is not None, self._counted,
                                      self._pipeline_counted)

    def service_user(self) -> Identity | None:
        """``[sensor] user`` to switch to, when running as root and it exists."""
        if os.geteuid() != 0:
            return None
        user = self.conf.get("sensor", "user")
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            log.warning("running as root: user %r does not exist to switch to", user)
            return None
        groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
        return user, entry.pw_uid, entry.pw_gid, groups

    def start_workers(self) -> None:
        """Start the capture workers (if any) while still root: see ``WorkerPool.start``."""
        if self.workers is not None and not self.workers.started:
            self.workers.start(self.service_user())

    def drop_privileges(self) -> None:
        identity = self.service_user()
        if identity is None:
            return
        user, uid, _gid, _groups = identity
        become(identity)
        log.info("switched to user %s (uid %d)", user, uid)

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)  # the loop acts; the handler only records

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        self._running = True
        poller = select.poll()
        pool = self.workers
        by_fd = {cap.fileno(): cap for cap in self.captures} if pool is None else {}
        for fd in by_fd:
            poller.register(fd, select.POLLIN | select.POLLERR)
        poller.register(self._wake_r.fileno(), select.POLLIN)
        names = ", ".join(self.health)
        channels: dict[int, Any] = {}
        if pool is not None:
            self.start_workers()  # cmd_run started them before the drop already
            names += f" with {len(pool.slots)} worker processes"
            channels = self._register_workers(poller, {})
        said_ready = False
        stats_every = self.conf.get("health", "stats_interval")
        next_stats = time.monotonic() + stats_every
        next_tick = 0.0
        while self._running:
            if not said_ready and (pool is None or pool.all_reading()):
                # With workers, READY only once each one drains its rings: a
                # worker still importing would let its ring overflow under load.
                said_ready = True
                self.notifier.ready(f"capturing on {names}")
                log.info("capturing on %s", names)
            ready = poller.poll(250 if pool is None else 50)
            for fd, _ in ready:
                cap = by_fd.get(fd)
                if cap is not None:
                    self._drain(cap)
                elif pool is not None and fd in channels:
                    slot = channels[fd]
                    pool.read(slot)
                    if slot.channel is None:  # gone (EOF, or killed as broken)
                        poller.unregister(fd)
                        del channels[fd]
                else:
                    self._drain_wakeups()
            if pool is None:
                # Blocks retire on their own timeout; read whatever is complete.
                for cap in self.captures:
                    self._drain(cap)
            else:
                self._feed_records(pool.release())
                pool.credit()
                restarted = pool.check(time.time())
                if restarted:
                    channels = self._register_workers(poller, channels)
                    for restart in restarted:
                        self._worker_restarted(restart.index, restart.status,
                                               restart.restarts, restart.hung)
            self._handle_signals()
            now_mono = time.monotonic()
            if now_mono >= next_tick:
                next_tick = now_mono + 1.0
                self._tick(time.time())
            if now_mono >= next_stats:
                next_stats = now_mono + stats_every
                self._read_stats(time.time())
        self.shutdown()
        return 0

    def _register_workers(self, poller: select.poll, old: dict[int, Any]) -> dict[int, Any]:
        """Poll the workers' channels (again after a restart: new sockets)."""
        assert self.workers is not None
        for fd in old:
            with contextlib.suppress(KeyError, ValueError):
                poller.unregister(fd)
        channels = self.workers.channels()
        for fd in channels:
            poller.register(fd, select.POLLIN)
        return channels

    def _counted(self, interface: str, frames: int, size: int, last: float) -> None:
        """A worker read ``frames`` on ``interface`` (its S3 clock and counters)."""
        health = self.health[interface]
        health.frames += frames
        health.bytes += size
        if last > health.last_frame:
            health.last_frame = last
        health.silent = False

    def _pipeline_counted(self, stats: PipelineStats) -> None:
        """The workers' pipeline counters, summed: what metrics and heartbeats read."""
        self.pipeline.stats = stats

    def _feed_records(self, records: list[Record]) -> None:
        """Merged worker records: frames to the packet ring, events to the session,
        in packet-time order, as ``_drain`` does with one process."""
        if not records:
            return
        ring = self.pipeline.ring
        batch: list[Event] = []
        for _, entry, events in records:
            if entry is not None and ring is not None:
                ring.add(*entry)
            if events:
                batch.extend(events)
        self.session.feed(batch)

    def _worker_restarted(self, index: int, status: int | None, restarts: int,
                          hung: bool = False) -> None:
        now = time.time()
        if hung:
            what = f"stalled (silent for {HANG_TIMEOUT:.0f} s, so killed)"
        elif status is not None and status < 0:
            what = f"died (killed by signal {-status})"
        else:
            what = f"died (exit status {status})"
        self._alert(health_alert(
            "mamori.sensor.worker_restarted", "S8",
            f"Capture worker {index} {what} and was restarted; its flows were lost",
            now, ", ".join(self.health), Severity.HIGH,
            {"worker": index, "status": status, "restarts": restarts, "hung": hung}))

    def _drain(self, cap: LiveCapture) -> None:
        frames = cap.read()
        if not frames:
            return
        health = self.health[cap.interface]
        health.frames += len(frames)
        health.last_frame = frames[-1][0]
        health.silent = False
        packet = self.pipeline.packet
        before = self.pipeline.stats.bytes
        batch: list[Event] = []
        for ts, linktype, data, number in frames:
            events = packet(ts, linktype, data, number)
            if events:
                batch.extend(events)
        health.bytes += self.pipeline.stats.bytes - before
        self.session.feed(batch)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def request_rules_reload(self) -> None:
        """A pushed bundle is active (the forwarder's thread): the loop loads it."""
        self._rules_due.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"r")

    def _handle_signals(self) -> None:
        if self._rules_due.is_set():
            self._rules_due.clear()
            self.reload_rules()
        while self._pending:
            signum = self._pending.pop(0)
            if signum == signal.SIGHUP:
                self.reload()
            else:
                log.info("signal %d: stopping", signum)
                self._running = False

    def reload(self) -> None:
        """Re-read the configuration; keep flows, detection state and the captures."""
        self.notifier.reloading()
        try:
            fresh = cfg.load(self.config_path)
        except cfg.ConfigError as err:
            log.error("reload refused, keeping the running configuration: %s", err)
            self.notifier.status(f"reload refused: {err}")
            return
        from mamori.sensor.detection.loader import RuleError

        self.conf = fresh
        refused = []
        # e.g. rule packs in an installation the dropped user cannot read: the
        # running rules stay, and the daemon with them
        for failure in self.session.reload(fresh, (RuleError, OSError)):
            problem = describe(failure) if isinstance(failure, OSError) else str(failure)
            log.error("reload: %s; keeping what was running", problem)
            refused.append(problem)
        self.rules_loaded()
        if self.outputs is not None:
            self.outputs.reopen_sinks()
        log.info("configuration reloaded from %s", self.config_path)
        self.notifier.ready("configuration reloaded" if not refused else
                            f"configuration reloaded, but: {'; '.join(refused)}")

    def reload_rules(self) -> None:
        """Load the active rule bundle into detection; the configuration stays."""
        # the running rules stay; the bundle is rolled back
        for failure in self.session.reload(self.conf, (Exception,)):
            log.error("rules not reloaded, the running ones stay: %s", failure)
        self.rules_loaded()

    def rules_loaded(self) -> None:
        """Tell the pushed-bundle receiver (and so the collectors, at once) which
        bundle detection runs now."""
        if self.rules is None:
            return
        if self.session.detector is not None:
            self.rules.loaded(self.session.rules_version)
        if self.forwarder is not None:
            self.forwarder.heartbeat_soon()

    def _tick(self, now: float) -> None:
        self.notifier.tick()
        silence = self.conf.get("health", "silence_alert")
        for health in self.health.values():
            if not health.silent and now - health.last_frame >= silence:
                health.silent = True
                self._alert(health_alert(
                    "mamori.sensor.interface_silent", "S3",
                    f"No traffic on {health.name} for {int(now - health.last_frame)} s",
                    now, health.name, Severity.MEDIUM,
                    {"interface": health.name, "silent_for": round(now - health.last_frame)}))
        if self.workers is not None:  # the packet counters heartbeats and metrics read
            self.pipeline.stats = self.workers.pipeline_stats()
        self.session.tick(now)
        if self.forwarder is not None:
            self.forwarder.deliver_meta()  # S5/S6 raised on the forwarder's thread

    def _interface_stats(self) -> dict[str, CaptureStats]:
        """Kernel counters per interface, summed over its sockets (one per worker)."""
        sums: dict[str, CaptureStats] = {}
        for cap in self.captures:
            one = cap.stats()
            had = sums.get(cap.interface)
            sums[cap.interface] = one if had is None else CaptureStats(
                one.interface, had.received + one.received, had.dropped + one.dropped,
                had.frozen + one.frozen)
        return sums

    def _read_stats(self, now: float) -> None:
        for name, stats in self._interface_stats().items():
            health = self.health[name]
            if stats.dropped > health.dropped:
                self._alert(health_alert(
                    "mamori.sensor.capture_drops", "S1",
                    f"Kernel dropped {stats.dropped - health.dropped} frames on "
                    f"{name}", now, name, Severity.HIGH,
                    {"interface": name, "dropped": stats.dropped - health.dropped,
                     "dropped_total": stats.dropped, "received_total": stats.received}))
                health.dropped = stats.dropped
            health.stats = stats
        if self.workers is not None:
            self.pipeline.stats = self.workers.pipeline_stats()
        total = sum(h.frames for h in self.health.values())
        drops = sum(h.dropped for h in self.health.values())
        disk = ""
        if self.outputs is not None:
            state = self.outputs.status()
            if state["store_full"] or state["journal_behind"]:
                disk = (f", DISK FULL: {state['unstored']} alerts refused by the store, "
                        f"{state['held']} held, {state['dropped']} lost, "
                        f"{state['journal_behind']} not yet journaled")
        workers = ""
        if self.workers is not None:
            pool = self.workers
            workers = (f", {pool.running}/{len(pool.slots)} workers, "
                       f"{pool.restarts} restarts")
        self.notifier.status(f"{total} frames, {drops} dropped, "
                             f"{self.active_flows} flows{workers}{disk}")

    def _alert(self, alert: Alert) -> None:
        log.warning("%s: %s", alert.precursor, alert.title)
        if self.alert_sink is not None:
            self.alert_sink(alert)

    @property
    def active_flows(self) -> int:
        """Flows held now: the pipeline's, or the workers' as they last said."""
        return self.pipeline.active_flows if self.workers is None else self.workers.flows

    def snapshot(self) -> dict[str, Any]:
        """Health for heartbeats and the web page: packets, drops, flows, uptime."""
        snap: dict[str, Any] = {
            "uptime": round(time.time() - self.started, 1),
            "flows": self.active_flows,
            "packets": self.pipeline.stats.packets,
            "interfaces": {
                h.name: {"frames": h.frames, "dropped": h.dropped,
                         "last_frame": h.last_frame} for h in self.health.values()},
        }
        if self.workers is not None:
            snap["workers"] = [{"running": s.alive, "frames": s.frames, "restarts": s.restarts}
                               for s in self.workers.slots]
            merge = self.workers.merge  # records held now, and released out of order
            snap["merge"] = {"held": merge.held(), "late": merge.late,
                             "forced": merge.forced}
        if self.outputs is not None:
            snap["disk"] = self.outputs.status()
        if self.evidence is not None:  # packets behind alerts: memory held, pcaps, refusals
            ring = self.evidence.ring
            snap["pcaps"] = {**dataclasses.asdict(self.evidence.stats),
                             "ring_bytes": ring.bytes, "ring_flows": len(ring)}
        return snap

    def health_for_heartbeat(self) -> dict[str, float]:
        """packets/s since the last heartbeat, kernel drops and flows (forwarder thread)."""
        then, packets = self._rate
        now, current = time.monotonic(), self.pipeline.stats.packets
        self.last_heartbeat = time.time()  # shown on the web page's health panel
        self._rate = (now, current)
        pps = (current - packets) / (now - then) if now > then else 0.0
        values = {"pps": round(pps, 1), "drops": float(sum(h.dropped for h in
                                                            self.health.values())),
                  "flows": float(self.active_flows)}
        if self.workers is not None:  # a short pool shows here, not only in S8
            values["workers"] = float(self.workers.running)
            values["worker_restarts"] = float(self.workers.restarts)
        if self.outputs is not None:  # disk full: what the collector should know of it
            values["unstored"] = float(self.outputs.unstored)
            values["never_stored"] = float(self.outputs.dropped)
        return values

    def shutdown(self) -> None:
        """Flush everything in order: pipeline, consumers (store), forwarder, sockets."""
        self.notifier.stopping()
        if self.web is not None:
            self.web.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.workers is not None:
            records, finished = self.workers.stop()
            self._feed_records(records)
            self.session.feed(finished)
            self.pipeline.stats = self.workers.pipeline_stats()
            for slot in self.workers.slots:
                log.info("capture worker %d: %d frames, %d restarts", slot.index,
                         slot.frames, slot.restarts)
        else:
            self.session.feed(list(self.pipeline.finish()))
        self.session.close()
        if self.forwarder is not None:
            self.forwarder.close()
        if self.store is not None:
            self.store.close()
        for cap in self.captures:
            cap.close()
        self._wake_r.close()
        self._wake_w.close()
        log.info("stopped")


def config_path_default() -> str | None:
    path = Path("/etc/mamori/sensor.toml")
    return str(path) if path.exists() else None


class StartupError(Exception):
    """The daemon cannot start: bad rules, an unreadable store, missing keys.

    ``disk_full``: only because the state directory has no room (``mamori run`` waits
    for space then, instead of exiting into systemd's restart limit)."""

    def __init__(self, message: str, status: int = 2, disk_full: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.disk_full = disk_full


class EventFile:
    """``--events``: the same JSON lines as ``mamori replay --events``.

    An analyst's extra, not the sensor's record (that is the store): a write that
    fails (a full disk, a removed mount) drops that batch, counted in ``dropped`` and
    said once per episode, naming the file; writing resumes when it works again.
    Capture, detection and forwarding go on either way.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stream = path.open("a", encoding="utf-8")
        self._writer = JsonLinesWriter(self._stream)
        self.dropped = 0
        self._failing = False

    def consume(self, events: list[Event]) -> None:
        try:
            self._writer.write(events)
            self._stream.flush()
        except OSError as err:
            self.dropped += len(events)
            if not self._failing:
                log.error("--events %s: cannot write: %s; events are dropped (counted) "
                          "until it works again", self.path, err.strerror or err)
            self._failing = True
            return
        if self._failing:
            log.warning("--events %s: writing events again; %d were dropped", self.path,
                        self.dropped)
        self._failing = False

    def tick(self, now: float) -> None:
        pass

    def reload(self, conf: cfg.Config) -> None:
        """SIGHUP: reopen the path, so that after logrotate moved the file the events
        go to a new one there. A path that cannot be opened now keeps the old file."""
        try:
            stream = self.path.open("a", encoding="utf-8")
        except OSError as err:
            log.error("--events %s: cannot reopen: %s; writing on to the old file",
                      self.path, err.strerror or err)
            return
        self.close()
        self._stream, self._writer = stream, JsonLinesWriter(stream)

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError as err:
            if not self._failing:  # already said, and counted
                log.error("--events %s: cannot write: %s; the last events were not "
                          "written", self.path, err.strerror or err)


def build_sensor(conf: cfg.Config, config_path: str | None,
                 events: Path | None = None,
                 web: Callable[[Sensor], Any] | None = None) -> Sensor:
    """The daemon with its consumers: detection → store → forwarder, and health.

    Everything that can refuse to start (rules, store, keys, the web page's address
    and token) is built here, before any capture socket is opened, so a broken
    deployment fails fast and says why. ``web``, given the Sensor, starts the operator
    page in a thread and returns something with ``close()`` (``mamori run --web``;
    mamori.sensor.web.server.daemon_starter); it raises OSError or ValueError to refuse.
    """
    from mamori.sensor.alerting.dispatch import AlertOutputs
    from mamori.sensor.alerting.journald import journald_sink
    from mamori.sensor.alerting.settings import store_path
    from mamori.sensor.alerting.store import StoreError, StoreFull, open_store
    from mamori.sensor.detection.loader import RuleError
    from mamori.sensor.detection.session import ForwardingError, open_forwarder

    state_dir = Path(conf.get("sensor", "state_dir"))
    try:
        store = open_store(store_path(conf), conf, readonly=False)
    except StoreError as err:
        raise StartupError(f"store: {err}", disk_full=isinstance(err, StoreFull)) from None
    forwarder = None
    receiver = None
    try:
        siem = SensorSiem.from_config(conf)
    except OSError as err:  # checked at load; what changed since
        store.close()
        raise StartupError(f"[output] eve: {err.filename}: {err.strerror or err}") from None
    outputs = AlertOutputs(store, on_health=journald_sink(), sinks=[siem] if siem else [])
    holder: list[Sensor] = []
    if conf.get("forward", "collectors"):
        from mamori.sensor.detection.rulepush import RuleReceiver
        from mamori.sensor.detection.settings import bundle_store

        def health() -> dict[str, float]:
            return holder[0].health_for_heartbeat() if holder else {}

        receiver = RuleReceiver(bundle_store(conf), conf.get("detection", "trusted_rule_keys"),
                                on_applied=lambda _: holder[0].request_rules_reload())
        try:
            forwarder = open_forwarder(conf, outputs, state_dir=state_dir, health=health,
                                       on_meta_alert=outputs.raise_local, rules=receiver)
        except ForwardingError as err:
            store.close()
            raise StartupError(str(err), disk_full=err.journal_full) from None
    consumers: list[Any] = []  # after detection, in this order
    if events is not None:
        consumers.append(EventFile(events))
    event_kinds = None
    if web is not None or conf.get("metrics", "listen"):  # mamori.sensor.metrics serves them
        from mamori.sensor.metrics.sensor_metrics import EventKinds

        event_kinds = EventKinds()
        consumers.append(event_kinds)
    evidence = None
    session = Session(store=store, outputs=outputs, consumers=consumers)  # detection off
    if conf.get("detection", "enabled"):
        from mamori.sensor.capture.packet_evidence import PacketEvidence
        from mamori.sensor.detection.live import live_session

        evidence = PacketEvidence.from_config(conf, store)  # None: [packets] enabled = false
        try:
            session = live_session(conf, store, outputs, evidence, consumers)
        except RuleError as err:
            for consumer in consumers:
                consumer.close()
            store.close()
            raise StartupError(str(err)) from None
    sensor = Sensor(conf, config_path, session, alert_sink=outputs.raise_external)
    sensor.event_kinds = event_kinds
    if evidence is not None:
        sensor.pipeline.ring = evidence.ring
        sensor.evidence = evidence
        evidence.retain()
    sensor.store = store
    sensor.forwarder = forwarder
    sensor.outputs = outputs
    sensor.rules = receiver
    holder.append(sensor)
    sensor.rules_loaded()  # what runs, and an S7 if loading just rolled a bundle back
    if web is not None:
        try:
            sensor.web = web(sensor)
        except (OSError, ValueError) as err:
            if forwarder is not None:
                forwarder.close(flush_timeout=0)
            store.close()
            raise StartupError(f"web: {err}") from None
    if conf.get("metrics", "listen"):
        try:
            sensor.metrics = _serve_metrics(conf, sensor)
        except (OSError, ValueError) as err:
            if sensor.web is not None:
                sensor.web.close()
            if forwarder is not None:
                forwarder.close(flush_timeout=0)
            store.close()
            raise StartupError(f"metrics: {err}") from None
    if forwarder is not None:
        forwarder.start()
    return sensor


def _serve_metrics(conf: cfg.Config, sensor: Sensor) -> Any:
    """The ``[metrics] listen`` endpoint over the running sensor (docs/metrics.md)."""
    from mamori.sensor.alerting.settings import store_path
    from mamori.sensor.metrics.sensor_metrics import sensor_collectors
    from mamori.sensor.metrics.server import serve

    return serve(conf, sensor_collectors(sensor, store_path(conf)))
