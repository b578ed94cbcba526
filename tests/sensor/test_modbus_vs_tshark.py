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

from pathlib import Path
from typing import Any

import pytest

from parsers.modbus import ModbusRequest, ModbusResponse
from sensor.pipeline import PipelineConfig
from sensor.replay import replay_files
from tests.conftest import CORPUS, corpus_captures, require_tool
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


def tshark_rows(path: Path, port: int) -> list[tuple[int, Row]]:
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
        rows.append((pdu.frame, (round(pdu.ts, 6), pdu.src, pdu.dst, _int(f, "mbtcp.trans_id"),
                                 _int(f, "mbtcp.unit_id"), fc, exception, address, quantity)))
    return rows


def mamori_rows(path: Path, port: int) -> list[Row]:
    events: list[Any] = []
    config = PipelineConfig(modbus_ports=frozenset({port}))
    replay_files([path], config, extra_sinks=[events.extend])
    rows = []
    for ev in events:
        if not isinstance(ev, ModbusRequest | ModbusResponse):
            continue
        src, _, dst, _ = ev.flow.endpoints(ev.direction)
        exception = getattr(ev, "exception", None)
        address = quantity = None
        if ev.fc in RANGE_FCS and exception is None:
            address, quantity = ev.address, ev.quantity
        rows.append((round(ev.ts, 6), src, dst, ev.tid, ev.unit, ev.fc, exception, address,
                     quantity))
    return rows


def _comparable(theirs: Row, ours: Row) -> Row:
    """tshark gives no quantity for FC 5/6 (it is always one point): compare what it has."""
    if theirs[8] is None and ours[5] in (5, 6):
        return ours[:8] + (None,)
    return ours


@pytest.mark.corpus
@pytest.mark.tshark
@pytest.mark.parametrize("relative", MODBUS_CAPTURES)
def test_modbus_matches_tshark(relative: str) -> None:
    require_tool("tshark")
    path = CORPUS / relative
    if not path.exists():
        pytest.skip(f"{relative} not in corpus")
    port = PORTS.get(relative, 502)
    theirs = tshark_rows(path, port)
    ours = mamori_rows(path, port)
    assert theirs, "tshark dissected no Modbus here: the capture list is wrong"
    mismatches = []
    for i in range(max(len(theirs), len(ours))):
        frame, t = theirs[i] if i < len(theirs) else (None, None)
        o = ours[i] if i < len(ours) else None
        if frame is not None and (relative, frame) in TSHARK_ERRORS:
            continue
        if t is None or o is None or _comparable(t, o) != t:
            mismatches.append(f"#{i} frame {frame}: tshark={t} mamori={o}")
    assert not mismatches, f"{len(mismatches)} mismatches, first 20:\n" + "\n".join(mismatches[:20])


def test_capture_list_covers_every_modbus_capture() -> None:
    """Every corpus capture on the Modbus port is in the list above (or is known not Modbus)."""
    if not CORPUS.is_dir():
        pytest.skip("no corpus")
    listed = {(CORPUS / rel).resolve() for rel in MODBUS_CAPTURES}
    manifest = (CORPUS / "MANIFEST.tsv").read_text().splitlines()[1:]
    modbus_files = {
        (CORPUS / row.split("\t")[0]).resolve()
        for row in manifest
        if row.split("\t")[4] == "modbus" and row.split("\t")[0].endswith(".pcap")
    }
    distinct = {p.resolve() for p in corpus_captures()}
    missing = sorted(str(p) for p in (modbus_files & distinct) - listed)
    assert not missing, f"Modbus captures not covered by the differential test: {missing}"
