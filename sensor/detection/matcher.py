"""Turn a rule's ``match`` into a predicate once; find candidate rules per event fast.

The engine meets every event of the pipeline, 100k+ per second on a capture,
and most of them (reads in a polling loop) match no rule. So rules are indexed
by what is cheap to read on every event: the event class and its function
code (messages) or anomaly kind (anomalies and derived events). The candidate
list for each distinct (class, code) is worked out on first sight and cached;
only candidates run their remaining checks, against event attributes, without
flattening the event to a dict.

Which classes there are, and their proto, type and index attribute, come from
the parsers' one registration (``mamori.parsers.events.EVENTS``); the matcher
adds only the detection layer's own :class:`DerivedEvent`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum
from typing import NamedTuple

from mamori.parsers.dnp3.events import ObjectHeader
from mamori.parsers.events import EVENTS, Event
from mamori.parsers.modbus.events import ModbusRequest, ModbusResponse
from mamori.parsers.stream import Direction, FlowId
from mamori.sensor.detection.derived import DerivedEvent
from mamori.sensor.detection.model import Match, MsgType, ObjectPattern, Proto, Rule

Matchable = Event | DerivedEvent  # what rules run over: parser events and findings
Predicate = Callable[[Matchable], bool]

# class -> (proto, type, attribute that carries the index code), for every class
# rules can match. DerivedEvent's proto and type come from its kind.
CLASS_INFO: dict[type, tuple[Proto | None, MsgType | None, str]] = {
    cls: (Proto(info.proto), MsgType(info.type), info.index)
    for cls, info in EVENTS.items() if info.type is not None and info.index is not None}
CLASS_INFO[DerivedEvent] = (None, None, "kind")
INDEX_ATTR: dict[type, str] = {cls: info[2] for cls, info in CLASS_INFO.items()}


class Peers(NamedTuple):
    """Who talked, in the direction of the message (alert fields)."""

    proto: str
    src: str | None
    sport: int | None
    dst: str | None
    dport: int | None
    unit: int | None
    link_src: int | None
    link_dst: int | None
    server_port: int | None  # for aggregation: stable across client reconnects


def classify(cls: type, code: object) -> tuple[Proto, MsgType, str | None, int | None]:
    """(proto, type, anomaly name, fc) of an index key."""
    proto, mtype, _ = CLASS_INFO[cls]
    if cls is DerivedEvent:
        assert isinstance(code, Enum)
        return Proto(code.value[0]), MsgType(code.value[1]), code.name, None
    assert proto is not None and mtype is not None
    if isinstance(code, Enum):
        return proto, mtype, code.name, None
    return proto, mtype, None, code if isinstance(code, int) else None


def indexed(rule: Rule, cls: type, code: object) -> bool:
    """Could ``rule`` match events of this class with this code? (The cheap part.)"""
    proto, mtype, anomaly, fc = classify(cls, code)
    m = rule.match
    if proto not in m.proto or (m.type is not None and mtype not in m.type):
        return False
    if anomaly is not None:
        return m.anomaly is None or anomaly in m.anomaly
    if m.anomaly is not None:
        return False
    return m.fc is None or (fc is not None and fc in m.fc)


def event_direction(event: Matchable) -> Direction | None:
    cls = event.__class__
    if cls is ModbusRequest:
        return Direction.TO_SERVER
    if cls is ModbusResponse:
        return Direction.TO_CLIENT
    direction = getattr(event, "direction", None)
    return direction if isinstance(direction, Direction) else None


def peers(event: Matchable) -> Peers:
    """Alert peer fields of any event the engine handles."""
    if event.__class__ is DerivedEvent:
        return Peers(event.kind.value[0], event.src, event.sport, event.dst, event.dport,
                     event.unit, event.link_src, event.link_dst, event.dport)
    if event.__class__ is ModbusRequest:
        mflow = event.flow
        return Peers("modbus", mflow.client, mflow.client_port, mflow.server,
                     mflow.server_port, event.unit, None, None, mflow.server_port)
    if event.__class__ is ModbusResponse:
        mflow = event.flow
        return Peers("modbus", mflow.server, mflow.server_port, mflow.client,
                     mflow.client_port, event.unit, None, None, mflow.server_port)
    proto = CLASS_INFO[event.__class__][0]
    flow: FlowId | None = getattr(event, "flow", None)  # ARP has none, TransportEvent may
    direction = event_direction(event)
    if flow is None:
        src = sport = dst = dport = server_port = None
    else:
        src, sport, dst, dport = flow.endpoints(direction or Direction.TO_SERVER)
        server_port = flow.server_port
    return Peers(proto.value if proto else "", src, sport, dst, dport,
                 getattr(event, "unit", None), getattr(event, "link_src", None),
                 getattr(event, "link_dst", None), server_port)


def _object_matches(patterns: tuple[ObjectPattern, ...], headers: Iterable[ObjectHeader]
                    ) -> bool:
    for h in headers:
        for p in patterns:
            if h.group in p.groups and (p.variations is None or h.variation in p.variations) \
                    and (p.qualifiers is None or h.qualifier in p.qualifiers):
                return True
    return False


def compile_match(match: Match) -> Predicate:
    """The attribute checks of ``match`` beyond the index (class, fc, anomaly kind).

    ``src``/``dst`` set checks need the engine's sets, so the engine does them.
    """
    checks: list[Predicate] = []

    def member(attr: str, values: frozenset[int]) -> Predicate:
        return lambda e: getattr(e, attr, None) in values

    # fc is re-checked for anomaly/derived events, whose index code is the kind
    if match.fc is not None and match.anomaly is not None:
        checks.append(member("fc", match.fc))
    for attr in ("sub", "unit", "link_src", "link_dst", "exception"):
        values = getattr(match, attr)
        if values is not None:
            checks.append(member(attr, values))
    if match.address is not None:
        lo, hi = match.address

        def address(e: Matchable) -> bool:
            start = getattr(e, "address", None)
            if start is None:
                return False
            return bool(start <= hi and start + max(getattr(e, "quantity", None) or 1, 1) - 1 >= lo)
        checks.append(address)
    if match.objects is not None:
        patterns = match.objects
        checks.append(lambda e: _object_matches(patterns, getattr(e, "objects", ())))
    if match.iin is not None:
        mask = match.iin
        checks.append(lambda e: bool((getattr(e, "iin", None) or 0) & mask))
    if match.direction is not None:
        wanted = Direction.TO_SERVER if match.direction == "to_server" else Direction.TO_CLIENT
        checks.append(lambda e: event_direction(e) is wanted)
    if match.prm is not None:
        prm = match.prm
        checks.append(lambda e: getattr(e, "prm", None) is prm)
    if match.unsolicited is not None:
        unsolicited = match.unsolicited
        checks.append(lambda e: getattr(e, "unsolicited", None) is unsolicited)
    if not checks:
        return lambda e: True
    if len(checks) == 1:
        return checks[0]
    return lambda e: all(check(e) for check in checks)


def roles(p: Peers) -> tuple[str | None, str | None]:
    """(client, outstation) of an alert's peers, whichever way its message went.

    The outstation is the flow's server: a response (or an exception count grouped
    on it) has it as ``src``. Chains and maintenance windows are about targets, so
    they key on this rather than on the message's direction.
    """
    if p.sport is not None and p.sport == p.server_port and p.dport != p.server_port:
        return p.dst, p.src
    return p.src, p.dst
