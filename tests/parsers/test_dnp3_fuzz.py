"""Property tests: no input, chunking or gap pattern makes DNP3Parser raise or outgrow its caps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mamori.parsers.dnp3 import DNP3Parser
from mamori.parsers.stream import Direction, FlowId, Transport
from tests.dnp3link import link_frame as frame

FLOWS = [
    FlowId(Transport.TCP, "10.0.0.1", 40000, "10.0.0.2", 20000),
    FlowId(Transport.UDP, "10.0.0.1", 40000, "10.0.0.2", 20000),
]
MAX_BUFFER = 512
MAX_FRAGMENT = 600
MAX_PENDING = 4
MAX_OUTSTANDING = 8


# Valid frames around random application data: the walker sees arbitrary fragments.
APP_PREFIXES = st.sampled_from(
    [b"", b"\xc0\x01", b"\xc0\x02", b"\xc0\x05", b"\xc0\x81\x00\x00", b"\xc0\x82\x00\x00"]
)
valid_frames = st.builds(
    lambda control, dst, src, tpdu, prefix, body: frame(
        control, dst, src, (bytes([tpdu]) + prefix + body)[:250]
    ),
    st.sampled_from([0xC4, 0x44, 0xC3, 0x53, 0xC9, 0x0B, 0x00, 0xFF]),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 255),
    APP_PREFIXES,
    st.binary(max_size=260),
)
chunks = st.one_of(st.binary(max_size=300), valid_frames)
steps = st.lists(
    st.tuples(
        st.sampled_from(["data", "data", "data", "split", "gap", "eof"]),
        st.sampled_from(list(Direction)),
        chunks,
        st.integers(1, 40),
    ),
    max_size=40,
)


def check_caps(parser: DNP3Parser) -> None:
    for link in parser._links:
        assert link.buffered <= MAX_BUFFER
    assert parser._transport.pending_count <= MAX_PENDING
    assert parser._transport.pending_bytes <= MAX_FRAGMENT
    assert len(parser._outstanding) <= MAX_OUTSTANDING
    assert len(parser._confirms) <= MAX_OUTSTANDING
    assert len(parser._continuing) <= MAX_OUTSTANDING


@settings(max_examples=400, deadline=None)
@given(flow=st.sampled_from(FLOWS), script=steps)
def test_never_raises_and_respects_caps(
    flow: FlowId, script: list[tuple[str, Direction, bytes, int]]
) -> None:
    parser = DNP3Parser(
        flow,
        max_fragment=MAX_FRAGMENT,
        max_pending=MAX_PENDING,
        max_buffer=MAX_BUFFER,
        max_outstanding=MAX_OUTSTANDING,
        max_objects=16,
        max_points=1000,
    )
    ts = 0.0
    for action, direction, data, size in script:
        ts += 0.01
        if action == "data":
            parser.receive(direction, data, ts)
        elif action == "split":
            for i in range(0, len(data), size):
                parser.receive(direction, data[i : i + size], ts)
        elif action == "gap":
            parser.gap(direction, size, ts)
        else:
            parser.eof(direction, ts)
        check_caps(parser)


@settings(max_examples=200, deadline=None)
@given(data=st.lists(chunks, max_size=8).map(b"".join), size=st.integers(1, 64))
def test_chunking_does_not_change_tcp_events(data: bytes, size: int) -> None:
    flow = FLOWS[0]
    whole = DNP3Parser(flow).receive(Direction.TO_SERVER, data, 1.0)
    parser = DNP3Parser(flow)
    pieces = []
    for i in range(0, len(data), size):
        pieces += parser.receive(Direction.TO_SERVER, data[i : i + size], 1.0)
    # NON_DNP3_DATA details carry byte counts that depend on chunking; compare kinds
    assert [type(e).__name__ + str(getattr(e, "kind", "")) for e in whole] == [
        type(e).__name__ + str(getattr(e, "kind", "")) for e in pieces
    ]
