"""Decoded Modbus PDUs: one small frozen class per function-code layout.

The parser decodes every PDU eagerly (see :mod:`mamori.parsers.modbus.decoders`) and
puts the object on the event's ``pdu`` field. Classes that the request and
the response share on the wire (FC 5, 6, 8, 21, 22) are one class.

Wire layouts, after the function code byte (big-endian words)::

    FC 1-4 req     address(2) quantity(2)
    FC 1,2 rsp     byte_count(1) bits(byte_count)            LSB first
    FC 3,4,23 rsp  byte_count(1) registers(byte_count)
    FC 5,6 both    address(2) value(2)
    FC 15,16 req   address(2) quantity(2) byte_count(1) values(byte_count)
    FC 15,16 rsp   address(2) quantity(2)
    FC 7 rsp       status(1)
    FC 8 both      sub_function(2) data(N)
    FC 11 rsp      status(2) event_count(2)
    FC 12 rsp      byte_count(1) status(2) event_count(2) message_count(2) events(N)
    FC 17 rsp      byte_count(1) server_id(1) run_indicator(1) additional(N)
    FC 20 req      byte_count(1) {ref_type(1) file(2) record(2) length(2)}*
    FC 20 rsp      byte_count(1) {length(1) ref_type(1) registers(length-1)}*
    FC 21 both     byte_count(1) {ref_type(1) file(2) record(2) length(2) registers(2*length)}*
    FC 22 both     address(2) and_mask(2) or_mask(2)
    FC 23 req      read_address(2) read_qty(2) write_address(2) write_qty(2)
                   byte_count(1) registers(byte_count)
    FC 24 req      address(2)
    FC 24 rsp      byte_count(2) fifo_count(2) registers(2*fifo_count)
    FC 43 req      mei_type(1) ...   MEI 14: read_code(1) object_id(1)
    FC 43/14 rsp   mei_type(1) read_code(1) conformity(1) more_follows(1)
                   next_object_id(1) number_of_objects(1) {id(1) length(1) value(length)}*
    exception      exception_code(1)

FC 17: the standard leaves the server id length to the device; like
Wireshark we read one byte of server id and one of run indicator, and keep
the rest (and the whole payload in ``data``) for device-specific decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from mamori.parsers.fastinit import fast_init, python_class
from mamori.parsers.modbus.tables import (
    COIL_OFF,
    COIL_ON,
    DIAGNOSTIC_SUB_FUNCTIONS,
    EXCEPTION_NAMES,
    RESTART_CLEAR_LOG,
    device_id_object_name,
)


@python_class
class Pdu:
    """Base of every decoded PDU (for typing only); ``sensor`` derives one of its own.

    A Python class even when compiled: every PDU class is (``fast_init``)."""

    __slots__ = ()


@fast_init
@dataclass(frozen=True, slots=True)
class RawPdu(Pdu):
    """Bytes after the function code, undecoded: vendor codes, or too short to decode."""

    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)


@fast_init
@dataclass(frozen=True, slots=True)
class ExceptionPdu(Pdu):
    code: int

    @property
    def name(self) -> str | None:
        return EXCEPTION_NAMES.get(self.code)


@fast_init
@dataclass(frozen=True, slots=True)
class EmptyPdu(Pdu):
    """A request with no data (FC 7, 11, 12, 17)."""


@fast_init
@dataclass(frozen=True, slots=True)
class ReadRequest(Pdu):
    """FC 1-4 request."""

    address: int
    quantity: int


@fast_init
@dataclass(frozen=True, slots=True)
class ReadBitsResponse(Pdu):
    """FC 1, 2 response; ``values`` (0/1) trimmed to the requested quantity when paired."""

    byte_count: int
    values: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class ReadRegistersResponse(Pdu):
    """FC 3, 4, 23 response."""

    byte_count: int
    values: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class WriteSingleCoil(Pdu):
    """FC 5 request and response; ``value`` is the raw word (0xFF00 on, 0x0000 off)."""

    address: int
    value: int

    @property
    def state(self) -> bool | None:
        return True if self.value == COIL_ON else False if self.value == COIL_OFF else None


@fast_init
@dataclass(frozen=True, slots=True)
class WriteSingleRegister(Pdu):
    """FC 6 request and response."""

    address: int
    value: int


@fast_init
@dataclass(frozen=True, slots=True)
class WriteMultipleCoilsRequest(Pdu):
    """FC 15 request; ``values`` (0/1) trimmed to ``quantity``."""

    address: int
    quantity: int
    byte_count: int
    values: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class WriteMultipleRegistersRequest(Pdu):
    """FC 16 request."""

    address: int
    quantity: int
    byte_count: int
    values: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class WriteMultipleResponse(Pdu):
    """FC 15, 16 response."""

    address: int
    quantity: int


@fast_init
@dataclass(frozen=True, slots=True)
class ReadExceptionStatusResponse(Pdu):
    """FC 7 response."""

    status: int


@fast_init
@dataclass(frozen=True, slots=True)
class Diagnostics(Pdu):
    """FC 8 request and response."""

    sub_function: int
    data: bytes

    @property
    def name(self) -> str | None:
        return DIAGNOSTIC_SUB_FUNCTIONS.get(self.sub_function)

    @property
    def value(self) -> int | None:
        """The data word when the data field is one word."""
        return int.from_bytes(self.data, "big") if len(self.data) == 2 else None

    @property
    def clears_event_log(self) -> bool:
        """Restart communications with data 0xFF00."""
        return self.sub_function == 0x01 and self.value == RESTART_CLEAR_LOG


@fast_init
@dataclass(frozen=True, slots=True)
class CommEventCounterResponse(Pdu):
    """FC 11 response."""

    status: int
    event_count: int


@fast_init
@dataclass(frozen=True, slots=True)
class CommEventLogResponse(Pdu):
    """FC 12 response; ``events`` are the raw event bytes, most recent first."""

    byte_count: int
    status: int
    event_count: int
    message_count: int
    events: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class ReportServerIdResponse(Pdu):
    """FC 17 response; ``data`` is everything after the byte count."""

    byte_count: int
    server_id: int | None
    run_indicator: int | None
    additional: bytes
    data: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class FileSubRequest:
    """One sub-request of FC 20."""

    reference_type: int
    file_number: int
    record_number: int
    record_length: int


@fast_init
@dataclass(frozen=True, slots=True)
class FileRecordData:
    """One sub-response of FC 20."""

    reference_type: int
    values: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class FileRecord:
    """One sub-request of FC 21 (the response echoes it)."""

    reference_type: int
    file_number: int
    record_number: int
    record_length: int
    values: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class ReadFileRecordRequest(Pdu):
    byte_count: int
    requests: tuple[FileSubRequest, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class ReadFileRecordResponse(Pdu):
    byte_count: int
    records: tuple[FileRecordData, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class WriteFileRecord(Pdu):
    """FC 21 request and response."""

    byte_count: int
    records: tuple[FileRecord, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class MaskWriteRegister(Pdu):
    """FC 22 request and response.

    register = (current AND and_mask) OR (or_mask AND NOT and_mask)
    """

    address: int
    and_mask: int
    or_mask: int


@fast_init
@dataclass(frozen=True, slots=True)
class ReadWriteMultipleRequest(Pdu):
    """FC 23 request (the write happens before the read)."""

    read_address: int
    read_quantity: int
    write_address: int
    write_quantity: int
    byte_count: int
    values: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class ReadFifoQueueRequest(Pdu):
    """FC 24 request; ``address`` is the FIFO pointer address."""

    address: int


@fast_init
@dataclass(frozen=True, slots=True)
class ReadFifoQueueResponse(Pdu):
    byte_count: int
    fifo_count: int
    values: tuple[int, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class EncapsulatedInterface(Pdu):
    """FC 43 with MEI 13 (CANopen general reference) or an unknown MEI type, carried raw."""

    mei_type: int
    data: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class ReadDeviceIdRequest(Pdu):
    """FC 43 / MEI 14 request."""

    read_code: int
    object_id: int


@fast_init
@dataclass(frozen=True, slots=True)
class DeviceIdObject:
    """One device-identification object; ``value`` decoded as UTF-8 (invalid bytes escaped)."""

    object_id: int
    value: str

    @property
    def name(self) -> str:
        return device_id_object_name(self.object_id)


@fast_init
@dataclass(frozen=True, slots=True)
class ReadDeviceIdResponse(Pdu):
    """FC 43 / MEI 14 response."""

    read_code: int
    conformity_level: int
    more_follows: int
    next_object_id: int
    number_of_objects: int
    objects: tuple[DeviceIdObject, ...]
