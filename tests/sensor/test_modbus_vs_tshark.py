"""Differential test: every Modbus PDU Mamori reports must match tshark's dissection.

For each Modbus capture of the public corpus that tshark dissects as Modbus, both
sides produce the ordered list of PDUs with (ts, src, dst, tid, unit, fc, exception)
and, for FC 1-6, 15 and 16, the address and the quantity. tshark's response rows carry
the request's address and quantity (it pairs them too), so responses are compared on
those fields as well. Per direction of each connection the two sequences are aligned
with difflib on everything but the range, so one extra or missing PDU does not shift
the rest, and the range is then compared PDU by PDU.

tshark 4.0 is not always right, and Mamori differs from it by design in a few places.
Each such frame is listed in tests/oracles/tshark_frames.py (keyed by the capture's
SHA-256; the kinds of entry and the general rules are mamori.sensor.verify.known's,
shared with ``mamori verify``) with the bytes that prove it, and where it makes sense
Mamori must show its own evidence there (an anomaly event of the same stream and time).
Nothing else may differ:

* ``TSHARK_ERRORS``: tshark's row is wrong; it is dropped.
* ``TSHARK_SEQ_SKIPPED``: tshark's TCP sequence analysis flags the frame as a
  retransmission or out-of-order segment and hands none of it to Modbus, although it
  carries bytes tshark never dissected. Those PDUs come from a second tshark pass over
  the frame with ``tcp.analyze_sequence_numbers`` off (so tshark, not Mamori, supplies
  the expected rows), after the ones already dissected from an earlier frame.
* ``MAMORI_EXTRA``: a PDU tshark does not dissect even then; the row is built from the
  frame's bytes.
* ``DROPPED``: a tshark row Mamori does not report, by design.
* ``RETIMED``: the same PDU, reported by Mamori at a later frame's time.
"""

from __future__ import annotations

import difflib
import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from mamori.parsers.modbus import ModbusRequest, ModbusResponse
from mamori.parsers.pipeline import PipelineConfig
from mamori.parsers.stream import Direction
from mamori.sensor.alerting.eventlog import event_to_dict
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.verify.known import (
    MODBUS_RANGE_FCS,
    RETIMED_EVIDENCE,
    AnomalyKey,
    modbus_anomalies,
    modbus_evidence_problem,
    seq_skip_flagged,
)
from tests.conftest import CORPUS, corpus_path, require_tool, unavailable
from tests.oracles.tshark import TsharkPdu, modbus_pdus, tcp_frames
from tests.oracles.tshark_frames import (
    DROPPED,
    MAMORI_EXTRA,
    RETIMED,
    TSHARK_ERRORS,
    TSHARK_SEQ_SKIPPED,
    capture_digest,
    listed,
)

# Captures that tshark dissects as Modbus, and the Modbus port of each.
PORTS: dict[str, int] = {"generated/modbus_big.pcap": 15020}
MODBUS_CAPTURES = [
    "ICS-Security-Tools/pcaps/ModbusTCP/Modbus/modbus_test.pcap",
    "ICS-Security-Tools/pcaps/ModbusTCP/Modbus/modbus_test_2.pcap",
    "ICS-Security-Tools/pcaps/ModbusTCP/ModbusTCP.pcap",
    "ICS-Security-Tools/pcaps/ModbusTCP/mb2.pcap",
    "arkime/tests/pcap/modbus.pcap",
    "icsnpp-modbus/testing/traces/modbus_example.pcap",
    "suricata-verify/tests/modbus/modbus.pcap",
    "zeek/Traces/modbus/4SICS-GeekLounge-151022-min.pcap",
    "zeek/Traces/modbus/fuzz-1011.pcap",
    "zeek/Traces/modbus/fuzz-72.pcap",
    "zeek/Traces/modbus/modbus-and-non-modbus-p502.pcap",
    "zeek/Traces/modbus/modbus-eit.pcap",
    "zeek/Traces/modbus/modbusBig.pcap",
    "zeek/Traces/modbus/modbusSmall.pcap",
    "nDPI/tests/cfgs/default/pcap/modbus.pcap",
    "generated/modbus_big.pcap",
]

RANGE_FCS = MODBUS_RANGE_FCS
Row = tuple[Any, ...]
Stream = tuple[Any, ...]  # (src, sport, dst, dport)
Key = tuple[Stream | None, str]


def _int(fields: dict[str, str], key: str) -> int | None:
    value = fields.get(key)
    return int(value, 0) if value not in (None, "") else None


def _row(pdu: TsharkPdu) -> Row:
    f = pdu.layers
    fc = _int(f, "modbus.func_code")
    exception = _int(f, "modbus.exception_code")
    address = quantity = None
    if fc in RANGE_FCS and exception is None:
        address = _int(f, "modbus.reference_num")
        quantity = _int(f, "modbus.bit_cnt")
        if quantity is None:
            quantity = _int(f, "modbus.word_cnt")
    return (round(pdu.ts, 6), pdu.src, pdu.sport, pdu.dst, pdu.dport,
            _int(f, "mbtcp.trans_id"), _int(f, "mbtcp.unit_id"), fc, exception, address,
            quantity)


class Expected(NamedTuple):
    rows: list[tuple[tuple[Any, ...], int, Row]]  # (sort key, frame, row), unsorted
    request_frames: set[int]
    evidence: list[tuple[int, Row, str]]  # (frame, row, evidence Mamori must show)


def tshark_rows(path: Path, port: int) -> Expected:
    """tshark's rows, with the listed frames handled as documented above."""
    pdus, unaligned = modbus_pdus(path, port)
    assert not unaligned, f"tshark frames with unaligned Modbus layers: {unaligned}"
    digest = capture_digest(path)
    skipped = listed(TSHARK_SEQ_SKIPPED, digest)
    extra = listed(MAMORI_EXTRA, digest)
    dropped = listed(DROPPED, digest)
    retimed = listed(RETIMED, digest)
    dissected = {pdu.frame for pdu in pdus}
    assert not (set(skipped) | set(extra)) & dissected, "listed frames tshark does dissect"
    assert set(dropped) | set(retimed) <= dissected, "listed frames tshark does not dissect"
    info = tcp_frames(path, tuple(sorted(set(skipped) | set(extra))), port)
    rows: list[tuple[tuple[Any, ...], int, Row]] = []
    evidence: list[tuple[int, Row, str]] = []
    seen: dict[Stream, set[tuple[Any, ...]]] = defaultdict(set)
    for i, pdu in enumerate(pdus):
        row = _row(pdu)
        if (digest, pdu.frame) in TSHARK_ERRORS:
            continue
        if pdu.frame in dropped:
            evidence.append((pdu.frame, row, dropped[pdu.frame][0]))
            continue
        seen[row[1:5]].add(row[5:8])
        rows.append(((pdu.frame, 0, i), pdu.frame, row))
    if skipped:
        again, unaligned = modbus_pdus(path, port, frames=tuple(skipped), seq_analysis=False)
        assert not unaligned, unaligned
        by_frame: dict[int, list[TsharkPdu]] = defaultdict(list)
        for pdu in again:
            by_frame[pdu.frame].append(pdu)
        for frame, entry in skipped.items():
            assert seq_skip_flagged(info[frame].experts), (frame, info[frame].experts)
            found = [_row(pdu) for pdu in by_frame[frame]]
            assert len(found) > entry.seen, (frame, found)
            for row in found[: entry.seen]:
                assert row[5:8] in seen[row[1:5]], (frame, "not dissected before", row)
            for i, row in enumerate(found[entry.seen:]):
                rows.append(((frame, 0, i), frame, row))
                if entry.evidence:
                    evidence.append((frame, row, entry.evidence))
    for frame, ex in extra.items():
        t = info[frame]
        row = (round(t.ts, 6), t.src, t.sport, t.dst, t.dport, ex.tid, ex.unit, ex.fc,
               None, None, None)
        rows.append(((frame, 0, 0), frame, row))
        if ex.evidence:
            evidence.append((frame, row, ex.evidence))
    times = {frame: row[0] for _, frame, row in rows}
    for n, (key, frame, row) in enumerate(rows):
        if frame in retimed:
            source = retimed[frame][0]
            row = (times[source], *row[1:])
            rows[n] = ((source, 1, frame, key[2]), frame, row)
            evidence.append((frame, row, RETIMED_EVIDENCE))
    requests = {pdu.frame for pdu in pdus if pdu.dport == port}
    return Expected(rows, requests, evidence)


def mamori_events(path: Path, port: int) -> list[Any]:
    events: list[Any] = []
    config = PipelineConfig(modbus_ports=frozenset({port}))
    replay_files([path], config, extra_sinks=[events.extend])
    return events


def mamori_rows(events: list[Any]) -> list[Row]:
    rows = []
    for ev in events:
        if not isinstance(ev, ModbusRequest | ModbusResponse):
            continue
        direction = Direction.TO_CLIENT if isinstance(ev, ModbusResponse) else Direction.TO_SERVER
        src, sport, dst, dport = ev.flow.endpoints(direction)
        exception = getattr(ev, "exception", None)
        address = quantity = None
        if ev.fc in RANGE_FCS and exception is None:
            address, quantity = ev.address, ev.quantity
        rows.append((round(ev.ts, 6), src, sport, dst, dport, ev.tid, ev.unit, ev.fc, exception,
                     address, quantity))
    return rows


def mamori_anomalies(events: list[Any]) -> dict[AnomalyKey, list[float]]:
    return modbus_anomalies(event_to_dict(ev) for ev in events
                            if not isinstance(ev, ModbusRequest | ModbusResponse))


def check_evidence(expected: Expected, anomalies: dict[AnomalyKey, list[float]]) -> list[str]:
    problems = []
    for frame, row, what in expected.evidence:
        problem = modbus_evidence_problem(what, row[1:5], row[0], anomalies)
        if problem:
            problems.append(f"frame {frame}: {problem}")
    return problems


def _comparable(theirs: Row, ours: Row) -> Row:
    """Compare the address and quantity where tshark gives them.

    tshark gives no quantity for FC 5/6 (always one point), and puts the request's
    range into a response only when it paired the two itself, which it does not do for
    every flow. Requests always carry both in tshark's rows, so every request range is
    still compared (the test checks that no request row lacks its range).
    """
    address = ours[9] if theirs[9] is not None else None
    quantity = ours[10] if theirs[10] is not None else None
    return (*ours[:9], address, quantity)


Numbered = list[tuple[int | None, Row]]


def _by_stream(rows: Numbered) -> dict[Stream, Numbered]:
    streams: dict[Stream, Numbered] = defaultdict(list)
    for frame, row in rows:
        streams[row[1:5]].append((frame, row))
    return streams


def compare(theirs: list[tuple[int, Row]], ours: list[Row]) -> list[str]:
    """Per direction of each connection, the two PDU sequences must be equal."""
    problems: list[str] = []
    mine = _by_stream([(None, row) for row in ours])
    for stream, expected in _by_stream(list(theirs)).items():
        got = [row for _, row in mine.pop(stream, [])]
        want = [row for _, row in expected]
        frames = [frame for frame, _ in expected]
        matcher = difflib.SequenceMatcher(a=[w[:9] for w in want], b=[g[:9] for g in got],
                                          autojunk=False)
        for tag, a0, a1, b0, b1 in matcher.get_opcodes():
            if tag == "equal":
                for k in range(a1 - a0):
                    w, g = want[a0 + k], _comparable(want[a0 + k], got[b0 + k])
                    if w != g:
                        problems.append(f"{stream} range: tshark frame {frames[a0 + k]} "
                                        f"{w} vs mamori {g}")
                continue
            problems.append(f"{stream} {tag}: tshark frames {frames[a0:a1][:3]} "
                            f"{want[a0:a1][:3]} vs mamori {got[b0:b1][:3]}")
    for stream, extra in mine.items():
        problems.append(f"{stream}: mamori has {len(extra)} PDUs tshark has not: "
                        f"{[row for _, row in extra][:3]}")
    return problems


@pytest.mark.corpus
@pytest.mark.tshark
@pytest.mark.parametrize("relative", MODBUS_CAPTURES)
def test_modbus_matches_tshark(relative: str) -> None:
    require_tool("tshark")
    path = corpus_path(relative)
    port = PORTS.get(relative, 502)
    expected = tshark_rows(path, port)
    assert expected.rows, "tshark dissected no Modbus here: the capture list is wrong"
    theirs = [(frame, row) for _, frame, row in sorted(expected.rows, key=lambda r: r[0])]
    events = mamori_events(path, port)
    problems = compare(theirs, mamori_rows(events))
    problems += check_evidence(expected, mamori_anomalies(events))
    assert not problems, f"{len(problems)} differences, first 15:\n" + "\n".join(problems[:15])
    # Requests always have their range in tshark's rows: the lenient comparison above
    # must never have skipped one.
    unranged = [frame for frame, row in theirs
                if frame in expected.request_frames and row[4] == port
                and row[7] in RANGE_FCS and row[8] is None and row[9] is None]
    assert not unranged, f"tshark requests without a range: {unranged[:10]}"


def test_capture_list_covers_every_modbus_capture() -> None:
    """Every Modbus capture of the corpus is in the list above, or a byte-identical copy is."""
    if not CORPUS.is_dir():
        unavailable("no corpus")

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    listed = {digest(CORPUS / rel) for rel in MODBUS_CAPTURES if (CORPUS / rel).exists()}
    manifest = (CORPUS / "MANIFEST.tsv").read_text().splitlines()[1:]
    missing = []
    for row in manifest:
        relative, protocol = row.split("\t")[0], row.split("\t")[4]
        if (protocol == "modbus" and relative.endswith((".pcap", ".pcapng"))
                and digest(CORPUS / relative) not in listed):
            missing.append(relative)
    assert not missing, f"Modbus captures not covered by the differential test: {missing}"
