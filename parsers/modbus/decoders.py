"""Function-code decoders: one per function code and direction, in a registry.

A decoder takes the PDU bytes after the function code and returns a
:data:`Decoded` tuple ``(pdu, sub, address, quantity, problems)``. A response
decoder also gets the paired request's PDU (or ``None``) so it can trim coil
bits to the requested quantity and report a response that does not fit its
request (``VALUE_MISMATCH``). Decoders never raise on wire input: a PDU too
short to decode becomes a :class:`RawPdu` with what could be read lifted
onto ``address``/``quantity``, plus a problem. ``problems`` is a tuple of
``(ModbusAnomaly, detail)``; the empty tuple on the common path.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Final

from mamori.parsers.modbus.events import ModbusAnomaly
from mamori.parsers.modbus.pdu import (
    CommEventCounterResponse,
    CommEventLogResponse,
    DeviceIdObject,
    Diagnostics,
    EmptyPdu,
    EncapsulatedInterface,
    FileRecord,
    FileRecordData,
    FileSubRequest,
    MaskWriteRegister,
    Pdu,
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
    WriteFileRecord,
    WriteMultipleCoilsRequest,
    WriteMultipleRegistersRequest,
    WriteMultipleResponse,
    WriteSingleCoil,
    WriteSingleRegister,
)
from mamori.parsers.modbus.tables import (
    COIL_OFF,
    COIL_ON,
    DIAGNOSTIC_FREE_DATA,
    DIAGNOSTIC_SUB_FUNCTIONS,
    FIFO_MAX_COUNT,
    FILE_REFERENCE_TYPE,
    MEI_READ_DEVICE_ID,
    QUANTITY_LIMITS,
    READ_WRITE_LIMITS,
)

Problem = tuple[ModbusAnomaly, str]
Problems = tuple[Problem, ...]
Decoded = tuple[Pdu, int | None, int | None, int | None, Problems]
RequestDecoder = Callable[[bytes], Decoded]
ResponseDecoder = Callable[[bytes, Pdu | None], Decoded]

_MALFORMED: Final = ModbusAnomaly.MALFORMED_PDU
_BYTE_COUNT: Final = ModbusAnomaly.BYTE_COUNT_MISMATCH
_MISMATCH: Final = ModbusAnomaly.VALUE_MISMATCH
_QUANTITY: Final = ModbusAnomaly.INVALID_QUANTITY
_OK: Final[Problems] = ()
_EMPTY: Final = EmptyPdu()

_H: Final = struct.Struct(">H")
_HH: Final = struct.Struct(">HH")
_HHH: Final = struct.Struct(">HHH")
_HHB: Final = struct.Struct(">HHB")
_HHHHB: Final = struct.Struct(">HHHHB")
_BHHH: Final = struct.Struct(">BHHH")
_DEVICE_ID_HEADER: Final = struct.Struct(">BBBBBB")
_WORDS: Final = tuple(struct.Struct(f">{n}H") for n in range(128))
_BITS: Final = tuple(tuple((byte >> i) & 1 for i in range(8)) for byte in range(256))


def _words(data: bytes, offset: int, count: int) -> tuple[int, ...]:
    if count < 128:
        return _WORDS[count].unpack_from(data, offset)
    return struct.unpack_from(f">{count}H", data, offset)


def _bits(data: bytes, count: int | None) -> tuple[int, ...]:
    """Coil/input bits, LSB of the first byte first, cut to ``count`` when given."""
    bits = tuple(chain.from_iterable(map(_BITS.__getitem__, data)))
    return bits if count is None else bits[:count]


def _word_at(data: bytes, offset: int) -> int | None:
    return _H.unpack_from(data, offset)[0] if len(data) >= offset + 2 else None


def _short(what: str, got: int, need: int) -> Problems:
    return ((_MALFORMED, f"{what}: {got} data bytes, need {need}"),)


def _fixed(st: struct.Struct, data: bytes, what: str) -> tuple[tuple[int, ...], Problems]:
    """Unpack a fixed layout; the caller has checked ``len(data) >= st.size``."""
    extra = len(data) - st.size
    if extra:
        return st.unpack_from(data), ((_MALFORMED, f"{what}: {extra} trailing bytes"),)
    return st.unpack(data), _OK


def _quantity(what: str, quantity: int, limits: tuple[int, int]) -> Problems:
    low, high = limits
    if low <= quantity <= high:
        return _OK
    return ((_QUANTITY, f"{what} quantity {quantity} outside {low}..{high}"),)


def _empty_request(data: bytes) -> Decoded:
    if data:
        return _EMPTY, None, None, None, ((_MALFORMED, f"{len(data)} unexpected data bytes"),)
    return _EMPTY, None, None, None, _OK


def _raw_partial(data: bytes, what: str, need: int) -> Decoded:
    """A fixed-layout PDU that is too short: keep the bytes, lift what can be read."""
    return RawPdu(data), None, _word_at(data, 0), _word_at(data, 2), _short(what, len(data), need)


# FC 1-4 ---------------------------------------------------------------------


def _read_request(fc: int) -> RequestDecoder:
    limits = QUANTITY_LIMITS[fc]
    low, high = limits

    def decode(data: bytes) -> Decoded:
        if len(data) == 4:
            address, quantity = _HH.unpack(data)
            if low <= quantity <= high:
                return ReadRequest(address, quantity), None, address, quantity, _OK
            return (
                ReadRequest(address, quantity), None, address, quantity,
                _quantity("read", quantity, limits),
            )
        if len(data) < 4:
            return _raw_partial(data, "read request", 4)
        (address, quantity), problems = _fixed(_HH, data, "read request")
        problems += _quantity("read", quantity, limits)
        return ReadRequest(address, quantity), None, address, quantity, problems

    return decode


def _read_bits_response(data: bytes, request: Pdu | None) -> Decoded:
    if not data:
        return RawPdu(data), None, None, None, _short("read bits response", 0, 1)
    byte_count = data[0]
    payload = data[1 : 1 + byte_count]
    problems: Problems = _OK
    if byte_count != len(data) - 1:
        problems = ((_BYTE_COUNT, f"byte count {byte_count}, {len(data) - 1} bytes follow"),)
    quantity = request.quantity if type(request) is ReadRequest else None
    if quantity is not None and byte_count != (quantity + 7) >> 3:
        problems += ((_MISMATCH, f"byte count {byte_count} for {quantity} bits requested"),)
    if quantity is not None and quantity > 8 * len(payload):
        quantity = None
    return ReadBitsResponse(byte_count, _bits(payload, quantity)), None, None, None, problems


def _registers(data: bytes, quantity: int | None) -> Decoded:
    """Byte count + registers (FC 3, 4, 23 responses); ``quantity`` from the request."""
    if not data:
        return RawPdu(data), None, None, None, _short("read registers response", 0, 1)
    byte_count = data[0]
    available = len(data) - 1
    if byte_count == available and not byte_count & 1:
        values = _words(data, 1, byte_count >> 1)
        if quantity is None or quantity << 1 == byte_count:
            return ReadRegistersResponse(byte_count, values), None, None, None, _OK
        problems: Problems = ((_MISMATCH, f"byte count {byte_count} for {quantity} registers"),)
        return ReadRegistersResponse(byte_count, values), None, None, None, problems
    problems = ()
    if byte_count != available:
        problems += ((_BYTE_COUNT, f"byte count {byte_count}, {available} bytes follow"),)
    if byte_count & 1:
        problems += ((_BYTE_COUNT, f"odd byte count {byte_count}"),)
    if quantity is not None and quantity << 1 != byte_count:
        problems += ((_MISMATCH, f"byte count {byte_count} for {quantity} registers"),)
    values = _words(data, 1, min(byte_count, available) >> 1)
    return ReadRegistersResponse(byte_count, values), None, None, None, problems


def _read_registers_response(data: bytes, request: Pdu | None) -> Decoded:
    return _registers(data, request.quantity if type(request) is ReadRequest else None)


# FC 5, 6, 22 (request and response share the layout; the response echoes) -----


def _write_single_coil(data: bytes) -> Decoded:
    if len(data) < 4:
        return _raw_partial(data, "write single coil", 4)
    (address, value), problems = _fixed(_HH, data, "write single coil")
    if value != COIL_ON and value != COIL_OFF:
        problems += ((ModbusAnomaly.INVALID_COIL_VALUE, f"coil value 0x{value:04X}"),)
    return WriteSingleCoil(address, value), None, address, 1, problems


def _write_single_register(data: bytes) -> Decoded:
    if len(data) < 4:
        return _raw_partial(data, "write single register", 4)
    (address, value), problems = _fixed(_HH, data, "write single register")
    return WriteSingleRegister(address, value), None, address, 1, problems


def _mask_write(data: bytes) -> Decoded:
    if len(data) < 6:
        return _raw_partial(data, "mask write register", 6)
    (address, and_mask, or_mask), problems = _fixed(_HHH, data, "mask write register")
    return MaskWriteRegister(address, and_mask, or_mask), None, address, 1, problems


def _echo(decode: RequestDecoder) -> ResponseDecoder:
    """A response that repeats its request: decode it alike, then compare."""

    def decode_response(data: bytes, request: Pdu | None) -> Decoded:
        pdu, sub, address, quantity, problems = decode(data)
        # Compared as objects: between two ``Pdu`` values mypyc compiles ``!=`` to an
        # identity test (it takes Pdu, a Python class with no __eq__ of its own, for
        # one whose subclasses add none), which would miss the dataclasses' __eq__.
        echoed: object = pdu
        if request is not None and echoed != request and type(pdu) is not RawPdu:
            problems += ((_MISMATCH, f"echo {pdu} differs from request {request}"),)
        return pdu, sub, address, quantity, problems

    return decode_response


# FC 15, 16 ----------------------------------------------------------------------


def _write_multiple_coils(data: bytes) -> Decoded:
    if len(data) < 5:
        return _raw_partial(data, "write multiple coils", 5)
    address, quantity, byte_count = _HHB.unpack_from(data)
    payload = data[5 : 5 + byte_count]
    problems = _quantity("write coils", quantity, QUANTITY_LIMITS[15])
    if byte_count != len(data) - 5:
        problems += ((_BYTE_COUNT, f"byte count {byte_count}, {len(data) - 5} bytes follow"),)
    if byte_count != (quantity + 7) >> 3:
        problems += ((_BYTE_COUNT, f"byte count {byte_count} for {quantity} coils"),)
    values = _bits(payload, quantity if quantity <= 8 * len(payload) else None)
    pdu = WriteMultipleCoilsRequest(address, quantity, byte_count, values)
    return pdu, None, address, quantity, problems


def _write_multiple_registers(data: bytes) -> Decoded:
    if len(data) < 5:
        return _raw_partial(data, "write multiple registers", 5)
    address, quantity, byte_count = _HHB.unpack_from(data)
    available = len(data) - 5
    problems = _quantity("write registers", quantity, QUANTITY_LIMITS[16])
    if byte_count != available:
        problems += ((_BYTE_COUNT, f"byte count {byte_count}, {available} bytes follow"),)
    if byte_count != quantity << 1:
        problems += ((_BYTE_COUNT, f"byte count {byte_count} for {quantity} registers"),)
    values = _words(data, 5, min(byte_count, available) >> 1)
    pdu = WriteMultipleRegistersRequest(address, quantity, byte_count, values)
    return pdu, None, address, quantity, problems


def _write_multiple_response(data: bytes, request: Pdu | None) -> Decoded:
    if len(data) < 4:
        return _raw_partial(data, "write multiple response", 4)
    (address, quantity), problems = _fixed(_HH, data, "write multiple response")
    if isinstance(request, WriteMultipleCoilsRequest | WriteMultipleRegistersRequest) and (
        request.address != address or request.quantity != quantity
    ):
        problems += (
            (
                _MISMATCH,
                f"echo address {address} quantity {quantity}, "
                f"request address {request.address} quantity {request.quantity}",
            ),
        )
    return WriteMultipleResponse(address, quantity), None, address, quantity, problems


# FC 7, 8, 11, 12, 17 ------------------------------------------------------------


def _exception_status_response(data: bytes, request: Pdu | None) -> Decoded:
    if not data:
        return RawPdu(data), None, None, None, _short("read exception status", 0, 1)
    problems = ((_MALFORMED, f"{len(data) - 1} trailing bytes"),) if len(data) > 1 else _OK
    return ReadExceptionStatusResponse(data[0]), None, None, None, problems


def _diagnostics(data: bytes) -> Decoded:
    if len(data) < 2:
        return RawPdu(data), None, None, None, _short("diagnostics", len(data), 2)
    sub = _H.unpack_from(data)[0]
    rest = data[2:]
    problems: Problems = _OK
    if sub not in DIAGNOSTIC_SUB_FUNCTIONS:
        problems = ((ModbusAnomaly.INVALID_SUB_FUNCTION, f"sub-function 0x{sub:04X}"),)
    elif sub not in DIAGNOSTIC_FREE_DATA and len(rest) != 2:
        problems = ((_MALFORMED, f"sub-function 0x{sub:04X} with {len(rest)} data bytes"),)
    return Diagnostics(sub, rest), sub, None, None, problems


def _diagnostics_response(data: bytes, request: Pdu | None) -> Decoded:
    pdu, sub, address, quantity, problems = _diagnostics(data)
    if type(request) is Diagnostics and type(pdu) is Diagnostics:
        if request.sub_function != pdu.sub_function:
            problems += ((_MISMATCH, f"sub-function 0x{pdu.sub_function:04X} answers "
                                     f"0x{request.sub_function:04X}"),)
        elif pdu.sub_function == 0 and pdu.data != request.data:
            problems += ((_MISMATCH, "return query data does not echo the request"),)
    return pdu, sub, address, quantity, problems


def _comm_event_counter_response(data: bytes, request: Pdu | None) -> Decoded:
    if len(data) < 4:
        return RawPdu(data), None, None, None, _short("comm event counter", len(data), 4)
    (status, count), problems = _fixed(_HH, data, "comm event counter")
    return CommEventCounterResponse(status, count), None, None, None, problems


def _comm_event_log_response(data: bytes, request: Pdu | None) -> Decoded:
    if len(data) < 7:
        return RawPdu(data), None, None, None, _short("comm event log", len(data), 7)
    byte_count = data[0]
    status, event_count, message_count = _HHH.unpack_from(data, 1)
    problems: Problems = _OK
    if byte_count != len(data) - 1:
        problems = ((_BYTE_COUNT, f"byte count {byte_count}, {len(data) - 1} bytes follow"),)
    pdu = CommEventLogResponse(byte_count, status, event_count, message_count, data[7:])
    return pdu, None, None, None, problems


def _report_server_id_response(data: bytes, request: Pdu | None) -> Decoded:
    if not data:
        return RawPdu(data), None, None, None, _short("report server id", 0, 1)
    byte_count = data[0]
    payload = data[1:]
    problems: Problems = _OK
    if byte_count != len(payload):
        problems = ((_BYTE_COUNT, f"byte count {byte_count}, {len(payload)} bytes follow"),)
    server_id = payload[0] if payload else None
    run_indicator = payload[1] if len(payload) > 1 else None
    pdu = ReportServerIdResponse(byte_count, server_id, run_indicator, payload[2:], payload)
    return pdu, None, None, None, problems


# FC 20, 21 (file records) --------------------------------------------------------


def _byte_count_prefix(data: bytes) -> Problems:
    if data[0] != len(data) - 1:
        return ((_BYTE_COUNT, f"byte count {data[0]}, {len(data) - 1} bytes follow"),)
    return _OK


def _reference_type(reference_type: int) -> Problems:
    if reference_type == FILE_REFERENCE_TYPE:
        return _OK
    return ((_MALFORMED, f"file reference type {reference_type}, expected 6"),)


def _read_file_request(data: bytes) -> Decoded:
    if not data:
        return RawPdu(data), None, None, None, _short("read file record", 0, 1)
    problems = _byte_count_prefix(data)
    body_length = len(data) - 1
    if body_length % 7:
        problems += ((_MALFORMED, f"{body_length % 7} bytes after the last sub-request"),)
    requests = []
    for offset in range(1, 1 + body_length - body_length % 7, 7):
        sub_request = FileSubRequest(*_BHHH.unpack_from(data, offset))
        problems += _reference_type(sub_request.reference_type)
        requests.append(sub_request)
    return ReadFileRecordRequest(data[0], tuple(requests)), None, None, None, problems


def _read_file_response(data: bytes, request: Pdu | None) -> Decoded:
    if not data:
        return RawPdu(data), None, None, None, _short("read file record response", 0, 1)
    problems = _byte_count_prefix(data)
    records = []
    offset, end = 1, len(data)
    while offset < end:
        length = data[offset]
        if length < 1 or offset + 1 + length > end:
            problems += ((_MALFORMED, f"sub-response length {length} at offset {offset}"),)
            break
        reference_type = data[offset + 1]
        problems += _reference_type(reference_type)
        if not length & 1:
            problems += ((_MALFORMED, f"odd record data length {length - 1}"),)
        values = _words(data, offset + 2, (length - 1) >> 1)
        records.append(FileRecordData(reference_type, values))
        offset += 1 + length
    if type(request) is ReadFileRecordRequest:
        asked = [r.record_length for r in request.requests]
        got = [len(r.values) for r in records]
        if asked != got:
            problems += ((_MISMATCH, f"record lengths {got} for requested {asked}"),)
    return ReadFileRecordResponse(data[0], tuple(records)), None, None, None, problems


def _write_file(data: bytes) -> Decoded:
    if not data:
        return RawPdu(data), None, None, None, _short("write file record", 0, 1)
    problems = _byte_count_prefix(data)
    records = []
    offset, end = 1, len(data)
    while offset < end:
        if offset + 7 > end:
            problems += ((_MALFORMED, f"{end - offset} bytes after the last sub-request"),)
            break
        reference_type, file_number, record_number, length = _BHHH.unpack_from(data, offset)
        problems += _reference_type(reference_type)
        offset += 7
        count = length
        if offset + 2 * length > end:
            count = (end - offset) >> 1
            problems += ((_MALFORMED, f"record length {length}, {count} registers present"),)
        values = _words(data, offset, count)
        records.append(FileRecord(reference_type, file_number, record_number, length, values))
        offset += 2 * length
    return WriteFileRecord(data[0], tuple(records)), None, None, None, problems


# FC 23, 24 ------------------------------------------------------------------------


def _read_write_request(data: bytes) -> Decoded:
    if len(data) < 9:
        return _raw_partial(data, "read/write multiple", 9)
    read_address, read_quantity, write_address, write_quantity, byte_count = _HHHHB.unpack_from(
        data
    )
    available = len(data) - 9
    problems = _quantity("read", read_quantity, READ_WRITE_LIMITS[0])
    problems += _quantity("write", write_quantity, READ_WRITE_LIMITS[1])
    if byte_count != available:
        problems += ((_BYTE_COUNT, f"byte count {byte_count}, {available} bytes follow"),)
    if byte_count != write_quantity << 1:
        problems += ((_BYTE_COUNT, f"byte count {byte_count} for {write_quantity} registers"),)
    values = _words(data, 9, min(byte_count, available) >> 1)
    pdu = ReadWriteMultipleRequest(
        read_address, read_quantity, write_address, write_quantity, byte_count, values
    )
    return pdu, None, read_address, read_quantity, problems


def _read_write_response(data: bytes, request: Pdu | None) -> Decoded:
    quantity = request.read_quantity if type(request) is ReadWriteMultipleRequest else None
    return _registers(data, quantity)


def _fifo_request(data: bytes) -> Decoded:
    if len(data) < 2:
        return _raw_partial(data, "read fifo queue", 2)
    (address,), problems = _fixed(_H, data, "read fifo queue")
    return ReadFifoQueueRequest(address), None, address, None, problems


def _fifo_response(data: bytes, request: Pdu | None) -> Decoded:
    if len(data) < 4:
        return RawPdu(data), None, None, None, _short("read fifo queue response", len(data), 4)
    byte_count, fifo_count = _HH.unpack_from(data)
    problems: Problems = _OK
    if byte_count != len(data) - 2:
        problems += ((_BYTE_COUNT, f"byte count {byte_count}, {len(data) - 2} bytes follow"),)
    if byte_count != 2 + 2 * fifo_count:
        problems += ((_BYTE_COUNT, f"byte count {byte_count} for {fifo_count} registers"),)
    if fifo_count > FIFO_MAX_COUNT:
        problems += ((_QUANTITY, f"fifo count {fifo_count} over {FIFO_MAX_COUNT}"),)
    values = _words(data, 4, min(fifo_count, (len(data) - 4) >> 1))
    return ReadFifoQueueResponse(byte_count, fifo_count, values), None, None, None, problems


# FC 43 ------------------------------------------------------------------------------


def _mei_request(data: bytes) -> Decoded:
    if not data:
        return RawPdu(data), None, None, None, _short("encapsulated interface", 0, 1)
    mei = data[0]
    if mei != MEI_READ_DEVICE_ID:
        return EncapsulatedInterface(mei, data[1:]), mei, None, None, _OK
    if len(data) < 3:
        return RawPdu(data), mei, None, None, _short("read device id", len(data), 3)
    problems = ((_MALFORMED, f"{len(data) - 3} trailing bytes"),) if len(data) > 3 else _OK
    return ReadDeviceIdRequest(data[1], data[2]), mei, None, None, problems


def _device_objects(data: bytes, problems: Problems) -> tuple[list[DeviceIdObject], Problems]:
    objects = []
    offset, end = 6, len(data)
    while offset < end:
        if offset + 2 > end:
            problems += ((_MALFORMED, "truncated device id object header"),)
            break
        object_id, length = data[offset], data[offset + 1]
        value = data[offset + 2 : offset + 2 + length]
        if len(value) < length:
            problems += ((_MALFORMED, f"object 0x{object_id:02X} length {length} truncated"),)
        objects.append(DeviceIdObject(object_id, value.decode("utf-8", "backslashreplace")))
        offset += 2 + length
    return objects, problems


def _mei_response(data: bytes, request: Pdu | None) -> Decoded:
    if not data:
        return RawPdu(data), None, None, None, _short("encapsulated interface", 0, 1)
    mei = data[0]
    problems: Problems = _OK
    asked = (
        MEI_READ_DEVICE_ID if type(request) is ReadDeviceIdRequest
        else request.mei_type if type(request) is EncapsulatedInterface else None
    )
    if asked is not None and asked != mei:
        problems = ((_MISMATCH, f"MEI type {mei} answers MEI type {asked}"),)
    if mei != MEI_READ_DEVICE_ID:
        return EncapsulatedInterface(mei, data[1:]), mei, None, None, problems
    if len(data) < 6:
        return RawPdu(data), mei, None, None, problems + _short("read device id", len(data), 6)
    _, read_code, conformity, more, next_id, number = _DEVICE_ID_HEADER.unpack_from(data)
    objects, problems = _device_objects(data, problems)
    if len(objects) != number:
        problems += ((_MALFORMED, f"{number} objects announced, {len(objects)} present"),)
    if type(request) is ReadDeviceIdRequest and request.read_code != read_code:
        problems += ((_MISMATCH, f"read code {read_code} answers {request.read_code}"),)
    pdu = ReadDeviceIdResponse(read_code, conformity, more, next_id, number, tuple(objects))
    return pdu, mei, None, None, problems


# Registry ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FunctionDecoders:
    """The decoders of one function code."""

    request: RequestDecoder
    response: ResponseDecoder


def _no_request_data(response: ResponseDecoder) -> FunctionDecoders:
    return FunctionDecoders(_empty_request, response)


FUNCTION_DECODERS: Final[dict[int, FunctionDecoders]] = {
    1: FunctionDecoders(_read_request(1), _read_bits_response),
    2: FunctionDecoders(_read_request(2), _read_bits_response),
    3: FunctionDecoders(_read_request(3), _read_registers_response),
    4: FunctionDecoders(_read_request(4), _read_registers_response),
    5: FunctionDecoders(_write_single_coil, _echo(_write_single_coil)),
    6: FunctionDecoders(_write_single_register, _echo(_write_single_register)),
    7: _no_request_data(_exception_status_response),
    8: FunctionDecoders(_diagnostics, _diagnostics_response),
    11: _no_request_data(_comm_event_counter_response),
    12: _no_request_data(_comm_event_log_response),
    15: FunctionDecoders(_write_multiple_coils, _write_multiple_response),
    16: FunctionDecoders(_write_multiple_registers, _write_multiple_response),
    17: _no_request_data(_report_server_id_response),
    20: FunctionDecoders(_read_file_request, _read_file_response),
    21: FunctionDecoders(_write_file, _echo(_write_file)),
    22: FunctionDecoders(_mask_write, _echo(_mask_write)),
    23: FunctionDecoders(_read_write_request, _read_write_response),
    24: FunctionDecoders(_fifo_request, _fifo_response),
    43: FunctionDecoders(_mei_request, _mei_response),
}

#: Flat maps for the parser's hot path.
REQUEST_DECODERS: Final[dict[int, RequestDecoder]] = {
    fc: d.request for fc, d in FUNCTION_DECODERS.items()
}
RESPONSE_DECODERS: Final[dict[int, ResponseDecoder]] = {
    fc: d.response for fc, d in FUNCTION_DECODERS.items()
}
