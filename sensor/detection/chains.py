"""Campaign chains: step alerts in order on one target within a window make one alert.

A rule pack's ``chains:`` (``rules/chains.yaml``) say, for example, "reconnaissance,
then a write, control, restart or programming on the same outstation within an
hour". The engine tells :class:`ChainTracker` of every alert occurrence (a new
alert or one more count of an open one) with the alert's id; when an occurrence
completes a chain, the tracker gives back one alert naming every step: the step,
the rule, the alert id and the time. A step's alert id is the detector's number for
the aggregate; the store maps it to its row id when it writes the chain alert
(:meth:`mamori.sensor.alerting.store.Store.resolve_steps`), so the ids in a stored or forwarded
chain alert are those the operator and the collector know the step alerts by.

Progress is greedy and ordered: an occurrence that fits the next step advances the
partial chain; one that fits the first step while only the first is done restarts
it from the newer time (the window counts from the latest reconnaissance, not the
first); a partial older than the window is dropped (``expired``). An occurrence
never fills two steps.

State is bounded and counted: partial chains live per target (the outstation),
at most ``per_target`` of them (chains times sources for ``same_source`` chains),
oldest first out; targets are an :class:`LruTable` of ``max_targets``. What either
forgot is in :meth:`ChainTracker.evictions`, which the engine adds to its own.
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mamori.parsers.alerts import Alert
from mamori.sensor.detection.bounded import DEFAULT_MAX_STATE, LruTable, log
from mamori.sensor.detection.matcher import Peers, roles
from mamori.sensor.detection.model import Category, Chain, ChainStep, Rule

DEFAULT_PER_TARGET = 32  # partial chains per outstation (chains x sources)
PER_TARGET_TABLE = "chain partials per target"
TARGETS_TABLE = "chain targets"


class StepHit:
    """One completed step: which alert, of which rule, when, from which client.

    A plain slotted class, not a frozen dataclass: one is made for nearly every
    occurrence of a step alert (a reconnaissance alert that counts up restarts its
    partial chain from the newer time), and compiled (mypyc) this is a native class
    whose constructor is a few stores, where a frozen dataclass's generated
    ``__init__`` stays an interpreted frame. Nothing changes one once made."""

    __slots__ = ("alert", "client", "rule", "step", "ts")

    def __init__(self, step: str, rule: str, alert: int, ts: float, client: str | None
                 ) -> None:
        self.step = step
        self.rule = rule
        self.alert = alert
        self.ts = ts
        self.client = client


class _Partial:
    __slots__ = ("steps",)

    def __init__(self, first: StepHit) -> None:
        self.steps = [first]


def step_matches(step: ChainStep, rule: Rule, categories: dict[str, Category]) -> bool:
    if rule.id in step.rules or rule.precursor in step.precursors:
        return True
    for name in step.categories:
        category = categories.get(name)
        if category is not None and (rule.id in category.rules
                                     or rule.precursor in category.precursors):
            return True
    return False


class ChainTracker:
    """Partial chains per target; ``observe`` returns the chain alerts completed."""

    def __init__(self, rules: Iterable[Rule], chains: Sequence[Chain],
                 categories: Iterable[Category] = (), *,
                 max_targets: int = DEFAULT_MAX_STATE,
                 per_target: int = DEFAULT_PER_TARGET) -> None:
        if per_target < 1:
            raise ValueError("per_target must be at least 1")
        self.chains = tuple(chains)
        by_name = {c.name: c for c in categories}
        index: dict[str, list[tuple[int, frozenset[int]]]] = {}
        for rule in rules:
            for ci, chain in enumerate(self.chains):
                steps = frozenset(i for i, s in enumerate(chain.steps)
                                  if step_matches(s, rule, by_name))
                if steps:
                    index.setdefault(rule.id, []).append((ci, steps))
        self._index = {k: tuple(v) for k, v in index.items()}
        # rule id -> does it fill the first step of some chain (can it start a partial?)
        self._starts = {k: any(0 in steps for _, steps in v) for k, v in index.items()}
        self.per_target = per_target
        self._targets: LruTable[str, OrderedDict[tuple[int, str | None], _Partial]] = \
            LruTable(max_targets, TARGETS_TABLE)
        self.evicted = 0  # partials forgotten because their target had per_target already
        self.expired = 0  # partials dropped because the window passed
        self.completed = 0

    def __bool__(self) -> bool:
        return bool(self._index)

    def follows(self, rule_id: str) -> bool:
        """Is an alert of ``rule_id`` a step of any chain? (``observe`` ignores it if not.)"""
        return rule_id in self._index

    def adopt(self, old: ChainTracker) -> None:
        """A rules reload: keep the partial chains when the chains are the same ones."""
        if [c.id for c in old.chains] == [c.id for c in self.chains]:
            self._targets = old._targets
            self.evicted, self.expired = old.evicted, old.expired
            self.completed = old.completed

    def partials(self) -> int:
        return sum(len(t) for t in self._targets.values())

    def evictions(self) -> dict[str, int]:
        out = {}
        if self._targets.evicted:
            out[TARGETS_TABLE] = self._targets.evicted
        if self.evicted:
            out[PER_TARGET_TABLE] = self.evicted
        return out

    def observe(self, rule_id: str, alert_id: int, ts: float,
                p: Peers) -> list[tuple[tuple[Any, ...], str, Callable[[int], Alert]]]:
        """One occurrence of alert ``alert_id`` of ``rule_id``; returns (aggregation
        key, chain id, maker of the alert given its id) for each chain it completes.

        The alert is made only when asked: a chain that completes again and again
        joins its open aggregate, and that needs only the key."""
        index = self._index.get(rule_id)
        if index is None:
            return []
        client, target = roles(p)
        if target is None:
            return []
        targets = self._targets
        table = targets.get(target)
        if table is None:
            if not self._starts[rule_id]:  # nothing to advance, nothing to start
                if len(targets) >= targets.limit:  # a new target pushes the oldest out,
                    targets.put(target, OrderedDict())  # as when its table was made
                    del targets[target]  # and dropped empty
                return []
            table = OrderedDict()
            targets.put(target, table)
        else:
            targets.move_to_end(target)
        out: list[tuple[tuple[Any, ...], str, Callable[[int], Alert]]] = []
        for ci, steps in index:
            chain = self.chains[ci]
            key = (ci, client if chain.same_source else None)
            partial = table.get(key)
            if partial is not None and ts - partial.steps[0].ts > chain.window:
                del table[key]
                self.expired += 1
                partial = None
            if partial is None:
                if 0 in steps:
                    self._start(table, key, StepHit(chain.steps[0].name, rule_id, alert_id,
                                                    ts, client))
                continue
            done = partial.steps
            last = done[-1]
            if len(done) in steps and ts >= last.ts and alert_id != last.alert:
                done.append(StepHit(chain.steps[len(done)].name, rule_id, alert_id, ts,
                                    client))
                if len(done) == len(chain.steps):
                    del table[key]
                    self.completed += 1
                    akey = ("chain", chain.id, target, client if chain.same_source else None)
                    make = functools.partial(self._alert, chain, target, done, p)
                    out.append((akey, chain.id, make))
            elif 0 in steps and len(done) == 1 and ts >= last.ts:
                done[0] = StepHit(chain.steps[0].name, rule_id, alert_id, ts, client)
        if not table:
            self._targets.pop(target, None)
        return out

    def _start(self, table: OrderedDict[tuple[int, str | None], _Partial],
               key: tuple[int, str | None], first: StepHit) -> None:
        table[key] = _Partial(first)
        while len(table) > self.per_target:
            table.popitem(last=False)
            if self.evicted == 0:
                log.warning("detection state %s full (%d entries): forgetting the oldest",
                            PER_TARGET_TABLE, self.per_target)
            self.evicted += 1

    @staticmethod
    def _alert(chain: Chain, target: str, done: list[StepHit], p: Peers, ident: int) -> Alert:
        last = done[-1]
        clients = {s.client for s in done}
        steps = [{"step": s.step, "rule": s.rule, "alert": s.alert, "ts": s.ts,
                  "time": _when(s.ts)} for s in done]
        names = " -> ".join(f"{s['step']} ({s['rule']} at {s['time']})" for s in steps)
        evidence = {
            "chain": chain.id, "window": chain.window, "same_source": chain.same_source,
            "steps": steps, "clients": len(clients),
            "detail": f"{len(done)} steps on {target} within "
                      f"{last.ts - done[0].ts:.0f}s (window {chain.window:g}s): {names}"}
        alert = Alert(
            rule=chain.id, precursor=chain.precursor, severity=chain.severity,
            attack=chain.attack, title=chain.title, proto=p.proto, first_ts=done[0].ts,
            last_ts=last.ts, count=1, src=last.client, dst=target, dport=p.server_port,
            evidence=evidence, id=ident)
        return alert


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
