"""One session: a source wired to the event consumers and the alert outputs.

``mamori run`` (live interfaces) and ``mamori replay`` (capture files, Zeek logs)
both run through a Session, so they store and forward alike, on the same cadence::

    source                  events               Session.feed ─ fan_out, in order
    live interfaces ─frames─▶ pipeline ──┐           ├──▶ detector (+ inventory, baseline)
    capture files   ─frames─▶ pipeline ──┼──────────▶├──▶ event log (--events)
    Zeek logs       ─rows───▶ mapper   ──┘           └──▶ event counts (metrics), ...
                                                 │
         every FLUSH_EVERY s of the session's clock: the daemon's wall clock
         (Session.tick, once a second), or in replay the packets' own time (feed
         cuts a batch where a flush falls due, so a long capture flushes as it goes)
                                                 ▼
               detector.drain() ─▶ AlertOutputs.publish: the store, then the journal
                                                 │ every PERSIST_EVERY s (the daemon)
                                                 ▼
               persist: adopt a baseline frozen in the store (``mamori baseline
               freeze`` runs in another process), save inventory and baseline,
               advisory matches and asset records (the daemon's), prune, age pcaps
                                                 │ close()
                                                 ▼
               release held occurrences, write waiting pcaps, last flush, persist

Replay keeps the detector's own clock: the detector ticks itself on event time, so
the session never calls ``Detector.tick`` there (a tick between packets could
release held start-up writes in another order than the packets alone do). Live
capture calls it once a second, because a quiet network sends no events to tick on.
Between flushes a replay holds one flush interval's new or changed alerts; the
store and the journal take them as the capture goes, not at its end.

Replay saves the inventory once, at its end. The store's inventory merge keeps what
any save saw (a union, built for a daemon that saves the same growing inventory
again and again), so a save in the middle of a capture would keep a learning
state the rest of the capture revises: a pair learned while learning ran, then
not in the baseline the learning period left. A daemon has no end to wait for.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from mamori.parsers.events import Event
from mamori.parsers.wire import Kind
from mamori.sensor import config as cfg
from mamori.sensor.alerting.dispatch import AlertOutputs
from mamori.sensor.alerting.store import Store
from mamori.sensor.capture.packet_evidence import PacketEvidence
from mamori.sensor.capture.replay import fan_out
from mamori.sensor.detection.engine import Detector
from mamori.sensor.detection.inventory import Inventory
from mamori.sensor.forwarding.options import forwarding_problem

log = logging.getLogger("mamori.detection")

FLUSH_EVERY = 1.0  # seconds between flushes: the daemon's tick, replay's packet time
PERSIST_EVERY = 30.0  # seconds between saves of the inventory and baseline

Rebuild = Callable[[cfg.Config, Inventory], tuple[Detector, int]]


class Consumer(Protocol):
    """Something that takes events from the pipeline: the event log, event counts, ..."""

    def consume(self, events: list[Event]) -> None: ...

    def tick(self, now: float) -> None: ...

    def close(self) -> None: ...


class AdvisoryCheck(Protocol):
    def check(self, assets: list[dict[str, Any]]) -> list[Any]: ...


class IdentityChanges(Protocol):
    def changed(self, assets: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


def stored_enforcing(store: Store) -> dict[str, Any] | None:
    """The store's baseline when it enforces one (frozen or imported), else None."""
    stored = store.load_baseline()
    return stored if stored is not None and stored.get("state") == "enforcing" else None


def adopt_stored_baseline(store: Store, inventory: Inventory) -> bool:
    """An enforcing baseline in the store replaces a learning inventory's; True if so."""
    stored = stored_enforcing(store)
    if stored is None or inventory.enforcing:
        return False
    inventory.import_baseline(stored)
    log.info("baseline from the store: enforcing (%d pairs)", len(stored["pairs"]))
    return True


class ForwardingError(Exception):
    """The forwarder could not start; ``journal_full``: only for want of disk space."""

    def __init__(self, message: str, journal_full: bool) -> None:
        super().__init__(message)
        self.journal_full = journal_full


def open_forwarder(conf: cfg.Config, outputs: AlertOutputs, **kwargs: Any) -> Any:
    """The configured collectors' Forwarder, attached to ``outputs`` (after the store).

    ``kwargs`` go to the Forwarder (the daemon's state dir, heartbeat health, rule
    receiver). Raises ForwardingError, naming the file, for keys, journal or disk."""
    from mamori.sensor.forwarding.forwarder import Forwarder
    from mamori.sensor.forwarding.journal import JournalFull
    from mamori.sensor.forwarding.keys import KeyFileError

    try:
        forwarder = Forwarder(conf, **kwargs)
    except (KeyFileError, OSError, sqlite3.Error) as err:
        raise ForwardingError(f"forwarding: {forwarding_problem(conf, err)}",
                              isinstance(err, JournalFull)) from None
    outputs.forwarder = forwarder
    return forwarder


class Session:
    """Events in (``feed``); alerts out to ``outputs``, on the session's clock.

    ``packet_clock`` (replay): flushes fall due by event time inside ``feed``.
    Otherwise (the daemon) ``tick(now)`` is the clock. ``persist_every`` None: the
    inventory is saved at ``close`` only (replay: see the module docstring).
    ``rebuild(conf, inventory)`` makes the detector again on a reload (the daemon's
    rules and pushed bundles), with ``rules_version``, the signed bundle it runs.
    """

    def __init__(self, detector: Detector | None = None, *, store: Store | None = None,
                 outputs: AlertOutputs | None = None, consumers: Sequence[Consumer] = (),
                 evidence: PacketEvidence | None = None,
                 advisories: AdvisoryCheck | None = None,
                 identities: IdentityChanges | None = None, packet_clock: bool = False,
                 flush_every: float = FLUSH_EVERY,
                 persist_every: float | None = PERSIST_EVERY,
                 rebuild: Rebuild | None = None, rules_version: int = 0) -> None:
        self.detector = detector
        self.store = store
        self.outputs = outputs
        self.consumers = list(consumers)
        self.evidence = evidence
        self.advisories = advisories
        self.identities = identities
        self.packet_clock = packet_clock
        self.flush_every = flush_every
        self.persist_every = persist_every
        self.rebuild = rebuild
        self.rules_version = rules_version
        self.flushes = 0
        self._due = float("-inf")  # packet clock: when the next flush falls due
        self._next_persist: float | None = None
        self._fan = self._sinks()
        if store is not None and detector is not None:
            adopt_stored_baseline(store, detector.inventory)

    def _sinks(self) -> Callable[[list[Event]], None]:
        sinks: list[Callable[[list[Event]], None]] = []
        if self.detector is not None:
            sinks.append(self.detector.process)
        sinks.extend(c.consume for c in self.consumers)
        return fan_out(sinks) or _nothing

    # -- events in ----------------------------------------------------------------------

    def feed(self, events: list[Event]) -> None:
        """A batch of events, in time order; on the packet clock, flushes fall due
        between them (a Zeek log directory comes as one batch)."""
        if not events:
            return
        if self.packet_clock and events[-1].ts >= self._due:
            start = 0
            for i, event in enumerate(events):
                if event.ts >= self._due:
                    if i > start:
                        self._fan(events[start:i])
                        start = i
                    self.flush(event.ts)
            if start:
                events = events[start:]
        self._fan(events)

    def tick(self, now: float) -> None:
        """The daemon's second: clock-driven checks (a quiet network), then a flush."""
        if self.detector is not None:
            self.detector.tick(now)
        for consumer in self.consumers:
            consumer.tick(now)
        self.flush(now)

    # -- alerts out ---------------------------------------------------------------------

    def flush(self, now: float) -> None:
        """Publish what the detector raised or updated; persist when that is due."""
        self._due = now + self.flush_every
        self.flushes += 1
        if self.evidence is not None:
            self.evidence.due(now)  # post-windows end by the clock too (quiet flows)
        if self.detector is not None and self.outputs is not None:
            self.outputs.publish(self.detector.drain())
        if self.persist_every is None:
            return
        clock = now if self.packet_clock else time.monotonic()
        if self._next_persist is None:
            self._next_persist = clock + self.persist_every
        elif clock >= self._next_persist:
            self._next_persist = clock + self.persist_every
            self.persist()

    def persist(self) -> None:
        """Inventory and baseline to the store (adopting a frozen one first)."""
        if self.store is None or self.detector is None:
            return
        adopt_stored_baseline(self.store, self.detector.inventory)
        inv = self.detector.inventory
        assets = inv.asset_docs()
        self.store.save_inventory(assets, [p.to_dict() for p in inv.pairs.values()],
                                  inv.export())
        if self.outputs is not None:
            if self.advisories is not None:
                self.outputs.publish(self.advisories.check(assets))
            submit = getattr(self.outputs.forwarder, "submit", None)
            if submit is not None and self.identities is not None:
                for body in self.identities.changed(assets):
                    submit(Kind.ASSET, body)
        self.store.prune()
        if self.evidence is not None:
            self.evidence.retain()  # ages pcaps out even when nothing alerts

    # -- reload and close ---------------------------------------------------------------

    def reload(self, conf: cfg.Config,
               errors: tuple[type[Exception], ...] = ()) -> list[Exception]:
        """New rules and sets (the inventory, baseline and open aggregates carry over),
        then every consumer that reloads (the event log reopens its file). What
        rebuilding or a consumer raised of ``errors`` is returned, not raised: the
        running detector stays, and the other consumers still reload."""
        refused: list[Exception] = []
        if self.detector is not None and self.rebuild is not None:
            if self.outputs is not None:
                self.outputs.publish(self.detector.drain())
            old = self.detector
            try:
                self.detector, self.rules_version = self.rebuild(conf, old.inventory)
            except errors as err:
                refused.append(err)
            else:
                self.detector.adopt(old)
                if self.store is not None:
                    adopt_stored_baseline(self.store, self.detector.inventory)
                self._fan = self._sinks()
                log.info("rules reloaded: %d rules", len(self.detector.rules))
        for consumer in self.consumers:
            reload = getattr(consumer, "reload", None)
            if reload is None:
                continue
            try:
                reload(conf)
            except errors as err:
                refused.append(err)
        return refused

    def close(self) -> None:
        """The end of the source: held occurrences become alerts (never lost), waiting
        pcaps are written, the last alerts are published and the inventory saved;
        alerts a full disk still refuses are said, not hidden. Then the consumers and
        the outputs' sinks close (the store and the forwarder are the caller's)."""
        if self.detector is not None:
            self.detector.settle()
        if self.evidence is not None:
            self.evidence.flush()
        if self.detector is not None and self.outputs is not None:
            self.outputs.publish(self.detector.drain())
        self.persist()
        if self.outputs is not None:
            self.outputs.close()
        for consumer in self.consumers:
            consumer.close()
        if self.outputs is not None:
            self.outputs.close_sinks()


def _nothing(events: list[Event]) -> None:
    del events
