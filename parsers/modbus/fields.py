"""JSON-ready fields of a Modbus event, for the ``--events`` output.

Pure: no I/O. Every event gets the same leading keys (ts, proto, type,
endpoints, tid, unit, fc, exception, sub, address, quantity, anomaly); the
PDU's own fields follow, converted to JSON types (bytes as hex, tuples as
lists, device-identification objects as ``{name: value}``).
"""

from __future__ import annotations

import dataclasses

from mamori.parsers.modbus.events import ModbusAnomalyEvent, ModbusEvent, ModbusResponse
from mamori.parsers.modbus.pdu import ExceptionPdu, Pdu, RawPdu, ReadDeviceIdResponse
from mamori.parsers.modbus.tables import DIAGNOSTIC_SUB_FUNCTIONS, function_name
from mamori.parsers.stream import Direction


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def pdu_fields(pdu: Pdu) -> dict[str, object]:
    """The function-code specific fields of a decoded PDU."""
    if type(pdu) is ReadDeviceIdResponse:
        fields: dict[str, object] = {
            f.name: getattr(pdu, f.name) for f in dataclasses.fields(pdu) if f.name != "objects"
        }
        fields["objects"] = {obj.name: obj.value for obj in pdu.objects}
        return fields
    if type(pdu) is ExceptionPdu:
        return {"exception_name": pdu.name}
    if not dataclasses.is_dataclass(pdu):  # every Pdu class is; this tells the checker
        raise TypeError(f"{type(pdu).__name__} is not a dataclass")
    fields = {f.name: _jsonable(getattr(pdu, f.name)) for f in dataclasses.fields(pdu)}
    if type(pdu) is RawPdu:
        fields["length"] = pdu.length
    return fields


def event_fields(event: ModbusEvent) -> dict[str, object]:
    """One event as a flat, JSON-ready dict."""
    if isinstance(event, ModbusAnomalyEvent):
        src, sport, dst, dport = event.flow.endpoints(event.direction)
        return {
            "ts": event.ts, "proto": "modbus", "type": "anomaly",
            "src": src, "sport": sport, "dst": dst, "dport": dport,
            "tid": event.tid, "unit": event.unit, "fc": event.fc,
            "exception": None, "sub": None, "address": None, "quantity": None,
            "anomaly": event.kind.name, "detail": event.detail,
        }
    response = event if isinstance(event, ModbusResponse) else None
    direction = Direction.TO_SERVER if response is None else Direction.TO_CLIENT
    src, sport, dst, dport = event.flow.endpoints(direction)
    fields: dict[str, object] = {
        "ts": event.ts, "proto": "modbus", "type": "request" if response is None else "response",
        "src": src, "sport": sport, "dst": dst, "dport": dport,
        "tid": event.tid, "unit": event.unit, "fc": event.fc,
        "exception": None if response is None else response.exception,
        "sub": event.sub, "address": event.address, "quantity": event.quantity,
        "anomaly": None, "function": function_name(event.fc),
    }
    if event.fc == 8 and event.sub is not None:
        fields["sub_name"] = DIAGNOSTIC_SUB_FUNCTIONS.get(event.sub)
    for key, value in pdu_fields(event.pdu).items():
        fields.setdefault(key, value)
    if response is not None:
        fields["latency"] = response.latency
        fields["unsolicited"] = response.unsolicited
    return fields
