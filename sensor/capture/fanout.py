"""One interface, N capture sockets: a ``PACKET_FANOUT`` group with a flow-symmetric hash.

Why fanout: one Python process decodes, reassembles and parses at most one core's
worth of frames. The kernel can split an interface's frames among several packet
sockets itself; with ``PACKET_FANOUT_HASH`` it picks the socket by the flow hash,
which is symmetric (both directions of a TCP connection hash alike), so every
frame of a conversation reaches the same socket and so the same worker process,
and each worker's reassembly and parsing see whole conversations.
``PACKET_FANOUT_FLAG_DEFRAG`` has the kernel reassemble IP fragments before hashing,
so a fragment (which carries no ports) goes where the rest of its datagram goes.

The group id comes from the kernel (``PACKET_FANOUT_FLAG_UNIQUEID``, Linux 4.19):
the first socket asks for a fresh id and the others join it, so two daemons (or a
daemon and tcpdump's fanout) can never end up sharing a group by chance, as an id
derived from the pid and the interface index could.

The ``PACKET_FANOUT`` option value (an int)::

    bits 0-15  group id          bits 16-31  mode | flags
    mode PACKET_FANOUT_HASH = 0; flags DEFRAG = 0x8000, UNIQUEID = 0x2000 (of the mode)
"""

from __future__ import annotations

import struct
import time

from mamori.sensor.capture.live import SOL_PACKET, CaptureError, LiveCapture

PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
_MODE = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
_ARG = struct.Struct("=I")  # the option is an unsigned int: DEFRAG sets its top bit


def join(captures: list[LiveCapture]) -> int:
    """Put the sockets of one interface in a new fanout group; returns its id.

    Each socket must be bound and have its ring already (the kernel refuses to
    join an unbound socket). Until a socket joins, it is a socket of its own and
    gets a copy of every frame, which the group (or the first socket) gets too:
    each socket after the first therefore skips the frames stamped before its join
    (``LiveCapture.skip_before``), so no frame of the start is decoded twice.
    """
    if not captures:
        raise ValueError("a fanout group needs at least one socket")
    first = captures[0]
    sock = first.sock
    try:
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT,
                        _ARG.pack((_MODE | PACKET_FANOUT_FLAG_UNIQUEID) << 16))
        group: int = _ARG.unpack(sock.getsockopt(SOL_PACKET, PACKET_FANOUT, 4))[0] & 0xFFFF
        for cap in captures[1:]:
            # The kernel stamps with the wall clock; read before the join, so every
            # frame skipped was certainly a copy.
            cap.skip_before = time.time()
            cap.sock.setsockopt(SOL_PACKET, PACKET_FANOUT, _ARG.pack(group | _MODE << 16))
    except OSError as err:
        raise CaptureError(f"{first.interface}: cannot share the interface among worker "
                           f"processes (PACKET_FANOUT): {err.strerror or err}") from None
    return group
