"""Differential test: every DNP3 application fragment must match tshark's dissection.

For each DNP3 capture of the public corpus that tshark dissects as DNP3 (``generated/``
at its own ports, ``dnp3_read_p20001`` on port 20001), both sides list the application
fragments per stream (IP endpoints and link source/destination), in order, with function
code, IIN and the object headers (group, variation, qualifier, range); the two sequences
are aligned with difflib so one extra or missing fragment does not shift the rest.

tshark 4.0 is not always right. Where it is wrong for one frame of a corpus capture,
``TSHARK_ERRORS`` (tests/oracles/tshark_frames.py) says why, with the bytes; where it is
wrong systematically, a rule of mamori.sensor.verify.known, shared with ``mamori
verify`` (``tshark_view``,
``rule_link_function``, ``wrap_flags``, ``normal_object``, with the evidence in ``REASONS``)
states exactly what tshark omits or misreads, and the comparison drops only that, and
wherever a rule drops tshark's row Mamori must report why. Nothing else may differ.
"""

from __future__ import annotations

import difflib
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.alerting.eventlog import event_to_dict
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.verify.known import (
    View,
    apply_view,
    dnp3_evidence_given,
    dnp3_said,
    normal_object,
    rule_link_function,
    tshark_view,
    wrap_flags,
)
from tests.conftest import CORPUS, corpus_captures, require_tool, unavailable
from tests.oracles.tshark import TsharkFragment, TsharkSegment, dnp3_dissect
from tests.oracles.tshark_frames import TSHARK_ERRORS, capture_digest

PORTS: dict[str, tuple[int, ...]] = {
    "zeek/Traces/dnp3/dnp3_read_p20001.pcap": (20001,),
    "generated/yadnp3.pcap": (20030,),
    "generated/dnp3_interop_py1815master.pcap": (20031,),
    "generated/dnp3_interop_dnp3sim.pcap": (20032,),
    "generated/dnp3_interop_dnp3outstation.pcap": (20033,),
    "generated/dnp3_interop_nfmmaster.pcap": (20034,),
}

# How many captures tshark finds application fragments in (the others are link-layer
# only, e.g. openics/DNP3-RequestLink.pcap, or tshark reassembles nothing, e.g. the
# suricata-verify too-long-reassembly traces); counted when this test was written.
MIN_COMPARED = 195

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


def _view(f: TsharkFragment) -> View:
    return tshark_view(f.fc, f.objects, f.object_notes, f.malformed)


def _error_streams(digest: str, fragments: list[TsharkFragment]) -> set[tuple[Stream, float]]:
    """(stream, ts) of the fragments listed in TSHARK_ERRORS: Mamori's row there stands."""
    return {((f.src, f.sport, f.dst, f.dport, f.link_src, f.link_dst), round(f.ts, 6))
            for f in fragments if (digest, f.frame) in TSHARK_ERRORS}


def _wrapped(segments: list[TsharkSegment]) -> set[tuple[Stream, float]]:
    """Final segments of fragments whose transport sequence wrapped from 63 to 0
    (REASONS["dnp3.wrap"]): (stream, ts) of each, for Mamori's extra rows."""
    keyed = [((s.src, s.sport, s.dst, s.dport, s.link_src, s.link_dst), s) for s in segments]
    flags = wrap_flags((stream, s.transport) for stream, s in keyed)
    return {(stream, round(s.ts, 6)) for (stream, s), wrapped in zip(keyed, flags, strict=True)
            if wrapped}


# ---------------------------------------------------------------- rows


def _stream(row: Row) -> Stream:
    return tuple(row[1:7])


def tshark_rows(digest: str, fragments: list[TsharkFragment]
                ) -> tuple[list[tuple[int, Row]], list[tuple[Row, View]], list[tuple[Row, str]]]:
    """Rows to compare, the view each row was cut to, and the anomalies Mamori must show."""
    rows: list[tuple[int, Row]] = []
    views: list[tuple[Row, View]] = []
    expected: list[tuple[Row, str]] = []
    seen: dict[Stream, set[tuple[Any, ...]]] = defaultdict(set)
    for f in fragments:
        if (digest, f.frame) in TSHARK_ERRORS:
            continue
        head: Row = (round(f.ts, 6), f.src, f.sport, f.dst, f.dport, f.link_src, f.link_dst)
        why = rule_link_function(f.link_control)
        if why is not None:
            expected.append((head, why))
            continue
        v = _view(f)
        body = apply_view(v, f.fc, f.iin, tuple(normal_object(o) for o in f.objects))
        if f.retransmission and body in seen[_stream(head)]:
            continue  # REASONS["dnp3.retransmission"]
        seen[_stream(head)].add(body)
        row = (*head, *body)
        rows.append((f.frame, row))
        views.append((row, v))
        if v.expect_anomaly:
            expected.append((head, v.expect_anomaly))
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
            objects = tuple(normal_object((o["group"], o["variation"], o["qualifier"],
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
    digest = capture_digest(path)
    theirs, views, expected = tshark_rows(digest, fragments)
    if not theirs and not expected:
        pytest.skip("tshark dissects no DNP3 application fragment here")
    events = mamori_events(path, ports)
    # cut each Mamori row to what tshark decoded of the fragment at the same time
    cuts: dict[tuple[Any, ...], deque[View]] = defaultdict(deque)
    for row, view in views:
        cuts[(*row[:7], row[7])].append(view)
    wrapped = _wrapped(segments) | _error_streams(digest, fragments)
    ours: Numbered = []
    for row in mamori_rows(events):
        queue = cuts.get((*row[:7], row[7]))
        if queue:
            row = (*row[:7], *apply_view(queue.popleft(), *row[7:]))
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
    said = dnp3_said(events)
    for head, kinds in expected:
        if not dnp3_evidence_given(head, kinds, said):
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
        unavailable("no corpus")
    compared = [rel for rel in captures
                if dnp3_dissect(CORPUS / rel, PORTS.get(rel, (20000,)))[0]]
    assert len(compared) >= MIN_COMPARED, (len(compared), len(captures))
