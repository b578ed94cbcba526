"""Differential test: every Modbus PDU Mamori reports must match tshark's dissection.

For each Modbus capture of the public corpus that tshark dissects as Modbus, both
sides produce the ordered list of PDUs with (ts, src, dst, tid, unit, fc, exception)
and, for FC 1-6, 15 and 16, the address and the quantity. tshark's response rows carry
the request's address and quantity (it pairs them too), so responses are compared on
those fields as well.

Where tshark is wrong, ``TSHARK_ERRORS`` lists the frame with the evidence; nothing
else may differ.
"""

from __future__ import annotations

import difflib
import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from parsers.modbus import ModbusRequest, ModbusResponse
from parsers.stream import Direction
from sensor.pipeline import PipelineConfig
from sensor.replay import replay_files
from tests.conftest import CORPUS, require_tool
from tests.oracles.tshark import modbus_pdus

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

# (capture, frame) -> why tshark's row is wrong, with the evidence.
TSHARK_ERRORS: dict[tuple[str, int], str] = {}

RANGE_FCS = {1, 2, 3, 4, 5, 6, 15, 16}
Row = tuple[Any, ...]


def _int(fields: dict[str, str], key: str) -> int | None:
    value = fields.get(key)
    return int(value, 0) if value not in (None, "") else None


def tshark_rows(path: Path, port: int) -> list[tuple[int, Row, bool]]:
    pdus, unaligned = modbus_pdus(path, port)
    assert not unaligned, f"tshark frames with unaligned Modbus layers: {unaligned}"
    rows = []
    for pdu in pdus:
        f = pdu.layers
        fc = _int(f, "modbus.func_code")
        exception = _int(f, "modbus.exception_code")
        address = quantity = None
        if fc in RANGE_FCS and exception is None:
            address = _int(f, "modbus.reference_num")
            quantity = _int(f, "modbus.bit_cnt")
            if quantity is None:
                quantity = _int(f, "modbus.word_cnt")
        rows.append((pdu.frame, (round(pdu.ts, 6), pdu.src, pdu.sport, pdu.dst, pdu.dport,
                                 _int(f, "mbtcp.trans_id"), _int(f, "mbtcp.unit_id"), fc,
                                 exception, address, quantity),
                     pdu.dport == port))
    return rows


def mamori_rows(path: Path, port: int) -> list[Row]:
    events: list[Any] = []
    config = PipelineConfig(modbus_ports=frozenset({port}))
    replay_files([path], config, extra_sinks=[events.extend])
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


def _by_stream(rows: Numbered) -> dict[tuple[Any, ...], Numbered]:
    streams: dict[tuple[Any, ...], Numbered] = defaultdict(list)
    for frame, row in rows:
        streams[row[1:5]].append((frame, row))
    return streams


def compare(relative: str, theirs: list[tuple[int, Row]], ours: list[Row]) -> list[str]:
    """Per direction of each connection, the two PDU sequences must be equal."""
    problems: list[str] = []
    mine = _by_stream([(None, row) for row in ours])
    for stream, expected in _by_stream(list(theirs)).items():
        got = [row for _, row in mine.pop(stream, [])]
        want = [row for frame, row in expected if (relative, frame) not in TSHARK_ERRORS]
        frames = [frame for frame, _ in expected if (relative, frame) not in TSHARK_ERRORS]
        got_cmp = [_comparable(w, g) for w, g in zip(want, got, strict=False)] + got[len(want):]
        if got_cmp == want:
            continue
        matcher = difflib.SequenceMatcher(a=want, b=got_cmp, autojunk=False)
        for tag, a0, a1, b0, b1 in matcher.get_opcodes():
            if tag == "equal":
                continue
            problems.append(f"{stream} {tag}: tshark frames {frames[a0:a1][:3]} "
                            f"{want[a0:a1][:3]} vs mamori {got_cmp[b0:b1][:3]}")
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
    theirs_full = tshark_rows(path, port)
    assert theirs_full, "tshark dissected no Modbus here: the capture list is wrong"
    ours = mamori_rows(path, port)
    problems = compare(relative, [(frame, row) for frame, row, _ in theirs_full], ours)
    assert not problems, f"{len(problems)} differences, first 15:\n" + "\n".join(problems[:15])
    # Requests always have their range in tshark's rows: the lenient comparison above
    # must never have skipped one.
    unranged = [frame for frame, row, request in theirs_full
                if request and row[7] in RANGE_FCS and row[8] is None and row[9] is None]
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
