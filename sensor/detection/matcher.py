"""Turn a rule's ``match`` into a predicate once; find candidate rules per event fast.

The engine meets every event of the pipeline, 100k+ per second on a capture,
and most of them (reads in a polling loop) match no rule. So rules are indexed
by what is cheap to read on every event: the event class and its function
code (messages) or anomaly kind (anomalies and derived events). The candidate
list for each distinct (class, code) is worked out on first sight and cached
as a :class:`Bucket`, split once more on the attribute most of its rules
require in a set (the exception code of a response, a sub-function, a unit),
so a plain read response meets no rule at all. Only candidates run their
remaining checks, against event attributes, without flattening the event to a
dict; a candidate with none left is a hit without a call.

Which classes there are, and their proto, type and index attribute, come from
the parsers' one registration (``mamori.parsers.events.EVENTS``); the matcher
adds only the detection layer's own :class:`DerivedEvent`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum
from typing import Generic, NamedTuple, TypeVar

from mamori.parsers.dnp3.events import ObjectHeader
from mamori.parsers.events import EVENTS, Event
from mamori.parsers.modbus.events import ModbusRequest, ModbusResponse
from mamori.parsers.stream import Direction, FlowId
from mamori.sensor.detection.derived import DerivedEvent
from mamori.sensor.detection.model import Match, MsgType, ObjectPattern, Proto, Rule

Matchable = Event | DerivedEvent  # what rules run over: parser events and findings
Predicate = Callable[[Matchable], bool]
T = TypeVar("T")

# class -> (proto, type, attribute that carries the index code), for every class
# rules can match. DerivedEvent's proto and type come from its kind.
CLASS_INFO: dict[type, tuple[Proto | None, MsgType | None, str]] = {
    cls: (Proto(info.proto), MsgType(info.type), info.index)
    for cls, info in EVENTS.items() if info.type is not None and info.index is not None}
CLASS_INFO[DerivedEvent] = (None, None, "kind")
INDEX_ATTR: dict[type, str] = {cls: info[2] for cls, info in CLASS_INFO.items()}
# class -> its proto's name ("" if none): ``Proto.value`` is an Enum property, a call
# into Python per rule hit when compiled
_PROTO_NAME: dict[type, str] = {cls: info[0].value if info[0] else ""
                                for cls, info in CLASS_INFO.items()}


class Peers:
    """Who talked, in the direction of the message (alert fields).

    A plain slotted class, not a named tuple: the engine makes one per event that
    hits a rule, and compiled (mypyc) this is a native class, made with a few stores
    and read field by field as loads, where a named tuple's constructor is an
    interpreted frame and each field read an attribute look-up. Nothing changes one
    once made."""

    __slots__ = ("dport", "dst", "link_dst", "link_src", "proto", "server_port", "sport", "src",
                 "unit")

    def __init__(self, proto: str, src: str | None, sport: int | None, dst: str | None,
                 dport: int | None, unit: int | None, link_src: int | None,
                 link_dst: int | None, server_port: int | None) -> None:
        self.proto = proto
        self.src = src
        self.sport = sport
        self.dst = dst
        self.dport = dport
        self.unit = unit
        self.link_src = link_src
        self.link_dst = link_dst
        self.server_port = server_port  # for aggregation: stable across client reconnects


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
    if type(event) is DerivedEvent:
        # ``_value_``: ``value`` is an Enum property, an interpreted call when compiled
        return Peers(event.kind._value_[0], event.src, event.sport, event.dst, event.dport,
                     event.unit, event.link_src, event.link_dst, event.dport)
    if type(event) is ModbusRequest:
        mflow = event.flow
        return Peers("modbus", mflow.client, mflow.client_port, mflow.server,
                     mflow.server_port, event.unit, None, None, mflow.server_port)
    if type(event) is ModbusResponse:
        mflow = event.flow
        return Peers("modbus", mflow.server, mflow.server_port, mflow.client,
                     mflow.client_port, event.unit, None, None, mflow.server_port)
    flow: FlowId | None = getattr(event, "flow", None)  # ARP has none, TransportEvent may
    direction = event_direction(event)
    if flow is None:
        src = sport = dst = dport = server_port = None
    else:
        src, sport, dst, dport = flow.endpoints(direction or Direction.TO_SERVER)
        server_port = flow.server_port
    return Peers(_PROTO_NAME[event.__class__], src, sport, dst, dport,
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


# Attributes a rule may require to be in a set of small integers; the engine may
# read one of them once per event and pick the rules by its value instead.
MEMBER_ATTRS = ("fc", "sub", "unit", "link_src", "link_dst", "exception")


def member_sets(match: Match) -> dict[str, frozenset[int]]:
    """The ``attribute in values`` checks of ``match`` beyond the index, by attribute.

    ``fc`` is one only for anomaly/derived rules: elsewhere the index holds it.
    """
    out: dict[str, frozenset[int]] = {}
    if match.fc is not None and match.anomaly is not None:
        out["fc"] = match.fc
    for attr in MEMBER_ATTRS[1:]:
        values = getattr(match, attr)
        if values is not None:
            out[attr] = values
    return out


def _always(e: Matchable) -> bool:
    return True


def compile_match(match: Match) -> Predicate:
    """The attribute checks of ``match`` beyond the index (class, fc, anomaly kind).

    ``src``/``dst`` set checks need the engine's sets, so the engine does them.
    """
    return compile_checks(match) or _always


def compile_checks(match: Match, skip: str | None = None) -> Predicate | None:
    """:func:`compile_match` less the set check on ``skip`` (the engine made it
    already); ``None`` when no check is left, so the engine calls nothing."""
    checks: list[Predicate] = []

    def member(attr: str, values: frozenset[int]) -> Predicate:
        return lambda e: getattr(e, attr, None) in values

    for attr, values in member_sets(match).items():
        if attr != skip:
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
        return None
    if len(checks) == 1:
        return checks[0]
    return lambda e: all(check(e) for check in checks)


Entries = tuple[tuple[T, Predicate | None], ...]  # (rule, what is left to check)


class Bucket(NamedTuple, Generic[T]):
    """The rules one index key (class, code) can match, split on one more attribute.

    ``split`` None: ``default`` are the candidates. Otherwise the event's value of
    ``split`` picks ``by_value[value]``, or ``default`` (the rules that do not
    check ``split``) for a value no rule names. Each candidate comes with what is
    left to check (``None``: nothing), in rule order, so hits come in the same
    order as when every rule was tried in turn.
    """

    split: str | None
    by_value: dict[object, Entries[T]]
    default: Entries[T]


def bucket(candidates: list[tuple[T, Match]]) -> Bucket[T]:
    """The :class:`Bucket` of these (rule, match) candidates of one index key."""
    sets = [member_sets(m) for _, m in candidates]
    counts = {attr: sum(attr in s for s in sets) for attr in MEMBER_ATTRS}
    split = max(MEMBER_ATTRS, key=lambda a: counts[a])
    if not counts[split]:
        return Bucket(None, {}, tuple((r, compile_checks(m)) for r, m in candidates))
    values = set().union(*(s[split] for s in sets if split in s))
    pairs = list(zip(candidates, sets, strict=True))
    by_value: dict[object, Entries[T]] = {
        v: tuple((r, compile_checks(m, split if split in s else None))
                 for (r, m), s in pairs if split not in s or v in s[split])
        for v in values}
    default = tuple((r, compile_checks(m)) for (r, m), s in pairs if split not in s)
    return Bucket(split, by_value, default)


def roles(p: Peers) -> tuple[str | None, str | None]:
    """(client, outstation) of an alert's peers, whichever way its message went.

    The outstation is the flow's server: a response (or an exception count grouped
    on it) has it as ``src``. Chains and maintenance windows are about targets, so
    they key on this rather than on the message's direction.
    """
    if p.sport is not None and p.sport == p.server_port and p.dport != p.server_port:
        return p.dst, p.src
    return p.src, p.dst
