"""Flow set-up from a handshake: the flow takes the handshake's FlowId when it may.

A connection per exchange (the DNP3 interop capture: 12,985 connections of about
nine packets) pays the flow set-up on every exchange, so the pipeline builds the
FlowId (four address strings) once, for the SYN's entry in the handshake table,
and the flow reuses it, unless the client's first frame after the handshake has
other MACs or another VLAN: then the flow's FlowId is built from that frame, as it
always was.
"""

from __future__ import annotations

import struct

from mamori.parsers.l2 import MacPairEvent, MacPairKind
from mamori.parsers.modbus.events import ModbusRequest
from mamori.parsers.pipeline import Pipeline
from mamori.parsers.stream import FlowId
from tests.stormcap import ACK, PORT, SERVER, SYN, modbus, session

CLIENT, CPORT = "10.0.0.1", 40000
READ = modbus(1, 1, struct.pack("!BHH", 3, 0, 10))
ANSWER = modbus(1, 1, struct.pack("!BB", 3, 20) + bytes(20))
KEY = (6, bytes(map(int, SERVER.split("."))), PORT, bytes(map(int, CLIENT.split("."))), CPORT)
OTHER_MAC = bytes.fromhex("0a1b2c3d4e5f")


def _run(frames: list[tuple[float, bytes]]) -> tuple[FlowId, list[object]]:
    """The handshake table's FlowId after the SYN, and every event."""
    pipeline = Pipeline()
    events: list[object] = list(pipeline.packet(frames[0][0], 1, frames[0][1]))
    pending = pipeline.handshakes.get(KEY)
    assert pending is not None
    for ts, frame in frames[1:]:
        events += pipeline.packet(ts, 1, frame)
    return pending.flow, events + pipeline.finish()


def _started(events: list[object], pairs: int = 1) -> MacPairEvent:
    """The flow's STARTED MAC pair event; ``pairs``: how many MAC pair events in all."""
    found = [e for e in events if isinstance(e, MacPairEvent)]
    assert len(found) == pairs and found[0].kind is MacPairKind.STARTED
    return found[0]


def test_the_flow_takes_the_handshakes_flow_id() -> None:
    made, events = _run(list(session(CLIENT, CPORT, 10.0, [(READ, ANSWER)])))
    started = _started(events)
    assert started.flow is made  # the same object, not an equal one built again
    assert (started.client_mac, started.server_mac) == ("02:00:0a:00:00:01",
                                                        "02:00:0a:00:00:05")
    assert (made.client_mac, made.server_mac, made.vlan) == (
        started.client_mac, started.server_mac, None)
    requests = [e for e in events if isinstance(e, ModbusRequest)]
    assert len(requests) == 1 and requests[0].flow is made


def test_a_first_frame_with_other_macs_builds_its_own() -> None:
    frames = list(session(CLIENT, CPORT, 10.0, [(READ, ANSWER)]))
    ts, ack = frames[2]
    assert ack[47] == ACK and frames[0][1][47] == SYN  # TCP flags: the ACK that opens the flow
    frames[2] = (ts, ack[:6] + OTHER_MAC + ack[12:])  # another client MAC
    made, events = _run(frames)
    started = _started(events, 2)  # the later frames have the SYN's MACs: CHANGED
    assert started.flow is not made and started.flow != made
    assert started.client_mac == started.flow.client_mac == "0a:1b:2c:3d:4e:5f"
    assert made.client_mac == "02:00:0a:00:00:01"
    assert started.flow.server_mac == made.server_mac


def test_a_first_frame_on_another_vlan_builds_its_own() -> None:
    frames = list(session(CLIENT, CPORT, 10.0, [(READ, ANSWER)]))
    ts, ack = frames[2]
    frames[2] = (ts, ack[:12] + struct.pack("!HH", 0x8100, 7) + ack[12:])  # 802.1Q, VLAN 7
    made, events = _run(frames)
    started = _started(events)
    assert made.vlan is None and started.flow.vlan == 7
    assert started.flow.client_mac == made.client_mac
