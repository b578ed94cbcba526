"""Where alerts go once the detector has raised or updated them: store, then forwarder.

The order is the point (architecture principle 4): an alert is committed to the
local store first, so the operator has it whatever happens to the link; then it is
committed to the forwarding journal, which delivers it to every collector exactly
once. The store's row id becomes the alert id on the wire, so a collector sees the
same id for every count update of one aggregate, across sensor restarts.

Alerts raised outside the detector (the daemon's S1 drops and S3 silence, the
forwarder's S4 data loss) are aggregated here the same way the detector aggregates
its own: same rule and peers within ``window`` seconds bumps a count.

A full disk is a state, not a crash (issue 12). Capture and detection go on; what
happens to each alert depends on which write failed:

* The store had no room: the alert is held in memory (bounded by ``max_pending``,
  one entry per aggregate, so count updates collapse) and written first at the next
  ``publish``, which the daemon calls every second. Past the bound a detector alert
  is dropped (the sensor's own health alerts are always held), and so is what is
  still held when the process ends (``close``); ``dropped`` counts both. These are
  the only alerts that can be lost: they were never committed.
* The store kept it but the journal had no room: nothing is held in memory. Every
  forwardable store write carries a store revision, and the journal records, in the
  same transaction as the messages, the highest revision it holds (its mark). So
  "committed but not journaled" is exactly "revision above the mark", and each
  ``publish`` journals those from the store until the mark catches up. That survives
  a restart, so a replay that ran out of disk is forwarded by the next run.

Entering that state raises one S4 alert (``DISK_FULL_RULE``: local store when it
can, journald through the log, forwarded once it is journaled); leaving it raises a
second one (``DISK_BACK_RULE``) with what was stored or journaled late. ``status``
gives the counters for the daemon's health output.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.alerting.store import Store
from mamori.sensor.forwarding.journal import JournalFull

log = logging.getLogger("mamori.alerts")

DISK_FULL_RULE = "mamori.sensor.disk_full"
DISK_BACK_RULE = "mamori.sensor.disk_space_back"
MAX_PENDING = 10_000  # aggregates held in memory while the store is full
JOURNAL_CHUNK = 200  # alerts per journal transaction when catching up from the store


class AlertForwarder(Protocol):
    def submit_alert(self, alert: Alert) -> int: ...


class AlertOutputs:
    """Store, then forward. ``publish`` takes new or changed aggregates."""

    def __init__(self, store: Store | None, forwarder: AlertForwarder | None = None,
                 window: float = 3600.0, max_pending: int = MAX_PENDING,
                 on_health: Callable[[Alert], object] | None = None,
                 sinks: Sequence[Callable[[Sequence[Alert]], object]] = ()) -> None:
        self.store = store
        # after the store: each published batch, with store ids
        # (EVE, syslog: mamori.sensor.alerting.siem)
        self.sinks = list(sinks)
        self.forwarder = forwarder
        self.window = window
        self.max_pending = max_pending
        self.on_health = on_health  # e.g. the journald sink: disk-full alerts go there too
        self._external: dict[tuple[Any, ...], Alert] = {}
        self._next_external = 0
        self.published = 0
        # Disk-full state (see the module docstring).
        self.pending: dict[object, tuple[Alert, bool]] = {}  # key -> (alert, forward)
        self.unstored = 0  # alert writes the store refused (held or dropped), cumulative
        self.dropped = 0  # never stored: the in-memory queue was full
        self.stored_late = 0  # held, then stored once space returned
        self.journaled_late = 0  # journaled from the store after the journal was full
        self.unjournaled = 0  # no store to catch up from: could not be journaled
        self._mark: int | None = None  # store revision the journal holds up to
        self._episode = False  # an S4 disk-full alert is open
        self._late = (0, 0)  # (stored_late, journaled_late) when the episode began
        self._raising = False
        self._told_unjournaled = False
        self._behind = 0  # backlog() as of the last publish, for other threads' status
        self._fresh: dict[int, Alert] = {}  # revision -> alert as given, this publish

    # -- publishing -------------------------------------------------------------------

    def publish(self, alerts: Iterable[Alert], *, forward: bool = True) -> list[Alert]:
        """Commit ``alerts``; returns them with their store ids (original ids for those
        the store could not take; they are held and retried)."""
        batch = list(alerts)
        if self.store is None:
            if forward:
                self._forward_each(batch)
            self.published += len(batch)
            self._to_sinks(batch)
            return batch
        if not batch and not self.pending and not self._syncing():
            return []
        self._fresh = {}
        syncing = self._syncing()
        if syncing:
            self._start_sync()
        before = self.store.rev()  # what was committed before this call
        out = self._store(batch, forward)
        if syncing:
            self._journal_backlog(before)
            self._behind = self.backlog()
        self._fresh = {}
        self.published += len(batch)
        if not self._raising:
            self._check_health()
        self._to_sinks(out)
        return out

    def _to_sinks(self, alerts: Sequence[Alert]) -> None:
        if alerts:
            for sink in self.sinks:
                sink(alerts)

    def reopen_sinks(self) -> None:
        """SIGHUP: the sinks that write files reopen them (logrotate moved them)."""
        for sink in self.sinks:
            reopen = getattr(sink, "reopen", None)
            if reopen is not None:
                reopen()

    def close_sinks(self) -> None:
        """Close the sinks that can be (files, sockets); at shutdown, after the last publish."""
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()
        self.sinks = []

    def _store(self, batch: Sequence[Alert], forward: bool) -> list[Alert]:
        """Write what was held, then ``batch``; hold what does not fit; forward (when
        not syncing from the store) what was kept."""
        assert self.store is not None
        held = set(self.pending)
        queue = dict(self.pending)
        keys = []
        for alert in batch:
            key = _key(alert)
            queue.pop(key, None)  # a newer version replaces the held one, at the end
            queue[key] = (alert, forward)
            keys.append(key)
        self.pending = {}
        done: dict[object, Alert] = {}
        for flag in (True, False):
            group = [(k, a) for k, (a, f) in queue.items() if f is flag]
            if not group:
                continue
            kept = self.store.commit_alerts([a for _, a in group], forward=flag)
            stored = [(k, self.store.resolve_steps(dataclasses.replace(a, id=row)))
                      for (k, a), (row, _) in zip(group, kept, strict=False)]
            for (_, alert), (_, rev) in zip(stored, kept, strict=True):
                if rev:
                    self._fresh[rev] = alert
            done.update(stored)
            self.stored_late += sum(1 for k, _ in stored if k in held)
            rest = group[len(kept):]
            self.unstored += sum(1 for k, _ in rest if k not in held)
            for k, a in rest:
                # The bound is for the detector's alerts; the sensor's own health
                # alerts (negative ids, a handful of aggregates) are always held.
                if len(self.pending) < self.max_pending or (isinstance(k, int) and k < 0):
                    self.pending[k] = (a, flag)
                else:
                    self.dropped += 1
            if flag and stored and not self._syncing() and self.forwarder is not None:
                self._forward_each([a for _, a in stored])
        return [done.get(k, a) for k, a in zip(keys, batch, strict=True)]

    def _forward_each(self, alerts: Sequence[Alert]) -> None:
        """Without a store to catch up from, an alert the journal refuses is counted."""
        if self.forwarder is None:
            return
        for alert in alerts:
            try:
                self.forwarder.submit_alert(alert)
            except JournalFull as err:
                self.unjournaled += 1
                if not self._told_unjournaled:
                    self._told_unjournaled = True
                    log.error("%s; no store to keep it: counted as lost for forwarding", err)

    # -- catching the journal up with the store ---------------------------------------

    def _syncing(self) -> bool:
        """Store and a journaling forwarder: forward by store revision."""
        return (self.store is not None and bool(self.store.id)
                and hasattr(self.forwarder, "submit_alerts")
                and hasattr(self.forwarder, "journal"))

    def _start_sync(self) -> None:
        """Learn the journal's mark for this store. A journal that never saw it adopts
        the store as it is now (what is older was stored without forwarding), unless a
        run that had forwarding configured could not open the journal
        (``Store.owe_journal``): then it starts where that run began."""
        if self._mark is not None:
            return
        assert self.store is not None
        forwarder: Any = self.forwarder
        mark = forwarder.journal.sync_mark(self.store.id)
        if mark is None:
            owed = self.store.journal_owed()  # a run that could not open the journal
            mark = self.store.rev() if owed is None else owed
            try:
                forwarder.journal.set_sync_mark(self.store.id, mark)
            except JournalFull:
                pass  # kept in memory; the first journaled batch records a later one
            else:
                if owed is not None:
                    self.store.clear_journal_owed()
        self._mark = mark

    def backlog(self) -> int:
        """Forwardable alert writes committed to the store and not yet journaled."""
        if not self._syncing() or self._mark is None:
            return 0
        assert self.store is not None
        return max(0, self.store.rev() - self._mark)

    def _journal_backlog(self, before: int) -> None:
        """Journal, from the store, everything above the mark, in revision order.

        A row whose revision is at or below ``before`` was committed by an earlier call
        (or an earlier run) and is counted as journaled late."""
        assert self.store is not None and self._mark is not None
        forwarder: Any = self.forwarder
        while self.store.rev() > self._mark:
            rows = self.store.unjournaled(self._mark, JOURNAL_CHUNK)
            if not rows:  # the newest revisions belong to rows since pruned
                self._move_mark(forwarder, self.store.rev())
                return
            # What this call stored goes out as given (the store's JSON copy loses
            # bytes in evidence); only what an earlier call left behind is read back.
            try:
                forwarder.submit_alerts([self._fresh.get(rev, a) for rev, a in rows],
                                        sync=(self.store.id, rows[-1][0]))
            except JournalFull:
                return  # still behind: the next publish tries again
            self.journaled_late += sum(1 for rev, _ in rows if rev <= before)
            self._mark = rows[-1][0]

    def _move_mark(self, forwarder: Any, rev: int) -> None:
        assert self.store is not None
        try:
            forwarder.journal.set_sync_mark(self.store.id, rev)
        except JournalFull:
            return
        self._mark = rev

    # -- health -----------------------------------------------------------------------

    def status(self) -> dict[str, int | bool]:
        """The disk-full counters, for the daemon's status line and health output.

        Reads no database (the web page's thread calls it through the daemon's
        snapshot; the store's connection belongs to the daemon's thread)."""
        return {"store_full": bool(self.pending) or bool(self.store and self.store.full),
                "journal_behind": self._behind, "unstored": self.unstored,
                "held": len(self.pending), "dropped": self.dropped,
                "stored_late": self.stored_late, "journaled_late": self.journaled_late,
                "unjournaled": self.unjournaled}

    def _check_health(self) -> None:
        state = self.status()
        trouble = bool(state["store_full"]) or bool(state["journal_behind"])
        now = time.time()
        where = str(self.store.path) if self.store is not None else ""
        evidence: dict[str, Any] = {"store": where, **state}
        if trouble and not self._episode:
            self._episode = True
            self._late = (self.stored_late, self.journaled_late)
            parts = []
            if state["held"] or state["dropped"]:
                parts.append(f"{state['held']} alerts held unstored, {state['dropped']} "
                             f"dropped")
            if state["journal_behind"]:
                parts.append(f"{state['journal_behind']} stored but not yet journaled")
            self._raise(DISK_FULL_RULE, Severity.HIGH,
                        f"Disk full: {'; '.join(parts) or 'writes failing'}", now, evidence)
        elif not trouble and (self._episode or self.journaled_late > self._late[1]):
            stored = self.stored_late - self._late[0]
            journaled = self.journaled_late - self._late[1]
            self._episode = False
            self._late = (self.stored_late, self.journaled_late)
            self._raise(DISK_BACK_RULE, Severity.LOW,
                        f"Disk space back: {stored} alerts stored late, {journaled} "
                        f"journaled late from the store", now,
                        {**evidence, "stored_late": stored, "journaled_late": journaled})

    def _raise(self, rule: str, severity: Severity, title: str, now: float,
               evidence: dict[str, Any]) -> None:
        self._raising = True
        try:
            alert = self.raise_external(Alert(
                rule=rule, precursor="S4", severity=severity, attack=(), title=title,
                proto="sensor", first_ts=now, last_ts=now, evidence=evidence))
        finally:
            self._raising = False
        if self.on_health is not None:
            try:
                self.on_health(alert)
            except Exception as err:  # journald gone must not stop the sensor
                log.error("health alert not sent to journald: %s", err)

    def close(self) -> int:
        """A last try to store what is held; what still does not fit is lost (this
        process ends), counted in ``dropped`` and said once. Returns that number."""
        if self.store is not None and self.pending:
            self.publish([])
        lost = len(self.pending)
        if lost:
            self.dropped += lost
            self.pending = {}
            log.error("%s: disk full at shutdown: %d alerts were never stored "
                      "(%d refused in all, %d stored late)", self.store.path if self.store
                      else "store", lost, self.unstored, self.stored_late)
        return lost

    # -- alerts from outside the detector ---------------------------------------------

    def raise_external(self, alert: Alert, *, forward: bool = True) -> Alert:
        """A health or meta alert from outside the detector, aggregated by rule and peers.

        Its aggregate carries a negative id, so the store can tell it from the
        detector's own (positive) numbers when it maps them to rows.
        """
        key = alert.key
        known = self._external.get(key)
        if known is not None and alert.first_ts - known.last_ts <= self.window:
            updated = dataclasses.replace(known, last_ts=alert.last_ts,
                                          count=known.count + alert.count,
                                          evidence=alert.evidence)
        else:
            self._next_external -= 1
            updated = dataclasses.replace(alert, id=self._next_external)
        self._external[key] = updated
        stored = self.publish([updated], forward=forward)[0]
        log.warning("%s %s: %s", stored.precursor, stored.severity.label, stored.title)
        return stored

    def raise_local(self, alert: Alert) -> Alert:
        """For alerts the forwarder journals itself (S4 data loss): store only."""
        return self.raise_external(alert, forward=False)


_EXTERNAL = itertools.count(1)


def _key(alert: Alert) -> object:
    """One held entry per aggregate: the detector's (or the sensor's own) id.

    An alert without one (id 0: an advisory match, a refused rule bundle) is an
    alert of its own, never a newer version of another; its peers (``Alert.key``)
    are not enough to say so (one asset, several advisories).
    """
    return alert.id if alert.id else ("external", next(_EXTERNAL))
