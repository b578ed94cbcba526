"""DNP3 transport function (IEEE 1815 clause 8): segments to application fragments.

Each link frame that carries user data starts with one transport byte::

    FIN (0x80) | FIR (0x40) | SEQ (0x3F)

followed by up to 249 bytes of the application fragment. A fragment starts with
a FIR segment and ends with a FIN segment; the sequence number increases by one
modulo 64 between them. Reassembly is kept per (link source, link destination,
direction), keyed by the int ``direction << 32 | source << 16 | destination``, at
most ``max_pending`` of them at once, ``max_fragment`` bytes each and
``max_pending_bytes`` bytes together (a new or growing fragment that would pass
the total evicts the oldest other ones, reported as FLOODED).

IEEE 1815 lets a device configure its maximum fragment size (2048 octets is only the
usual default; suricata-verify's dnp3-max-points trace carries an 8201-byte WRITE),
so the per-fragment cap is generous (``parser.MAX_FRAGMENT``) and the total is what
bounds memory.
"""

from __future__ import annotations

from mamori.parsers.dnp3.events import DNP3Anomaly

FIN = 0x80
FIR = 0x40
SEQ_MASK = 0x3F

Problem = tuple[DNP3Anomaly, str]


class _Partial:
    """A fragment being reassembled. ``data`` is None while discarding to the next FIR."""

    __slots__ = ("data", "seq")

    def __init__(self, data: bytearray | None, seq: int) -> None:
        self.data = data
        self.seq = seq


class TransportReassembler:
    __slots__ = ("_max_fragment", "_max_pending", "_max_total", "_pending")

    def __init__(self, max_fragment: int, max_pending: int, max_pending_bytes: int = 0) -> None:
        self._max_fragment = max_fragment
        self._max_pending = max(1, max_pending)
        self._max_total = max(max_pending_bytes, max_fragment)
        self._pending: dict[int, _Partial] = {}

    @property
    def pending_bytes(self) -> int:
        return sum(len(p.data) for p in self._pending.values() if p.data is not None)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def segment(self, key: int, segment: bytes, problems: list[Problem]) -> bytes | None:
        """Add one segment; return the fragment it completes, if any."""
        header = segment[0]
        seq = header & SEQ_MASK
        pending = self._pending
        partial = pending.get(key)
        if header & FIR:
            if partial is not None:
                if partial.data is not None:
                    problems.append(
                        (
                            DNP3Anomaly.TRANSPORT_SEQUENCE_ERROR,
                            f"FIR while reassembling; {len(partial.data)} bytes dropped",
                        )
                    )
                del pending[key]
            if header & FIN:
                if len(segment) - 1 > self._max_fragment:
                    problems.append((DNP3Anomaly.REASSEMBLY_TOO_LONG, f"{len(segment) - 1} bytes"))
                    return None
                return segment[1:]
            if len(pending) >= self._max_pending:
                oldest = next(iter(pending))
                dropped = pending.pop(oldest).data
                size = 0 if dropped is None else len(dropped)
                problems.append(
                    (DNP3Anomaly.FLOODED, f"reassembly table full; {size} bytes dropped")
                )
            partial = _Partial(bytearray(segment[1:]), seq)
            pending[key] = partial
            if self._check_size(key, partial, header, problems):
                self._check_total(key, problems)
            return None
        if partial is None:
            problems.append((DNP3Anomaly.FIRST_SEGMENT_MISSING, f"transport seq {seq}"))
            return None
        if partial.data is None:  # discarding after an error, quietly
            if header & FIN:
                del pending[key]
            return None
        if seq != (partial.seq + 1) & SEQ_MASK:
            problems.append(
                (
                    DNP3Anomaly.TRANSPORT_SEQUENCE_ERROR,
                    f"expected seq {(partial.seq + 1) & SEQ_MASK}, got {seq}; "
                    f"{len(partial.data)} bytes dropped",
                )
            )
            self._discard(key, partial, header)
            return None
        partial.data += segment[1:]
        partial.seq = seq
        if not self._check_size(key, partial, header, problems):
            return None
        self._check_total(key, problems)
        if header & FIN:
            del pending[key]
            return bytes(partial.data)
        return None

    def _check_size(
        self, key: int, partial: _Partial, header: int, problems: list[Problem]
    ) -> bool:
        """False (and the fragment discarded) when it grew over the cap."""
        data = partial.data
        if data is not None and len(data) > self._max_fragment:
            problems.append((DNP3Anomaly.REASSEMBLY_TOO_LONG, f"over {self._max_fragment} bytes"))
            self._discard(key, partial, header)
            return False
        return True

    def _check_total(self, key: int, problems: list[Problem]) -> None:
        """Evict the oldest other partial fragments while all of them are over the budget."""
        if len(self._pending) < 2:
            return
        total = self.pending_bytes
        while total > self._max_total:
            oldest = next(k for k in self._pending if k != key)
            dropped = self._pending.pop(oldest).data
            size = 0 if dropped is None else len(dropped)
            total -= size
            problems.append(
                (DNP3Anomaly.FLOODED, f"reassembly over {self._max_total} bytes; {size} dropped")
            )

    def _discard(self, key: int, partial: _Partial, header: int) -> None:
        if header & FIN:
            del self._pending[key]
        else:
            partial.data = None

    def drop_direction(self, direction: int) -> list[tuple[int, int]]:
        """Forget every partial fragment of ``direction``; return (key, bytes) of each.

        Every end of a direction (and every gap) comes here, mostly with nothing
        pending: a connection per exchange ends two directions per connection, so
        the empty table returns at once, without a scan."""
        if not self._pending:
            return []
        dropped = []
        for key in [k for k in self._pending if k >> 32 == direction]:
            data = self._pending.pop(key).data
            if data is not None:
                dropped.append((key, len(data)))
        return dropped
