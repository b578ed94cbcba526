"""Differential test: every DNP3 application fragment must match tshark's dissection.

For each DNP3 capture of the public corpus that tshark dissects as DNP3 (``generated/``
at its own ports, ``dnp3_read_p20001`` on port 20001), both sides list the application
fragments per stream (IP endpoints and link source/destination), in order, with function
code, IIN and the object headers (group, variation, qualifier, range); the two sequences
are aligned with difflib so one extra or missing fragment does not shift the rest.

tshark 4.0 is not always right. Where it is wrong for one frame, ``TSHARK_ERRORS`` says
why, with the bytes. Where it is wrong systematically, a rule below states exactly what
tshark omits or misreads, with the evidence, and the comparison drops only that: the
``_rule_*`` functions. Nothing else may differ.
"""

from __future__ import annotations

import difflib
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from parsers.dnp3.objects import OBJECT_SPECS, is_known
from sensor.eventlog import event_to_dict
from sensor.pipeline import PipelineConfig
from sensor.replay import replay_files
from tests.conftest import CORPUS, corpus_captures, require_tool
from tests.oracles.tshark import TsharkFragment, TsharkSegment, dnp3_dissect

PORTS: dict[str, tuple[int, ...]] = {
    "zeek/Traces/dnp3/dnp3_read_p20001.pcap": (20001,),
    "generated/yadnp3.pcap": (20030,),
    "generated/dnp3_interop_py1815master.pcap": (20031,),
    "generated/dnp3_interop_dnp3sim.pcap": (20032,),
    "generated/dnp3_interop_dnp3outstation.pcap": (20033,),
    "generated/dnp3_interop_nfmmaster.pcap": (20034,),
}

# (capture, frame) -> why tshark's row is wrong, with the evidence.
TSHARK_ERRORS: dict[tuple[str, int], str] = {
    ("icsnpp-dnp3/testing/traces/dnp3_example.pcap", 311): (
        "tshark shows a CONFIRM built from 49 zero bytes ('Reassembled DNP 3.0 Application "
        "Layer message (49 bytes): 00 00 ...'), a reassembly-table mix-up. The frame's "
        "user data is 05 64 1a 44 64 00 05 00 | c0 (transport FIR FIN seq 0) | c8 81 00 00 "
        "0c 01 17 01 02 ...: a RESPONSE (AC 0xc8, FC 0x81, IIN 0000) with g12v1 qualifier "
        "0x17 count 1, which is what Mamori reports."
    ),
}

# How many captures tshark finds application fragments in (the others are link-layer
# only, e.g. openics/DNP3-RequestLink.pcap, or tshark reassembles nothing, e.g. the
# suricata-verify too-long-reassembly traces); counted when this test was written.
MIN_COMPARED = 195

Obj = tuple[int, int, int, int | None, int | None, int | None]
Row = tuple[Any, ...]
Stream = tuple[Any, ...]  # (src, sport, dst, dport, link_src, link_dst)
Numbered = list[tuple[int | None, Row]]


def dnp3_captures() -> list[str]:
    if not CORPUS.is_dir():
        return []
    rows = (CORPUS / "MANIFEST.tsv").read_text().splitlines()[1:]
    wanted = {r.split("\t")[0] for r in rows if r.split("\t")[4] == "dnp3"}
    return [str(p.relative_to(CORPUS)) for p in corpus_captures()
            if str(p.relative_to(CORPUS)) in wanted]


def _normal_object(obj: Obj) -> Obj:
    """Compare what the qualifier's range code defines: start/stop, or a count, or nothing.

    The qualifier is compared without bit 7: tshark 4.0 shows the qualifier only as
    ``dnp3.al.objq.prefix`` (mask 0x70) and ``dnp3.al.objq.range`` (mask 0x0F), so the
    reserved bit 7 is invisible to it. Evidence: bro/dnp3/dnp3.pcap frame 154, fragment
    c1 15 3c 02 06 3c 03 06 3c 04 ed; the last qualifier byte is 0xED, tshark shows
    "Prefix Code: 4-Octet Object Size Prefix (6), Range Code: Unknown (13)" = 0x6D.
    Mamori keeps 0xED (and reports RESERVED_QUALIFIER); bit 7 alone is not compared.
    """
    group, variation, qualifier, start, stop, count = obj
    qualifier &= 0x7F
    code = qualifier & 0x0F
    if code in (0, 1, 2, 3, 4, 5):
        return group, variation, qualifier, start, stop, None
    if code in (7, 8, 9, 0x0B):
        return group, variation, qualifier, None, None, count
    return group, variation, qualifier, None, None, None


# ---------------------------------------------------------------- tshark 4.0 gaps

# dissect_dnp3_al() in tshark 4.0 (epan/dissectors/packet-dnp.c) walks object headers
# only in the cases of its ``switch (al_func)``: READ, WRITE, SELECT, OPERATE,
# DIRECT_OPERATE(_NR), the four freezes (7-10), ENABLE/DISABLE_UNSOLICITED (20, 21),
# OPEN/CLOSE/DELETE_FILE (25-27), RESPONSE and UNSOLICITED_RESPONSE. Every other FC
# (ASSIGN_CLASS 22, STOP_APPL 18, AUTHENTICATE_REQ 32, AUTHENTICATE_RESP 131, ...) falls
# into ``default: break`` and shows no "Data Objects" subtree at all; the IIN is read
# (dnp3_al_process_iin) only for FC 129 and 130. Evidence: assign_class.pcap frame 1
# (c3 16 3c 03 06 01 00 06: ASSIGN_CLASS g60v3 q06, g1v0 q06) has no object in tshark;
# auth_change_session_keys.pcap frame 5 (c1 83 90 00 78 05 5b 01 0f 00 ...:
# AUTHENTICATE_RESP, IIN 9000, g120v5 q5B count 1) has neither objects nor IIN there.
TSHARK_OBJECT_FCS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 21, 25, 26, 27, 129, 130})
TSHARK_IIN_FCS = frozenset({129, 130})


class View(NamedTuple):
    """How much of one fragment tshark decoded: the rest is not compared."""

    objects: int | None  # compare this many leading object headers (None: all)
    gvq_only_at: int | None  # of this header compare only group/variation/qualifier
    iin: bool  # compare the IIN
    expect_anomaly: str | None  # the anomaly Mamori must report for this fragment


def _rule_link_function(f: TsharkFragment) -> str | None:
    """tshark decodes user data of link frames that do not carry user data.

    packet-dnp.c dissects the transport and application layers for every link function
    except REQUEST_LINK_STATUS, LINK_STATUS, RESET_LINK and ACK ("NOTE: This code should
    probably check what DOES have TR or AL data"). IEEE 1815 9.2.4 passes user data up
    only from CONFIRMED/UNCONFIRMED_USER_DATA (PRM, function 3/4); the opendnp3
    conformance tests 6.6.2.2 (frames 14, 16: CTRL 0xC5 and 0xCA, reserved functions 5
    and 10, user data c0 c0 01 3c 01 06) and 6.6.2.5 (frame 8: CTRL 0xC2
    TEST_LINK_STATES carrying c0 c0 01 3c 02 06 ...) check that the outstation ignores
    them, and it does (no response follows). Mamori reports no fragment, only the link
    event or UNKNOWN_LINK_FUNCTION, which the test requires.
    """
    control = f.link_control
    if control >= 0 and not (control & 0x40 and control & 0x0F in (3, 4)):
        return "UNKNOWN_LINK_FUNCTION|link"
    return None


def _view(f: TsharkFragment) -> View:
    objects: int | None = None
    gvq_only_at: int | None = None
    expect: str | None = None
    for i, (obj, notes) in enumerate(zip(f.objects, f.object_notes, strict=True)):
        group, variation, qualifier = obj[:3]
        cut = "no item count" in notes or "no qualifier" in notes
        if cut and f.malformed and i == len(f.objects) - 1:
            # The header or its range field is cut off by the end of the fragment:
            # tshark still lists it, with "[Number of Items: ]" and "[Malformed
            # Packet]" (its loop runs while at least 2 bytes remain, so 2 stray bytes
            # become a "header" too). Mamori lists no half header and reports
            # TRUNCATED_FRAGMENT (required below). Evidence: dnp3_synthetic.pcap frame
            # 13, fragment c3 81 00 00 01 02 03 (g1v2 q03, no range byte);
            # DNP3-Malformed.pcap frame 38, c2 04 0c 01 00 00 00 <11-byte CROB> 00 00.
            objects = i
            expect = "TRUNCATED_FRAGMENT"
            break
        if qualifier & 0x0F in (0x0A, 0x0C, 0x0D, 0x0E, 0x0F) or qualifier & 0x70 == 0x70:
            # A reserved range or prefix code: nothing tells the size of what follows,
            # so IEEE 1815 parsing cannot go on; Mamori stops with RESERVED_QUALIFIER
            # (required below). tshark 4.0 keeps reading the next bytes as headers.
            # Evidence: DNP3-Malformed.pcap frame 45, c2 04 0c 01 0a 00 00 01 00 03 01
            # 64 ...: after g12v1 q0A tshark invents "g0v0 q01 start 768 stop 25601".
            objects = i + 1
            expect = "RESERVED_QUALIFIER"
            break
        if not is_known(group, variation):
            # An object IEEE 1815 does not define (g0v0 included: g0 variations are
            # attribute numbers 1-255): its size is unknown, so nothing after it can
            # be found; Mamori stops with UNKNOWN_OBJECT (required below). tshark 4.0
            # flags "Unknown Group 0 Variation" and keeps reading headers anyway.
            # Evidence: DNP3-Malformed.pcap frame 156, c2 04 0c 01 06 | 00 00 00 00
            # 01 | 00 03 01 64 ...: after g0v0 q00 0..1 tshark reads "g0v0 q00 start
            # 100 stop 0" out of the next bytes.
            if obj[3] is not None and obj[4] is not None and obj[3] > obj[4]:
                objects = i + 1
                expect = "UNKNOWN_OBJECT|INVALID_RANGE"
                break
            objects = i + 1
            expect = "UNKNOWN_OBJECT"
            break
        if obj[3] is not None and obj[4] is not None and obj[3] > obj[4] and qualifier & 0x0F < 3:
            # stop < start: IEEE 1815 4.2.2.7.3 makes stop >= start; Mamori stops with
            # INVALID_RANGE (required below), tshark goes on.
            objects = i + 1
            expect = "INVALID_RANGE"
            break
        if "Unknown Object\\Variation" in notes and (group << 8 | variation) in OBJECT_SPECS:
            # tshark 4.0's object table lacks g50v4 (indexed absolute time), g51v2 and
            # the g120 secure-authentication objects, all in IEEE 1815 Annex A. On such
            # a header it raises "Unknown Object\Variation", dumps the rest of the
            # fragment as one "Unknown Data Chunk" and decodes no further header.
            # Evidence: yadnp3.pcap frame 15 (... 32 04 00 00 09 then g110v1 00 00 09),
            # 8.14.2.12 frame 10 (e2 81 90 00 33 02 07 01 <6-byte CTO> 02 03 28 03 00 ...
            # = g51v2 q07 then g2v3 q28 count 3), operate_aggressive_mode.pcap frame 1
            # (g120v3, g12v1, g120v9). Compare the headers up to this one.
            objects = i + 1
            break
        if qualifier & 0x0F in (3, 4, 5):
            # tshark 4.0 reads range codes 3/4/5 as ONE absolute address
            # (dnp3.al.range.abs, "8-bit Absolute Address in Range Field", 1 item), after
            # the obsolete Basic-4 document it cites. IEEE 1815 defines them as start and
            # stop virtual addresses (two fields, as in Zeek's Range_Field_3..5), which
            # is what Mamori decodes, so both sides size the objects differently from
            # here on. Evidence: DNP3-Malformed.pcap frame 4, c2 04 0c 01 03 00 01 ...:
            # tshark "Address (8 bit): 0", Mamori start 0 stop 1. Compare the
            # group/variation/qualifier of this header and nothing after it.
            objects = i + 1
            gvq_only_at = i
            break
    if f.fc not in TSHARK_OBJECT_FCS:
        objects = 0
    return View(objects, gvq_only_at, f.fc in TSHARK_IIN_FCS, expect)


def _error_streams(relative: str, fragments: list[TsharkFragment]) -> set[tuple[Stream, float]]:
    """(stream, ts) of the fragments listed in TSHARK_ERRORS: Mamori's row there stands."""
    return {((f.src, f.sport, f.dst, f.dport, f.link_src, f.link_dst), round(f.ts, 6))
            for f in fragments if (relative, f.frame) in TSHARK_ERRORS}


def _apply(view: View, fc: Any, iin: Any, objects: tuple[Obj, ...]) -> tuple[Any, ...]:
    if view.objects is not None:
        objects = objects[: view.objects]
        at = view.gvq_only_at
        if at is not None and at < len(objects):
            objects = (*objects[:at], (*objects[at][:3], None, None, None))
    return fc, iin if view.iin else None, objects


def _wrapped(segments: list[TsharkSegment]) -> set[tuple[Stream, float]]:
    """Final segments of fragments whose transport sequence wrapped from 63 to 0.

    IEEE 1815 8.2.1.2: the transport sequence number increments modulo 64, so a
    fragment may run ... 62, 63, 0. tshark 4.0 does not reassemble such a fragment: it
    shows every segment as "Application Layer Unreassembled fragment 63" / "... fragment
    0" and no application layer. Evidence: dnp3_example.pcap frames 17 (transport 0x7f,
    FIR seq 63) and 18 (0x80, FIN seq 0): Mamori reassembles the RESPONSE (c8 81 00 00
    01 02 00 00 77 ...) and tshark has nothing. This returns (stream, ts) of each such
    FIN segment whose predecessor in the stream was seq 63, for Mamori's extra rows.
    """
    out: set[tuple[Stream, float]] = set()
    previous: dict[Stream, int] = {}
    for s in segments:
        stream = (s.src, s.sport, s.dst, s.dport, s.link_src, s.link_dst)
        if s.transport & 0xC0 == 0x80 and s.transport & 0x3F == 0 and previous.get(stream) == 63:
            out.add((stream, round(s.ts, 6)))
        previous[stream] = s.transport & 0x3F
    return out


# ---------------------------------------------------------------- rows


def _stream(row: Row) -> Stream:
    return tuple(row[1:7])


def tshark_rows(relative: str, fragments: list[TsharkFragment]
                ) -> tuple[list[tuple[int, Row]], list[tuple[Row, View]], list[tuple[Row, str]]]:
    """Rows to compare, the view each row was cut to, and the anomalies Mamori must show."""
    rows: list[tuple[int, Row]] = []
    views: list[tuple[Row, View]] = []
    expected: list[tuple[Row, str]] = []
    seen: dict[Stream, set[tuple[Any, ...]]] = defaultdict(set)
    for f in fragments:
        if (relative, f.frame) in TSHARK_ERRORS:
            continue
        head: Row = (round(f.ts, 6), f.src, f.sport, f.dst, f.dport, f.link_src, f.link_dst)
        why = _rule_link_function(f)
        if why is not None:
            expected.append((head, why))
            continue
        view = _view(f)
        body = _apply(view, f.fc, f.iin, tuple(_normal_object(o) for o in f.objects))
        if f.retransmission and body in seen[_stream(head)]:
            # tshark dissects a TCP (fast) retransmission of bytes it already dissected
            # as a new fragment; Mamori's TCP reassembly delivers those bytes once.
            # Evidence: nDPI dnp3.pcap holds every packet three times (frames 10, 11,
            # 12: same Seq, same 17 bytes); tshark flags 11 and 12 "[TCP Fast
            # Retransmission]" and still lists three UNSOLICITED_RESPONSEs.
            continue
        seen[_stream(head)].add(body)
        row = (*head, *body)
        rows.append((f.frame, row))
        views.append((row, view))
        if view.expect_anomaly:
            expected.append((head, view.expect_anomaly))
    return rows, views, expected


def mamori_events(path: Path, ports: tuple[int, ...]) -> list[dict[str, Any]]:
    events: list[Any] = []
    config = PipelineConfig(modbus_ports=frozenset({502}), dnp3_ports=frozenset(ports))
    replay_files([path], config, extra_sinks=[events.extend])
    return [d for d in map(event_to_dict, events) if d["proto"] == "dnp3"]


def mamori_rows(events: list[dict[str, Any]]) -> list[Row]:
    """Application fragments; a fragment with an undefined FC is an anomaly event in
    Mamori (UNKNOWN_FUNCTION_CODE, with the FC) and a fragment without IIN or objects in
    tshark ("Unknown function (0x70)"), so both are compared as that."""
    rows = []
    for fields in events:
        head = (round(fields["ts"], 6), fields["src"], fields["sport"], fields["dst"],
                fields["dport"], fields["link_src"], fields["link_dst"])
        if fields["type"] in ("request", "response", "unsolicited"):
            objects = tuple(_normal_object((o["group"], o["variation"], o["qualifier"],
                                            o["start"], o["stop"], o["count"]))
                            for o in fields["objects"])
            rows.append((*head, fields["fc"], fields["iin"], objects))
        elif fields["anomaly"] == "UNKNOWN_FUNCTION_CODE":
            rows.append((*head, fields["fc"], None, ()))
    return rows


def _by_stream(rows: Numbered) -> dict[Stream, Numbered]:
    streams: dict[Stream, Numbered] = defaultdict(list)
    for frame, row in rows:
        streams[_stream(row)].append((frame, row))
    return streams


def compare(relative: str, path: Path, ports: tuple[int, ...]) -> list[str]:
    """Per stream, the two fragment sequences must be equal (after the rules above)."""
    fragments, segments = dnp3_dissect(path, ports)
    theirs, views, expected = tshark_rows(relative, fragments)
    if not theirs and not expected:
        pytest.skip("tshark dissects no DNP3 application fragment here")
    events = mamori_events(path, ports)
    # cut each Mamori row to what tshark decoded of the fragment at the same time
    cuts: dict[tuple[Any, ...], deque[View]] = defaultdict(deque)
    for row, view in views:
        cuts[(*row[:7], row[7])].append(view)
    wrapped = _wrapped(segments) | _error_streams(relative, fragments)
    ours: Numbered = []
    for row in mamori_rows(events):
        queue = cuts.get((*row[:7], row[7]))
        if queue:
            row = (*row[:7], *_apply(queue.popleft(), *row[7:]))
        elif (_stream(row), row[0]) in wrapped:
            continue
        ours.append((None, row))
    problems: list[str] = []
    mine = _by_stream(ours)
    for stream, numbered in _by_stream(list(theirs)).items():
        got = [row for _, row in mine.pop(stream, [])]
        frames = [frame for frame, _ in numbered]
        want = [row for _, row in numbered]
        matcher = difflib.SequenceMatcher(a=want, b=got, autojunk=False)
        for tag, a0, a1, b0, b1 in matcher.get_opcodes():
            if tag != "equal":
                problems.append(f"{stream} {tag}: tshark frames {frames[a0:a1][:3]} "
                                f"{want[a0:a1][:3]}\n   vs mamori {got[b0:b1][:3]}")
    for stream, extra in mine.items():
        problems.append(f"{stream}: mamori has {len(extra)} fragments tshark has not: "
                        f"{[row for _, row in extra][:3]}")
    # where a rule dropped tshark's row, Mamori must have said why
    said = {(round(e["ts"], 6), e["src"], e["sport"], e["dst"], e["dport"], e["link_src"],
             e["link_dst"], e["anomaly"] or e["type"]) for e in events}
    for head, kinds in expected:
        if not any((*head, kind) in said for kind in kinds.split("|")):
            problems.append(f"{head}: tshark's fragment dropped by a rule, but Mamori "
                            f"reports none of {kinds} there")
    return problems


@pytest.mark.corpus
@pytest.mark.tshark
@pytest.mark.parametrize("relative", dnp3_captures())
def test_dnp3_matches_tshark(relative: str) -> None:
    require_tool("tshark")
    path = CORPUS / relative
    problems = compare(relative, path, PORTS.get(relative, (20000,)))
    assert not problems, f"{len(problems)} differences, first 15:\n" + "\n".join(problems[:15])


@pytest.mark.corpus
@pytest.mark.tshark
def test_enough_captures_are_compared() -> None:
    """The skip above is for captures where tshark finds no fragment, not a way out."""
    require_tool("tshark")
    captures = dnp3_captures()
    if not captures:
        pytest.skip("no corpus")
    compared = [rel for rel in captures
                if dnp3_dissect(CORPUS / rel, PORTS.get(rel, (20000,)))[0]]
    assert len(compared) >= MIN_COMPARED, (len(compared), len(captures))
