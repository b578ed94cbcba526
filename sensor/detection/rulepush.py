"""Pushed rule bundles, the sensor's side: take an offer, fetch it, apply it or refuse it.

A collector offers a bundle over the forwarding channel (wire kind 18: version, size,
SHA-256 of the bundle file); the sensor fetches it one chunk at a time from the
collector that offered it (kind 6 up, kind 19 down), checks the size and the hash,
and installs it exactly as ``mamori rules install`` does: trusted key, signature,
file hashes, a newer version, packs that load, then one rename. Nothing the
collector says is trusted; the bundle's own signature decides, so a collector that
is taken over can make a sensor refuse (counted, S7) but never run other rules.

The fetch is driven by the sensor, one chunk in flight: a collector cannot push more
than the sensor asks for, a reconnect only repeats the chunk asked for last, and a
bundle over ``MAX_BUNDLE_BYTES`` is never asked for. An offer or chunk that breaks
these rules is counted (``drops``) and dropped.

All of this runs on the forwarder's thread; what the daemon must do on its own
thread (load the new rules into detection) it is told through ``on_applied``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamori.parsers.alerts import Alert
from mamori.parsers.wire import RulesChunk, RulesFetch, RulesOffer
from mamori.sensor.detection.bundle import (
    MAX_BUNDLE_BYTES,
    BundleRefused,
    BundleStore,
    Installed,
    Refusal,
    refusal_alert,
    trusted_keys,
)

log = logging.getLogger("mamori.rules")

FETCH_TIMEOUT = 3.0  # a chunk asked for and not received: ask again
FETCH_TRIES = 5  # then give up until the collector offers it again
FINAL = ("applied", "refused", "failed")  # outcomes after which an offer is not fetched


def install_signed(store: BundleStore, raw: bytes, trusted_dir: Path) -> Installed:
    """Verify ``raw`` against the keys in ``trusted_dir``, check that its packs load,
    and make it the active bundle; raises ``BundleRefused`` (or ``OSError``)."""
    from mamori.sensor.detection.loader import load_rules
    from mamori.sensor.detection.settings import set_names

    def validate(packs: Path) -> None:
        load_rules([packs], set_names())

    return store.install(raw, trusted_keys(trusted_dir), validate)


@dataclass(slots=True)
class _Transfer:
    link: object  # whose offer it is: chunks come from there only
    source: str
    offer: RulesOffer
    data: bytearray = field(default_factory=bytearray)
    asked: float = 0.0
    tries: int = 0


class RuleReceiver:
    """One sensor's pushed bundles: what was offered, fetched, applied or refused.

    ``offer`` and ``chunk`` return the fetch requests to send, with the link each
    goes to; ``tick`` repeats a request whose answer did not come. ``raise_alert``
    (the forwarder's) carries S7 refusals to the local store and the collectors;
    ``on_applied`` tells the daemon to load the new bundle.
    """

    def __init__(self, store: BundleStore, trusted_dir: Path,
                 on_applied: Callable[[Installed], object] | None = None) -> None:
        self.store = store
        self.trusted_dir = trusted_dir
        self.on_applied = on_applied
        self.raise_alert: Callable[[Alert], object] | None = None
        self.drops = Counter[str]()  # hostile or broken offers and chunks, by reason
        self.running: int | None = None  # the version detection loaded (the daemon says)
        self._transfer: _Transfer | None = None
        self._settled = False  # an outcome the collector has not been told of yet
        self._lock = threading.RLock()  # the forwarder's thread, and the daemon's
        self._outcomes: dict[str, tuple[str, str]] = {
            p["sha256"]: (p["outcome"], str(p.get("detail", ""))) for p in store.pushed()}
        self._latest: dict[str, str] = {  # collector -> the last bundle it offered
            p["source"]: p["sha256"] for p in store.pushed() if isinstance(p.get("source"), str)}
        self._active_sha = self._sha_of_active()
        self._refusals_seen = _total(store.state())

    # -- what the collector sends -------------------------------------------------------

    def offer(self, link: object, source: str, offer: RulesOffer,
              now: float) -> list[tuple[object, RulesFetch]]:
        with self._lock:
            return self._offer(link, source, offer, now)

    def _offer(self, link: object, source: str, offer: RulesOffer,
               now: float) -> list[tuple[object, RulesFetch]]:
        sha = offer.sha256.hex()
        if not 0 < offer.size <= MAX_BUNDLE_BYTES:
            self.drops["offer_too_large"] += 1
            return []
        self._latest[source] = sha
        if sha == self._active_sha or sha in self._outcomes:
            if sha == self._active_sha and sha not in self._outcomes:
                active = self.store.active()
                self._outcomes[sha] = ("applied", f"version {active.version}" if active else "")
            return []
        if self._transfer is not None:  # one at a time; the collector offers it again
            return []  # and while this one is fetched, tick() asks again for late chunks
        self._transfer = _Transfer(link, source, offer)
        return self._ask(now)

    def chunk(self, link: object, chunk: RulesChunk,
              now: float) -> list[tuple[object, RulesFetch]]:
        with self._lock:
            return self._chunk(link, chunk, now)

    def _chunk(self, link: object, chunk: RulesChunk,
               now: float) -> list[tuple[object, RulesFetch]]:
        t = self._transfer
        if t is None or t.link is not link or chunk.sha256 != t.offer.sha256 \
                or chunk.offset != len(t.data):
            self.drops["chunk_unexpected"] += 1  # also a late answer to a repeated request
            return []
        if len(t.data) + len(chunk.data) > t.offer.size:
            self._fail(t, "chunk_overrun", f"more than the {t.offer.size} bytes offered")
            return []
        t.data += chunk.data
        t.tries = 0
        if len(t.data) < t.offer.size:
            return self._ask(now)
        self._transfer = None
        raw = bytes(t.data)
        if hashlib.sha256(raw).digest() != t.offer.sha256:
            self._fail(t, "hash_mismatch", "the bytes received do not match the offer")
            return []
        self._apply(t, raw)
        return []

    def settled(self) -> bool:
        """True once after a fetch ended (applied, refused, failed): time to say so."""
        settled, self._settled = self._settled, False
        return settled

    def tick(self, now: float) -> list[tuple[object, RulesFetch]]:
        with self._lock:
            return self._tick(now)

    def _tick(self, now: float) -> list[tuple[object, RulesFetch]]:
        t = self._transfer
        if t is None or now - t.asked < FETCH_TIMEOUT:
            return []
        if t.tries >= FETCH_TRIES:
            self.drops["fetch_stalled"] += 1
            log.warning("rule bundle %s from %s: no answer after %d requests; waiting for "
                        "the next offer", t.offer.sha256.hex()[:16], t.source, t.tries)
            self._transfer = None
            return []
        return self._ask(now)

    def _ask(self, now: float) -> list[tuple[object, RulesFetch]]:
        t = self._transfer
        assert t is not None
        t.asked, t.tries = now, t.tries + 1
        return [(t.link, RulesFetch(t.offer.sha256, len(t.data)))]

    # -- outcomes -----------------------------------------------------------------------

    def _fail(self, t: _Transfer, reason: str, detail: str) -> None:
        """The collector sent something that cannot be its offer: never fetched again
        (CURVE rules out damage on the way, so it would send the same again)."""
        self._transfer = None
        self._settled = True
        self.drops[reason] += 1
        sha = t.offer.sha256.hex()
        self._outcomes[sha] = ("failed", reason)
        log.error("rule bundle %s from %s dropped: %s", sha[:16], t.source, detail)
        try:
            self.store.record_push(sha, "failed", reason, t.source)
        except OSError as err:
            log.error("%s: not recorded: %s", self.store.root, err)

    def _apply(self, t: _Transfer, raw: bytes) -> None:
        sha = hashlib.sha256(raw).hexdigest()
        source = f"pushed by {t.source}"
        try:
            installed = install_signed(self.store, raw, self.trusted_dir)
        except BundleRefused as refused:
            self.refused(sha, refused, source, origin=t.source)
            return
        except (OSError, ValueError) as err:  # a full disk, an unreadable key: try again
            self.drops["install_failed"] += 1
            log.error("rule bundle %s from %s not installed: %s", sha[:16], t.source, err)
            return
        self._outcomes[sha] = ("applied", f"version {installed.version}")
        self._settled = True
        self._active_sha = sha
        try:
            self.store.record_push(sha, "applied", f"version {installed.version}", t.source)
        except OSError as err:  # active all the same; a restart finds it active
            log.error("%s: not recorded: %s", self.store.root, err)
        log.info("rule bundle %d (key %s) %s: active", installed.version, installed.key_id,
                 source)
        if self.on_applied is not None:
            self.on_applied(installed)

    def refused(self, sha: str, refused: BundleRefused, source: str,
                counted: bool = False, origin: str = "") -> None:
        """Count (unless ``counted``), remember and alert (S7): a pushed bundle is not
        what the sensor runs, and the collector (``origin``) is told so and does not
        offer it again."""
        with self._lock:
            pushed = sha in self._outcomes or sha in self._latest.values()
            origin = origin or next((s for s, h in self._latest.items() if h == sha), "")
            try:
                state = self.store.state() if counted else \
                    self.store.record_refusal(refused, source)
                if pushed:
                    self.store.record_push(sha, "refused", refused.reason.name, origin)
            except OSError as err:  # a full disk: refused all the same, said, not counted
                log.error("%s: refusal not recorded: %s", self.store.root, err)
                state = self.store.state()
            self._refusals_seen = _total(state)
            if pushed:
                self._outcomes[sha] = ("refused", refused.reason.name)
            self._settled = True
            self._active_sha = self._sha_of_active()
        log.error("rule bundle %s %s refused (%s): %s", sha[:16], source,
                  refused.reason.name, refused.detail)
        if self.raise_alert is not None:
            count = int(state.get("refused", {}).get(refused.reason.name, 1))
            self.raise_alert(refusal_alert(refused, source, count))

    def loaded(self, version: int) -> None:
        """The daemon loaded bundle ``version`` (0: none) into detection.

        Loading checks the active bundle again and rolls it back when its packs changed
        on disk or do not load (mamori.sensor.detection.settings); when that just happened,
        the bundle rolled back from is refused here like any other: S7, and the
        collector told.
        """
        with self._lock:
            self.running = version
            state = self.store.state()
            last = state.get("last_refusal")
            rolled_back = self._active_sha
            if rolled_back is not None and _total(state) > self._refusals_seen \
                    and isinstance(last, dict) and last.get("source") == "load" \
                    and last.get("reason") in Refusal.__members__:
                refusal = BundleRefused(Refusal[last["reason"]], str(last.get("detail", "")))
                self.refused(rolled_back, refusal, "load", counted=True)
            self._refusals_seen = _total(state)
            self._active_sha = self._sha_of_active()
            self._settled = True

    # -- what the heartbeat says --------------------------------------------------------

    def report(self, source: str) -> dict[str, Any]:
        """For the heartbeat to collector ``source``: ``rules``, the version running (0:
        none); ``rules_offer``, [sha256 hex, state, detail] of the last bundle that
        collector offered, state fetching/waiting/applied/refused/failed/stalled."""
        with self._lock:
            return self._report(source)

    def _report(self, source: str) -> dict[str, Any]:
        running = self.running
        if running is None:
            active = self.store.active()
            running = active.version if active is not None else 0
        doc: dict[str, Any] = {"rules": running}
        t = self._transfer
        latest = self._latest.get(source)
        if t is not None and t.source == source and t.offer.sha256.hex() == latest:
            doc["rules_offer"] = [latest, "fetching", f"{len(t.data)}/{t.offer.size}"]
        elif latest is not None:  # no outcome: behind another transfer, or given up
            pending = ("waiting" if t is not None else "stalled", "")
            outcome, detail = self._outcomes.get(latest, pending)
            doc["rules_offer"] = [latest, outcome, detail]
        if self.drops:
            doc["rules_drops"] = dict(self.drops)
        return doc

    def _sha_of_active(self) -> str | None:
        active = self.store.active()
        if active is None:
            return None
        try:
            return hashlib.sha256((active.path / "bundle.mrb").read_bytes()).hexdigest()
        except OSError:
            return None


def _total(state: dict[str, Any]) -> int:
    """Every refusal the bundle state has counted, all reasons."""
    counts = state.get("refused")
    return sum(v for v in counts.values() if isinstance(v, int)) if isinstance(
        counts, dict) else 0
