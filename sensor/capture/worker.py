"""A capture worker process: its fanout sockets in, the pipeline's events out to the daemon.

``mamori run`` with ``[capture] workers`` above 1 starts one of these per worker
(``python -m mamori.sensor.capture.worker FD``). The daemon opened the sockets
(CAP_NET_RAW) and put them in fanout groups; the worker receives them as inherited
file descriptors, maps their rings and runs what the daemon's loop runs with one
worker: decoding, the flow table, reassembly and the parsers (``Pipeline.packet``).
Detection, the inventory, the store and forwarding stay in the daemon, which merges
the workers' records by packet time (``mamori.sensor.capture.merge``), so
everything that spans flows comes out as with one process::

    kernel, per interface: PACKET_FANOUT_HASH group
      ├─ socket 0 ─▶ worker 0: Pipeline ─┐ records + watermark
      ├─ socket 1 ─▶ worker 1: Pipeline ─┼─▶ daemon: Merge ─▶ PacketRing.add,
      └─ socket 2 ─▶ worker 2: Pipeline ─┘   (socketpairs)    Session.feed (detection, ...)

A record is one frame that gave events or that the packet ring keeps: (packet time,
the ring's ``add`` arguments or None, the events). The ring stays in the daemon,
fed in the merged order, so the packets behind an alert are the same as with one
process. A worker without a ring in the daemon (``[packets] enabled = false``)
sends no frames.

Signals: SIGTERM, SIGINT and SIGHUP are ignored here (systemd signals the whole
control group; only the daemon decides): the daemon sends "stop", the worker reads
what its rings hold, says up to where, and on "finish" flushes its pipeline
(``Pipeline.finish`` at the packet time the daemon gives, the latest any worker
saw). End of stream on the control socket (the daemon is gone) ends the worker.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from collections.abc import Hashable, Sequence
from typing import Any

from mamori.parsers.packetring import RingTap
from mamori.parsers.pipeline import Pipeline, PipelineConfig
from mamori.sensor import gcpolicy
from mamori.sensor.capture.live import LiveCapture
from mamori.sensor.capture.workerwire import Channel

POLL_MS = 50  # how long the worker waits for a block before it reports its watermark
MARGIN = 0.1  # seconds added to twice the block timeout (scheduling, stamping)
STATS_EVERY = 1.0  # seconds between the pipeline counters sent to the daemon

RingEntry = tuple[Hashable, float, int, bytes]
Identity = tuple[str, int, int, list[int]]  # user name, uid, gid, supplementary groups


def become(identity: Identity | None) -> None:
    """Switch to the daemon's service user (a worker started while it was root)."""
    if identity is None or os.geteuid() != 0:
        return
    _, uid, gid, groups = identity
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)


def watermark_lag(block_timeout_ms: int) -> float:
    """How far behind the wall clock a frame not yet read can be stamped."""
    return 2 * block_timeout_ms / 1000 + MARGIN


class Worker:
    def __init__(self, channel: Channel, index: int, config: PipelineConfig, ring: bool,
                 captures: list[LiveCapture]) -> None:
        self.channel = channel
        self.index = index
        self.captures = captures
        self.pipeline = Pipeline(config)
        self.tap = RingTap() if ring else None
        self.pipeline.ring = self.tap
        self.lag = max(watermark_lag(c.block_timeout_ms) for c in captures)
        self.last_ts = float("-inf")
        self._next_stats = 0.0

    def run(self) -> int:
        poller = select.poll()
        for cap in self.captures:
            poller.register(cap.fileno(), select.POLLIN | select.POLLERR)
        poller.register(self.channel.fileno(), select.POLLIN)
        self.channel.sock.setblocking(False)
        stopping = False
        while True:
            poller.poll(POLL_MS)
            if not self.channel.fill():
                return 0  # the daemon is gone
            for message in self.channel.messages():
                if message[0] == "stop":
                    stopping = True
            self._read_all()
            if stopping:
                return self._finish()

    def _read_all(self) -> None:
        wall = time.time()  # before reading: what was stamped before wall - lag is read
        records: list[tuple[float, RingEntry | None, Sequence[Any]]] = []
        counts: list[tuple[int, int, float]] = []
        packet = self.pipeline.packet
        tap = self.tap
        stats = self.pipeline.stats
        for cap in self.captures:
            frames = cap.read()
            before = stats.bytes
            for ts, linktype, data, number in frames:
                events = packet(ts, linktype, data, number)
                entry = None
                if tap is not None and tap.taken is not None:
                    entry, tap.taken = tap.taken, None
                if events or entry is not None:
                    records.append((ts, entry, events))
            last = frames[-1][0] if frames else float("-inf")
            counts.append((len(frames), stats.bytes - before, last))
            if last > self.last_ts:
                self.last_ts = last
        mark = max(self.last_ts, wall - self.lag)
        pipeline_stats = None
        if wall >= self._next_stats or records:
            if wall >= self._next_stats:
                self._next_stats = wall + STATS_EVERY
            pipeline_stats = (stats, self.pipeline.active_flows)
        self.channel.sock.setblocking(True)
        try:
            self.channel.send(("batch", mark, records, counts, pipeline_stats))
        finally:
            self.channel.sock.setblocking(False)

    def _finish(self) -> int:
        self.channel.sock.setblocking(True)
        self.channel.send(("stopped", self.last_ts))
        while True:
            message = self.channel.receive()
            if message is None:
                return 0
            if message[0] == "finish":
                break
        events = self.pipeline.finish(message[1])
        self.channel.send(("finished", events, (self.pipeline.stats, 0)))
        return 0


def main(argv: list[str]) -> int:
    gcpolicy.tune()  # a process of its own, parsing every frame: as the mamori program
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    channel = Channel(socket.socket(fileno=int(argv[1])))
    message = channel.receive()
    if message is None or message[0] != "config":
        return 2
    _, index, config, ring, sockets, identity = message
    become(identity)  # before the first frame: a worker never parses as root
    captures = [LiveCapture.adopt(name, fd, size, count, timeout, skip)
                for name, fd, size, count, timeout, skip in sockets]
    worker = Worker(channel, index, config, ring, captures)
    # Imported, rings mapped, pipeline built: from here on the worker drains its
    # rings every POLL_MS, so the daemon may tell systemd READY=1.
    channel.send(("reading",))
    return worker.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
