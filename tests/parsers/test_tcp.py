"""Tests for parsers/tcp.py: TCP reassembly into a StreamParser."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers.stream import Direction, FlowId, Transport
from parsers.tcp import (
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TcpAnomaly,
    TcpAnomalyEvent,
    TcpReassembler,
    seq_delta,
)

C2S = Direction.TO_SERVER
S2C = Direction.TO_CLIENT
FLOW = FlowId(Transport.TCP, "10.0.0.1", 40000, "10.0.0.2", 502)
DATA = TCP_PSH | TCP_ACK
M32 = 2**32


class Recorder:
    """A StreamParser that records every call; returns one marker event per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def receive(self, direction: Direction, data: bytes, ts: float) -> list[Any]:
        self.calls.append(("data", direction, data))
        return [("rx", direction, len(data))]

    def gap(self, direction: Direction, size: int, ts: float) -> list[Any]:
        self.calls.append(("gap", direction, size))
        return [("gap", direction, size)]

    def eof(self, direction: Direction, ts: float) -> list[Any]:
        self.calls.append(("eof", direction))
        return [("eof", direction)]

    def stream(self, direction: Direction) -> bytes:
        return b"".join(c[2] for c in self.calls if c[0] == "data" and c[1] == direction)

    def gaps(self, direction: Direction | None = None) -> list[int]:
        return [c[2] for c in self.calls if c[0] == "gap" and direction in (None, c[1])]

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


def make(**kw: int) -> tuple[TcpReassembler, Recorder]:
    rec = Recorder()
    return TcpReassembler(FLOW, rec, **kw), rec


def anomalies(events: Any) -> list[TcpAnomaly]:
    return [e.kind for e in events if isinstance(e, TcpAnomalyEvent)]


def handshake(r: TcpReassembler, cisn: int = 1000, sisn: int = 5000) -> None:
    assert list(r.segment(C2S, cisn, TCP_SYN, b"", 0.0)) == []
    assert list(r.segment(S2C, sisn, TCP_SYN | TCP_ACK, b"", 0.0)) == []
    assert list(r.segment(C2S, cisn + 1, TCP_ACK, b"", 0.0)) == []


# -- basics ---------------------------------------------------------------


def test_seq_delta_wraps() -> None:
    assert seq_delta(5, 2) == 3
    assert seq_delta(2, 5) == -3
    assert seq_delta(1, M32 - 1) == 2
    assert seq_delta(M32 - 1, 1) == -2


def test_in_order_both_directions_and_fin() -> None:
    r, rec = make()
    handshake(r)
    assert r.segment(C2S, 1001, DATA, b"hello", 1.0) == [("rx", C2S, 5)]
    assert r.segment(S2C, 5001, DATA, b"world!", 1.1) == [("rx", S2C, 6)]
    assert r.segment(C2S, 1006, DATA, b"more", 1.2) == [("rx", C2S, 4)]
    assert list(r.segment(C2S, 1010, TCP_FIN | TCP_ACK, b"", 2.0)) == [("eof", C2S)]
    assert not r.closed
    assert list(r.segment(S2C, 5007, TCP_FIN | TCP_ACK, b"", 2.1)) == [("eof", S2C)]
    assert r.closed
    assert rec.stream(C2S) == b"hellomore"
    assert rec.stream(S2C) == b"world!"
    assert (r.segments, r.bytes_delivered, r.gaps, r.retransmissions) == (8, 15, 0, 0)
    # The final ACK of the close is a pure ACK.
    assert list(r.segment(C2S, 1011, TCP_ACK, b"", 2.2)) == []
    assert list(r.close(3.0)) == []


def test_fast_path_returns_parser_list_and_pure_ack_shared_empty() -> None:
    r, _ = make()
    handshake(r)
    sentinel: list[Any] = ["x"]

    class Fixed(Recorder):
        def receive(self, direction: Direction, data: bytes, ts: float) -> list[Any]:
            return sentinel

    fixed = TcpReassembler(FLOW, Fixed())
    handshake(fixed)
    assert fixed.segment(C2S, 1001, DATA, b"abc", 0.0) is sentinel
    a = fixed.segment(C2S, 1004, TCP_ACK, b"", 0.0)
    b = fixed.segment(S2C, 5001, TCP_ACK, b"", 0.0)
    assert a is b and len(a) == 0


def test_handshake_sets_isn_plus_one_and_fin_in_data_segment() -> None:
    r, rec = make()
    handshake(r, cisn=7, sisn=70)
    r.segment(C2S, 8, DATA | TCP_FIN, b"req", 0.0)  # data and FIN together
    r.segment(S2C, 71, DATA, b"resp", 0.0)
    assert rec.calls == [("data", C2S, b"req"), ("eof", C2S), ("data", S2C, b"resp")]


def test_syn_payload_starts_after_syn() -> None:
    r, rec = make()
    r.segment(C2S, 99, TCP_SYN, b"tfo", 0.0)  # TCP Fast Open style data on SYN
    r.segment(C2S, 103, DATA, b"next", 0.0)
    assert rec.stream(C2S) == b"tfonext"


def test_one_byte_at_a_time() -> None:
    payload = bytes(range(256)) * 3
    r, rec = make()
    handshake(r)
    for i, b in enumerate(payload):
        r.segment(C2S, 1001 + i, DATA, bytes([b]), 0.0)
    assert rec.stream(C2S) == payload
    assert r.buffered_bytes == 0


def test_repeated_syn_is_a_retransmission() -> None:
    r, rec = make()
    r.segment(C2S, 10, TCP_SYN, b"", 0.0)
    r.segment(C2S, 10, TCP_SYN, b"", 0.1)
    r.segment(C2S, 11, DATA, b"x", 0.2)
    assert rec.stream(C2S) == b"x"
    assert r.retransmissions == 1


# -- out of order, retransmission, overlap ---------------------------------


def test_out_of_order_is_buffered_then_delivered_in_order() -> None:
    r, rec = make()
    handshake(r)
    assert anomalies(r.segment(C2S, 1004, DATA, b"def", 0.0)) == []
    assert r.buffered_bytes == 3
    assert rec.calls == []
    r.segment(C2S, 1007, DATA, b"ghi", 0.0)
    out = r.segment(C2S, 1001, DATA, b"abc", 0.0)
    assert list(out) == [("rx", C2S, 3), ("rx", C2S, 3), ("rx", C2S, 3)]
    assert rec.stream(C2S) == b"abcdefghi"
    assert r.buffered_bytes == 0
    assert r.out_of_order == 2
    # Back on the fast path afterwards.
    assert r.segment(C2S, 1010, DATA, b"j", 0.0) == [("rx", C2S, 1)]


def test_plain_retransmission_counted_not_delivered() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA, b"abcd", 0.0)
    assert list(r.segment(C2S, 1001, DATA, b"abcd", 0.1)) == []
    assert list(r.segment(C2S, 1003, DATA, b"cd", 0.1)) == []
    assert rec.stream(C2S) == b"abcd"
    assert r.retransmissions == 2


def test_partial_overlap_with_delivered_data_is_trimmed() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA, b"abcd", 0.0)
    r.segment(C2S, 1003, DATA, b"cdEF", 0.0)  # old part "cd", new part "EF"
    assert rec.stream(C2S) == b"abcdEF"
    assert r.retransmissions == 1


def test_duplicate_of_buffered_segment() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1003, DATA, b"cd", 0.0)
    assert anomalies(r.segment(C2S, 1003, DATA, b"cd", 0.0)) == []
    assert r.buffered_bytes == 2
    r.segment(C2S, 1001, DATA, b"ab", 0.0)
    assert rec.stream(C2S) == b"abcd"


def test_overlap_mismatch_first_arrival_wins() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1005, DATA, b"EFGH", 0.0)
    out = r.segment(C2S, 1003, DATA, b"cdXXgh", 0.0)  # "XX" contradicts "EF"
    assert anomalies(out) == [TcpAnomaly.OVERLAP_MISMATCH]
    r.segment(C2S, 1001, DATA, b"ab", 0.0)
    assert rec.stream(C2S) == b"abcdEFGH"


def test_overlap_spanning_several_buffered_pieces() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1003, DATA, b"c", 0.0)
    r.segment(C2S, 1006, DATA, b"f", 0.0)
    out = r.segment(C2S, 1002, DATA, b"bcdefgh", 0.0)  # agrees on c and f
    assert anomalies(out) == []
    r.segment(C2S, 1001, DATA, b"a", 0.0)
    assert rec.stream(C2S) == b"abcdefgh"
    assert r.buffered_bytes == 0


def test_in_order_segment_overlapping_buffered_data() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1004, DATA, b"DEF", 0.0)
    out = r.segment(C2S, 1001, DATA, b"abcdZ", 0.0)  # "dZ" overlaps "DE" and differs
    assert anomalies(out) == [TcpAnomaly.OVERLAP_MISMATCH]
    assert rec.stream(C2S) == b"abcDEF"


# -- wraparound -----------------------------------------------------------


def test_seq_wraparound_in_order_and_out_of_order() -> None:
    r, rec = make()
    isn = M32 - 3
    r.segment(C2S, isn, TCP_SYN, b"", 0.0)  # data starts at 2**32 - 2
    r.segment(C2S, M32 - 2, DATA, b"ab", 0.0)  # ends exactly at the wrap
    r.segment(C2S, 3, DATA, b"fg", 0.0)  # ahead, after the wrap
    r.segment(C2S, M32 - 2 + 2, DATA, b"cde", 0.0)  # seq 0
    r.segment(C2S, 5, DATA, b"h", 0.0)
    assert rec.stream(C2S) == b"abcdefgh"
    r.segment(C2S, 6, TCP_FIN, b"", 0.0)
    assert rec.calls[-1] == ("eof", C2S)
    assert r.gaps == 0


def test_segment_straddling_the_wrap_with_retransmission() -> None:
    r, rec = make()
    r.segment(C2S, M32 - 1, TCP_SYN, b"", 0.0)  # data starts at 0
    r.segment(C2S, 0, DATA, b"abc", 0.0)
    r.segment(C2S, 1, DATA, b"bcde", 0.0)  # overlaps "bc"
    assert rec.stream(C2S) == b"abcde"
    r2, rec2 = make()
    r2.segment(C2S, M32 - 10, TCP_SYN, b"", 0.0)
    r2.segment(C2S, M32 - 6, DATA, b"defghijk", 0.0)  # crosses 2**32, out of order
    r2.segment(C2S, M32 - 9, DATA, b"abc", 0.0)
    assert rec2.stream(C2S) == b"abcdefghijk"


# -- pickup, gaps, caps ---------------------------------------------------


def test_midstream_pickup_once_per_direction() -> None:
    r, rec = make()
    out = r.segment(C2S, 123456, DATA, b"xyz", 0.0)
    assert anomalies(out) == [TcpAnomaly.MIDSTREAM_PICKUP]
    assert rec.calls == [("data", C2S, b"xyz")]  # no gap call: the parser resyncs itself
    assert r.segment(C2S, 123459, DATA, b"uvw", 0.0) == [("rx", C2S, 3)]
    out = r.segment(S2C, 99, DATA, b"r", 0.0)
    assert anomalies(out) == [TcpAnomaly.MIDSTREAM_PICKUP]
    assert anomalies(r.segment(S2C, 100, DATA, b"s", 0.0)) == []
    assert r.gaps == 0
    # A pure ACK never starts a direction.
    r2, rec2 = make()
    assert list(r2.segment(C2S, 5, TCP_ACK, b"", 0.0)) == []
    assert rec2.calls == []


def test_close_reports_holes_as_gaps_then_eof() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA, b"ab", 0.0)
    r.segment(C2S, 1005, DATA, b"ef", 0.0)  # hole of 2 ("cd")
    r.segment(C2S, 1010, DATA, b"j", 0.0)  # hole of 3 ("ghi")
    r.segment(S2C, 5003, DATA, b"zz", 0.0)  # hole of 2 in the other direction
    out = r.close(9.0)
    assert rec.calls[1:] == [
        ("gap", C2S, 2), ("data", C2S, b"ef"), ("gap", C2S, 3), ("data", C2S, b"j"),
        ("eof", C2S), ("gap", S2C, 2), ("data", S2C, b"zz"), ("eof", S2C),
    ]
    gap_events = [e for e in out if isinstance(e, TcpAnomalyEvent)]
    assert [(e.kind, e.direction, e.size) for e in gap_events] == [
        (TcpAnomaly.GAP, C2S, 2), (TcpAnomaly.GAP, C2S, 3), (TcpAnomaly.GAP, S2C, 2),
    ]
    # The GAP anomaly comes just before the parser's own gap events.
    i = out.index(gap_events[0])
    assert out[i + 1] == ("gap", C2S, 2)
    assert (r.gaps, r.gap_bytes, r.buffered_bytes) == (3, 7, 0)
    assert r.closed
    assert list(r.close(10.0)) == []


def test_close_without_traffic_eofs_both() -> None:
    r, rec = make()
    r.close(1.0)
    assert rec.calls == [("eof", C2S), ("eof", S2C)]
    assert r.closed


def test_byte_cap_reports_gap_and_skips_ahead() -> None:
    r, rec = make(max_buffered=10)
    handshake(r)
    r.segment(C2S, 1011, DATA, b"k" * 6, 0.0)  # hole of 10 before it
    assert r.buffered_bytes == 6
    out = r.segment(C2S, 1017, DATA, b"q" * 6, 0.0)  # 12 > 10
    assert anomalies(out) == [TcpAnomaly.BUFFER_CAP, TcpAnomaly.GAP]
    assert rec.calls == [("gap", C2S, 10), ("data", C2S, b"k" * 6), ("data", C2S, b"q" * 6)]
    assert r.buffered_bytes == 0
    # The late bytes of the hole are now old: dropped as retransmission.
    r.segment(C2S, 1001, DATA, b"a" * 10, 0.0)
    assert rec.stream(C2S) == b"k" * 6 + b"q" * 6


def test_single_segment_bigger_than_cap() -> None:
    r, rec = make(max_buffered=4)
    handshake(r)
    out = r.segment(C2S, 1003, DATA, b"0123456789", 0.0)
    assert anomalies(out) == [TcpAnomaly.BUFFER_CAP, TcpAnomaly.GAP]
    assert rec.calls == [("gap", C2S, 2), ("data", C2S, b"0123456789")]
    assert r.buffered_bytes == 0


def test_segment_count_cap() -> None:
    r, rec = make(max_segments=3)
    handshake(r)
    for i in range(3):
        r.segment(C2S, 1003 + 2 * i, DATA, b"x", 0.0)  # 1003, 1005, 1007: holes of 1
    assert rec.calls == []
    out = r.segment(C2S, 1009, DATA, b"y", 0.0)
    assert anomalies(out)[:2] == [TcpAnomaly.BUFFER_CAP, TcpAnomaly.GAP]
    assert rec.calls == [("gap", C2S, 2), ("data", C2S, b"x")]
    assert r.buffered_bytes == 3


def test_cap_evicts_other_direction_when_needed() -> None:
    r, rec = make(max_buffered=8)
    handshake(r)
    r.segment(S2C, 5003, DATA, b"s" * 8, 0.0)  # server side fills the cap
    r.segment(C2S, 1003, DATA, b"c", 0.0)  # client side has nothing to evict but itself
    assert r.buffered_bytes <= 8
    assert ("gap", C2S, 2) in rec.calls
    assert r.buffered_bytes == 8
    r.segment(S2C, 5011, DATA, b"t", 0.0)
    assert ("gap", S2C, 2) in rec.calls
    assert rec.stream(S2C) == b"s" * 8 + b"t"


# -- FIN, RST, after the end, reuse, jumps --------------------------------


def test_fin_waits_for_buffered_data() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1004, DATA | TCP_FIN, b"def", 0.0)  # FIN at 1007, hole before
    r.segment(C2S, 1001, DATA, b"ab", 0.0)
    assert rec.kinds() == ["data"]
    r.segment(C2S, 1003, DATA, b"c", 0.0)
    assert rec.calls == [
        ("data", C2S, b"ab"), ("data", C2S, b"c"), ("data", C2S, b"def"), ("eof", C2S),
    ]


def test_fin_with_hole_flushed_when_other_side_done() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA, b"ab", 0.0)
    r.segment(C2S, 1006, DATA | TCP_FIN, b"fg", 0.0)  # hole "cde"
    r.segment(S2C, 5001, DATA | TCP_FIN, b"ok", 0.0)
    assert rec.calls == [
        ("data", C2S, b"ab"), ("data", S2C, b"ok"), ("eof", S2C),
        ("gap", C2S, 3), ("data", C2S, b"fg"), ("eof", C2S),
    ]
    assert r.closed


def test_fin_with_hole_and_nothing_buffered_reports_hole_at_close() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1005, TCP_FIN, b"", 0.0)  # 4 bytes missing before the FIN
    assert rec.calls == []
    r.close(1.0)
    assert rec.calls == [("gap", C2S, 4), ("eof", C2S), ("eof", S2C)]


def test_data_beyond_known_fin_is_dropped() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1003, TCP_FIN, b"", 0.0)
    out = r.segment(C2S, 1002, DATA, b"bXY", 0.0)  # "XY" lies beyond the FIN
    assert anomalies(out) == [TcpAnomaly.DATA_AFTER_FIN]
    r.segment(C2S, 1001, DATA, b"a", 0.0)
    assert rec.calls == [("data", C2S, b"a"), ("data", C2S, b"b"), ("eof", C2S)]


def test_late_fin_trims_buffered_data_beyond_it() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1003, DATA, b"cdef", 0.0)
    out = r.segment(C2S, 1001, DATA | TCP_FIN, b"ab", 0.0)  # FIN at 1003
    kinds = anomalies(out)
    assert kinds == [TcpAnomaly.DATA_AFTER_FIN]
    assert rec.calls == [("data", C2S, b"ab"), ("eof", C2S)]
    assert r.buffered_bytes == 0


def test_conflicting_fin_flags_mismatch() -> None:
    r, _ = make()
    handshake(r)
    r.segment(C2S, 1005, TCP_FIN, b"", 0.0)
    assert anomalies(r.segment(C2S, 1007, TCP_FIN, b"", 0.0)) == [
        TcpAnomaly.OVERLAP_MISMATCH
    ]
    assert anomalies(r.segment(C2S, 1005, TCP_FIN, b"", 0.0)) == []
    assert r.retransmissions == 1


def test_rst_flushes_both_directions() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA, b"ab", 0.0)
    r.segment(C2S, 1004, DATA, b"d", 0.0)
    r.segment(S2C, 5002, DATA, b"Y", 0.0)
    out = r.segment(S2C, 5003, TCP_RST | TCP_ACK, b"", 1.0)
    assert rec.calls[1:] == [
        ("gap", S2C, 1), ("data", S2C, b"Y"), ("eof", S2C),
        ("gap", C2S, 1), ("data", C2S, b"d"), ("eof", C2S),
    ]
    assert anomalies(out) == [TcpAnomaly.GAP, TcpAnomaly.GAP]
    assert r.closed and r.buffered_bytes == 0
    # A second RST changes nothing.
    assert list(r.segment(C2S, 1005, TCP_RST, b"", 1.1)) == []


def test_rst_on_clean_connection_only_eofs() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA, b"ab", 0.0)
    out = r.segment(C2S, 1003, TCP_RST, b"ignored", 0.0)
    assert list(out) == [("eof", C2S), ("eof", S2C)]
    assert rec.stream(C2S) == b"ab"


def test_data_after_fin_is_reported_and_ignored() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA | TCP_FIN, b"ab", 0.0)  # FIN at 1003
    out = r.segment(C2S, 1004, DATA, b"sneaky", 0.0)
    assert anomalies(out) == [TcpAnomaly.DATA_AFTER_FIN]
    ev = out[0]
    assert isinstance(ev, TcpAnomalyEvent) and ev.size == 6 and ev.flow == FLOW
    # Retransmitted FIN and old data are not anomalies.
    assert list(r.segment(C2S, 1003, TCP_FIN | TCP_ACK, b"", 0.0)) == []
    assert list(r.segment(C2S, 1001, DATA, b"ab", 0.0)) == []
    assert rec.stream(C2S) == b"ab"
    # After RST too.
    r.segment(S2C, 5001, TCP_RST, b"", 0.0)
    assert anomalies(r.segment(S2C, 5001, DATA, b"late", 0.0)) == [
        TcpAnomaly.DATA_AFTER_FIN
    ]


def test_syn_reuse_starts_a_new_connection() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA | TCP_FIN, b"old", 0.0)
    r.segment(S2C, 5001, TCP_FIN | TCP_ACK, b"", 0.0)
    assert r.closed
    out = r.segment(C2S, 777, TCP_SYN, b"", 5.0)
    assert anomalies(out) == [TcpAnomaly.CONNECTION_REUSED]
    assert not r.closed
    r.segment(S2C, 888, TCP_SYN | TCP_ACK, b"", 5.0)
    assert anomalies(r.segment(C2S, 778, DATA, b"new", 5.1)) == []
    assert anomalies(r.segment(S2C, 889, DATA, b"NEW", 5.1)) == []
    assert rec.stream(C2S) == b"oldnew"
    assert rec.stream(S2C) == b"NEW"
    # Retransmitted SYN of the new connection is not a reuse.
    assert anomalies(r.segment(C2S, 777, TCP_SYN, b"", 5.2)) == []


def test_syn_reuse_on_open_connection_flushes_old_state() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1003, DATA, b"c", 0.0)  # buffered behind a hole
    out = r.segment(C2S, 42, TCP_SYN, b"", 1.0)
    assert anomalies(out) == [TcpAnomaly.GAP, TcpAnomaly.CONNECTION_REUSED]
    assert out[-1].kind is TcpAnomaly.CONNECTION_REUSED
    assert rec.calls == [("gap", C2S, 2), ("data", C2S, b"c"), ("eof", C2S), ("eof", S2C)]
    assert r.buffered_bytes == 0
    r.segment(C2S, 43, DATA, b"fresh", 1.0)
    assert rec.calls[-1] == ("data", C2S, b"fresh")


def test_seq_jump_restarts_with_unknown_gap() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA, b"ab", 0.0)
    r.segment(C2S, 1005, DATA, b"e", 0.0)  # buffered
    far = (1003 + (1 << 31) - 100) & (M32 - 1)
    out = r.segment(C2S, far, DATA, b"zz", 0.0)
    assert anomalies(out) == [TcpAnomaly.SEQ_JUMP, TcpAnomaly.GAP, TcpAnomaly.GAP]
    assert rec.calls[1:] == [
        ("gap", C2S, 2), ("data", C2S, b"e"), ("gap", C2S, 0), ("data", C2S, b"zz"),
    ]
    assert r.segment(C2S, far + 2, DATA, b"y", 0.0) == [("rx", C2S, 1)]


def test_seq_jump_threshold_is_configurable_and_works_backwards() -> None:
    r, rec = make(max_seq_jump=1000)
    handshake(r)
    r.segment(C2S, 1001, DATA, b"ab", 0.0)
    assert anomalies(r.segment(C2S, 500, DATA, b"old", 0.0)) == []  # 501 back: retransmission
    out = r.segment(C2S, 1, DATA, b"back", 0.0)  # 1002 back: desync
    assert anomalies(out) == [TcpAnomaly.SEQ_JUMP, TcpAnomaly.GAP]
    assert rec.stream(C2S) == b"abback"


def test_constructor_validates_limits() -> None:
    with pytest.raises(ValueError):
        TcpReassembler(FLOW, Recorder(), max_buffered=-1)
    with pytest.raises(ValueError):
        TcpReassembler(FLOW, Recorder(), max_seq_jump=0)
    with pytest.raises(ValueError):
        TcpAnomalyEvent(0.0, FLOW, C2S, TcpAnomaly.GAP, size=-1)


# -- properties -----------------------------------------------------------


@st.composite
def segmented_stream(draw: st.DrawFn) -> tuple[int, bytes, list[tuple[int, bytes, bool]]]:
    """An ISN, a byte string, and a shuffled, duplicated, overlapping segmentation."""
    isn = draw(st.integers(0, M32 - 1))
    data = draw(st.binary(min_size=1, max_size=300))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(data) - 1), max_size=20))
                      if len(data) > 1 else []))
    bounds = [0, *cuts, len(data)]
    segs = [(a, data[a:b], False) for a, b in pairwise(bounds)]
    # Some extra overlapping windows, consistent with the data.
    for _ in range(draw(st.integers(0, 5))):
        a = draw(st.integers(0, len(data) - 1))
        b = draw(st.integers(a + 1, len(data)))
        segs.append((a, data[a:b], False))
    segs.append((len(data), b"", True))  # the FIN
    segs += draw(st.lists(st.sampled_from(segs), max_size=5))  # duplicates
    return isn, data, draw(st.permutations(segs))


@settings(max_examples=300, deadline=None)
@given(segmented_stream())
def test_any_permutation_yields_original_bytes(
    case: tuple[int, bytes, list[tuple[int, bytes, bool]]],
) -> None:
    isn, data, segs = case
    r, rec = make()
    r.segment(C2S, isn, TCP_SYN, b"", 0.0)
    for off, chunk, fin in segs:
        out = r.segment(C2S, (isn + 1 + off) & (M32 - 1), DATA | (TCP_FIN if fin else 0),
                        chunk, 0.0)
        assert anomalies(out) == []
    assert rec.stream(C2S) == data
    assert rec.gaps() == []
    assert rec.calls[-1] == ("eof", C2S)
    assert r.buffered_bytes == 0


flags_st = st.sampled_from([
    TCP_ACK, DATA, TCP_SYN, TCP_SYN | TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST, DATA | TCP_FIN,
    TCP_SYN | TCP_FIN, 0,
])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([C2S, S2C]),
            st.one_of(st.integers(0, M32 - 1), st.integers(0, 200)),
            flags_st,
            st.binary(max_size=40),
        ),
        max_size=60,
    ),
    st.integers(0, 64),
    st.integers(0, 6),
)
def test_arbitrary_segments_never_raise_and_respect_caps(
    segs: list[tuple[Direction, int, int, bytes]], max_buffered: int, max_segments: int
) -> None:
    r, rec = make(max_buffered=max_buffered, max_segments=max_segments)
    ended = {C2S: False, S2C: False}

    def check(events: Any) -> None:
        # Nothing reaches the parser for a direction after its eof, unless reused;
        # every gap call follows a GAP anomaly of the same direction and size.
        prev: Any = None
        for e in events:
            if isinstance(e, tuple) and e[0] == "gap":
                assert isinstance(prev, TcpAnomalyEvent) and prev.kind is TcpAnomaly.GAP
                assert (prev.direction, prev.size) == (e[1], e[2])
            prev = e
            if isinstance(e, TcpAnomalyEvent):
                if e.kind is TcpAnomaly.CONNECTION_REUSED:
                    assert all(ended.values())  # the old connection was ended first
                    ended[C2S] = ended[S2C] = False
                continue
            assert not ended[e[1]], e
            if e[0] == "eof":
                ended[e[1]] = True

    for d, seq, flags, payload in segs:
        check(r.segment(d, seq, flags, payload, 0.0))
        assert r.closed == all(ended.values())
        assert r.buffered_bytes <= max_buffered
        assert sum(len(b) for b in r._buf) <= max_segments
        assert r.buffered_bytes == sum(len(p[1]) for b in r._buf for p in b)
    check(r.close(1.0))
    assert all(ended.values())
    assert r.closed and r.buffered_bytes == 0
    eofs = sum(1 for c in rec.calls if c[0] == "eof")
    assert eofs >= 2  # both directions, more if the connection was reused


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.data())
def test_gaps_account_for_every_missing_byte(data: bytes, draw: st.DataObject) -> None:
    """Drop some segments: delivered bytes + gap bytes == stream length, order kept."""
    r, rec = make()
    r.segment(C2S, 0, TCP_SYN, b"", 0.0)
    cuts = sorted(set(draw.draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=10))))
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    kept = []
    for a, b in pairwise(bounds):
        if draw.draw(st.booleans()):
            kept.append((a, data[a:b]))
    for a, chunk in draw.draw(st.permutations(kept)):
        r.segment(C2S, 1 + a, DATA, chunk, 0.0)
    r.segment(C2S, 1 + len(data), TCP_FIN, b"", 0.0)
    r.close(1.0)
    assert r.bytes_delivered + r.gap_bytes == len(data)
    # Rebuild the stream with the gaps as placeholders; it must line up.
    rebuilt = b""
    for c in rec.calls:
        if c[1] != C2S:
            continue
        if c[0] == "data":
            rebuilt += c[2]
        elif c[0] == "gap":
            rebuilt += b"\0" * c[2]
    expect = bytearray(len(data))
    for a, chunk in kept:
        expect[a : a + len(chunk)] = chunk
    assert rebuilt == bytes(expect)
