"""Modbus names and limits, kept as data.

Everything a rule, a log line or a decoder needs to name a function code,
a diagnostics sub-function, an exception code or a device-identification
object lives here, so the names are defined once. Names are snake_case
because they travel into JSON and rule packs unchanged.
"""

from __future__ import annotations

from typing import Final

#: Public function codes (Modbus Application Protocol v1.1b3, section 5.1)
#: plus the vendor and legacy codes that matter for detection (M12).
FUNCTION_NAMES: Final[dict[int, str]] = {
    1: "read_coils",
    2: "read_discrete_inputs",
    3: "read_holding_registers",
    4: "read_input_registers",
    5: "write_single_coil",
    6: "write_single_register",
    7: "read_exception_status",
    8: "diagnostics",
    9: "program_484",
    11: "get_comm_event_counter",
    12: "get_comm_event_log",
    13: "program_584_984",
    14: "poll_584_984",
    15: "write_multiple_coils",
    16: "write_multiple_registers",
    17: "report_server_id",
    18: "program_884_u84",
    20: "read_file_record",
    21: "write_file_record",
    22: "mask_write_register",
    23: "read_write_multiple_registers",
    24: "read_fifo_queue",
    40: "program_concept",
    43: "encapsulated_interface_transport",
    90: "umas",
    91: "schneider_91",
    125: "firmware_replacement",
    126: "program_modsoft",
}

#: Diagnostics (FC 8) sub-functions. 0x05-0x09 are reserved; 0x13 is the
#: legacy "return IOP overrun count"; 0x15 is Modbus Plus only.
DIAGNOSTIC_SUB_FUNCTIONS: Final[dict[int, str]] = {
    0x00: "return_query_data",
    0x01: "restart_communications",  # data 0xFF00 also clears the event log
    0x02: "return_diagnostic_register",
    0x03: "change_ascii_input_delimiter",
    0x04: "force_listen_only_mode",
    0x0A: "clear_counters_and_diagnostic_register",
    0x0B: "return_bus_message_count",
    0x0C: "return_bus_communication_error_count",
    0x0D: "return_bus_exception_error_count",
    0x0E: "return_server_message_count",
    0x0F: "return_server_no_response_count",
    0x10: "return_server_nak_count",
    0x11: "return_server_busy_count",
    0x12: "return_bus_character_overrun_count",
    0x13: "return_iop_overrun_count",
    0x14: "clear_overrun_counter_and_flag",
    0x15: "get_clear_modbus_plus_statistics",
}

#: Sub-functions whose data field is not exactly one 16-bit word.
DIAGNOSTIC_FREE_DATA: Final[frozenset[int]] = frozenset({0x00, 0x15})

#: Restart communications (sub 0x01) with this data word also clears the log.
RESTART_CLEAR_LOG: Final[int] = 0xFF00

EXCEPTION_NAMES: Final[dict[int, str]] = {
    0x01: "illegal_function",
    0x02: "illegal_data_address",
    0x03: "illegal_data_value",
    0x04: "server_device_failure",
    0x05: "acknowledge",
    0x06: "server_device_busy",
    0x08: "memory_parity_error",
    0x0A: "gateway_path_unavailable",
    0x0B: "gateway_target_device_failed_to_respond",
}

#: MEI types carried by FC 43.
MEI_CANOPEN_GENERAL_REFERENCE: Final[int] = 13
MEI_READ_DEVICE_ID: Final[int] = 14

#: Read device identification object ids (FC 43 / MEI 14).
DEVICE_ID_OBJECT_NAMES: Final[dict[int, str]] = {
    0x00: "VendorName",
    0x01: "ProductCode",
    0x02: "MajorMinorRevision",
    0x03: "VendorUrl",
    0x04: "ProductName",
    0x05: "ModelName",
    0x06: "UserApplicationName",
}

#: (minimum, maximum) quantity a request may ask for, by function code.
QUANTITY_LIMITS: Final[dict[int, tuple[int, int]]] = {
    1: (1, 2000),
    2: (1, 2000),
    3: (1, 125),
    4: (1, 125),
    15: (1, 1968),
    16: (1, 123),
}
#: FC 23: read quantity 1..125, write quantity 1..121.
READ_WRITE_LIMITS: Final[tuple[tuple[int, int], tuple[int, int]]] = ((1, 125), (1, 121))
#: FC 24: a FIFO holds at most 31 registers.
FIFO_MAX_COUNT: Final[int] = 31
#: FC 20/21 sub-requests must carry reference type 6.
FILE_REFERENCE_TYPE: Final[int] = 6
#: FC 5 coil values.
COIL_OFF: Final[int] = 0x0000
COIL_ON: Final[int] = 0xFF00


def function_name(fc: int) -> str:
    """Name of a function code (without the exception bit); ``fc_N`` if unnamed."""
    return FUNCTION_NAMES.get(fc, f"fc_{fc}")


def device_id_object_name(object_id: int) -> str:
    """Standard name of a device-identification object, ``object_0xNN`` otherwise."""
    return DEVICE_ID_OBJECT_NAMES.get(object_id, f"object_0x{object_id:02X}")
