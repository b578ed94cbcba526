"""RequestMemo: the decoded requests a ModbusParser takes again instead of decoding.

Exact (the events are those of a parser without one), bounded (entries and key
length, tested far past both), shared between connections, and counted.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from mamori.parsers.modbus import ModbusParser, ModbusRequest, ReadRequest, RequestMemo
from mamori.parsers.modbus.decoders import REQUEST_DECODERS
from mamori.parsers.stream import Direction, FlowId, Transport

FLOW = FlowId(Transport.TCP, "192.0.2.10", 49152, "192.0.2.20", 502)
OTHER = FlowId(Transport.TCP, "192.0.2.11", 49153, "192.0.2.20", 502)
C2S = Direction.TO_SERVER


def adu(tid: int, fc: int, data: bytes, unit: int = 1) -> bytes:
    return (tid.to_bytes(2, "big") + b"\x00\x00" + (len(data) + 2).to_bytes(2, "big")
            + bytes((unit, fc)) + data)


def read(tid: int, address: int, quantity: int = 10, fc: int = 3) -> bytes:
    return adu(tid, fc, address.to_bytes(2, "big") + quantity.to_bytes(2, "big"))


def parse(stream: list[bytes], memo: RequestMemo | None, flow: FlowId = FLOW) -> list[Any]:
    parser = ModbusParser(flow, memo=memo)
    events: list[Any] = []
    for i, message in enumerate(stream):
        events += parser.receive(C2S, message, float(i))
    return events


def test_a_hit_is_the_same_pdu_in_a_request_of_its_own() -> None:
    memo = RequestMemo()
    first, second = parse([read(1, 100), read(2, 100, fc=3)], memo)
    assert (memo.hits, memo.misses, len(memo)) == (1, 1, 1)
    assert type(first) is ModbusRequest and type(second) is ModbusRequest
    assert second.pdu is first.pdu and second.pdu == ReadRequest(100, 10)
    assert (first.tid, first.ts, second.tid, second.ts) == (1, 0.0, 2, 1.0)


def test_the_key_is_function_code_and_data_not_the_header() -> None:
    memo = RequestMemo()
    events = parse([read(1, 7), read(1, 7, fc=4), adu(2, 3, b"\x00\x07\x00\x0a", unit=9)],
                   memo)
    requests = [e for e in events if type(e) is ModbusRequest]
    assert [(e.fc, e.unit) for e in requests] == [(3, 1), (4, 1), (3, 9)]
    assert (memo.hits, memo.misses) == (1, 2)  # fc 4 is another key; unit 9 is not
    assert requests[2].pdu is requests[0].pdu


def test_shared_between_connections() -> None:
    memo = RequestMemo()
    a = parse([read(1, 40)], memo, FLOW)
    b = parse([read(1, 40)], memo, OTHER)
    assert a[0].flow == FLOW and b[0].flow == OTHER and b[0].pdu is a[0].pdu
    assert (memo.hits, memo.misses) == (1, 1)


def test_entry_cap_far_exceeded() -> None:
    cap = 8
    memo = RequestMemo(max_entries=cap)
    stream = [read(i & 0xFFFF, i) for i in range(cap * 50)]
    sizes = []
    parser = ModbusParser(FLOW, memo=memo)
    events: list[Any] = []
    for i, message in enumerate(stream):
        events += parser.receive(C2S, message, float(i))
        sizes.append(len(memo))
    assert max(sizes) == cap and memo.resets == cap * 50 // cap - 1
    assert events == parse(stream, None)
    assert memo.misses == cap * 50 and memo.hits == 0


def test_key_cap_far_exceeded() -> None:
    memo = RequestMemo(max_key=5)
    short = read(1, 0)  # key fc + 4 data bytes: 5
    long = adu(2, 16, bytes.fromhex("0000007bf6") + bytes(246))  # write 123 registers
    events = parse([short, short, long, long], memo)
    assert (memo.hits, memo.misses, len(memo)) == (1, 1, 1)  # the long one never looked up
    assert events == parse([short, short, long, long], None)
    requests = [e for e in events if type(e) is ModbusRequest]
    assert requests[3].pdu is not requests[2].pdu and requests[3].pdu == requests[2].pdu


@pytest.mark.parametrize("seed", range(4))
def test_random_requests_as_without_a_memo(seed: int) -> None:
    """Every decoder, well-formed or not (short, long, odd counts, unknown codes), through
    a tiny memo that keeps resetting: the same events, anomalies included."""
    rng = random.Random(seed)
    fcs = [*REQUEST_DECODERS, 0, 65, 0x83, 0xFF]
    pool = [adu(0, rng.choice(fcs), rng.randbytes(rng.choice((0, 1, 2, 3, 4, 5, 6, 9, 30))))
            for _ in range(40)]
    stream = [(rng.randrange(65536).to_bytes(2, "big") + rng.choice(pool)[2:])
              for _ in range(3000)]
    memo = RequestMemo(max_entries=16)
    assert parse(stream, memo) == parse(stream, None)
    assert memo.hits > 0 and memo.resets > 0 and len(memo) <= 16


def test_limits() -> None:
    with pytest.raises(ValueError):
        RequestMemo(max_entries=0)
    with pytest.raises(ValueError):
        RequestMemo(max_key=0)
