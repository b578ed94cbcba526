"""Events as JSON lines, for analysts and for the differential tests.

Each event class is flattened by the function its registration names
(``mamori.parsers.events.EVENTS``: the Modbus and DNP3 packages' own
``event_fields``, and ``mamori.parsers.eventfields`` for TCP reassembly and
pipeline anomalies, connection attempts, ARP and flow MAC pairs); this module
dispatches on the exact class and encodes. One object per line, keys in a
stable order, no NaN, UTF-8.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import IO, Any

from mamori.parsers.events import EVENTS, Event

Fields = dict[str, Any]

_BY_CLASS: dict[type, Callable[[Any], Fields]] = {cls: info.fields for cls, info in EVENTS.items()}


def event_to_dict(event: Event) -> Fields:
    """Flatten any pipeline event to JSON-ready fields."""
    try:
        flatten = _BY_CLASS[type(event)]
    except KeyError:
        raise TypeError(f"no JSON mapping for event type {type(event).__name__}") from None
    return flatten(event)


class JsonLinesWriter:
    """Writes events to an open text stream, one compact JSON object per line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._encode = json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default
        ).encode
        self.written = 0

    def write(self, events: Sequence[Event]) -> None:
        if not events:
            return
        encode = self._encode
        lines = [encode(event_to_dict(event)) for event in events]
        self._stream.write("\n".join(lines) + "\n")
        self.written += len(lines)


def _default(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, tuple | frozenset | set):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
