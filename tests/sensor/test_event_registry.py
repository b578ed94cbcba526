"""One registration of the event classes: every one the parsers define is in it, and
the matcher, the event log and the engine take each (mamori.parsers.events)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import typing

import pytest

import mamori.parsers
from mamori.parsers.capfile import CaptureRecord
from mamori.parsers.dnp3.events import (
    DNP3Anomaly,
    DNP3AnomalyEvent,
    DNP3LinkEvent,
    DNP3Request,
    DNP3Response,
    DNP3Unsolicited,
    ObjectHeader,
)
from mamori.parsers.events import EVENTS, Event, EventInfo
from mamori.parsers.handshake import TransportEvent, TransportKind
from mamori.parsers.l2 import ArpEvent, ArpOp, MacPairEvent, MacPairKind
from mamori.parsers.modbus.events import (
    ModbusAnomaly,
    ModbusAnomalyEvent,
    ModbusRequest,
    ModbusResponse,
)
from mamori.parsers.modbus.pdu import ReadRegistersResponse, ReadRequest
from mamori.parsers.pipeline import PipelineAnomaly, PipelineAnomalyEvent
from mamori.parsers.stream import Direction, FlowId, Transport
from mamori.parsers.tcp import TcpAnomaly, TcpAnomalyEvent
from mamori.sensor.alerting import eventlog
from mamori.sensor.alerting.eventlog import event_to_dict
from mamori.sensor.detection import Detector, Inventory, load_rules
from mamori.sensor.detection import engine as engine_module
from mamori.sensor.detection.aitm import WATCHED
from mamori.sensor.detection.derived import DerivedEvent
from mamori.sensor.detection.floods import WATCHED as FLOOD_WATCHED
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.matcher import CLASS_INFO, INDEX_ATTR, classify, peers
from mamori.sensor.detection.model import MsgType, Proto
from mamori.sensor.detection.settings import set_names

# Dataclasses with a ``ts`` first that are not events: the pipeline's input.
NOT_EVENTS = frozenset({CaptureRecord})

FLOW = FlowId(Transport.TCP, "10.0.0.9", 40000, "10.0.0.5", 502,
              client_mac="02:00:00:00:00:09", server_mac="02:00:00:00:00:05")
DNP3_FLOW = FlowId(Transport.TCP, "10.0.0.9", 40001, "10.0.0.6", 20000)
HEADER = ObjectHeader(60, 2, 6, None, None, None, 0)

# One event of every registered class, as the parsers would make it.
SAMPLES: dict[type, Event] = {
    ModbusRequest: ModbusRequest(1.0, FLOW, 1, 1, 3, None, 0, 2, ReadRequest(0, 2)),
    ModbusResponse: ModbusResponse(1.1, FLOW, 1, 1, 3, None, 0, 2,
                                   ReadRegistersResponse(4, (1, 2)), None, 0.1, False),
    ModbusAnomalyEvent: ModbusAnomalyEvent(1.2, FLOW, Direction.TO_SERVER, ModbusAnomaly.GAP,
                                           None, None, None, "lost 10 bytes"),
    DNP3Request: DNP3Request(2.0, DNP3_FLOW, Direction.TO_SERVER, 3, 4, 0xC0, 1, 1, None,
                             (HEADER,)),
    DNP3Response: DNP3Response(2.1, DNP3_FLOW, Direction.TO_CLIENT, 4, 3, 0xC0, 1, 129, 0,
                               ()),
    DNP3Unsolicited: DNP3Unsolicited(2.2, DNP3_FLOW, Direction.TO_CLIENT, 4, 3, 0xF0, 2, 130,
                                     0, (HEADER,)),
    DNP3LinkEvent: DNP3LinkEvent(2.3, DNP3_FLOW, Direction.TO_SERVER, 3, 4, 0xC9, 9,
                                 "REQUEST_LINK_STATUS", True, True),
    DNP3AnomalyEvent: DNP3AnomalyEvent(2.4, DNP3_FLOW, Direction.TO_CLIENT,
                                       DNP3Anomaly.BAD_BLOCK_CRC, 4, 3, None, "crc"),
    TcpAnomalyEvent: TcpAnomalyEvent(3.0, FLOW, Direction.TO_SERVER, TcpAnomaly.GAP, 10,
                                     "hole"),
    TransportEvent: TransportEvent(3.1, TransportKind.REFUSED, FLOW, "RST to the SYN"),
    PipelineAnomalyEvent: PipelineAnomalyEvent(3.2, PipelineAnomaly.IP_FRAGMENT, "frag", 7),
    ArpEvent: ArpEvent(4.0, ArpOp.REPLY, "02:00:00:00:00:66", "10.0.0.5", "02:00:00:00:00:09",
                       "10.0.0.9", "02:00:00:00:00:66", "02:00:00:00:00:09"),
    MacPairEvent: MacPairEvent(4.1, MacPairKind.CHANGED, FLOW, "02:00:00:00:00:66",
                               "02:00:00:00:00:05"),
}


def defined_event_classes() -> set[type]:
    """Every concrete event class the parsers define, found by walking the package.

    An event is a dataclass whose first field is its time ``ts``; a class another
    event class derives from (DNP3Application) is a base, not an event."""
    found: set[type] = set()
    for info in pkgutil.walk_packages(mamori.parsers.__path__, "mamori.parsers."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not dataclasses.is_dataclass(cls):
                continue
            fields = dataclasses.fields(cls)
            if fields and fields[0].name == "ts" and not cls.__subclasses__():
                found.add(cls)
    return found - NOT_EVENTS


def test_every_event_class_of_the_parsers_is_registered_and_in_the_union() -> None:
    defined = defined_event_classes()
    assert ModbusRequest in defined and DNP3Unsolicited in defined and ArpEvent in defined
    assert set(EVENTS) == defined
    assert set(typing.get_args(Event)) == defined
    assert set(SAMPLES) == defined  # a new class needs a sample here too


def test_the_walk_finds_a_class_left_out_of_the_registry(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The check above can fail: an event class nobody registered is found."""
    import mamori.parsers.l2 as l2

    @dataclasses.dataclass(frozen=True, slots=True)
    class VlanHopEvent:
        ts: float
        vlan: int

    VlanHopEvent.__module__ = l2.__name__
    monkeypatch.setattr(l2, "VlanHopEvent", VlanHopEvent, raising=False)
    assert VlanHopEvent in defined_event_classes() - set(EVENTS)


def test_a_rule_type_comes_with_an_index_attribute() -> None:
    with pytest.raises(ValueError, match="index"):
        from mamori.parsers.events import _register
        _register(ArpEvent, "arp", "request", None, eventlog.event_to_dict)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_the_event_log_flattens_each_as_registered(cls: type) -> None:
    info: EventInfo = EVENTS[cls]
    fields = event_to_dict(SAMPLES[cls])
    assert fields["ts"] == SAMPLES[cls].ts
    assert fields["proto"] == info.proto
    if info.type is not None:
        assert fields["type"] == info.type
    assert eventlog._BY_CLASS[cls] is info.fields


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_the_matcher_indexes_each_class_rules_see(cls: type) -> None:
    info = EVENTS[cls]
    event = SAMPLES[cls]
    if info.type is None:
        assert cls not in CLASS_INFO and cls in WATCHED  # the link-layer watch has it
        return
    assert CLASS_INFO[cls] == (Proto(info.proto), MsgType(info.type), info.index)
    assert INDEX_ATTR[cls] == info.index
    proto, mtype, _, _ = classify(cls, getattr(event, INDEX_ATTR[cls]))
    assert (proto.value, mtype.value) == (info.proto, info.type)
    assert peers(event).proto == info.proto


def test_the_matcher_knows_only_registered_classes_and_its_own_findings() -> None:
    assert set(CLASS_INFO) == {c for c, i in EVENTS.items() if i.type} | {DerivedEvent}
    assert set(eventlog._BY_CLASS) == set(EVENTS)


def test_the_subscriptions_of_the_engine_name_registered_classes() -> None:
    inventory = Inventory()
    for subset in (WATCHED, FLOOD_WATCHED, engine_module._STATEFUL, set(inventory._handlers)):
        assert set(subset) <= set(EVENTS)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_the_engine_takes_each(cls: type) -> None:
    detector = Detector(load_rules([SHIPPED_RULES], set_names()))
    detector.process([SAMPLES[cls]])
    assert detector.stats.events == 1


def test_the_engine_takes_all_in_one_batch_and_raises_on_them() -> None:
    detector = Detector(load_rules([SHIPPED_RULES], set_names()))
    detector.process(list(SAMPLES.values()))
    detector.tick(10.0)
    assert detector.stats.events == len(SAMPLES)
    rules = {a.rule for a in detector.alerts()}
    # the TCP gap, the Modbus gap, the DNP3 CRC error and (through the link-layer
    # watch) the ARP reply claiming the server's IP for another MAC each raised
    assert {"mamori.health.tcp_gap", "mamori.health.modbus_resync",
            "mamori.dnp3.link_malformed", "mamori.network.ip_mac_changed"} <= rules, rules
