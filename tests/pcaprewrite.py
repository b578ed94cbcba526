"""Map a capture's IPv4 conversations onto two test hosts, keeping every byte else.

tcprewrite cannot do this for us: when it edits addresses it "fixes" the IP total
length to the frame length, so Ethernet padding on short frames (a 60-byte frame
carrying a 40-byte ACK) becomes 6 bytes of TCP payload. For a protocol sensor that
is corruption, so the lab rewrites with this instead: the server side of each
packet (the end whose port is an ICS port) becomes ``server``, the other end
``client``, and the IPv4 and TCP/UDP checksums are recomputed.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from mamori.parsers.capfile import CaptureFileParser

ICS_PORTS = frozenset({502, 20000})


def ip_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of IPv4 headers and TCP/UDP pseudo-headers."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def _rewrite(frame: bytes, client: bytes, server: bytes) -> bytes:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return frame
    ip = 14
    ihl = (frame[ip] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, ip + 2)[0]
    proto = frame[ip + 9]
    l4 = ip + ihl
    if proto not in (6, 17) or len(frame) < l4 + 4 or total < ihl + 4:
        return frame
    sport, dport = struct.unpack_from("!HH", frame, l4)
    src, dst = (server, client) if sport in ICS_PORTS and dport not in ICS_PORTS else (
        client, server)
    out = bytearray(frame)
    out[ip + 12:ip + 16] = src
    out[ip + 16:ip + 20] = dst
    out[ip + 10:ip + 12] = b"\0\0"
    out[ip + 10:ip + 12] = struct.pack("!H", ip_checksum(bytes(out[ip:ip + ihl])))
    end = ip + total
    if end > len(out):
        return bytes(out)  # truncated by the snap length: leave the L4 checksum alone
    offset = 16 if proto == 6 else 6
    if proto == 17 and out[l4 + 6:l4 + 8] == b"\0\0":
        return bytes(out)  # UDP without a checksum stays without one
    out[l4 + offset:l4 + offset + 2] = b"\0\0"
    pseudo = src + dst + struct.pack("!BBH", 0, proto, end - l4)
    out[l4 + offset:l4 + offset + 2] = struct.pack(
        "!H", ip_checksum(pseudo + bytes(out[l4:end])))
    return bytes(out)


def rewrite(capture: Path, out: Path, client_ip: str, server_ip: str) -> Path:
    """Write ``out`` as a microsecond pcap of Ethernet frames with mapped addresses."""
    client, server = socket.inet_aton(client_ip), socket.inet_aton(server_ip)
    parser = CaptureFileParser()
    parser.receive(capture.read_bytes())
    records = parser.records()
    parser.close()
    with out.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for rec in records:
            if rec.linktype != 1:
                continue
            data = _rewrite(rec.data, client, server)
            sec = int(rec.ts)
            usec = round((rec.ts - sec) * 1e6)
            f.write(struct.pack("<IIII", sec, usec, len(data), max(rec.orig_len, len(data))))
            f.write(data)
    return out


def copies(capture: Path, out: Path, n: int, every: float, server_ip: str = "10.8.0.1",
           ) -> Path:
    """``n`` copies of ``capture`` one after the other, ``every`` seconds of packet
    time apart, copy ``k`` from client 10.9.k//250.k%250+1 (new peers, new alerts):
    a long capture made of a short one."""
    parser = CaptureFileParser()
    parser.receive(capture.read_bytes())
    records = [r for r in parser.records() if r.linktype == 1]
    parser.close()
    server = socket.inet_aton(server_ip)
    start = records[0].ts
    with out.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for k in range(n):
            client = socket.inet_aton(f"10.9.{k // 250}.{k % 250 + 1}")
            for rec in records:
                data = _rewrite(rec.data, client, server)
                ts = rec.ts - start + k * every + 1_700_000_000
                sec = int(ts)
                usec = min(round((ts - sec) * 1e6), 999_999)
                f.write(struct.pack("<IIII", sec, usec, len(data), max(rec.orig_len, len(data))))
                f.write(data)
    return out
