"""JSON-ready fields of the events the sensor layer of the parsers emits.

The Modbus and DNP3 packages flatten their own events (``event_fields`` in
each); these are the rest: TCP reassembly and pipeline anomalies, connection
attempts, ARP messages and flow MAC pairs. Pure, like everything in
``mamori.parsers``: the event log (``mamori.sensor.alerting.eventlog``) only
encodes what these return. Keys come in a stable order, since the log's lines
are compared byte for byte.
"""

from __future__ import annotations

from mamori.parsers.handshake import TransportEvent
from mamori.parsers.l2 import ArpEvent, MacPairEvent, MacPairKind
from mamori.parsers.pipeline import PipelineAnomalyEvent
from mamori.parsers.stream import Direction, FlowId
from mamori.parsers.tcp import TcpAnomalyEvent

Fields = dict[str, object]


def flow_fields(flow: FlowId | None, direction: Direction) -> Fields:
    """The endpoints of ``flow`` as the message in ``direction`` went (all None: no flow)."""
    if flow is None:
        return {"src": None, "sport": None, "dst": None, "dport": None, "transport": None}
    src, sport, dst, dport = flow.endpoints(direction)
    return {"src": src, "sport": sport, "dst": dst, "dport": dport,
            "transport": flow.transport.name.lower()}


def tcp_anomaly_fields(event: TcpAnomalyEvent) -> Fields:
    out: Fields = {"ts": event.ts, "proto": "tcp", "type": "anomaly"}
    out.update(flow_fields(event.flow, event.direction))
    out.update({"anomaly": event.kind.name, "size": event.size, "detail": event.detail})
    return out


def pipeline_anomaly_fields(event: PipelineAnomalyEvent) -> Fields:
    out: Fields = {"ts": event.ts, "proto": "ip", "type": "anomaly"}
    out.update(flow_fields(event.flow, Direction.TO_SERVER))
    out.update({"anomaly": event.kind.name, "frame": event.frame or None,
                "detail": event.detail})
    return out


def transport_fields(event: TransportEvent) -> Fields:
    out: Fields = {"ts": event.ts, "proto": "tcp", "type": "anomaly"}
    out.update(flow_fields(event.flow, Direction.TO_SERVER))
    out.update({"anomaly": event.kind.name, "detail": event.detail,
                "count": event.count or None})
    return out


def arp_fields(event: ArpEvent) -> Fields:
    return {"ts": event.ts, "proto": "arp", "type": event.kind.name.lower(),
            "sender_mac": event.sender_mac, "sender_ip": event.sender_ip,
            "target_mac": event.target_mac, "target_ip": event.target_ip,
            "src_mac": event.src_mac, "dst_mac": event.dst_mac, "vlan": event.vlan,
            "gratuitous": event.gratuitous}


def mac_pair_fields(event: MacPairEvent) -> Fields:
    out: Fields = {"ts": event.ts, "proto": "eth"}
    if event.kind is MacPairKind.CHANGED:
        out.update({"type": "anomaly", "anomaly": "MAC_PAIR_CHANGED"})
    else:
        out["type"] = "mac_pair"
    out.update(flow_fields(event.flow, Direction.TO_SERVER))
    out.update({"client_mac": event.client_mac, "server_mac": event.server_mac})
    return out
