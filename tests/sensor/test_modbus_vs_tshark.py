"""Differential test: every Modbus PDU Mamori reports must match tshark's dissection.

For each Modbus capture of the public corpus that tshark dissects as Modbus, both
sides produce the ordered list of PDUs with (ts, src, dst, tid, unit, fc, exception)
and, for FC 1-6, 15 and 16, the address and the quantity. tshark's response rows carry
the request's address and quantity (it pairs them too), so responses are compared on
those fields as well. Per direction of each connection the two sequences are aligned
with difflib on everything but the range, so one extra or missing PDU does not shift
the rest, and the range is then compared PDU by PDU.

tshark 4.0 is not always right, and Mamori differs from it by design in a few places.
Each such frame is listed below with the bytes that prove it, and where it makes sense
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

from parsers.modbus import ModbusRequest, ModbusResponse
from parsers.stream import Direction
from sensor.eventlog import event_to_dict
from sensor.pipeline import PipelineConfig
from sensor.replay import replay_files
from tests.conftest import CORPUS, require_tool
from tests.oracles.tshark import TsharkPdu, modbus_pdus, tcp_frames

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

MB2 = "ICS-Security-Tools/pcaps/ModbusTCP/mb2.pcap"
BIG = "zeek/Traces/modbus/modbusBig.pcap"
FUZZ72 = "zeek/Traces/modbus/fuzz-72.pcap"

# (capture, frame) -> why tshark's row is wrong, with the evidence.
TSHARK_ERRORS: dict[tuple[str, int], str] = {}

# Evidence Mamori must give at a listed frame, on the frame's stream and at its time
# (or, for RETIMED, at the new time): an anomaly name (TCP: GAP, SEQ_JUMP,
# MIDSTREAM_PICKUP; Modbus: RESYNC, ...), or "!GAP": no TCP GAP on that stream within
# one second of the frame (the bytes were not lost, so none may be reported).
Evidence = str | None


class SeqSkipped(NamedTuple):
    seen: int  # leading PDUs of the frame tshark already dissected from an earlier frame
    evidence: Evidence
    why: str


# tshark 4.0 (packet-tcp.c) does not call the subdissector for a segment its sequence
# analysis flags as a retransmission (it shows "Retransmitted TCP segment data (N
# bytes)" instead), even when only the start of the segment was seen before, nor for
# an "out-of-order" or "spurious retransmission" segment whose bytes it never saw.
# Missed by both, so not listed: mb2.pcap frame 3674 (FIN retransmission of server bytes
# 371..670) is the only capture of 371..384 = 57 e9 00 00 00 07 ff 04 04 00 00 00 00, the
# response to 22505. tshark skips it as a retransmission; Mamori already gave 371..384 up
# as a GAP at the server's FIN (frame 3032), because the client's direction had ended
# (parsers/tcp.py _settle), 0.61 s before the retransmission came.
TSHARK_SEQ_SKIPPED: dict[tuple[str, int], SeqSkipped] = {
    (MB2, 1131): SeqSkipped(1, "!GAP", (
        "Seq 139 Len 60 (relative) from 141.81.0.10:60689; frame 1014 carried only "
        "139..151 (57 e9 00 00 00 06 ff 04 01 8f 00 02: tid 22505 fc 4). tshark flags "
        "the whole segment '(suspected) retransmission' and dissects none of it, so the "
        "48 new bytes 151..199 are lost to it: 57 ea 00 00 00 06 ff 04 00 01 00 63 "
        "(tid 22506 fc 4 ref 1 count 99), 57 eb .. 00 29 00 02 (22507), 57 ec .. 08 ab "
        "00 16 (22508), 57 ed .. 08 d2 00 02 (22509). The server answers all four in "
        "frame 3008, which tshark does dissect."
    )),
    (MB2, 13176): SeqSkipped(1, "!GAP", (
        "Seq 5232 Len 269 from 141.81.0.24:502; frame 13142 carried 5232..5471 (the "
        "239-byte response 9823). tshark flags '(suspected) retransmission' and skips "
        "the 30 new bytes 5471..5501: 26 60 00 00 00 0b ff 04 08 .. (tid 9824 fc 4) and "
        "26 61 00 00 00 07 ff 02 04 7c a3 c8 01 (tid 9825 fc 2). The client's next "
        "frame 13177 ACKs 5501, the end of those bytes."
    )),
    (BIG, 3150): SeqSkipped(0, "!GAP", (
        "SPAN reordering: the client's ACK 1490727 (frame 3149) was captured 0.714 ms "
        "before the 10 bytes 1490717..1490727 it acknowledges (frame 3150: c4 ce 00 00 "
        "00 04 ff 01 01 01 = response tid 50382 fc 1, 1 byte, coil 0 on, to request "
        "frame 3147). tshark flags 3149 'ACKed segment that wasn't captured' and 3150 "
        "'Spurious Retransmission' and never dissects those bytes; Mamori waits "
        "ack_grace (0.2 s) before declaring an acknowledged hole lost and decodes them."
    )),
    (FUZZ72, 2): SeqSkipped(0, "MIDSTREAM_PICKUP", (
        "Server segment 00 00 00 00 00 03 01 9c 01 (exception 01 to fc 28) whose seq "
        "0x7075f6c0 differs from the SYN's 0x8a75f6c0 (frame 1) only in the top byte: "
        "the client's ACK in frame 3 is 0x8a75f6c9, exactly those 9 bytes, so the "
        "client got them. tshark calls it 'out-of-order' (3858759680 relative) and "
        "skips it. Mamori drops frame 1 (TRUNCATED_IP, see DROPPED) and picks the "
        "stream up here."
    )),
    (FUZZ72, 19): SeqSkipped(0, "RESYNC", (
        "00 00 00 00 00 03 01 af 01: exception 01 to fc 47 (the client's fc 47 is "
        "frame 18), Seq 177. tshark flags it a retransmission because frame 12's fuzzed "
        "Seq 131153 moved its idea of the stream's end; Mamori ignored that jump."
    )),
    (FUZZ72, 21): SeqSkipped(0, "RESYNC", (
        "00 00 00 00 00 03 01 b3 01: exception 01 to fc 51, Seq 213; tshark: "
        "'Retransmission' (same frame 12 cause)."
    )),
    (FUZZ72, 25): SeqSkipped(0, "RESYNC", (
        "00 00 00 00 00 03 01 b6 01: exception 01 to fc 54 (request frame 24), Seq 240; "
        "tshark: 'Spurious Retransmission'. (Frames 26, 27 and 32, exceptions to fc 58, "
        "59 and 66, are missed by both: Mamori took frame 12's Seq 131153 after its "
        "hole timeout, so they lie behind it.)"
    )),
    (FUZZ72, 30): SeqSkipped(0, "SEQ_JUMP", (
        "00 00 00 00 00 06 01 40 00 00 00 00: request fc 64, between fc 63 (frame 29, "
        "Seq 409..421) and fc 65 (frame 31, Seq 433). Its Seq 2147484069 is 421 with "
        "bit 31 flipped by the fuzzer; tshark: 'Spurious Retransmission', skipped."
    )),
}


class Extra(NamedTuple):
    tid: int
    unit: int
    fc: int
    evidence: Evidence
    why: str


MAMORI_EXTRA: dict[tuple[str, int], Extra] = {
    (FUZZ72, 7): Extra(0, 1, 34, "RESYNC", (
        "Frame 6 is 00 00 00 00 00 04 01 21 00 00 | 00 00: the fuzzed length 4 makes a "
        "10-byte ADU (fc 33) and leaves 2 bytes. tshark joins them with frame 7 "
        "('2 Reassembled TCP Segments (14 bytes): #6(2), #7(12)') into 00 00 00 00 00 00 "
        "| 00 06 01 22 .., a header with length 0, and shows 'Data (14 bytes)', no "
        "Modbus. Mamori reports INVALID_LENGTH, resyncs and finds frame 7's own ADU "
        "00 00 00 00 00 06 01 22 00 00 00 00: request fc 34, the one between fc 33 "
        "(frame 6) and fc 35 (frame 9)."
    )),
    (FUZZ72, 23): Extra(243, 1, 53, "GAP", (
        "00 f3 00 00 00 06 01 35 00 00 00 00 (tid 243, fc 53, between fc 52 in frame "
        "22 and fc 54 in frame 24) with a fuzzed Seq 124 that falls into the client "
        "stream's hole 121..169 (frames 14 and 16). tshark: 'Spurious Retransmission', "
        "and with sequence analysis off 'TCP segment of a reassembled PDU'. Mamori fills "
        "the hole with it; the server's ACKs then release the rest of the hole as GAPs "
        "(see RETIMED)."
    )),
}

# (capture, frame) -> (the anomaly Mamori reports instead, why).
DROPPED: dict[tuple[str, int], tuple[str, str]] = {
    (FUZZ72, 20): ("TRUNCATED_IP", (
        "IPv4 Total Length 0x8934 = 35124 (header 45 00 89 34 ..., checksum 0xb964 "
        "correct) in a 66-byte frame captured whole: 52 IP bytes. tshark says "
        "'IPv4 total length exceeds packet length (52 bytes)' (Error) and still "
        "dissects request fc 50. A host's IP layer discards such a datagram (RFC 791 "
        "Total Length; Linux ip_rcv_core drops len > skb->len), so fc 50 never reached "
        "the server; Mamori drops it the same way and reports MALFORMED_FRAME "
        "TRUNCATED_IP."
    )),
}

# (capture, frame) -> (the frame whose time Mamori gives the PDU, right after its own
# PDUs; why). The evidence Mamori must show there is a GAP.
RETIMED: dict[tuple[str, int], tuple[int, str]] = {
    (FUZZ72, frame): (23, (
        "Buffered behind the hole 121..169 of the client stream, these whole ADUs are "
        "delivered when frame 23's fuzzed segment (Seq 124) and the server's ACKs close "
        "it (GAPs of 3, 33, 24 and 48 bytes 'acknowledged, never captured'). Mamori "
        "delivers a direction in sequence order with non-decreasing time (parsers/tcp.py "
        "module doc), so they carry frame 23's time; tshark dissects each at arrival."
    ))
    for frame in (16, 17, 18, 22)
}

RANGE_FCS = {1, 2, 3, 4, 5, 6, 15, 16}
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


def _listed(table: dict[tuple[str, int], Any], relative: str) -> dict[int, Any]:
    return {frame: value for (capture, frame), value in table.items() if capture == relative}


class Expected(NamedTuple):
    rows: list[tuple[tuple[Any, ...], int, Row]]  # (sort key, frame, row), unsorted
    request_frames: set[int]
    evidence: list[tuple[int, Row, str]]  # (frame, row, evidence Mamori must show)


def tshark_rows(relative: str, path: Path, port: int) -> Expected:
    """tshark's rows, with the listed frames handled as documented above."""
    pdus, unaligned = modbus_pdus(path, port)
    assert not unaligned, f"tshark frames with unaligned Modbus layers: {unaligned}"
    skipped = _listed(TSHARK_SEQ_SKIPPED, relative)
    extra = _listed(MAMORI_EXTRA, relative)
    dropped = _listed(DROPPED, relative)
    retimed = _listed(RETIMED, relative)
    dissected = {pdu.frame for pdu in pdus}
    assert not (set(skipped) | set(extra)) & dissected, "listed frames tshark does dissect"
    assert set(dropped) | set(retimed) <= dissected, "listed frames tshark does not dissect"
    info = tcp_frames(path, tuple(sorted(set(skipped) | set(extra))), port)
    rows: list[tuple[tuple[Any, ...], int, Row]] = []
    evidence: list[tuple[int, Row, str]] = []
    seen: dict[Stream, set[tuple[Any, ...]]] = defaultdict(set)
    for i, pdu in enumerate(pdus):
        row = _row(pdu)
        if (relative, pdu.frame) in TSHARK_ERRORS:
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
            experts = " ".join(info[frame].experts)
            assert "retransmission" in experts or "out-of-order" in experts, (frame, experts)
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
            evidence.append((frame, row, "GAP"))
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


def mamori_anomalies(events: list[Any]) -> dict[Key, list[float]]:
    """Times of Mamori's anomalies per (stream, name); IP anomalies under stream None,
    both as MALFORMED_FRAME and as the reason their detail starts with."""
    out: dict[Key, list[float]] = defaultdict(list)
    for ev in events:
        if isinstance(ev, ModbusRequest | ModbusResponse):
            continue
        fields = event_to_dict(ev)
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


def check_evidence(expected: Expected, anomalies: dict[Key, list[float]]) -> list[str]:
    problems = []
    for frame, row, what in expected.evidence:
        stream = row[1:5]
        if what.startswith("!"):
            near = [t for t in anomalies.get((stream, what[1:]), []) if abs(t - row[0]) <= 1.0]
            if near:
                problems.append(f"frame {frame}: Mamori reports {what[1:]} at {near}")
        elif what == "TRUNCATED_IP":
            if row[0] not in anomalies.get((None, what), []):
                problems.append(f"frame {frame}: Mamori reports no {what} at {row[0]}")
        elif row[0] not in anomalies.get((stream, what), []):
            problems.append(f"frame {frame}: Mamori reports no {what} on {stream} at {row[0]}")
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
    path = CORPUS / relative
    if not path.exists():
        pytest.skip(f"{relative} not in corpus")
    port = PORTS.get(relative, 502)
    expected = tshark_rows(relative, path, port)
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
        pytest.skip("no corpus")

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
