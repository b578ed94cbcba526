"""``RequestMemo``: the decoded part of request PDUs seen before, bounded.

Why: a Modbus master polls. The same few requests (read 10 holding registers
from 0, read 16 coils from 100, ...) go out again and again, byte for byte
except for the transaction id, so decoding each one anew builds the same PDU
object, the same lifted fields and the same problems every time. The memo keeps
what the decoder returned for the bytes of the PDU and hands it out again; the
event built around it still gets its own time, transaction id, unit and flow.

Why it is exact: a request decoder (``mamori.parsers.modbus.decoders``) is a
pure function of the function code and the data bytes, with no parser state,
and what it returns is immutable (a frozen PDU, ints, a tuple of
``(ModbusAnomaly, str)``), so a shared answer is indistinguishable from a fresh
one. The key is those bytes as they are on the wire::

    MBAP header (7)           key: fc(1) data(length - 2)
    +-----+-----+-----+------+----+----------------------+
    | tid | pid | len | unit | fc | data                 |
    +-----+-----+-----+------+----+----------------------+

Bounds: keys longer than ``max_key`` bytes are not kept (write requests carry
values, which rarely repeat, and a long key costs its hash), and at most
``max_entries`` answers are: a memo that is full is emptied and starts over,
which costs nothing per lookup (no recency to keep), keeps a stable poll set's
hit rate and cannot be pinned by a burst of one-off requests. The pipeline
keeps one memo for all its Modbus connections (``Pipeline.request_memo``), so
the footprint does not grow with the number of flows.
"""

from __future__ import annotations

from mamori.parsers.modbus.decoders import Decoded

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_KEY = 32  # fc + 31 data bytes: every read, single write, diagnostics, MEI


class RequestMemo:
    """Decoded request PDUs by their wire bytes (fc + data); see the module docstring.

    Counters for sensor health: ``hits`` and ``misses`` (lookups of keys short
    enough to keep) and ``resets`` (times the memo was full and emptied).
    """

    __slots__ = ("_entries", "hits", "max_entries", "max_key", "misses", "resets")

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_key: int = DEFAULT_MAX_KEY) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_key < 1:
            raise ValueError("max_key must be at least 1")
        self.max_entries = max_entries
        self.max_key = max_key
        self._entries: dict[bytes, Decoded] = {}
        self.hits = 0
        self.misses = 0
        self.resets = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Decoded | None:
        """The answer kept for ``key``, else None (the caller decodes and ``put``s it)."""
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: bytes, decoded: Decoded) -> None:
        """Keep ``decoded`` for ``key`` (the caller has checked ``len(key) <= max_key``)."""
        entries = self._entries
        if len(entries) >= self.max_entries:
            entries.clear()
            self.resets += 1
        entries[key] = decoded
