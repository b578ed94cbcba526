"""A kernel packet filter for the configured protocol ports, built without libpcap.

The sensor attaches a classic BPF program to each capture socket so the kernel
drops everything that is not ours before it is copied to user space: on a busy
SPAN port most frames are not Modbus or DNP3, and every frame we never see is
CPU we keep for the ones we do.

The program accepts, on Ethernet framing (which Linux also uses for ``lo``):

* IPv4 TCP or UDP with either port in the set (the IP header length is read
  from the packet, so options are handled);
* IPv4 fragments with a non-zero offset (they carry no ports; the pipeline
  counts them as an anomaly, so they must reach it);
* IPv6 TCP or UDP (no extension headers) with either port in the set, and IPv6
  fragments (next header 44), for the same reason;
* 802.1Q / 802.1ad tagged frames the NIC did not untag (decoded in user space).

Layout of one instruction (``struct sock_filter``)::

    +--------+----+----+------------+
    | code16 | jt | jf |    k32     |
    +--------+----+----+------------+
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable

SO_ATTACH_FILTER = 26
SNAPLEN = 262144

# Opcodes (linux/filter.h): class | size | mode, and jumps / returns.
_LDH_ABS = 0x28  # BPF_LD | BPF_H | BPF_ABS
_LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS
_LDH_IND = 0x48  # BPF_LD | BPF_H | BPF_IND
_LDXB_MSH = 0xB1  # BPF_LDX | BPF_B | BPF_MSH   (X = 4 * (pkt[k] & 0xf))
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K

Instruction = tuple[int, int, int, int]


class _Program:
    """Instructions with symbolic jump targets, resolved once at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, jt, jf, k))

    def assemble(self) -> list[Instruction]:
        out: list[Instruction] = []
        for index, (code, jt, jf, k) in enumerate(self.code):
            out.append((code, self._offset(index, jt), self._offset(index, jf), k))
        return out

    def _offset(self, index: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        offset = self.labels[target] - index - 1
        if not 0 <= offset <= 255:
            raise ValueError(f"BPF jump to {target} out of range ({offset})")
        return offset


def _match_ports(prog: _Program, ports: list[int], load: tuple[int, int]) -> None:
    """Load the source then the destination port; accept on any match, else drop."""
    for code, offset in ((load[0], load[1]), (load[0], load[1] + 2)):
        prog.op(code, offset)
        for port in ports:
            prog.op(_JEQ_K, port, "accept", 0)
    prog.op(_RET_K, 0)


def port_filter(ports: Iterable[int]) -> list[Instruction]:
    """The filter program for TCP and UDP traffic on any of ``ports``."""
    wanted = sorted(set(ports))
    if not wanted:
        raise ValueError("no ports to filter on")
    if len(wanted) > 50:
        raise ValueError("at most 50 distinct ports (the BPF jump range is 255)")
    p = _Program()
    p.op(_LDH_ABS, 12)  # ethertype
    p.op(_JEQ_K, 0x0800, "ipv4", 0)
    p.op(_JEQ_K, 0x86DD, "ipv6", 0)
    p.op(_JEQ_K, 0x8100, "accept", 0)
    p.op(_JEQ_K, 0x88A8, "accept", "drop")

    p.label("ipv4")
    p.op(_LDB_ABS, 23)  # protocol
    p.op(_JEQ_K, 6, "ipv4_l4", 0)
    p.op(_JEQ_K, 17, "ipv4_l4", "drop")
    p.label("ipv4_l4")
    p.op(_LDH_ABS, 20)  # flags + fragment offset
    p.op(_JSET_K, 0x1FFF, "accept", 0)
    p.op(_LDXB_MSH, 14)  # X = IPv4 header length
    _match_ports(p, wanted, (_LDH_IND, 14))

    p.label("ipv6")
    p.op(_LDB_ABS, 20)  # next header
    p.op(_JEQ_K, 44, "accept", 0)  # fragment header
    p.op(_JEQ_K, 6, "ipv6_l4", 0)
    p.op(_JEQ_K, 17, "ipv6_l4", "drop")
    p.label("ipv6_l4")
    _match_ports(p, wanted, (_LDH_ABS, 54))

    p.label("accept")
    p.op(_RET_K, SNAPLEN)
    p.label("drop")
    p.op(_RET_K, 0)
    return p.assemble()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach(sock: socket.socket, program: list[Instruction]) -> None:
    """Attach ``program`` to ``sock`` (SO_ATTACH_FILTER); the kernel copies it."""
    raw = b"".join(struct.pack("HBBI", code, jt, jf, k) for code, jt, jf, k in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


def render(program: list[Instruction]) -> str:
    """tcpdump -dd style text, for ``mamori check-iface`` and debugging."""
    return "\n".join(f"{{ 0x{c:02x}, {jt}, {jf}, 0x{k:08x} }}," for c, jt, jf, k in program)
