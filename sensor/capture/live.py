"""Passive live capture on Linux: AF_PACKET with a TPACKET_V3 ring and a port filter.

Why a ring: a Python loop cannot afford one system call per frame. With
TPACKET_V3 the kernel fills blocks of frames in a memory-mapped ring and we walk
each block in user space, then hand it back: one ``poll`` per block, not per frame,
and timestamps come from the kernel for free.

Why this is passive by construction: the socket is only ever read. Nothing in
this module calls ``send``; ``PACKET_IGNORE_OUTGOING`` (and a check of the packet
type) also keeps frames *leaving* the host out, which on ``lo`` would otherwise
show every frame twice (the outgoing copy and the host copy).

Kernel drop counters come from ``PACKET_STATISTICS``; they reset on every read,
so ``stats()`` accumulates them.

Ring block layout (``struct tpacket_block_desc`` with ``tpacket_hdr_v1``)::

    0 version | 4 offset_to_priv | 8 block_status | 12 num_pkts
    16 offset_to_first_pkt | 20 blk_len | 24 seq_num(8) | 32 ts_first | 40 ts_last

Frame header (``struct tpacket3_hdr``), then ``sockaddr_ll`` at 48::

    0 tp_next_offset | 4 tp_sec | 8 tp_nsec | 12 tp_snaplen | 16 tp_len
    20 tp_status | 24 tp_mac(2) | 26 tp_net(2) | 28 rxhash | 32 vlan_tci | 36 vlan_tpid
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import socket
import struct
from dataclasses import dataclass

from mamori.sensor.capture import bpf

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_PROMISC = 1
TPACKET_V3 = 2
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4

LINKTYPE_ETHERNET = 1

_BLOCK = struct.Struct("=IIIIII")  # version, offset_to_priv, status, num_pkts, first, blk_len
_FRAME = struct.Struct("=IIIIIIHH")  # next, sec, nsec, snaplen, len, status, mac, net
_VLAN = struct.Struct("=I")
_STATUS = struct.Struct("=I")
_STATS_V3 = struct.Struct("=III")
_SEQ = struct.Struct("=Q")
_PKTTYPE_OFFSET = 48 + 10


class CaptureError(Exception):
    """The interface cannot be captured on (absent, no permission, no ring)."""


@dataclass(frozen=True, slots=True)
class CaptureStats:
    interface: str
    received: int  # frames the kernel passed the filter and queued for us
    dropped: int  # frames the kernel dropped because the ring was full
    frozen: int  # times the ring filled up (TPACKET_V3 queue freezes)


Frame = tuple[float, int, bytes, int]  # ts, linktype, data, frame number


class LiveCapture:
    """One interface, read-only. ``read()`` returns the frames available now."""

    def __init__(self, interface: str, ports: frozenset[int], *, block_size: int = 1 << 20,
                 block_count: int = 64, block_timeout_ms: int = 100,
                 promiscuous: bool = True, user_filter: list[bpf.Instruction] | None = None
                 ) -> None:
        self.interface = interface
        self.block_timeout_ms = block_timeout_ms
        self._received = 0
        self._dropped = 0
        self._frozen = 0
        self._frames = 0
        self._block = 0
        self.skip_before = 0.0  # frames stamped earlier are copies (capture/fanout.py)
        try:
            program = bpf.port_filter(ports, user_filter)
        except ValueError as err:
            raise CaptureError(f"{interface}: {err}") from None
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError as err:
            raise CaptureError(f"{interface}: opening a packet socket needs CAP_NET_RAW "
                               f"({err.strerror})") from None
        try:
            self._setup(program, block_size, block_count, block_timeout_ms, promiscuous)
        except OSError as err:
            self._sock.close()
            raise CaptureError(f"{interface}: {err.strerror or err}") from None

    def _setup(self, program: list[bpf.Instruction], block_size: int, block_count: int,
               block_timeout_ms: int, promiscuous: bool) -> None:
        sock = self._sock
        # Filter before bind, so no unfiltered frame is queued in between.
        bpf.attach(sock, program)
        # Older kernels lack it: outgoing frames are then dropped by packet type in read().
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.bind((self.interface, ETH_P_ALL))
        self.ifindex = socket.if_nametoindex(self.interface)
        if promiscuous:
            mreq = struct.pack("iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frame_size = 2048
        req = struct.pack("=IIIIIII", block_size, block_count, frame_size,
                          block_size * block_count // frame_size, block_timeout_ms, 0, 0)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._block_size = block_size
        self._block_count = block_count
        self._ring = mmap.mmap(sock.fileno(), block_size * block_count, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR)

    @classmethod
    def adopt(cls, interface: str, fd: int, block_size: int, block_count: int,
              block_timeout_ms: int, skip_before: float = 0.0) -> LiveCapture:
        """A capture on a socket another process opened and set up (a worker's).

        The socket came with its filter, ring and fanout membership; only the mapping
        of the ring is made here (no privilege is needed for that). ``resync`` finds
        the block to read next, which a worker that died before may have left anywhere.
        """
        self = cls.__new__(cls)
        self.interface = interface
        self.block_timeout_ms = block_timeout_ms
        self.skip_before = skip_before
        self._received = self._dropped = self._frozen = self._frames = self._block = 0
        self._sock = socket.socket(fileno=fd)
        self.ifindex = socket.if_nametoindex(interface)
        self._block_size = block_size
        self._block_count = block_count
        self._ring = mmap.mmap(fd, block_size * block_count, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLERR)
        self.resync()
        return self

    @property
    def geometry(self) -> tuple[int, int]:
        """(block size, block count) of the ring, for ``adopt`` in another process."""
        return self._block_size, self._block_count

    def resync(self) -> None:
        """Point at the block the kernel hands over next.

        Blocks are handed over in sequence-number order (``seq_num`` at 24). The next
        to read is the oldest block owned by user space; when there is none, the
        block the kernel has open, which carries the highest number (blocks given
        back keep their old one).
        """
        ring = self._ring
        user: list[tuple[int, int]] = []
        newest = (-1, 0)
        for index in range(self._block_count):
            base = index * self._block_size
            status = _STATUS.unpack_from(ring, base + 8)[0]
            seq = _SEQ.unpack_from(ring, base + 24)[0]
            if status & TP_STATUS_USER:
                user.append((seq, index))
            newest = max(newest, (seq, index))
        self._block = min(user)[1] if user else newest[1]

    @property
    def sock(self) -> socket.socket:
        """The packet socket (for ``mamori.sensor.capture.fanout`` and the workers)."""
        return self._sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, timeout_ms: int = 0) -> list[Frame]:
        """Frames of every block the kernel has handed over; waits up to ``timeout_ms``."""
        ring = self._ring
        frames: list[Frame] = []
        base = self._block * self._block_size
        idle = not _STATUS.unpack_from(ring, base + 8)[0] & TP_STATUS_USER
        if idle and timeout_ms and not self._poll.poll(timeout_ms):
            return frames
        while True:
            base = self._block * self._block_size
            _, _, status, count, first, _ = _BLOCK.unpack_from(ring, base)
            if not status & TP_STATUS_USER:
                break
            offset = base + first
            for _ in range(count):
                nxt, sec, nsec, snaplen, _length, fstatus, mac, _net = _FRAME.unpack_from(
                    ring, offset)
                if ring[offset + _PKTTYPE_OFFSET] != PACKET_OUTGOING:
                    data = ring[offset + mac: offset + mac + snaplen]
                    if fstatus & TP_STATUS_VLAN_VALID:
                        data = _retag(data, _VLAN.unpack_from(ring, offset + 32)[0])
                    self._frames += 1
                    frames.append((sec + nsec / 1e9, LINKTYPE_ETHERNET, data, self._frames))
                offset += nxt
            _STATUS.pack_into(ring, base + 8, TP_STATUS_KERNEL)
            self._block = (self._block + 1) % self._block_count
        if self.skip_before and frames:
            frames = self._skip_copies(frames)
        return frames

    def _skip_copies(self, frames: list[Frame]) -> list[Frame]:
        """Drop the frames stamped before this socket joined its fanout group.

        Only the first reads after the join have any; once a frame stamped after the
        join is read, the check is off for good (the hot loop never sees it).
        """
        since = self.skip_before
        kept = [f for f in frames if f[0] >= since]
        if kept:
            self.skip_before = 0.0
        return kept

    def stats(self) -> CaptureStats:
        """Cumulative kernel counters (the kernel resets its own on every read)."""
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
        packets, drops, frozen = _STATS_V3.unpack(raw)
        self._received += packets
        self._dropped += drops
        self._frozen += frozen
        return CaptureStats(self.interface, self._received, self._dropped, self._frozen)

    def close(self) -> None:
        with contextlib.suppress(AttributeError, ValueError):
            self._ring.close()
        self._sock.close()


def _retag(data: bytes, tci: int) -> bytes:
    """Put back the 802.1Q tag the NIC stripped, so decoding sees the VLAN id."""
    return data[:12] + struct.pack("!HH", 0x8100, tci & 0xFFFF) + data[12:]


def interface_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")
