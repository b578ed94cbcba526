"""``DNP3Parser``: link framing, transport reassembly, application decode, pairing.

One parser per TCP connection or UDP conversation, driven through the
``mamori.parsers.stream.StreamParser`` contract. Over UDP every ``receive`` is one
datagram, and a frame cut at the end of a datagram is reported, not carried
over.

Direction: TO_SERVER travels towards the outstation's port, so its frames
should have the link DIR bit set (from the master). A frame that disagrees is
still parsed; ``UNEXPECTED_DIRECTION`` is reported when a direction starts to
disagree, not for every frame. Requests and responses are told apart by their
function code, never by the transport direction.

Pairing: a request waits in ``_outstanding`` keyed by (master link address,
outstation link address, application sequence) until the first fragment of
its response; a response or unsolicited response with CON set waits in
``_confirms`` for the master's CONFIRM. Both tables are capped by
``max_outstanding``; evicting from them reports ``FLOODED`` once per episode.

Memo: with a ``memo.DNP3Memo`` (a ``Pipeline`` hands the same one to all its DNP3
parsers), link frames and application fragments seen before are not decoded again;
what they decode to is a pure function of their bytes (and of ``max_objects`` and
``max_points``, which a kept fragment must match), so the events are the same.
"""

from __future__ import annotations

from mamori.parsers.dnp3.app import NO_RESPONSE_FCS, parse_fragment
from mamori.parsers.dnp3.events import (
    DNP3Anomaly,
    DNP3AnomalyEvent,
    DNP3Event,
    DNP3LinkEvent,
    DNP3Request,
    DNP3Response,
    DNP3Unsolicited,
    is_known_link_function,
    link_function_name,
)
from mamori.parsers.dnp3.link import LinkError, LinkFrame, LinkReader
from mamori.parsers.dnp3.memo import DNP3Memo
from mamori.parsers.dnp3.transport import Problem, TransportReassembler
from mamori.parsers.stream import Direction, FlowId, Transport

_USER_DATA_FUNCTIONS = (3, 4)  # confirmed / unconfirmed user data
_TO_SERVER = Direction.TO_SERVER  # a module constant: an enum member is a slow attribute

# IEEE 1815 lets a device configure fragments larger than the usual 2048 octets
# (suricata-verify's dnp3-max-points trace has an 8201-byte WRITE). The cap is one full
# cycle of transport sequence numbers, 64 segments of 249 bytes: a 65th segment would
# reuse the first one's sequence number, so lost or repeated segments could no longer
# be told apart (Suricata bounds reassembly the same way: too_long_reassembly).
MAX_FRAGMENT = 64 * 249


class DNP3Parser:
    __slots__ = (
        "_confirms",
        "_continuing",
        "_flooded",
        "_links",
        "_max_objects",
        "_max_outstanding",
        "_max_points",
        "_memo",
        "_mismatch",
        "_outstanding",
        "_transport",
        "_udp",
        "flow",
    )

    def __init__(
        self,
        flow: FlowId,
        *,
        max_fragment: int = MAX_FRAGMENT,
        max_pending: int = 16,
        max_pending_bytes: int = 131072,
        max_objects: int = 2048,
        max_points: int = 65536,
        max_buffer: int = 8192,
        max_outstanding: int = 256,
        memo: DNP3Memo | None = None,
    ) -> None:
        self.flow = flow
        self._udp = flow.transport is Transport.UDP
        self._memo = memo
        self._links = (LinkReader(max_buffer, memo), LinkReader(max_buffer, memo))
        self._transport = TransportReassembler(max_fragment, max_pending, max_pending_bytes)
        self._max_objects = max_objects
        self._max_points = max_points
        self._max_outstanding = max(1, max_outstanding)
        # (master, outstation, seq) -> (ts, request fc)
        self._outstanding: dict[tuple[int, int, int], tuple[float, int]] = {}
        # (master, outstation, seq, uns) -> (ts, response fc)
        self._confirms: dict[tuple[int, int, int, bool], tuple[float, int]] = {}
        # (master, outstation) -> request fc of a multi-fragment response in progress
        self._continuing: dict[tuple[int, int], int | None] = {}
        # Bit d set: direction d's frames carry the other direction's DIR bit. An int,
        # not a list of two flags: one object fewer for every connection the flow table
        # keeps (docs/performance.md, the per-direction halves).
        self._mismatch = 0
        self._flooded = False

    # ------------------------------------------------------------ contract

    def receive(self, direction: Direction, data: bytes, ts: float) -> list[DNP3Event]:
        out: list[DNP3Event] = []
        link = self._links[direction]
        for item in link.feed(data):
            if type(item) is LinkFrame:
                self._frame(direction, item, ts, out)
            else:
                self._link_error(direction, item, ts, out)  # type: ignore[arg-type]
        if self._udp:
            error = link.flush()
            if error is not None:
                self._link_error(direction, error, ts, out)
        return out

    def gap(self, direction: Direction, size: int, ts: float) -> list[DNP3Event]:
        buffered = self._links[direction].reset()
        dropped = self._transport.drop_direction(direction)
        detail = f"{size} bytes lost"
        if buffered:
            detail += f"; {buffered} bytes of a partial frame dropped"
        if dropped:
            detail += f"; {len(dropped)} partial fragments dropped"
        return [DNP3AnomalyEvent(ts, self.flow, direction, DNP3Anomaly.GAP, detail=detail)]

    def eof(self, direction: Direction, ts: float) -> list[DNP3Event]:
        out: list[DNP3Event] = []
        error = self._links[direction].flush()
        if error is not None:
            self._link_error(direction, error, ts, out)
        for key, size in self._transport.drop_direction(direction):
            out.append(
                DNP3AnomalyEvent(
                    ts,
                    self.flow,
                    direction,
                    DNP3Anomaly.UNFINISHED_FRAGMENT,
                    (key >> 16) & 0xFFFF,
                    key & 0xFFFF,
                    detail=f"{size} bytes",
                )
            )
        return out

    # ------------------------------------------------------------ internals

    def _link_error(
        self, direction: Direction, error: LinkError, ts: float, out: list[DNP3Event]
    ) -> None:
        out.append(
            DNP3AnomalyEvent(
                ts, self.flow, direction, error.kind, error.src, error.dst, detail=error.detail
            )
        )

    def _frame(
        self, direction: Direction, frame: LinkFrame, ts: float, out: list[DNP3Event]
    ) -> None:
        control = frame.control
        from_master = control >= 0x80  # DIR, the top bit of the one-byte field
        mismatch = from_master is not (direction is _TO_SERVER)
        bit = 1 << direction
        if mismatch != bool(self._mismatch & bit):
            self._mismatch ^= bit
            if mismatch:
                out.append(
                    DNP3AnomalyEvent(
                        ts,
                        self.flow,
                        direction,
                        DNP3Anomaly.UNEXPECTED_DIRECTION,
                        frame.src,
                        frame.dst,
                        detail=f"DIR={int(from_master)}",
                    )
                )
        prm = bool(control & 0x40)
        function = control & 0x0F
        user_data = frame.user_data
        if not (prm and user_data and function in _USER_DATA_FUNCTIONS):
            if not is_known_link_function(prm, function):
                out.append(
                    DNP3AnomalyEvent(
                        ts,
                        self.flow,
                        direction,
                        DNP3Anomaly.UNKNOWN_LINK_FUNCTION,
                        frame.src,
                        frame.dst,
                        detail=f"{'primary' if prm else 'secondary'} function {function}, "
                        f"{len(user_data)} bytes of user data",
                    )
                )
            out.append(
                DNP3LinkEvent(
                    ts,
                    self.flow,
                    direction,
                    frame.src,
                    frame.dst,
                    control,
                    function,
                    link_function_name(prm, function),
                    prm,
                    from_master,
                )
            )
            return
        problems: list[Problem] = []
        key = direction << 32 | frame.src << 16 | frame.dst  # the transport's key
        fragment = self._transport.segment(key, user_data, problems)
        for kind, detail in problems:
            out.append(
                DNP3AnomalyEvent(
                    ts, self.flow, direction, kind, frame.src, frame.dst, detail=detail
                )
            )
        if fragment is not None:
            self._fragment(direction, frame.src, frame.dst, fragment, ts, out)

    def _fragment(
        self,
        direction: Direction,
        src: int,
        dst: int,
        fragment: bytes,
        ts: float,
        out: list[DNP3Event],
    ) -> None:
        memo = self._memo
        # The memo's key leaves out the control byte (FIR, FIN, CON, UNS and the
        # sequence number, which moves on every exchange): the parse does not read
        # it but to store it, so the control of this fragment is taken from its own
        # first byte. Under two bytes there is nothing to keep.
        key = fragment[1:] if memo is not None and len(fragment) > 1 else None
        kept = None if key is None or memo is None else memo.fragments.get(key)
        if (kept is not None and kept[0] == self._max_objects
                and kept[1] == self._max_points):
            app, problems = kept[2], kept[3]
        else:
            found: list[Problem] = []
            app = parse_fragment(fragment, self._max_objects, self._max_points, found)
            problems = tuple(found)
            if key is not None and memo is not None:
                memo.keep_fragment(key, (self._max_objects, self._max_points, app, problems))
        fc = fragment[1] if len(fragment) > 1 else None
        if app is not None:
            fc = app.fc
            control = fragment[0]
            seq = control & 0x0F
            latency: float | None = None
            paired: int | None = None
            cls: type[DNP3Request | DNP3Response | DNP3Unsolicited]
            if fc >= 129:
                latency, paired = self._pair_response(
                    dst, src, seq, control, fc, ts, out, direction
                )
                cls = DNP3Unsolicited if fc == 130 else DNP3Response
            else:
                latency, paired = self._pair_request(
                    src, dst, seq, control, fc, ts, out, direction
                )
                cls = DNP3Request
            out.append(
                cls(
                    ts,
                    self.flow,
                    direction,
                    src,
                    dst,
                    control,
                    seq,
                    fc,
                    app.iin,
                    app.objects,
                    latency,
                    paired,
                )
            )
        for kind, detail in problems:
            out.append(DNP3AnomalyEvent(ts, self.flow, direction, kind, src, dst, fc, detail))

    def _pair_request(
        self,
        master: int,
        outstation: int,
        seq: int,
        control: int,
        fc: int,
        ts: float,
        out: list[DNP3Event],
        direction: Direction,
    ) -> tuple[float | None, int | None]:
        if fc == 0:
            confirmed = self._confirms.pop((master, outstation, seq, bool(control & 0x10)), None)
            if confirmed is None:
                return None, None
            return ts - confirmed[0], confirmed[1]
        if fc not in NO_RESPONSE_FCS:
            key = (master, outstation, seq)
            outstanding = self._outstanding
            outstanding.pop(key, None)
            outstanding[key] = (ts, fc)
            if len(outstanding) > self._max_outstanding:
                self._cap(outstanding, ts, out, direction)
        return None, None

    def _pair_response(
        self,
        master: int,
        outstation: int,
        seq: int,
        control: int,
        fc: int,
        ts: float,
        out: list[DNP3Event],
        direction: Direction,
    ) -> tuple[float | None, int | None]:
        uns = fc == 130
        if control & 0x20:  # CON: the master will confirm this fragment
            confirms = self._confirms
            confirms[(master, outstation, seq, uns)] = (ts, fc)
            if len(confirms) > self._max_outstanding:
                self._cap(confirms, ts, out, direction)
        if uns:
            return None, None
        pair = (master, outstation)
        latency: float | None = None
        paired: int | None
        if control & 0x80:  # FIR: answers the request with this sequence number
            request = self._outstanding.pop((master, outstation, seq), None)
            if request is None:
                paired = None
            else:
                latency, paired = ts - request[0], request[1]
            if len(self._outstanding) <= self._max_outstanding // 2:
                self._flooded = False
        else:
            paired = self._continuing.get(pair)
        if control & 0x40:  # FIN
            self._continuing.pop(pair, None)
        else:
            self._continuing[pair] = paired
            if len(self._continuing) > self._max_outstanding:
                del self._continuing[next(iter(self._continuing))]
        return latency, paired

    def _cap(
        self,
        table: dict[tuple[int, int, int], tuple[float, int]]
        | dict[tuple[int, int, int, bool], tuple[float, int]],
        ts: float,
        out: list[DNP3Event],
        direction: Direction,
    ) -> None:
        """Evict the oldest entry of a table that is over ``max_outstanding``."""
        oldest = next(iter(table))
        del table[oldest]  # type: ignore[arg-type]
        if not self._flooded:
            self._flooded = True
            out.append(
                DNP3AnomalyEvent(
                    ts,
                    self.flow,
                    direction,
                    DNP3Anomaly.FLOODED,
                    oldest[0],
                    oldest[1],
                    detail=f"over {self._max_outstanding} outstanding messages",
                )
            )
