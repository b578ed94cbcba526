"""Per-connection TCP reassembly, sans-IO.

One ``TcpReassembler`` per TCP connection turns the segments of both directions
into the three calls of the ``StreamParser`` contract: in-order bytes
(``receive``), holes (``gap``) and the end of a direction (``eof``).

Why gaps instead of giving up: Zeek and ICSNPP stop analysing a connection
after one bad PDU or one missing segment, so a single capture drop blinds them
for the rest of a Modbus session that may live for months. Here every hole is
reported with its size (``gap``) and the protocol parser resynchronises on the
next plausible header. Every loss of sight also becomes a ``TcpAnomalyEvent``
so the sensor can say where it was blind.

Choices worth knowing:

* Sequence numbers are compared modulo 2**32 (signed distance), so streams that
  wrap are handled like any other.
* Hot path: an in-order segment with nothing buffered costs a compare with
  the expected seq, a store and two counter updates before the parser call,
  whose list is returned as is; pure ACKs return a shared empty tuple, and a
  bare in-order FIN ends its direction there too (``_bare_fin``). Hence
  ``segment`` returns a ``Sequence`` (of the parser's events ``E`` and
  ``TcpAnomalyEvent``). Everything else goes through ``_slow``.
  The ACK number is checked first, against the other direction: equal to what
  it expects, or behind it (acks lag data), costs a compare or two and stays on
  the hot path.
* Out-of-order data is buffered, bounded per connection by ``max_buffered``
  bytes and ``max_segments`` pieces. At the cap the first hole is reported as a
  gap and the stream skips ahead to the buffered data.
* Holes that can never be filled are not waited for. A capture drop (tap, SPAN,
  ring buffer) loses a segment that the receiver did get: its ACK then covers
  bytes we never saw, and since acknowledged bytes are never retransmitted,
  the hole is reported (``gap``) as soon as such an ACK is seen and the
  buffered data behind it is delivered. Backstop for one-way captures and lost
  ACKs: data buffered behind a hole for more than ``hole_timeout`` seconds of
  *packet* time (any segment of the connection moves the clock) is delivered
  across the hole as at the cap. Without both, a single drop would hold every
  later PDU of the direction until the cap, a seq jump or the flow's end.
* ACK sanity: only an ACK for a direction that started and has not ended
  counts; an ACK further ahead than ``max_buffered`` + 64 KiB (or
  ``max_seq_jump``) or beyond a known FIN is bogus (fuzzing, corruption,
  injection), ignored and counted in ``bogus_acks``. The FIN takes one seq
  number, so an ACK of FIN + 1 covers the data up to the FIN. An ACK exactly
  one past everything seen with nothing buffered is read as a FIN we did not
  capture, not as a hole: a lost 1-byte segment is still reported by the next
  ACK, which lands beyond the data buffered after it. A SYN-ACK's ACK is read
  after the SYN, so the ISN + 1 it acknowledges is what the other side expects.
  Caveat: a capture that reorders the two directions (ACK captured before the
  data it acknowledges) turns that data into a gap followed by a
  retransmission, as in Zeek.
* Timestamps: data delivered later than it arrived keeps its own arrival time
  (``receive(d, data, piece_ts)``), so protocol events carry the time of the
  packets that carried them, not of the flush. Delivery times never go
  backwards within a direction: data released by a late retransmission that
  fills a hole is delivered at the retransmission's time (the PDU could not be
  complete before). Anomalies and gaps carry the time of the segment that
  revealed them.
* Overlaps: already delivered bytes are trimmed (we keep no copy, so a changed
  retransmission of delivered data cannot be seen). Among buffered data the
  first arrival wins and differing bytes raise ``OVERLAP_MISMATCH``.
* Mid-stream pickup (no SYN seen) emits ``MIDSTREAM_PICKUP`` and hands the
  bytes over from that point, without a gap call: the fresh parser has no
  state to drop and resyncs on its own if the first byte is not a header.
* ``gap(direction, 0, ts)`` means "an unknown amount was lost"; it is used
  after a sequence jump. Every gap call comes right after a ``GAP`` anomaly
  carrying the same size.
* A SYN with a new ISN on a direction that already started means the 4-tuple
  was reused: the old connection is flushed (gaps, eof), then
  ``CONNECTION_REUSED`` is emitted and the same parser object continues with
  the new connection, so a parser must accept data after ``eof`` and start
  afresh.
* ``segment`` takes the ACK number as an optional last argument; callers that
  do not pass it get the old behaviour plus the hole timeout.
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from mamori.parsers.fastinit import fast_init
from mamori.parsers.stream import Direction, FlowId, StreamParser

E = TypeVar("E")  # what the parser returns (the pipeline's: mamori.parsers.events.Event)

TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_PSH: Final = 0x08
TCP_ACK: Final = 0x10

_CTRL: Final = TCP_FIN | TCP_SYN | TCP_RST
_MASK: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000
_DIRS: Final = (Direction.TO_SERVER, Direction.TO_CLIENT)
_NO_EVENTS: Final[tuple[()]] = ()
_ACK_SLACK: Final = 64 * 1024  # how far beyond max_buffered an ACK may still be believed
# _hot values besides an expected seq (>= 0): see TcpReassembler.__init__.
_IDLE: Final = -2
_WATCH: Final = -3  # not -1: that is segment()'s "no ack supplied", which must not match it


def seq_delta(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two sequence numbers, in [-2**31, 2**31)."""
    return ((a - b + _HALF) & _MASK) - _HALF


class TcpAnomaly(enum.Enum):
    """What went wrong in a TCP stream; values are stable names for rule packs."""

    MIDSTREAM_PICKUP = "midstream_pickup"  # first segment of a direction had no SYN
    GAP = "gap"  # bytes lost; size is the hole, 0 when unknown
    BUFFER_CAP = "buffer_cap"  # out-of-order buffer full; a hole was skipped
    OVERLAP_MISMATCH = "overlap_mismatch"  # overlapping data (or FINs) disagree
    DATA_AFTER_FIN = "data_after_fin"  # bytes beyond the end of a direction
    CONNECTION_REUSED = "connection_reused"  # SYN with a new ISN on a known connection
    SEQ_JUMP = "seq_jump"  # sequence number moved further than any window


@fast_init
@dataclass(frozen=True, slots=True)
class TcpAnomalyEvent:
    """One anomaly in one direction of a connection.

    ``size`` is a byte count where the kind has one: ``GAP`` the hole (0 when
    unknown), ``BUFFER_CAP`` the bytes buffered when the cap was hit,
    ``DATA_AFTER_FIN`` the bytes ignored, ``SEQ_JUMP`` the distance jumped.
    ``detail`` is a short human-readable note.
    """

    ts: float
    flow: FlowId
    direction: Direction
    kind: TcpAnomaly
    size: int = 0
    detail: str = ""

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"TcpAnomalyEvent.size must be >= 0, got {self.size}")


_Out = list[E | TcpAnomalyEvent]  # what a call returns: the parser's events, ours
_Piece = tuple[int, bytes, float]  # (seq of first byte, data, arrival ts)
#: The buffer of a direction that has never held a piece. Shared and always empty:
#: ``_insert``, the only place a buffer grows, gives the direction a list of its own
#: first. Most connections never buffer a byte, and a list per direction is two more
#: objects the cyclic collector walks for every connection a closed flow keeps.
_NO_PIECES: Final[list[_Piece]] = []


class _Half:
    """What the slow path knows of one direction of a connection.

    One object per direction, not one list per field indexed by direction: a
    connection costs the cyclic collector (and the allocator) one object per
    direction instead of ten lists, and a closed flow keeps it until
    ``max_closed_flows`` newer ones push it out (``bench/bench_gc.py``).
    """

    __slots__ = ("acked", "buf", "end_seq", "ended", "fin", "isn", "next_seq", "rx_ts",
                 "since", "started")

    def __init__(self) -> None:
        self.started = False
        self.ended = False
        self.isn: int | None = None
        self.fin: int | None = None  # seq of the FIN, once known
        self.next_seq = 0  # stale while the direction is on the fast path (_hot)
        self.end_seq = 0  # seq where an ended direction stopped
        self.buf = _NO_PIECES  # sorted, disjoint, all ahead of next_seq
        self.since = math.inf  # arrival ts of the oldest buffered piece
        self.rx_ts = -math.inf  # latest ts handed to receive() on the slow path
        # An ACK past bytes we lack, waiting out ack_grace: (target seq, deadline).
        self.acked: tuple[int, float] | None = None


class TcpReassembler(Generic[E]):
    """Reassembles both directions of one TCP connection into one ``StreamParser``.

    ``max_buffered`` bounds the out-of-order bytes held for the connection
    (both directions together), ``max_segments`` the number of pieces.
    ``max_seq_jump`` is the largest believable sequence distance; beyond it the
    stream is treated as desynchronised and restarted (``SEQ_JUMP``).
    ``hole_timeout`` is how long (seconds of packet time) data may wait behind
    a hole before the hole is given up; ``math.inf`` disables it.

    Counters (plain ints, for sensor health): ``segments`` fed,
    ``bytes_delivered`` to the parser, ``retransmissions`` (segments wholly or
    partly already seen), ``out_of_order`` (segments buffered ahead of a
    hole), ``gaps`` and ``gap_bytes`` (gap calls made, bytes they reported),
    ``acked_holes`` (gaps found through an ACK), ``hole_timeouts`` (holes
    given up after ``hole_timeout``), ``bogus_acks`` (ACKs ignored as absurd).
    """

    __slots__ = (
        "_ack_grace",
        "_ack_limit",
        "_buffered",
        "_half",
        "_hole_timeout",
        "_hot",
        "_max_buffered",
        "_max_jump",
        "_max_segments",
        "_parser",
        "acked_holes",
        "bogus_acks",
        "bytes_delivered",
        "flow",
        "gap_bytes",
        "gaps",
        "hole_timeouts",
        "out_of_order",
        "retransmissions",
        "segments",
    )

    def __init__(
        self,
        flow: FlowId,
        parser: StreamParser[E],
        *,
        max_buffered: int = 256 * 1024,
        max_segments: int = 1024,
        max_seq_jump: int = 1 << 30,
        hole_timeout: float = 10.0,
        ack_grace: float = 0.2,
    ) -> None:
        if max_buffered < 0 or max_segments < 0:
            raise ValueError("max_buffered and max_segments must be >= 0")
        if not 0 < max_seq_jump < _HALF:
            raise ValueError("max_seq_jump must be in (0, 2**31)")
        if not hole_timeout > 0:  # also rejects NaN
            raise ValueError("hole_timeout must be > 0")
        self.flow = flow
        self._parser = parser
        self._max_buffered = max_buffered
        self._max_segments = max_segments
        self._max_jump = max_seq_jump
        self._hole_timeout = hole_timeout
        if not ack_grace >= 0:
            raise ValueError("ack_grace must be >= 0")
        self._ack_grace = ack_grace
        self._ack_limit = min(max_buffered + _ACK_SLACK, max_seq_jump)
        # Counters.
        self.segments = 0
        self.bytes_delivered = 0
        self.retransmissions = 0
        self.out_of_order = 0
        self.gaps = 0
        self.gap_bytes = 0
        self.acked_holes = 0
        self.hole_timeouts = 0
        self.bogus_acks = 0
        # Per-direction state, indexed by Direction.
        # _hot[d] is the expected seq while d is on the fast path (started, not
        # ended, nothing buffered, no FIN pending); while it is >= 0 it is
        # authoritative and _half[d].next_seq is stale. Otherwise it is _WATCH when d
        # started and has not ended (an ACK for d needs a look: it may reveal
        # a hole; data may be waiting for a timeout), else _IDLE (ACKs for d
        # are meaningless). The rest of what is known of d is in _half[d].
        self._hot = [_IDLE, _IDLE]
        self._half = [_Half(), _Half()]
        self._buffered = 0

    @property
    def buffered_bytes(self) -> int:
        """Out-of-order bytes held for this connection (both directions)."""
        return self._buffered

    @property
    def closed(self) -> bool:
        """Both directions ended (FIN, RST or close() processed)."""
        half = self._half
        return half[0].ended and half[1].ended

    def segment(
        self,
        direction: Direction,
        seq: int,
        flags: int,
        payload: bytes,
        ts: float,
        ack: int = -1,
    ) -> Sequence[E | TcpAnomalyEvent]:
        """Feed one TCP segment; returns the parser's events and TcpAnomalyEvents, in order.

        ``ack`` is the segment's acknowledgement number, read only when
        ``flags`` has ACK; it acknowledges the other direction. -1 (the
        default) means "not supplied": no ACK-driven hole detection.
        """
        self.segments += 1
        hot = self._hot
        # The Direction as a plain int: compiled, indexing a list with the IntEnum (a
        # Python class) or xor-ing it is a generic call each time; unboxed once, native.
        d: int = direction
        if flags & 0x10:  # TCP_ACK; literals are cheaper than globals here
            h = hot[d ^ 1]  # the other direction
            # Needs a look: ahead of what the other side has sent (a hole) or
            # the other side is not on the fast path but alive (_WATCH).
            # (-3 is _WATCH; 0 < x < 2**31 is seq_delta(ack, h) > 0, inlined.)
            if ack != h and (0 < (ack - h) & 0xFFFFFFFF < 0x80000000 if h >= 0 else h == -3):
                return self._slow(direction, seq, flags, payload, ts, ack)
        elif hot[d ^ 1] == -3:
            return self._slow(direction, seq, flags, payload, ts, ack)  # for the timeout
        if payload:
            if seq == hot[d] and not flags & _CTRL:
                n = len(payload)
                hot[d] = (seq + n) & _MASK
                self.bytes_delivered += n
                return self._parser.receive(direction, payload, ts)
        elif not flags & _CTRL:
            return _NO_EVENTS  # pure ACK
        elif flags & 0x07 == 0x01 and seq == hot[d]:  # FIN alone, in order
            return self._bare_fin(direction, seq, ts)
        return self._slow(direction, seq, flags, payload, ts, ack)

    def close(self, ts: float) -> Sequence[E | TcpAnomalyEvent]:
        """Flow expired / evicted: flush what can be flushed (remaining holes as gaps), eof both."""
        if self.closed:
            return _NO_EVENTS
        out: _Out[E] = []
        self._sync()
        for d in _DIRS:
            if not self._half[d].ended:
                self._flush(d, ts, out)
        self._refresh()
        return out

    def handshake(
        self, syn: tuple[int, int, int, float] | None, synack: tuple[int, int, int, float] | None
    ) -> Sequence[E | TcpAnomalyEvent]:
        """Feed a connection's SYN and the server's SYN-ACK, each ``(seq, ack, flags, ts)``
        or None when not seen; returns their events, as ``segment`` would, in that order.

        The pipeline holds both back until the client completes the handshake
        (``mamori.parsers.handshake``) and hands them over to the new flow's
        reassembler. A clean pair on a fresh reassembler (SYN alone, SYN-ACK acking
        the SYN's seq + 1) starts both directions here, with what ``_slow`` would set:
        each direction expects its ISN + 1, both on the fast path, no events. Any other
        pair (flags besides PSH, URG, ECE, CWR; another ACK number; one side missing;
        a reassembler already fed) goes through ``segment``. One connection per
        exchange pays this once per connection.
        """
        if (syn is not None and synack is not None and self.segments == 0
                and syn[2] & 0x17 == TCP_SYN and synack[2] & 0x17 == TCP_SYN | TCP_ACK
                and synack[1] == (syn[0] + 1) & _MASK):
            self.segments = 2
            cseq, sseq = syn[0], synack[0]
            client, server = self._half
            client.started = server.started = True
            client.isn, server.isn = cseq, sseq
            client.next_seq = self._hot[0] = (cseq + 1) & _MASK
            server.next_seq = self._hot[1] = (sseq + 1) & _MASK
            return _NO_EVENTS
        out: _Out[E] = []
        for d, seg in ((Direction.TO_SERVER, syn), (Direction.TO_CLIENT, synack)):
            if seg is not None:
                out.extend(self.segment(d, seg[0], seg[2], b"", seg[3], seg[1]))
        return out

    def _bare_fin(self, d: Direction, seq: int, ts: float) -> Sequence[E]:
        """A FIN without data at the expected seq of a direction on the fast path: it ends.

        What ``_slow`` would do, without its bookkeeping (a connection per exchange
        ends two directions per connection). ``segment`` comes here only when it
        went through its ACK checks without taking the slow path, so the other
        direction is on the fast path or idle: nothing buffered anywhere, no FIN
        of the other side waiting (``_settle``), no ACK to look at (it is not ahead
        of what the other side sent), no cap to enforce. ``d`` itself has nothing
        buffered and no FIN yet (it is hot), so the FIN ends it at once. The
        parser's ``eof`` list is returned as is, like ``receive``'s on the fast path.
        """
        h = self._half[d]
        h.fin = h.next_seq = h.end_seq = seq
        h.ended = True
        self._hot[d] = _IDLE
        return self._parser.eof(d, ts)

    # -- slow path ---------------------------------------------------------

    def _slow(
        self, d: Direction, seq: int, flags: int, payload: bytes, ts: float, ack: int
    ) -> _Out[E]:
        out: _Out[E] = []
        self._sync()
        o = d.reverse
        rst = flags & TCP_RST
        if flags & TCP_SYN and not rst:
            # Before the ACK: a SYN with a new ISN resets the connection, and
            # the ACK then refers to the new one.
            self._on_syn(d, seq, payload, ts, out)
            seq = (seq + 1) & _MASK  # SYN takes one sequence number
        # The ACK first: the sender saw the other side's data before sending
        # this, so that data's events come first.
        if flags & TCP_ACK and ack >= 0 and self._half[o].started and not self._half[o].ended:
            self._on_ack(o, ack, ts, out)
        if self._half[o].buf:
            self._expire(o, ts, out)
        if rst:
            for x in (d, o):
                if not self._half[x].ended:
                    self._flush(x, ts, out)
        elif payload or flags & TCP_FIN:
            if self._half[d].ended:
                self._after_end(d, seq, flags, payload, ts, out)
            else:
                if not self._half[d].started:
                    self._pickup(d, seq, ts, out)
                self._on_data(d, seq, flags, payload, ts, out)
                self._settle(d, ts, out)
        # After this segment's data, which may have filled the hole.
        for x in (o, d):
            if self._half[x].acked is not None:
                self._settle_acked(x, ts, out)
        if self._half[d].buf:
            self._expire(d, ts, out)
        self._refresh()
        return out

    def _sync(self) -> None:
        hot = self._hot
        for d in _DIRS:
            if hot[d] >= 0:
                self._half[d].next_seq = hot[d]

    def _refresh(self) -> None:
        hot = self._hot
        for d in _DIRS:
            h = self._half[d]
            if not h.started or h.ended:
                hot[d] = _IDLE
            elif h.buf or h.fin is not None or h.acked is not None:
                hot[d] = _WATCH
            else:
                hot[d] = h.next_seq

    def _on_ack(self, o: Direction, ack: int, ts: float, out: _Out[E]) -> None:
        """The other side acknowledged ``o`` up to ``ack``: bytes before it we lack are lost."""
        nxt = self._half[o].next_seq
        delta = seq_delta(ack, nxt)
        if delta <= 0:
            return
        fin = self._half[o].fin
        if fin is not None:
            room = seq_delta(fin, nxt)
            if delta == room + 1:
                delta = room  # FIN + 1: everything up to the FIN, and the FIN
            elif delta > room:
                self.bogus_acks += 1  # beyond the end of the stream
                return
        if delta > self._ack_limit:
            self.bogus_acks += 1
            return
        target = (nxt + delta) & _MASK
        if self._ack_grace <= 0:
            self._release_acked(o, target, ts, out)
            return
        pending = self._half[o].acked
        if pending is None:
            self._half[o].acked = (target, ts + self._ack_grace)
        elif seq_delta(target, pending[0]) > 0:
            self._half[o].acked = (target, pending[1])

    def _settle_acked(self, o: Direction, ts: float, out: _Out[E]) -> None:
        """An ACK's grace is over: what is still missing before its target is a gap.

        The grace exists because a SPAN port merges two directions and may show an
        ACK a moment before the data it acknowledges. Data that arrives within the
        grace fills the hole normally; only what is still missing after it is lost.
        """
        pending = self._half[o].acked
        if pending is None:
            return
        target, deadline = pending
        if self._half[o].ended or seq_delta(target, self._half[o].next_seq) <= 0:
            self._half[o].acked = None
        elif ts >= deadline:
            self._half[o].acked = None
            self._release_acked(o, target, ts, out)

    def _release_acked(self, o: Direction, target: int, ts: float, out: _Out[E]) -> None:
        fin = self._half[o].fin
        buf = self._half[o].buf
        while not self._half[o].ended:
            nxt = self._half[o].next_seq
            left = seq_delta(target, nxt)
            if left <= 0:
                break
            if buf and seq_delta(buf[0][0], target) < 0:
                hole = (buf[0][0] - nxt) & _MASK
                self.acked_holes += 1
                self._gap(o, hole, ts, out, "acknowledged, never captured")
                self._half[o].next_seq = buf[0][0]
            else:
                if left == 1 and fin is None and not buf:
                    break  # most likely a FIN we did not capture, see the module doc
                self.acked_holes += 1
                self._gap(o, left, ts, out, "acknowledged, never captured")
                self._half[o].next_seq = target
            self._drain(o, ts, out)

    def _expire(self, d: Direction, ts: float, out: _Out[E]) -> None:
        """Give up holes that have kept data waiting for longer than ``hole_timeout``."""
        while self._half[d].buf and ts - self._half[d].since > self._hole_timeout:
            self.hole_timeouts += 1
            self._skip_hole(d, ts, out, f"hole_timeout {self._hole_timeout:g}s")

    def _anomaly(
        self,
        out: _Out[E],
        ts: float,
        d: Direction,
        kind: TcpAnomaly,
        size: int = 0,
        detail: str = "",
    ) -> None:
        out.append(TcpAnomalyEvent(ts, self.flow, d, kind, size, detail))

    def _start(self, d: Direction, next_seq: int, isn: int | None) -> None:
        self._half[d].started = True
        self._half[d].next_seq = next_seq & _MASK
        self._half[d].isn = isn

    def _on_syn(
        self, d: Direction, seq: int, payload: bytes, ts: float, out: _Out[E]
    ) -> None:
        if not self._half[d].started:
            self._start(d, seq + 1, seq)
            return
        if self._half[d].isn == seq:
            if not payload:
                self.retransmissions += 1  # repeated SYN / SYN-ACK
            return
        # New ISN on a known direction: the 4-tuple was reused. End the old
        # connection first, then mark where the new one starts.
        old = self._half[d].isn
        was = "closed" if self.closed else "open"
        for x in (d, d.reverse):
            if not self._half[x].ended:
                self._flush(x, ts, out)
        self._anomaly(out, ts, d, TcpAnomaly.CONNECTION_REUSED,
                      detail=f"{was} connection, isn {old} -> {seq}")
        for h in self._half:  # rx_ts stays: delivery times never go backwards
            h.started = h.ended = False
            h.isn = h.fin = None
            h.next_seq = h.end_seq = 0
            h.buf = _NO_PIECES
            h.since = math.inf
            h.acked = None  # an ACK of the old connection says nothing of the new
        self._buffered = 0
        self._start(d, seq + 1, seq)

    def _pickup(self, d: Direction, seq: int, ts: float, out: _Out[E]) -> None:
        # No SYN seen: start here. No gap call: the parser has no state yet and
        # resyncs on its own if this is not a PDU boundary.
        self._start(d, seq, None)
        self._anomaly(out, ts, d, TcpAnomaly.MIDSTREAM_PICKUP, detail=f"seq {seq}")

    def _after_end(
        self, d: Direction, seq: int, flags: int, payload: bytes, ts: float, out: _Out[E]
    ) -> None:
        if payload:
            beyond = len(payload)  # ended before it ever started: all of it is late
            if self._half[d].started:
                beyond = seq_delta((seq + len(payload)) & _MASK, self._half[d].end_seq)
            if beyond > 0:
                size = min(beyond, len(payload))
                self._anomaly(out, ts, d, TcpAnomaly.DATA_AFTER_FIN, size,
                              "data after the direction ended")
                return
        self.retransmissions += 1

    def _on_data(
        self, d: Direction, seq: int, flags: int, payload: bytes, ts: float, out: _Out[E]
    ) -> None:
        nxt = self._half[d].next_seq
        start = seq_delta(seq, nxt)
        if not -self._max_jump <= start <= self._max_jump:
            if self._half[d].fin is not None:
                # Ending already; a wild segment is noise beyond the FIN.
                self._anomaly(out, ts, d, TcpAnomaly.DATA_AFTER_FIN, len(payload),
                              f"seq jump {start:+d} after FIN")
                return
            self._jump(d, seq, start, ts, out)
            nxt, start = seq, 0
        if flags & TCP_FIN:
            self._set_fin(d, (seq + len(payload)) & _MASK, not payload, ts, out)
        data = payload
        if data and start < 0:
            self.retransmissions += 1
            if start + len(data) <= 0:
                data = b""
            else:
                data, start = data[-start:], 0  # trim what was already delivered
        fin = self._half[d].fin
        if data and fin is not None:
            room = seq_delta(fin, nxt) - start
            if room < len(data):
                keep = max(room, 0)
                self._anomaly(out, ts, d, TcpAnomaly.DATA_AFTER_FIN, len(data) - keep,
                              "data beyond the FIN")
                data = data[:keep]
        if data:
            if start > 0:
                self.out_of_order += 1
            self._insert(d, (nxt + start) & _MASK, data, ts, out)
        self._drain(d, ts, out)
        if self._buffered > self._max_buffered or (
            len(self._half[0].buf) + len(self._half[1].buf) > self._max_segments
        ):
            self._enforce_caps(d, ts, out)

    def _jump(self, d: Direction, seq: int, delta: int, ts: float, out: _Out[E]) -> None:
        # Desynchronised (missed reuse, injection, corrupt capture): deliver
        # what is buffered, declare an unknown gap and restart at ``seq``.
        self._anomaly(out, ts, d, TcpAnomaly.SEQ_JUMP, abs(delta), f"seq moved {delta:+d}")
        while self._half[d].buf:
            self._skip_hole(d, ts, out)
        self._gap(d, 0, ts, out)
        self._half[d].next_seq = seq

    def _set_fin(
        self, d: Direction, fin: int, bare: bool, ts: float, out: _Out[E]
    ) -> None:
        known = self._half[d].fin
        if known is not None:
            if known != fin:
                self._anomaly(out, ts, d, TcpAnomaly.OVERLAP_MISMATCH,
                              detail=f"second FIN at {fin}, first at {known}")
            elif bare:
                self.retransmissions += 1
            return
        nxt = self._half[d].next_seq
        if seq_delta(fin, nxt) < 0:
            self._anomaly(out, ts, d, TcpAnomaly.OVERLAP_MISMATCH,
                          detail=f"FIN at {fin} inside delivered data")
            return
        self._half[d].fin = fin
        # Buffered data at or beyond the FIN can never be delivered.
        buf = self._half[d].buf
        limit = seq_delta(fin, nxt)
        dropped = 0
        while buf:
            bseq, bdata, bts = buf[-1]
            rel = seq_delta(bseq, nxt)
            if rel + len(bdata) <= limit:
                break
            buf.pop()
            if rel < limit:
                buf.append((bseq, bdata[: limit - rel], bts))
                dropped += rel + len(bdata) - limit
                self._buffered -= rel + len(bdata) - limit
                break
            dropped += len(bdata)
            self._buffered -= len(bdata)
        if dropped:
            self._reset_since(d)
            self._anomaly(out, ts, d, TcpAnomaly.DATA_AFTER_FIN, dropped,
                          "buffered data beyond the FIN")

    def _insert(self, d: Direction, seq: int, data: bytes, ts: float, out: _Out[E]) -> None:
        """Buffer ``data`` at ``seq`` (at or ahead of next); first arrival wins overlaps."""
        half = self._half[d]
        if half.buf is _NO_PIECES:
            half.buf = []  # the direction's own, before anything is put in it
        buf = half.buf
        nxt = half.next_seq

        def rel(piece: _Piece) -> int:
            return (piece[0] - nxt) & _MASK

        s = (seq - nxt) & _MASK
        e = s + len(data)
        i = bisect_right(buf, s, key=rel)
        if i and rel(buf[i - 1]) + len(buf[i - 1][1]) > s:
            i -= 1
        first = i
        cur = s
        keep: list[_Piece] = []
        mismatch = False
        while i < len(buf) and cur < e:
            bs = rel(buf[i])
            bdata = buf[i][1]
            if bs >= e:
                break
            if bs > cur:
                keep.append(((nxt + cur) & _MASK, data[cur - s : bs - s], ts))
            lo, hi = max(cur, bs), min(e, bs + len(bdata))
            if data[lo - s : hi - s] != bdata[lo - bs : hi - bs]:
                mismatch = True
            cur = hi
            i += 1
        if cur < e:
            keep.append(((nxt + cur) & _MASK, data[cur - s :], ts))
        if mismatch:
            self._anomaly(out, ts, d, TcpAnomaly.OVERLAP_MISMATCH,
                          detail=f"overlapping bytes differ near seq {seq}")
        if not keep:
            self.retransmissions += 1  # everything already buffered
            return
        # The new pieces interleave with buf[first:i]; rebuild that slice sorted.
        merged = sorted(buf[first:i] + keep, key=rel)
        buf[first:i] = merged
        self._buffered += sum(len(p[1]) for p in keep)
        if ts < self._half[d].since:
            self._half[d].since = ts

    def _drain(self, d: Direction, ts: float, out: _Out[E]) -> None:
        """Deliver contiguous buffered data; end the direction if its FIN is reached.

        Each piece is delivered at its arrival time, but never earlier than
        data already delivered in ``d`` (see the module doc).
        """
        buf = self._half[d].buf
        nxt = self._half[d].next_seq
        if buf and buf[0][0] == nxt:
            floor = self._half[d].rx_ts
            while buf and buf[0][0] == nxt:
                _, data, pts = buf.pop(0)
                n = len(data)
                self._buffered -= n
                nxt = (nxt + n) & _MASK
                self._half[d].next_seq = nxt
                self.bytes_delivered += n
                if pts > floor:
                    floor = pts
                self._half[d].rx_ts = floor
                out.extend(self._parser.receive(d, data, floor))
            self._reset_since(d)
        if nxt == self._half[d].fin and not self._half[d].ended:
            self._end_direction(d, ts, out)

    def _reset_since(self, d: Direction) -> None:
        buf = self._half[d].buf
        self._half[d].since = min(p[2] for p in buf) if buf else math.inf

    def _enforce_caps(self, d: Direction, ts: float, out: _Out[E]) -> None:
        which = "max_buffered" if self._buffered > self._max_buffered else "max_segments"
        self._anomaly(out, ts, d, TcpAnomaly.BUFFER_CAP, self._buffered, which)
        while self._buffered > self._max_buffered or (
            len(self._half[0].buf) + len(self._half[1].buf) > self._max_segments
        ):
            self._skip_hole(d if self._half[d].buf else d.reverse, ts, out)

    def _skip_hole(self, d: Direction, ts: float, out: _Out[E], why: str = "") -> None:
        """Report the hole before the first buffered piece and deliver from there."""
        first = self._half[d].buf[0][0]
        hole = (first - self._half[d].next_seq) & _MASK
        if hole:
            self._gap(d, hole, ts, out, why)
        self._half[d].next_seq = first
        self._drain(d, ts, out)

    def _gap(self, d: Direction, size: int, ts: float, out: _Out[E], why: str = "") -> None:
        self.gaps += 1
        self.gap_bytes += size
        self._anomaly(out, ts, d, TcpAnomaly.GAP, size, why)
        out.extend(self._parser.gap(d, size, ts))

    def _flush(self, d: Direction, ts: float, out: _Out[E]) -> None:
        """End ``d`` now: buffered data delivered across gaps, hole before FIN reported, eof."""
        while self._half[d].buf and not self._half[d].ended:
            self._skip_hole(d, ts, out)
        if self._half[d].ended:
            return
        fin = self._half[d].fin
        if fin is not None:
            hole = (fin - self._half[d].next_seq) & _MASK
            if hole:
                self._gap(d, hole, ts, out)
            self._half[d].next_seq = fin
        self._end_direction(d, ts, out)

    def _end_direction(self, d: Direction, ts: float, out: _Out[E]) -> None:
        self._half[d].ended = True
        self._half[d].end_seq = self._half[d].next_seq
        out.extend(self._parser.eof(d, ts))

    def _settle(self, d: Direction, ts: float, out: _Out[E]) -> None:
        # A FIN stuck behind a hole is flushed once the other side is done too.
        for x in (d, d.reverse):
            h = self._half[x]
            if not h.ended and h.fin is not None and self._half[x.reverse].ended:
                self._flush(x, ts, out)
