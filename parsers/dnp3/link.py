"""DNP3 data-link framing (IEEE 1815 clause 9): find frames in a byte stream.

Wire layout of one frame::

    05 64 | LEN | CTRL | DST (le16) | SRC (le16) | CRC (le16)      header, 10 bytes
    up to 16 user-data bytes | CRC (le16)                          block, repeated

``LEN`` counts CTRL + DST + SRC + user data, so user data is ``LEN - 5`` bytes
(``LEN`` >= 5) and a whole frame is at most 292 bytes. CTRL is DIR (0x80),
PRM (0x40), FCB (0x20), FCV/DFC (0x10) and the link function (0x0F).

``LinkReader`` keeps at most one partial frame per direction. Bytes that are
not a frame are skipped up to the next ``05 64``; the first skip after a good
frame is reported, later ones are not until the reader is back in sync, so a
stream of garbage yields one anomaly, not thousands.
"""

from __future__ import annotations

from struct import Struct
from typing import NamedTuple

from mamori.parsers.dnp3.crc import CRC_TABLE16, dnp3_crc
from mamori.parsers.dnp3.events import DNP3Anomaly
from mamori.parsers.dnp3.memo import DNP3Memo

HEADER_SIZE = 10
MAX_FRAME_SIZE = 292
_SYNC = b"\x05\x64"
_HEADER = Struct("<2xBBHHH")
_U16 = Struct("<H")
# The header CRC runs over 05 64 LEN CTRL DST SRC, four little-endian words. The
# first word is the sync itself, so its table step is a constant: the check is
# three lookups on the fields ``_HEADER`` already unpacked.
_SYNC_STEP = CRC_TABLE16[0x6405]
_BLOCK = Struct("<9H")  # one full block: eight words of user data, then its CRC
# The user data of a frame with ``n`` bytes of it, block by block, CRCs skipped: one
# unpack and one join instead of a slice per block.
_USER_DATA = tuple(
    Struct("16s2x" * (n >> 4) + (f"{n & 15}s" if n & 15 else "")) for n in range(251)
)


class LinkFrame(NamedTuple):
    control: int
    dst: int
    src: int
    user_data: bytes  # the user data with the block CRCs removed


class LinkError(NamedTuple):
    kind: DNP3Anomaly
    detail: str
    src: int | None = None
    dst: int | None = None


def frame_size(length: int) -> int:
    """Bytes on the wire of a frame whose LEN field is ``length`` (>= 5)."""
    user = length - 5
    return HEADER_SIZE + user + 2 * ((user + 15) >> 4)


class LinkReader:
    """Frames of one direction. ``feed`` returns frames and link errors, in order.

    With a ``memo`` (``memo.DNP3Memo``), a whole frame whose bytes it holds is taken
    from it, header and block CRCs not checked again: it holds only frames that
    passed them, and its key is the frame's every byte, so a hit decodes exactly as
    the checks would. A frame that misses is checked as usual and, if valid, kept.
    """

    __slots__ = ("_buf", "_desync", "_max_buffer", "_memo")

    def __init__(self, max_buffer: int, memo: DNP3Memo | None = None) -> None:
        self._buf = b""
        self._desync = False
        self._max_buffer = max_buffer
        self._memo = memo

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[LinkFrame | LinkError]:
        buf = self._buf + data if self._buf else bytes(data)
        out: list[LinkFrame | LinkError] = []
        n = len(buf)
        pos = 0
        t = CRC_TABLE16
        memo = self._memo
        frames = None if memo is None else memo.frames
        while pos < n:
            if buf[pos] != 0x05 or n - pos < 2 or buf[pos + 1] != 0x64:
                found = buf.find(_SYNC, pos)
                if found < 0:
                    # keep a trailing 0x05: it may be the first half of a sync
                    end = n - 1 if buf[n - 1] == 0x05 else n
                    if end > pos:
                        self._skip(end - pos, out)
                    pos = end
                    break
                self._skip(found - pos, out)
                pos = found
            if n - pos < HEADER_SIZE:
                break
            key = b""
            if frames is not None:
                # the size LEN says (``frame_size``, inline), unchecked: a key that is a
                # kept frame had a valid header, and any other LEN (below 5 too) misses
                user_size = buf[pos + 2] - 5
                size = HEADER_SIZE + user_size + 2 * ((user_size + 15) >> 4)
                if n - pos >= size:
                    key = buf if size == n else buf[pos : pos + size]
                    kept = frames.get(key)
                    if kept is not None:
                        out.append(kept)
                        pos += size
                        self._desync = False
                        continue
            length, control, dst, src, crc = _HEADER.unpack_from(buf, pos)
            if t[t[t[_SYNC_STEP ^ length ^ control << 8] ^ dst] ^ src] ^ 0xFFFF != crc:
                out.append(LinkError(DNP3Anomaly.BAD_HEADER_CRC, f"LEN {length}"))
                self._desync = True
                pos += 2
                continue
            if length < 5:
                out.append(LinkError(DNP3Anomaly.LENGTH_TOO_SMALL, f"LEN {length}", src, dst))
                self._desync = True
                pos += HEADER_SIZE
                continue
            size = frame_size(length)
            if n - pos < size:
                break
            user = _user_data(buf, pos + HEADER_SIZE, length - 5)
            pos += size
            self._desync = False
            if user is None:
                out.append(LinkError(DNP3Anomaly.BAD_BLOCK_CRC, f"LEN {length}", src, dst))
            else:
                frame = LinkFrame(control, dst, src, user)
                out.append(frame)
                if key and memo is not None:
                    memo.keep_frame(key, frame)
        rest = buf[pos:] if pos < n else b""
        if len(rest) > self._max_buffer:
            out.append(LinkError(DNP3Anomaly.TRUNCATED_FRAME, f"{len(rest)} bytes over buffer cap"))
            self._desync = True
            rest = b""
        self._buf = rest
        return out

    def flush(self) -> LinkError | None:
        """Drop what is buffered (end of datagram or stream) and say what it was."""
        rest, self._buf = self._buf, b""
        if not rest:
            return None
        if rest[:2] == _SYNC or rest == b"\x05":
            return LinkError(DNP3Anomaly.TRUNCATED_FRAME, f"{len(rest)} bytes of a frame")
        if self._desync:
            return None
        self._desync = True
        return LinkError(DNP3Anomaly.NON_DNP3_DATA, f"{len(rest)} bytes")

    def reset(self) -> int:
        """Forget the partial frame after a gap; the next skip is expected, not reported."""
        dropped = len(self._buf)
        self._buf = b""
        self._desync = True
        return dropped

    def _skip(self, count: int, out: list[LinkFrame | LinkError]) -> None:
        if count and not self._desync:
            out.append(LinkError(DNP3Anomaly.NON_DNP3_DATA, f"{count} bytes skipped"))
            self._desync = True


def _user_data(buf: bytes, start: int, size: int) -> bytes | None:
    """The ``size`` bytes of user data in the blocks from ``buf[start]``, or ``None``
    if a block CRC fails (the frame is known to be all in ``buf``).

    A full block is checked in one expression: its eight words unpacked at once,
    each one table step (the CRC starts at 0, so the first step is a plain lookup).
    """
    if size <= 16:
        if size == 0:
            return b""
        end = start + size
        if dnp3_crc(buf, start, end) != _U16.unpack_from(buf, end)[0]:
            return None
        return buf[start:end]
    t = CRC_TABLE16
    pos = start
    block = _BLOCK.unpack_from
    for _ in range(size >> 4):
        a, b, c, d, e, f, g, h, crc = block(buf, pos)
        if t[t[t[t[t[t[t[t[a] ^ b] ^ c] ^ d] ^ e] ^ f] ^ g] ^ h] ^ 0xFFFF != crc:
            return None
        pos += 18
    rest = size & 15
    if rest and dnp3_crc(buf, pos, pos + rest) != _U16.unpack_from(buf, pos + rest)[0]:
        return None
    return b"".join(_USER_DATA[size].unpack_from(buf, start))
