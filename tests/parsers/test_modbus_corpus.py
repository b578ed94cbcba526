"""Light corpus check: clean public captures decode with no anomaly.

Payloads come from tshark (one TCP segment per line, in capture order); the
lead's differential test does the full field-by-field comparison.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.modbus import (
    ModbusAnomaly,
    ModbusAnomalyEvent,
    ModbusParser,
    ModbusRequest,
    ModbusResponse,
)
from mamori.parsers.stream import Direction, FlowId, Transport
from tests.conftest import corpus_path, require_tool

#: Capture → the anomalies it really contains (kind names, in order).
CLEAN = {
    "zeek/Traces/modbus/modbusSmall.pcap": [],
    # The master pipelines three FC 6 writes with transaction id 504 (frames 68-69);
    # the server answers them in order, so they pair without VALUE_MISMATCH.
    "ICS-Security-Tools/pcaps/ModbusTCP/Modbus/modbus_test.pcap": ["TID_REUSE", "TID_REUSE"],
    # The server leaves about one request in six unanswered: expiry keeps pairing alive.
    "ICS-Security-Tools/pcaps/ModbusTCP/Modbus/modbus_test_2.pcap": [],
}

pytestmark = [pytest.mark.corpus, pytest.mark.tshark]


def segments(path: Path) -> list[tuple[str, int, int, bytes, float]]:
    """(stream, src port, dst port, payload, time) of the new bytes of each TCP segment.

    A stand-in for the reassembler: duplicated and retransmitted bytes (SPAN
    ports copy some frames twice) are dropped by relative sequence number.
    """
    result = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "tcp.len > 0", "-T", "fields", "-e", "tcp.stream",
         "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.seq", "-e", "tcp.payload",
         "-e", "frame.time_epoch"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    rows = []
    next_seq: dict[tuple[str, str], int] = {}
    for line in result.stdout.splitlines():
        stream, sport, dport, seq_text, payload_hex, epoch = line.split("\t")
        payload = bytes.fromhex(payload_hex.replace(":", ""))
        seq = int(seq_text)
        expected = next_seq.get((stream, sport), seq)
        if seq + len(payload) <= expected:
            continue
        payload = payload[max(0, expected - seq) :]
        next_seq[(stream, sport)] = max(expected, seq) + len(payload)
        rows.append((stream, int(sport), int(dport), payload, float(epoch)))
    return rows


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_clean_capture_has_no_anomaly(name: str) -> None:
    path = corpus_path(name)
    require_tool("tshark")
    parsers: dict[str, ModbusParser] = {}
    counts: Counter[str] = Counter()
    anomalies: list[Any] = []
    expected_pickup: list[Any] = []
    for stream, sport, dport, payload, ts in segments(path):
        if 502 not in (sport, dport):
            continue
        direction = Direction.TO_SERVER if dport == 502 else Direction.TO_CLIENT
        parser = parsers.get(stream)
        if parser is None:
            flow = FlowId(Transport.TCP, "client", sport if dport == 502 else dport,
                          "server", 502)
            parser = parsers[stream] = ModbusParser(flow)
            # The captures start mid-stream: tell the parser, as the pipeline does.
            for side in Direction:
                expected_pickup.append(parser.gap(side, 0, ts)[0])
        for event in parser.receive(direction, payload, ts):
            counts[type(event).__name__] += 1
            if isinstance(event, ModbusAnomalyEvent):
                if event.kind is not ModbusAnomaly.RESYNC or event.detail != "skipped 0 bytes":
                    anomalies.append(event)
            elif not isinstance(event, ModbusResponse):
                assert isinstance(event, ModbusRequest)
    assert [e.kind.name for e in anomalies] == CLEAN[name], anomalies
    assert {e.kind for e in expected_pickup} == {ModbusAnomaly.GAP}
    assert counts["ModbusRequest"] > 0 and counts["ModbusResponse"] > 0
