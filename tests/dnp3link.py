"""DNP3 link frames with correct CRCs, for the tests that build DNP3 traffic by hand.

    0x05 0x64 | length | control | dst (LE) | src (LE) | CRC | 16-byte blocks, each + CRC

(The CRC itself is tested against fixed vectors in ``tests/parsers/test_dnp3.py``.)
"""

from __future__ import annotations

from mamori.parsers.dnp3.crc import crc_bytes


def link_frame(control: int, dst: int, src: int, user: bytes) -> bytes:
    """A link frame carrying ``user`` (the transport and application bytes)."""
    header = bytes([0x05, 0x64, 5 + len(user), control]) + dst.to_bytes(2, "little")
    header += src.to_bytes(2, "little")
    out = header + crc_bytes(header)
    for i in range(0, len(user), 16):
        block = user[i : i + 16]
        out += block + crc_bytes(block)
    return out
