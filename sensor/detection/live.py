"""Detection inside the live daemon: the daemon's Session (mamori.sensor.detection.session).

What only the daemon adds to the session replay also runs: the rules come from the
configuration or the active signed bundle a collector pushed (``rules_version``, and
a reload loads them again), and every persist matches the assets whose identity
changed against the imported CSAF advisories (one low alert per new affected
(asset, advisory), see mamori.sensor.advisories.live) and, when forwarding, sends
them to the collectors as asset records (mamori.sensor.advisories.national).
"""

from __future__ import annotations

from collections.abc import Sequence

from mamori.sensor import config as cfg
from mamori.sensor.advisories.live import AdvisoryWatch
from mamori.sensor.advisories.national import IdentityFeed
from mamori.sensor.alerting.dispatch import AlertOutputs
from mamori.sensor.alerting.journald import journald_sink
from mamori.sensor.alerting.store import Store
from mamori.sensor.capture.packet_evidence import PacketEvidence
from mamori.sensor.detection.engine import Detector
from mamori.sensor.detection.inventory import Inventory
from mamori.sensor.detection.session import Consumer, Session
from mamori.sensor.detection.settings import (
    build_detector,
    build_inventory,
    bundle_store,
    load_configured_rules,
)


def live_session(conf: cfg.Config, store: Store, outputs: AlertOutputs,
                 evidence: PacketEvidence | None = None,
                 consumers: Sequence[Consumer] = ()) -> Session:
    """The daemon's session, on the wall clock; RuleError for rules that do not load."""

    def build(conf: cfg.Config, inventory: Inventory) -> tuple[Detector, int]:
        rules = load_configured_rules(conf)  # rolls a bundle back when it must
        active = None if conf.get("detection", "rules") else bundle_store(conf).active()
        sink = journald_sink()
        detector = build_detector(conf, rules, inventory=inventory,
                                  on_alert=evidence.chain(sink) if evidence else sink)
        return detector, active.version if active is not None else 0

    detector, version = build(conf, build_inventory(conf))
    return Session(detector, store=store, outputs=outputs, consumers=consumers,
                   evidence=evidence, advisories=AdvisoryWatch.beside(store.path),
                   identities=IdentityFeed(), rebuild=build, rules_version=version)
