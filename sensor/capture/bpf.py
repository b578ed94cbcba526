"""A kernel packet filter for the configured protocol ports, built without libpcap.

The sensor attaches a classic BPF program to each capture socket so the kernel
drops everything that is not ours before it is copied to user space: on a busy
SPAN port most frames are not Modbus or DNP3, and every frame we never see is
CPU we keep for the ones we do.

The program lets through exactly what the replay decoder (``mamori.parsers.packet``)
would turn into an event or an anomaly of ours, so live capture and replay of
the same traffic agree:

* up to ``MAX_VLAN_DEPTH`` 802.1Q / 802.1ad / 0x9100 tags are walked (Linux
  usually takes the outer tag off before the filter runs; inner ones stay), and
  a deeper stack is let through for the decoder to report;
* IPv4 TCP or UDP with either port in the set, wherever the IP header ends
  (options included), and IPv4 fragments with a non-zero offset (they carry no
  ports; the pipeline counts them as an anomaly);
* IPv6 TCP or UDP behind up to ``MAX_IPV6_EXTENSIONS`` extension headers
  (hop-by-hop, routing, destination options, mobility, HIP, shim6, experimental,
  AH, atomic fragments), IPv6 fragments and over-long header chains (anomalies
  again);
* ARP (ethertype 0x0806) behind any of those tags: adversary-in-the-middle
  starts with forged ARP, and the pipeline decodes every ARP frame
  (``mamori.parsers.l2``), malformed ones included (it counts those).

The port test is a list of ranges (runs of adjacent ports are merged), so the
number of ports is bounded only by the kernel's 4096-instruction limit.

A site's own filter expression (``[capture] filter``) is compiled by libpcap
(``pcap_compile`` through ctypes, the same compiler tcpdump uses) and runs after
ours: a frame must pass both.

Layout of one instruction (``struct sock_filter``)::

    +--------+----+----+------------+
    | code16 | jt | jf |    k32     |
    +--------+----+----+------------+

Registers: A (accumulator), X (index), M[0..15] (scratch). Here X always holds
the offset of the header being looked at, so one port test serves every path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct
from collections.abc import Iterable
from functools import cache

from mamori.parsers.l2 import ARP_ETHERTYPE
from mamori.parsers.packet import MAX_IPV6_EXTENSIONS, MAX_VLAN_DEPTH

SO_ATTACH_FILTER = 26
SNAPLEN = 262144
MAX_INSTRUCTIONS = 4096  # BPF_MAXINSNS
_CHUNK = 50  # conditional jumps reach 255 ahead: trampolines at least this often

# Opcodes (linux/filter.h): class | size | mode.
LD_IMM, LDX_IMM, ST, LD_MEM = 0x00, 0x01, 0x02, 0x60
LDH_ABS, LDB_ABS = 0x28, 0x30
LDH_IND, LDB_IND = 0x48, 0x50
LDXB_MSH = 0xB1  # X = 4 * (pkt[k] & 0xf)
ADD_K, ADD_X, AND_K, LSH_K = 0x04, 0x0C, 0x54, 0x64
TAX, TXA = 0x07, 0x87
JA, JEQ_K, JGT_K, JGE_K, JSET_K = 0x05, 0x15, 0x25, 0x35, 0x45
RET_K = 0x06

VLAN_TYPES = (0x8100, 0x88A8, 0x9100)  # as mamori.parsers.packet walks them
IPV6_EXT_8 = (0, 43, 60, 135, 139, 140, 253, 254)  # length in 8-octet units
IPV6_AH, IPV6_FRAGMENT = 51, 44

Instruction = tuple[int, int, int, int]


class _Program:
    """Instructions with symbolic jump targets, resolved once at the end.

    A conditional jump reaches at most 255 instructions ahead, so a far target is
    reached through a trampoline (``ja`` has a 32-bit offset): ``far(name)`` names
    one, and ``flush()`` lays the pending ones down where no code falls into them.
    """

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int | str]] = []
        self.labels: dict[str, int] = {}
        self._pending: dict[str, str] = {}
        self._serial = 0

    def label(self, name: str) -> None:
        if name in self.labels:
            raise ValueError(f"BPF label {name} defined twice")
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int | str = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, jt, jf, k))

    def fresh(self, stem: str) -> str:
        self._serial += 1
        return f"{stem}#{self._serial}"

    def far(self, target: str) -> str:
        if target not in self._pending:
            self._pending[target] = self.fresh(f"to-{target}")
        return self._pending[target]

    def flush(self) -> None:
        for target, trampoline in self._pending.items():
            self.label(trampoline)
            self.op(JA, target)
        self._pending.clear()

    def assemble(self) -> list[Instruction]:
        if self._pending:
            raise ValueError("BPF trampolines left unplaced")
        out: list[Instruction] = []
        for index, (code, jt, jf, k) in enumerate(self.code):
            if code == JA:
                out.append((code, 0, 0, self._offset(index, k, 0xFFFFFFFF)))
            else:
                out.append((code, self._offset(index, jt, 255), self._offset(index, jf, 255),
                            int(k)))
        return out

    def _offset(self, index: int, target: str | int, limit: int) -> int:
        if isinstance(target, int):
            return target
        offset = self.labels[target] - index - 1
        if not 0 <= offset <= limit:
            raise ValueError(f"BPF jump to {target} out of range ({offset})")
        return offset


def port_ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged ``(low, high)`` runs of ``ports``."""
    ranges: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range")
        if ranges and port == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], port)
        else:
            ranges.append((port, port))
    return ranges


def _vlan_walk(p: _Program) -> None:
    """X = offset of the IP header; A = its ethertype. Jumps to ipv4/ipv6/accept/drop."""
    p.op(LDX_IMM, 14)
    p.op(LDH_ABS, 12)
    for depth in range(MAX_VLAN_DEPTH + 1):
        p.op(JEQ_K, 0x0800, "ipv4", 0)
        p.op(JEQ_K, 0x86DD, "ipv6", 0)
        p.op(JEQ_K, ARP_ETHERTYPE, p.far("accept"), 0)
        tag = p.fresh("tag")
        for kind in VLAN_TYPES:
            p.op(JEQ_K, kind, tag, 0)
        p.op(JA, "drop")
        p.label(tag)
        if depth == MAX_VLAN_DEPTH:  # one tag too many: the decoder reports it
            p.op(JA, "accept")
            break
        p.op(LDH_IND, 2)  # the tag's own ethertype follows its TCI
        p.op(ST, 0)
        p.op(TXA)
        p.op(ADD_K, 4)
        p.op(TAX)
        p.op(LD_MEM, 0)


def _ipv4(p: _Program) -> None:
    p.label("ipv4")
    p.op(LDB_IND, 9)  # protocol
    p.op(JEQ_K, 6, "ipv4_l4", 0)
    p.op(JEQ_K, 17, "ipv4_l4", p.far("drop"))
    p.label("ipv4_l4")
    p.op(LDH_IND, 6)  # flags + fragment offset
    p.op(JSET_K, 0x1FFF, p.far("accept"), 0)  # a later fragment: no ports, an anomaly
    p.op(LDB_IND, 0)
    p.op(AND_K, 0x0F)
    p.op(LSH_K, 2)
    p.op(ADD_X)
    p.op(TAX)  # X = start of TCP/UDP
    p.op(JA, "ports")
    p.flush()


def _ipv6(p: _Program) -> None:
    """Walk the extension header chain as ``mamori.parsers.packet._ipv6`` does (unrolled)."""
    p.label("ipv6")
    p.op(LDB_IND, 6)  # next header
    p.op(ST, 1)
    p.op(TXA)
    p.op(ADD_K, 40)
    p.op(TAX)
    p.op(LD_MEM, 1)
    for step in range(MAX_IPV6_EXTENSIONS + 1):  # A = next header, X = its offset
        p.op(JEQ_K, 6, p.far("ports"), 0)
        p.op(JEQ_K, 17, p.far("ports"), 0)
        if step == MAX_IPV6_EXTENSIONS:  # one header too many: the decoder reports it
            for kind in (*IPV6_EXT_8, IPV6_AH, IPV6_FRAGMENT):
                p.op(JEQ_K, kind, p.far("accept"), 0)
            p.op(JA, "drop")
            p.flush()
            break
        ext8, ah, frag, advance = (p.fresh(s) for s in ("ext8", "ah", "frag", "advance"))
        p.op(JEQ_K, IPV6_FRAGMENT, frag, 0)
        p.op(JEQ_K, IPV6_AH, ah, 0)
        for kind in IPV6_EXT_8:
            p.op(JEQ_K, kind, ext8, 0)
        p.op(JA, "drop")
        p.label(ext8)
        p.op(LDB_IND, 1)
        p.op(ADD_K, 1)
        p.op(LSH_K, 3)
        p.op(JA, advance)
        p.label(ah)
        p.op(LDB_IND, 1)
        p.op(ADD_K, 2)
        p.op(LSH_K, 2)
        p.op(JA, advance)
        p.label(frag)
        p.op(LDH_IND, 2)
        p.op(JSET_K, 0xFFF9, p.far("accept"), 0)  # offset or M set; an atomic one is whole
        p.op(LD_IMM, 8)
        p.op(JA, advance)
        p.flush()
        p.label(advance)  # A = this header's size
        p.op(ST, 0)
        p.op(LDB_IND, 0)
        p.op(ST, 1)
        p.op(LD_MEM, 0)
        p.op(ADD_X)
        p.op(TAX)
        p.op(LD_MEM, 1)


def _ports(p: _Program, ranges: list[tuple[int, int]]) -> None:
    """Accept if the source or the destination port (at X, X+2) is in ``ranges``."""
    p.label("ports")
    for offset in (0, 2):
        p.op(LDH_IND, offset)
        for start in range(0, len(ranges), _CHUNK):
            for low, high in ranges[start:start + _CHUNK]:
                if low == high:
                    p.op(JEQ_K, low, p.far("accept"), 0)
                else:
                    p.op(JGE_K, low, 0, 1)
                    p.op(JGT_K, high, 0, p.far("accept"))
            after = p.fresh("ports")
            p.op(JA, after)
            p.flush()
            p.label(after)
    p.op(JA, "drop")


def port_filter(ports: Iterable[int], user: list[Instruction] | None = None
                ) -> list[Instruction]:
    """The filter program for TCP and UDP traffic on any of ``ports``.

    ``user``, a compiled program (``compile_expression``), decides what passes ours.
    """
    ranges = port_ranges(ports)
    if not ranges:
        raise ValueError("no ports to filter on")
    p = _Program()
    _vlan_walk(p)
    _ipv4(p)
    _ipv6(p)
    _ports(p, ranges)
    p.label("drop")
    p.op(RET_K, 0)
    p.label("accept")
    program = p.assemble()
    # The user's program has relative jumps only, so it runs unchanged after ours.
    program += user if user is not None else [(RET_K, 0, 0, SNAPLEN)]
    if len(program) > MAX_INSTRUCTIONS:
        raise ValueError(f"the capture filter needs {len(program)} BPF instructions, more "
                         f"than the kernel's {MAX_INSTRUCTIONS}: use fewer port ranges or "
                         "a shorter filter expression")
    return program


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


@cache
def _libpcap() -> ctypes.CDLL:
    name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise ValueError("a filter expression needs libpcap (Debian: libpcap0.8)") from None
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    return lib


def compile_expression(expression: str) -> list[Instruction]:
    """A tcpdump filter expression compiled by libpcap for Ethernet framing.

    Compiled against a dead handle, as ``tcpdump -dd -y EN10MB`` does: ``vlan``
    qualifiers match tags still in the frame (Linux has usually removed the outer
    one by the time the filter runs), so prefer host, net and port qualifiers.
    Raises ValueError with libpcap's message.
    """
    if "\0" in expression:
        raise ValueError("a filter expression cannot contain a NUL character")
    lib = _libpcap()
    handle = lib.pcap_open_dead(1, SNAPLEN)  # DLT_EN10MB
    if not handle:
        raise ValueError("libpcap could not open a compiler handle")
    program = _BpfProgram()
    try:
        if lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1,
                            0xFFFFFFFF) != 0:  # optimise; PCAP_NETMASK_UNKNOWN
            raise ValueError(f"not a valid filter expression: "
                             f"{lib.pcap_geterr(handle).decode(errors='replace')}")
        try:
            return [(i.code, i.jt, i.jf, i.k)
                    for i in (program.bf_insns[n] for n in range(program.bf_len))]
        finally:
            lib.pcap_freecode(ctypes.byref(program))
    finally:
        lib.pcap_close(handle)


def v_expression(value: object) -> str:
    """Config validator for ``[capture] filter``: empty, or an expression libpcap compiles."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a filter expression (a string)")
    if value.strip():
        compile_expression(value)
    return value.strip()


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
