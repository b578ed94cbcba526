"""Where alerts go once the detector has raised or updated them: store, then forwarder.

The order is the point (architecture principle 4): an alert is committed to the
local store first, so the operator has it whatever happens to the link; then it is
committed to the forwarding journal, which delivers it to every collector exactly
once. The store's row id becomes the alert id on the wire, so a collector sees the
same id for every count update of one aggregate, across sensor restarts.

Alerts raised outside the detector (the daemon's S1 drops and S3 silence, the
forwarder's S4 data loss) are aggregated here the same way the detector aggregates
its own: same rule and peers within ``window`` seconds bumps a count.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from sensor.alerts import Alert
from sensor.store import Store

log = logging.getLogger("mamori.alerts")


class AlertForwarder(Protocol):
    def submit_alert(self, alert: Alert) -> int: ...


class AlertOutputs:
    """Store, then forward. ``publish`` takes new or changed aggregates."""

    def __init__(self, store: Store | None, forwarder: AlertForwarder | None = None,
                 window: float = 3600.0) -> None:
        self.store = store
        self.forwarder = forwarder
        self.window = window
        self._external: dict[tuple[Any, ...], Alert] = {}
        self._next_external = 0
        self.published = 0

    def publish(self, alerts: Iterable[Alert], *, forward: bool = True) -> list[Alert]:
        """Commit ``alerts``; returns them with their store ids."""
        batch = list(alerts)
        if not batch:
            return []
        if self.store is not None:
            rows = self.store.save_alerts(batch)
            batch = [dataclasses.replace(a, id=row) for a, row in zip(batch, rows, strict=True)]
        if forward and self.forwarder is not None:
            for alert in batch:
                self.forwarder.submit_alert(alert)
        self.published += len(batch)
        return batch

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
