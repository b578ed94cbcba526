"""Detection inside the live daemon: feed the detector, publish alerts, keep the inventory.

The pipeline hands events to ``consume``; once a second ``tick`` lets the
detector run its clock-driven checks (silence, stopped polling cycles), drains the
aggregates that are new or changed, and publishes them (store, then forwarder).
Every ``persist_every`` seconds the inventory and the baseline go to the store,
and the assets whose identity changed are matched against the imported CSAF
advisories (one low alert per new affected (asset, advisory), see
mamori.sensor.advisories.live) and, when forwarding, sent to the collectors as asset
records (mamori.sensor.advisories.national).

``mamori baseline freeze`` runs in another process and writes the store. So
before the daemon saves its own baseline it reads the stored one: if an operator
froze it (or imported a reviewed one) the daemon adopts that and enforces from
then on, instead of overwriting it with its learning state.
"""

from __future__ import annotations

import logging
import time

from mamori.parsers.events import Event
from mamori.parsers.wire import Kind
from mamori.sensor import config as cfg
from mamori.sensor.advisories.live import AdvisoryWatch
from mamori.sensor.advisories.national import IdentityFeed
from mamori.sensor.alerting.dispatch import AlertOutputs
from mamori.sensor.alerting.journald import journald_sink
from mamori.sensor.alerting.store import Store
from mamori.sensor.capture.packet_evidence import PacketEvidence
from mamori.sensor.detection.engine import Detector
from mamori.sensor.detection.inventory import Inventory
from mamori.sensor.detection.settings import (
    build_detector,
    build_inventory,
    bundle_store,
    load_configured_rules,
)

log = logging.getLogger("mamori.detection")


class LiveDetection:
    """A daemon consumer (``consume``/``tick``/``reload``/``close``)."""

    def __init__(self, conf: cfg.Config, store: Store, outputs: AlertOutputs,
                 persist_every: float = 30.0, evidence: PacketEvidence | None = None) -> None:
        self.store = store
        self.evidence = evidence  # issue 20: pcaps of the frames behind alerts
        self.outputs = outputs
        self.persist_every = persist_every
        self.rules_version = 0  # the signed bundle detection runs (0: none)
        self.detector = self._build(conf, build_inventory(conf))
        self.advisories = AdvisoryWatch.beside(store.path)  # issue 18: affected devices
        self.identities = IdentityFeed()  # and their identity, forwarded to the collectors
        self._adopt_stored_baseline()
        self._next_persist = time.monotonic() + persist_every

    def _build(self, conf: cfg.Config, inventory: Inventory) -> Detector:
        rules = load_configured_rules(conf)  # rolls a bundle back when it must
        active = None if conf.get("detection", "rules") else bundle_store(conf).active()
        self.rules_version = active.version if active is not None else 0
        sink = journald_sink()
        return build_detector(conf, rules, inventory=inventory,
                              on_alert=self.evidence.chain(sink) if self.evidence else sink)

    def _adopt_stored_baseline(self) -> None:
        stored = self.store.load_baseline()
        inventory = self.detector.inventory
        if stored is not None and stored.get("state") == "enforcing" \
                and not inventory.enforcing:
            inventory.import_baseline(stored)
            log.info("baseline from the store: enforcing (%d pairs)", len(stored["pairs"]))

    # -- consumer -----------------------------------------------------------------------

    def consume(self, events: list[Event]) -> None:
        self.detector.process(events)

    def tick(self, now: float) -> None:
        self.detector.tick(now)
        if self.evidence is not None:
            self.evidence.due(now)  # post-windows end by the clock too (quiet flows)
        self.outputs.publish(self.detector.drain())
        if time.monotonic() >= self._next_persist:
            self._next_persist = time.monotonic() + self.persist_every
            self.persist()

    def persist(self) -> None:
        self._adopt_stored_baseline()
        inv = self.detector.inventory
        assets = inv.asset_docs()
        self.store.save_inventory(assets, [p.to_dict() for p in inv.pairs.values()],
                                  inv.export())
        self.outputs.publish(self.advisories.check(assets))
        submit = getattr(self.outputs.forwarder, "submit", None)
        if submit is not None:
            for body in self.identities.changed(assets):
                submit(Kind.ASSET, body)
        self.store.prune()
        if self.evidence is not None:
            self.evidence.retain()  # ages pcaps out even when nothing alerts

    def reload(self, conf: cfg.Config) -> None:
        """New rules and sets; the inventory, baseline and open aggregates carry over."""
        self.outputs.publish(self.detector.drain())
        old = self.detector
        self.detector = self._build(conf, old.inventory)
        self.detector.adopt(old)
        self._adopt_stored_baseline()
        log.info("rules reloaded: %d rules", len(self.detector.rules))

    def close(self) -> None:
        self.detector.settle()  # start-up writes still held are alerts, not lost
        if self.evidence is not None:
            self.evidence.flush()
        self.outputs.publish(self.detector.drain())
        self.persist()
        self.outputs.close()  # held alerts a full disk still refuses are said, not hidden
