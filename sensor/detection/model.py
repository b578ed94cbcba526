"""The rule model: what a rule pack means once it is loaded and checked.

Rules are data (``rules/*.yaml``); these frozen classes are the parsed,
validated form the engine interprets. Nothing here reads files or events:
:mod:`mamori.sensor.detection.loader` builds the objects, :mod:`mamori.sensor.detection.matcher`
turns a :class:`Match` into a predicate once, and the engine evaluates it many
times (parse once, match many).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from mamori.parsers.alerts import Severity


class Proto(Enum):
    """The ``proto`` a rule can match. Derived events carry ``baseline`` and ``sensor``."""

    MODBUS = "modbus"
    DNP3 = "dnp3"
    TCP = "tcp"
    IP = "ip"
    BASELINE = "baseline"
    SENSOR = "sensor"
    NETWORK = "network"  # link-layer findings: ARP, IP-to-MAC bindings


class MsgType(Enum):
    """The ``type`` of an event, as ``event_to_dict`` spells it."""

    REQUEST = "request"
    RESPONSE = "response"
    UNSOLICITED = "unsolicited"
    LINK = "link"
    ANOMALY = "anomaly"
    DEVIATION = "deviation"
    HEALTH = "health"


class IinBit(Enum):
    """DNP3 internal indications as a mask over ``iin = IIN1 << 8 | IIN2``."""

    ALL_STATIONS = 1 << 8
    CLASS_1_EVENTS = 1 << 9
    CLASS_2_EVENTS = 1 << 10
    CLASS_3_EVENTS = 1 << 11
    NEED_TIME = 1 << 12
    LOCAL_CONTROL = 1 << 13
    DEVICE_TROUBLE = 1 << 14
    DEVICE_RESTART = 1 << 15
    FUNC_NOT_SUPPORTED = 1 << 0
    OBJECT_UNKNOWN = 1 << 1
    PARAMETER_ERROR = 1 << 2
    EVENT_BUFFER_OVERFLOW = 1 << 3
    ALREADY_EXECUTING = 1 << 4
    CONFIG_CORRUPT = 1 << 5
    RESERVED_2_6 = 1 << 6
    RESERVED_2_7 = 1 << 7


class GroupKey(Enum):
    """What a threshold may group or count distinct values by."""

    SRC = "src"
    DST = "dst"
    DPORT = "dport"
    UNIT = "unit"
    LINK_SRC = "link_src"
    LINK_DST = "link_dst"
    FC = "fc"
    ADDRESS = "address"
    EXCEPTION = "exception"


@dataclass(frozen=True, slots=True)
class ObjectPattern:
    """One DNP3 object header pattern; ``None`` fields match anything."""

    groups: frozenset[int]
    variations: frozenset[int] | None = None
    qualifiers: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """Conditions on one event. Every field is optional except ``proto``; all must hold.

    Sets of numbers match membership; ``address`` matches when the event's
    [address, address + quantity) overlaps the inclusive range; ``objects``
    matches when any header fits any pattern; ``iin`` when any named bit is
    set; ``src``/``dst`` name sets from the site config or the baseline.
    """

    proto: frozenset[Proto]
    type: frozenset[MsgType] | None = None
    fc: frozenset[int] | None = None
    sub: frozenset[int] | None = None
    unit: frozenset[int] | None = None
    link_src: frozenset[int] | None = None
    link_dst: frozenset[int] | None = None
    exception: frozenset[int] | None = None
    address: tuple[int, int] | None = None
    objects: tuple[ObjectPattern, ...] | None = None
    iin: int | None = None  # mask of IinBit values
    anomaly: frozenset[str] | None = None
    direction: str | None = None  # "to_server" | "to_client"
    prm: bool | None = None
    unsolicited: bool | None = None
    src: tuple[str, ...] = ()
    dst: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Threshold:
    """Fire once ``count`` matching events (or distinct values) fall within ``window`` seconds."""

    count: int
    window: float
    group_by: tuple[GroupKey, ...] = ()
    distinct: GroupKey | None = None


@dataclass(frozen=True, slots=True)
class Conditions:
    """Named predicates over sets (site config sets and learned ones), checked after a match."""

    src_not_in: tuple[str, ...] = ()
    dst_not_in: tuple[str, ...] = ()
    src_in: tuple[str, ...] = ()
    dst_in: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.src_not_in or self.dst_not_in or self.src_in or self.dst_in)


@dataclass(frozen=True, slots=True)
class Rule:
    """One detection. ``id`` is stable across releases; ``source`` is ``file:line``."""

    id: str
    precursor: str
    title: str
    severity: Severity
    attack: tuple[str, ...]
    match: Match
    description: str = ""
    threshold: Threshold | None = None
    conditions: Conditions = field(default_factory=Conditions)
    guidance: str = ""
    values: bool = False
    source: str = ""


# Sets the engine fills from the baseline/inventory rather than from the config.
# ``learning_masters``: while learning, the clients that poll periodically and have
# raised no alert (not yet learned); empty once enforcing. Rules for what a master
# does at start-up (writes, control, time sync) exempt them; recon rules do not.
LEARNED_SETS = frozenset({"learned_masters", "learned_outstations", "known_masters",
                          "learning_masters"})


@dataclass(frozen=True, slots=True)
class Category:
    """A named family of rules (``categories:`` in a pack): by rule id or by precursor.

    Chains name categories instead of listing every rule, so a site pack that adds a
    write rule with precursor M7 joins every chain step on writes without editing it.
    """

    name: str
    rules: frozenset[str] = frozenset()
    precursors: frozenset[str] = frozenset()
    source: str = ""


@dataclass(frozen=True, slots=True)
class ChainStep:
    """One step of a chain: an alert of any listed rule, precursor or category."""

    name: str
    rules: frozenset[str] = frozenset()
    precursors: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Chain:
    """A campaign: alerts matching ``steps`` in order, on one target, within ``window``.

    "One target" is the outstation (the server of the flow); ``same_source`` also
    requires one client for every step. ``source`` is ``file:line`` like a rule's.
    """

    id: str
    precursor: str
    title: str
    severity: Severity
    attack: tuple[str, ...]
    window: float
    steps: tuple[ChainStep, ...]
    same_source: bool = False
    description: str = ""
    guidance: str = ""
    source: str = ""


class RulePacks(list[Rule]):
    """What ``load_rules`` returns: the rules (it is their list), plus the packs'
    chains and categories, so every path that loads rules and builds a detector
    gets the chains with them."""

    def __init__(self, rules: list[Rule] | tuple[Rule, ...] = (),
                 chains: tuple[Chain, ...] = (),
                 categories: tuple[Category, ...] = ()) -> None:
        super().__init__(rules)
        self.chains = chains
        self.categories = categories
