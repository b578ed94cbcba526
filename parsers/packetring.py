"""The recent frames of each flow, kept in memory so an alert can show its packets.

An operator who sees "unauthorised write" wants the packets behind it, and by the
time anyone asks, the capture is gone. So the pipeline hands every frame of a
flow on a protocol port to ``PacketRing.add`` (the flow key is the pipeline's own:
protocol number, server address and port, client address and port), and when an
alert fires, ``mamori.sensor.capture.packet_evidence`` writes that flow's frames to a pcap.

Memory is bounded three ways, all by packet time so a replay keeps exactly what
the live sensor would have kept:

* per flow, ``flow_bytes``: a busy flow keeps only its newest frames (a frame
  larger than the whole allowance is not kept at all, and counted);
* by age, ``max_age`` seconds: older frames are dropped when their flow sees a
  new frame, and flows that went quiet are swept every ``_SWEEP_EVERY`` frames;
* across flows, ``total_bytes``: past it the least recently active flow gives
  up its oldest frames first, so a flood of new flows cannot exhaust memory.

Bytes are counted as the frame's length plus ``FRAME_OVERHEAD``, what Python
spends on holding one frame (bytes object, tuple, timestamp, deque slot), plus
``FLOW_OVERHEAD`` per flow held, so a flood of tiny frames or of one-frame flows is
bounded as strictly as one of big frames.

No I/O here: this is a data structure the pipeline feeds and the alert writer reads.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

FRAME_OVERHEAD = 160  # bytes Python holds per kept frame beyond its data (measured)
FLOW_OVERHEAD = 1024  # and per flow: its key, table slot, deque block (measured)

Frame = tuple[float, int, bytes]  # ts, linktype, raw frame
_LRU_RESOLUTION = 1.0  # seconds of packet time


class _Flow:
    __slots__ = ("bytes", "frames")

    def __init__(self) -> None:
        self.frames: deque[Frame] = deque()
        self.bytes = 0


@dataclass
class RingStats:
    too_big: int = 0  # frames larger than a whole flow's allowance: not kept
    shed_frames: int = 0  # dropped for the total cap (oldest flows first)
    shed_flows: int = 0  # flows left with no frame by the total cap or by age


class PacketRing:
    """Per-flow deques of recent frames, bounded by bytes per flow, age and total bytes."""

    _SWEEP_EVERY = 1024  # frames between sweeps of flows that went quiet

    def __init__(self, flow_bytes: int = 64 * 1024, total_bytes: int = 32 * 1024 * 1024,
                 max_age: float = 60.0) -> None:
        if flow_bytes < 1 or total_bytes < flow_bytes + FLOW_OVERHEAD:
            raise ValueError("flow_bytes must be at least 1 and total_bytes at least flow_bytes")
        if not max_age > 0:
            raise ValueError("max_age must be longer than 0 s")
        self.flow_bytes = flow_bytes
        self.total_bytes = total_bytes
        self.max_age = max_age
        self.bytes = 0  # held now: data, FRAME_OVERHEAD per frame, FLOW_OVERHEAD per flow
        self.last_ts = float("-inf")
        self.stats = RingStats()
        self._flows: OrderedDict[Hashable, _Flow] = OrderedDict()  # least recent first
        self._until_sweep = self._SWEEP_EVERY
        # Packet time at which ``on_due`` wants to hear of the next frame (the end of an
        # alert's post-window); infinite when nothing waits, so it costs one compare.
        self.due_at = float("inf")
        self.on_due: Callable[[float], None] = _nothing

    def __len__(self) -> int:
        return len(self._flows)

    def add(self, key: Hashable, ts: float, linktype: int, frame: bytes) -> None:
        """Keep ``frame`` as the newest of flow ``key``; drop what the bounds say.

        The hot path: one call per frame on a protocol port. A flow is moved to the
        recent end of the table only when its previous frame is more than
        ``_LRU_RESOLUTION`` older, as the pipeline's flow table does: the order the
        total cap and the sweep go by is kept to the second.
        """
        cost = len(frame) + FRAME_OVERHEAD
        if ts > self.last_ts:
            self.last_ts = ts
        flows = self._flows
        flow = flows.get(key)
        if cost > self.flow_bytes:
            self.stats.too_big += 1
            return
        if flow is None:
            flow = flows[key] = _Flow()
            self.bytes += FLOW_OVERHEAD
            frames = flow.frames
        else:
            frames = flow.frames
            if ts - frames[-1][0] > _LRU_RESOLUTION:
                flows.move_to_end(key)
        frames.append((ts, linktype, frame))
        held = flow.bytes + cost
        total = self.bytes + cost
        horizon = ts - self.max_age
        limit = self.flow_bytes
        while held > limit or frames[0][0] < horizon:
            gone = len(frames.popleft()[2]) + FRAME_OVERHEAD
            held -= gone
            total -= gone
        flow.bytes = held
        self.bytes = total
        if total > self.total_bytes:
            self._shed()
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep()
        if ts >= self.due_at:
            self.on_due(ts)

    def frames(self, key: Hashable) -> list[Frame]:
        """The flow's frames still within ``max_age`` of the newest frame seen, oldest first."""
        flow = self._flows.get(key)
        if flow is None:
            return []
        horizon = self.last_ts - self.max_age
        return [f for f in flow.frames if f[0] >= horizon]

    def find(self, src: str | None, sport: int | None, dst: str | None,
             dport: int | None) -> Hashable | None:
        """The key of the flow between these peers, whichever side is the server.

        Alerts name peers as strings and in the direction of the event (a response
        goes from the server), while the ring keys flows as the pipeline does.
        """
        for key in flow_keys(src, sport, dst, dport):
            if key in self._flows:
                return key
        return None

    def frames_between(self, src: str | None, sport: int | None, dst: str | None,
                       dport: int | None) -> list[Frame]:
        """The frames of the flow between these peers (``find``), oldest first."""
        key = self.find(src, sport, dst, dport)
        return [] if key is None else self.frames(key)

    def clear(self) -> None:
        self._flows.clear()
        self.bytes = 0

    # -- internals -------------------------------------------------------------------

    def _shed(self) -> None:
        """Over the total: the least recently active flows give up their oldest frames."""
        flows = self._flows
        stats = self.stats
        while self.bytes > self.total_bytes:
            key, flow = next(iter(flows.items()))
            old = flow.frames.popleft()[2]
            flow.bytes -= len(old) + FRAME_OVERHEAD
            self.bytes -= len(old) + FRAME_OVERHEAD
            stats.shed_frames += 1
            if not flow.frames:
                del flows[key]
                self.bytes -= FLOW_OVERHEAD
                stats.shed_flows += 1

    def _sweep(self) -> None:
        """Forget flows whose newest frame is older than ``max_age`` (least recent first)."""
        self._until_sweep = self._SWEEP_EVERY
        horizon = self.last_ts - self.max_age
        flows = self._flows
        while flows:
            key, flow = next(iter(flows.items()))
            if flow.frames[-1][0] >= horizon:
                break
            del flows[key]
            self.bytes -= flow.bytes + FLOW_OVERHEAD
            self.stats.shed_flows += 1



class RingTap(PacketRing):
    """Takes the pipeline's ``ring.add`` call instead of keeping the frame.

    A capture worker (``mamori.sensor.capture.worker``) sets one as its pipeline's
    ring and ships what each call was given to the daemon, which adds it to the one
    real ring in the merged order. It lives here, not in the worker, because in the
    mypyc build ``PacketRing`` is a native class: an interpreted class may not derive
    from it, and the compiled pipeline takes nothing that is not a ``PacketRing`` as
    its ring. It holds one call's arguments at most: the worker takes them after
    every frame.
    """

    def __init__(self) -> None:
        super().__init__()
        self.taken: tuple[Hashable, float, int, bytes] | None = None

    def add(self, key: Hashable, ts: float, linktype: int, frame: bytes) -> None:
        self.taken = (key, ts, linktype, frame)


def flow_keys(src: str | None, sport: int | None, dst: str | None,
              dport: int | None) -> list[tuple[int, bytes, int, bytes, int]]:
    """The pipeline flow keys (proto, server, port, client, port) these peers can have."""
    if src is None or dst is None or sport is None or dport is None:
        return []
    try:
        a = ipaddress.ip_address(src).packed
        b = ipaddress.ip_address(dst).packed
    except ValueError:  # a pseudonym or anything else that is not an address
        return []
    return [(proto, server, sp, client, cp)
            for server, sp, client, cp in ((b, dport, a, sport), (a, sport, b, dport))
            for proto in (6, 17)]


def _nothing(ts: float) -> None:
    """The default ``on_due``: nothing waits."""
