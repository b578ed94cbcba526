"""Property: any bytes, in any chunking, with gaps and EOFs, give only Modbus events."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamori.parsers.modbus import ModbusAnomalyEvent, ModbusParser, ModbusRequest, ModbusResponse
from mamori.parsers.stream import Direction, FlowId, Transport

FLOW = FlowId(Transport.TCP, "203.0.113.1", 1024, "203.0.113.2", 502)
EVENT_TYPES = (ModbusRequest, ModbusResponse, ModbusAnomalyEvent)

# Bytes biased towards Modbus-looking input: real headers, zero runs, arbitrary bytes.
_header = st.builds(
    lambda tid, length, unit, fc, body: (
        tid.to_bytes(2, "big") + b"\x00\x00" + length.to_bytes(2, "big") + bytes([unit, fc]) + body
    ),
    st.integers(0, 3),
    st.integers(0, 300),
    st.integers(0, 255),
    st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43,
                     90, 0, 0x83, 0x80, 0xAB, 0xFF]),
    st.binary(max_size=40),
)
_chunk = st.one_of(st.binary(max_size=300), _header, st.just(b"\x00" * 12))
_action = st.tuples(
    st.sampled_from(["receive", "receive", "receive", "gap", "eof"]),
    st.sampled_from(list(Direction)),
    _chunk,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(_action, max_size=40), max_buffer=st.integers(268, 700),
       max_outstanding=st.integers(1, 5))
def test_arbitrary_input_gives_only_modbus_events(
    actions: list[tuple[str, Direction, bytes]], max_buffer: int, max_outstanding: int
) -> None:
    parser = ModbusParser(FLOW, max_buffer=max_buffer, max_outstanding=max_outstanding)
    ts = 0.0
    for action, direction, data in actions:
        ts += 0.5
        if action == "receive":
            events = parser.receive(direction, data, ts)
        elif action == "gap":
            events = parser.gap(direction, len(data), ts)
        else:
            events = parser.eof(direction, ts)
        for event in events:
            assert isinstance(event, EVENT_TYPES)
            assert event.flow is FLOW and event.ts == ts
        for side in Direction:
            assert parser.buffered(side) <= max_buffer
        assert parser.outstanding <= max_outstanding


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_chunking_does_not_change_a_synchronised_stream(data: bytes, cuts: list[int]) -> None:
    """Without resync, framing is independent of how the bytes are cut."""
    whole = ModbusParser(FLOW).receive(Direction.TO_CLIENT, data, 1.0)
    if any(isinstance(e, ModbusAnomalyEvent) and e.kind.name in {
        "INVALID_PROTOCOL_ID", "INVALID_LENGTH", "ADU_TOO_LONG"} for e in whole):
        return  # resync depends on lookahead, which depends on chunking
    parser = ModbusParser(FLOW)
    events = []
    previous = 0
    for cut in sorted({*cuts, len(data)}):
        if cut <= len(data):
            events += parser.receive(Direction.TO_CLIENT, data[previous:cut], 1.0)
            previous = cut
    assert events == whole
