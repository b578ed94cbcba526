"""Pushed rule bundles, the collector's side: offer each sensor its bundle, serve chunks.

``mamori collect push-rules`` (another process) stores a bundle and the sensors it is
for in the collector's storage; the running collector reads them at most every
``REFRESH`` seconds. A sensor is offered its bundle (wire kind 18) when the offer is
new and whenever a heartbeat shows that it has not dealt with it yet: a sensor that
was offline gets the offer with the heartbeat it sends on reconnecting. The sensor
then asks for the bundle chunk by chunk (kind 6); the collector answers (kind 19)
only for the bundle offered to that very sensor.

The collector does not decide whether a bundle is applied, the sensor's trusted keys
do; the collector only keeps the bytes exactly as the centre signed them.
"""

from __future__ import annotations

import time
from typing import Any

from mamori.parsers.wire import (
    RULES_CHUNK_BYTES,
    RulesChunk,
    RulesFetch,
    RulesOffer,
    encode_chunk,
    encode_offer,
)
from mamori.sensor.collector.storage import SqlStorage

REFRESH = 1.0  # seconds between reads of the offers table
REOFFER = 2.0  # at most one offer per sensor in this many seconds
FETCH_WINDOW = 60.0  # chunks served to one sensor are budgeted per this many seconds
SETTLED = frozenset({"applied", "refused", "failed"})  # the sensor has dealt with it


class RuleOffers:
    """The offers in storage, the bundles' bytes in memory, and when each was offered."""

    def __init__(self, storage: SqlStorage) -> None:
        self.storage = storage
        self.offers: dict[str, tuple[bytes, int]] = {}  # sensor -> (sha256, version)
        self._bundles: dict[bytes, bytes] = {}  # sha256 -> the bundle file
        self._offered: dict[str, float] = {}  # sensor -> monotonic time of the last offer
        self._served: dict[str, tuple[float, int]] = {}  # sensor -> (window start, chunks)
        self._next_refresh = 0.0

    def refresh(self, force: bool = False) -> set[str]:
        """Re-read the offers; returns the sensors whose offer is new or changed."""
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return set()
        self._next_refresh = now + REFRESH
        rows = {sensor: (bytes.fromhex(sha), version)
                for sensor, (sha, version) in self.storage.rule_offers().items()}
        self.storage.commit()  # end the read: PostgreSQL would hold the snapshot open
        changed = {s for s, offer in rows.items() if self.offers.get(s) != offer}
        for sha in {sha for sha, _ in rows.values()} - set(self._bundles):
            data = self.storage.rule_bundle(sha.hex())
            if data is not None:
                self._bundles[sha] = data
        self.storage.commit()
        self._bundles = {sha: self._bundles[sha] for sha, _ in rows.values()
                         if sha in self._bundles}
        self.offers = {s: o for s, o in rows.items() if o[0] in self._bundles}
        for sensor in changed:  # a new bundle: offered at once, with a fresh budget
            self._offered.pop(sensor, None)
            self._served.pop(sensor, None)
        return changed & set(self.offers)

    def offer_for(self, sensor: str, heartbeat: dict[str, Any] | None) -> bytes | None:
        """The offer frame to send ``sensor`` now, or None: none for it, it has dealt
        with it or is fetching it (its heartbeat says), or it was offered just now."""
        offer = self.offers.get(sensor)
        if offer is None:
            return None
        sha, version = offer
        said = heartbeat.get("rules_offer") if heartbeat is not None else None
        if isinstance(said, list) and len(said) == 3 and said[0] == sha.hex() \
                and (said[1] in SETTLED or said[1] == "fetching"):
            return None
        now = time.monotonic()
        if now - self._offered.get(sensor, -REOFFER) < REOFFER:
            return None
        self._offered[sensor] = now
        return encode_offer(RulesOffer(version, len(self._bundles[sha]), sha))

    def chunk_for(self, sensor: str, fetch: RulesFetch) -> tuple[bytes | None, str]:
        """The chunk a sensor asked for, or None and why not (a counter name): a bundle
        that is not the one offered to it, an offset past its end, or more chunks than
        fetching it twice takes within ``FETCH_WINDOW``. That budget bounds what a
        sensor that asks and never reads can queue at the collector."""
        offer = self.offers.get(sensor)
        if offer is None or offer[0] != fetch.sha256:
            return None, "rules_not_offered"
        data = self._bundles[fetch.sha256]
        if fetch.offset >= len(data):
            return None, "rules_not_offered"
        now = time.monotonic()
        start, served = self._served.get(sensor, (now, 0))
        if now - start > FETCH_WINDOW:
            start, served = now, 0
        if served >= 2 * (len(data) // RULES_CHUNK_BYTES + 1) + 8:
            return None, "rules_fetch_limited"
        self._served[sensor] = (start, served + 1)
        piece = data[fetch.offset:fetch.offset + RULES_CHUNK_BYTES]
        return encode_chunk(RulesChunk(fetch.sha256, fetch.offset, piece)), ""
