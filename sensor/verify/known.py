"""Where tshark 4.0 is known to be wrong about Modbus and DNP3, in general terms.

One place for this knowledge, used by ``mamori verify`` (sensor/verify/tshark.py) and by the
differential tests (tests/sensor/test_modbus_vs_tshark.py, test_dnp3_vs_tshark.py), so
the tool and the tests cannot drift. It holds small pure rules for what tshark gets wrong
systematically (``REASONS`` holds the evidence of each, by key), and nothing about any
one capture: a rule here applies to every file an operator verifies.

Single frames of particular captures where tshark is wrong (found by hand, with the bytes
that prove it) are a caller's knowledge, not the tool's: the differential tests keep theirs
for the corpus captures (tests/oracles/tshark_frames.py) and hand them to
``verify_capture`` as ``FrameNotes``, whose vocabulary (``SeqSkipped``, ``Extra``, ...)
is defined here.

Where a rule or note drops or changes tshark's answer, Mamori must often show its own
evidence: an anomaly event of the same stream at the same time (``Evidence``). A rule
that holds only because Mamori says nothing would hide a Mamori bug, so the callers
check that evidence.

This module only reads: no tshark, no pipeline.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from mamori.parsers.dnp3.objects import OBJECT_SPECS, is_known

# ====================================================================== Modbus

#: Evidence Mamori must give at a noted frame (``FrameNotes``), on the frame's stream and
#: at its time (or, for a retimed PDU, at the new time): an anomaly name (TCP: GAP, SEQ_JUMP,
#: MIDSTREAM_PICKUP; Modbus: RESYNC, ...), or "!GAP": no TCP GAP on that stream within
#: one second of the frame (the bytes were not lost, so none may be reported).
Evidence = str | None

MODBUS_RANGE_FCS: Final = frozenset({1, 2, 3, 4, 5, 6, 15, 16})


class SeqSkipped(NamedTuple):
    seen: int  # leading PDUs of the frame tshark already dissected from an earlier frame
    evidence: Evidence
    why: str


def seq_skip_flagged(experts: Iterable[str]) -> bool:
    """tshark's own flag on a ``FrameNotes.seq_skipped`` frame (else the note does not hold)."""
    text = " ".join(experts)
    return "retransmission" in text or "out-of-order" in text


SEQ_SKIPPED_RULE: Final = (
    "tshark 4.0 (packet-tcp.c) does not call the subdissector for a segment its sequence "
    "analysis flags as a retransmission (it shows 'Retransmitted TCP segment data (N "
    "bytes)' instead), even when only the start of the segment was seen before, nor for "
    "an 'out-of-order' or 'spurious retransmission' segment whose bytes it never saw. The "
    "PDUs it lost are those it dissects with tcp.analyze_sequence_numbers:FALSE.")

class Extra(NamedTuple):
    tid: int
    unit: int
    fc: int
    evidence: Evidence
    why: str


#: The evidence Mamori must show where it reports a PDU at a later frame's time
#: (``FrameNotes.retimed``): the PDU waited behind a hole in the stream.
RETIMED_EVIDENCE: Final = "GAP"


@dataclass(frozen=True, slots=True)
class FrameNotes:
    """What tshark shows at single frames of one capture, checked by hand, by frame number.

    ``mamori verify`` has none of its own (``NO_NOTES``): these are a caller's, for a
    capture it knows byte by byte. Each value carries its ``why``, which the report prints
    as the known tshark error, and where it says so the evidence Mamori must give.
    """

    #: tshark's dissection of the whole frame is wrong: its rows are dropped.
    errors: Mapping[int, str] = field(default_factory=dict)
    #: tshark's sequence analysis hid new PDUs of the frame (SEQ_SKIPPED_RULE).
    seq_skipped: Mapping[int, SeqSkipped] = field(default_factory=dict)
    #: a PDU tshark does not dissect even with sequence analysis off; the row is built
    #: from the frame's bytes.
    extra: Mapping[int, Extra] = field(default_factory=dict)
    #: (the anomaly Mamori reports instead, why): a tshark row Mamori does not report.
    dropped: Mapping[int, tuple[str, str]] = field(default_factory=dict)
    #: (the frame whose time Mamori gives the PDU, why); the evidence is RETIMED_EVIDENCE.
    retimed: Mapping[int, tuple[int, str]] = field(default_factory=dict)

    def modbus_frames(self) -> set[int]:
        """The frames tshark does not dissect as Modbus, by these notes."""
        return set(self.seq_skipped) | set(self.extra)


NO_NOTES: Final = FrameNotes()

MODBUS_RANGE_RULE: Final = (
    "tshark gives no quantity for FC 5/6 (always one point), and puts the request's "
    "address and quantity into a response only when it paired the two itself, which it "
    "does not do for every flow: responses are compared on them only where tshark has them "
    "(requests always carry both).")

Stream = tuple[Any, ...]  # (src, sport, dst, dport)
AnomalyKey = tuple[Stream | None, str]


def modbus_anomalies(events: Iterable[Mapping[str, Any]]) -> dict[AnomalyKey, list[float]]:
    """Times of Mamori's anomalies (event_to_dict fields) per (stream, name); IP anomalies
    under stream None, both as MALFORMED_FRAME and as the reason their detail starts with."""
    out: dict[AnomalyKey, list[float]] = defaultdict(list)
    for fields in events:
        name = fields.get("anomaly")
        if not name:
            continue
        ts = round(fields["ts"], 6)
        if fields.get("src"):
            out[((fields["src"], fields["sport"], fields["dst"], fields["dport"]), name)].append(ts)
        else:
            out[(None, name)].append(ts)
            out[(None, str(fields.get("detail", "")).split(":")[0])].append(ts)
    return out


def modbus_evidence_problem(what: str, stream: Stream, ts: float,
                            anomalies: Mapping[AnomalyKey, list[float]]) -> str | None:
    """What is wrong with Mamori's evidence ``what`` on ``stream`` at ``ts`` (None: fine)."""
    if what.startswith("!"):
        near = [t for t in anomalies.get((stream, what[1:]), []) if abs(t - ts) <= 1.0]
        return f"Mamori reports {what[1:]} at {near}" if near else None
    if what == "TRUNCATED_IP":
        ok = ts in anomalies.get((None, what), [])
        return None if ok else f"Mamori reports no {what} at {ts}"
    ok = ts in anomalies.get((stream, what), [])
    return None if ok else f"Mamori reports no {what} on {stream} at {ts}"


# ====================================================================== DNP3

Obj = tuple[int, int, int, int | None, int | None, int | None]
# (group, variation, qualifier, start, stop, count)

#: tshark 4.0 walks object headers only for these FCs, and reads the IIN only for these.
TSHARK_OBJECT_FCS: Final = frozenset(
    {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 21, 25, 26, 27, 129, 130})
TSHARK_IIN_FCS: Final = frozenset({129, 130})

REASONS: Final[dict[str, str]] = {
    "dnp3.objects_fc": (
        "dissect_dnp3_al() in tshark 4.0 (epan/dissectors/packet-dnp.c) walks object "
        "headers only in the cases of its 'switch (al_func)': READ, WRITE, SELECT, OPERATE, "
        "DIRECT_OPERATE(_NR), the four freezes (7-10), ENABLE/DISABLE_UNSOLICITED (20, 21), "
        "OPEN/CLOSE/DELETE_FILE (25-27), RESPONSE and UNSOLICITED_RESPONSE. Every other FC "
        "(ASSIGN_CLASS 22, STOP_APPL 18, AUTHENTICATE_REQ 32, AUTHENTICATE_RESP 131, ...) "
        "falls into 'default: break' and shows no 'Data Objects' subtree at all. Evidence: "
        "assign_class.pcap frame 1 (c3 16 3c 03 06 01 00 06: ASSIGN_CLASS g60v3 q06, g1v0 "
        "q06) has no object in tshark."),
    "dnp3.iin_fc": (
        "tshark 4.0 reads the IIN (dnp3_al_process_iin) only for FC 129 and 130. Evidence: "
        "auth_change_session_keys.pcap frame 5 (c1 83 90 00 78 05 5b 01 0f 00 ...: "
        "AUTHENTICATE_RESP, IIN 9000, g120v5 q5B count 1) has neither objects nor IIN."),
    "dnp3.qualifier_bit7": (
        "tshark 4.0 shows the qualifier only as dnp3.al.objq.prefix (mask 0x70) and "
        "dnp3.al.objq.range (mask 0x0F), so the reserved bit 7 is invisible to it; it is "
        "not compared. Evidence: bro/dnp3/dnp3.pcap frame 154, fragment c1 15 3c 02 06 3c "
        "03 06 3c 04 ed; the last qualifier byte is 0xED, tshark shows 'Prefix Code: "
        "4-Octet Object Size Prefix (6), Range Code: Unknown (13)' = 0x6D. Mamori keeps "
        "0xED (and reports RESERVED_QUALIFIER)."),
    "dnp3.link_function": (
        "packet-dnp.c dissects the transport and application layers for every link "
        "function except REQUEST_LINK_STATUS, LINK_STATUS, RESET_LINK and ACK ('NOTE: This "
        "code should probably check what DOES have TR or AL data'). IEEE 1815 9.2.4 passes "
        "user data up only from CONFIRMED/UNCONFIRMED_USER_DATA (PRM, function 3/4); the "
        "opendnp3 conformance tests 6.6.2.2 (frames 14, 16: CTRL 0xC5 and 0xCA, reserved "
        "functions 5 and 10, user data c0 c0 01 3c 01 06) and 6.6.2.5 (frame 8: CTRL 0xC2 "
        "TEST_LINK_STATES carrying c0 c0 01 3c 02 06 ...) check that the outstation "
        "ignores them, and it does (no response follows). Mamori reports no fragment, only "
        "the link event or UNKNOWN_LINK_FUNCTION (required)."),
    "dnp3.cut_header": (
        "The header or its range field is cut off by the end of the fragment: tshark still "
        "lists it, with '[Number of Items: ]' and '[Malformed Packet]' (its loop runs while "
        "at least 2 bytes remain, so 2 stray bytes become a 'header' too). Mamori lists no "
        "half header and reports TRUNCATED_FRAGMENT (required). Evidence: "
        "dnp3_synthetic.pcap frame 13, fragment c3 81 00 00 01 02 03 (g1v2 q03, no range "
        "byte); DNP3-Malformed.pcap frame 38, c2 04 0c 01 00 00 00 <11-byte CROB> 00 00."),
    "dnp3.reserved_qualifier": (
        "A reserved range or prefix code: nothing tells the size of what follows, so IEEE "
        "1815 parsing cannot go on; Mamori stops with RESERVED_QUALIFIER (required). tshark "
        "4.0 keeps reading the next bytes as headers. Evidence: DNP3-Malformed.pcap frame "
        "45, c2 04 0c 01 0a 00 00 01 00 03 01 64 ...: after g12v1 q0A tshark invents 'g0v0 "
        "q01 start 768 stop 25601'."),
    "dnp3.unknown_object": (
        "An object IEEE 1815 does not define (g0v0 included: g0 variations are attribute "
        "numbers 1-255): its size is unknown, so nothing after it can be found; Mamori "
        "stops with UNKNOWN_OBJECT (or INVALID_RANGE where stop < start; required). tshark "
        "4.0 flags 'Unknown Group 0 Variation' and keeps reading headers anyway. Evidence: "
        "DNP3-Malformed.pcap frame 156, c2 04 0c 01 06 | 00 00 00 00 01 | 00 03 01 64 ...: "
        "after g0v0 q00 0..1 tshark reads 'g0v0 q00 start 100 stop 0' out of the next "
        "bytes."),
    "dnp3.invalid_range": (
        "stop < start: IEEE 1815 4.2.2.7.3 makes stop >= start; Mamori stops with "
        "INVALID_RANGE (required), tshark goes on reading headers."),
    "dnp3.unknown_to_tshark": (
        "tshark 4.0's object table lacks g50v4 (indexed absolute time), g51v2 and the g120 "
        "secure-authentication objects, all in IEEE 1815 Annex A. On such a header it "
        "raises 'Unknown Object\\Variation', dumps the rest of the fragment as one 'Unknown "
        "Data Chunk' and decodes no further header. Evidence: yadnp3.pcap frame 15 (... 32 "
        "04 00 00 09 then g110v1 00 00 09), 8.14.2.12 frame 10 (e2 81 90 00 33 02 07 01 "
        "<6-byte CTO> 02 03 28 03 00 ... = g51v2 q07 then g2v3 q28 count 3), "
        "operate_aggressive_mode.pcap frame 1 (g120v3, g12v1, g120v9). The headers are "
        "compared up to this one."),
    "dnp3.range_345": (
        "tshark 4.0 reads range codes 3/4/5 as ONE absolute address (dnp3.al.range.abs, "
        "'8-bit Absolute Address in Range Field', 1 item), after the obsolete Basic-4 "
        "document it cites. IEEE 1815 defines them as start and stop virtual addresses (two "
        "fields, as in Zeek's Range_Field_3..5), which is what Mamori decodes, so both "
        "sides size the objects differently from there on. Evidence: DNP3-Malformed.pcap "
        "frame 4, c2 04 0c 01 03 00 01 ...: tshark 'Address (8 bit): 0', Mamori start 0 "
        "stop 1. The group/variation/qualifier of this header is compared, nothing after."),
    "dnp3.wrap": (
        "IEEE 1815 8.2.1.2: the transport sequence number increments modulo 64, so a "
        "fragment may run ... 62, 63, 0. tshark 4.0 does not reassemble such a fragment: it "
        "shows every segment as 'Application Layer Unreassembled fragment 63' / '... "
        "fragment 0' and no application layer. Evidence: dnp3_example.pcap frames 17 "
        "(transport 0x7f, FIR seq 63) and 18 (0x80, FIN seq 0): Mamori reassembles the "
        "RESPONSE (c8 81 00 00 01 02 00 00 77 ...) and tshark has nothing."),
    "dnp3.retransmission": (
        "tshark dissects a TCP (fast) retransmission of bytes it already dissected as a "
        "new fragment; Mamori's TCP reassembly delivers those bytes once. Evidence: nDPI "
        "dnp3.pcap holds every packet three times (frames 10, 11, 12: same Seq, same 17 "
        "bytes); tshark flags 11 and 12 '[TCP Fast Retransmission]' and still lists three "
        "UNSOLICITED_RESPONSEs."),
}


def normal_object(obj: Obj) -> Obj:
    """Compare what the qualifier's range code defines: start/stop, or a count, or
    nothing; the qualifier without bit 7 (REASONS["dnp3.qualifier_bit7"])."""
    group, variation, qualifier, start, stop, count = obj
    qualifier &= 0x7F
    code = qualifier & 0x0F
    if code in (0, 1, 2, 3, 4, 5):
        return group, variation, qualifier, start, stop, None
    if code in (7, 8, 9, 0x0B):
        return group, variation, qualifier, None, None, count
    return group, variation, qualifier, None, None, None


def carries_user_data(link_control: int) -> bool:
    """Whether a link frame passes user data up (IEEE 1815 9.2.4; -1: not known)."""
    return link_control < 0 or bool(link_control & 0x40 and link_control & 0x0F in (3, 4))


def rule_link_function(link_control: int) -> str | None:
    """REASONS["dnp3.link_function"]: the evidence Mamori must give instead of tshark's
    fragment (one of '|'), or None where the rule does not apply."""
    return None if carries_user_data(link_control) else "UNKNOWN_LINK_FUNCTION|link"


class View(NamedTuple):
    """How much of one fragment tshark decoded: the rest is not compared."""

    objects: int | None  # compare this many leading object headers (None: all)
    gvq_only_at: int | None  # of this header compare only group/variation/qualifier
    iin: bool  # compare the IIN
    expect_anomaly: str | None  # the anomaly Mamori must report for this fragment
    why: str | None = None  # the REASONS key of the object cut, if any


def tshark_view(fc: int, objects: Iterable[Obj], object_notes: Iterable[tuple[str, ...]],
         malformed: bool) -> View:
    """What of tshark's fragment (its object headers, each with tshark's expert messages
    and the notes "no item count"/"no qualifier") is tshark's own reading to compare."""
    cut: int | None = None
    gvq_only_at: int | None = None
    expect: str | None = None
    why: str | None = None
    objs = list(objects)
    for i, (obj, notes) in enumerate(zip(objs, object_notes, strict=True)):
        group, variation, qualifier, start, stop = obj[:5]
        inverted = start is not None and stop is not None and start > stop
        if ("no item count" in notes or "no qualifier" in notes) and malformed \
                and i == len(objs) - 1:
            cut, expect, why = i, "TRUNCATED_FRAGMENT", "dnp3.cut_header"
        elif qualifier & 0x0F in (0x0A, 0x0C, 0x0D, 0x0E, 0x0F) or qualifier & 0x70 == 0x70:
            cut, expect, why = i + 1, "RESERVED_QUALIFIER", "dnp3.reserved_qualifier"
        elif not is_known(group, variation):
            expect = "UNKNOWN_OBJECT|INVALID_RANGE" if inverted else "UNKNOWN_OBJECT"
            cut, why = i + 1, "dnp3.unknown_object"
        elif inverted and qualifier & 0x0F < 3:
            cut, expect, why = i + 1, "INVALID_RANGE", "dnp3.invalid_range"
        elif "Unknown Object\\Variation" in notes and (group << 8 | variation) in OBJECT_SPECS:
            cut, why = i + 1, "dnp3.unknown_to_tshark"
        elif qualifier & 0x0F in (3, 4, 5):
            cut, gvq_only_at, why = i + 1, i, "dnp3.range_345"
        if why is not None:
            break
    if fc not in TSHARK_OBJECT_FCS:
        cut, why = 0, "dnp3.objects_fc"
    return View(cut, gvq_only_at, fc in TSHARK_IIN_FCS, expect, why)


def apply_view(v: View, fc: Any, iin: Any, objects: tuple[Obj, ...]) -> tuple[Any, ...]:
    """(fc, iin, objects) cut to what tshark decoded."""
    if v.objects is not None:
        objects = objects[: v.objects]
        at = v.gvq_only_at
        if at is not None and at < len(objects):
            objects = (*objects[:at], (*objects[at][:3], None, None, None))
    return fc, iin if v.iin else None, objects


def wrap_flags(segments: Iterable[tuple[Any, int]]) -> list[bool]:
    """REASONS["dnp3.wrap"]: for each (stream, transport header) of the segments tshark
    left unreassembled, in order, whether it is a FIN segment with sequence 0 after
    sequence 63 on its stream: the end of a fragment tshark does not reassemble."""
    out: list[bool] = []
    previous: dict[Any, int] = {}
    for stream, transport in segments:
        out.append(transport & 0xC0 == 0x80 and transport & 0x3F == 0
                   and previous.get(stream) == 63)
        previous[stream] = transport & 0x3F
    return out


DNP3Head = tuple[Any, ...]  # (ts, src, sport, dst, dport, link_src, link_dst)


def dnp3_said(events: Iterable[Mapping[str, Any]]) -> set[tuple[Any, ...]]:
    """What Mamori's DNP3 events (event_to_dict fields) say where: head + anomaly or type."""
    return {(round(e["ts"], 6), e["src"], e["sport"], e["dst"], e["dport"], e["link_src"],
             e["link_dst"], e["anomaly"] or e["type"]) for e in events}


def dnp3_evidence_given(head: DNP3Head, kinds: str, said: set[tuple[Any, ...]]) -> bool:
    """Mamori reports one of ``kinds`` ('|'-separated) at ``head``."""
    return any((*head, kind) in said for kind in kinds.split("|"))
