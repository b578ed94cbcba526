"""A capture whose detection spans flows, for the capture-worker tests.

Every part below is spread over many TCP connections (and so, by the fanout hash,
over several worker processes), while the rule that fires counts across them:

* a point scan: one client opens ``scan`` connections to one server, each reading
  an address that does not exist (exception 2; M5 counts by server) and asking a
  new unit id for its identity (FC 17; M4 counts distinct units, M6 new units);
* many clients writing to one server: ``writers`` hosts, one connection and one
  Write Single Register each (M7 per write, the new-master and new-pair state);
* a DNP3 master link address used from two hosts: host A polls the outstation
  with link source 1, then host B polls it with link source 1 too (D15).

Host A's polls must not look periodic: a client whose polls come at a regular
interval becomes a "learning master" and its integrity polls are excused (D12),
while an irregular one raises D12. The tests replay at a fixed packet rate
(tcpreplay ``--pps``), which ignores the capture's times, so A's interval is made
of frames: 2 and 14 frames of filler (TCP port 80 between two other hosts, which
the sensor's port filter drops) between its polls in turn. Each interval is then
far outside half of the one before it whatever the replay's jitter, and D12 fires
in every run, rather than only in the runs where jitter broke the streak.

Frames are Ethernet/IPv4/TCP with correct checksums and correct DNP3 CRCs.
Addresses are private test hosts that exist only on the lab's wire.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from tests.dnp3link import link_frame as dnp3_frame
from tests.stormcap import ACK, FIN, PSH, SYN, Frame, modbus, tcp_frame, write_register

START = 1_700_000_000.0
MODBUS_SERVER = "10.60.0.5"
SCANNER = "10.60.0.9"
OUTSTATION = "10.62.0.4"
MASTER_A = "10.62.0.1"
MASTER_B = "10.62.0.2"
FILLER = ("10.63.0.1", "10.63.0.2")  # not on a protocol port: the sensor never sees it


def writer(n: int) -> str:
    return f"10.61.{n >> 8}.{n & 0xFF}"


def session(client: str, cport: int, server: str, port: int, ts: float,
            exchanges: list[tuple[bytes, bytes]], gap: float = 0.0005,
            spacing: tuple[int, ...] = ()) -> Iterator[Frame]:
    """One TCP connection: handshake, request/response pairs, FIN both ways.

    ``spacing[i % len]``: frames of filler sent after exchange i (see the module's doc).
    """
    c, s, t = 1001, 5001, ts
    for frame in (tcp_frame(client, cport, server, port, 1000, 0, SYN),
                  tcp_frame(server, port, client, cport, 5000, c, SYN | ACK),
                  tcp_frame(client, cport, server, port, c, s, ACK)):
        yield t, frame
        t += gap
    for i, (request, response) in enumerate(exchanges):
        yield t, tcp_frame(client, cport, server, port, c, s, PSH | ACK, request)
        c += len(request)
        t += gap
        yield t, tcp_frame(server, port, client, cport, s, c, PSH | ACK, response)
        s += len(response)
        t += gap
        for _ in range(spacing[i % len(spacing)] if spacing else 0):
            yield t, tcp_frame(FILLER[0], 80, FILLER[1], 45000, 1, 1, ACK)
            t += gap
    for frame in (tcp_frame(client, cport, server, port, c, s, FIN | ACK),
                  tcp_frame(server, port, client, cport, s, c + 1, FIN | ACK),
                  tcp_frame(client, cport, server, port, c + 1, s + 1, ACK)):
        yield t, frame
        t += gap


def integrity_poll(seq: int, src: int = 1, dst: int = 4) -> tuple[bytes, bytes]:
    """Read class 0 (g60v1, all) and its empty response, sequence ``seq``."""
    request = bytes([0xC0 | seq & 0x3F, 0xC0 | seq & 0x0F, 0x01, 0x3C, 0x01, 0x06])
    response = bytes([0xC0 | seq & 0x3F, 0xC0 | seq & 0x0F, 0x81, 0x00, 0x00])
    return dnp3_frame(0xC4, dst, src, request), dnp3_frame(0x44, src, dst, response)


def frames(scan: int = 16, writers: int = 24) -> Iterator[Frame]:
    t = START
    for i in range(scan):
        read = modbus(i + 1, i + 1, struct.pack("!BHH", 3, 1000 + 100 * i, 2))
        refused = modbus(i + 1, i + 1, bytes([0x83, 0x02]))
        report = modbus(i + 100, i + 1, bytes([17]))
        answer = modbus(i + 100, i + 1, bytes([17, 3, 0x2A, 0xFF, 0x00]))
        yield from session(SCANNER, 42000 + i, MODBUS_SERVER, 502, t,
                           [(read, refused), (report, answer)])
        t += 0.02
    for n in range(1, writers + 1):
        write = write_register(10, n)
        yield from session(writer(n), 43000 + n, MODBUS_SERVER, 502, t, [(write, write)])
        t += 0.02
    yield from session(MASTER_A, 44000, OUTSTATION, 20000, t,
                       [integrity_poll(seq) for seq in range(6)], spacing=(2, 14))
    t += 0.5
    yield from session(MASTER_B, 44001, OUTSTATION, 20000, t, [integrity_poll(7)])
