"""The detection engine: events in, deduplicated and aggregated alerts out.

``Detector.process(events)`` is a pipeline sink. Per event it (1) lets the
inventory observe it, which may reveal baseline deviations, (2) tracks the
little DNP3 protocol state the catalogue needs (Select before Operate,
unsolicited after Disable), (3) runs the candidate rules for the event's
(class, code), and (4) runs the rules over any derived events.

A hit passes the rule's set conditions, then its threshold (a count of events
or of distinct values within a window, per group), then lands in an
*aggregate*: the same rule on the same peers within the dedup window raises
``count`` and ``last_ts`` instead of making another alert, so a looping write
makes one alert with a large count. Time is the events' own, so replay is
deterministic; ``tick(now)`` lets a live daemon drive silence checks by clock.

Storms are bounded twice. Alerts: a rule may open at most ``storm_max_alerts``
distinct alerts per ``storm_window``; past that, and for as long as new keys keep
arriving at that rate, every further occurrence folds into one *storm* aggregate
per (rule, target), and past ``_STORM_TARGETS`` targets into one per rule. Its
evidence says the cap was reached and how many distinct sources it covers (exact
up to a limit, then an upper bound, and it says so), so 30,000 rogue masters
make a few hundred alerts, not 90,000. Memory: every table keyed by something
the sender chooses (threshold groups, protocol state, the set cache, open
aggregates by age) is an :class:`LruTable` or is aged out; what each forgot is
counted in ``stats.evicted``, logged when it first happens, and raised as an S7
health finding (``DETECTION_STATE_FULL``) at most once an hour of packet time per
table. Alerts themselves: the open table (``max_open``) holds what an occurrence
may still join, least recently joined first, so ageing reads only its stale front;
``drain`` returns what changed since the last drain from a table of those alone;
drained alerts stay for ``alerts()`` up to ``max_history``. A daemon that runs for
years holds the same few thousand aggregates on its last day as on its first.
"""

from __future__ import annotations

import ipaddress
import logging
import operator
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.dnp3.events import DNP3Application, DNP3Request, DNP3Unsolicited
from mamori.parsers.events import Event
from mamori.parsers.modbus.events import ModbusRequest
from mamori.parsers.modbus.pdu import WriteSingleCoil, WriteSingleRegister
from mamori.parsers.stream import Transport
from mamori.sensor.detection.aitm import WATCHED, AddressWatch
from mamori.sensor.detection.bounded import DEFAULT_MAX_STATE, LruTable
from mamori.sensor.detection.chains import ChainTracker
from mamori.sensor.detection.derived import DerivedEvent, DerivedKind
from mamori.sensor.detection.floods import WATCHED as FLOOD_WATCHED
from mamori.sensor.detection.floods import FloodWatch
from mamori.sensor.detection.inventory import Inventory
from mamori.sensor.detection.matcher import (
    INDEX_ATTR,
    Bucket,
    Matchable,
    Peers,
    bucket,
    compile_match,
    indexed,
    peers,
)
from mamori.sensor.detection.model import LEARNED_SETS, Category, Chain, GroupKey, Rule
from mamori.sensor.detection.windows import MaintenanceWindow, Windows

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
K = TypeVar("K")
V = TypeVar("V")
_audit = logging.getLogger("mamori.maintenance")  # every alert a maintenance window downgraded

_TICK_EVERY = 1.0  # seconds of event time between clock checks
_STORM_TARGETS = 16  # storm aggregates per rule per window before one rule-wide aggregate
_STORM_SOURCES = 4096  # distinct sources one storm aggregate remembers exactly
_SELECT_TIMEOUT = 10.0  # an Operate more than this after its Select is "without Select"
_SWEEP_RUN = 32  # reads in a row, each beyond the highest address read before: M5 sweep
_SWEEP_FCS = frozenset({1, 2, 3, 4})
_HELD_PER_HOST = 256  # held (rule, peers) per client; past that they are released
DEFAULT_MAX_OPEN = 4 * DEFAULT_MAX_STATE  # aggregates an occurrence may still join
DEFAULT_MAX_HISTORY = DEFAULT_MAX_STATE  # drained aggregates kept for ``alerts()``
_NOTICE_EVERY = 3600.0  # seconds of packet time between two S7 findings for one table
# Tables whose overflow blinds nothing, so they are counted but raise no S7: a cache
# recomputes what it forgot, and drained alerts forgotten from memory are in the store.
_QUIET_TABLES = frozenset({"set cache", "alert history"})


class _Compiled:
    """A rule plus what the engine needs to run it fast."""

    __slots__ = ("chained", "group", "has_sets", "holdable", "index", "rule", "set_checks",
                 "state", "test")

    def __init__(self, index: int, rule: Rule, max_state: int = DEFAULT_MAX_STATE) -> None:
        self.index = index
        self.rule = rule
        # exempts clean pollers while learning: a not-yet-polling client's hit is held
        self.holdable = "learning_masters" in rule.conditions.src_not_in \
            and rule.threshold is None
        self.test = compile_match(rule.match)
        m, c = rule.match, rule.conditions
        # (set names, on the source (else the destination), must be in one (else in none)),
        # in the order _sets_allow has always asked them (the set cache sees the same)
        self.set_checks = tuple(
            (names, on_src, positive) for names, on_src, positive in (
                (m.src, True, True), (m.dst, False, True), (c.src_in, True, True),
                (c.dst_in, False, True), (c.src_not_in, True, False),
                (c.dst_not_in, False, False)) if names)
        self.has_sets = bool(self.set_checks)
        self.group = _grouper(rule.threshold.group_by) if rule.threshold is not None else None
        self.chained = True  # a step of some chain (the detector says once it has them)
        self.state: LruTable[tuple[Any, ...], Any] = LruTable(
            max_state, f"threshold groups of {rule.id}")


class _Aggregate:
    """One alert as it counts up: ``key`` is its place in the open table, ``ident``
    the detector's number for it (``Alert.id``)."""

    __slots__ = ("alert", "count", "ident", "key", "last_ts")

    def __init__(self, alert: Alert, key: tuple[Any, ...]) -> None:
        self.alert = alert
        self.count = 1
        self.last_ts = alert.last_ts
        self.ident = alert.id
        self.key = key

    def materialise(self) -> Alert:
        """The alert as it stands. Alerts are immutable, so one nothing joined since it
        was raised is itself; otherwise a copy with the count and last time (a drain
        materialises every aggregate that changed: ``dataclasses.replace`` cost more
        than the rest of a new alert's path on an alert-heavy capture)."""
        alert = self.alert
        if self.count == alert.count and self.last_ts == alert.last_ts:
            return alert
        return _counted(alert, self.count, self.last_ts, alert.evidence)


class _StormAggregate(_Aggregate):
    """Everything a rule raised against one target past its storm cap, as one alert.

    ``sources`` holds the distinct sources folded in, itself bounded: when it
    reaches ``limit`` its size moves to ``base`` and it starts over, so the count
    stays an upper bound (a source seen before and after a roll-over counts twice)
    and the evidence says it is no longer exact.
    """

    __slots__ = ("base", "limit", "sources")

    def __init__(self, alert: Alert, key: tuple[Any, ...], limit: int) -> None:
        super().__init__(alert, key)
        self.sources: set[object] = set()
        self.base = 0
        self.limit = limit

    def add_source(self, source: object) -> None:
        sources = self.sources
        if source not in sources:
            if len(sources) >= self.limit:
                self.base += len(sources)
                sources.clear()
            sources.add(source)

    @property
    def source_count(self) -> int:
        return self.base + len(self.sources)

    def materialise(self) -> Alert:
        evidence = dict(self.alert.evidence)
        evidence["sources"] = self.source_count
        if self.base:
            evidence["sources_exact"] = False
        return _counted(self.alert, self.count, self.last_ts, evidence)


class _Storm:
    """Per rule: distinct alerts and storm targets opened in the current window."""

    __slots__ = ("new", "storming", "targets", "window_start")

    def __init__(self, ts: float) -> None:
        self.window_start = ts
        self.new = 0
        self.targets = 0
        self.storming = False


class _Held:
    """A learning client's start-up occurrences, waiting to see whether it polls.

    Per alert key (rule and peers, as the alert would aggregate): the first and
    the last occurrence and how many, so a master writing to many points holds a
    few entries, not every write.
    """

    __slots__ = ("count", "items", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.count = 0
        self.items: dict[tuple[Any, ...], list[Any]] = {}  # key -> [compiled, first, last, n]


@dataclass
class DetectorStats:
    events: int = 0
    candidates: int = 0
    hits: int = 0
    alerts: int = 0
    derived: dict[str, int] = field(default_factory=dict)
    storms: int = 0  # storm aggregates opened (a rule hit its storm cap against a target)
    storm_folded: int = 0  # occurrences folded into storm aggregates instead of new alerts
    evicted: dict[str, int] = field(default_factory=dict)  # bounded table -> entries forgotten
    held: int = 0  # occurrences held while their client was learning
    excused: int = 0  # of those, excused because the client turned out to poll
    refused: int = 0  # clients refused as masters because they raised an alert
    chains: int = 0  # campaign chains completed (mamori.sensor.detection.chains)
    maintenance: int = 0  # occurrences recorded at info inside a maintenance window


class _ProtocolState:
    """The little message-to-message state some precursors need.

    DNP3: Select-before-Operate (D7) and unsolicited-after-Disable (D9), per
    link pair. Modbus: a single write that changes a point's value (M11 coil
    toggling counts these; the value itself stays here, never in an alert), and
    per (client, server, unit, read fc) the highest address read and how many
    reads in a row went beyond it (M5 sweep: a poll re-reads its table, so after
    its first cycle it never goes beyond; a sweep always does).
    """

    def __init__(self, max_state: int = DEFAULT_MAX_STATE) -> None:
        # link pair -> (ts, objects, app seq, the SELECT); oldest first
        self._selects: LruTable[tuple[Any, ...],
                                tuple[float, tuple[Any, ...], int, DNP3Request]] = \
            LruTable(max_state, "DNP3 selects")
        self._disabled: LruTable[tuple[Any, ...], bool] = LruTable(
            max_state, "DNP3 unsolicited disabled")
        self._values: LruTable[tuple[Any, ...], int] = LruTable(
            max_state, "Modbus point values")
        self._sweeps: LruTable[tuple[Any, ...], list[Any]] = LruTable(
            max_state, "Modbus address sweeps")  # -> [highest address, run, reported]

    def tables(self) -> tuple[LruTable[Any, Any], ...]:
        return (self._selects, self._disabled, self._values, self._sweeps)

    def _sweep(self, ev: ModbusRequest, address: int) -> DerivedEvent | None:
        """A read of ``address`` (``ev.address``, known to be set) and on."""
        flow = ev.flow
        key = (flow.client, flow.server, ev.unit, ev.fc)
        top = address + max(ev.quantity or 1, 1) - 1
        state = self._sweeps.get(key)
        if state is None:
            _put(self._sweeps, key, [top, 1, False])
            return None
        self._sweeps.move_to_end(key)
        if address <= state[0]:
            state[1], state[2] = 0, False  # back inside what was read: a poll, not a sweep
            return None
        state[0] = top
        state[1] += 1
        if state[1] < _SWEEP_RUN or state[2]:
            return None
        state[2] = True
        return DerivedEvent(ev.ts, DerivedKind.ADDRESS_SWEEP, flow.client, flow.client_port,
                            flow.server, flow.server_port, unit=ev.unit, fc=ev.fc,
                            address=ev.address, quantity=ev.quantity,
                            detail=f"{state[1]} reads in a row, each beyond the highest "
                                   f"address read before (now {top})")

    def observe(self, ev: Event) -> DerivedEvent | None:
        if type(ev) is ModbusRequest:
            if ev.fc in _SWEEP_FCS and ev.address is not None:
                return self._sweep(ev, ev.address)
            pdu = ev.pdu
            if type(pdu) is not WriteSingleCoil and type(pdu) is not WriteSingleRegister:
                return None
            vkey = (ev.flow.client, ev.flow.server, ev.unit, ev.fc, ev.address)
            values = self._values
            before = values.get(vkey)
            if before is None:
                _put(values, vkey, pdu.value)
            else:  # ``put`` of a key held: no growth, so no eviction (and no Python call)
                values.move_to_end(vkey)
                values[vkey] = pdu.value
            if before is None or before == pdu.value:
                return None
            flow = ev.flow
            return DerivedEvent(ev.ts, DerivedKind.VALUE_FLIP, flow.client, flow.client_port,
                                flow.server, flow.server_port, unit=ev.unit, fc=ev.fc,
                                address=ev.address, quantity=1,
                                detail="single write changed the point's value")
        if type(ev) is DNP3Request:
            fc = ev.fc
            if fc not in (3, 4, 20, 21):
                return None
            key = (ev.flow, ev.link_src, ev.link_dst)
            if fc == 3:
                prior = self._selects.get(key)
                signature = _signature(ev)
                _put(self._selects, key, (ev.ts, signature, ev.seq, ev))
                if prior is not None and (prior[1], prior[2]) != (signature, ev.seq):
                    return _derived(prior[3], DerivedKind.SELECT_WITHOUT_OPERATE,
                                    "SELECT followed by another SELECT, no OPERATE between")
            elif fc == 4:
                selected = self._selects.pop(key, None)
                if selected is None or ev.ts - selected[0] > _SELECT_TIMEOUT \
                        or selected[1] != _signature(ev):
                    return _derived(ev, DerivedKind.OPERATE_WITHOUT_SELECT,
                                    "OPERATE without a matching SELECT")
            else:
                _put(self._disabled, key, fc == 21)
            return None
        # A null unsolicited response (no objects) is the outstation's start-up
        # announcement, not event reporting; opendnp3 sends it as the master's
        # DISABLE crosses it on the wire (suricata-verify dnp3-eve shows the same).
        if type(ev) is DNP3Unsolicited and ev.objects and self._disabled.get(
                (ev.flow, ev.link_dst, ev.link_src)):
            return _derived(ev, DerivedKind.UNSOLICITED_AFTER_DISABLE,
                            "unsolicited response after DISABLE_UNSOLICITED, no ENABLE since")
        return None

    def expire(self, now: float) -> list[DerivedEvent]:
        """SELECTs that no OPERATE followed within ``_SELECT_TIMEOUT`` (oldest first)."""
        out = []
        selects = self._selects
        while selects:
            key, (ts, _, _, ev) = next(iter(selects.items()))
            if now - ts <= _SELECT_TIMEOUT:
                break
            del selects[key]
            out.append(_derived(ev, DerivedKind.SELECT_WITHOUT_OPERATE,
                                f"SELECT not followed by an OPERATE within {_SELECT_TIMEOUT:g}s"))
        return out


_STATEFUL = frozenset({DNP3Request, DNP3Unsolicited, ModbusRequest})


def _put(table: LruTable[K, V], key: K, value: V) -> None:
    """``table.put(key, value)``. For a new key, what ``put`` would do is done here when
    the table is below its limit (store it) or at it and has already said it is full
    (store it, forget the oldest, count it): compiled, that spares a call into the
    Python class (an interpreted frame) for each new alert, drained alert and protocol
    state. A held key, a table over its limit, or the first eviction (which logs) go
    to ``put``."""
    if key not in table:
        size = len(table)
        if size < table.limit:
            table[key] = value
            return
        if size == table.limit and table.evicted:
            table[key] = value
            table.popitem(last=False)
            table.evicted += 1
            return
    table.put(key, value)


def _plan(cls: type) -> tuple[str | None, bool, bool, bool]:
    """What ``process`` does with an event of class ``cls``: (its index attribute, or
    None if no rule matches the class; link-layer watched; flood watched; protocol
    state), worked out once per class so an event costs one look-up, not four."""
    return INDEX_ATTR.get(cls), cls in WATCHED, cls in FLOOD_WATCHED, cls in _STATEFUL


_PLANS: dict[type, tuple[str | None, bool, bool, bool]] = {}


def _signature(ev: DNP3Application) -> tuple[Any, ...]:
    return tuple((h.group, h.variation, h.start, h.stop, h.count) for h in ev.objects)


def _derived(ev: DNP3Application, kind: DerivedKind, detail: str) -> DerivedEvent:
    src, sport, dst, dport = ev.flow.endpoints(ev.direction)
    return DerivedEvent(ev.ts, kind, src, sport, dst, dport, link_src=ev.link_src,
                        link_dst=ev.link_dst, fc=ev.fc, detail=detail)


class Detector:
    """Runs rules over events; keeps aggregated alerts; owns the inventory/baseline."""

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        sets: Mapping[str, Iterable[Network | str]] | None = None,
        inventory: Inventory | None = None,
        dedup_window: float = 300.0,
        silence_after: float = 900.0,
        values_allowed: bool = False,
        on_alert: Callable[[Alert], None] | None = None,
        storm_max_alerts: int = 100,
        storm_window: float = 60.0,
        max_state: int = DEFAULT_MAX_STATE,
        hold: float = 30.0,
        chains: Sequence[Chain] | None = None,
        categories: Sequence[Category] | None = None,
        windows: Sequence[MaintenanceWindow] = (),
        max_open: int = DEFAULT_MAX_OPEN,
        max_history: int = DEFAULT_MAX_HISTORY,
    ) -> None:
        if min(storm_max_alerts, max_state, max_open, max_history) < 1:
            raise ValueError("storm_max_alerts, max_state, max_open and max_history must "
                             "be at least 1")
        if not storm_window > 0:
            raise ValueError("storm_window must be longer than 0 s")
        if not hold >= 0:
            raise ValueError("hold must be at least 0 s")
        self.rules = [_Compiled(i, r, max_state) for i, r in enumerate(rules)]
        self.inventory = inventory if inventory is not None else Inventory()
        self.dedup_window = dedup_window
        self.silence_after = silence_after
        self.values_allowed = values_allowed
        self.on_alert = on_alert
        self.storm_max_alerts = storm_max_alerts
        self.storm_window = storm_window
        self.max_state = max_state
        self.stats = DetectorStats()
        self._sets: dict[str, tuple[Network, ...]] = {
            name: tuple(ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n
                        for n in nets)
            for name, nets in (sets or {}).items()}
        self._set_cache: LruTable[tuple[str, str], bool] = LruTable(max_state, "set cache")
        self._cache: dict[tuple[type, object], Bucket[_Compiled]] = {}
        # Derived events' candidates by kind name: a str key hashes in C, where an Enum
        # member's __hash__ is Python (an interpreted frame per finding, compiled).
        self._derived_cache: dict[str, Bucket[_Compiled]] = {}
        # Aggregates by key, least recently joined first: what an occurrence may still
        # join. ``_changed`` holds those new or changed since the last drain (by id, so a
        # drain costs what changed, not what exists); ``_history`` the drained ones for
        # ``alerts()``, least recently changed first. Only ``_changed`` is not capped:
        # what it holds is not stored yet, and ``drain`` empties it.
        self._open: LruTable[tuple[Any, ...], _Aggregate] = LruTable(
            max_open, "open alert aggregates")
        self._changed: dict[int, _Aggregate] = {}
        self._history: LruTable[int, _Aggregate] = LruTable(max_history, "alert history")
        self._next_id = 1
        self._noticed: dict[str, tuple[int, float]] = {}  # table -> (evicted, when said)
        self._storms: dict[str, _Storm] = {}  # rule id -> its storm window
        self._sequence = _ProtocolState(max_state)
        self.hold = hold
        self._held: LruTable[str, _Held] = LruTable(max_state, "held start-up occurrences")
        self._watch = AddressWatch(self.inventory, max_state)
        self._floods = FloodWatch(max_state)  # D16-D18: DNP3 replays, sequences, confirms
        self._last_ts: float | None = None
        self._next_tick = float("-inf")
        self._next_age = float("-inf")
        self._silent = False
        # Campaign chains (default: those loaded with the rules) and maintenance windows.
        self._chains = ChainTracker(
            rules, getattr(rules, "chains", ()) if chains is None else chains,
            getattr(rules, "categories", ()) if categories is None else categories,
            max_targets=max_state)
        for compiled in self.rules:
            compiled.chained = self._chains.follows(compiled.rule.id)
        self._windows = Windows(windows, max_state)
        self._windowed = bool(self._windows.windows)  # asked on every hit; fixed

    # -- public -----------------------------------------------------------------------

    def process(self, events: Sequence[Event]) -> None:
        """Sink for pipeline batches (the events of one packet or of several, in order)."""
        inventory = self.inventory
        observe = inventory.observe
        sequence = self._sequence.observe
        cache = self._cache
        hit = self._hit
        plans = _PLANS
        last_ts = self._last_ts
        next_tick = self._next_tick  # only _clock moves it
        for ev in events:
            ts = ev.ts
            if ts >= next_tick:
                self._last_ts = last_ts
                self._clock(ts)
                next_tick = self._next_tick
            if last_ts is None or ts > last_ts:
                last_ts = ts
            cls = ev.__class__
            plan = plans.get(cls)
            if plan is None:
                plan = plans[cls] = _plan(cls)
            attr, watched, flood, stateful = plan
            if attr is None:
                if watched:  # ARP and flow MAC pairs: link-layer findings
                    for d in self._watch.observe(ev):
                        self._run_derived(d)
                continue
            if flood:
                flooded = self._floods.observe(ev)
                if flooded is not None:
                    for d in flooded:
                        self._run_derived(d)
            derived = observe(ev)
            if inventory.new_pollers:
                self._excuse()
            code = getattr(ev, attr)
            rules = cache.get((cls, code))
            if rules is None:
                rules = cache[(cls, code)] = self._candidates(cls, code)
            split, by_value, candidates = rules
            if split is not None:
                candidates = by_value.get(getattr(ev, split, None), candidates)
            p: Peers | None = None  # made for the first rule hit, shared by the others
            for compiled, test in candidates:
                if test is None or test(ev):
                    if p is None:
                        p = peers(ev)
                    hit(compiled, ev, p)
            if stateful:
                found = sequence(ev)
                if found is not None:
                    self._run_derived(found)
            if derived:
                for d in derived:
                    self._run_derived(d)
        self._last_ts = last_ts
        self.stats.events += len(events)

    def adopt(self, old: Detector) -> None:
        """Carry open aggregates and protocol state over from ``old`` (a rules reload).

        Aggregates are keyed by rule id, not by position, so a reloaded pack keeps
        counting the alerts it already raised instead of raising them again.
        """
        self._open = old._open
        self._changed = old._changed
        self._history = old._history
        self._next_id = old._next_id
        self._noticed = old._noticed
        self._storms = old._storms
        self._sequence = old._sequence
        self._held = old._held
        self._watch = old._watch
        self._floods = old._floods
        self._chains.adopt(old._chains)
        self._last_ts = old._last_ts
        self._silent = old._silent
        self.stats = old.stats

    def tick(self, now: float) -> None:
        """Clock-driven checks (silence, stopped cycles); replay calls it with packet time."""
        self._clock(now)

    def alerts(self) -> list[Alert]:
        """Every alert so far, aggregated, oldest first.

        This is the end of a run: occurrences still held (a learning client that
        has not shown it polls) are released first, never dropped. Alerts already
        drained are kept for it up to ``max_history`` (the least recently changed
        go first, counted as "alert history"); those never drained are all here.
        """
        self.settle()
        kept = {**self._history, **self._changed}
        return [kept[ident].materialise() for ident in sorted(kept)]

    def settle(self) -> None:
        """Release every held occurrence (end of a run, or learning has ended)."""
        while self._held:
            self._release(next(iter(self._held)))

    def state_sizes(self) -> dict[str, int]:
        """Entries held per piece of per-source state (what the storm bounds keep small)."""
        inv = self.inventory
        return {
            "open_aggregates": len(self._open),
            "alerts": len(self._history.keys() | self._changed.keys()),
            "undrained": len(self._changed),
            "threshold_groups": max((len(c.state) for c in self.rules), default=0),
            "protocol_state": max(len(t) for t in self._sequence.tables()),
            "address_bindings": max(len(t) for t in self._watch.tables()),
            "flood_state": max(len(t) for t in self._floods.tables()),
            "set_cache": len(self._set_cache),
            "held": len(self._held),
            "chain_partials": self._chains.partials(),
            **inv.state_sizes(),
        }

    def evictions(self) -> dict[str, int]:
        """Entries each bounded table has forgotten (also kept in ``stats.evicted``)."""
        tables: list[LruTable[Any, Any]] = [c.state for c in self.rules]
        tables += [*self._sequence.tables(), *self._watch.tables(), self._set_cache,
                   self._held, *self._floods.tables(), self._open, self._history]
        out = {t.name: t.evicted for t in tables if t.evicted}
        out.update({k: v for k, v in self._floods.evicted.items() if v})
        out.update({k: v for k, v in self.inventory.evicted.items() if v})
        out.update(self._chains.evictions())
        self.stats.evicted = out
        return out

    def drain(self) -> list[Alert]:
        """Alerts new or changed since the last drain (what a store must write), oldest
        first. Costs what changed: a daemon drains every second."""
        changed = self._changed
        if not changed:
            return []
        self._changed = {}
        history = self._history
        out = []
        for ident in sorted(changed):
            agg = changed[ident]
            _put(history, ident, agg)
            out.append(agg.materialise())
        return out

    # -- internals --------------------------------------------------------------------

    def _candidates(self, cls: type, code: object) -> Bucket[_Compiled]:
        return bucket([(c, c.rule.match) for c in self.rules if indexed(c.rule, cls, code)])

    def _clock(self, now: float) -> None:
        self._next_tick = now + _TICK_EVERY
        if now >= self._next_age:
            self._age(now)
        last = self._last_ts
        if last is not None and self.silence_after > 0 and now - last > self.silence_after:
            if not self._silent:
                self._silent = True
                self._run_derived(DerivedEvent(
                    last + self.silence_after, DerivedKind.SILENCE,
                    detail=f"no ICS traffic for {now - last:.0f}s "
                           f"(limit {self.silence_after:.0f}s)"))
        else:
            self._silent = False
        for d in self.inventory.tick(now):
            self._run_derived(d)
        for d in self._sequence.expire(now):
            self._run_derived(d)
        if self._held:
            if self.inventory.enforcing:
                self.settle()
            else:
                self._expire(now)

    # -- learning: hold, excuse, release, refuse ---------------------------------------

    def _hold(self, compiled: _Compiled, ev: Matchable, p: Peers, src: str) -> None:
        """A start-up action (write, control, time sync) from a learning client that
        does not poll yet: kept back for ``hold`` seconds. If the client shows a
        regular read cycle by then it was a master starting up (excused, counted);
        otherwise, or if it raises any other alert, the occurrences become alerts
        with their own times."""
        held = self._held.get(src)
        if held is None:
            if len(self._held) >= self._held.limit:  # full: the oldest become alerts now,
                self._release(next(iter(self._held)))  # rather than be forgotten
            held = _Held(ev.ts)
            self._held.put(src, held)
        self.stats.held += 1
        held.count += 1
        key = _alert_key(compiled.rule, p)
        item = held.items.get(key)
        if item is None:
            held.items[key] = [compiled, ev, ev, 1]
            if len(held.items) > _HELD_PER_HOST:
                self._release(src)
        else:
            item[2] = ev
            item[3] += 1

    def _excuse(self) -> None:
        inv = self.inventory
        for ip in inv.new_pollers:
            held = self._held.pop(ip, None)
            if held is not None:
                inv.excuse(ip, held.count)
                self.stats.excused += held.count
        inv.new_pollers.clear()

    def _release(self, src: str) -> None:
        held = self._held.pop(src, None)
        if held is None:
            return
        for key, (compiled, first, last, count) in held.items.items():
            self._hit(compiled, first, peers(first), released=True)
            if count > 1:
                self._hit(compiled, last, peers(last), released=True)
                agg = self._open.get(key)
                if agg is not None and count > 2 \
                        and last.ts - agg.last_ts <= self.dedup_window:
                    agg.count += count - 2

    def _expire(self, now: float) -> None:
        expired = [ip for ip, held in self._held.items() if now - held.since > self.hold]
        for ip in expired:
            self._release(ip)

    def _refuse(self, rule: Rule, p: Peers, ev: Matchable) -> None:
        """An alert at medium or above: its source, if a learning client, is refused
        as a master (and its held occurrences released); what triggered it is not
        learned."""
        if rule.severity < Severity.MEDIUM or p.src is None:
            return
        inv = self.inventory
        if inv.enforcing:
            return
        inv.unlearn(ev)
        # the reason (a formatted time) is written only for a host it refuses: most
        # alerts come from hosts that are no candidate
        if inv.refusable(p.src) and inv.refuse(
                p.src, f"{rule.id} ({rule.precursor}) at {_when(ev.ts)}"):
            self.stats.refused += 1
        if p.src in self._held:
            self._release(p.src)

    def _age(self, now: float) -> None:
        """Forget open aggregates no occurrence can join any more (quiet past the window).

        They stay in the history (and the store); only the per-peers look-up goes, so
        the look-up table holds what the last dedup window raised, not all history.
        The table is in the order aggregates were last joined, so this reads only
        the stale ones at its front (an aggregate opened by a released occurrence may
        sit behind a younger one: it goes at a later pass, or to the cap).
        """
        self._next_age = now + max(self.dedup_window / 4, _TICK_EVERY)
        window = self.dedup_window
        open_ = self._open
        while open_:
            key, agg = next(iter(open_.items()))
            if now - agg.last_ts <= window:
                break
            del open_[key]
        for d in self._full(now, self.evictions()):
            self._run_derived(d)

    def _full(self, now: float, evicted: Mapping[str, int]) -> list[DerivedEvent]:
        """S7 for each table that forgot entries since it was last reported, at most
        once per ``_NOTICE_EVERY`` of packet time per table (the flood tables report
        themselves; a cache and the drained history blind nothing)."""
        out: list[DerivedEvent] = []
        floods = self._floods
        own = {t.name for t in floods.tables()} | set(floods.evicted)
        for name, count in evicted.items():
            if name in own or name in _QUIET_TABLES:
                continue
            said = self._noticed.get(name)
            if said is not None and (said[0] == count or now - said[1] < _NOTICE_EVERY):
                continue
            self._noticed[name] = (count, now)
            out.append(DerivedEvent(
                now, DerivedKind.DETECTION_STATE_FULL,
                detail=f"detection table '{name}' full: {count} entries forgotten so far, "
                       "least recently used first; what they held is not seen"))
        return out

    def _new_id(self) -> int:
        ident = self._next_id
        self._next_id = ident + 1
        return ident

    def _opened(self, agg: _Aggregate) -> None:
        _put(self._open, agg.key, agg)
        self._changed[agg.ident] = agg

    def _joined(self, agg: _Aggregate) -> None:
        self._open.move_to_end(agg.key)
        self._changed[agg.ident] = agg

    def _run_derived(self, ev: DerivedEvent) -> None:
        kind = ev.kind
        name: str = kind._name_  # ``kind.name`` is an Enum property: interpreted, compiled
        derived = self.stats.derived
        derived[name] = derived.get(name, 0) + 1
        found = self._derived_cache.get(name)
        if found is None:
            found = self._derived_cache[name] = self._candidates(DerivedEvent, kind)
        split, by_value, candidates = found
        if split is not None:
            candidates = by_value.get(getattr(ev, split, None), candidates)
        p: Peers | None = None
        for compiled, test in candidates:
            if test is None or test(ev):
                if p is None:
                    p = peers(ev)
                self._hit(compiled, ev, p)

    def _in_set(self, name: str, ip: str | None) -> bool:
        if ip is None:
            return False
        if name in LEARNED_SETS:  # the inventory's attribute of that name
            learned: set[str] = getattr(self.inventory, name)
            return ip in learned
        key = (name, ip)
        hit = self._set_cache.get(key)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
                hit = any(addr in net for net in self._sets.get(name, ()))
            except ValueError:
                hit = False
            self._set_cache.put(key, hit)
        return hit

    def _sets_allow(self, compiled: _Compiled, p: Peers) -> bool:
        """The rule's ``src``/``dst`` set matches and its set conditions, in that order."""
        in_set = self._in_set
        for names, on_src, positive in compiled.set_checks:
            ip = p.src if on_src else p.dst
            found = False
            for name in names:
                if in_set(name, ip):
                    found = True
                    break
            if found is not positive:
                return False
        return True

    def _hit(self, compiled: _Compiled, ev: Matchable, p: Peers, released: bool = False
             ) -> None:
        """One event ``ev`` (whose peers are ``p``) met every check of a rule."""
        stats = self.stats
        stats.candidates += 1
        rule = compiled.rule
        if compiled.has_sets and not self._sets_allow(compiled, p):
            return
        if compiled.holdable and not released and p.src is not None \
                and self.inventory.holdable(p.src):
            self._hold(compiled, ev, p, p.src)
            return
        threshold = rule.threshold
        ts = ev.ts
        if threshold is not None:
            assert compiled.group is not None
            group = compiled.group(p, ev)
            if not self._threshold(compiled, group, ev, p):
                return
            key: tuple[Any, ...] = (rule.id, group)
        else:  # _alert_key, inline
            key = (rule.id, p.src, p.dst, p.server_port, p.unit, p.link_src, p.link_dst)
        stats.hits += 1
        window = self._windows.covering(rule, p, ts) if self._windowed else None
        if window is not None:  # its own aggregate: never folded into a full-severity one
            key = (*key, "maintenance", window.name)
            stats.maintenance += 1
        agg = self._open.get(key)
        if agg is not None and ts - agg.last_ts <= self.dedup_window:
            agg.count += 1
            if ts > agg.last_ts:
                agg.last_ts = ts
            self._open.move_to_end(key)  # _joined, inline: the hot path of a looping write
            self._changed[agg.ident] = agg
            if window is None and compiled.chained:
                self._chain_step(agg, p, ts)
            return
        if window is None and self._storming(rule.id, ts):
            self._fold(rule, p, ev, ts, key)
            return
        alert = Alert(
            rule=rule.id, precursor=rule.precursor, severity=rule.severity,
            attack=rule.attack, title=rule.title, proto=p.proto, first_ts=ts, last_ts=ts,
            count=1, src=p.src, sport=p.sport, dst=p.dst, dport=p.dport, unit=p.unit,
            link_src=p.link_src, link_dst=p.link_dst,
            evidence=self._evidence(rule, ev), id=self._new_id())
        if window is not None:
            alert = self._windows.downgrade(alert, window)
        agg = _Aggregate(alert, key)
        self._opened(agg)
        self.stats.alerts += 1
        if self.on_alert is not None:
            self.on_alert(alert)
        if window is not None:
            _audit.info("%s: %s (%s, %s) from %s to %s recorded at info inside maintenance "
                        "window %s (alert %d)", _when(ts), rule.id, rule.precursor,
                        rule.severity.label, p.src, p.dst, window.name, alert.id)
            return  # sanctioned work: no chain step, and no refusal as a master
        self._chain_step(agg, p, ts)
        self._refuse(rule, p, ev)

    def _chain_step(self, agg: _Aggregate, p: Peers, ts: float) -> None:
        """One more occurrence of ``agg``: a step of a campaign chain? Raises the chain
        alert when one completes (aggregated like any alert: the same chain on the same
        target within the dedup window counts up)."""
        if not self._chains:
            return
        for key, chain_id, make in self._chains.observe(agg.alert.rule, agg.alert.id, ts, p):
            self.stats.chains += 1
            open_ = self._open.get(key)
            fresh = open_ is None or ts - open_.last_ts > self.dedup_window
            alert: Alert | None = None  # made only when no open aggregate takes it
            if fresh and self._storming(chain_id, ts):  # many targets: one alert for all
                key = ("chain", chain_id, "storm")
                open_ = self._open.get(key)
                alert = _chain_storm(make(0), self.storm_max_alerts, self.storm_window)
            if open_ is not None and ts - open_.last_ts <= self.dedup_window:
                open_.count += 1
                open_.last_ts = max(open_.last_ts, ts)
                self._joined(open_)
                continue
            alert = make(self._new_id()) if alert is None else replace(alert, id=self._new_id())
            self._opened(_Aggregate(alert, key))
            self.stats.alerts += 1
            if self.on_alert is not None:
                self.on_alert(alert)

    def _storming(self, rule_id: str, ts: float) -> bool:
        """Count one new alert key for the rule; True when it must fold into a storm.

        A window that opened ``storm_max_alerts`` keys or more keeps the next window
        storming, so a storm that lasts hours stays folded instead of letting
        another ``storm_max_alerts`` alerts through each window.
        """
        storm = self._storms.get(rule_id)
        if storm is None:
            storm = self._storms[rule_id] = _Storm(ts)
        elif ts - storm.window_start > self.storm_window:
            recent = ts - storm.window_start <= 2 * self.storm_window
            storm.storming = recent and storm.new >= self.storm_max_alerts
            storm.window_start = ts
            storm.new = 0
            storm.targets = 0
        storm.new += 1
        if storm.new > self.storm_max_alerts:
            storm.storming = True
        return storm.storming

    def _fold(self, rule: Rule, p: Peers, ev: Matchable, ts: float, key: tuple[Any, ...]
              ) -> None:
        """One occurrence past the storm cap: into the (rule, target) storm aggregate.

        A storm that also spreads over targets folds, past ``_STORM_TARGETS`` storm
        aggregates of the rule in one window, into a single rule-wide aggregate
        (no destination), so the alert count stays bounded whatever the shape.
        """
        stats = self.stats
        stats.storm_folded += 1
        source: object = p.src if p.src is not None else key[1:]
        skey: tuple[Any, ...] = (rule.id, "storm", p.dst, p.server_port)
        agg = self._open.get(skey)
        if (agg is None or ts - agg.last_ts > self.dedup_window) \
                and self._storms[rule.id].targets >= _STORM_TARGETS:
            skey = (rule.id, "storm", None, None)
            agg = self._open.get(skey)
        if isinstance(agg, _StormAggregate) and ts - agg.last_ts <= self.dedup_window:
            agg.count += 1
            if ts > agg.last_ts:
                agg.last_ts = ts
            agg.add_source(source)
            self._joined(agg)
            self._chain_step(agg, p, ts)
            return
        wide = skey[2] is None and skey[3] is None
        if not wide:
            self._storms[rule.id].targets += 1
        evidence = self._evidence(rule, ev)
        evidence.update({
            "storm": True, "sources": 1, "cap": self.storm_max_alerts,
            "window": self.storm_window,
            "detail": f"storm cap reached: more than {self.storm_max_alerts} distinct alerts "
                      f"of this rule within {self.storm_window:g}s; further occurrences "
                      + ("against any target" if wide else "against this target")
                      + " are counted here, with the number of sources they came from"})
        alert = Alert(
            rule=rule.id, precursor=rule.precursor, severity=rule.severity,
            attack=rule.attack, title=f"{rule.title} (storm, many sources)", proto=p.proto,
            first_ts=ts, last_ts=ts, count=1,
            dst=None if wide else p.dst, dport=None if wide else p.server_port,
            evidence=evidence, id=self._new_id())
        folded = _StormAggregate(alert, skey, min(self.max_state, _STORM_SOURCES))
        folded.add_source(source)
        self._opened(folded)
        stats.storms += 1
        stats.alerts += 1
        if self.on_alert is not None:
            self.on_alert(folded.materialise())
        self._chain_step(folded, p, ts)
        self._refuse(rule, p, ev)

    def _threshold(self, compiled: _Compiled, group: tuple[Any, ...], ev: Matchable,
                   p: Peers) -> bool:
        threshold = compiled.rule.threshold
        assert threshold is not None
        state = compiled.state
        ts = ev.ts
        if threshold.distinct is None:
            # A plain list of the last ``count`` times: a deque's first block alone is
            # ~600 bytes, and there is one of these per group.
            times = state.get(group)
            if times is None:
                times = []
                _put(state, group, times)
            else:
                state.move_to_end(group)
            times.append(ts)
            if len(times) > threshold.count:
                del times[0]
            return len(times) == threshold.count and ts - times[0] <= threshold.window
        seen = state.get(group)
        if seen is None:
            seen = {}
            _put(state, group, seen)
        else:
            state.move_to_end(group)
        # Most recent last; only the newest ``count`` distinct values can decide
        # whether ``count`` of them fall within the window, so no more are kept.
        value = _group_value(threshold.distinct, p, ev)
        seen.pop(value, None)
        seen[value] = ts
        if len(seen) < threshold.count:
            return False
        while len(seen) > threshold.count:
            del seen[next(iter(seen))]
        for value, when in list(seen.items()):
            if ts - when > threshold.window:
                del seen[value]
        return len(seen) >= threshold.count

    def _evidence(self, rule: Rule, ev: Matchable) -> dict[str, Any]:
        """Metadata of the first matching event: codes, ranges, objects; no values."""
        out: dict[str, Any] = {}
        for attr in ("fc", "sub", "exception", "iin", "address", "quantity", "unsolicited"):
            value = getattr(ev, attr, None)
            if value is not None:
                out[attr] = value
        function = getattr(ev, "function", None)  # a DNP3 link frame's function code
        if function is not None and type(ev) is not DerivedEvent:
            out["fc"] = function
        kind = getattr(ev, "kind", None)
        if kind is not None:
            out["anomaly"] = kind.name
        detail = getattr(ev, "detail", "")
        if detail:
            out["detail"] = detail
        objects = getattr(ev, "objects", None)
        if objects:
            out["objects"] = [{"group": h.group, "variation": h.variation,
                               "qualifier": h.qualifier, "start": h.start, "stop": h.stop,
                               "count": h.count} for h in objects]
        flow = getattr(ev, "flow", None)
        if flow is not None and flow.transport is Transport.UDP:
            out["transport"] = "udp"  # DNP3 over UDP: the SIEM record's flow hash needs it
        if rule.values and self.values_allowed:
            pdu = getattr(ev, "pdu", None)
            if isinstance(pdu, WriteSingleCoil | WriteSingleRegister):
                out["value"] = pdu.value
        return out


def _group_value(key: GroupKey, p: Peers, ev: Matchable) -> Any:
    if key is GroupKey.SRC:
        return p.src
    if key is GroupKey.DST:
        return p.dst
    if key is GroupKey.DPORT:
        return p.server_port
    if key is GroupKey.UNIT:
        return p.unit
    if key is GroupKey.LINK_SRC:
        return p.link_src
    if key is GroupKey.LINK_DST:
        return p.link_dst
    return getattr(ev, key.value, None)


def _grouper(keys: Sequence[GroupKey]) -> Callable[[Peers, Matchable], tuple[Any, ...]]:
    """``tuple(_group_value(k, p, ev) for k in keys)``, worked out per rule once:
    a threshold's group is read on every hit. Peer fields come first, by name; what
    follows them (``address``, ``fc``, ...) from the event."""
    peer_field = {GroupKey.SRC: "src", GroupKey.DST: "dst", GroupKey.DPORT: "server_port",
                  GroupKey.UNIT: "unit", GroupKey.LINK_SRC: "link_src",
                  GroupKey.LINK_DST: "link_dst"}
    lead = 0
    while lead < len(keys) and keys[lead] in peer_field:
        lead += 1
    names = tuple(k.value for k in keys[lead:])
    if not lead or any(k in peer_field for k in keys[lead:]):
        return lambda p, ev: tuple(_group_value(k, p, ev) for k in keys)
    fields = [peer_field[k] for k in keys[:lead]]
    head: Callable[[Peers], tuple[Any, ...]]
    if lead == 1:
        (only,) = fields
        head = lambda p: (getattr(p, only),)  # noqa: E731
    else:
        head = operator.attrgetter(*fields)
    if not names:
        return lambda p, ev: head(p)
    if len(names) == 1:
        (name,) = names
        return lambda p, ev: (*head(p), getattr(ev, name, None))
    return lambda p, ev: (*head(p), *[getattr(ev, n, None) for n in names])


def _counted(a: Alert, count: int, last_ts: float, evidence: Mapping[str, Any]) -> Alert:
    """``replace(a, count=count, last_ts=last_ts, evidence=evidence)``, field by field
    (``tests/sensor/test_engine_materialise.py`` holds it to every field of ``Alert``)."""
    return Alert(a.rule, a.precursor, a.severity, a.attack, a.title, a.proto, a.first_ts,
                 last_ts, count, a.src, a.sport, a.dst, a.dport, a.unit, a.link_src,
                 a.link_dst, evidence, a.id)


def _chain_storm(alert: Alert, cap: int, window: float) -> Alert:
    """A chain completed past the storm cap: the rule-wide aggregate that counts the
    rest (its steps are those of the first completion folded into it)."""
    evidence = dict(alert.evidence)
    evidence.update({"storm": True, "cap": cap, "window": window,
                     "detail": f"storm cap reached: more than {cap} alerts of this chain "
                               f"within {window:g}s; further completions against any "
                               f"target are counted here (first: {evidence.get('detail')})"})
    return replace(alert, title=f"{alert.title} (storm, many targets)", src=None, dst=None,
                   dport=None, evidence=evidence)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _alert_key(rule: Rule, p: Peers) -> tuple[Any, ...]:
    """What an unthresholded rule's occurrences aggregate by."""
    return (rule.id, p.src, p.dst, p.server_port, p.unit, p.link_src, p.link_dst)
