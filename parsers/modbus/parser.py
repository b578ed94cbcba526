"""``ModbusParser``: the sans-IO Modbus/TCP parser for one connection.

It implements :class:`mamori.parsers.stream.StreamParser`. Per direction it keeps
only the bytes of an incomplete ADU (at most ``max_buffer``); a ``receive``
call that holds whole ADUs is parsed in place, without copying into a
buffer. Requests (``TO_SERVER``) are paired with responses by (tid, unit);
at most ``max_outstanding`` requests are remembered. Reaching the cap raises
one ``FLOODED`` anomaly and new requests go untracked until responses or
expiry (``request_timeout`` seconds without a response) drain the table to
half the cap.

Decoding is eager: each PDU is decoded by its function code's decoder
(:mod:`mamori.parsers.modbus.decoders`) as it completes, so malformed content is
reported at once and the events carry finished objects. Given a
:class:`~mamori.parsers.modbus.memo.RequestMemo` (the pipeline shares one among its
connections), a request whose bytes after the MBAP header were seen before takes
the decoded PDU kept there: polling repeats the same requests.

Synchronisation: a header with pid != 0 or a length outside 2..254, or a
call to :meth:`gap`, puts the direction into resync mode. The parser then
discards bytes until a plausible header (:func:`mamori.parsers.modbus.mbap.find_header`)
and reports one ``RESYNC`` anomaly with the number of bytes skipped (0 when
the stream resumed on an ADU boundary). Garbage is never buffered: when
``max_buffer`` bytes were skipped without a header, one ``NON_MODBUS_DATA``
anomaly says so, and the scan goes on.

After a gap the parser is lenient about responses without a request (their
requests may be in the lost bytes): they are still marked ``unsolicited`` but
raise no ``UNSOLICITED_RESPONSE`` until a response pairs again. The same holds
while flooded, since unremembered requests are then expected.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from mamori.parsers.modbus.decoders import (
    REQUEST_DECODERS,
    RESPONSE_DECODERS,
    Decoded,
    Problems,
)
from mamori.parsers.modbus.events import (
    ModbusAnomaly,
    ModbusAnomalyEvent,
    ModbusEvent,
    ModbusRequest,
    ModbusResponse,
)
from mamori.parsers.modbus.mbap import (
    HEADER_SIZE,
    MAX_ADU,
    MAX_LENGTH,
    MBAP_HEADER,
    MIN_LENGTH,
    find_header,
)
from mamori.parsers.modbus.memo import RequestMemo
from mamori.parsers.modbus.pdu import ExceptionPdu, Pdu, RawPdu
from mamori.parsers.modbus.tables import EXCEPTION_NAMES
from mamori.parsers.stream import Direction, FlowId

_UNPACK_HEADER: Final = MBAP_HEADER.unpack_from
_OK: Final[Problems] = ()
_INVALID_FC: Final = ModbusAnomaly.INVALID_FUNCTION_CODE
_NON_MODBUS: Final = ModbusAnomaly.NON_MODBUS_DATA
_TO_SERVER: Final = Direction.TO_SERVER


class _Side:
    """Framing state of one direction."""

    __slots__ = ("overflow_reported", "pending", "resync", "skipped")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pending = b""  # start of an incomplete ADU (or header prefix)
        self.resync = False  # scanning for a plausible header
        self.skipped = 0  # bytes discarded in the current resync
        self.overflow_reported = False  # NON_MODBUS_DATA sent for this resync


class ModbusParser:
    """Modbus/TCP parser for one connection; see the module docstring."""

    __slots__ = (
        "_expiry_due",
        "_flooded",
        "_lenient",
        "_max_buffer",
        "_max_outstanding",
        "_memo",
        "_memo_span",
        "_outstanding",
        "_queued",
        "_request_timeout",
        "_reused",
        "_sides",
        "flow",
    )

    def __init__(
        self,
        flow: FlowId,
        *,
        max_outstanding: int = 500,
        max_buffer: int = 4096,
        request_timeout: float = 60.0,
        memo: RequestMemo | None = None,
    ) -> None:
        if max_outstanding < 1:
            raise ValueError("max_outstanding must be at least 1")
        if max_buffer < MAX_ADU + HEADER_SIZE:
            raise ValueError(f"max_buffer must be at least {MAX_ADU + HEADER_SIZE}")
        self.flow = flow
        self._max_outstanding = max_outstanding
        self._max_buffer = max_buffer
        self._request_timeout = request_timeout
        # Decoded requests shared with other connections (mamori.parsers.modbus.memo);
        # _memo_span: the longest ADU whose key (fc + data) the memo keeps, 0 without one.
        self._memo = memo
        self._memo_span = 7 + memo.max_key if memo is not None else 0
        self._sides = (_Side(), _Side())
        self._outstanding: dict[int, ModbusRequest] = {}  # key: tid << 8 | unit
        # Requests that reused an outstanding (tid, unit), answered in order after it.
        self._reused: dict[int, deque[ModbusRequest]] = {}
        self._queued = 0
        self._expiry_due = float("-inf")  # no request can expire before this time
        self._flooded = False
        self._lenient = False

    # StreamParser ----------------------------------------------------------------

    def receive(self, direction: Direction, data: bytes, ts: float) -> list[ModbusEvent]:
        """Parse the next in-order bytes of ``direction``."""
        index: int = direction  # unboxed: compiled, a tuple index by the IntEnum is generic
        side = self._sides[index]
        out: list[ModbusEvent] = []
        if type(data) is not bytes:
            data = bytes(data)
        if not side.pending:
            self._feed(side, direction, data, ts, out)
            return out
        # An ADU was split: join the remainder with the new bytes, never more
        # than max_buffer at a time.
        while data:
            room = self._max_buffer - len(side.pending)
            chunk, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
            self._feed(side, direction, side.pending + chunk, ts, out)
        return out

    def gap(self, direction: Direction, size: int, ts: float) -> list[ModbusEvent]:
        """``size`` bytes of ``direction`` were lost: drop the partial ADU and resync."""
        side = self._sides[direction]
        detail = f"{size} bytes lost"
        if side.pending:
            detail += f", {len(side.pending)} buffered bytes dropped"
        side.pending = b""
        side.resync = True
        if direction is Direction.TO_CLIENT:
            # The responses to the outstanding requests may be among the lost bytes.
            self._outstanding.clear()
            self._reused.clear()
            self._queued = 0
            self._flooded = False
        self._lenient = True
        return [self._anomaly(ts, direction, ModbusAnomaly.GAP, None, None, None, detail)]

    def eof(self, direction: Direction, ts: float) -> list[ModbusEvent]:
        """``direction`` ended: report a partial ADU and unreported garbage, then reset."""
        side = self._sides[direction]
        out: list[ModbusEvent] = []
        pending = side.pending
        if pending:
            tid = unit = fc = None
            if len(pending) >= HEADER_SIZE:
                tid, _, _, unit, fc = _UNPACK_HEADER(pending)
            detail = f"{len(pending)} bytes of an incomplete ADU"
            out.append(
                self._anomaly(ts, direction, ModbusAnomaly.TRUNCATED, tid, unit, fc, detail)
            )
        if side.resync and side.skipped and not side.overflow_reported:
            detail = f"{side.skipped} bytes without a plausible MBAP header before the end"
            out.append(
                self._anomaly(ts, direction, _NON_MODBUS, None, None, None, detail)
            )
        side.reset()
        return out

    def buffered(self, direction: Direction) -> int:
        """Bytes held for ``direction`` (never more than ``max_buffer``)."""
        return len(self._sides[direction].pending)

    @property
    def outstanding(self) -> int:
        """Requests waiting for a response."""
        return len(self._outstanding)

    # Framing -----------------------------------------------------------------------

    def _feed(
        self, side: _Side, direction: Direction, buf: bytes, ts: float, out: list[ModbusEvent]
    ) -> None:
        """Parse every whole ADU in ``buf``; keep the incomplete tail in ``side.pending``."""
        end = len(buf)
        position = 0
        if side.resync:
            position = self._resync(side, direction, buf, 0, ts, out)
        request = direction is _TO_SERVER
        # Declared: the unpacked header is Any to mypy, and mypyc would keep it generic.
        tid: int
        pid: int
        length: int
        unit: int
        fc: int
        while not side.resync and end - position >= HEADER_SIZE:
            tid, pid, length, unit, fc = _UNPACK_HEADER(buf, position)
            if pid or length < MIN_LENGTH or length > MAX_LENGTH:
                out.append(self._bad_header(ts, direction, tid, pid, length, unit, fc))
                side.resync = True
                position = self._resync(side, direction, buf, position + 1, ts, out)
                continue
            adu_end = position + 6 + length
            if adu_end > end:
                break
            if request:
                self._request(ts, tid, unit, fc, buf, position, adu_end, out)
            else:
                self._response(ts, tid, unit, fc, buf[position + HEADER_SIZE : adu_end], out)
            position = adu_end
        side.pending = buf[position:] if position < end else b""

    def _resync(
        self,
        side: _Side,
        direction: Direction,
        buf: bytes,
        start: int,
        ts: float,
        out: list[ModbusEvent],
    ) -> int:
        """Skip to the next plausible header; leave resync mode once a whole header is seen."""
        end = len(buf)
        found = find_header(buf, start, end, bool(direction))
        side.skipped += found - start
        if end - found >= HEADER_SIZE:
            detail = f"skipped {side.skipped} bytes"
            out.append(self._anomaly(ts, direction, ModbusAnomaly.RESYNC, None, None, None, detail))
            side.resync = False
            side.skipped = 0
            side.overflow_reported = False
        elif side.skipped >= self._max_buffer and not side.overflow_reported:
            detail = f"{side.skipped} bytes without a plausible MBAP header"
            out.append(
                self._anomaly(ts, direction, _NON_MODBUS, None, None, None, detail)
            )
            side.overflow_reported = True
        return found

    def _bad_header(
        self, ts: float, direction: Direction, tid: int, pid: int, length: int, unit: int, fc: int
    ) -> ModbusAnomalyEvent:
        if pid:
            kind, detail = ModbusAnomaly.INVALID_PROTOCOL_ID, f"protocol id {pid}"
        elif length < MIN_LENGTH:
            kind, detail = ModbusAnomaly.INVALID_LENGTH, f"length {length}"
        else:
            kind, detail = ModbusAnomaly.ADU_TOO_LONG, f"length {length} (ADU {length + 6} bytes)"
        return self._anomaly(ts, direction, kind, tid, unit, fc, detail)

    # Messages ------------------------------------------------------------------------

    def _request(
        self, ts: float, tid: int, unit: int, fc: int, buf: bytes, position: int, adu_end: int,
        out: list[ModbusEvent],
    ) -> None:
        """The request ADU ``buf[position:adu_end]``; its PDU from the memo when kept there."""
        if adu_end - position <= self._memo_span:
            memo = self._memo
            assert memo is not None
            wire = buf[position + 7 : adu_end]  # fc + data
            decoded = memo.get(wire)
            if decoded is None:
                decoded = _decode_request(fc, buf[position + HEADER_SIZE : adu_end])
                memo.put(wire, decoded)
        else:
            decoded = _decode_request(fc, buf[position + HEADER_SIZE : adu_end])
        pdu, sub, address, quantity, problems = decoded
        request = ModbusRequest(ts, self.flow, tid, unit, fc, sub, address, quantity, pdu)
        out.append(request)
        if problems:
            self._problems(ts, Direction.TO_SERVER, tid, unit, fc, problems, out)
        key = tid << 8 | unit
        outstanding = self._outstanding
        if ts > self._expiry_due:
            self._expire(ts)
        if key in outstanding:
            out.append(
                self._anomaly(
                    ts, Direction.TO_SERVER, ModbusAnomaly.TID_REUSE, tid, unit, fc,
                    f"tid {tid} unit {unit} still outstanding (fc {outstanding[key].fc})",
                )
            )
            # Servers answer in order: queue it behind the outstanding one.
            if self._queued < self._max_outstanding:
                self._reused.setdefault(key, deque()).append(request)
                self._queued += 1
        elif self._flooded:
            pass
        elif len(outstanding) < self._max_outstanding:
            outstanding[key] = request
        else:
            self._flooded = True
            out.append(
                self._anomaly(
                    ts, Direction.TO_SERVER, ModbusAnomaly.FLOODED, tid, unit, fc,
                    f"{len(outstanding)} requests outstanding; not tracking new ones",
                )
            )

    def _response(
        self, ts: float, tid: int, unit: int, fc: int, data: bytes, out: list[ModbusEvent]
    ) -> None:
        key = tid << 8 | unit
        request = self._outstanding.pop(key, None)
        if self._reused and request is not None and key in self._reused:
            queue = self._reused[key]
            self._outstanding[key] = queue.popleft()
            self._queued -= 1
            if not queue:
                del self._reused[key]
        base = fc & 0x7F
        request_fc = request.fc if request is not None else -1  # one attribute load
        exception: int | None = None
        pdu: Pdu
        if fc < 0x80:
            decoder = RESPONSE_DECODERS.get(fc)
            if decoder is not None:
                paired_pdu = request.pdu if request is not None and request_fc == fc else None
                pdu, sub, address, quantity, problems = decoder(data, paired_pdu)
            else:
                pdu, sub, address, quantity = RawPdu(data), None, None, None
                problems = _OK if fc else ((_INVALID_FC, "response function code 0"),)
        else:
            pdu, exception, problems = _exception(base, data)
            sub = address = quantity = None
        if request is None:
            response = ModbusResponse(
                ts, self.flow, tid, unit, base, sub, address, quantity, pdu, exception, None, True
            )
            out.append(response)
            if not (self._lenient or self._flooded):
                out.append(
                    self._anomaly(
                        ts, Direction.TO_CLIENT, ModbusAnomaly.UNSOLICITED_RESPONSE,
                        tid, unit, base, f"no request outstanding for tid {tid} unit {unit}",
                    )
                )
        else:
            self._lenient = False
            if self._flooded and len(self._outstanding) <= self._max_outstanding >> 1:
                self._flooded = False
            if request_fc == base:
                if sub is None:
                    sub = request.sub
                if address is None:
                    address = request.address
                if quantity is None:
                    quantity = request.quantity
            else:
                problems += (
                    (
                        ModbusAnomaly.VALUE_MISMATCH,
                        f"response function code {base} to request function code {request_fc}",
                    ),
                )
            out.append(
                ModbusResponse(
                    ts, self.flow, tid, unit, base, sub, address, quantity, pdu, exception,
                    ts - request.ts, False,
                )
            )
        if problems:
            self._problems(ts, Direction.TO_CLIENT, tid, unit, base, problems, out)

    def _expire(self, ts: float) -> None:
        """Forget requests older than ``request_timeout`` (oldest first).

        Servers leave some requests unanswered (broadcasts, busy devices);
        without expiry they would fill the table and stop pairing for good.
        """
        outstanding = self._outstanding
        deadline = ts - self._request_timeout
        expired = []
        for key, request in outstanding.items():
            if request.ts >= deadline:
                break
            expired.append(key)
        for key in expired:
            del outstanding[key]
            queue = self._reused.pop(key, None)
            if queue:
                self._queued -= len(queue)
        oldest = next(iter(outstanding.values()), None)
        self._expiry_due = (ts if oldest is None else oldest.ts) + self._request_timeout
        if self._flooded and len(outstanding) <= self._max_outstanding >> 1:
            self._flooded = False

    # Helpers -------------------------------------------------------------------------

    def _anomaly(
        self,
        ts: float,
        direction: Direction,
        kind: ModbusAnomaly,
        tid: int | None,
        unit: int | None,
        fc: int | None,
        detail: str,
    ) -> ModbusAnomalyEvent:
        return ModbusAnomalyEvent(ts, self.flow, direction, kind, tid, unit, fc, detail)

    def _problems(
        self,
        ts: float,
        direction: Direction,
        tid: int,
        unit: int,
        fc: int,
        problems: Problems,
        out: list[ModbusEvent],
    ) -> None:
        flow = self.flow
        for kind, detail in problems:
            out.append(ModbusAnomalyEvent(ts, flow, direction, kind, tid, unit, fc, detail))


def _decode_request(fc: int, data: bytes) -> Decoded:
    """What a request's PDU decodes to: a pure function of ``fc`` and ``data``."""
    decoder = REQUEST_DECODERS.get(fc)
    if decoder is not None:
        return decoder(data)
    problems = _OK if 0 < fc < 0x80 else ((_INVALID_FC, f"request function code {fc}"),)
    return RawPdu(data), None, None, None, problems


def _exception(base: int, data: bytes) -> tuple[Pdu, int, Problems]:
    """Decode an exception response (function code with 0x80 set)."""
    problems: Problems = _OK
    if base == 0:
        problems = ((_INVALID_FC, "exception response to function code 0"),)
    if not data:
        detail = "exception response without an exception code"
        return RawPdu(data), 0, (*problems, (ModbusAnomaly.MALFORMED_PDU, detail))
    code = data[0]
    if code not in EXCEPTION_NAMES:
        problems += ((ModbusAnomaly.INVALID_EXCEPTION_CODE, f"exception code {code}"),)
    if len(data) > 1:
        problems += ((ModbusAnomaly.MALFORMED_PDU, f"{len(data) - 1} trailing bytes"),)
    return ExceptionPdu(code), code, problems
