"""Events as JSON lines, for analysts and for the differential tests.

Each protocol package knows how to flatten its own events (``event_fields``);
this module only dispatches on the event class and adds the sensor-level
events (TCP reassembly and pipeline anomalies, connection attempts, ARP and
flow MAC pairs). One object per line, keys in a
stable order, no NaN, UTF-8.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import IO, Any

from mamori.parsers import dnp3, modbus
from mamori.parsers.handshake import TransportEvent
from mamori.parsers.l2 import ArpEvent, MacPairEvent, MacPairKind
from mamori.parsers.pipeline import PipelineAnomalyEvent
from mamori.parsers.stream import Direction, FlowId
from mamori.parsers.tcp import TcpAnomalyEvent

Fields = dict[str, Any]


def _flow_fields(flow: FlowId | None, direction: Direction) -> Fields:
    if flow is None:
        return {"src": None, "sport": None, "dst": None, "dport": None, "transport": None}
    src, sport, dst, dport = flow.endpoints(direction)
    return {"src": src, "sport": sport, "dst": dst, "dport": dport,
            "transport": flow.transport.name.lower()}


def _tcp_anomaly_fields(event: TcpAnomalyEvent) -> Fields:
    out: Fields = {"ts": event.ts, "proto": "tcp", "type": "anomaly"}
    out.update(_flow_fields(event.flow, event.direction))
    out.update({"anomaly": event.kind.name, "size": event.size, "detail": event.detail})
    return out


def _pipeline_anomaly_fields(event: PipelineAnomalyEvent) -> Fields:
    out: Fields = {"ts": event.ts, "proto": "ip", "type": "anomaly"}
    out.update(_flow_fields(event.flow, Direction.TO_SERVER))
    out.update({"anomaly": event.kind.name, "frame": event.frame or None,
                "detail": event.detail})
    return out


def _transport_fields(event: TransportEvent) -> Fields:
    out: Fields = {"ts": event.ts, "proto": "tcp", "type": "anomaly"}
    out.update(_flow_fields(event.flow, Direction.TO_SERVER))
    out.update({"anomaly": event.kind.name, "detail": event.detail,
                "count": event.count or None})
    return out


def _arp_fields(event: ArpEvent) -> Fields:
    return {"ts": event.ts, "proto": "arp", "type": event.kind.name.lower(),
            "sender_mac": event.sender_mac, "sender_ip": event.sender_ip,
            "target_mac": event.target_mac, "target_ip": event.target_ip,
            "src_mac": event.src_mac, "dst_mac": event.dst_mac, "vlan": event.vlan,
            "gratuitous": event.gratuitous}


def _mac_pair_fields(event: MacPairEvent) -> Fields:
    out: Fields = {"ts": event.ts, "proto": "eth"}
    if event.kind is MacPairKind.CHANGED:
        out.update({"type": "anomaly", "anomaly": "MAC_PAIR_CHANGED"})
    else:
        out["type"] = "mac_pair"
    out.update(_flow_fields(event.flow, Direction.TO_SERVER))
    out.update({"client_mac": event.client_mac, "server_mac": event.server_mac})
    return out


_BY_CLASS: dict[type, Callable[[Any], Fields]] = {
    TcpAnomalyEvent: _tcp_anomaly_fields,
    PipelineAnomalyEvent: _pipeline_anomaly_fields,
    TransportEvent: _transport_fields,
    ArpEvent: _arp_fields,
    MacPairEvent: _mac_pair_fields,
}
for _cls in (modbus.ModbusRequest, modbus.ModbusResponse, modbus.ModbusAnomalyEvent):
    _BY_CLASS[_cls] = modbus.event_fields
for _dnp3_cls in (dnp3.DNP3Request, dnp3.DNP3Response, dnp3.DNP3Unsolicited,
                  dnp3.DNP3LinkEvent, dnp3.DNP3AnomalyEvent):
    _BY_CLASS[_dnp3_cls] = dnp3.event_fields


def event_to_dict(event: Any) -> Fields:
    """Flatten any pipeline event to JSON-ready fields."""
    try:
        flatten = _BY_CLASS[type(event)]
    except KeyError:
        raise TypeError(f"no JSON mapping for event type {type(event).__name__}") from None
    return flatten(event)


class JsonLinesWriter:
    """Writes events to an open text stream, one compact JSON object per line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._encode = json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default
        ).encode
        self.written = 0

    def write(self, events: list[Any]) -> None:
        if not events:
            return
        encode = self._encode
        lines = [encode(event_to_dict(event)) for event in events]
        self._stream.write("\n".join(lines) + "\n")
        self.written += len(lines)


def _default(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, tuple | frozenset | set):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
