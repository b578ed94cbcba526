"""Every event the parsers emit: one type for the boundary, one table for the sensor.

The pipeline's output goes to detection, the inventory, the event log, replay
summaries and the daemon's fan-out. ``Event`` is what crosses that boundary,
so those signatures say what they receive instead of ``Any``, and a narrowing
on the class (``ev.__class__ is ModbusRequest``) gives the checker the fields.

``EVENTS`` is the one registration of the event classes. Per class it holds
what the sensor layer needs to know about it without another table of its
own: the ``proto`` the event log and the rules call it by, the rule ``type``
(None: rules never see the class directly, as with the link-layer events the
adversary-in-the-middle watch turns into findings), the attribute the rule
index keys on (the function code or the anomaly kind) and the function that
flattens it for the event log. The matcher, the event log and the engine all
derive from it, so a new event class is a member of ``Event`` and one
``_register`` line (a test walks ``mamori.parsers`` and checks both).

Dispatch stays a dict look-up on the exact class: the hot path never walks an
isinstance chain or builds a dict per event to use this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mamori.parsers import eventfields
from mamori.parsers.dnp3.events import (
    DNP3AnomalyEvent,
    DNP3LinkEvent,
    DNP3Request,
    DNP3Response,
    DNP3Unsolicited,
)
from mamori.parsers.dnp3.events import event_fields as dnp3_fields
from mamori.parsers.handshake import TransportEvent
from mamori.parsers.l2 import ArpEvent, MacPairEvent
from mamori.parsers.modbus.events import ModbusAnomalyEvent, ModbusRequest, ModbusResponse
from mamori.parsers.modbus.fields import event_fields as modbus_fields
from mamori.parsers.pipeline import PipelineAnomalyEvent
from mamori.parsers.tcp import TcpAnomalyEvent

Event = (
    ModbusRequest
    | ModbusResponse
    | ModbusAnomalyEvent
    | DNP3Request
    | DNP3Response
    | DNP3Unsolicited
    | DNP3LinkEvent
    | DNP3AnomalyEvent
    | TcpAnomalyEvent
    | TransportEvent
    | PipelineAnomalyEvent
    | ArpEvent
    | MacPairEvent
)

Fields = dict[str, object]
E = TypeVar("E", bound=Event)


@dataclass(frozen=True, slots=True)
class EventInfo:
    """What the sensor layer knows about one event class (see the module text)."""

    proto: str  # as the event log and rule packs spell it
    type: str | None  # a rule ``type`` (mamori.sensor.detection.model.MsgType value)
    index: str | None  # the attribute the rule index keys on; None exactly when ``type`` is
    # Typed per class by ``_register``; erased here so one table holds every class.
    fields: Callable[[Any], Fields]


EVENTS: dict[type, EventInfo] = {}


def _register(cls: type[E], proto: str, type_: str | None, index: str | None,
              fields: Callable[[E], Fields]) -> None:
    """One line per class; the checker sees ``fields`` accept ``cls``."""
    if (type_ is None) != (index is None):
        raise ValueError(f"{cls.__name__}: a rule type needs an index attribute and back")
    EVENTS[cls] = EventInfo(proto, type_, index, fields)


_register(ModbusRequest, "modbus", "request", "fc", modbus_fields)
_register(ModbusResponse, "modbus", "response", "fc", modbus_fields)
_register(ModbusAnomalyEvent, "modbus", "anomaly", "kind", modbus_fields)
_register(DNP3Request, "dnp3", "request", "fc", dnp3_fields)
_register(DNP3Response, "dnp3", "response", "fc", dnp3_fields)
_register(DNP3Unsolicited, "dnp3", "unsolicited", "fc", dnp3_fields)
_register(DNP3LinkEvent, "dnp3", "link", "function", dnp3_fields)
_register(DNP3AnomalyEvent, "dnp3", "anomaly", "kind", dnp3_fields)
_register(TcpAnomalyEvent, "tcp", "anomaly", "kind", eventfields.tcp_anomaly_fields)
_register(TransportEvent, "tcp", "anomaly", "kind", eventfields.transport_fields)
_register(PipelineAnomalyEvent, "ip", "anomaly", "kind", eventfields.pipeline_anomaly_fields)
_register(ArpEvent, "arp", None, None, eventfields.arp_fields)
_register(MacPairEvent, "eth", None, None, eventfields.mac_pair_fields)
