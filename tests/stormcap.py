"""Captures of a storm of distinct Modbus sources, written as real pcap files.

One legitimate master polls one server (and writes to it now and then) for the
learning period over one long-lived TCP connection; then ``sources`` distinct
IPv4 hosts each open a connection to that server, send one Write Single
Register, and close. Every one of them is a rogue master: M8 (new master), M7
(unauthorised write) and B1 (new pair) each fire once per source, and each
source leaves state in every per-source table of the sensor. ``targets`` more
rogues then write to as many distinct servers, so the storm also spreads over
targets. With ``reference=True`` the learned master itself sends the storm's
connections instead: the same packets from a single source.

Frames are Ethernet/IPv4/TCP with correct checksums (tshark accepts them), so the
capture goes through the same decoding, reassembly and parsers as any other.
Shared by ``tests/sensor/test_storm.py`` and ``bench/bench_storm.py``; ``concurrent_polls``
(many connections live at once) by ``bench/bench_rss.py`` and ``bench/bench_live.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tests.pcaprewrite import ip_checksum

SERVER = "10.0.0.5"
MASTER = "10.0.0.1"
PORT = 502
START = 1_600_000_000.0
SYN, FIN, PSH, ACK = 0x02, 0x01, 0x08, 0x10

Frame = tuple[float, bytes]


def _ip(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))




def tcp_frame(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int,
              payload: bytes = b"") -> bytes:
    """Ethernet + IPv4 + TCP with correct checksums (MACs derived from the addresses)."""
    s, d = _ip(src), _ip(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      5 << 4, flags, 65535, 0, 0) + payload
    pseudo = s + d + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", ip_checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
    return b"\x02\0" + d + b"\x02\0" + s + b"\x08\x00" + ip + tcp


def modbus(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack("!HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def write_register(address: int, value: int, tid: int = 1, unit: int = 1) -> bytes:
    return modbus(tid, unit, struct.pack("!BHH", 6, address, value))


def session(client: str, cport: int, ts: float, requests: Iterable[tuple[bytes, bytes]],
            server: str = SERVER, gap: float = 0.0001, close: bool = True) -> Iterator[Frame]:
    """One TCP connection: handshake, request/response pairs, FIN both ways, last ACK.

    ``close=False`` leaves the connection open after the last response.
    """
    c, s, t = 1000, 5000, ts
    for frame in (tcp_frame(client, cport, server, PORT, c, 0, SYN),
                  tcp_frame(server, PORT, client, cport, s, c + 1, SYN | ACK),
                  tcp_frame(client, cport, server, PORT, c + 1, s + 1, ACK)):
        yield t, frame
        t += gap
    c, s = c + 1, s + 1
    for request, response in requests:
        yield t, tcp_frame(client, cport, server, PORT, c, s, PSH | ACK, request)
        c += len(request)
        t += gap
        yield t, tcp_frame(server, PORT, client, cport, s, c, PSH | ACK, response)
        s += len(response)
        t += gap
    if not close:
        return
    for frame in (tcp_frame(client, cport, server, PORT, c, s, FIN | ACK),
                  tcp_frame(server, PORT, client, cport, s, c + 1, FIN | ACK),
                  tcp_frame(client, cport, server, PORT, c + 1, s + 1, ACK)):
        yield t, frame
        t += gap


def rogue(n: int) -> str:
    """The n-th rogue source (n >= 1): 10.100.0.1 onwards, 16.7 million of them."""
    return f"10.{100 + (n >> 16)}.{(n >> 8) & 0xFF}.{n & 0xFF}"


def target(n: int) -> str:
    """The n-th extra server a spreading storm writes to (n >= 1)."""
    return f"10.50.{(n >> 8) & 0xFF}.{n & 0xFF}"


def learning(learn: float, start: float = START) -> Iterator[Frame]:
    """The legitimate master: a read a second and a write every ten, for ``learn`` + 10 s."""
    exchanges: list[tuple[bytes, bytes]] = []
    for i in range(int(learn) + 10):
        read = modbus(i & 0xFFFF, 1, struct.pack("!BHH", 3, 0, 10))
        exchanges.append((read, modbus(i & 0xFFFF, 1, struct.pack("!BB", 3, 20) + bytes(20))))
        if i % 10 == 0:
            write = write_register(10, i, tid=i & 0xFFFF)
            exchanges.append((write, write))
    c, s = 1001, 5001
    yield start, tcp_frame(MASTER, 40000, SERVER, PORT, 1000, 0, SYN)
    yield start, tcp_frame(SERVER, PORT, MASTER, 40000, 5000, 1001, SYN | ACK)
    yield start, tcp_frame(MASTER, 40000, SERVER, PORT, 1001, 5001, ACK)
    for n, (request, response) in enumerate(exchanges):
        t = start + 1 + n * (learn + 10) / len(exchanges)
        yield t, tcp_frame(MASTER, 40000, SERVER, PORT, c, s, PSH | ACK, request)
        c += len(request)
        yield t + 0.001, tcp_frame(SERVER, PORT, MASTER, 40000, s, c, PSH | ACK, response)
        s += len(response)


def storm_start(learn: float, start: float = START) -> float:
    return start + learn + 20


def storm_frames(sources: int, learn: float, *, targets: int = 0, reference: bool = False,
                 spacing: float = 0.001, close: bool = True, start: float = START
                 ) -> Iterator[Frame]:
    """Learning, then ``sources`` one-write connections ``spacing`` s apart, then ``targets``.

    ``close=False``: the storm's connections stay open (every one is a live flow).
    """
    yield from learning(learn, start)
    t0 = storm_start(learn, start)
    write = write_register(10, 0xDEAD)
    for i in range(sources):
        client = MASTER if reference else rogue(i + 1)
        yield from session(client, 41000 + i % 20000, t0 + i * spacing, [(write, write)],
                           close=close)
    t1 = t0 + sources * spacing
    for i in range(targets):
        client = MASTER if reference else rogue(sources + i + 1)
        yield from session(client, 41000 + i % 20000, t1 + i * spacing, [(write, write)],
                           server=target(i + 1), close=close)


def concurrent_polls(conns: Sequence[tuple[str, int, str]], port: int, rounds: int,
                     start: float = START, gap: float = 0.00002) -> Iterator[Frame]:
    """Every connection (client, client port, server) opened, then ``rounds`` reads on
    each in turn, round-robin, then every FIN: all of them live at once, each with its
    reassembly state and its pair in the inventory."""
    t = start
    seqs = []
    for c, cport, s in conns:
        for frame in (tcp_frame(c, cport, s, port, 1000, 0, SYN),
                      tcp_frame(s, port, c, cport, 5000, 1001, SYN | ACK),
                      tcp_frame(c, cport, s, port, 1001, 5001, ACK)):
            yield t, frame
            t += gap
        seqs.append([1001, 5001])
    for r in range(rounds):
        read = modbus(r, 1, struct.pack("!BHH", 3, 0, 10))
        answer = modbus(r, 1, struct.pack("!BB", 3, 20) + bytes(20))
        for i, (c, cport, s) in enumerate(conns):
            cs, ss = seqs[i]
            yield t, tcp_frame(c, cport, s, port, cs, ss, PSH | ACK, read)
            yield t + gap, tcp_frame(s, port, c, cport, ss, cs + len(read), PSH | ACK, answer)
            seqs[i] = [cs + len(read), ss + len(answer)]
            t += 2 * gap
    for i, (c, cport, s) in enumerate(conns):
        cs, ss = seqs[i]
        for frame in (tcp_frame(c, cport, s, port, cs, ss, FIN | ACK),
                      tcp_frame(s, port, c, cport, ss, cs + 1, FIN | ACK),
                      tcp_frame(c, cport, s, port, cs + 1, ss + 1, ACK)):
            yield t, frame
            t += gap


def write_pcap(path: Path, frames: Iterable[Frame]) -> int:
    """A microsecond pcap of Ethernet frames; returns the number of packets."""
    n = 0
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts, frame in frames:
            sec = int(ts)
            usec = round((ts - sec) * 1e6)
            if usec == 1_000_000:
                sec, usec = sec + 1, 0
            f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            f.write(frame)
            n += 1
    return n
