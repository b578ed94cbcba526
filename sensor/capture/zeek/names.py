"""Zeek's and ICSNPP's names for codes, mapped back to the numbers Mamori's events carry.

Zeek logs names, not codes: ``func`` is ``READ_COILS`` (``Modbus::function_codes``),
an exception response is ``READ_COILS_EXCEPTION``, and a code Zeek has no name for is
``unknown-N`` with N the raw byte (exception bit included). DNP3 uses
``DNP3::function_codes`` (``COLD_RESTART``, ``unknown-112``). ICSNPP adds title-case
names (``Return Diagnostic Register``, ``Pulse On``, ``Class 0 Data``). Everything here
is data; ``None`` means "a name we do not know", and the mapper keeps the raw text.
"""

from __future__ import annotations

import re
from typing import Final

from mamori.parsers.dnp3.events import FUNCTION_NAMES as DNP3_FUNCTION_NAMES
from mamori.parsers.modbus.tables import (
    DIAGNOSTIC_SUB_FUNCTIONS,
    EXCEPTION_NAMES,
)
from mamori.parsers.modbus.tables import (
    FUNCTION_NAMES as MODBUS_FUNCTION_NAMES,
)

#: Zeek's Modbus::function_codes where the name differs from Mamori's snake_case name.
_ZEEK_MODBUS: Final[dict[str, int]] = {
    "READ_COILS": 1,
    "READ_DISCRETE_INPUTS": 2,
    "READ_HOLDING_REGISTERS": 3,
    "READ_INPUT_REGISTERS": 4,
    "WRITE_SINGLE_COIL": 5,
    "WRITE_SINGLE_REGISTER": 6,
    "READ_EXCEPTION_STATUS": 7,
    "DIAGNOSTICS": 8,
    "GET_COMM_EVENT_COUNTER": 11,
    "GET_COMM_EVENT_LOG": 12,
    "WRITE_MULTIPLE_COILS": 15,
    "WRITE_MULTIPLE_REGISTERS": 16,
    "REPORT_SLAVE_ID": 17,
    "READ_FILE_RECORD": 20,
    "WRITE_FILE_RECORD": 21,
    "MASK_WRITE_REGISTER": 22,
    "READ_WRITE_MULTIPLE_REGISTERS": 23,
    "READ_FIFO_QUEUE": 24,
    "ENCAP_INTERFACE_TRANSPORT": 43,
}

#: Zeek's Modbus::exception_codes (the Modbus spec's old master/slave wording).
_ZEEK_EXCEPTIONS: Final[dict[str, int]] = {
    "ILLEGAL_FUNCTION": 1,
    "ILLEGAL_DATA_ADDRESS": 2,
    "ILLEGAL_DATA_VALUE": 3,
    "SLAVE_DEVICE_FAILURE": 4,
    "ACKNOWLEDGE": 5,
    "SLAVE_DEVICE_BUSY": 6,
    "MEMORY_PARITY_ERROR": 8,
    "GATEWAY_PATH_UNAVAILABLE": 10,
    "GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND": 11,
}

_UNKNOWN = re.compile(r"unknown-(\d+)$", re.IGNORECASE)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


_MODBUS_BY_NAME: Final[dict[str, int]] = {
    **{_key(n): fc for fc, n in MODBUS_FUNCTION_NAMES.items()},
    **{_key(n): fc for n, fc in _ZEEK_MODBUS.items()},
}
_EXCEPTION_BY_NAME: Final[dict[str, int]] = {
    **{_key(n): code for code, n in EXCEPTION_NAMES.items()},
    **{_key(n): code for n, code in _ZEEK_EXCEPTIONS.items()},
}
_SUB_BY_NAME: Final[dict[str, int]] = {_key(n): s for s, n in DIAGNOSTIC_SUB_FUNCTIONS.items()}
_DNP3_BY_NAME: Final[dict[str, int]] = {
    **{_key(n): fc for fc, n in DNP3_FUNCTION_NAMES.items()},
    "authenticate_err": 33,  # Zeek's name for FC 33 (AUTH_REQ_NO_ACK in IEEE 1815-2012)
}


def _number(name: str) -> int | None:
    match = _UNKNOWN.match(name.strip())
    if match:
        return int(match.group(1))
    text = name.strip()
    if text.isdigit():
        return int(text)
    if text.lower().startswith("0x"):
        try:
            return int(text, 16)
        except ValueError:
            return None
    return None


def modbus_function(name: str) -> tuple[int, bool] | None:
    """(function code without the exception bit, exception bit) of a ``func`` value."""
    number = _number(name)
    if number is not None:
        return (number & 0x7F, bool(number & 0x80)) if 0 <= number <= 0xFF else None
    key = _key(name)
    exception = key.endswith("_exception")
    if exception:
        key = key[: -len("_exception")]
    fc = _MODBUS_BY_NAME.get(key)
    return None if fc is None else (fc, exception)


def modbus_exception(name: str) -> int | None:
    number = _number(name)
    return number if number is not None else _EXCEPTION_BY_NAME.get(_key(name))


def diagnostic_sub_function(name: str) -> int | None:
    """ICSNPP's ``Return Diagnostic Register`` → 0x02; a number stays a number."""
    number = _number(name)
    return number if number is not None else _SUB_BY_NAME.get(_key(name))


def dnp3_function(name: str) -> int | None:
    number = _number(name)
    return number if number is not None else _DNP3_BY_NAME.get(_key(name))


#: ICSNPP dnp3_objects ``object_type`` → (group, variation). Only names checked against
#: a capture (icsnpp-dnp3 dnp3_example.pcap, each name beside Mamori's decoding of the
#: same fragment); an unlisted name is counted, not guessed.
DNP3_OBJECT_TYPES: Final[dict[str, tuple[int, int]]] = {
    "binary_input_with_status": (1, 2),
    "binary_output_status": (10, 2),
    "control_relay_output_block": (12, 1),
    "16_bit_analog_input": (30, 2),
    "16_bit_analog_output_status": (40, 2),
    "class_0_data": (60, 1),
    "class_1_data": (60, 2),
    "class_2_data": (60, 3),
    "class_3_data": (60, 4),
}
_GV = re.compile(r"g(\d+)v(\d+)$")


def dnp3_object_type(name: str) -> tuple[int, int] | None:
    """(group, variation) of an ICSNPP object type name, ``g12v1``, or ``0x0c01``."""
    key = _key(name)
    if key in DNP3_OBJECT_TYPES:
        return DNP3_OBJECT_TYPES[key]
    match = _GV.match(key)
    if match:
        return int(match.group(1)), int(match.group(2))
    number = _number(name)
    return None if number is None else (number >> 8 & 0xFF, number & 0xFF)


#: ICSNPP dnp3_control ``operation_type`` and ``trip_control_code``.
CROB_OPERATIONS: Final[dict[str, int]] = {
    "nul": 0, "pulse_on": 1, "pulse_off": 2, "latch_on": 3, "latch_off": 4}
CROB_TCC: Final[dict[str, int]] = {"nul": 0, "close": 1, "trip": 2, "reserved": 3}
#: IEEE 1815 table 11-7 control status codes as ICSNPP writes them.
CONTROL_STATUS: Final[dict[str, int]] = {
    "success": 0, "timeout": 1, "no_select": 2, "format_error": 3, "not_supported": 4,
    "already_active": 5, "hardware_error": 6, "local": 7, "too_many_objs": 8,
    "not_authorized": 9, "automation_inhibit": 10, "processing_limited": 11,
    "out_of_range": 12, "downstream_local": 13, "already_complete": 14, "blocked": 15,
    "canceled": 16, "blocked_other_master": 17, "downstream_fail": 18,
    "non_participating": 126, "undefined": 127,
}


def lookup(table: dict[str, int], name: str) -> int | None:
    number = _number(name)
    return number if number is not None else table.get(_key(name))


#: ICSNPP modbus_read_device_identification ``object_id`` names (theirs differ from
#: Mamori's for 0x02 and 0x03).
DEVICE_ID_OBJECTS: Final[dict[str, int]] = {
    "vendorname": 0, "productcode": 1, "majorminorversion": 2, "majorminorrevision": 2,
    "vendorurl": 3, "productname": 4, "modelname": 5, "userapplicationname": 6,
}
