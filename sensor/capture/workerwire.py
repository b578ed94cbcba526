"""What crosses between a capture worker and the daemon: length-prefixed pickles.

A stream socket pair per worker (``socketpair``), messages framed as::

    0 length (4, little-endian, of the pickle) | 4 pickle protocol 5 ...

Why pickle: the events are frozen slotted dataclasses of ``mamori.parsers``, and
both ends are the same installation, so nothing needs a schema; the stream only
ever joins two processes of one daemon (never a network peer), so unpickling
trusts nothing it would not trust from its own memory.

Why a dispatch table: the default pickling of a frozen slotted dataclass calls its
Python ``__getstate__`` and, on loading, sets every field through
``object.__setattr__`` in Python. ``reducers()`` gives each dataclass of
``mamori.parsers`` whose fields are all ``__init__`` arguments a reducer built of an
``operator.attrgetter`` (C), so dumping is one C call per object and loading one call
of the class. Measured on generated/modbus_big.pcap (120,001 events, batches of 200,
docs/workers.md): dumping 7.1 µs an event by default, 4.5 µs with the table; loading
12.6 µs and 11.0 µs.

The table is also what makes the crossing work at all in the mypyc build the .deb
ships (``make compiled``): a frozen dataclass mypyc compiles to a native class
(``PipelineConfig``, the first message) loads by the default route through the
``__setstate__`` mypyc generates, which assigns each field through the frozen
``__setattr__`` and fails (``FrozenInstanceError``). So every frozen dataclass of
``mamori.parsers`` is in the table, those with a ``__post_init__`` too: loading calls
the class, so their ``__post_init__`` runs again, and in ``mamori.parsers`` it only
checks the values (``PipelineConfig``, ``TcpAnomalyEvent``, ``FieldPolicy``;
tests/sensor/test_workers.py holds the list), which passed once already. A module of
``mamori.parsers`` imported after the channel was made (a lazy import) joins the
table before the next message is sent.

Messages, worker to daemon (tuples, first item the kind)::

    ("batch", watermark, records, counts, stats)  records: (ts, ring entry or None,
                                                  events); counts per interface:
                                                  (frames, bytes, last frame ts)
    ("stopped", last packet ts)                   after "stop": everything is read
    ("finished", events)                          the pipeline's finish(), then EOF

daemon to worker: ("config", ...) first, then ("stop",) and ("finish", ts).
"""

from __future__ import annotations

import copyreg
import dataclasses
import io
import operator
import pickle
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

_LENGTH = struct.Struct("<I")
MAX_MESSAGE = 1 << 30  # a batch is a ring's worth of frames at most; beyond: a broken peer

Reducer = Callable[[Any], tuple[Any, tuple[Any, ...]]]


class ChannelError(Exception):
    """The peer sent what no worker of this installation sends: a broken process."""


def reducers() -> dict[type, Reducer]:
    """A dispatch table for every loaded dataclass of ``mamori.parsers`` that allows it.

    Allows it: all its fields are ``__init__`` arguments (see the module docstring);
    none of ``mamori.parsers`` has another kind (a test checks).
    """
    table: dict[type, Reducer] = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("mamori.parsers") or module is None:
            continue
        for value in vars(module).values():
            if (isinstance(value, type) and dataclasses.is_dataclass(value)
                    and value not in table and _plain(value)):
                table[value] = _reducer(value)
    return table


def _plain(cls: type) -> bool:
    """Rebuildable as ``cls(*fields)``: every field an init argument.

    A ``__post_init__`` runs again on loading: in ``mamori.parsers`` it only checks.
    """
    return all(f.init for f in dataclasses.fields(cls))


def _reducer(cls: type) -> Reducer:
    names = [f.name for f in dataclasses.fields(cls)]
    if not names:  # e.g. EmptyPdu
        return lambda obj: (cls, ())
    if len(names) == 1:
        only = names[0]
        return lambda obj: (cls, (getattr(obj, only),))
    get = operator.attrgetter(*names)
    return lambda obj: (cls, get(obj))


class Channel:
    """One end of a worker's socket pair: ``send`` blocks, ``receive`` buffers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self._ready: deque[tuple[Any, ...]] = deque()
        self._table: dict[type, Any] = {}
        self._modules = -1  # len(sys.modules) when the table was built
        self.sent_bytes = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: tuple[Any, ...]) -> None:
        if len(sys.modules) != self._modules:  # a module imported since: its classes too
            self._modules = len(sys.modules)
            self._table = {**copyreg.dispatch_table, **reducers()}
        out = io.BytesIO()
        out.write(b"\0\0\0\0")
        pickler = pickle.Pickler(out, protocol=5)
        pickler.dispatch_table = self._table
        pickler.dump(message)
        view = out.getbuffer()
        _LENGTH.pack_into(view, 0, len(view) - 4)
        self.sent_bytes += len(view)
        self.sock.sendall(view)
        view.release()

    def fill(self) -> bool:
        """Read what the socket has now (non-blocking); False at end of stream."""
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return True
            except ConnectionError:
                return False
            if not chunk:
                return False
            self._buffer += chunk

    def messages(self) -> list[tuple[Any, ...]]:
        """The whole messages received so far, in order."""
        self._parse()
        found = list(self._ready)
        self._ready.clear()
        return found

    def receive(self, timeout: float | None = None) -> tuple[Any, ...] | None:
        """Block until one message (or end of stream: None); for the worker's side."""
        self._parse()
        self.sock.settimeout(timeout)
        try:
            while not self._ready:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return None
                self._buffer += chunk
                self._parse()
        finally:
            self.sock.setblocking(False)
        return self._ready.popleft()

    def _parse(self) -> None:
        buf = self._buffer
        start = 0
        while len(buf) - start >= 4:
            size = _LENGTH.unpack_from(buf, start)[0]
            if size > MAX_MESSAGE:
                raise ChannelError(f"a message of {size} bytes (at most {MAX_MESSAGE})")
            if len(buf) - start - 4 < size:
                break
            try:
                message = pickle.loads(bytes(buf[start + 4:start + 4 + size]))
            except Exception as err:  # whatever a corrupt pickle raises
                raise ChannelError(f"a message that does not load: {err!r}") from None
            if not isinstance(message, tuple) or not message:
                raise ChannelError(f"a message that is not a tuple: {type(message).__name__}")
            self._ready.append(message)
            start += 4 + size
        if start:
            del buf[:start]

    def close(self) -> None:
        self.sock.close()

