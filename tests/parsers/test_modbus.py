"""ModbusParser on hand-built vectors, each fed whole, byte by byte, split at
every point and pipelined (two ADUs in one receive call)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from mamori.parsers.modbus import (
    CommEventCounterResponse,
    CommEventLogResponse,
    DeviceIdObject,
    Diagnostics,
    EmptyPdu,
    EncapsulatedInterface,
    ExceptionPdu,
    FileRecord,
    FileRecordData,
    FileSubRequest,
    MaskWriteRegister,
    ModbusAnomaly,
    ModbusAnomalyEvent,
    ModbusParser,
    ModbusRequest,
    ModbusResponse,
    RawPdu,
    ReadBitsResponse,
    ReadDeviceIdRequest,
    ReadDeviceIdResponse,
    ReadExceptionStatusResponse,
    ReadFifoQueueRequest,
    ReadFifoQueueResponse,
    ReadFileRecordRequest,
    ReadFileRecordResponse,
    ReadRegistersResponse,
    ReadRequest,
    ReadWriteMultipleRequest,
    ReportServerIdResponse,
    RequestMemo,
    WriteFileRecord,
    WriteMultipleCoilsRequest,
    WriteMultipleRegistersRequest,
    WriteMultipleResponse,
    WriteSingleCoil,
    WriteSingleRegister,
    event_fields,
)
from mamori.parsers.stream import Direction, FlowId, Transport

FLOW = FlowId(Transport.TCP, "192.0.2.10", 49152, "192.0.2.20", 502)
C2S = Direction.TO_SERVER
S2C = Direction.TO_CLIENT
TS = 100.0

Message = tuple[Direction, bytes]


# Feeding helpers ------------------------------------------------------------------


def feed(messages: Sequence[Message], parser: ModbusParser | None = None) -> list[Any]:
    """Each ADU in its own receive call, all at TS."""
    parser = parser or ModbusParser(FLOW)
    events: list[Any] = []
    for direction, adu in messages:
        events += parser.receive(direction, adu, TS)
    return events


def feed_bytewise(messages: Sequence[Message]) -> list[Any]:
    parser = ModbusParser(FLOW)
    events: list[Any] = []
    for direction, adu in messages:
        for i in range(len(adu)):
            events += parser.receive(direction, adu[i : i + 1], TS)
    return events


def feed_split(messages: Sequence[Message], index: int, cut: int) -> list[Any]:
    """Message ``index`` arrives in two receive calls split at ``cut``."""
    parser = ModbusParser(FLOW)
    events: list[Any] = []
    for i, (direction, adu) in enumerate(messages):
        if i == index:
            events += parser.receive(direction, adu[:cut], TS)
            events += parser.receive(direction, adu[cut:], TS)
        else:
            events += parser.receive(direction, adu, TS)
    return events


def retid(adu: bytes, tid: int) -> bytes:
    return tid.to_bytes(2, "big") + adu[2:]


def pipelined(messages: Sequence[Message]) -> list[Message]:
    """Each message followed by a copy with another transaction id."""
    out: list[Message] = []
    for direction, adu in messages:
        tid = int.from_bytes(adu[:2], "big")
        out += [(direction, adu), (direction, retid(adu, tid ^ 0x8000))]
    return out


def feed_grouped(messages: Sequence[Message]) -> list[Any]:
    """Consecutive ADUs of one direction in a single receive call."""
    parser = ModbusParser(FLOW)
    events: list[Any] = []
    index = 0
    while index < len(messages):
        direction = messages[index][0]
        chunk = b""
        while index < len(messages) and messages[index][0] is direction:
            chunk += messages[index][1]
            index += 1
        events += parser.receive(direction, chunk, TS)
    return events


def four_ways(messages: Sequence[Message]) -> list[Any]:
    """Events of ``messages``, asserting that the four ways of feeding agree."""
    whole = feed(messages)
    assert feed_bytewise(messages) == whole
    for index, (_, adu) in enumerate(messages):
        for cut in range(1, len(adu)):
            assert feed_split(messages, index, cut) == whole, (index, cut)
    doubled = pipelined(messages)
    assert feed_grouped(doubled) == feed(doubled)
    # Through a request memo: the first connection fills it, the second takes every
    # request from it (tests/parsers/test_modbus_memo.py: caps and sharing).
    memo = RequestMemo()
    assert feed(messages, ModbusParser(FLOW, memo=memo)) == whole
    hits, misses = memo.hits, memo.misses
    assert feed(messages, ModbusParser(FLOW, memo=memo)) == whole
    kept = sum(1 for d, adu in messages if d is C2S and 8 <= len(adu) <= 7 + memo.max_key)
    assert (memo.hits - hits, memo.misses) == (kept, misses)
    return whole


def check(event: Any, cls: type[Any], **attrs: Any) -> None:
    assert type(event) is cls, event
    assert event.flow == FLOW and event.ts == TS
    for name, expected in attrs.items():
        assert getattr(event, name) == expected, (name, event)


def kinds(events: Sequence[Any]) -> list[ModbusAnomaly]:
    return [e.kind for e in events if type(e) is ModbusAnomalyEvent]


def messages_only(events: Sequence[Any]) -> list[Any]:
    return [e for e in events if type(e) is not ModbusAnomalyEvent]


def responses_only(events: Sequence[object]) -> list[ModbusResponse]:
    """``events``, each asserted to be a response (so their fields are typed)."""
    responses = [e for e in events if isinstance(e, ModbusResponse)]
    assert responses == list(events), events
    return responses


# Vectors: one request and its response per function code ----------------------------

FC1_REQ = bytes([
    0x00, 0x01,  # transaction id 1
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length: unit + 5 PDU bytes
    0x11,        # unit id 17
    0x01,        # fc 1 read coils
    0x00, 0x13,  # starting address 19
    0x00, 0x13,  # quantity 19
])
FC1_RSP = bytes([
    0x00, 0x01,  # transaction id 1
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x11,        # unit id 17
    0x01,        # fc 1
    0x03,        # byte count 3
    0xCD,        # coils 19-26: 1 0 1 1 0 0 1 1 (LSB first)
    0x6B,        # coils 27-34: 1 1 0 1 0 1 1 0
    0x05,        # coils 35-37: 1 0 1, padding 0
])
FC1_BITS = (1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1)

FC2_REQ = bytes([
    0x00, 0x02,  # transaction id 2
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x01,        # unit id 1
    0x02,        # fc 2 read discrete inputs
    0x00, 0xC4,  # starting address 196
    0x00, 0x0A,  # quantity 10
])
FC2_RSP = bytes([
    0x00, 0x02,  # transaction id 2
    0x00, 0x00,  # protocol id
    0x00, 0x05,  # length
    0x01,        # unit id 1
    0x02,        # fc 2
    0x02,        # byte count 2
    0xAC,        # inputs 196-203: 0 0 1 1 0 1 0 1
    0x02,        # inputs 204-205: 0 1
])

FC3_REQ = bytes([
    0x00, 0x03,  # transaction id 3
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x01,        # unit id 1
    0x03,        # fc 3 read holding registers
    0x00, 0x6B,  # starting address 107
    0x00, 0x03,  # quantity 3
])
FC3_RSP = bytes([
    0x00, 0x03,  # transaction id 3
    0x00, 0x00,  # protocol id
    0x00, 0x09,  # length
    0x01,        # unit id 1
    0x03,        # fc 3
    0x06,        # byte count 6
    0x02, 0x2B,  # register 107 = 555
    0x00, 0x00,  # register 108 = 0
    0x00, 0x64,  # register 109 = 100
])

FC4_REQ = bytes([
    0x00, 0x04,  # transaction id 4
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0xFF,        # unit id 255
    0x04,        # fc 4 read input registers
    0x00, 0x08,  # starting address 8
    0x00, 0x01,  # quantity 1
])
FC4_RSP = bytes([
    0x00, 0x04,  # transaction id 4
    0x00, 0x00,  # protocol id
    0x00, 0x05,  # length
    0xFF,        # unit id 255
    0x04,        # fc 4
    0x02,        # byte count 2
    0x00, 0x0A,  # register 8 = 10
])

FC5_REQ = bytes([
    0x00, 0x05,  # transaction id 5
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x01,        # unit id 1
    0x05,        # fc 5 write single coil
    0x00, 0xAC,  # output address 172
    0xFF, 0x00,  # value ON
])
FC5_RSP = FC5_REQ  # normal response echoes the request

FC6_REQ = bytes([
    0x00, 0x06,  # transaction id 6
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x01,        # unit id 1
    0x06,        # fc 6 write single register
    0x00, 0x01,  # register address 1
    0x00, 0x03,  # value 3
])
FC6_RSP = FC6_REQ

FC7_REQ = bytes([
    0x00, 0x07,  # transaction id 7
    0x00, 0x00,  # protocol id
    0x00, 0x02,  # length: unit + fc
    0x01,        # unit id 1
    0x07,        # fc 7 read exception status
])
FC7_RSP = bytes([
    0x00, 0x07,  # transaction id 7
    0x00, 0x00,  # protocol id
    0x00, 0x03,  # length
    0x01,        # unit id 1
    0x07,        # fc 7
    0x6D,        # output data 0b01101101
])

FC8_REQ = bytes([
    0x00, 0x08,  # transaction id 8
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x01,        # unit id 1
    0x08,        # fc 8 diagnostics
    0x00, 0x00,  # sub-function 0 return query data
    0xA5, 0x37,  # query data
])
FC8_RSP = FC8_REQ  # echo

FC8_RESTART_REQ = bytes([
    0x00, 0x09,  # transaction id 9
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x01,        # unit id 1
    0x08,        # fc 8 diagnostics
    0x00, 0x01,  # sub-function 1 restart communications
    0xFF, 0x00,  # data 0xFF00: clear the event log too
])
FC8_LISTEN_ONLY_REQ = bytes([
    0x00, 0x0A,  # transaction id 10
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x01,        # unit id 1
    0x08,        # fc 8 diagnostics
    0x00, 0x04,  # sub-function 4 force listen only mode
    0x00, 0x00,  # data
])
FC8_CLEAR_REQ = bytes([
    0x00, 0x0B,  # transaction id 11
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x01,        # unit id 1
    0x08,        # fc 8 diagnostics
    0x00, 0x0A,  # sub-function 0x0A clear counters and diagnostic register
    0x00, 0x00,  # data
])

FC11_REQ = bytes([
    0x00, 0x0C,  # transaction id 12
    0x00, 0x00,  # protocol id
    0x00, 0x02,  # length
    0x01,        # unit id 1
    0x0B,        # fc 11 get comm event counter
])
FC11_RSP = bytes([
    0x00, 0x0C,  # transaction id 12
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x01,        # unit id 1
    0x0B,        # fc 11
    0xFF, 0xFF,  # status: busy
    0x01, 0x08,  # event count 264
])

FC12_REQ = bytes([
    0x00, 0x0D,  # transaction id 13
    0x00, 0x00,  # protocol id
    0x00, 0x02,  # length
    0x01,        # unit id 1
    0x0C,        # fc 12 get comm event log
])
FC12_RSP = bytes([
    0x00, 0x0D,  # transaction id 13
    0x00, 0x00,  # protocol id
    0x00, 0x0B,  # length
    0x01,        # unit id 1
    0x0C,        # fc 12
    0x08,        # byte count 8
    0x00, 0x00,  # status
    0x01, 0x08,  # event count 264
    0x01, 0x21,  # message count 289
    0x20,        # event 0
    0x00,        # event 1
])

FC15_REQ = bytes([
    0x00, 0x0E,  # transaction id 14
    0x00, 0x00,  # protocol id
    0x00, 0x09,  # length
    0x01,        # unit id 1
    0x0F,        # fc 15 write multiple coils
    0x00, 0x13,  # starting address 19
    0x00, 0x0A,  # quantity 10
    0x02,        # byte count 2
    0xCD,        # coils 19-26: 1 0 1 1 0 0 1 1
    0x01,        # coils 27-28: 1 0
])
FC15_RSP = bytes([
    0x00, 0x0E,  # transaction id 14
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x01,        # unit id 1
    0x0F,        # fc 15
    0x00, 0x13,  # starting address 19
    0x00, 0x0A,  # quantity 10
])

FC16_REQ = bytes([
    0x00, 0x0F,  # transaction id 15
    0x00, 0x00,  # protocol id
    0x00, 0x0B,  # length
    0x01,        # unit id 1
    0x10,        # fc 16 write multiple registers
    0x00, 0x01,  # starting address 1
    0x00, 0x02,  # quantity 2
    0x04,        # byte count 4
    0x00, 0x0A,  # register 1 = 10
    0x01, 0x02,  # register 2 = 258
])
FC16_RSP = bytes([
    0x00, 0x0F,  # transaction id 15
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x01,        # unit id 1
    0x10,        # fc 16
    0x00, 0x01,  # starting address 1
    0x00, 0x02,  # quantity 2
])

FC17_REQ = bytes([
    0x00, 0x10,  # transaction id 16
    0x00, 0x00,  # protocol id
    0x00, 0x02,  # length
    0x01,        # unit id 1
    0x11,        # fc 17 report server id
])
FC17_RSP = bytes([
    0x00, 0x10,  # transaction id 16
    0x00, 0x00,  # protocol id
    0x00, 0x07,  # length
    0x01,        # unit id 1
    0x11,        # fc 17
    0x04,        # byte count 4
    0x42,        # server id
    0xFF,        # run indicator ON
    0x56, 0x31,  # additional data "V1"
])

FC20_REQ = bytes([
    0x00, 0x11,  # transaction id 17
    0x00, 0x00,  # protocol id
    0x00, 0x11,  # length 17
    0x01,        # unit id 1
    0x14,        # fc 20 read file record
    0x0E,        # byte count 14
    0x06,        # sub-request 1: reference type 6
    0x00, 0x04,  #   file number 4
    0x00, 0x01,  #   record number 1
    0x00, 0x02,  #   record length 2
    0x06,        # sub-request 2: reference type 6
    0x00, 0x03,  #   file number 3
    0x00, 0x09,  #   record number 9
    0x00, 0x02,  #   record length 2
])
FC20_RSP = bytes([
    0x00, 0x11,  # transaction id 17
    0x00, 0x00,  # protocol id
    0x00, 0x0F,  # length 15
    0x01,        # unit id 1
    0x14,        # fc 20
    0x0C,        # response data length 12
    0x05,        # sub-response 1: file response length 5
    0x06,        #   reference type 6
    0x0D, 0xFE,  #   register 0x0DFE
    0x00, 0x20,  #   register 0x0020
    0x05,        # sub-response 2: file response length 5
    0x06,        #   reference type 6
    0x33, 0xCD,  #   register 0x33CD
    0x00, 0x40,  #   register 0x0040
])

FC21_REQ = bytes([
    0x00, 0x12,  # transaction id 18
    0x00, 0x00,  # protocol id
    0x00, 0x10,  # length 16
    0x01,        # unit id 1
    0x15,        # fc 21 write file record
    0x0D,        # request data length 13
    0x06,        # sub-request: reference type 6
    0x00, 0x04,  #   file number 4
    0x00, 0x07,  #   record number 7
    0x00, 0x03,  #   record length 3
    0x06, 0xAF,  #   register data 0x06AF
    0x04, 0xBE,  #   register data 0x04BE
    0x10, 0x0D,  #   register data 0x100D
])
FC21_RSP = FC21_REQ  # echo

FC22_REQ = bytes([
    0x00, 0x13,  # transaction id 19
    0x00, 0x00,  # protocol id
    0x00, 0x08,  # length
    0x01,        # unit id 1
    0x16,        # fc 22 mask write register
    0x00, 0x04,  # reference address 4
    0x00, 0xF2,  # and mask
    0x00, 0x25,  # or mask
])
FC22_RSP = FC22_REQ  # echo

FC23_REQ = bytes([
    0x00, 0x14,  # transaction id 20
    0x00, 0x00,  # protocol id
    0x00, 0x11,  # length 17
    0x01,        # unit id 1
    0x17,        # fc 23 read/write multiple registers
    0x00, 0x03,  # read starting address 3
    0x00, 0x06,  # quantity to read 6
    0x00, 0x0E,  # write starting address 14
    0x00, 0x03,  # quantity to write 3
    0x06,        # write byte count 6
    0x00, 0xFF,  # write register 14
    0x00, 0xFF,  # write register 15
    0x00, 0xFF,  # write register 16
])
FC23_RSP = bytes([
    0x00, 0x14,  # transaction id 20
    0x00, 0x00,  # protocol id
    0x00, 0x0F,  # length 15
    0x01,        # unit id 1
    0x17,        # fc 23
    0x0C,        # byte count 12
    0x00, 0xFE,  # register 3
    0x0A, 0xCD,  # register 4
    0x00, 0x01,  # register 5
    0x00, 0x03,  # register 6
    0x00, 0x0D,  # register 7
    0x00, 0xFF,  # register 8
])

FC24_REQ = bytes([
    0x00, 0x15,  # transaction id 21
    0x00, 0x00,  # protocol id
    0x00, 0x04,  # length
    0x01,        # unit id 1
    0x18,        # fc 24 read fifo queue
    0x04, 0xDE,  # fifo pointer address 1246
])
FC24_RSP = bytes([
    0x00, 0x15,  # transaction id 21
    0x00, 0x00,  # protocol id
    0x00, 0x0A,  # length
    0x01,        # unit id 1
    0x18,        # fc 24
    0x00, 0x06,  # byte count 6
    0x00, 0x02,  # fifo count 2
    0x01, 0xB8,  # fifo value 440
    0x12, 0x84,  # fifo value 4740
])

FC43_14_REQ = bytes([
    0x00, 0x16,  # transaction id 22
    0x00, 0x00,  # protocol id
    0x00, 0x05,  # length
    0x01,        # unit id 1
    0x2B,        # fc 43 encapsulated interface transport
    0x0E,        # MEI type 14 read device identification
    0x01,        # read device id code 1 (basic)
    0x00,        # object id 0
])
FC43_14_RSP = bytes([
    0x00, 0x16,  # transaction id 22
    0x00, 0x00,  # protocol id
    0x00, 0x1B,  # length 27
    0x01,        # unit id 1
    0x2B,        # fc 43
    0x0E,        # MEI type 14
    0x01,        # read device id code 1
    0x01,        # conformity level 1
    0x00,        # more follows: no
    0x00,        # next object id
    0x03,        # number of objects 3
    0x00, 0x04,  # object 0 VendorName, length 4
    0x41, 0x63, 0x6D, 0x65,  # "Acme"
    0x01, 0x05,  # object 1 ProductCode, length 5
    0x50, 0x4C, 0x43, 0x2D, 0x31,  # "PLC-1"
    0x02, 0x04,  # object 2 MajorMinorRevision, length 4
    0x56, 0x31, 0x2E, 0x30,  # "V1.0"
])

FC43_13_REQ = bytes([
    0x00, 0x17,  # transaction id 23
    0x00, 0x00,  # protocol id
    0x00, 0x06,  # length
    0x01,        # unit id 1
    0x2B,        # fc 43
    0x0D,        # MEI type 13 CANopen general reference
    0x01, 0x02, 0x03,  # CANopen request, carried raw
])
FC43_13_RSP = bytes([
    0x00, 0x17,  # transaction id 23
    0x00, 0x00,  # protocol id
    0x00, 0x05,  # length
    0x01,        # unit id 1
    0x2B,        # fc 43
    0x0D,        # MEI type 13
    0x0A, 0x0B,  # CANopen response, carried raw
])

FC90_REQ = bytes([
    0x00, 0x18,  # transaction id 24
    0x00, 0x00,  # protocol id
    0x00, 0x05,  # length
    0x00,        # unit id 0
    0x5A,        # fc 90 UMAS
    0x00,        # UMAS session
    0x02,        # UMAS 0x02 read PLC id
    0x00,        # padding
])
FC90_RSP = bytes([
    0x00, 0x18,  # transaction id 24
    0x00, 0x00,  # protocol id
    0x00, 0x05,  # length
    0x00,        # unit id 0
    0x5A,        # fc 90
    0x00,        # UMAS session
    0xFE,        # UMAS OK
    0x01,        # data
])

FC3_EXCEPTION_RSP = bytes([
    0x00, 0x03,  # transaction id 3
    0x00, 0x00,  # protocol id
    0x00, 0x03,  # length
    0x01,        # unit id 1
    0x83,        # fc 3 | 0x80: exception
    0x02,        # exception code 2 illegal data address
])
FC8_EXCEPTION_RSP = bytes([
    0x00, 0x08,  # transaction id 8
    0x00, 0x00,  # protocol id
    0x00, 0x03,  # length
    0x01,        # unit id 1
    0x88,        # fc 8 | 0x80: exception
    0x01,        # exception code 1 illegal function
])


def _rsp(**attrs: Any) -> tuple[type, dict[str, Any]]:
    base = {"exception": None, "unsolicited": False, "latency": 0.0}
    return ModbusResponse, base | attrs


def _req(**attrs: Any) -> tuple[type, dict[str, Any]]:
    return ModbusRequest, attrs


PAIRS: dict[str, tuple[list[Message], list[tuple[type, dict[str, Any]]]]] = {
    "fc1": ([(C2S, FC1_REQ), (S2C, FC1_RSP)], [
        _req(tid=1, unit=17, fc=1, sub=None, address=19, quantity=19, pdu=ReadRequest(19, 19)),
        _rsp(tid=1, unit=17, fc=1, address=19, quantity=19, pdu=ReadBitsResponse(3, FC1_BITS)),
    ]),
    "fc2": ([(C2S, FC2_REQ), (S2C, FC2_RSP)], [
        _req(fc=2, address=196, quantity=10, pdu=ReadRequest(196, 10)),
        _rsp(fc=2, address=196, quantity=10,
             pdu=ReadBitsResponse(2, (0, 0, 1, 1, 0, 1, 0, 1, 0, 1))),
    ]),
    "fc3": ([(C2S, FC3_REQ), (S2C, FC3_RSP)], [
        _req(tid=3, unit=1, fc=3, address=107, quantity=3, pdu=ReadRequest(107, 3)),
        _rsp(tid=3, unit=1, fc=3, address=107, quantity=3,
             pdu=ReadRegistersResponse(6, (555, 0, 100))),
    ]),
    "fc4": ([(C2S, FC4_REQ), (S2C, FC4_RSP)], [
        _req(unit=255, fc=4, address=8, quantity=1, pdu=ReadRequest(8, 1)),
        _rsp(unit=255, fc=4, address=8, quantity=1, pdu=ReadRegistersResponse(2, (10,))),
    ]),
    "fc5": ([(C2S, FC5_REQ), (S2C, FC5_RSP)], [
        _req(fc=5, address=172, quantity=1, pdu=WriteSingleCoil(172, 0xFF00)),
        _rsp(fc=5, address=172, quantity=1, pdu=WriteSingleCoil(172, 0xFF00)),
    ]),
    "fc6": ([(C2S, FC6_REQ), (S2C, FC6_RSP)], [
        _req(fc=6, address=1, quantity=1, pdu=WriteSingleRegister(1, 3)),
        _rsp(fc=6, address=1, quantity=1, pdu=WriteSingleRegister(1, 3)),
    ]),
    "fc7": ([(C2S, FC7_REQ), (S2C, FC7_RSP)], [
        _req(fc=7, address=None, quantity=None, pdu=EmptyPdu()),
        _rsp(fc=7, pdu=ReadExceptionStatusResponse(0x6D)),
    ]),
    "fc8": ([(C2S, FC8_REQ), (S2C, FC8_RSP)], [
        _req(fc=8, sub=0, pdu=Diagnostics(0, b"\xa5\x37")),
        _rsp(fc=8, sub=0, pdu=Diagnostics(0, b"\xa5\x37")),
    ]),
    "fc8_restart": ([(C2S, FC8_RESTART_REQ), (S2C, FC8_RESTART_REQ)], [
        _req(fc=8, sub=1, pdu=Diagnostics(1, b"\xff\x00")),
        _rsp(fc=8, sub=1, pdu=Diagnostics(1, b"\xff\x00")),
    ]),
    "fc8_listen_only": ([(C2S, FC8_LISTEN_ONLY_REQ)], [
        _req(fc=8, sub=4, pdu=Diagnostics(4, b"\x00\x00")),
    ]),
    "fc8_clear": ([(C2S, FC8_CLEAR_REQ), (S2C, FC8_CLEAR_REQ)], [
        _req(fc=8, sub=0x0A), _rsp(fc=8, sub=0x0A),
    ]),
    "fc11": ([(C2S, FC11_REQ), (S2C, FC11_RSP)], [
        _req(fc=11, pdu=EmptyPdu()), _rsp(fc=11, pdu=CommEventCounterResponse(0xFFFF, 264)),
    ]),
    "fc12": ([(C2S, FC12_REQ), (S2C, FC12_RSP)], [
        _req(fc=12, pdu=EmptyPdu()),
        _rsp(fc=12, pdu=CommEventLogResponse(8, 0, 264, 289, b"\x20\x00")),
    ]),
    "fc15": ([(C2S, FC15_REQ), (S2C, FC15_RSP)], [
        _req(fc=15, address=19, quantity=10,
             pdu=WriteMultipleCoilsRequest(19, 10, 2, (1, 0, 1, 1, 0, 0, 1, 1, 1, 0))),
        _rsp(fc=15, address=19, quantity=10, pdu=WriteMultipleResponse(19, 10)),
    ]),
    "fc16": ([(C2S, FC16_REQ), (S2C, FC16_RSP)], [
        _req(fc=16, address=1, quantity=2, pdu=WriteMultipleRegistersRequest(1, 2, 4, (10, 258))),
        _rsp(fc=16, address=1, quantity=2, pdu=WriteMultipleResponse(1, 2)),
    ]),
    "fc17": ([(C2S, FC17_REQ), (S2C, FC17_RSP)], [
        _req(fc=17, pdu=EmptyPdu()),
        _rsp(fc=17, pdu=ReportServerIdResponse(4, 0x42, 0xFF, b"V1", b"\x42\xffV1")),
    ]),
    "fc20": ([(C2S, FC20_REQ), (S2C, FC20_RSP)], [
        _req(fc=20, pdu=ReadFileRecordRequest(14, (FileSubRequest(6, 4, 1, 2),
                                                   FileSubRequest(6, 3, 9, 2)))),
        _rsp(fc=20, pdu=ReadFileRecordResponse(12, (FileRecordData(6, (0x0DFE, 0x20)),
                                                    FileRecordData(6, (0x33CD, 0x40))))),
    ]),
    "fc21": ([(C2S, FC21_REQ), (S2C, FC21_RSP)], [
        _req(fc=21, pdu=WriteFileRecord(13, (FileRecord(6, 4, 7, 3, (0x06AF, 0x04BE, 0x100D)),))),
        _rsp(fc=21, pdu=WriteFileRecord(13, (FileRecord(6, 4, 7, 3, (0x06AF, 0x04BE, 0x100D)),))),
    ]),
    "fc22": ([(C2S, FC22_REQ), (S2C, FC22_RSP)], [
        _req(fc=22, address=4, quantity=1, pdu=MaskWriteRegister(4, 0xF2, 0x25)),
        _rsp(fc=22, address=4, quantity=1, pdu=MaskWriteRegister(4, 0xF2, 0x25)),
    ]),
    "fc23": ([(C2S, FC23_REQ), (S2C, FC23_RSP)], [
        _req(fc=23, address=3, quantity=6,
             pdu=ReadWriteMultipleRequest(3, 6, 14, 3, 6, (0xFF, 0xFF, 0xFF))),
        _rsp(fc=23, address=3, quantity=6,
             pdu=ReadRegistersResponse(12, (0xFE, 0xACD, 1, 3, 0xD, 0xFF))),
    ]),
    "fc24": ([(C2S, FC24_REQ), (S2C, FC24_RSP)], [
        _req(fc=24, address=1246, quantity=None, pdu=ReadFifoQueueRequest(1246)),
        _rsp(fc=24, address=1246, pdu=ReadFifoQueueResponse(6, 2, (440, 4740))),
    ]),
    "fc43_14": ([(C2S, FC43_14_REQ), (S2C, FC43_14_RSP)], [
        _req(fc=43, sub=14, pdu=ReadDeviceIdRequest(1, 0)),
        _rsp(fc=43, sub=14, pdu=ReadDeviceIdResponse(1, 1, 0, 0, 3, (
            DeviceIdObject(0, "Acme"), DeviceIdObject(1, "PLC-1"), DeviceIdObject(2, "V1.0")))),
    ]),
    "fc43_13": ([(C2S, FC43_13_REQ), (S2C, FC43_13_RSP)], [
        _req(fc=43, sub=13, pdu=EncapsulatedInterface(13, b"\x01\x02\x03")),
        _rsp(fc=43, sub=13, pdu=EncapsulatedInterface(13, b"\x0a\x0b")),
    ]),
    "fc90_umas": ([(C2S, FC90_REQ), (S2C, FC90_RSP)], [
        _req(unit=0, fc=90, sub=None, address=None, pdu=RawPdu(b"\x00\x02\x00")),
        _rsp(unit=0, fc=90, pdu=RawPdu(b"\x00\xfe\x01")),
    ]),
    "fc3_exception": ([(C2S, FC3_REQ), (S2C, FC3_EXCEPTION_RSP)], [
        _req(fc=3),
        _rsp(fc=3, exception=2, address=107, quantity=3, pdu=ExceptionPdu(2)),
    ]),
    "fc8_exception": ([(C2S, FC8_REQ), (S2C, FC8_EXCEPTION_RSP)], [
        _req(fc=8), _rsp(fc=8, sub=0, exception=1, pdu=ExceptionPdu(1)),
    ]),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_function_code_vectors(name: str) -> None:
    messages, expected = PAIRS[name]
    events = four_ways(messages)
    assert len(events) == len(expected), events
    for event, (cls, attrs) in zip(events, expected, strict=True):
        check(event, cls, **attrs)


def test_all_named_function_codes_have_a_vector() -> None:
    covered = {int(m[1][7]) & 0x7F for messages, _ in PAIRS.values() for m in messages}
    assert {1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43} <= covered


def test_latency_and_pairing_out_of_order() -> None:
    parser = ModbusParser(FLOW)
    assert parser.receive(C2S, FC3_REQ + FC4_REQ, 1.0)
    rsp4 = parser.receive(S2C, FC4_RSP, 1.25)
    rsp3 = parser.receive(S2C, FC3_RSP, 1.5)
    assert isinstance(rsp4[0], ModbusResponse) and isinstance(rsp3[0], ModbusResponse)
    check_latency = [(rsp4[0].fc, rsp4[0].latency), (rsp3[0].fc, rsp3[0].latency)]
    assert check_latency == [(4, 0.25), (3, 0.5)]
    assert parser.outstanding == 0


def test_diagnostic_properties() -> None:
    pdu = feed([(C2S, FC8_RESTART_REQ)])[0].pdu
    assert pdu.name == "restart_communications" and pdu.clears_event_log and pdu.value == 0xFF00


def test_device_id_names() -> None:
    response = feed([(C2S, FC43_14_REQ), (S2C, FC43_14_RSP)])[1]
    names = {o.name: o.value for o in response.pdu.objects}
    assert names == {"VendorName": "Acme", "ProductCode": "PLC-1", "MajorMinorRevision": "V1.0"}
    assert DeviceIdObject(0x80, "x").name == "object_0x80"


# Anomalies -----------------------------------------------------------------------------


def adu(tid: int, unit: int, pdu: bytes, pid: int = 0, length: int | None = None) -> bytes:
    """An ADU for the anomaly scenarios below (whose PDUs are commented inline)."""
    declared = len(pdu) + 1 if length is None else length
    return (
        tid.to_bytes(2, "big") + pid.to_bytes(2, "big") + declared.to_bytes(2, "big")
        + bytes([unit]) + pdu
    )


def _anomalies(events: Sequence[Any]) -> list[ModbusAnomalyEvent]:
    return [e for e in events if type(e) is ModbusAnomalyEvent]


def scenario_invalid_protocol_id() -> list[Any]:
    bad = adu(1, 1, bytes([0x03, 0x00, 0x00, 0x00, 0x01]), pid=1)  # fc 3 addr 0 qty 1, pid 1
    return feed([(C2S, bad + FC3_REQ)])


def scenario_invalid_length() -> list[Any]:
    return feed([(C2S, adu(1, 1, b"", length=1) + FC3_REQ)])  # length 1: no function code


def scenario_adu_too_long() -> list[Any]:
    return feed([(C2S, adu(1, 1, bytes([0x03]), length=300) + FC3_REQ)])  # length 300


def scenario_byte_count_mismatch() -> list[Any]:
    rsp = adu(3, 1, bytes([0x03, 0x08, 0x02, 0x2B, 0, 0, 0, 0x64]))  # byte count 8, 6 bytes
    return feed([(C2S, FC3_REQ), (S2C, rsp)])


def scenario_invalid_function_code() -> list[Any]:
    return feed([(C2S, adu(1, 1, bytes([0x00, 0x01])))])  # fc 0


def scenario_invalid_exception_code() -> list[Any]:
    rsp = adu(3, 1, bytes([0x83, 0x0C]))  # fc 3 exception, code 12 undefined
    return feed([(C2S, FC3_REQ), (S2C, rsp)])


def scenario_invalid_coil_value() -> list[Any]:
    return feed([(C2S, adu(5, 1, bytes([0x05, 0x00, 0xAC, 0x12, 0x34])))])  # value 0x1234


def scenario_unsolicited_response() -> list[Any]:
    return feed([(S2C, FC3_RSP)])


def scenario_value_mismatch() -> list[Any]:
    return feed([(C2S, FC4_REQ), (S2C, retid(FC3_RSP, 4)[:6] + bytes([0xFF]) + FC3_RSP[7:])])


def scenario_tid_reuse() -> list[Any]:
    return feed([(C2S, FC3_REQ), (C2S, FC3_REQ)])


def scenario_flooded() -> list[Any]:
    parser = ModbusParser(FLOW, max_outstanding=2)
    return feed([(C2S, retid(FC3_REQ, tid)) for tid in range(4)], parser)


def scenario_gap() -> list[Any]:
    parser = ModbusParser(FLOW)
    return parser.gap(C2S, 10, TS) + parser.receive(C2S, FC3_REQ, TS)


scenario_resync = scenario_invalid_protocol_id


def scenario_truncated() -> list[Any]:
    parser = ModbusParser(FLOW)
    return parser.receive(C2S, FC3_REQ[:9], TS) + parser.eof(C2S, TS)


def scenario_malformed_pdu() -> list[Any]:
    return feed([(C2S, adu(1, 1, bytes([0x03, 0x00, 0x6B])))])  # fc 3 with 2 data bytes


def scenario_invalid_quantity() -> list[Any]:
    return feed([(C2S, adu(1, 1, bytes([0x03, 0x00, 0x00, 0x00, 0xC8])))])  # qty 200 > 125


def scenario_invalid_sub_function() -> list[Any]:
    return feed([(C2S, adu(1, 1, bytes([0x08, 0x00, 0x05, 0x00, 0x00])))])  # sub 5 reserved


def scenario_non_modbus_data() -> list[Any]:
    parser = ModbusParser(FLOW, max_buffer=512)
    return parser.receive(C2S, b"\xff" * 1000, TS)


SCENARIOS: dict[ModbusAnomaly, Callable[[], list[Any]]] = {
    ModbusAnomaly.INVALID_PROTOCOL_ID: scenario_invalid_protocol_id,
    ModbusAnomaly.INVALID_LENGTH: scenario_invalid_length,
    ModbusAnomaly.ADU_TOO_LONG: scenario_adu_too_long,
    ModbusAnomaly.RESYNC: scenario_resync,
    ModbusAnomaly.NON_MODBUS_DATA: scenario_non_modbus_data,
    ModbusAnomaly.GAP: scenario_gap,
    ModbusAnomaly.TRUNCATED: scenario_truncated,
    ModbusAnomaly.INVALID_FUNCTION_CODE: scenario_invalid_function_code,
    ModbusAnomaly.INVALID_EXCEPTION_CODE: scenario_invalid_exception_code,
    ModbusAnomaly.MALFORMED_PDU: scenario_malformed_pdu,
    ModbusAnomaly.BYTE_COUNT_MISMATCH: scenario_byte_count_mismatch,
    ModbusAnomaly.INVALID_QUANTITY: scenario_invalid_quantity,
    ModbusAnomaly.INVALID_COIL_VALUE: scenario_invalid_coil_value,
    ModbusAnomaly.INVALID_SUB_FUNCTION: scenario_invalid_sub_function,
    ModbusAnomaly.UNSOLICITED_RESPONSE: scenario_unsolicited_response,
    ModbusAnomaly.VALUE_MISMATCH: scenario_value_mismatch,
    ModbusAnomaly.TID_REUSE: scenario_tid_reuse,
    ModbusAnomaly.FLOODED: scenario_flooded,
}


def test_every_anomaly_kind_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(ModbusAnomaly)


@pytest.mark.parametrize("kind", list(ModbusAnomaly), ids=lambda k: k.name)
def test_anomaly_scenario(kind: ModbusAnomaly) -> None:
    events = SCENARIOS[kind]()
    assert kind in kinds(events), events
    for event in events:
        assert event.flow == FLOW


def test_bad_header_then_resync_recovers_the_next_adu() -> None:
    events = scenario_invalid_protocol_id()
    assert kinds(events) == [ModbusAnomaly.INVALID_PROTOCOL_ID, ModbusAnomaly.RESYNC]
    assert _anomalies(events)[1].detail == "skipped 11 bytes"
    check(events[-1], ModbusRequest, tid=3, fc=3, address=107, quantity=3)


def test_malformed_pdu_still_emits_the_message() -> None:
    events = scenario_malformed_pdu()
    check(events[0], ModbusRequest, fc=3, address=0x6B, quantity=None, pdu=RawPdu(b"\x00\x6b"))
    assert kinds(events) == [ModbusAnomaly.MALFORMED_PDU]


def test_byte_count_mismatch_keeps_what_was_decoded() -> None:
    events = scenario_byte_count_mismatch()
    check(events[1], ModbusResponse, fc=3, address=107, quantity=3,
          pdu=ReadRegistersResponse(8, (555, 0, 100)))
    assert kinds(events) == [ModbusAnomaly.BYTE_COUNT_MISMATCH, ModbusAnomaly.VALUE_MISMATCH]


def test_unsolicited_response_event() -> None:
    events = scenario_unsolicited_response()
    check(events[0], ModbusResponse, unsolicited=True, latency=None, address=None,
          pdu=ReadRegistersResponse(6, (555, 0, 100)))
    assert kinds(events) == [ModbusAnomaly.UNSOLICITED_RESPONSE]


def test_value_mismatch_on_function_code() -> None:
    events = scenario_value_mismatch()
    check(events[1], ModbusResponse, fc=3, unsolicited=False, address=None)
    assert kinds(events) == [ModbusAnomaly.VALUE_MISMATCH]


def test_value_mismatch_on_echo_and_quantity() -> None:
    echo = adu(6, 1, bytes([0x06, 0x00, 0x01, 0x00, 0x04]))  # fc 6 echo with value 4, not 3
    assert kinds(feed([(C2S, FC6_REQ), (S2C, echo)])) == [ModbusAnomaly.VALUE_MISMATCH]
    multi = adu(15, 1, bytes([0x10, 0x00, 0x01, 0x00, 0x03]))  # fc 16 echo quantity 3, not 2
    assert kinds(feed([(C2S, FC16_REQ), (S2C, multi)])) == [ModbusAnomaly.VALUE_MISMATCH]
    bits = adu(1, 17, bytes([0x01, 0x02, 0xCD, 0x6B]))  # 2 bytes for 19 coils
    assert kinds(feed([(C2S, FC1_REQ), (S2C, bits)])) == [ModbusAnomaly.VALUE_MISMATCH]


def test_exception_codes() -> None:
    for code in (1, 2, 3, 4, 5, 6, 8, 10, 11):
        rsp = adu(3, 1, bytes([0x83, code]))  # fc 3 exception, code
        events = feed([(C2S, FC3_REQ), (S2C, rsp)])
        assert kinds(events) == [] and events[1].exception == code
    for code in (0, 7, 9, 12, 255):
        events = feed([(C2S, FC3_REQ), (S2C, adu(3, 1, bytes([0x83, code])))])
        check(events[1], ModbusResponse, exception=code, fc=3)
        assert kinds(events) == [ModbusAnomaly.INVALID_EXCEPTION_CODE]


def test_vendor_codes_are_carried_raw() -> None:
    for fc in (9, 13, 18, 40, 91, 125, 126, 100, 127):
        events = feed([(C2S, adu(1, 1, bytes([fc, 0xAA, 0xBB]))),  # fc, two data bytes
                       (S2C, adu(1, 1, bytes([fc | 0x80, 0x01])))])  # exception 1
        assert kinds(events) == []
        check(events[0], ModbusRequest, fc=fc, pdu=RawPdu(b"\xaa\xbb"))
        assert events[0].pdu.length == 2
        check(events[1], ModbusResponse, fc=fc, exception=1)


def test_request_with_exception_bit_is_invalid() -> None:
    events = feed([(C2S, adu(1, 1, bytes([0x83, 0x00, 0x00, 0x00, 0x01])))])
    check(events[0], ModbusRequest, fc=0x83)
    assert kinds(events) == [ModbusAnomaly.INVALID_FUNCTION_CODE]


def test_flood_stops_tracking_until_drained() -> None:
    parser = ModbusParser(FLOW, max_outstanding=2)
    events = feed([(C2S, retid(FC3_REQ, tid)) for tid in range(4)], parser)
    assert kinds(events).count(ModbusAnomaly.FLOODED) == 1
    assert parser.outstanding == 2
    # Responses to untracked requests are unsolicited, but no anomaly while flooded.
    events = parser.receive(S2C, retid(FC3_RSP, 3), TS)
    assert isinstance(events[0], ModbusResponse)
    assert events[0].unsolicited and kinds(events) == []
    for tid in (0, 1):
        response = parser.receive(S2C, retid(FC3_RSP, tid), TS)[0]
        assert isinstance(response, ModbusResponse)
        assert not response.unsolicited
    events = parser.receive(C2S, retid(FC3_REQ, 9), TS)
    assert kinds(events) == [] and parser.outstanding == 1


def test_gap_in_the_middle_of_an_adu() -> None:
    parser = ModbusParser(FLOW)
    assert parser.receive(C2S, FC16_REQ[:10], TS) == []
    gap = parser.gap(C2S, 5, TS)
    assert kinds(gap) == [ModbusAnomaly.GAP]
    assert isinstance(gap[0], ModbusAnomalyEvent)
    assert "10 buffered bytes dropped" in gap[0].detail
    # The stream resumes in the middle of the lost ADU: its tail is garbage.
    events = parser.receive(C2S, FC16_REQ[15:] + FC3_REQ + FC4_REQ, TS)
    assert kinds(events) == [ModbusAnomaly.RESYNC]
    assert isinstance(events[0], ModbusAnomalyEvent)
    assert events[0].detail == f"skipped {len(FC16_REQ) - 15} bytes"
    assert [e.fc for e in messages_only(events)] == [3, 4]


def test_gap_on_adu_boundary_resyncs_without_skipping() -> None:
    parser = ModbusParser(FLOW)
    events = parser.gap(C2S, 12, TS) + parser.receive(C2S, FC3_REQ, TS)
    assert kinds(events) == [ModbusAnomaly.GAP, ModbusAnomaly.RESYNC]
    assert isinstance(events[1], ModbusAnomalyEvent)
    assert events[1].detail == "skipped 0 bytes"


def test_gap_in_responses_makes_following_unpaired_responses_quiet() -> None:
    parser = ModbusParser(FLOW)
    parser.receive(C2S, FC3_REQ, TS)
    parser.gap(S2C, 100, TS)
    assert parser.outstanding == 0
    events = parser.receive(S2C, FC3_RSP, TS)
    assert isinstance(events[-1], ModbusResponse)
    assert events[-1].unsolicited and kinds(events) == [ModbusAnomaly.RESYNC]
    parser.receive(C2S, FC4_REQ, TS)
    assert kinds(parser.receive(S2C, FC4_RSP, TS)) == []
    assert kinds(parser.receive(S2C, FC3_RSP, TS)) == [ModbusAnomaly.UNSOLICITED_RESPONSE]


def test_resync_rejects_candidates_whose_next_header_is_implausible() -> None:
    # Garbage holding a fake header (pid 0, length 6, fc 3) whose "next header" has pid 0x4142.
    garbage = bytes([0x12, 0x34, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x00, 0x00, 0x00, 0x01,
                     0x99, 0x99, 0x41, 0x42])
    parser = ModbusParser(FLOW)
    parser.gap(C2S, 1, TS)
    events = parser.receive(C2S, garbage + FC3_REQ, TS)
    assert [e.detail for e in _anomalies(events)] == [f"skipped {len(garbage)} bytes"]
    assert [e.tid for e in messages_only(events)] == [3]


def test_garbage_is_not_buffered() -> None:
    parser = ModbusParser(FLOW, max_buffer=300)
    parser.gap(C2S, 1, TS)
    for _ in range(10):
        parser.receive(C2S, b"\x01" * 1000, TS)
        assert parser.buffered(C2S) <= 300
    events = parser.receive(C2S, FC3_REQ, TS)
    assert _anomalies(events)[0].detail == "skipped 10000 bytes"
    assert messages_only(events)[0].fc == 3


def test_split_adu_larger_than_max_buffer_input() -> None:
    parser = ModbusParser(FLOW, max_buffer=300)
    stream = b"".join(retid(FC3_REQ, tid) for tid in range(200))
    events = parser.receive(C2S, stream[:5], TS) + parser.receive(C2S, stream[5:], TS)
    assert [e.tid for e in events] == list(range(200))


def test_eof_reports_and_resets() -> None:
    parser = ModbusParser(FLOW)
    parser.receive(C2S, FC3_REQ[:9], TS)
    events = parser.eof(C2S, TS)
    check(events[0], ModbusAnomalyEvent, kind=ModbusAnomaly.TRUNCATED, tid=3, unit=1, fc=3)
    assert parser.buffered(C2S) == 0 and parser.eof(C2S, TS) == []


def test_constructor_limits() -> None:
    with pytest.raises(ValueError):
        ModbusParser(FLOW, max_buffer=100)
    with pytest.raises(ValueError):
        ModbusParser(FLOW, max_outstanding=0)


# event_fields ----------------------------------------------------------------------------


def test_event_fields_request_and_response() -> None:
    request, response = feed([(C2S, FC16_REQ), (S2C, FC16_RSP)])
    fields = event_fields(request)
    assert fields["type"] == "request" and fields["proto"] == "modbus"
    assert (fields["src"], fields["sport"], fields["dst"], fields["dport"]) == (
        "192.0.2.10", 49152, "192.0.2.20", 502)
    assert fields["values"] == [10, 258] and fields["anomaly"] is None
    fields = event_fields(response)
    assert fields["type"] == "response" and fields["src"] == "192.0.2.20"
    assert fields["latency"] == 0.0 and fields["unsolicited"] is False
    assert fields["address"] == 1 and fields["quantity"] == 2
    json.dumps(fields)


def test_event_fields_device_id_and_anomaly() -> None:
    response = feed([(C2S, FC43_14_REQ), (S2C, FC43_14_RSP)])[1]
    fields = event_fields(response)
    assert fields["objects"] == {"VendorName": "Acme", "ProductCode": "PLC-1",
                                 "MajorMinorRevision": "V1.0"}
    anomaly = _anomalies(scenario_tid_reuse())[0]
    fields = event_fields(anomaly)
    assert fields["type"] == "anomaly" and fields["anomaly"] == "TID_REUSE"
    assert fields["tid"] == 3 and fields["detail"]


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_event_fields_are_json_ready(name: str) -> None:
    for event in feed(PAIRS[name][0]):
        fields = event_fields(event)
        json.dumps(fields)
        assert list(fields)[:15] == [
            "ts", "proto", "type", "src", "sport", "dst", "dport", "tid", "unit", "fc",
            "exception", "sub", "address", "quantity", "anomaly"]


def test_reused_tid_requests_pair_in_order() -> None:
    first = FC6_REQ
    second = adu(6, 1, bytes([0x06, 0x00, 0x02, 0x00, 0x07]))  # fc 6, same tid: address 2 = 7
    parser = ModbusParser(FLOW)
    events = parser.receive(C2S, first + second, 1.0)
    assert kinds(events) == [ModbusAnomaly.TID_REUSE]
    responses = parser.receive(S2C, first + second, 2.0)
    assert kinds(responses) == []
    assert [(r.address, r.unsolicited) for r in responses_only(responses)] == [
        (1, False), (2, False)]
    assert parser.outstanding == 0


def test_unanswered_requests_expire() -> None:
    parser = ModbusParser(FLOW, max_outstanding=20, request_timeout=100.0)
    for tid in range(20):
        parser.receive(C2S, retid(FC3_REQ, tid), float(tid))
    assert parser.outstanding == 20
    events = parser.receive(C2S, retid(FC3_REQ, 100), 115.0)
    assert kinds(events) == [] and parser.outstanding == 6  # tids 15..19 and 100
    response = parser.receive(S2C, retid(FC3_RSP, 100), 116.0)[0]
    assert isinstance(response, ModbusResponse)
    assert not response.unsolicited


def test_resync_accepts_an_exception_to_an_unknown_function() -> None:
    # Zeek fuzz-72.pcap frame 5, after a gap: tid 0000 | pid 0000 | length 0003 | unit 01
    # | fc a0 (= 0x80 | 32: fc 32 is no Modbus function) | exception 01 ILLEGAL FUNCTION.
    # A server answers a function it does not implement exactly so; tshark shows
    # "Unknown function (32). Exception returned".
    adu = bytes.fromhex("00 00 00 00 00 03 01 a0 01")
    parser = ModbusParser(FLOW)
    events = parser.gap(S2C, 9, TS) + parser.receive(S2C, adu, TS)
    assert [e.detail for e in _anomalies(events)] == ["9 bytes lost", "skipped 0 bytes"]
    (response,) = messages_only(events)
    assert (response.fc, response.exception) == (32, 1)


def test_resync_rejects_an_unknown_exception_with_a_length_other_than_3() -> None:
    # Same header with length 0004 (unit + fc + 2 bytes): an exception ADU is always
    # unit + fc + code, so for an undefined function this is no plausible header and
    # the scan moves on to the real ADU after it.
    junk = bytes.fromhex("00 00 00 00 00 04 01 a0 01 02")
    adu = bytes.fromhex("00 07 00 00 00 03 01 83 02")  # exception 02 to fc 3
    parser = ModbusParser(FLOW)
    parser.gap(S2C, 1, TS)
    events = parser.receive(S2C, junk + adu, TS)
    assert [e.detail for e in _anomalies(events)] == [f"skipped {len(junk)} bytes"]
    assert [(e.tid, e.fc, e.exception) for e in messages_only(events)] == [(7, 3, 2)]
