"""Cross-check: ADUs built by pymodbus's own message classes and socket framer."""

from __future__ import annotations

from typing import Any, TypedDict

import pytest
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu import bit_message as bits
from pymodbus.pdu import diag_message as diag
from pymodbus.pdu import file_message as files
from pymodbus.pdu import mei_message as mei
from pymodbus.pdu import other_message as other
from pymodbus.pdu import register_message as regs

from mamori.parsers.modbus import (
    Diagnostics,
    MaskWriteRegister,
    ModbusAnomalyEvent,
    ModbusParser,
    ModbusRequest,
    ModbusResponse,
    ReadBitsResponse,
    ReadDeviceIdRequest,
    ReadDeviceIdResponse,
    ReadFifoQueueResponse,
    ReadRegistersResponse,
    ReadWriteMultipleRequest,
    ReportServerIdResponse,
    WriteFileRecord,
    WriteMultipleCoilsRequest,
    WriteMultipleRegistersRequest,
    WriteSingleCoil,
    WriteSingleRegister,
)
from mamori.parsers.stream import Direction, FlowId, Transport

FLOW = FlowId(Transport.TCP, "198.51.100.1", 50000, "198.51.100.2", 502)
FRAMER = FramerSocket(DecodePDU(False))


def frame(message: ModbusPDU) -> bytes:
    return bytes(FRAMER.buildFrame(message))


def exchange(request: ModbusPDU, response: ModbusPDU) -> tuple[ModbusRequest, ModbusResponse]:
    parser = ModbusParser(FLOW)
    events: list[Any] = parser.receive(Direction.TO_SERVER, frame(request), 1.0)
    events += parser.receive(Direction.TO_CLIENT, frame(response), 2.0)
    assert [e for e in events if isinstance(e, ModbusAnomalyEvent)] == []
    req, rsp = events
    assert isinstance(req, ModbusRequest) and isinstance(rsp, ModbusResponse)
    assert (req.tid, req.unit) == (rsp.tid, rsp.unit) == (7, 9)
    assert rsp.latency == 1.0 and not rsp.unsolicited
    return req, rsp


class Ids(TypedDict):
    """The MBAP unit and transaction id every message here carries (keywords of pymodbus)."""

    dev_id: int
    transaction_id: int


IDS: Ids = {"dev_id": 9, "transaction_id": 7}


def test_read_coils_and_inputs() -> None:
    values = [True, False, True, True, False, False, True, True, True, False]
    for request_cls, response_cls, fc in (
        (bits.ReadCoilsRequest, bits.ReadCoilsResponse, 1),
        (bits.ReadDiscreteInputsRequest, bits.ReadDiscreteInputsResponse, 2),
    ):
        req, rsp = exchange(request_cls(address=19, count=10, **IDS),
                            response_cls(bits=values, **IDS))
        assert (req.fc, req.address, req.quantity) == (fc, 19, 10)
        assert (rsp.fc, rsp.address, rsp.quantity) == (fc, 19, 10)
        assert isinstance(rsp.pdu, ReadBitsResponse)
        assert rsp.pdu.values == tuple(int(v) for v in values)


def test_read_registers() -> None:
    for request_cls, response_cls, fc in (
        (regs.ReadHoldingRegistersRequest, regs.ReadHoldingRegistersResponse, 3),
        (regs.ReadInputRegistersRequest, regs.ReadInputRegistersResponse, 4),
    ):
        req, rsp = exchange(request_cls(address=107, count=3, **IDS),
                            response_cls(registers=[555, 0, 65535], **IDS))
        assert (req.fc, req.address, req.quantity) == (fc, 107, 3)
        assert isinstance(rsp.pdu, ReadRegistersResponse)
        assert rsp.pdu.values == (555, 0, 65535) and rsp.pdu.byte_count == 6


def test_write_single() -> None:
    req, rsp = exchange(bits.WriteSingleCoilRequest(address=172, bits=[True], **IDS),
                        bits.WriteSingleCoilResponse(address=172, bits=[True], **IDS))
    assert isinstance(req.pdu, WriteSingleCoil)
    assert (req.fc, req.address, req.pdu.value, req.pdu.state) == (5, 172, 0xFF00, True)
    assert rsp.pdu == req.pdu
    req, rsp = exchange(regs.WriteSingleRegisterRequest(address=1, registers=[3], **IDS),
                        regs.WriteSingleRegisterResponse(address=1, registers=[3], **IDS))
    assert isinstance(req.pdu, WriteSingleRegister)
    assert (req.fc, req.address, req.pdu.value) == (6, 1, 3) and rsp.pdu == req.pdu


def test_write_multiple() -> None:
    values = [True, False, True, True, False, False, True, True, True, False]
    req, rsp = exchange(bits.WriteMultipleCoilsRequest(address=19, bits=values, **IDS),
                        bits.WriteMultipleCoilsResponse(address=19, count=10, **IDS))
    assert isinstance(req.pdu, WriteMultipleCoilsRequest)
    assert (req.fc, req.address, req.quantity, req.pdu.byte_count) == (15, 19, 10, 2)
    assert req.pdu.values == tuple(int(v) for v in values)
    assert (rsp.address, rsp.quantity) == (19, 10)
    req, rsp = exchange(
        regs.WriteMultipleRegistersRequest(address=1, registers=[10, 258], **IDS),
        regs.WriteMultipleRegistersResponse(address=1, count=2, **IDS),
    )
    assert isinstance(req.pdu, WriteMultipleRegistersRequest)
    assert (req.fc, req.address, req.quantity, req.pdu.values) == (16, 1, 2, (10, 258))
    assert (rsp.address, rsp.quantity) == (1, 2)


@pytest.mark.parametrize(
    ("request_cls", "response_cls", "sub"),
    [
        (diag.ReturnQueryDataRequest, diag.ReturnQueryDataResponse, 0x00),
        (diag.RestartCommunicationsOptionRequest, diag.RestartCommunicationsOptionResponse, 0x01),
        (diag.ReturnDiagnosticRegisterRequest, diag.ReturnDiagnosticRegisterResponse, 0x02),
        (diag.ChangeAsciiInputDelimiterRequest, diag.ChangeAsciiInputDelimiterResponse, 0x03),
        (diag.ClearCountersRequest, diag.ClearCountersResponse, 0x0A),
        (diag.ReturnBusMessageCountRequest, diag.ReturnBusMessageCountResponse, 0x0B),
        (diag.ReturnDeviceBusyCountRequest, diag.ReturnDeviceBusyCountResponse, 0x11),
        (diag.ReturnIopOverrunCountRequest, diag.ReturnIopOverrunCountResponse, 0x13),
        (diag.ClearOverrunCountRequest, diag.ClearOverrunCountResponse, 0x14),
    ],
)
def test_diagnostics(request_cls: Any, response_cls: Any, sub: int) -> None:
    req, rsp = exchange(request_cls(**IDS), response_cls(**IDS))
    assert (req.fc, req.sub, rsp.fc, rsp.sub) == (8, sub, 8, sub)
    assert isinstance(req.pdu, Diagnostics)
    assert req.pdu.name is not None


def test_force_listen_only_request() -> None:
    parser = ModbusParser(FLOW)
    (req,) = parser.receive(Direction.TO_SERVER, frame(diag.ForceListenOnlyModeRequest(**IDS)), 1)
    assert isinstance(req, ModbusRequest) and isinstance(req.pdu, Diagnostics)
    assert (req.fc, req.sub, req.pdu.name) == (8, 4, "force_listen_only_mode")


def test_report_server_id() -> None:
    req, rsp = exchange(other.ReportDeviceIdRequest(**IDS),
                        other.ReportDeviceIdResponse(identifier=b"\x42", status=True, **IDS))
    assert req.fc == 17
    assert isinstance(rsp.pdu, ReportServerIdResponse)
    assert (rsp.pdu.server_id, rsp.pdu.run_indicator, rsp.pdu.byte_count) == (0x42, 0xFF, 2)


def test_mask_write() -> None:
    req, rsp = exchange(regs.MaskWriteRegisterRequest(4, 0xF2, 0x25, **IDS),
                        regs.MaskWriteRegisterResponse(4, 0xF2, 0x25, **IDS))
    assert isinstance(req.pdu, MaskWriteRegister)
    assert (req.fc, req.address, req.pdu.and_mask, req.pdu.or_mask) == (22, 4, 0xF2, 0x25)
    assert rsp.pdu == req.pdu


def test_read_write_multiple() -> None:
    req, rsp = exchange(
        regs.ReadWriteMultipleRegistersRequest(
            read_address=3, read_count=6, write_address=14, write_registers=[255, 255, 255], **IDS
        ),
        regs.ReadWriteMultipleRegistersResponse(registers=[1, 2, 3, 4, 5, 6], **IDS),
    )
    assert (req.fc, req.address, req.quantity) == (23, 3, 6)
    assert isinstance(req.pdu, ReadWriteMultipleRequest)
    assert isinstance(rsp.pdu, ReadRegistersResponse)
    assert (req.pdu.write_address, req.pdu.write_quantity, req.pdu.values) == (14, 3, (255,) * 3)
    assert rsp.pdu.values == (1, 2, 3, 4, 5, 6)


def test_read_fifo_queue() -> None:
    req, rsp = exchange(files.ReadFifoQueueRequest(address=1246, **IDS),
                        files.ReadFifoQueueResponse(values=[440, 4740], **IDS))
    assert (req.fc, req.address) == (24, 1246)
    assert isinstance(rsp.pdu, ReadFifoQueueResponse)
    assert (rsp.pdu.fifo_count, rsp.pdu.values) == (2, (440, 4740))


def test_file_records() -> None:
    record = files.FileRecord(file_number=4, record_number=7, record_data=b"\x06\xaf\x04\xbe")
    req, rsp = exchange(files.WriteFileRecordRequest(records=[record], **IDS),
                        files.WriteFileRecordResponse(records=[record], **IDS))
    assert isinstance(req.pdu, WriteFileRecord)
    (written,) = req.pdu.records
    assert (written.file_number, written.record_number, written.values) == (4, 7, (0x06AF, 0x04BE))
    assert rsp.pdu == req.pdu


def test_read_device_identification() -> None:
    information = {0: b"Acme", 1: b"PLC-1", 2: b"V1.0"}
    req, rsp = exchange(mei.ReadDeviceInformationRequest(read_code=1, object_id=0, **IDS),
                        mei.ReadDeviceInformationResponse(read_code=1, information=information,
                                                          **IDS))
    assert isinstance(req.pdu, ReadDeviceIdRequest)
    assert isinstance(rsp.pdu, ReadDeviceIdResponse)
    assert (req.fc, req.sub, req.pdu.read_code, req.pdu.object_id) == (43, 14, 1, 0)
    assert {o.name: o.value for o in rsp.pdu.objects} == {
        "VendorName": "Acme", "ProductCode": "PLC-1", "MajorMinorRevision": "V1.0"}
    assert rsp.pdu.number_of_objects == 3


def test_exception_response() -> None:
    _req, rsp = exchange(regs.ReadHoldingRegistersRequest(address=1, count=1, **IDS),
                        ExceptionResponse(3, 2, device_id=9, transaction=7))
    assert (rsp.fc, rsp.exception, rsp.address) == (3, 2, 1)
