"""Sans-IO frame decoder: link layer, IPv4/IPv6, TCP and UDP.

``decode(linktype, frame)`` returns a ``Decoded`` for a TCP segment or UDP
datagram, and a ``DecodeProblem`` for everything else. A problem is a value,
never an exception: a malformed frame is data for the anomaly counters, and
"not for us" (ARP, ICMP, ...) is reported the same way so the caller can count
it. Whatever the bytes, ``decode`` never raises.

It is the hot path: every captured frame passes through it. The common case,
Ethernet + IPv4 + TCP, is three precompiled ``struct`` unpacks, one slice for
the payload and a tuple. ``Decoded`` is a ``NamedTuple`` built with
``tuple.__new__``: that costs about 0.1 µs, where a frozen slotted dataclass
with twelve fields costs about 1 µs (measured with timeit on CPython 3.11),
which is the whole budget of a frame. Checksums are not verified: capture on a
host with checksum offload records garbage checksums for correct packets.

Link layers (LINKTYPE_ values)::

    1    Ethernet   dst mac(6) src mac(6) ethertype(2); 802.1Q 0x8100, 802.1ad
                    0x88a8 and 0x9100 tags tci(2) ethertype(2), up to
                    MAX_VLAN_DEPTH deep; ``vlan`` is the outermost id
    0    BSD NULL   address family u32 in the capturing host's byte order
                    (2 = IPv4; 24, 28, 30 = IPv6)
    108  LOOP       the same, always big-endian
    113  Linux SLL  pkttype(2) hatype(2) addrlen(2) addr(8) protocol(2)
    276  Linux SLL2 protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1)
                    addrlen(1) addr(8)
    101, 12, 14     raw IP, version from the first nibble
    228, 229        raw IPv4, raw IPv6

IPv4 (the total length trims Ethernet padding and trailing FCS)::

    +-------+-------+-------+---------------+-----+--------------+
    |ver|ihl|  tos  | total length          | id  |flags|fragoff |
    +-------+-------+-------+---------------+-----+--------------+
    |  ttl  | proto | header checksum       | src (4) | dst (4)  | options ...
    +-------+-------+-----------------------+---------+----------+

    A total length of 0 is taken as "whatever was captured": hosts with TCP
    segmentation offload record their own large segments that way.

IPv6: ver/class/flow(4) payload length(2) next header(1) hop limit(1) src(16)
dst(16), then extension headers (hop-by-hop 0, routing 43, destination options
60, mobility 135, HIP 139, shim6 140, experimental 253/254: next(1) len(1) in
8-octet units beyond the first; AH 51: len in 4-octet units beyond the first
two; fragment 44: 8 bytes), at most MAX_IPV6_EXTENSIONS of them.

TCP: sport(2) dport(2) seq(4) ack(4) offset/reserved(1) flags(1) window(2)
checksum(2) urgent(2) options. UDP: sport(2) dport(2) length(2) checksum(2).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Final, NamedTuple

from mamori.parsers.fastinit import fast_init

__all__ = [
    "MAX_IPV6_EXTENSIONS",
    "MAX_VLAN_DEPTH",
    "DecodeProblem",
    "Decoded",
    "PacketAnomaly",
    "decode",
    "ip_to_str",
    "mac_to_str",
]

MAX_VLAN_DEPTH: Final = 8
MAX_IPV6_EXTENSIONS: Final = 16


class PacketAnomaly(Enum):
    """Why a frame did not decode to TCP or UDP.

    ``is_anomaly`` tells real anomalies (malformed, evasive, or a frame the sensor
    cannot read, which leaves it blind) from traffic that is simply not for us.
    """

    TRUNCATED_L2 = "truncated_l2"
    UNSUPPORTED_LINKTYPE = "unsupported_linktype"
    VLAN_TOO_DEEP = "vlan_too_deep"
    TRUNCATED_IP = "truncated_ip"
    BAD_IP_VERSION = "bad_ip_version"
    BAD_IP_HEADER_LENGTH = "bad_ip_header_length"
    BAD_IP_TOTAL_LENGTH = "bad_ip_total_length"
    IP_FRAGMENT = "ip_fragment"
    IPV6_TOO_MANY_EXTENSIONS = "ipv6_too_many_extensions"
    TRUNCATED_TCP = "truncated_tcp"
    BAD_TCP_OFFSET = "bad_tcp_offset"
    TRUNCATED_UDP = "truncated_udp"
    BAD_UDP_LENGTH = "bad_udp_length"
    NOT_IP = "not_ip"  # not for us: ARP, LLDP, STP, ...
    NOT_TCP_UDP = "not_tcp_udp"  # not for us: ICMP, OSPF, ESP, ...

    @property
    def is_anomaly(self) -> bool:
        """False for traffic that is fine but not ours to parse."""
        return self is not PacketAnomaly.NOT_IP and self is not PacketAnomaly.NOT_TCP_UDP


class Decoded(NamedTuple):
    """One TCP segment or UDP datagram.

    ``proto`` is 6 (TCP) or 17 (UDP). ``src``/``dst`` are the raw 4- or 16-byte
    addresses (``ip_to_str`` prints them). ``seq``, ``ack`` and ``flags`` (FIN 1,
    SYN 2, RST 4, PSH 8, ACK 16, URG 32, ECE 64, CWR 128) are 0 for UDP.
    ``payload`` is trimmed to the IP and UDP lengths. ``src_mac``/``dst_mac`` are
    the 6-byte link addresses when the link layer has them, and ``vlan`` is the
    outermost 802.1Q id, if any.
    """

    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    src_mac: bytes | None
    dst_mac: bytes | None
    vlan: int | None


@fast_init
@dataclass(frozen=True, slots=True)
class DecodeProblem:
    """A frame that is not a well-formed TCP segment or UDP datagram."""

    anomaly: PacketAnomaly
    detail: str


_ETH: Final = struct.Struct("!6s6sH").unpack_from
_VLAN: Final = struct.Struct("!HH").unpack_from
_IP4: Final = struct.Struct("!BxHxxHxB2x4s4s").unpack_from  # vihl, total, frag, proto, src, dst
_IP6: Final = struct.Struct("!BxxxHBx16s16s").unpack_from  # ver<<4, payload length, next, src, dst
_TCP: Final = struct.Struct("!HHIIBB").unpack_from  # sport, dport, seq, ack, offset, flags
_UDP: Final = struct.Struct("!HHH").unpack_from  # sport, dport, length
_SLL: Final = struct.Struct("!xxHH8sH").unpack_from  # hatype, addrlen, addr, protocol
_SLL2: Final = struct.Struct("!H6xHxB8s").unpack_from  # protocol, hatype, addrlen, addr
_U32_LE: Final = struct.Struct("<I").unpack_from
_U32_BE: Final = struct.Struct(">I").unpack_from

_new: Final = tuple.__new__
# The fields of a struct unpack are Any to mypy: the hot paths below declare them first,
# so mypyc keeps them as native ints and bytes (tests and sums on Any are generic calls).
_VLAN_TYPES: Final = frozenset((0x8100, 0x88A8, 0x9100))
_AF_INET6: Final = frozenset((10, 24, 28, 30))  # Linux, BSD/NetBSD, FreeBSD/DragonFly, macOS
_IP6_EXT_8: Final = frozenset((0, 43, 60, 135, 139, 140, 253, 254))  # length in 8-octet units

_A: Final = PacketAnomaly
# Every "not TCP/UDP" answer, built once: it is common, and all are immutable.
_NOT_TCP_UDP: Final[tuple[DecodeProblem, ...]] = tuple(
    DecodeProblem(_A.NOT_TCP_UDP, f"IP protocol {p}") for p in range(256))


def decode(linktype: int, frame: bytes) -> Decoded | DecodeProblem:
    """Decode one captured frame of the given LINKTYPE_ down to TCP or UDP."""
    if linktype == 1:
        if len(frame) < 14:
            return DecodeProblem(_A.TRUNCATED_L2, f"Ethernet header needs 14 bytes, {len(frame)}")
        dst_mac: bytes
        src_mac: bytes
        etype: int
        dst_mac, src_mac, etype = _ETH(frame, 0)
        if etype == 0x0800:
            return _ipv4(frame, 14, src_mac, dst_mac, None)
        return _ethertype(frame, 14, etype, src_mac, dst_mac)
    return _other_link(linktype, frame)


def _ethertype(
    frame: bytes, off: int, etype: int, src_mac: bytes | None, dst_mac: bytes | None,
) -> Decoded | DecodeProblem:
    """Walk VLAN tags from ``off`` (``etype`` already read), then the IP layer."""
    vlan: int | None = None
    depth = 0
    while etype in _VLAN_TYPES:
        depth += 1
        if depth > MAX_VLAN_DEPTH:
            return DecodeProblem(_A.VLAN_TOO_DEEP, f"more than {MAX_VLAN_DEPTH} VLAN tags")
        if len(frame) < off + 4:
            return DecodeProblem(_A.TRUNCATED_L2, f"VLAN tag at byte {off} cut short")
        tci, etype = _VLAN(frame, off)
        if vlan is None:
            vlan = tci & 0xFFF
        off += 4
    if etype == 0x0800:
        return _ipv4(frame, off, src_mac, dst_mac, vlan)
    if etype == 0x86DD:
        return _ipv6(frame, off, src_mac, dst_mac, vlan)
    return DecodeProblem(_A.NOT_IP, f"ethertype 0x{etype:04x}")


def _other_link(linktype: int, frame: bytes) -> Decoded | DecodeProblem:
    n = len(frame)
    if linktype == 0 or linktype == 108:  # BSD NULL / OpenBSD LOOP
        if n < 4:
            return DecodeProblem(_A.TRUNCATED_L2, f"loopback header needs 4 bytes, {n}")
        if linktype == 108:
            family = _U32_BE(frame, 0)[0]
        else:
            family = _U32_LE(frame, 0)[0]
            if family > 0xFFFF:  # written by a host of the other byte order
                family = _U32_BE(frame, 0)[0]
        if family == 2:
            return _ipv4(frame, 4, None, None, None)
        if family in _AF_INET6:
            return _ipv6(frame, 4, None, None, None)
        return DecodeProblem(_A.NOT_IP, f"address family {family}")
    if linktype == 228:
        return _ipv4(frame, 0, None, None, None)
    if linktype == 229:
        return _ipv6(frame, 0, None, None, None)
    if linktype == 101 or linktype == 12 or linktype == 14:
        if not n:
            return DecodeProblem(_A.TRUNCATED_IP, "empty raw IP frame")
        version = frame[0] >> 4
        if version == 6:
            return _ipv6(frame, 0, None, None, None)
        return _ipv4(frame, 0, None, None, None)
    if linktype == 113:
        if n < 16:
            return DecodeProblem(_A.TRUNCATED_L2, f"Linux SLL header needs 16 bytes, {n}")
        hatype, addrlen, addr, etype = _SLL(frame, 0)
        src_mac = addr[:6] if hatype == 1 and addrlen == 6 else None
        return _ethertype(frame, 16, etype, src_mac, None)
    if linktype == 276:
        if n < 20:
            return DecodeProblem(_A.TRUNCATED_L2, f"Linux SLL2 header needs 20 bytes, {n}")
        etype, hatype, addrlen, addr = _SLL2(frame, 0)
        src_mac = addr[:6] if hatype == 1 and addrlen == 6 else None
        return _ethertype(frame, 20, etype, src_mac, None)
    return DecodeProblem(_A.UNSUPPORTED_LINKTYPE, f"link type {linktype}")


def _ipv4(
    frame: bytes, off: int, src_mac: bytes | None, dst_mac: bytes | None, vlan: int | None,
) -> Decoded | DecodeProblem:
    avail = len(frame) - off
    if avail < 20:
        return DecodeProblem(_A.TRUNCATED_IP, f"IPv4 header needs 20 bytes, {avail} captured")
    vihl: int
    total: int
    frag: int
    proto: int
    src: bytes
    dst: bytes
    vihl, total, frag, proto, src, dst = _IP4(frame, off)
    ihl = (vihl & 15) << 2
    if vihl >> 4 != 4:
        return DecodeProblem(_A.BAD_IP_VERSION, f"IP version {vihl >> 4} where 4 expected")
    if ihl < 20:
        return DecodeProblem(_A.BAD_IP_HEADER_LENGTH, f"IPv4 header length {ihl}")
    if total == 0:  # TCP segmentation offload: take what was captured
        total = avail
    if total < ihl:
        return DecodeProblem(_A.BAD_IP_TOTAL_LENGTH,
                             f"IPv4 total length {total} below header length {ihl}")
    if total > avail:
        return DecodeProblem(_A.TRUNCATED_IP,
                             f"IPv4 total length {total}, {avail} bytes captured")
    if frag & 0x3FFF:
        return DecodeProblem(_A.IP_FRAGMENT, f"IPv4 fragment, offset {(frag & 0x1FFF) * 8}"
                             f"{', more follow' if frag & 0x2000 else ''}")
    start = off + ihl
    stop = off + total
    if proto == 6:
        return _tcp(frame, start, stop, src, dst, src_mac, dst_mac, vlan)
    if proto == 17:
        return _udp(frame, start, stop, src, dst, src_mac, dst_mac, vlan)
    problem: DecodeProblem = _NOT_TCP_UDP[proto]
    return problem


def _ipv6(
    frame: bytes, off: int, src_mac: bytes | None, dst_mac: bytes | None, vlan: int | None,
) -> Decoded | DecodeProblem:
    avail = len(frame) - off
    if avail < 40:
        return DecodeProblem(_A.TRUNCATED_IP, f"IPv6 header needs 40 bytes, {avail} captured")
    ver, plen, nxt, src, dst = _IP6(frame, off)
    if ver >> 4 != 6:
        return DecodeProblem(_A.BAD_IP_VERSION, f"IP version {ver >> 4} where 6 expected")
    if plen == 0:  # jumbogram or segmentation offload: take what was captured
        plen = avail - 40
    elif plen > avail - 40:
        return DecodeProblem(_A.TRUNCATED_IP,
                             f"IPv6 payload length {plen}, {avail - 40} bytes captured")
    start = off + 40
    stop = start + plen
    count = 0
    while nxt != 6 and nxt != 17:
        if nxt in _IP6_EXT_8 or nxt == 51 or nxt == 44:
            count += 1
            if count > MAX_IPV6_EXTENSIONS:
                return DecodeProblem(_A.IPV6_TOO_MANY_EXTENSIONS,
                                     f"more than {MAX_IPV6_EXTENSIONS} extension headers")
            if stop - start < 8:
                return DecodeProblem(_A.TRUNCATED_IP,
                                     f"IPv6 extension header {nxt} at byte {start} cut short")
            if nxt == 44:
                frag = (frame[start + 2] << 8) | frame[start + 3]
                if frag & 0xFFF9:  # offset or M set; an atomic fragment is whole
                    return DecodeProblem(_A.IP_FRAGMENT, f"IPv6 fragment, offset "
                                         f"{frag & 0xFFF8}{', more follow' if frag & 1 else ''}")
                size = 8
            elif nxt == 51:
                size = (frame[start + 1] + 2) << 2
            else:
                size = (frame[start + 1] + 1) << 3
            nxt = frame[start]
            start += size
            if start > stop:
                return DecodeProblem(_A.TRUNCATED_IP,
                                     "IPv6 extension header runs past the payload length")
        else:
            problem: DecodeProblem = _NOT_TCP_UDP[nxt]
            return problem
    if nxt == 17:
        return _udp(frame, start, stop, src, dst, src_mac, dst_mac, vlan)
    return _tcp(frame, start, stop, src, dst, src_mac, dst_mac, vlan)


def _tcp(
    frame: bytes, start: int, stop: int, src: bytes, dst: bytes,
    src_mac: bytes | None, dst_mac: bytes | None, vlan: int | None,
) -> Decoded | DecodeProblem:
    if stop - start < 20:
        return DecodeProblem(_A.TRUNCATED_TCP, f"TCP header needs 20 bytes, {stop - start}")
    sport: int
    dport: int
    seq: int
    ack: int
    doff: int
    flags: int
    sport, dport, seq, ack, doff, flags = _TCP(frame, start)
    doff = (doff >> 4) << 2
    if doff < 20 or start + doff > stop:
        return DecodeProblem(_A.BAD_TCP_OFFSET,
                             f"TCP data offset {doff} in a {stop - start}-byte segment")
    return _new(Decoded, (6, src, dst, sport, dport, seq, ack, flags,
                          frame[start + doff:stop], src_mac, dst_mac, vlan))


def _udp(
    frame: bytes, start: int, stop: int, src: bytes, dst: bytes,
    src_mac: bytes | None, dst_mac: bytes | None, vlan: int | None,
) -> Decoded | DecodeProblem:
    if stop - start < 8:
        return DecodeProblem(_A.TRUNCATED_UDP, f"UDP header needs 8 bytes, {stop - start}")
    sport, dport, length = _UDP(frame, start)
    if length < 8 or length > stop - start:
        return DecodeProblem(_A.BAD_UDP_LENGTH,
                             f"UDP length {length} in a {stop - start}-byte IP payload")
    return _new(Decoded, (17, src, dst, sport, dport, 0, 0, 0,
                          frame[start + 8:start + length], src_mac, dst_mac, vlan))


def ip_to_str(raw: bytes) -> str:
    """Printable address as tshark prints it: dotted quad, or RFC 5952 IPv6.

    ``socket.inet_ntop`` is a pure conversion (no socket is opened); unlike
    ``ipaddress`` on Python 3.11 it prints IPv4-mapped addresses as ::ffff:a.b.c.d.
    """
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    return socket.inet_ntop(socket.AF_INET6, raw)


def mac_to_str(raw: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff``, lower case, as tshark prints it."""
    return raw.hex(":")
