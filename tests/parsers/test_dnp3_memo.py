"""DNP3Memo: the parser says the same with a memo as without, empty, full or thrashing,
and the memo stays within every cap however much distinct traffic goes past it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mamori.parsers.dnp3 import DNP3Anomaly, DNP3AnomalyEvent, DNP3Parser, DNP3Request
from mamori.parsers.dnp3.events import DNP3Event
from mamori.parsers.dnp3.link import LinkFrame
from mamori.parsers.dnp3.memo import ENTRY_WEIGHT, DNP3Memo
from mamori.parsers.pipeline import DNP3, Pipeline
from mamori.parsers.stream import Direction, FlowId, Transport
from tests.dnp3link import link_frame as frame
from tests.parsers.test_dnp3_fuzz import FLOWS, chunks

TCP = FLOWS[0]
UP = Direction.TO_SERVER
DOWN = Direction.TO_CLIENT

# A small pool of chunks (valid frames and junk) drawn again and again, so that the
# memo sees the same bytes repeat, as polling does, cut at random places or whole.
scripts = st.lists(chunks, min_size=1, max_size=6).flatmap(
    lambda pool: st.tuples(
        st.just(pool),
        st.lists(
            st.tuples(
                st.sampled_from(["data", "data", "data", "split", "gap", "eof"]),
                st.sampled_from(list(Direction)),
                st.integers(0, len(pool) - 1),
                st.integers(1, 40),
            ),
            max_size=40,
        ),
    )
)


def play(
    flow: FlowId,
    pool: list[bytes],
    script: list[tuple[str, Direction, int, int]],
    memo: DNP3Memo | None,
    **limits: int,
) -> list[DNP3Event]:
    parser = DNP3Parser(flow, memo=memo, **limits)
    out: list[DNP3Event] = []
    ts = 0.0
    for action, direction, index, size in script:
        ts += 0.01
        data = pool[index]
        if action == "data":
            out += parser.receive(direction, data, ts)
        elif action == "split":
            for i in range(0, len(data), size):
                out += parser.receive(direction, data[i : i + size], ts)
        elif action == "gap":
            out += parser.gap(direction, size, ts)
        else:
            out += parser.eof(direction, ts)
    return out


def within_caps(memo: DNP3Memo) -> bool:
    return (len(memo.frames) <= memo.max_frames
            and len(memo.fragments) <= memo.max_fragments
            and memo.fragment_weight <= memo.max_fragment_weight
            and all(len(key) <= memo.max_fragment_key for key in memo.fragments))


@settings(max_examples=300, deadline=None)
@given(flow=st.sampled_from(FLOWS), played=scripts)
def test_events_are_the_same_with_a_memo_empty_full_and_thrashing(
    flow: FlowId, played: tuple[list[bytes], list[tuple[str, Direction, int, int]]]
) -> None:
    pool, script = played
    plain = play(flow, pool, script, None)
    shared = DNP3Memo()
    assert play(flow, pool, script, shared) == plain  # empty at first
    assert play(flow, pool, script, shared) == plain  # full of this script
    tiny = DNP3Memo(max_frames=1, max_fragments=1, max_fragment_key=64, max_fragment_weight=200)
    assert play(flow, pool, script, tiny) == plain  # emptied again and again
    assert within_caps(shared) and within_caps(tiny)
    # parsers with other limits share the memo and still say what they say alone
    strict = {"max_objects": 2, "max_points": 4}
    assert play(flow, pool, script, shared, **strict) == play(flow, pool, script, None, **strict)
    assert play(flow, pool, script, shared) == plain


def read(seq: int, group: int = 60, variation: int = 2) -> bytes:
    """A one-frame READ of ``group``/``variation``, all objects, master 1 -> outstation 4."""
    return frame(0xC4, 4, 1, bytes([0xC0, 0xC0 | seq & 0x0F, 0x01, group, variation, 0x06]))


def test_a_flood_of_distinct_frames_keeps_the_memo_at_its_caps() -> None:
    memo = DNP3Memo(max_frames=64, max_fragments=64, max_fragment_key=256,
                    max_fragment_weight=64 * 300)
    plain = DNP3Parser(TCP)
    cached = DNP3Parser(TCP, memo=memo)
    largest = 0
    for i in range(64 * 40):  # 40 times past the caps, every frame and fragment new
        data = read(i, 1 + i % 120, i // 120 % 256)  # known and unknown groups alike
        assert cached.receive(UP, data, float(i)) == plain.receive(UP, data, float(i))
        assert within_caps(memo)
        largest = max(largest, len(memo.frames))
    assert largest == 64  # it filled, and never grew past
    # hot frames are taken from it again once it refilled
    for i in range(3):
        assert cached.receive(UP, read(0), 1e4 + i) == plain.receive(UP, read(0), 1e4 + i)
    assert read(0) in memo.frames


def test_the_memo_is_what_answers_a_repeated_frame_and_fragment() -> None:
    """A repeated frame and fragment come from the memo, not from decoding again:
    tampering with what it holds shows in the events (this test would pass without
    a memo only if nothing were kept)."""
    memo = DNP3Memo()
    parser = DNP3Parser(TCP, memo=memo)
    data = read(3)
    first = parser.receive(UP, data, 1.0)
    assert [type(e) for e in first] == [DNP3Request]
    assert list(memo.frames) == [data]
    # the application bytes after the header, transport byte and control byte
    fragment = data[12:16]
    assert list(memo.fragments) == [fragment]
    control, dst, _, user = memo.frames[data]
    memo.frames[data] = LinkFrame(control, dst, 9, user)  # a source the bytes do not say
    assert parser.receive(UP, data, 2.0)[0].link_src == 9
    max_objects, max_points, app, problems = memo.fragments[fragment]
    assert problems == ()
    memo.fragments[fragment] = (max_objects, max_points, app, ((DNP3Anomaly.GAP, "planted"),))
    planted = parser.receive(UP, read(3), 3.0)
    assert isinstance(planted[-1], DNP3AnomalyEvent) and planted[-1].detail == "planted"


def test_bad_and_partial_frames_are_never_kept() -> None:
    memo = DNP3Memo()
    parser = DNP3Parser(TCP, memo=memo)
    good = read(1)
    bad = good[:-1] + bytes([good[-1] ^ 0xFF])  # the block CRC broken
    for ts in (1.0, 2.0):
        events = parser.receive(UP, bad, ts)
        assert [e.kind for e in events if isinstance(e, DNP3AnomalyEvent)] == [
            DNP3Anomaly.BAD_BLOCK_CRC
        ]
    assert not memo.frames and not memo.fragments
    assert parser.receive(UP, good[:12], 3.0) == []  # half a frame waits, and is not kept
    assert not memo.frames
    assert [type(e) for e in parser.receive(UP, good[12:], 4.0)] == [DNP3Request]
    assert list(memo.frames) == [good]  # whole once its second half came


def test_a_kept_fragment_is_used_only_with_the_limits_it_was_parsed_with() -> None:
    memo = DNP3Memo()
    two_headers = frame(0xC4, 4, 1, bytes([0xC0, 0xC1, 0x01, 60, 2, 0x06, 60, 3, 0x06]))
    strict = DNP3Parser(TCP, memo=memo, max_objects=1)
    loose = DNP3Parser(TCP, memo=memo)
    for _ in range(2):
        cut = strict.receive(UP, two_headers, 1.0)
        assert [e.kind for e in cut if isinstance(e, DNP3AnomalyEvent)] == [
            DNP3Anomaly.TOO_MANY_OBJECTS
        ]
        whole = loose.receive(UP, two_headers, 1.0)
        assert len(whole) == 1 and isinstance(whole[0], DNP3Request)
        assert len(whole[0].objects) == 2


def test_long_and_heavy_fragments_are_not_kept() -> None:
    # 40 class headers of 3 bytes: a 122-byte fragment, 40 headers and 40 details
    many = bytes([0xC0, 0xC2, 0x01]) + bytes([60, 1, 0x06]) * 40
    data = frame(0xC4, 4, 1, many)
    short_keys = DNP3Memo(max_fragment_key=100)
    light = DNP3Memo(max_fragment_weight=40 * ENTRY_WEIGHT)
    roomy = DNP3Memo()
    plain = DNP3Parser(TCP).receive(UP, data, 1.0)
    for memo in (short_keys, light, roomy):
        parser = DNP3Parser(TCP, memo=memo)
        assert parser.receive(UP, data, 1.0) == plain
        assert parser.receive(UP, data, 1.0) == plain
        assert within_caps(memo)
    assert not short_keys.fragments and not light.fragments
    assert list(roomy.fragments) == [many[2:]]  # no transport byte, no control byte
    assert roomy.fragment_weight == len(many) - 2 + ENTRY_WEIGHT * (1 + 40 + 40)


def test_a_pipeline_hands_one_memo_to_all_its_dnp3_parsers() -> None:
    pipeline = Pipeline()
    make = pipeline._factories[DNP3]
    one = make(FlowId(Transport.TCP, "10.0.0.1", 40000, "10.0.0.2", 20000))
    two = make(FlowId(Transport.TCP, "10.0.0.3", 40001, "10.0.0.2", 20000))
    assert isinstance(one, DNP3Parser) and isinstance(two, DNP3Parser)
    memo = one._memo
    assert memo is not None and two._memo is memo
    other = Pipeline()._factories[DNP3](one.flow)
    assert isinstance(other, DNP3Parser) and other._memo is not memo  # one per pipeline
    one.receive(UP, read(5), 1.0)
    assert read(5) in memo.frames
    assert two.receive(UP, read(5), 1.0) == DNP3Parser(two.flow).receive(UP, read(5), 1.0)


def test_polls_that_differ_in_their_sequence_number_share_one_entry() -> None:
    """A poll repeats with a new sequence number every exchange: the memo keeps its
    parse once, and each request still carries its own control byte and sequence."""
    memo = DNP3Memo()
    cached = DNP3Parser(TCP, memo=memo)
    plain = DNP3Parser(TCP)
    polls = [frame(0xC4, 4, 1, bytes([0xC0 | seq, 0xC0 | seq, 0x01, 60, 2, 0x06, 60, 3, 0x06]))
             for seq in range(16)]
    for ts, data in enumerate(polls):
        events = cached.receive(UP, data, float(ts))
        assert events == plain.receive(UP, data, float(ts))
        request = events[0]
        assert isinstance(request, DNP3Request)
        assert request.seq == ts and request.app_control == 0xC0 | ts
    assert len(memo.fragments) == 1
