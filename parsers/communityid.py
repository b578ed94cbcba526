"""Community ID v1 flow hashes, so a SIEM can join Mamori's records with Zeek's and Suricata's.

The Community ID specification (corelight/community-id-spec) hashes a flow's
5-tuple independently of direction: the endpoints are ordered so that the smaller
(address, port) comes first, then SHA-1 runs over ``seed (2 bytes) . saddr . daddr .
proto (1 byte) . 0 (1 byte) . sport (2 bytes) . dport (2 bytes)``, all in network
byte order, and the digest is base64-encoded after a ``1:`` version prefix.

Mamori's flows are TCP and UDP (SCTP hashes the same way); a protocol without
ports hashes the addresses and the protocol only, as the specification says. ICMP's
type/code mapping is not needed here: the sensor raises no alert on ICMP flows.
It is a dozen lines, so it is written out rather than pulled in as a dependency; the
tests check it against the specification's published baseline vectors.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}
_PORTED = frozenset(PROTO_NUMBERS.values()) | {1, 58}  # ICMP types/codes ride as ports


def community_id(saddr: str, daddr: str, proto: int | str, sport: int | None = None,
                 dport: int | None = None, seed: int = 0) -> str:
    """``1:<base64 SHA-1>`` of the flow; raises ValueError on an address or port that is not."""
    number = PROTO_NUMBERS[proto.lower()] if isinstance(proto, str) else int(proto)
    if not 0 <= number <= 255:
        raise ValueError(f"IP protocol {number} is not 0-255")
    if not 0 <= seed <= 0xFFFF:
        raise ValueError(f"seed {seed} is not 0-65535")
    src = ipaddress.ip_address(saddr).packed
    dst = ipaddress.ip_address(daddr).packed
    if len(src) != len(dst):
        raise ValueError(f"{saddr} and {daddr} are not of one IP version")
    ported = number in _PORTED and sport is not None and dport is not None
    if ported:
        assert sport is not None and dport is not None
        for port in (sport, dport):
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"port {port} is not 0-65535")
        if (src, sport) > (dst, dport):
            src, dst, sport, dport = dst, src, dport, sport
    elif src > dst:
        src, dst = dst, src
    data = struct.pack("!H", seed) + src + dst + struct.pack("!BB", number, 0)
    if ported:
        data += struct.pack("!HH", sport, dport)
    digest = hashlib.sha1(data, usedforsecurity=False).digest()
    return "1:" + base64.b64encode(digest).decode("ascii")
