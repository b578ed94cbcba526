"""The daemon's side of the capture workers: start them, read them, restart the dead.

Process layout with ``[capture] workers = N`` (N > 1)::

    mamori run (the manager; opened every socket as root, then dropped privileges)
      │ per interface: N packet sockets in one PACKET_FANOUT_HASH group, all held here
      ├── worker 0  (python -m mamori.sensor.capture.worker) ── socket 0 of each interface
      ├── worker 1  ...                                      ── socket 1 of each interface
      └── worker N-1
    each worker: Pipeline → (records, watermark) over a socketpair → Merge (here)
    here: PacketRing (packets behind alerts), Session (detection, inventory, baseline,
          store, forwarding), health (S1 summed over the sockets, S3, S8), STATUS

Why separate interpreters, started by exec rather than fork: the daemon already
runs threads (the forwarder, the web page, metrics) when the workers start, and a
fork of a threaded process can inherit a lock some thread held. The sockets pass
as inherited descriptors (``pass_fds``): a worker needs no privilege to map a ring.

Why the daemon keeps every socket: a worker that dies leaves its socket, and so its
place in the fanout group, with the daemon. Its flows keep hashing to that socket,
whose ring fills while the worker is down (the kernel counts what overflows, as S1),
and the restarted worker takes the same socket: no spare socket and no CAP_NET_RAW
are needed for a restart, and the other workers' share does not move. The dead
worker's flow state (reassembly, half-parsed messages) is lost; its flows resume as
mid-stream pickups (S2) in the new worker.

A restart raises ``mamori.sensor.worker_restarted`` (S8) and is counted in the
heartbeat and the STATUS line; a worker that cannot be started is retried every
``RESTART_BACKOFF`` seconds and the STATUS line shows it short ("1/2 workers").
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mamori.parsers.events import Event
from mamori.parsers.pipeline import PipelineConfig, PipelineStats
from mamori.sensor.capture.live import LiveCapture
from mamori.sensor.capture.merge import Merge, Record
from mamori.sensor.capture.worker import Identity, watermark_lag
from mamori.sensor.capture.workerwire import Channel, ChannelError

log = logging.getLogger("mamori.daemon")

RESTART_BACKOFF = 1.0  # seconds at least between two starts of one slot
DOWN_GRACE = 2.0  # seconds a dead slot holds the others' records back before its mark moves
STOP_TIMEOUT = 10.0  # seconds a worker has to flush at shutdown before it is killed
# A reading worker sends a batch every POLL_MS (50 ms), frames or none. One silent for
# this long is stalled (stopped, stuck in a frame, starved): it is killed and restarted
# like a dead one, so it cannot blind its share of the flows. Reading one full ring
# takes well under a second; the margin is for a box under load.
HANG_TIMEOUT = 10.0


@dataclass
class Slot:
    """One worker's place: its sockets (one per interface), its process and counters."""

    index: int
    captures: list[LiveCapture]
    proc: subprocess.Popen[bytes] | None = None
    channel: Channel | None = None
    started: float = 0.0
    down_since: float | None = None
    restarts: int = 0
    frames: int = 0
    stats: PipelineStats = field(default_factory=PipelineStats)
    base: PipelineStats = field(default_factory=PipelineStats)  # of workers before
    flows: int = 0
    reading: bool = False  # the worker said it drains its rings (READY waits for it)
    heard: float = 0.0  # monotonic time of its last message
    hung: bool = False  # killed for its silence (the restart says so)
    stopped_at: float | None = None  # the worker's last packet time, once stopped
    finished: list[Event] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass(frozen=True, slots=True)
class Restart:
    """A worker that died and was started again (the daemon raises S8 for it)."""

    index: int
    status: int | None
    restarts: int
    hung: bool = False  # it was alive but silent for HANG_TIMEOUT, and was killed


class WorkerPool:
    """N workers over the sockets ``captures[i]`` (worker i's socket per interface)."""

    def __init__(self, captures: list[list[LiveCapture]], config: PipelineConfig,
                 ring: bool, on_counts: Any, on_stats: Any) -> None:
        self.slots = [Slot(i, caps) for i, caps in enumerate(captures)]
        self.config = config
        self.ring = ring
        self.merge = Merge(len(self.slots))
        # per slot: (last frame ts, interface, frames, bytes) not yet credited
        self._counts: list[deque[tuple[float, str, int, int]]] = [deque() for _ in self.slots]
        self.on_counts = on_counts  # (interface, frames, bytes, last frame ts)
        self.on_stats = on_stats  # (the pipelines' counters summed), before on_counts
        self.lag = max(watermark_lag(c.block_timeout_ms) for s in self.slots
                       for c in s.captures)
        self.received_bytes = 0
        self.identity: Identity | None = None  # whom workers started as root become
        self._forcing = False  # the merge is over its cap (warned once an episode)
        self.started = False

    # -- processes ----------------------------------------------------------------------

    def start(self, identity: Identity | None = None) -> None:
        """Start every worker; call it before the daemon drops its privileges.

        Started while the daemon is still root, a worker can be exec'd from an
        installation only root can read; it then switches to ``identity`` itself
        (the daemon's ``[sensor] user``) before it reads a frame. A worker restarted
        later is exec'd by the unprivileged daemon, so the interpreter and the
        package must be readable by that user (as every shipped install is).
        """
        self.identity = identity
        self.started = True
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: Slot) -> bool:
        slot.started = time.monotonic()  # a failed start waits the backoff too
        parent, child = socket.socketpair()
        fds = [c.fileno() for c in slot.captures]
        try:
            slot.proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "mamori.sensor.capture.worker",
                 str(child.fileno())], pass_fds=[child.fileno(), *fds],
                stdin=subprocess.DEVNULL)
        except OSError as err:
            parent.close()
            log.error("capture worker %d cannot be started: %s", slot.index, err)
            slot.proc = None
            return False
        finally:
            child.close()
        slot.channel = Channel(parent)
        slot.reading = False
        slot.heard = slot.started
        slot.channel.send(("config", slot.index, self.config, self.ring,
                           [(c.interface, c.fileno(), *c.geometry, c.block_timeout_ms,
                             c.skip_before) for c in slot.captures],
                           self.identity if os.geteuid() == 0 else None))
        parent.setblocking(False)
        slot.down_since = None
        return True

    def channels(self) -> dict[int, Slot]:
        return {s.channel.fileno(): s for s in self.slots if s.channel is not None}

    def check(self, wall: float) -> list[Restart]:
        """Restart the workers that died; returns them (each one an S8)."""
        restarted: list[Restart] = []
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                if not self._hung(slot, now):
                    continue
                slot.proc.kill()
                slot.proc.wait()
            status = slot.proc.returncode if slot.proc is not None else None
            if slot.channel is not None:  # what it sent before it died still counts
                self.read(slot)
                self._drop_channel(slot)
            if slot.down_since is None:
                slot.down_since = now
                log.error("capture worker %d died (status %s); its flows are lost",
                          slot.index, status)
            if now - slot.down_since >= DOWN_GRACE:
                self.merge.advance(slot.index, wall - self.lag - DOWN_GRACE)
            if now - slot.started < RESTART_BACKOFF:
                continue
            self._bank(slot)
            hung, slot.hung = slot.hung, False
            if self._spawn(slot):
                slot.restarts += 1
                restarted.append(Restart(slot.index, status, slot.restarts, hung))
        return restarted

    def _hung(self, slot: Slot, now: float) -> bool:
        """A reading worker silent for HANG_TIMEOUT (read first: the daemon itself may
        have been busy, with the worker's batches waiting in the socket)."""
        if not slot.reading or now - slot.heard < HANG_TIMEOUT:
            return False
        self.read(slot)
        if slot.channel is None or now - slot.heard < HANG_TIMEOUT:
            return False
        log.error("capture worker %d sent nothing for %.0f s; killed", slot.index,
                  now - slot.heard)
        slot.hung = True
        return True

    def _drop_channel(self, slot: Slot) -> None:
        if slot.channel is not None:
            slot.channel.close()
            slot.channel = None

    def _bank(self, slot: Slot) -> None:
        """Keep a dead worker's pipeline counters: the counters say the daemon's total."""
        slot.base = _sum([slot.base, slot.stats])
        slot.stats = PipelineStats()
        slot.flows = 0

    # -- records ------------------------------------------------------------------------

    def read(self, slot: Slot) -> None:
        """Take what the worker sent: records into the merge, counters, stop replies."""
        channel = slot.channel
        if channel is None:
            return
        open_ = channel.fill()
        try:
            messages = channel.messages()
            if messages:
                slot.heard = time.monotonic()
        except ChannelError as err:
            # Only a broken worker sends this: stop listening to it and kill it;
            # check() restarts it and raises S8, as for any worker that dies.
            log.error("capture worker %d sent a broken message (%s); killed", slot.index, err)
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.kill()
                slot.proc.wait()
            self._drop_channel(slot)
            return
        for message in messages:
            kind = message[0]
            if kind == "batch":
                _, mark, records, counts, stats = message
                self.merge.add(slot.index, records, mark)
                if stats is not None:  # first: who sees the frames counted sees their packets
                    slot.stats, slot.flows = stats
                    self.on_stats(self.pipeline_stats())
                for cap, (frames, size, last) in zip(slot.captures, counts, strict=True):
                    if frames:
                        slot.frames += frames
                        self._counts[slot.index].append((last, cap.interface, frames, size))
            elif kind == "reading":
                slot.reading = True
                log.info("capture worker %d is reading", slot.index)
            elif kind == "stopped":
                slot.stopped_at = message[1]
            elif kind == "finished":
                slot.finished = message[1]
                slot.stats = message[2][0]
        if not open_:
            self._drop_channel(slot)

    def all_reading(self) -> bool:
        """Every worker drains its rings (until then their frames wait in the kernel)."""
        return all(s.reading for s in self.slots)

    def release(self) -> list[Record]:
        forced = self.merge.forced
        records = self.merge.release()
        if self.merge.forced > forced and not self._forcing:
            log.warning("capture workers: %d records held, over the cap; the oldest are "
                        "released before every worker has passed them",
                        self.merge.max_held)
        self._forcing = self.merge.forced > forced
        return records

    def credit(self) -> None:
        """Count the frames whose records are released (call after feeding them).

        Frames are credited to their interface (frames, bytes, S3's clock) only once
        the merge has passed them, so whoever sees a frame counted sees its events
        fed, as with one process.
        """
        limit = self.merge.limit
        for pending in self._counts:
            while pending and pending[0][0] <= limit:
                last, interface, frames, size = pending.popleft()
                self.on_counts(interface, frames, size, last)

    # -- totals -------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return sum(1 for s in self.slots if s.alive)

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.slots)

    @property
    def flows(self) -> int:
        return sum(s.flows for s in self.slots)

    def pipeline_stats(self) -> PipelineStats:
        return _sum([s.base for s in self.slots] + [s.stats for s in self.slots])

    # -- the end ------------------------------------------------------------------------

    def stop(self) -> tuple[list[Record], list[Event]]:
        """Stop every worker: their last records in time order, then their finish()."""
        live = [s for s in self.slots if s.channel is not None and s.alive]
        for slot in live:
            with contextlib.suppress(OSError):
                self._send(slot, ("stop",))
        self._wait(live, lambda s: s.stopped_at is not None)
        ends = [s.stopped_at for s in live if s.stopped_at is not None]
        end = max([e for e in ends if e != float("-inf")], default=None)
        for slot in live:
            if slot.stopped_at is not None:
                with contextlib.suppress(OSError):
                    self._send(slot, ("finish", end))
        self._wait(live, lambda s: s.finished is not None)
        records = self.merge.drain()
        self.credit()
        finished: list[Event] = []
        for slot in self.slots:
            finished.extend(slot.finished or ())
            if slot.proc is not None:
                try:
                    slot.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    log.error("capture worker %d did not stop; killed", slot.index)
                    slot.proc.kill()
                    slot.proc.wait()
            self._drop_channel(slot)
        return records, finished

    def _send(self, slot: Slot, message: tuple[Any, ...]) -> None:
        assert slot.channel is not None
        slot.channel.sock.setblocking(True)
        try:
            slot.channel.send(message)
        finally:
            slot.channel.sock.setblocking(False)

    def _wait(self, slots: list[Slot], done: Any) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            waiting = [s for s in slots if not done(s) and s.channel is not None]
            if not waiting:
                return
            select.select([s.channel.fileno() for s in waiting if s.channel is not None], [],
                          [], 0.2)
            for slot in waiting:
                self.read(slot)


def _sum(parts: list[PipelineStats]) -> PipelineStats:
    """Counters of several pipelines as one (first and last packet times: the extremes)."""
    total = PipelineStats()
    for p in parts:
        total.packets += p.packets
        total.bytes += p.bytes
        total.ignored += p.ignored
        total.not_ip += p.not_ip
        total.arp += p.arp
        total.problems.update(p.problems)
        total.flows_created += p.flows_created
        total.flows_expired += p.flows_expired
        total.flows_evicted += p.flows_evicted
        total.flows_closed_early += p.flows_closed_early
        if p.first_ts is not None:
            total.first_ts = p.first_ts if total.first_ts is None else min(total.first_ts,
                                                                            p.first_ts)
        if p.last_ts is not None:
            total.last_ts = p.last_ts if total.last_ts is None else max(total.last_ts,
                                                                         p.last_ts)
    return total
