"""Tests for parsers/tcp.py: TCP reassembly into a StreamParser."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import mamori.parsers.tcp as tcp_module
from mamori.parsers.stream import Direction, FlowId, Transport
from mamori.parsers.tcp import (
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
        self.rx_ts: list[tuple[bytes, float]] = []  # (data, ts) of every receive call

    def receive(self, direction: Direction, data: bytes, ts: float) -> list[Any]:
        self.calls.append(("data", direction, data))
        self.rx_ts.append((data, ts))
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


def make(**kw: Any) -> tuple[TcpReassembler[Any], Recorder]:
    """A reassembler on a recorder. ACK-revealed holes are gapped at once here
    (``ack_grace=0``) unless a test passes a grace; the grace has its own tests."""
    kw.setdefault("ack_grace", 0.0)
    rec = Recorder()
    return TcpReassembler(FLOW, rec, **kw), rec


def anomalies(events: Any) -> list[TcpAnomaly]:
    return [e.kind for e in events if isinstance(e, TcpAnomalyEvent)]


def handshake(r: TcpReassembler[Any], cisn: int = 1000, sisn: int = 5000) -> None:
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
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            TcpReassembler(FLOW, Recorder(), hole_timeout=bad)


# -- ACK-driven holes, hole timeout, per-piece timestamps ------------------


def gap_events(events: Any) -> list[TcpAnomalyEvent]:
    return [e for e in events if isinstance(e, TcpAnomalyEvent) and e.kind is TcpAnomaly.GAP]


def test_ack_beyond_hole_reports_gap_and_delivers_with_piece_ts() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA, b"req1", 1.0, 5001)
    r.segment(S2C, 5001, DATA, b"rsp1", 1.1, 1005)
    # Request 2 (1005..1009) is never captured; request 3 arrives behind the hole.
    assert list(r.segment(C2S, 1009, DATA, b"req3", 2.0, 5005)) == []
    assert r.buffered_bytes == 4
    # The server's reply acknowledges 1013: the hole can never be filled.
    out = r.segment(S2C, 5005, DATA, b"rsp2", 2.5, 1013)
    gaps = gap_events(out)
    assert [(e.direction, e.size, e.ts) for e in gaps] == [(C2S, 4, 2.5)]
    assert gaps[0].detail == "acknowledged, never captured"
    # The other side's data first (it was acknowledged), then this segment's own.
    assert rec.calls[-3:] == [("gap", C2S, 4), ("data", C2S, b"req3"), ("data", S2C, b"rsp2")]
    assert rec.rx_ts[-2:] == [(b"req3", 2.0), (b"rsp2", 2.5)]  # req3 keeps its own time
    assert (r.gaps, r.gap_bytes, r.acked_holes, r.buffered_bytes) == (1, 4, 1, 0)
    # Both directions are back on the fast path.
    assert r.segment(C2S, 1013, DATA, b"req4", 3.0, 5009) == [("rx", C2S, 4)]
    assert r.segment(S2C, 5009, DATA, b"rsp4", 3.1, 1017) == [("rx", S2C, 4)]


def test_pure_ack_beyond_several_holes_and_partial_ack() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1003, DATA, b"cc", 1.0)  # holes: 1001-1002, 1005-1006, 1009-1010
    r.segment(C2S, 1007, DATA, b"gg", 1.1)
    r.segment(C2S, 1011, DATA, b"kk", 1.2)
    # An ACK inside the first hole: only the acknowledged part is lost.
    out = r.segment(S2C, 5001, TCP_ACK, b"", 2.0, 1002)
    assert [e.size for e in gap_events(out)] == [1]
    assert rec.calls == [("gap", C2S, 1)]
    assert r.buffered_bytes == 6
    out = r.segment(S2C, 5001, TCP_ACK, b"", 2.1, 1013)
    assert [e.size for e in gap_events(out)] == [1, 2, 2]
    assert rec.calls[1:] == [
        ("gap", C2S, 1), ("data", C2S, b"cc"), ("gap", C2S, 2), ("data", C2S, b"gg"),
        ("gap", C2S, 2), ("data", C2S, b"kk"),
    ]
    assert rec.rx_ts == [(b"cc", 1.0), (b"gg", 1.1), (b"kk", 1.2)]
    assert r.bytes_delivered + r.gap_bytes == 12


def test_ack_of_uncaptured_data_with_nothing_buffered() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA, b"req1", 1.0, 5001)
    # The server's response (5001..5010) is lost; the next request acks it.
    out = r.segment(C2S, 1005, DATA, b"req2", 2.0, 5010)
    assert [(e.direction, e.size, e.ts) for e in gap_events(out)] == [(S2C, 9, 2.0)]
    assert rec.calls[-2:] == [("gap", S2C, 9), ("data", C2S, b"req2")]
    # The next response is in order again: fast path, no buffering.
    assert r.segment(S2C, 5010, DATA, b"rsp2", 2.1, 1009) == [("rx", S2C, 4)]
    assert r.buffered_bytes == 0 and r.gaps == 1


def test_handshake_fin_and_lagging_acks_cause_no_gaps() -> None:
    r, rec = make()
    assert list(r.segment(C2S, 1000, TCP_SYN, b"", 0.0)) == []
    assert list(r.segment(S2C, 5000, TCP_SYN | TCP_ACK, b"", 0.0, 1001)) == []
    assert list(r.segment(C2S, 1001, TCP_ACK, b"", 0.0, 5001)) == []
    r.segment(C2S, 1001, DATA, b"abcd", 1.0, 5001)
    r.segment(C2S, 1005, DATA, b"efgh", 1.0, 5001)
    assert list(r.segment(S2C, 5001, TCP_ACK, b"", 1.1, 1005)) == []  # lagging ACK
    assert list(r.segment(S2C, 5001, TCP_ACK, b"", 1.1, 1009)) == []
    r.segment(C2S, 1009, TCP_FIN | TCP_ACK, b"", 2.0, 5001)
    out = r.segment(S2C, 5001, TCP_ACK, b"", 2.1, 1010)  # ACK of FIN + 1
    assert list(out) == []
    out = r.segment(S2C, 5001, TCP_FIN | TCP_ACK, b"", 2.2, 1010)
    assert list(out) == [("eof", S2C)]
    assert list(r.segment(C2S, 1010, TCP_ACK, b"", 2.3, 5002)) == []
    assert r.gaps == 0 and r.bogus_acks == 0 and r.closed
    assert rec.stream(C2S) == b"abcdefgh"


def test_ack_of_fin_behind_a_hole_ends_the_direction() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA, b"ab", 1.0)
    r.segment(C2S, 1005, TCP_FIN | TCP_ACK, b"", 1.1)  # "cd" (1003-1004) missing
    assert rec.calls[-1] == ("data", C2S, b"ab")
    out = r.segment(S2C, 5001, TCP_ACK, b"", 1.2, 1006)  # FIN + 1
    assert [e.size for e in gap_events(out)] == [2]
    assert rec.calls[-2:] == [("gap", C2S, 2), ("eof", C2S)]
    assert r.bogus_acks == 0


def test_ack_one_past_everything_is_read_as_lost_fin() -> None:
    r, rec = make()
    handshake(r)
    r.segment(C2S, 1001, DATA, b"ab", 1.0)
    assert list(r.segment(S2C, 5001, TCP_ACK, b"", 1.1, 1004)) == []  # FIN not captured
    assert r.gaps == 0
    # Had it been a 1-byte segment, the data after it is reported by the next ACK.
    r.segment(C2S, 1004, DATA, b"d", 1.2)
    out = r.segment(S2C, 5001, TCP_ACK, b"", 1.3, 1005)
    assert [e.size for e in gap_events(out)] == [1]
    assert rec.stream(C2S) == b"abd"


def test_bogus_acks_are_ignored_and_counted() -> None:
    r, _ = make(max_buffered=1000)
    handshake(r)
    r.segment(C2S, 1003, DATA, b"cd", 1.0)  # buffered behind a 2-byte hole
    far = 1001 + 1000 + 64 * 1024 + 1
    assert anomalies(r.segment(S2C, 5001, TCP_ACK, b"", 1.1, far)) == []
    assert anomalies(r.segment(S2C, 5001, TCP_ACK, b"", 1.1, (1001 + 2**31 - 1) % M32)) == []
    assert r.bogus_acks == 2 and r.gaps == 0 and r.buffered_bytes == 2
    # Beyond a known FIN (+1) is impossible too.
    r.segment(C2S, 1005, TCP_FIN | TCP_ACK, b"", 1.2)
    assert list(r.segment(S2C, 5001, TCP_ACK, b"", 1.3, 1007)) == []
    assert r.bogus_acks == 3
    # ACK flag clear: the field is noise (fuzzers, some stacks) and not read.
    assert list(r.segment(S2C, 5001, TCP_PSH, b"", 1.4, 1005)) == []
    assert r.bogus_acks == 3 and r.gaps == 0
    # An ACK for a direction that never started, or that ended, is ignored.
    r2, rec2 = make()
    assert list(r2.segment(C2S, 77, DATA, b"x", 0.0, 123456)) != []  # pickup, S2C idle
    assert rec2.calls == [("data", C2S, b"x")] and r2.bogus_acks == 0


def test_hole_timeout_by_packet_time() -> None:
    r, rec = make(hole_timeout=10.0)
    handshake(r)
    r.segment(C2S, 1001, DATA, b"ab", 1.0)
    r.segment(C2S, 1005, DATA, b"ef", 2.0)  # hole "cd"
    r.segment(C2S, 1007, DATA, b"gh", 5.0)
    # Traffic of the other direction, without ACKs we could use, moves the clock.
    assert anomalies(r.segment(S2C, 5001, DATA, b"x", 11.9)) == []
    assert r.buffered_bytes == 4
    out = r.segment(S2C, 5002, DATA, b"y", 12.5)  # 10.5 s after "ef" arrived
    gaps = gap_events(out)
    assert [(e.direction, e.size, e.ts) for e in gaps] == [(C2S, 2, 12.5)]
    assert gaps[0].detail == "hole_timeout 10s"
    assert rec.rx_ts[-3:] == [(b"ef", 2.0), (b"gh", 5.0), (b"y", 12.5)]
    assert r.hole_timeouts == 1 and r.buffered_bytes == 0
    # A late retransmission of the hole is old now.
    r.segment(C2S, 1003, DATA, b"cd", 13.0)
    assert rec.stream(C2S) == b"abefgh"


def test_hole_filled_before_timeout_delivers_at_fill_time() -> None:
    r, rec = make(hole_timeout=10.0)
    handshake(r)
    r.segment(C2S, 1003, DATA, b"cd", 1.0)
    r.segment(C2S, 1005, DATA, b"ef", 1.5)
    out = r.segment(C2S, 1001, DATA, b"ab", 9.0)  # retransmission fills the hole
    assert anomalies(out) == []
    # The PDU could not be complete before the fill: never earlier than it.
    assert rec.rx_ts == [(b"ab", 9.0), (b"cd", 9.0), (b"ef", 9.0)]
    # A segment arriving just after the deadline fills its own hole first.
    r.segment(C2S, 1009, DATA, b"ij", 10.0)
    assert anomalies(r.segment(C2S, 1007, DATA, b"gh", 30.0)) == []
    assert rec.stream(C2S) == b"abcdefghij"


def test_hole_timeout_on_own_segment_and_piece_ts_never_go_backwards() -> None:
    r, rec = make(hole_timeout=5.0)
    handshake(r)
    r.segment(C2S, 1007, DATA, b"gh", 1.0)  # arrived first, further ahead
    r.segment(C2S, 1003, DATA, b"cd", 2.0)
    out = r.segment(C2S, 1011, DATA, b"kl", 7.0)  # "gh" waited 6 s
    assert [e.size for e in gap_events(out)] == [2, 2]  # "ab", "ef"; "ij" is still young
    # "gh" arrived before "cd" but is delivered after it: not earlier than it.
    assert rec.rx_ts == [(b"cd", 2.0), (b"gh", 2.0)]
    assert r.hole_timeouts == 2 and r.buffered_bytes == 2
    out = r.segment(S2C, 5001, DATA, b"z", 12.5, 1009)  # the clock moves on
    assert [e.size for e in gap_events(out)] == [2]
    assert rec.rx_ts[-2:] == [(b"kl", 7.0), (b"z", 12.5)]


def test_legacy_callers_without_ack_keep_old_behaviour() -> None:
    r, rec = make()
    r.segment(C2S, 2**31 + 10, TCP_SYN, b"", 0.0)  # seq space above 2**31
    r.segment(C2S, 2**31 + 11, DATA, b"abc", 0.0)
    r.segment(S2C, 5000, TCP_SYN | TCP_ACK, b"", 0.0)
    r.segment(S2C, 5001, DATA, b"xyz", 0.0)  # no ack passed: nothing is read
    assert r.gaps == 0 and r.bogus_acks == 0
    assert rec.stream(C2S) == b"abc" and rec.stream(S2C) == b"xyz"


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
            st.one_of(st.just(-1), st.integers(0, M32 - 1), st.integers(0, 300)),
            st.floats(0.0, 30.0),
        ),
        max_size=60,
    ),
    st.integers(0, 64),
    st.integers(0, 6),
    st.sampled_from([0.5, 10.0, float("inf")]),
)
def test_arbitrary_segments_never_raise_and_respect_caps(
    segs: list[tuple[Direction, int, int, bytes, int, float]],
    max_buffered: int,
    max_segments: int,
    hole_timeout: float,
) -> None:
    r, rec = make(max_buffered=max_buffered, max_segments=max_segments,
                  hole_timeout=hole_timeout)
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

    now = 0.0
    for d, seq, flags, payload, ack, dt in segs:
        now += dt
        n_rx = len(rec.rx_ts)
        check(r.segment(d, seq, flags, payload, now, ack))
        assert all(t <= now for _, t in rec.rx_ts[n_rx:])  # never from the future
        # Nothing waits behind a hole for longer than hole_timeout. Exception by
        # design: a pure ACK stays on the fast path and does not look at the
        # data its own sender has waiting.
        pure = not payload and not flags & (TCP_SYN | TCP_FIN | TCP_RST)
        for x in [d.reverse] if pure else [C2S, S2C]:
            assert all(now - p[2] <= hole_timeout for p in r._half[x].buf)
        assert r.closed == all(ended.values())
        assert r.buffered_bytes <= max_buffered
        assert sum(len(h.buf) for h in r._half) <= max_segments
        assert r.buffered_bytes == sum(len(p[1]) for h in r._half for p in h.buf)
        assert not tcp_module._NO_PIECES  # the shared buffer of no piece stays empty
    check(r.close(now + 1.0))
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


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, M32 - 1), st.data())
def test_correct_acks_release_every_hole_without_close(
    data: bytes, isn: int, draw: st.DataObject
) -> None:
    """Capture drops + the receiver's (correct) ACKs: every hole is reported by the ACKs alone.

    The network order is a permutation of a segmentation; the capture loses some
    segments; the receiver got them all and acknowledges its contiguous prefix.
    """
    r, rec = make()
    seq0 = (isn + 1) & (M32 - 1)
    r.segment(C2S, isn, TCP_SYN, b"", 0.0)
    r.segment(S2C, 7000, TCP_SYN | TCP_ACK, b"", 0.0, seq0)
    cuts = sorted(set(draw.draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=10))))
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    segs = [(a, data[a:b]) for a, b in pairwise(bounds)]
    network = draw.draw(st.permutations(segs))
    received = bytearray(len(data))
    have = [False] * len(data)
    kept: list[tuple[int, bytes]] = []
    now = 0.0
    last_rx: float = -1.0

    def feed(*args: Any) -> None:
        nonlocal last_rx
        n_rx = len(rec.rx_ts)
        out = r.segment(*args)
        for _, t in rec.rx_ts[n_rx:]:
            assert last_rx <= t <= now  # delivery times never go backwards
            last_rx = t
        assert [e.ts for e in out if isinstance(e, TcpAnomalyEvent)] == [
            now for e in out if isinstance(e, TcpAnomalyEvent)
        ]

    for a, chunk in network:
        now += draw.draw(st.floats(0.0, 1.0))
        received[a : a + len(chunk)] = chunk
        have[a : a + len(chunk)] = [True] * len(chunk)
        if draw.draw(st.booleans()):
            kept.append((a, chunk))
            feed(C2S, (seq0 + a) & (M32 - 1), DATA, chunk, now, 7001)
        if draw.draw(st.booleans()):
            prefix = have.index(False) if False in have else len(data)
            feed(S2C, 7001, TCP_ACK, b"", now, (seq0 + prefix) & (M32 - 1))
    fin = (seq0 + len(data)) & (M32 - 1)
    now += 1.0
    feed(C2S, fin, TCP_FIN | TCP_ACK, b"", now, 7001)
    feed(S2C, 7001, TCP_ACK, b"", now, (fin + 1) & (M32 - 1))  # ACK of the FIN
    # No close() needed: the ACKs released every hole and the FIN ended the direction.
    assert ("eof", C2S) in rec.calls
    assert r.buffered_bytes == 0
    assert r.bytes_delivered + r.gap_bytes == len(data)
    assert r.bogus_acks == 0 and r.retransmissions == 0
    rebuilt = b""
    for c in rec.calls:
        if c[1] == C2S and c[0] == "data":
            rebuilt += c[2]
        elif c[1] == C2S and c[0] == "gap":
            rebuilt += b"\0" * c[2]
    expect = bytearray(len(data))
    for a, chunk in kept:
        expect[a : a + len(chunk)] = chunk
    assert rebuilt == bytes(expect)


def test_segment_without_ack_flag_still_runs_the_other_sides_timeout() -> None:
    r, rec = make(hole_timeout=0.5)
    handshake(r)
    r.segment(C2S, 1003, DATA, b"cd", 1.0, 5001)  # behind a 2-byte hole
    out = r.segment(S2C, 5001, TCP_PSH, b"x", 5.0, 999999)  # no ACK flag: ack not read
    assert [e.size for e in gap_events(out)] == [2]
    assert rec.rx_ts == [(b"cd", 1.0), (b"x", 5.0)]
    assert r.bogus_acks == 0


# -- ACK grace: a SPAN port may show an ACK just before the data it acknowledges --


def test_ack_seen_before_its_data_loses_nothing() -> None:
    """modbusBig frames 3149/3150: the client's ACK arrives 0.7 ms before the response."""
    r, rec = make(ack_grace=0.2)
    handshake(r)
    r.segment(C2S, 1001, DATA, b"req1", 1.0, 5001)
    out = r.segment(C2S, 1005, TCP_ACK, b"", 1.0005, 5011)  # acknowledges rsp1 (10 bytes)
    assert gap_events(out) == []
    out = r.segment(S2C, 5001, DATA, b"response10", 1.0012, 1005)
    assert gap_events(out) == []
    assert rec.calls[-1] == ("data", S2C, b"response10")
    assert r.gaps == 0
    # Back on the fast path once the acknowledged data is in.
    assert r.segment(C2S, 1005, DATA, b"req2", 1.1, 5011) == [("rx", C2S, 4)]


def test_ack_grace_then_the_hole_is_a_gap() -> None:
    r, rec = make(ack_grace=0.2)
    handshake(r)
    r.segment(C2S, 1001, DATA, b"req1", 1.0, 5001)
    assert gap_events(r.segment(C2S, 1005, TCP_ACK, b"", 1.01, 5011)) == []
    assert gap_events(r.segment(C2S, 1005, TCP_ACK, b"", 1.1, 5011)) == []  # within the grace
    out = r.segment(C2S, 1005, DATA, b"req2", 1.3, 5011)  # past it: rsp1 was lost
    gaps = gap_events(out)
    assert [(e.direction, e.size) for e in gaps] == [(S2C, 10)]
    assert ("gap", S2C, 10) in rec.calls
    # The server's next bytes then flow in order.
    assert r.segment(S2C, 5011, DATA, b"rsp2", 1.31, 1009) == [("rx", S2C, 4)]


def test_ack_grace_validation() -> None:
    with pytest.raises(ValueError):
        TcpReassembler(FLOW, Recorder(), ack_grace=-1.0)


# -- fast paths of connection set-up and teardown (issue 14) -----------------------

_STATE = ("_buffered", "acked_holes", "bogus_acks", "bytes_delivered", "gap_bytes", "gaps",
          "hole_timeouts", "out_of_order", "retransmissions", "segments")
_HALF = ("acked", "buf", "end_seq", "ended", "fin", "isn", "rx_ts", "since", "started")


def state(r: TcpReassembler[Any]) -> tuple[Any, ...]:
    """Everything a reassembler knows, in a comparable form. ``next_seq`` of a direction
    is stale while it is on the fast path (``_hot[d]`` holds the expected seq then), so
    the expected seq is read from whichever of the two is authoritative."""
    expected = [h if h >= 0 else half.next_seq
                for h, half in zip(r._hot, r._half, strict=True)]
    halves = [repr(getattr(half, name)) for half in r._half for name in _HALF]
    return (*(repr(getattr(r, name)) for name in _STATE), *halves, expected, list(r._hot))


def test_bare_in_order_fin_ends_the_direction_on_the_fast_path() -> None:
    """The parser's eof list comes back as is (the slow path copies into a list of its
    own), and the direction ends exactly as the slow path ends it."""
    sentinel: list[Any] = [("eof", C2S)]

    class Fixed(Recorder):
        def eof(self, direction: Direction, ts: float) -> list[Any]:
            super().eof(direction, ts)
            return sentinel

    fast = TcpReassembler(FLOW, Fixed(), ack_grace=0.0)
    slow = TcpReassembler(FLOW, Fixed(), ack_grace=0.0)
    for r in (fast, slow):
        handshake(r)
        r.segment(C2S, 1001, DATA, b"abc", 0.1, 5001)
    assert fast.segment(C2S, 1004, TCP_FIN | TCP_ACK, b"", 0.2, 5001) is sentinel
    slow.segments += 1  # what segment() counts before it picks a path
    assert list(slow._slow(C2S, 1004, TCP_FIN | TCP_ACK, b"", 0.2, 5001)) == sentinel
    assert state(fast) == state(slow)
    half = fast._half[C2S]
    assert half.fin == half.end_seq == 1004 and half.ended
    # Then the other side's FIN, without an ACK flag: the connection is closed.
    assert fast.segment(S2C, 5001, TCP_FIN, b"", 0.3) is sentinel
    assert fast.closed
    # A FIN that is not at the expected seq, or carries SYN or RST, is not bare and in
    # order: the slow path sees it (a hole before the FIN keeps the direction open).
    r, rec = make()
    handshake(r)
    out = r.segment(C2S, 1003, TCP_FIN | TCP_ACK, b"", 0.2, 5001)
    assert out == [] and not r._half[C2S].ended and r._half[C2S].fin == 1003
    assert rec.kinds() == []


_STEP = st.tuples(
    st.sampled_from(["data", "fin", "ack", "rst", "syn"]),
    st.sampled_from([C2S, S2C]),
    st.integers(0, 3),  # bytes skipped before this segment (0: in order)
    st.integers(1, 6),  # data length
    st.sampled_from([TCP_ACK, 0, TCP_ACK | TCP_PSH]),  # flags besides FIN / data
    st.integers(-2, 3),  # the ACK, relative to what the other side has sent
    st.floats(0.0, 2.0),
)


# Found by this test: an ACK of data never captured, waiting out its grace, outlived a
# reuse of the 4-tuple (a SYN with a new ISN), and the slow path then reported a gap in
# a direction of the new connection that had not started.
_REUSED_AFTER_EARLY_ACK = (("data", C2S, 0, 1, TCP_ACK, 1, 0.0),
                           ("syn", C2S, 1, 1, TCP_ACK, 0, 0.0),
                           ("fin", C2S, 0, 1, TCP_ACK, 0, 1.0))


@settings(max_examples=400, deadline=None)
@given(st.integers(0, M32 - 1), st.integers(0, M32 - 1), st.lists(_STEP, max_size=14),
       st.sampled_from([0.0, 0.2]), st.sampled_from([0.5, 10.0]))
@example(0, 0, list(_REUSED_AFTER_EARLY_ACK), 0.2, 0.5)
@example(0, M32 - 1, list(_REUSED_AFTER_EARLY_ACK), 0.2, 0.5)
def test_bare_fin_fast_path_is_the_slow_path(
    cisn: int, sisn: int, steps: list[tuple[str, Direction, int, int, int, int, float]],
    grace: float, hole_timeout: float,
) -> None:
    """Random plausible connections (in order, holes, lagging, exact and early ACKs,
    resets, reuse), fed twice: once through ``segment``, once with every bare FIN
    through ``_slow``. The events and the whole state agree after every segment."""
    recs = [Recorder(), Recorder()]
    fast, slow = (TcpReassembler(FLOW, rec, ack_grace=grace, hole_timeout=hole_timeout)
                  for rec in recs)
    isn = {C2S: cisn, S2C: sisn}
    sent = {C2S: 0, S2C: 0}
    now = 0.0
    for r in (fast, slow):
        r.segment(C2S, cisn, TCP_SYN, b"", now)
        r.segment(S2C, sisn, TCP_SYN | TCP_ACK, b"", now, (cisn + 1) & (M32 - 1))
    for kind, d, skip, n, flags, ack_off, dt in steps:
        now += dt
        o = d.reverse
        seq = (isn[d] + 1 + sent[d] + skip) & (M32 - 1)
        ack = (isn[o] + 1 + sent[o] + ack_off) & (M32 - 1)
        payload = b""
        if kind == "data":
            payload = bytes(range(n))
            sent[d] += skip + n
        elif kind == "fin":
            flags |= TCP_FIN
        elif kind == "rst":
            flags = TCP_RST | (flags & TCP_ACK)
        elif kind == "syn":  # a new connection on the same 4-tuple, or a repeated SYN
            isn[d] = (isn[d] + skip * 100_000) & (M32 - 1)
            sent[d] = 0
            seq = isn[d]
            flags = TCP_SYN | (flags & TCP_ACK if d is S2C else 0)
        got = list(fast.segment(d, seq, flags, payload, now, ack))
        if flags & (TCP_FIN | TCP_SYN | TCP_RST) == TCP_FIN and not payload:
            slow.segments += 1
            want = list(slow._slow(d, seq, flags, payload, now, ack))
        else:
            want = list(slow.segment(d, seq, flags, payload, now, ack))
        assert got == want
        assert state(fast) == state(slow)
        assert recs[0].calls == recs[1].calls
    assert list(fast.close(now + 1.0)) == list(slow.close(now + 1.0))
    assert state(fast) == state(slow)


_SEG = st.one_of(st.none(), st.tuples(
    st.one_of(st.integers(0, M32 - 1), st.sampled_from([0, M32 - 1, M32 - 2])),
    st.one_of(st.integers(0, M32 - 1), st.sampled_from([0, 1])),
    st.sampled_from([TCP_SYN, TCP_SYN | TCP_ACK, TCP_SYN | 0x40 | 0x80, TCP_SYN | TCP_FIN,
                     TCP_SYN | TCP_ACK | TCP_PSH, TCP_SYN | TCP_ACK | 0x40, TCP_SYN | TCP_RST,
                     TCP_ACK]),
    st.floats(0.0, 5.0)))


@settings(max_examples=500, deadline=None)
@given(_SEG, _SEG, st.booleans(), st.booleans(), st.data())
def test_handshake_is_the_syn_then_the_synack_through_segment(
    syn: tuple[int, int, int, float] | None, synack: tuple[int, int, int, float] | None,
    acks_syn: bool, fed: bool, draw: st.DataObject,
) -> None:
    """``handshake`` gives the events and the state that feeding the SYN and then the
    SYN-ACK to ``segment`` gives: clean pairs (the fast start), ECN and PSH flags, other
    ACK numbers, a side missing, seq wrap, and a reassembler that already saw a segment."""
    if acks_syn and syn is not None and synack is not None:
        synack = (synack[0], (syn[0] + 1) & (M32 - 1), synack[2], synack[3])
    recs = [Recorder(), Recorder()]
    one, two = (TcpReassembler(FLOW, rec, ack_grace=0.0) for rec in recs)
    if fed:
        seq = draw.draw(st.integers(0, M32 - 1))
        for r in (one, two):
            r.segment(C2S, seq, DATA, b"early", 0.0, 7)
    got = list(one.handshake(syn, synack))
    want: list[Any] = []
    for d, seg in ((C2S, syn), (S2C, synack)):
        if seg is not None:
            want += two.segment(d, seg[0], seg[2], b"", seg[3], seg[1])
    assert got == want
    assert state(one) == state(two)
    assert recs[0].calls == recs[1].calls
    # and they go on alike
    for r in (one, two):
        r.segment(C2S, ((syn or (0, 0, 0, 0.0))[0] + 1) & (M32 - 1), DATA, b"ab", 6.0,
                  ((synack or (0, 0, 0, 0.0))[0] + 1) & (M32 - 1))
    assert state(one) == state(two)
    assert recs[0].calls == recs[1].calls


def test_clean_handshake_starts_both_directions_on_the_fast_path() -> None:
    r, rec = make()
    assert r.handshake((M32 - 1, 0, TCP_SYN, 0.0), (5000, 0, TCP_SYN | TCP_ACK, 0.1)) == ()
    assert r._hot == [0, 5001] and [h.isn for h in r._half] == [M32 - 1, 5000]
    assert r.segments == 2
    assert r.segment(C2S, 0, DATA, b"abc", 0.2, 5001) == [("rx", C2S, 3)]
    assert rec.kinds() == ["data"]
