"""Sans-IO reader for capture files: classic pcap and pcapng.

The caller owns the file. It feeds bytes with ``receive`` (any chunking, down to
one byte at a time), takes the complete records with ``records`` (or the fast
``records_tuples``), and calls ``close`` at the end of the input, which tells a
clean end from a truncated one. Nothing here opens a file or reads a clock, so
the same code serves replay, tests and fuzzers.

Damage never hides good data: a corrupt file yields every record before the
damage, and only the *next* call raises ``CaptureFileError``, whose ``offset``
is the byte offset of the bad record or block in the file.

Classic pcap (any of the four magics, both byte orders)::

    global header, 24 bytes
    +------------+-------+-------+----------+---------+---------+--------------+
    | magic  u32 | major | minor | thiszone | sigfigs | snaplen | FCS|linktype |
    +------------+-------+-------+----------+---------+---------+--------------+
    record header, 16 bytes, then incl_len bytes of frame
    +---------+--------------+----------+----------+-----------------
    | ts_sec  | ts_usec/nsec | incl_len | orig_len | frame data ...
    +---------+--------------+----------+----------+-----------------

    magic a1b2c3d4: microseconds, a1b23c4d: nanoseconds (read in either order).
    The last header word holds the link type in its low 16 bits; bit 28 says an
    FCS of ((word >> 29) & 7) 16-bit words ends every frame (``fcs_len``).

pcapng: a stream of blocks, each framed the same way::

    +------------+--------------+------------------------+--------------+
    | type   u32 | total_len u32| body (padded to 4)     | total_len u32|
    +------------+--------------+------------------------+--------------+

    SHB  0x0a0d0d0a  byte-order magic 0x1a2b3c4d, version 1.x, section length
    IDB  1           linktype u16, reserved u16, snaplen u32, options
                     (if_tsresol = 9, if_tsoffset = 14)
    EPB  6           iface u32, ts_high u32, ts_low u32, caplen u32, origlen u32,
                     data, options
    SPB  3           origlen u32, data (interface 0, no timestamp; min(origlen,
                     snaplen) bytes of data must fit the block, as tshark requires)
    PB   2           iface u16, drops u16, ts_high, ts_low, caplen, origlen, data
    anything else (NRB, ISB, DSB, custom, unknown) is skipped.

Each SHB starts a new section with its own byte order and interface list. An
SPB has no timestamp; it gets the timestamp of the previous packet in the file
(0.0 when there is none), which keeps replay time monotonic instead of jumping
to 1970. Frames are numbered from 1 over packet records only, as tshark does.

Timestamps are float seconds, computed in integers and divided once, so ``ts``
is the float nearest to the exact time (Python's int / int rounds correctly).
A float holds about 16 significant digits: a present-day epoch keeps every
microsecond, but a nanosecond capture only to about 0.24 µs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "CaptureFileError",
    "CaptureFileParser",
    "CaptureRecord",
    "RecordTuple",
]

RecordTuple = tuple[float, int, bytes, int]
"""The fast-path record: ``(ts, linktype, data, frame)``."""


class CaptureFileError(Exception):
    """The capture file is damaged or is not a capture file.

    ``offset`` is the byte offset in the file of the record or block at fault.
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """One captured frame.

    ``ts`` is in seconds since the epoch. ``linktype`` is the LINKTYPE_ value of
    the interface the frame came from. ``data`` is the frame as captured
    (``orig_len`` is its length on the wire). ``iface`` is the pcapng interface id
    within its section (0 for pcap). ``frame`` is the 1-based number tshark gives
    it, and ``offset`` the byte offset of its record or block in the file.
    """

    ts: float
    linktype: int
    data: bytes
    orig_len: int
    iface: int
    frame: int
    offset: int


_PCAP_USEC = 0xA1B2C3D4
_PCAP_NSEC = 0xA1B23C4D
_PCAPNG_SHB = 0x0A0D0D0A
_BOM = 0x1A2B3C4D

_U32_LE = struct.Struct("<I")

_BLOCK_NAMES = {
    _PCAPNG_SHB: "section header block",
    1: "interface description block",
    2: "packet block",
    3: "simple packet block",
    4: "name resolution block",
    5: "interface statistics block",
    6: "enhanced packet block",
}


class _Order:
    """The precompiled structs of one byte order."""

    __slots__ = ("block", "epb", "i64", "idb", "opt", "pb", "pcap_global", "pcap_rec", "shb",
                 "spb", "u32")

    def __init__(self, e: str) -> None:
        self.pcap_global = struct.Struct(e + "IHHiIII")
        self.pcap_rec = struct.Struct(e + "IIII")
        self.block = struct.Struct(e + "II")  # type, total length
        self.u32 = struct.Struct(e + "I")
        self.shb = struct.Struct(e + "HHq")  # major, minor, section length
        self.idb = struct.Struct(e + "HHI")  # linktype, reserved, snaplen
        self.epb = struct.Struct(e + "IIIII")  # iface, ts_high, ts_low, caplen, origlen
        self.pb = struct.Struct(e + "HHIIII")  # iface, drops, ts_high, ts_low, caplen, origlen
        self.spb = struct.Struct(e + "I")  # origlen
        self.opt = struct.Struct(e + "HH")  # option code, length
        self.i64 = struct.Struct(e + "q")


_LE = _Order("<")
_BE = _Order(">")

# Parser states.
_MAGIC, _PCAP, _PCAPNG = 0, 1, 2


class CaptureFileParser:
    """Bytes of a pcap or pcapng file in, records out.

    ``max_record`` caps one frame (plus its pcap record header), ``max_block`` one
    pcapng block of any type, ``max_interfaces`` the interfaces of one pcapng
    section, and ``max_buffer`` the bytes that ``receive`` may hold before the
    caller drains them with ``records``. Exceeding a cap is a ``CaptureFileError``.
    """

    __slots__ = (
        "_avail", "_base", "_chunks", "_error", "_fcs_len", "_frame", "_ifaces", "_last_ts",
        "_linktype", "_max_block", "_max_buffer", "_max_interfaces", "_max_record", "_need",
        "_order", "_state", "_tail", "_units",
    )

    def __init__(
        self,
        max_record: int = 262144 + 64,
        max_block: int = 1 << 20,
        max_interfaces: int = 1024,
        max_buffer: int = 64 << 20,
    ) -> None:
        self._max_record = max_record
        self._max_block = max(max_block, max_record + 64)
        self._max_interfaces = max_interfaces
        self._max_buffer = max_buffer
        self._tail = b""  # unparsed bytes, starting at file offset _base
        self._chunks: list[bytes] = []  # received after _tail, not yet joined
        self._avail = 0  # len(_tail) + sum of chunk lengths
        self._need = 4  # _avail below this cannot complete anything
        self._base = 0
        self._state = _MAGIC
        self._order = _LE
        self._linktype = 0
        self._units = 1000000  # pcap timestamp fraction units per second
        self._fcs_len = 0
        # pcapng interfaces of the current section: (linktype, units per second,
        # offset seconds, snaplen).
        self._ifaces: list[tuple[int, int, int, int]] = []
        self._last_ts = 0.0
        self._frame = 0
        self._error: CaptureFileError | None = None

    # -- public --------------------------------------------------------------------

    @property
    def format(self) -> str | None:
        """``"pcap"``, ``"pcapng"``, or ``None`` before the magic has been seen."""
        return {_MAGIC: None, _PCAP: "pcap", _PCAPNG: "pcapng"}[self._state]

    @property
    def frames(self) -> int:
        """Packet records returned so far."""
        return self._frame

    @property
    def fcs_len(self) -> int:
        """Bytes of FCS at the end of every pcap frame, from the header's FCS bits."""
        return self._fcs_len

    def receive(self, data: bytes) -> None:
        """Buffer the next bytes of the file."""
        if not data:
            return
        if self._avail + len(data) > self._max_buffer:
            raise CaptureFileError(
                f"more than {self._max_buffer} bytes buffered at byte {self._base}; "
                "call records() between receive() calls", self._base)
        if type(data) is not bytes:
            data = bytes(data)
        self._chunks.append(data)
        self._avail += len(data)

    def records(self) -> list[CaptureRecord]:
        """Every complete record buffered so far, as ``CaptureRecord`` objects.

        Raises ``CaptureFileError`` once no good record precedes the damage: a
        batch that ends at damage is returned whole and the next call raises.
        """
        out: list[RecordTuple] = []
        extra: list[tuple[int, int, int]] = []
        self._run(out, extra, True)
        return [CaptureRecord(t[0], t[1], t[2], e[0], e[1], t[3], e[2])
                for t, e in zip(out, extra, strict=True)]

    def records_tuples(self) -> list[RecordTuple]:
        """Every complete record buffered so far, as ``(ts, linktype, data, frame)``.

        This is the hot path. Building a frozen dataclass costs about 1 µs, as
        much as reading the record itself; a plain tuple costs a tenth of that.
        """
        out: list[RecordTuple] = []
        self._run(out, [], False)
        return out

    def close(self) -> None:
        """End of input: raise ``CaptureFileError`` unless the file ended cleanly."""
        self._run([], [], False)  # picks up an error that a last records() call did not see
        if self._error is not None:
            raise self._error
        avail, off = self._avail, self._base
        if self._state == _MAGIC:
            if avail == 0:
                raise CaptureFileError("empty file: not a pcap or pcapng file", 0)
            needed = 4 if avail < 4 else 24
            raise CaptureFileError(
                f"truncated file header at byte 0: {needed} bytes needed, {avail} present", 0)
        if avail == 0:
            return
        head = self._head(16)
        if self._state == _PCAP:
            if avail < 16:
                raise CaptureFileError(
                    f"truncated packet record header at byte {off}: 16 bytes needed, "
                    f"{avail} present", off)
            incl = self._order.pcap_rec.unpack_from(head, 0)[2]
            raise CaptureFileError(
                f"truncated packet record at byte {off}: header says {incl} bytes, "
                f"{avail - 16} present", off)
        if avail < 12:
            raise CaptureFileError(
                f"truncated pcapng block header at byte {off}: 12 bytes needed, "
                f"{avail} present", off)
        btype, blen = self._order.block.unpack_from(head, 0)
        if btype == _PCAPNG_SHB:
            bom = _U32_LE.unpack_from(head, 8)[0]
            blen = (_LE if bom == _BOM else _BE).u32.unpack_from(head, 4)[0]
        name = _BLOCK_NAMES.get(btype, f"block of type 0x{btype:x}")
        raise CaptureFileError(
            f"truncated {name} at byte {off}: block length says {blen} bytes, "
            f"{avail} present", off)

    # -- internals -----------------------------------------------------------------

    def _head(self, n: int) -> bytes:
        """The first ``n`` unparsed bytes (fewer if fewer are buffered)."""
        data = self._tail + b"".join(self._chunks)
        self._tail, self._chunks = data, []
        return data[:n]

    def _run(
        self, out: list[RecordTuple], extra: list[tuple[int, int, int]], full: bool,
    ) -> None:
        # Through a local: ``if self._error is not None: raise`` would narrow the
        # attribute to None for the rest of the method, though _fail below sets it,
        # and compiled (mypyc) code checks the narrowed type at the last read.
        error = self._error
        if error is not None:
            raise error
        if self._avail < self._need:
            return
        chunks = self._chunks
        one = not self._tail and len(chunks) == 1
        data = chunks[0] if one else self._tail + b"".join(chunks)
        self._chunks = []
        pos = 0
        if self._state == _MAGIC:
            pos = self._magic(data)
        if self._state == _PCAP and pos >= 0:
            pos = self._pcap(data, pos, out, extra, full)
        elif self._state == _PCAPNG and pos >= 0:
            pos = self._pcapng(data, pos, out, extra, full)
        if pos < 0:  # header incomplete; _need is set
            pos = 0
        self._tail = data[pos:] if pos else data
        self._avail = len(self._tail)
        self._base += pos
        if self._error is not None and not out:
            raise self._error

    def _fail(self, message: str, offset: int) -> None:
        self._error = CaptureFileError(message, offset)
        self._need = 1 << 62

    def _magic(self, data: bytes) -> int:
        """Recognise the file type; return the position after the file header or -1."""
        if len(data) < 4:
            self._need = 4
            return -1
        magic = _U32_LE.unpack_from(data, 0)[0]
        if magic == _PCAPNG_SHB:
            self._state = _PCAPNG
            return 0
        for order in (_LE, _BE):
            magic = order.u32.unpack_from(data, 0)[0]
            if magic in (_PCAP_USEC, _PCAP_NSEC):
                break
        else:
            self._fail("not a pcap or pcapng file", 0)
            return -1
        if len(data) < 24:
            self._need = 24
            return -1
        _, _major, _minor, _zone, _sigfigs, _snaplen, network = order.pcap_global.unpack_from(
            data, 0)
        self._order = order
        self._state = _PCAP
        self._units = 1000000 if magic == _PCAP_USEC else 1000000000
        self._linktype = network & 0xFFFF
        self._fcs_len = ((network >> 29) & 7) * 2 if network & 0x10000000 else 0
        return 24

    def _pcap(
        self, data: bytes, pos: int, out: list[RecordTuple],
        extra: list[tuple[int, int, int]], full: bool,
    ) -> int:
        unpack = self._order.pcap_rec.unpack_from
        end = len(data)
        linktype = self._linktype
        units = self._units
        max_record = self._max_record - 16
        frame = self._frame
        append = out.append
        need = 16
        while end - pos >= 16:
            sec, frac, incl, orig = unpack(data, pos)
            start = pos + 16
            stop = start + incl
            if incl > max_record:
                self._fail(
                    f"packet record at byte {self._base + pos} too large: header says "
                    f"{incl} bytes, the cap is {max_record}", self._base + pos)
                break
            if stop > end:
                need = 16 + incl
                break
            frame += 1
            append(((sec * units + frac) / units, linktype, data[start:stop], frame))
            if full:
                extra.append((orig, 0, self._base + pos))
            pos = stop
        self._frame = frame
        self._need = need if self._error is None else 1 << 62
        return pos

    def _pcapng(
        self, data: bytes, pos: int, out: list[RecordTuple],
        extra: list[tuple[int, int, int]], full: bool,
    ) -> int:
        order = self._order
        block = order.block.unpack_from
        u32 = order.u32.unpack_from
        epb = order.epb.unpack_from
        ifaces = self._ifaces
        end = len(data)
        max_block = self._max_block
        max_record = self._max_record
        frame = self._frame
        append = out.append
        base = self._base
        need = 12
        while end - pos >= 12:
            btype, blen = block(data, pos)
            if btype == _PCAPNG_SHB:
                bom = _U32_LE.unpack_from(data, pos + 8)[0]
                if bom == _BOM:
                    order = _LE
                elif bom == 0x4D3C2B1A:
                    order = _BE
                else:
                    self._fail(f"bad byte-order magic 0x{bom:08x} in section header block "
                               f"at byte {base + pos}", base + pos)
                    break
                block = order.block.unpack_from
                u32 = order.u32.unpack_from
                epb = order.epb.unpack_from
                btype, blen = block(data, pos)
            if blen < 12 or blen & 3 or blen > max_block:
                self._fail(self._bad_len(btype, blen, base + pos), base + pos)
                break
            if end - pos < blen:
                need = blen
                break
            if u32(data, pos + blen - 4)[0] != blen:
                self._fail(
                    f"{_name(btype)} at byte {base + pos}: trailing length "
                    f"{u32(data, pos + blen - 4)[0]} differs from leading length {blen}",
                    base + pos)
                break
            if btype == 6:  # EPB, the common case
                if blen < 32:
                    self._fail(self._bad_len(btype, blen, base + pos), base + pos)
                    break
                ifid, hi, lo, caplen, orig = epb(data, pos + 8)
                if caplen > blen - 32 or caplen > max_record:
                    self._fail(f"enhanced packet block at byte {base + pos}: captured length "
                               f"{caplen} does not fit the block ({blen} bytes) or the cap",
                               base + pos)
                    break
                if ifid >= len(ifaces):
                    self._fail(f"enhanced packet block at byte {base + pos}: interface "
                               f"{ifid} is not defined ({len(ifaces)} in this section)",
                               base + pos)
                    break
                linktype, units, tsoffset, _ = ifaces[ifid]
                ts = ((hi << 32) | lo) / units
                if tsoffset:
                    ts += tsoffset
                frame += 1
                append((ts, linktype, data[pos + 28:pos + 28 + caplen], frame))
                if full:
                    extra.append((orig, ifid, base + pos))
                self._last_ts = ts
            elif btype == _PCAPNG_SHB:
                if not self._shb(data, pos, blen, order):
                    break
                ifaces = self._ifaces
            elif btype == 1:
                if not self._idb(data, pos, blen, order):
                    break
            elif btype == 3 or btype == 2:
                rec = (self._spb(data, pos, blen, order) if btype == 3
                       else self._pb(data, pos, blen, order))
                if rec is None:
                    break
                ts, linktype, frame_data, orig, ifid = rec
                frame += 1
                append((ts, linktype, frame_data, frame))
                if full:
                    extra.append((orig, ifid, base + pos))
                self._last_ts = ts
            pos += blen
        self._order = order
        self._frame = frame
        self._need = need if self._error is None else 1 << 62
        return pos

    def _bad_len(self, btype: int, blen: int, offset: int) -> str:
        return (f"{_name(btype)} at byte {offset}: bad block length {blen} (must be a "
                f"multiple of 4, at least the block's header and at most {self._max_block})")

    def _shb(self, data: bytes, pos: int, blen: int, order: _Order) -> bool:
        offset = self._base + pos
        if blen < 28:
            self._fail(self._bad_len(_PCAPNG_SHB, blen, offset), offset)
            return False
        major, minor, _ = order.shb.unpack_from(data, pos + 12)
        if major != 1:
            self._fail(f"section header block at byte {offset}: unsupported pcapng version "
                       f"{major}.{minor}", offset)
            return False
        self._ifaces = []
        return True

    def _idb(self, data: bytes, pos: int, blen: int, order: _Order) -> bool:
        offset = self._base + pos
        if blen < 20:
            self._fail(self._bad_len(1, blen, offset), offset)
            return False
        if len(self._ifaces) >= self._max_interfaces:
            self._fail(f"interface description block at byte {offset}: more than "
                       f"{self._max_interfaces} interfaces in one section", offset)
            return False
        linktype, _, snaplen = order.idb.unpack_from(data, pos + 8)
        units, tsoffset = 1000000, 0
        opt, stop = pos + 16, pos + blen - 4
        while opt + 4 <= stop:
            code, length = order.opt.unpack_from(data, opt)
            if code == 0:
                break
            value = opt + 4
            if value + length > stop:
                self._fail(f"interface description block at byte {offset}: option {code} "
                           f"of {length} bytes overruns the block", offset)
                return False
            if code == 9 and length >= 1:  # if_tsresol
                resol = data[value]
                units = 1 << (resol & 0x7F) if resol & 0x80 else 10 ** resol
            elif code == 14 and length >= 8:  # if_tsoffset
                tsoffset = order.i64.unpack_from(data, value)[0]
            opt = value + ((length + 3) & ~3)
        self._ifaces.append((linktype, units, tsoffset, snaplen))
        return True

    def _spb(
        self, data: bytes, pos: int, blen: int, order: _Order,
    ) -> tuple[float, int, bytes, int, int] | None:
        offset = self._base + pos
        if blen < 16:
            self._fail(self._bad_len(3, blen, offset), offset)
            return None
        if not self._ifaces:
            self._fail(f"simple packet block at byte {offset}: interface 0 is not defined",
                       offset)
            return None
        linktype, _, _, snaplen = self._ifaces[0]
        orig = order.spb.unpack_from(data, pos + 8)[0]
        caplen = min(orig, snaplen) if snaplen else orig
        if caplen > blen - 16 or caplen > self._max_record:
            self._fail(f"simple packet block at byte {offset}: {caplen} bytes of packet data "
                       f"do not fit the block ({blen} bytes) or the cap", offset)
            return None
        return self._last_ts, linktype, data[pos + 12:pos + 12 + caplen], orig, 0

    def _pb(
        self, data: bytes, pos: int, blen: int, order: _Order,
    ) -> tuple[float, int, bytes, int, int] | None:
        offset = self._base + pos
        if blen < 32:
            self._fail(self._bad_len(2, blen, offset), offset)
            return None
        ifid, _, hi, lo, caplen, orig = order.pb.unpack_from(data, pos + 8)
        if caplen > blen - 32 or caplen > self._max_record:
            self._fail(f"packet block at byte {offset}: captured length {caplen} does not fit "
                       f"the block ({blen} bytes) or the cap", offset)
            return None
        if ifid >= len(self._ifaces):
            self._fail(f"packet block at byte {offset}: interface {ifid} is not defined "
                       f"({len(self._ifaces)} in this section)", offset)
            return None
        linktype, units, tsoffset, _ = self._ifaces[ifid]
        ts = ((hi << 32) | lo) / units + tsoffset
        return ts, linktype, data[pos + 28:pos + 28 + caplen], orig, ifid


def _name(btype: int) -> str:
    return _BLOCK_NAMES.get(btype, f"block of type 0x{btype:x}")
