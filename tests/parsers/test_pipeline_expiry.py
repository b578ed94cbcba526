"""Idle flows expire by packet time, not only every 1,024 packets.

The DNP3 benchmark loops a 73-packet capture, each copy an hour after the last.
With expiry checked only every 1,024 packets, every copy after the first found
the first copy's ended connection still in the table, took its SYN (same 4-tuple,
same ISN) for a retransmission and parsed nothing: 1 of 1,370 copies parsed. The
same held on any quiet link, where a flow idle for hours stayed in the table
until enough other packets came by.
"""

from __future__ import annotations

import struct

from mamori.parsers.modbus.events import ModbusRequest
from mamori.parsers.pipeline import Pipeline, PipelineConfig
from tests.stormcap import modbus, session

READ = modbus(1, 1, struct.pack("!BHH", 3, 0, 10))
ANSWER = modbus(1, 1, struct.pack("!BB", 3, 20) + bytes(20))


def _requests(pipeline: Pipeline, frames: list[tuple[float, bytes]]) -> int:
    events = [e for ts, frame in frames for e in pipeline.packet(ts, 1, frame)]
    events += pipeline.finish()
    return sum(isinstance(e, ModbusRequest) for e in events)


def test_the_same_connection_an_hour_later_is_parsed_again() -> None:
    one = list(session("10.0.0.1", 40000, 1000.0, [(READ, ANSWER)] * 5))  # 19 packets
    again = [(ts + 3600, frame) for ts, frame in one]  # same 4-tuple, same ISNs
    assert _requests(Pipeline(), one + again) == 10


def test_a_flow_idle_past_its_timeout_expires_at_the_next_packet() -> None:
    config = PipelineConfig()
    pipeline = Pipeline(config)
    for ts, frame in session("10.0.0.1", 40000, 1000.0, [(READ, ANSWER)], close=False):
        pipeline.packet(ts, 1, frame)
    assert pipeline.active_flows == 1
    later = 1000.0 + config.tcp_idle_timeout + 1
    ts, frame = next(iter(session("10.0.0.2", 40001, later, [])))  # another client's SYN
    pipeline.packet(ts, 1, frame)
    assert pipeline.stats.flows_expired == 1
    assert pipeline.active_flows == 0  # the new SYN waits in the handshake table
