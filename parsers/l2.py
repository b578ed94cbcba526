"""Sans-IO link-layer events: ARP messages and the MAC pair of an ICS flow.

Adversary-in-the-middle on a LAN starts with ARP: the attacker tells a master
that the outstation's IP is at its own MAC (and the outstation the same about
the master), then forwards, reads and edits the traffic in between. Nothing in
TCP or in Modbus/DNP3 shows it; only the link layer does. So ARP is decoded
here, without I/O, into a typed event, and the pipeline reports each ICS
flow's MAC pair (once when the flow starts, again whenever a new pair shows up
mid-connection), which the detection layer compares with what each IP was
bound to before.

ARP over Ethernet (RFC 826), after the Ethernet header and any VLAN tags::

    htype(2)=1 ptype(2)=0x0800 hlen(1)=6 plen(1)=4 op(2)
    sender mac(6) sender ip(4) target mac(6) target ip(4)

Anything else behind ethertype 0x0806 (another hardware or protocol type, a
frame cut short) is an :class:`ArpProblem`, a value the caller counts; the
decoder never raises.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from mamori.parsers.fastinit import fast_init
from mamori.parsers.packet import MAX_VLAN_DEPTH
from mamori.parsers.stream import FlowId

__all__ = ["ARP_ETHERTYPE", "ArpEvent", "ArpOp", "ArpProblem", "MacPairEvent", "MacPairKind",
           "decode_arp"]

ARP_ETHERTYPE = 0x0806
_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100))
_ARP = struct.Struct("!HHBBH6s4s6s4s").unpack_from  # 28 bytes
_ETH_TYPE = struct.Struct("!H").unpack_from
_SLL = struct.Struct("!xxHH8sH").unpack_from  # hatype, addrlen, addr, protocol
_SLL2 = struct.Struct("!H6xHxB8s").unpack_from  # protocol, hatype, addrlen, addr


class ArpOp(Enum):
    REQUEST = 1
    REPLY = 2


@fast_init
@dataclass(frozen=True, slots=True)
class ArpEvent:
    """One ARP request or reply for IPv4 over Ethernet.

    Addresses are printable (``aa:bb:..`` and dotted quads). ``src_mac`` and
    ``dst_mac`` are the Ethernet header's (``dst_mac`` is None on a Linux
    cooked capture, which records only the sender); a sender MAC that differs
    from ``src_mac`` is itself a sign of a forged message.
    """

    ts: float
    kind: ArpOp
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str
    src_mac: str | None
    dst_mac: str | None
    vlan: int | None = None

    @property
    def gratuitous(self) -> bool:
        """An announcement of the sender's own binding (sender IP == target IP)."""
        return self.sender_ip == self.target_ip and self.sender_ip != "0.0.0.0"


@fast_init
@dataclass(frozen=True, slots=True)
class ArpProblem:
    """A frame with the ARP ethertype that is not ARP for IPv4 over Ethernet."""

    detail: str


class MacPairKind(Enum):
    STARTED = "started"  # the pair of the flow's first frame
    CHANGED = "changed"  # a pair this flow had not used before, mid-connection


@fast_init
@dataclass(frozen=True, slots=True)
class MacPairEvent:
    """The (client, server) MAC pair of an ICS flow, as its frames carry it."""

    ts: float
    kind: MacPairKind
    flow: FlowId
    client_mac: str
    server_mac: str


def decode_arp(ts: float, linktype: int, frame: bytes) -> ArpEvent | ArpProblem | None:
    """The ARP message in ``frame``; None when the frame is not ARP at all."""
    src_mac: bytes | None
    dst_mac: bytes | None
    n = len(frame)
    if linktype == 1:
        if n < 14:
            return None
        dst_mac, src_mac = frame[0:6], frame[6:12]
        off = 12
        etype = _ETH_TYPE(frame, off)[0]
        off += 2
    elif linktype == 113 or linktype == 276:
        if n < (16 if linktype == 113 else 20):
            return None
        if linktype == 113:
            hatype, addrlen, addr, etype = _SLL(frame, 0)
            off = 16
        else:
            etype, hatype, addrlen, addr = _SLL2(frame, 0)
            off = 20
        src_mac = addr[:6] if hatype == 1 and addrlen == 6 else None
        dst_mac = None
    else:
        return None
    vlan: int | None = None
    depth = 0
    while etype in _VLAN_TYPES:
        depth += 1
        if depth > MAX_VLAN_DEPTH or n < off + 4:
            return None  # the packet decoder reports deep or cut tag stacks
        tci, etype = struct.unpack_from("!HH", frame, off)
        if vlan is None:
            vlan = tci & 0xFFF
        off += 4
    if etype != ARP_ETHERTYPE:
        return None
    if n - off < 28:
        return ArpProblem(f"ARP message needs 28 bytes, {n - off} captured")
    htype, ptype, hlen, plen, op, smac, sip, tmac, tip = _ARP(frame, off)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
        return ArpProblem(f"ARP for hardware type {htype}, protocol 0x{ptype:04x} "
                          f"(lengths {hlen}/{plen}), not IPv4 over Ethernet")
    if op != 1 and op != 2:
        return ArpProblem(f"ARP operation {op}")
    return ArpEvent(ts, ArpOp(op), smac.hex(":"), _ip(sip), tmac.hex(":"), _ip(tip),
                    src_mac.hex(":") if src_mac is not None else None,
                    dst_mac.hex(":") if dst_mac is not None else None, vlan)


def _ip(raw: bytes) -> str:
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
