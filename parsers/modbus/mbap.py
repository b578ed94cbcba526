"""MBAP framing: the header layout and the plausibility test used to resync.

Wire layout of one Modbus/TCP ADU (big-endian)::

    0      2      4      6     7    8
    +------+------+------+-----+----+---------------+
    | tid  | pid  | len  |unit | fc | data (len-2)  |
    +------+------+------+-----+----+---------------+
             = 0    2..254 counts unit + fc + data; ADU max 260 bytes

:data:`MBAP_HEADER` unpacks the first eight bytes (including the function
code) in one call. After a malformed header or a gap the parser scans for a
*plausible* header: pid 0, length in range, a function code that could open
this direction's PDU (for responses: an exception to a known function, or to any
function in a length-3 ADU) and, when the buffer reaches past the declared end, a
next header that is itself plausible as far as its bytes are present.
"""

from __future__ import annotations

import struct
from typing import Final

from mamori.parsers.modbus.decoders import FUNCTION_DECODERS

#: tid, pid, length, unit, function code.
MBAP_HEADER: Final = struct.Struct(">HHHBB")
HEADER_SIZE: Final = MBAP_HEADER.size  # 8: MBAP (7) + function code
MIN_LENGTH: Final = 2
MAX_LENGTH: Final = 254
MAX_ADU: Final = 6 + MAX_LENGTH  # 260

_PID_ZERO: Final = b"\x00\x00"
#: Exception function codes (fc | 0x80) a server can plausibly send.
_EXCEPTION_FCS: Final = frozenset(fc | 0x80 for fc in FUNCTION_DECODERS)


def _prefix_plausible(buf: bytes, start: int, end: int, to_client: bool) -> bool:
    """Whether ``buf[start:end]`` (possibly fewer than 8 bytes) can open an MBAP header."""
    available = end - start
    if available >= 3 and buf[start + 2]:
        return False
    if available >= 4 and buf[start + 3]:
        return False
    if available >= 6 and not MIN_LENGTH <= (buf[start + 4] << 8 | buf[start + 5]) <= MAX_LENGTH:
        return False
    if available >= 8:
        fc = buf[start + 7]
        if not (0 < fc < 0x80 or (to_client and _exception_plausible(buf, start, fc))):
            return False
    return True


def _exception_plausible(buf: bytes, start: int, fc: int) -> bool:
    """An exception function code a server can send: to a known function, or to any
    function (1..127) in an ADU of exactly unit + fc + exception code (length 3).

    A server answers a function code it does not implement with ``fc | 0x80`` and
    exception 01 ILLEGAL FUNCTION (Modbus Application Protocol V1.1b3, 7), so
    ``00 00 00 00 00 03 01 a0 01`` (the answer to fc 32 in Zeek's fuzz-72.pcap,
    frame 5) is as plausible a header as any; the length 3 keeps the test narrow.
    """
    if fc in _EXCEPTION_FCS:
        return True
    return fc > 0x80 and buf[start + 4] == 0 and buf[start + 5] == 3


def plausible_header(buf: bytes, start: int, end: int, to_client: bool) -> bool:
    """The header test used to resync, including a look at the following header."""
    if not _prefix_plausible(buf, start, end, to_client):
        return False
    if end - start < HEADER_SIZE:
        return True
    adu_end = start + 6 + (buf[start + 4] << 8 | buf[start + 5])
    return adu_end >= end or _prefix_plausible(buf, adu_end, end, to_client)


def find_header(buf: bytes, start: int, end: int, to_client: bool) -> int:
    """First offset in ``[start, end)`` where a plausible header begins, else ``end``.

    A returned offset with fewer than eight bytes after it is a header prefix
    that more data may confirm or refute; the caller keeps it and waits.
    """
    position = start
    while True:
        zeros = buf.find(_PID_ZERO, position + 2, end)
        if zeros < 0:
            break
        candidate = zeros - 2
        if plausible_header(buf, candidate, end, to_client):
            return candidate
        position = candidate + 1
    # Tail: a pid split across the end of the buffer.
    for candidate in range(max(position, end - 3), end):
        if _prefix_plausible(buf, candidate, end, to_client):
            return candidate
    return end
