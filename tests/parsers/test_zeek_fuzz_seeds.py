"""Zeek's libFuzzer seed corpora (raw Modbus and DNP3 payloads) through our parsers.

Each seed is a stream of one direction as Zeek's fuzzer feeds it. We feed it both
ways (as requests and as responses), whole, one byte at a time, and mutated (every
byte flipped in turn, and cut at every length): the parsers must give their own event
types and nothing else, never an exception.

The same events for every chunking is *not* required here: these seeds contain
garbage, and resynchronising on garbage looks ahead as far as the buffered bytes go,
so where a plausible header is accepted can depend on where a chunk ended (the
property tests require chunking invariance for streams that stay in sync).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from typing import Any

import pytest

from mamori.parsers.dnp3 import DNP3AnomalyEvent, DNP3Parser
from mamori.parsers.modbus import ModbusAnomalyEvent, ModbusParser
from mamori.parsers.stream import Direction, FlowId, Transport
from tests.conftest import corpus_path

FLOW = FlowId(Transport.TCP, "192.0.2.1", 40000, "192.0.2.2", 502)
Factory = Callable[[FlowId], Any]


def seeds(name: str) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(corpus_path(f"zeek/fuzzer-corpora/{name}")) as archive:
        return [(n, archive.read(n)) for n in archive.namelist() if not n.endswith("/")]


def feed(factory: Factory, data: bytes, direction: Direction, step: int) -> list[Any]:
    parser = factory(FLOW)
    out: list[Any] = []
    for i in range(0, len(data), step):
        out.extend(parser.receive(direction, data[i:i + step], 1.0))
    out.extend(parser.eof(direction, 2.0))
    module = factory.__module__.rsplit(".", 1)[0]
    strangers = [e for e in out if not type(e).__module__.startswith(module)]
    assert not strangers, strangers
    return out


@pytest.mark.corpus
@pytest.mark.parametrize(("archive", "factory", "anomaly"), [
    ("modbus-corpus.zip", ModbusParser, ModbusAnomalyEvent),
    ("dnp3_tcp-corpus.zip", DNP3Parser, DNP3AnomalyEvent),
])
def test_seeds_and_their_mutations_never_raise(archive: str, factory: Factory,
                                               anomaly: type) -> None:
    total_events = 0
    anomalies = 0
    for _name, data in seeds(archive):
        for direction in Direction:
            whole = feed(factory, data, direction, len(data) or 1)
            feed(factory, data, direction, 1)
            total_events += len(whole)
            anomalies += sum(isinstance(e, anomaly) for e in whole)
            for i in range(len(data)):
                flipped = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
                feed(factory, flipped, direction, 7)
                feed(factory, data[:i], direction, 3)
    assert total_events > anomalies > 0


@pytest.mark.corpus
def test_modbus_seeds_as_the_wrong_direction_are_anomalies() -> None:
    """Requests parsed as responses (and the reverse) cannot pair: anomalies, not silence."""
    kinds = set()
    for _, data in seeds("modbus-corpus.zip"):
        for ev in feed(ModbusParser, data, Direction.TO_CLIENT, len(data) or 1):
            if isinstance(ev, ModbusAnomalyEvent):
                kinds.add(ev.kind.name)
    assert "UNSOLICITED_RESPONSE" in kinds
