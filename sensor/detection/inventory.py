"""Asset inventory and learned baseline: who talks to whom, how, and how often.

One structure serves both. Everything observed goes into the inventory
(assets, communication pairs with their function codes, address ranges and
polling cycles). While the baseline is ``learning`` each new item is marked
learned; once it is ``enforcing`` (after the learning period, or ``mamori
baseline freeze``) new items are still recorded for the operator but marked
unlearned, and the first sight of each becomes a :class:`DerivedEvent`
(B1-B5, M8, M9, D15) that the rule packs turn into alerts. Request rates (B6)
and unsolicited rates (D9) are checked while learning too, against an absolute
ceiling, since a flood needs no baseline to be one.

A client is not a master because it talks: it is a *candidate* until one of its
reads repeats regularly (a poller), and a learned master only after
``min_cycles`` poll intervals over ``min_span`` seconds (or when an operator's
freeze vouches for a clean poller). A candidate that raises an alert is
*refused* and never learned (``refuse``, called by the detector); see
docs/learning.md.

``observe`` runs on every message, so its common path is a handful of dict
operations: the flow's pair table is cached, and nothing is allocated for a
request that repeats a known exchange.

Memory is bounded whatever the traffic: at most ``max_assets`` assets and as
many pairs are held (the least recently seen *unlearned* ones go first, so a
storm of rogue hosts cannot push the learned baseline out), and the flow cache
and the reported-masters memory are LRU tables. ``evicted`` counts what went.
The store merges what is saved into what it already holds
(``Store.save_inventory``), so an asset forgotten here is not lost there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

from mamori.parsers.dnp3.events import (
    DeviceAttribute,
    DNP3Request,
    DNP3Response,
    DNP3Unsolicited,
)
from mamori.parsers.events import Event
from mamori.parsers.modbus.events import ModbusRequest, ModbusResponse
from mamori.parsers.modbus.pdu import ReadDeviceIdResponse, ReportServerIdResponse
from mamori.parsers.stream import FlowId
from mamori.sensor.detection.bounded import DEFAULT_MAX_STATE, LruTable, log
from mamori.sensor.detection.derived import DerivedEvent, DerivedKind

# The messages the inventory learns from (its handlers); it ignores every other event.
_Message = ModbusRequest | ModbusResponse | DNP3Request | DNP3Response | DNP3Unsolicited

BASELINE_FORMAT = "mamori-baseline"
BASELINE_VERSION = 1

_ALPHA = 0.125  # EWMA weight while learning (as TCP's RTT estimator)
_RUN_ALPHA = 0.3  # EWMA weight of the enforcing-time estimate: reacts within a few polls
_MIN_LEARNED = 10  # intervals before a cycle counts as learned
_MIN_RUN = 5  # intervals before the enforcing estimate is trusted
_MAX_CYCLES = 64  # per pair; a sweep must not grow memory without bound
DEFAULT_MAX_ASSETS = 8192  # assets held in memory, and as many pairs
_MAX_LINK_IPS = 64  # learned IPs per DNP3 link address: beyond that it binds nothing
_EVICT_FRACTION = 0.1  # a full table sheds this share at once: eviction is a scan
DEFAULT_MIN_CYCLES = 20  # poll intervals before a client is a learned master
DEFAULT_MIN_SPAN = 600.0  # seconds those intervals must cover
_POLLER_CYCLES = 3  # regular read intervals that make a client a poller (not yet learned)
_READS = {"modbus": frozenset({1, 2, 3, 4}), "dnp3": frozenset({1})}
_WRITES = frozenset({5, 6, 15, 16, 22, 23})  # Modbus writes that M16 compares
DEFAULT_UNSOLICITED_WINDOW = 10.0  # seconds per count of unsolicited responses
_UNSOLICITED_CEILING = 20  # per window: the storm limit of an outstation never seen reporting
_UNSOLICITED_FACTOR = 4.0  # times the most a learned outstation sent in one window
DEFAULT_REQUEST_WINDOW = 10.0  # seconds per count of one pair's requests (B6)
DEFAULT_REQUEST_CEILING = 1000  # per window: the flood limit of a pair with no learned rate
DEFAULT_REQUEST_FACTOR = 4.0  # times the most a learned pair sent in one window
_REQUEST_FLOOR = 0.1  # of the ceiling: a learned pair's limit is never below (operator bursts)


class MasterState(Enum):
    """Where a client stands on its way to a learned master (``Asset.master``)."""

    CANDIDATE = "candidate"  # seen, no alert, not (yet) polling for long enough
    LEARNED = "learned"  # sustained periodic polling, or vouched for by a freeze
    REFUSED = "refused"  # raised an alert while a candidate: never learned


class Reporting:
    """A message rate in fixed windows: this window's count and the learned peak.

    One outstation's unsolicited responses (D9), or one pair's requests (B6).
    """

    __slots__ = ("count", "flagged", "peak", "start", "windows")

    def __init__(self, ts: float) -> None:
        self.start = ts
        self.count = 0
        self.flagged = False  # a storm was reported in this window
        self.peak = 0  # the most in one window while learning (stormy windows excluded)
        self.windows = 0  # windows learned

    def add(self, ts: float, window: float, learn: bool, learn_flagged: bool = False) -> None:
        """Count one message at ``ts``; a window that ran out first becomes learned
        (if ``learn``; a stormy one only if ``learn_flagged``) and a new one starts.
        Time going back (a capture replayed again) starts a new window too."""
        if ts - self.start >= window or ts < self.start:
            if learn and (learn_flagged or not self.flagged):
                self.peak = max(self.peak, self.count)
                self.windows += 1
            self.start, self.count, self.flagged = ts, 0, False
        self.count += 1


class BaselineState(Enum):
    LEARNING = "learning"
    ENFORCING = "enforcing"


_ENFORCING = BaselineState.ENFORCING  # read on every request (the hot path tests it inline)


class BaselineError(ValueError):
    """An imported baseline file is not one we wrote (names the key at fault)."""


class Asset:
    """One IP address seen on an ICS flow."""

    __slots__ = ("best_cycles", "best_span", "excused", "first_seen", "identity",
                 "identity_seen", "ip", "last_seen", "learned", "learned_identity", "links",
                 "mac", "master", "poller", "reason", "roles", "units")

    def __init__(self, ip: str, ts: float, learned: bool) -> None:
        self.ip = ip
        self.mac: str | None = None
        self.roles: set[str] = set()
        self.units: set[int] = set()
        self.links: set[int] = set()
        self.identity: dict[str, str] = {}
        self.learned_identity: dict[str, str] = {}
        # identity key -> [first frame, first ts, last frame, last ts] of its current
        # value: which packets carried it (frame 0: not known, as from Zeek logs),
        # the evidence of an advisory match
        self.identity_seen: dict[str, list[float]] = {}
        self.first_seen = ts
        self.last_seen = ts
        self.learned = learned
        self.master: MasterState | None = None  # set once the host sends a request
        self.poller = False  # a read repeats at a regular period
        self.best_cycles = 0  # the longest regular read cycle: intervals ...
        self.best_span = 0.0  # ... and the seconds they cover
        self.excused = 0  # start-up writes/control held while learning, then excused
        self.reason = ""  # why it was refused

    def master_dict(self) -> dict[str, Any]:
        """The host's standing as a master: what ``baseline status`` shows."""
        assert self.master is not None
        return {"ip": self.ip, "state": self.master.value, "poller": self.poller,
                "cycles": self.best_cycles, "span": round(self.best_span, 3),
                "excused": self.excused, "reason": self.reason}

    def to_dict(self) -> dict[str, Any]:
        return {"ip": self.ip, "mac": self.mac, "roles": sorted(self.roles),
                "units": sorted(self.units), "links": sorted(self.links),
                "identity": dict(sorted(self.identity.items())),
                "identity_seen": {k: sighting(*v) for k, v in sorted(self.identity_seen.items())},
                "first_seen": self.first_seen, "last_seen": self.last_seen,
                "learned": self.learned}


def sighting(first_frame: float, first_ts: float, last_frame: float, last_ts: float
             ) -> dict[str, Any]:
    """Where one identity string was seen first and last (frame ``None``: not known)."""
    return {"first_frame": int(first_frame) or None, "first_seen": first_ts,
            "last_frame": int(last_frame) or None, "last_seen": last_ts}


class Cycle:
    """Inter-arrival statistics of one repeated request (pair, fc, address or object)."""

    __slots__ = ("dev", "first", "flagged", "last", "mean", "n", "prev", "rmean", "rn",
                 "silent", "streak")

    def __init__(self) -> None:
        self.first: float | None = None
        self.prev = 0.0  # the last interval, and how many in a row were alike (within
        self.streak = 0  # half of the one before): a poller before the EWMA settles
        self.last: float | None = None
        self.mean = 0.0
        self.dev = 0.0
        self.n = 0
        self.rmean = 0.0
        self.rn = 0
        self.flagged = False
        self.silent = False

    @property
    def cyclic(self) -> bool:
        """Learned as a regular poll: enough samples and jitter well below the period."""
        return self.n >= _MIN_LEARNED and self.regular

    @property
    def regular(self) -> bool:
        return self.mean > 0 and self.dev <= 0.5 * self.mean


PairKey = tuple[str, str, str, int, int | None, int | None, int | None]


class Pair:
    """client → server (and unit id or link addresses), with what the client asks for."""

    __slots__ = ("count", "cycles", "fcs", "first_seen", "key", "last_seen", "learned",
                 "ranges", "requests", "write", "write_at")

    def __init__(self, key: PairKey, ts: float, learned: bool) -> None:
        self.key = key
        self.fcs: dict[object, bool] = {}  # fc, (8, sub) or ("g", group) -> learned
        self.ranges: dict[object, list[int]] = {}  # fc or ("g", group) -> [lo, hi] learned
        self.cycles: dict[object, Cycle] = {}
        self.first_seen = ts
        self.last_seen = ts
        self.count = 0
        self.learned = learned
        self.requests: Reporting | None = None  # the request rate (B6), from the first
        self.write: int | None = None  # Modbus: fingerprint of the last write (M16) ...
        self.write_at = 0  # ... and the pair's request count when it came

    def to_dict(self) -> dict[str, Any]:
        proto, client, server, port, unit, master, outstation = self.key
        periods = sorted(c.mean for c in self.cycles.values() if c.cyclic)
        return {
            "proto": proto, "client": client, "server": server, "port": port, "unit": unit,
            "link_master": master, "link_outstation": outstation,
            "functions": sorted((_fc_label(k) for k in self.fcs), key=str),
            "ranges": {_fc_label(k): v for k, v in self.ranges.items()},
            "period": periods[len(periods) // 2] if periods else None,
            "count": self.count, "first_seen": self.first_seen, "last_seen": self.last_seen,
            "learned": self.learned,
        }


def _widen(item: Asset | Pair, ts: float) -> None:
    """Stretch the first/last-seen span of ``item`` to cover ``ts``.

    Packet time does not only grow: captures replayed in any order (``mamori replay
    new.pcap old.pcap``), several capture interfaces and Zeek's separate log files
    all hand the inventory an older time after a newer one. Setting ``last_seen``
    to the latest packet's time made it earlier than ``first_seen``.
    """
    if ts > item.last_seen:
        item.last_seen = ts
    elif ts < item.first_seen:
        item.first_seen = ts


def _fc_label(key: object) -> str:
    if isinstance(key, tuple):
        return f"{key[0]}/{key[1]}" if key[0] != "g" else f"g{key[1]}"
    return str(key)


def _fc_key(label: str) -> object:
    if label.startswith("g"):
        return ("g", int(label[1:]))
    if "/" in label:
        a, b = label.split("/")
        return (int(a), int(b))
    return int(label)


class Inventory:
    """Assets, pairs and the baseline state; feed it every event with :meth:`observe`."""

    def __init__(self, learning_period: float = 0.0, *, max_assets: int = DEFAULT_MAX_ASSETS,
                 max_state: int = DEFAULT_MAX_STATE, min_cycles: int = DEFAULT_MIN_CYCLES,
                 min_span: float = DEFAULT_MIN_SPAN, vouch: bool = False,
                 unsolicited_window: float = DEFAULT_UNSOLICITED_WINDOW,
                 request_window: float = DEFAULT_REQUEST_WINDOW,
                 request_ceiling: int = DEFAULT_REQUEST_CEILING,
                 request_factor: float = DEFAULT_REQUEST_FACTOR) -> None:
        if max_assets < 1:
            raise ValueError("max_assets must be at least 1")
        if min_cycles < _POLLER_CYCLES or not min_span >= 0:
            raise ValueError(f"min_cycles must be at least {_POLLER_CYCLES}, min_span >= 0")
        self.learning_period = learning_period  # seconds of packet time; 0: until freeze
        self.min_cycles = min_cycles
        self.min_span = min_span
        self.vouch = vouch  # the end of the learning period vouches (replay --learn-for)
        if not unsolicited_window > 0:
            raise ValueError("unsolicited_window must be longer than 0 s")
        self.unsolicited_window = unsolicited_window
        if not request_window > 0 or request_ceiling < 1 or not request_factor >= 1:
            raise ValueError("request_window must be longer than 0 s, request_ceiling at "
                             "least 1 and request_factor at least 1")
        self.request_window = request_window
        self.request_ceiling = request_ceiling
        self.request_factor = request_factor
        self._reporting: LruTable[tuple[str, int], Reporting] = LruTable(
            max_state, "DNP3 unsolicited rates")
        self.max_assets = max_assets
        self.max_state = max_state
        self.state = BaselineState.LEARNING
        self.started: float | None = None
        self.frozen_at: float | None = None
        self.assets: dict[str, Asset] = {}
        self.pairs: dict[PairKey, Pair] = {}
        self.learned_masters: set[str] = set()
        self.learned_outstations: set[str] = set()
        self.known_masters: set[str] = set()
        self.learning_masters: set[str] = set()  # clean pollers, while learning
        self.new_pollers: list[str] = []  # became pollers since the detector last looked
        self._link_claims: LruTable[tuple[str, int], str] = LruTable(
            max_state, "DNP3 master link claims")  # (outstation ip, master link) -> ip
        self.link_ips: dict[tuple[str, int], set[str]] = {}  # (role, link addr) -> learned IPs
        self._flows: LruTable[FlowId, dict[object, Pair]] = LruTable(
            max_state, "inventory flow cache")
        self._last_flow: FlowId | None = None
        self._last_units: dict[object, Pair] = {}
        self._out: list[DerivedEvent] = []
        self._reported_masters: LruTable[str, None] = LruTable(max_state, "reported masters")
        self.assets_evicted = 0
        self.pairs_evicted = 0
        self.link_ips_dropped = 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            ModbusRequest: self._modbus_request,
            ModbusResponse: self._modbus_response,
            DNP3Request: self._dnp3_request,
            DNP3Response: self._dnp3_response,
            DNP3Unsolicited: self._dnp3_response,
        }

    @property
    def enforcing(self) -> bool:
        return self.state is _ENFORCING

    # -- lifecycle --------------------------------------------------------------------

    def freeze(self, ts: float | None = None, *, vouch: bool = True) -> None:
        """End learning: from now on new items are deviations.

        ``vouch``: an operator ended learning (``baseline freeze``, ``replay
        --learn-for``) and so vouches for what was seen: clean candidates that poll
        periodically become learned masters without the full ``min_cycles`` over
        ``min_span``. The learning period running out vouches for nothing. Either
        way a refused host is never learned, and pairs whose client is not a
        learned master stay unlearned (they cannot teach the baseline).
        """
        self.state = BaselineState.ENFORCING
        self.frozen_at = ts
        for asset in self.assets.values():
            if vouch and asset.master is MasterState.CANDIDATE and asset.poller:
                self._promote(asset)
        self.learning_masters.clear()
        masters = self.learned_masters
        for pair in self.pairs.values():
            if pair.learned and pair.key[1] not in masters:
                pair.learned = False
            for cycle in pair.cycles.values():
                cycle.rn = 0
                cycle.flagged = False

    # -- who is a master --------------------------------------------------------------

    def _promote(self, asset: Asset) -> None:
        asset.master = MasterState.LEARNED
        self.learned_masters.add(asset.ip)
        self.learning_masters.discard(asset.ip)

    def holdable(self, ip: str) -> bool:
        """A client still learning that has not yet shown it polls (its start-up may be)."""
        asset = self.assets.get(ip)
        return self.state is not _ENFORCING and asset is not None \
            and asset.master is MasterState.CANDIDATE and not asset.poller

    def refusable(self, ip: str) -> bool:
        """Would :meth:`refuse` refuse ``ip`` now (a candidate, while learning)?"""
        asset = self.assets.get(ip)
        return not self.enforcing and asset is not None \
            and asset.master is MasterState.CANDIDATE

    def refuse(self, ip: str, reason: str) -> bool:
        """``ip`` raised an alert while a candidate: it is never learned as a master."""
        asset = self.assets.get(ip)
        if self.enforcing or asset is None or asset.master is not MasterState.CANDIDATE:
            return False
        asset.master = MasterState.REFUSED
        asset.reason = reason
        self.learning_masters.discard(ip)
        return True

    def excuse(self, ip: str, count: int) -> None:
        """``count`` held start-up occurrences of ``ip`` were excused: it polls."""
        asset = self.assets.get(ip)
        if asset is not None:
            asset.excused += count

    def unlearn(self, event: Event | DerivedEvent) -> None:
        """While learning, what raised an alert does not stay in the learned profile."""
        if self.enforcing:
            return
        sub: object
        if type(event) is ModbusRequest:
            sub = event.unit
        elif type(event) is DNP3Request:
            sub = (event.link_src, event.link_dst)
        else:
            return
        flow = event.flow  # the flow cache's last entry, as _flow_pairs keeps it: no hash
        units = self._last_units if flow is self._last_flow else self._flows.get(flow)
        pair = units.get(sub) if units is not None else None
        if pair is not None and pair.fcs.get(event.fc):
            pair.fcs[event.fc] = False

    def _progress(self, ip: str, cycle: Cycle, ts: float) -> None:
        """A read cycle of ``ip`` advanced: poller after a few regular intervals,
        learned master after ``min_cycles`` covering ``min_span`` seconds."""
        asset = self.assets.get(ip)
        if asset is None or asset.master is not MasterState.CANDIDATE \
                or cycle.first is None:
            return
        if not asset.poller and cycle.streak >= _POLLER_CYCLES:
            asset.poller = True
            self.learning_masters.add(ip)
            self.new_pollers.append(ip)
        if not asset.poller or not cycle.regular:
            return
        span = ts - cycle.first
        if cycle.n > asset.best_cycles:
            asset.best_cycles = cycle.n
            asset.best_span = span
        if cycle.n >= self.min_cycles and span >= self.min_span:
            self._promote(asset)

    def asset_docs(self) -> list[dict[str, Any]]:
        """Every asset's document, its first/last seen widened to its pairs' first.

        The hot path moves an asset's times only when it opens a flow or a pair (or
        answers with its identity), a pair's on every request; so here, once per
        snapshot (O(pairs)), each asset takes the span of its pairs: a master polling
        one server all day is last seen at its last poll, not at its first.
        """
        assets = self.assets
        for pair in self.pairs.values():
            for ip in (pair.key[1], pair.key[2]):
                asset = assets.get(ip)
                if asset is not None:
                    _widen(asset, pair.first_seen)
                    _widen(asset, pair.last_seen)
        return [a.to_dict() for a in assets.values()]

    def masters(self) -> list[dict[str, Any]]:
        """Every client's standing: learned, candidate (and its progress) or refused."""
        return [a.master_dict() for a in self.assets.values() if a.master is not None]

    # -- hot path ---------------------------------------------------------------------

    def observe(self, event: Event) -> list[DerivedEvent] | None:
        """Record one event; return deviations it revealed (usually ``None``)."""
        if type(event) is ModbusResponse and event.fc != 43 and event.fc != 17:
            return None  # only identity responses teach the inventory anything
        handler = self._handlers.get(event.__class__)
        if handler is None:
            return None
        if self.state is BaselineState.LEARNING and self.learning_period > 0:
            if self.started is None:
                self.started = event.ts
            elif event.ts - self.started >= self.learning_period:
                self.freeze(event.ts, vouch=self.vouch)
        handler(event)
        if self._out:
            out, self._out = self._out, []
            return out
        return None

    def _flow_pairs(self, flow: FlowId, ts: float, unit: int | None = None,
                    link: tuple[int, int] | None = None) -> dict[object, Pair]:
        if flow is self._last_flow:
            return self._last_units
        units = self._flows.get(flow)
        if units is None:
            self._new_flow(flow, ts, unit, link)  # may evict, which empties the flow cache
            units = {}
            self._flows.put(flow, units)
        self._last_flow = flow
        self._last_units = units
        return units

    # -- bounds -----------------------------------------------------------------------

    @property
    def evicted(self) -> dict[str, int]:
        """Entries forgotten per bounded table (assets and pairs: least recently seen)."""
        return {"inventory assets": self.assets_evicted,
                "inventory pairs": self.pairs_evicted,
                "link bindings": self.link_ips_dropped,
                self._flows.name: self._flows.evicted,
                self._reporting.name: self._reporting.evicted,
                self._link_claims.name: self._link_claims.evicted,
                self._reported_masters.name: self._reported_masters.evicted}

    def bound(self, *, max_assets: int, max_state: int) -> None:
        """Set the limits (the config's); a table already over its new limit sheds on growth."""
        if max_assets < 1 or max_state < 1:
            raise ValueError("max_assets and max_state must be at least 1")
        self.max_assets = max_assets
        self.max_state = max_state
        self._flows.limit = max_state
        self._reported_masters.limit = max_state
        self._reporting.limit = max_state
        self._link_claims.limit = max_state

    def state_sizes(self) -> dict[str, int]:
        return {"assets": len(self.assets), "pairs": len(self.pairs),
                "flow_cache": len(self._flows), "known_masters": len(self.known_masters),
                "unsolicited_rates": len(self._reporting),
                "reported_masters": len(self._reported_masters),
                "learned_masters": len(self.learned_masters),
                "learned_outstations": len(self.learned_outstations)}

    def _shed(self, table: dict[Any, Any]) -> list[Any]:
        """Keys to drop from a full ``table`` (insertion order = least recently seen first).

        Unlearned entries go first; learned ones only if the learned part alone
        overflows (a storm during learning), because they are the baseline.
        """
        want = max(1, int(self.max_assets * _EVICT_FRACTION)) + len(table) - self.max_assets
        victims = [k for k, v in table.items() if not v.learned][:want]
        if len(victims) < want:
            chosen = set(victims)
            victims += [k for k in table if k not in chosen][:want - len(victims)]
        # cached flow tables point at pairs and assume their assets exist
        self._flows.clear()
        self._last_flow = None
        return victims

    def _evict_assets(self) -> None:
        if not self.assets_evicted:
            log.warning("detection state inventory assets full (%d): forgetting the least "
                        "recently seen, unlearned first", self.max_assets)
        for ip in self._shed(self.assets):
            asset = self.assets.pop(ip)
            self.known_masters.discard(ip)
            self._reported_masters.pop(ip, None)
            if asset.learned:
                self.learned_masters.discard(ip)
                self.learned_outstations.discard(ip)
            self.assets_evicted += 1

    def _evict_pairs(self) -> None:
        if not self.pairs_evicted:
            log.warning("detection state inventory pairs full (%d): forgetting the least "
                        "recently seen, unlearned first", self.max_assets)
        for key in self._shed(self.pairs):
            del self.pairs[key]
            self.pairs_evicted += 1

    def _asset(self, ip: str, ts: float, role: str, mac: str | None) -> Asset:
        assets = self.assets
        asset = assets.pop(ip, None)  # re-inserted last: the dict is in recency order
        if asset is None:
            asset = Asset(ip, ts, not self.enforcing)
            if len(assets) >= self.max_assets:
                self._evict_assets()
        assets[ip] = asset
        _widen(asset, ts)
        asset.roles.add(role)
        if mac and asset.mac is None:
            asset.mac = mac
        return asset

    def _new_flow(self, flow: FlowId, ts: float, unit: int | None,
                  link: tuple[int, int] | None) -> None:
        client, server = flow.client, flow.server
        server_asset = self.assets.get(server)
        server_known = server_asset is not None and server_asset.learned
        self._asset(server, ts, "outstation", flow.server_mac)
        asset = self._asset(client, ts, "master", flow.client_mac)
        self.known_masters.add(client)
        if not self.enforcing:
            if asset.master is None:  # learned only by polling (see _progress)
                asset.master = MasterState.CANDIDATE
            self.learned_outstations.add(server)
        elif client not in self.learned_masters and server_known \
                and client not in self._reported_masters:
            self._reported_masters.put(client, None)
            # unit or link addresses say which protocol's new master this is (M8: Modbus)
            self._out.append(DerivedEvent(ts, DerivedKind.NEW_MASTER, client, flow.client_port,
                                          server, flow.server_port, unit=unit,
                                          link_src=link[0] if link else None,
                                          link_dst=link[1] if link else None,
                                          detail=f"first request from {client} "
                                                 f"(mac {flow.client_mac}) to {server}"))

    def _pair(self, units: dict[object, Pair], key: PairKey, ts: float, flow: FlowId,
              sub: object) -> Pair:
        pairs = self.pairs
        # re-inserted last: the dict is in recency order (declared: mypyc infers None)
        pair: Pair | None = pairs.pop(key, None)
        if pair is not None:
            pairs[key] = pair
            units[sub] = pair
            return pair
        if pair is None:
            if len(pairs) >= self.max_assets:
                self._evict_pairs()
            pair = pairs[key] = Pair(key, ts, not self.enforcing)
            if self.enforcing:
                self._out.append(DerivedEvent(
                    ts, DerivedKind.NEW_PAIR, flow.client, flow.client_port, flow.server,
                    flow.server_port, unit=key[4], link_src=key[5], link_dst=key[6],
                    detail=f"new pair {flow.client} -> {flow.server}:{flow.server_port} "
                           f"{'unit ' + str(key[4]) if key[0] == 'modbus' else 'link '}"
                           f"{'' if key[0] == 'modbus' else f'{key[5]}->{key[6]}'}"))
        units[sub] = pair
        return pair

    def _function(self, pair: Pair, fkey: object, ev: _Message, link: tuple[int, int] | None,
                  label: str) -> None:
        if self.enforcing:
            pair.fcs[fkey] = False
            if pair.learned:
                self._out.append(self._derived(ev, DerivedKind.NEW_FUNCTION, link,
                                               f"new {label} for a known pair"))
        else:
            pair.fcs[fkey] = True

    def _derived(self, ev: _Message, kind: DerivedKind, link: tuple[int, int] | None,
                 detail: str) -> DerivedEvent:
        flow = ev.flow
        return DerivedEvent(
            ev.ts, kind, flow.client, flow.client_port, flow.server, flow.server_port,
            unit=getattr(ev, "unit", None), link_src=link[0] if link else None,
            link_dst=link[1] if link else None, fc=ev.fc, sub=getattr(ev, "sub", None),
            address=getattr(ev, "address", None), quantity=getattr(ev, "quantity", None),
            detail=detail)

    def _range(self, pair: Pair, rkey: object, lo: int, hi: int, ev: _Message,
               link: tuple[int, int] | None) -> None:
        learned = pair.ranges.get(rkey)
        if self.state is not _ENFORCING:
            if learned is None:
                pair.ranges[rkey] = [lo, hi]
            else:
                if lo < learned[0]:
                    learned[0] = lo
                if hi > learned[1]:
                    learned[1] = hi
        elif pair.learned and pair.fcs.get(rkey) is True and (
                learned is None or lo < learned[0] or hi > learned[1]):
            span = "none" if learned is None else f"{learned[0]}-{learned[1]}"
            self._out.append(self._derived(ev, DerivedKind.ADDRESS_RANGE, link,
                                           f"{_fc_label(rkey)} range {lo}-{hi} outside "
                                           f"learned {span}"))

    def _cycle(self, pair: Pair, ckey: object, ts: float, ev: _Message,
               link: tuple[int, int] | None) -> None:
        cycle = pair.cycles.get(ckey)
        if cycle is None:
            if len(pair.cycles) >= _MAX_CYCLES:
                return
            cycle = pair.cycles[ckey] = Cycle()
        last = cycle.last
        cycle.last = ts
        if cycle.first is None:
            cycle.first = ts
        if cycle.silent:
            cycle.silent = False
        if last is None:
            return
        dt = ts - last
        if dt <= 0:
            return
        if self.state is not _ENFORCING:
            if cycle.n == 0:
                cycle.mean = dt
            else:
                cycle.dev += _ALPHA * (abs(dt - cycle.mean) - cycle.dev)
                cycle.mean += _ALPHA * (dt - cycle.mean)
            cycle.n += 1
            alike = cycle.prev > 0 and abs(dt - cycle.prev) <= 0.5 * cycle.prev
            cycle.streak = cycle.streak + 1 if alike else 1
            cycle.prev = dt
            if isinstance(ckey, tuple) and ckey[0] in _READS[pair.key[0]]:
                self._progress(pair.key[1], cycle, ts)
            return
        if not cycle.cyclic:
            return
        cycle.rmean = dt if cycle.rn == 0 else cycle.rmean + _RUN_ALPHA * (dt - cycle.rmean)
        cycle.rn += 1
        if cycle.rn < _MIN_RUN:
            return
        off = cycle.rmean < 0.5 * cycle.mean or cycle.rmean > 2.0 * cycle.mean
        if off and not cycle.flagged:
            cycle.flagged = True
            self._out.append(self._derived(
                ev, DerivedKind.PERIOD_CHANGE, link,
                f"period {cycle.rmean:.3f}s, learned {cycle.mean:.3f}s ± {cycle.dev:.3f}s"))
        elif not off:
            cycle.flagged = False

    def _modbus_request(self, ev: ModbusRequest) -> None:
        flow = ev.flow
        ts = ev.ts
        unit = ev.unit
        units = self._flow_pairs(flow, ts, unit)
        pair = units.get(unit)
        if pair is None:
            key: PairKey = ("modbus", flow.client, flow.server, flow.server_port, unit,
                            None, None)
            created = key not in self.pairs
            pair = self._pair(units, key, ts, flow, unit)
            self._asset(flow.server, ts, "outstation", flow.server_mac).units.add(unit)
            if created:
                self._out.append(DerivedEvent(
                    ts, DerivedKind.NEW_UNIT, flow.client,
                    flow.client_port, flow.server, flow.server_port, unit=unit, fc=ev.fc,
                    detail=f"first request to unit {unit}"))
        if ts > pair.last_seen:  # _widen, inline: this runs on every request
            pair.last_seen = ts
        elif ts < pair.first_seen:
            pair.first_seen = ts
        pair.count += 1
        self._requests(pair, ev, None)
        fc = ev.fc
        if fc in _WRITES:
            self._write(pair, ev)
        if fc not in pair.fcs:
            self._function(pair, fc, ev, None, f"function code {fc}")
        if ev.sub is not None and fc == 8:
            skey = (8, ev.sub)
            if skey not in pair.fcs:
                self._function(pair, skey, ev, None, f"diagnostics sub-function {ev.sub}")
        address = ev.address
        if address is not None:
            self._range(pair, fc, address, address + max(ev.quantity or 1, 1) - 1, ev, None)
        self._cycle(pair, (fc, address), ts, ev, None)

    def _identity(self, ip: str, ts: float, values: Mapping[str, str], ev: _Message,
                  link: tuple[int, int] | None) -> None:
        asset = self.assets.get(ip) or self._asset(ip, ts, "outstation", None)
        _widen(asset, ts)  # it answered: its sightings stay inside its span
        frame = getattr(ev, "frame", 0)
        seen = asset.identity_seen
        for key, value in values.items():
            where = seen.get(key)
            if where is None or asset.identity.get(key) != value:
                seen[key] = [frame, ts, frame, ts]  # first sight of this value
            elif ts >= where[3]:
                where[2], where[3] = frame, ts
            elif ts < where[1]:  # an older capture replayed after a newer one
                where[0], where[1] = frame, ts
            asset.identity[key] = value
            learned = asset.learned_identity.get(key)
            if not self.enforcing:
                asset.learned_identity[key] = value
            elif learned is not None and learned != value:
                self._out.append(self._derived(
                    ev, DerivedKind.IDENTITY_CHANGED, link,
                    f"{key}: {learned!r} -> {value!r}"))

    def _modbus_response(self, ev: ModbusResponse) -> None:
        if ev.exception is not None:
            return
        pdu = ev.pdu
        if type(pdu) is ReadDeviceIdResponse:
            assert isinstance(pdu, ReadDeviceIdResponse)
            values = {f"unit{ev.unit}.{obj.name}": str(obj.value) for obj in pdu.objects}
        elif type(pdu) is ReportServerIdResponse:
            assert isinstance(pdu, ReportServerIdResponse)
            values = {f"unit{ev.unit}.server_id": str(pdu.server_id),
                      f"unit{ev.unit}.server_id_data": pdu.additional.hex()}
        else:
            return
        self._identity(ev.flow.server, ev.ts, values, ev, None)

    def _dnp3_request(self, ev: DNP3Request) -> None:
        flow = ev.flow
        ts = ev.ts
        master, outstation = ev.link_src, ev.link_dst
        units = self._flow_pairs(flow, ts, None, (master, outstation))
        sub = (master, outstation)
        pair = units.get(sub)
        if pair is None:
            key: PairKey = ("dnp3", flow.client, flow.server, flow.server_port, None,
                            master, outstation)
            pair = self._pair(units, key, ts, flow, sub)
            self._asset(flow.client, ts, "master", flow.client_mac).links.add(master)
            self._asset(flow.server, ts, "outstation", flow.server_mac).links.add(outstation)
            self._binding("master", master, flow.client, ev, sub)
            self._binding("outstation", outstation, flow.server, ev, sub)
        if ts > pair.last_seen:  # _widen, inline: this runs on every request
            pair.last_seen = ts
        elif ts < pair.first_seen:
            pair.first_seen = ts
        pair.count += 1
        fc = ev.fc
        if fc != 0:  # a CONFIRM answers the outstation: not a request to count
            self._requests(pair, ev, sub)
        if fc not in pair.fcs:
            self._function(pair, fc, ev, sub, f"function code {fc}")
        first: object = None
        for header in ev.objects:
            gkey = ("g", header.group)
            if first is None:
                first = (header.group, header.variation)
            if gkey not in pair.fcs:
                self._function(pair, gkey, ev, sub, f"object group {header.group}")
            if header.start is not None and header.stop is not None:
                self._range(pair, gkey, header.start, header.stop, ev, sub)
        self._cycle(pair, (fc, first), ts, ev, sub)

    def _binding(self, role: str, link: int, ip: str, ev: _Message, sub: tuple[int, int]) -> None:
        ips = self.link_ips.get((role, link))
        if self.state is not _ENFORCING:
            if role == "master" and self._link_conflict(link, ip, ev, sub):
                return  # a second IP claiming one master address: D15 while learning too
            if ips is None:
                ips = self.link_ips[(role, link)] = set()
            if len(ips) < _MAX_LINK_IPS:
                ips.add(ip)
            elif ip not in ips:
                self.link_ips_dropped += 1
        elif ips and ip not in ips:
            self._out.append(self._derived(
                ev, DerivedKind.LINK_BINDING, sub,
                f"{role} link address {link} from {ip}, learned at {', '.join(sorted(ips))}"))

    def _link_conflict(self, link: int, ip: str, ev: _Message, sub: tuple[int, int]) -> bool:
        """While learning: the master address ``link`` toward this outstation was
        already used from another IP. The first claimant keeps the binding."""
        claim = (ev.flow.server, link)
        prior = self._link_claims.get(claim)
        if prior is None:
            self._link_claims.put(claim, ip)
            return False
        if prior == ip:
            return False
        self._out.append(self._derived(
            ev, DerivedKind.LINK_BINDING, sub,
            f"master link address {link} toward {ev.flow.server} from {ip}, "
            f"already used from {prior}"))
        return True

    def _unsolicited(self, ev: DNP3Unsolicited) -> None:
        """D9: more unsolicited responses in one window than the outstation's norm allows.

        The norm is the most it sent in any window while learning (a window that
        stormed is not learned), times ``_UNSOLICITED_FACTOR``; an outstation never
        seen reporting gets the absolute ceiling. Once enforcing, the peak is fixed.
        """
        key = (ev.flow.server, ev.link_src)
        rep = self._reporting.get(key)
        ts = ev.ts
        window = self.unsolicited_window
        if rep is None:
            rep = Reporting(ts)
            self._reporting.put(key, rep)
        else:
            self._reporting.move_to_end(key)
        rep.add(ts, window, not self.enforcing)
        ceiling = _UNSOLICITED_CEILING
        limit = max(ceiling, _UNSOLICITED_FACTOR * rep.peak) if rep.windows else ceiling
        if rep.count > limit and not rep.flagged:
            rep.flagged = True
            norm = (f"learned peak {rep.peak} per window" if rep.windows
                    else "never seen reporting")
            flow = ev.flow
            self._out.append(DerivedEvent(
                ts, DerivedKind.UNSOLICITED_STORM, flow.server, flow.server_port, flow.client,
                flow.client_port, link_src=ev.link_src, link_dst=ev.link_dst, fc=ev.fc,
                detail=f"{rep.count} unsolicited responses within {window:g}s, "
                       f"limit {limit:g} ({norm})"))

    def _write(self, pair: Pair, ev: ModbusRequest) -> None:
        """M16: a write identical to the pair's previous request (no read between).

        Kept on the pair (two slots) rather than in a table of its own: the pair is
        already at hand and bounded, and reads cost nothing.
        """
        fp = hash((ev.fc, ev.address, ev.quantity, ev.pdu))
        repeat = pair.write == fp and pair.write_at == pair.count - 1
        pair.write, pair.write_at = fp, pair.count
        if repeat:
            flow = ev.flow
            self._out.append(DerivedEvent(
                ev.ts, DerivedKind.IDENTICAL_WRITE, flow.client, flow.client_port, flow.server,
                flow.server_port, unit=ev.unit, fc=ev.fc, address=ev.address,
                quantity=ev.quantity, detail="write identical to the client's previous request"))

    def _requests(self, pair: Pair, ev: _Message, link: tuple[int, int] | None) -> None:
        """B6: more requests from the client of ``pair`` in one window than its norm.

        While learning every full window teaches the pair's peak, and the limit is
        the absolute ``request_ceiling`` (a flood then refuses the client as a
        master, so its pair is not learned). Enforcing, a learned pair may send
        ``request_factor`` times its peak (never less than a tenth of the ceiling,
        so a quiet pair's operator may send a few commands at once); a
        pair with no learned rate (new, or imported without one) the ceiling. One
        finding per window. The state is one small object per pair, so it is
        bounded with the pair table (``max_assets``).
        """
        rate = pair.requests
        ts = ev.ts
        if rate is None:
            rate = pair.requests = Reporting(ts)
        if ts - rate.start >= self.request_window or ts < rate.start:
            rate.add(ts, self.request_window, not self.enforcing, learn_flagged=True)
        else:
            rate.count += 1  # the common case, inline: this runs on every request
        ceiling = self.request_ceiling
        if rate.count <= _REQUEST_FLOOR * ceiling or rate.flagged:
            return  # below every limit
        learned = self.enforcing and pair.learned and rate.windows > 0
        limit = max(self.request_factor * rate.peak, _REQUEST_FLOOR * ceiling) if learned \
            else ceiling
        if rate.count <= limit:
            return
        rate.flagged = True
        norm = f"learned peak {rate.peak} per window" if learned else (
            "learning: absolute ceiling" if not self.enforcing else "no learned rate")
        self._out.append(self._derived(
            ev, DerivedKind.REQUEST_FLOOD, link,
            f"{rate.count} requests within {self.request_window:g}s, limit {limit:g} "
            f"({norm})"))

    def _dnp3_response(self, ev: DNP3Response | DNP3Unsolicited) -> None:
        if type(ev) is DNP3Unsolicited:
            assert isinstance(ev, DNP3Unsolicited)
            self._unsolicited(ev)
        values: dict[str, str] = {}
        for header in ev.objects:
            if header.group == 0:
                for detail in header.details:
                    if isinstance(detail, DeviceAttribute) and detail.value is not None:
                        values[f"link{ev.link_src}.g0v{detail.attribute}"] = str(detail.value)
        if values:
            self._identity(ev.flow.server, ev.ts, values, ev, (ev.link_src, ev.link_dst))

    # -- clock ------------------------------------------------------------------------

    def tick(self, now: float) -> list[DerivedEvent]:
        """Cycles that used to run and have gone quiet by ``now`` (B4, silence)."""
        if not self.enforcing:
            return []
        out: list[DerivedEvent] = []
        for pair in self.pairs.values():
            if not pair.learned:
                continue
            for ckey, cycle in pair.cycles.items():
                if cycle.silent or cycle.last is None or not cycle.cyclic:
                    continue
                limit = max(5 * cycle.mean, cycle.mean + 8 * cycle.dev, 2.0)
                if now - cycle.last > limit:
                    cycle.silent = True
                    proto, client, server, port, unit, master, outstation = pair.key
                    fc, where = ckey if isinstance(ckey, tuple) else (ckey, None)
                    out.append(DerivedEvent(
                        now, DerivedKind.PERIOD_STOPPED, client, None, server, port,
                        unit=unit, link_src=master, link_dst=outstation,
                        fc=fc if isinstance(fc, int) else None,
                        detail=f"{proto} fc {fc} {where} silent for {now - cycle.last:.1f}s, "
                               f"learned period {cycle.mean:.3f}s"))
        return out

    # -- views and files --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"state": self.state.value, "started": self.started,
                "frozen_at": self.frozen_at, "learning_period": self.learning_period,
                "assets": len(self.assets), "pairs": len(self.pairs),
                "learned_pairs": sum(1 for p in self.pairs.values() if p.learned),
                "learned_masters": len(self.learned_masters),
                "min_cycles": self.min_cycles, "min_span": self.min_span}

    def export(self) -> dict[str, Any]:
        """The learned baseline as a JSON-ready document (what an engineer reviews)."""
        pairs = []
        for pair in self.pairs.values():
            if not pair.learned:
                continue
            d = pair.to_dict()
            d["functions"] = sorted((_fc_label(k) for k, v in pair.fcs.items() if v), key=str)
            d["cycles"] = [{"key": [_fc_label(k[0]) if isinstance(k, tuple) else str(k),
                                    list(k[1]) if isinstance(k, tuple) and isinstance(
                                        k[1], tuple) else (k[1] if isinstance(k, tuple)
                                                           else None)],
                            "mean": c.mean, "dev": c.dev, "n": c.n}
                           for k, c in pair.cycles.items() if c.n]
            rate = pair.requests
            if rate is not None and rate.windows:  # B6: the learned request rate
                d["rate"] = {"peak": rate.peak, "windows": rate.windows}
            pairs.append(d)
        return {
            "format": BASELINE_FORMAT, "version": BASELINE_VERSION,
            "state": self.state.value, "started": self.started, "frozen_at": self.frozen_at,
            "masters": sorted(self.learned_masters),
            "outstations": sorted(self.learned_outstations),
            "min_cycles": self.min_cycles, "min_span": self.min_span,
            "master_states": self.masters(),
            "unsolicited": [{"ip": ip, "link": link, "peak": r.peak, "windows": r.windows}
                            for (ip, link), r in self._reporting.items() if r.windows],
            "assets": [a.to_dict() | {"identity": dict(sorted(a.learned_identity.items()))}
                       for a in self.assets.values() if a.learned],
            "pairs": pairs,
            "links": [{"role": role, "link": link, "ips": sorted(ips)}
                      for (role, link), ips in sorted(self.link_ips.items())],
        }

    def import_baseline(self, doc: Mapping[str, Any]) -> None:
        """Replace what was learned with a reviewed baseline and enforce it."""
        try:
            if doc.get("format") != BASELINE_FORMAT:
                raise BaselineError(f"format: expected {BASELINE_FORMAT!r}")
            if doc.get("version") != BASELINE_VERSION:
                raise BaselineError(f"version: expected {BASELINE_VERSION}")
            self.__init__(self.learning_period, max_assets=self.max_assets,  # type: ignore[misc]
                          max_state=self.max_state, min_cycles=self.min_cycles,
                          min_span=self.min_span, vouch=self.vouch,
                          unsolicited_window=self.unsolicited_window,
                          request_window=self.request_window,
                          request_ceiling=self.request_ceiling,
                          request_factor=self.request_factor)
            self.learned_masters = set(map(str, doc["masters"]))
            self.learned_outstations = set(map(str, doc["outstations"]))
            self.known_masters = set(self.learned_masters)
            for a in doc["assets"]:
                asset = Asset(str(a["ip"]), float(a["first_seen"]), True)
                asset.last_seen = float(a["last_seen"])
                asset.mac = a.get("mac")
                asset.roles = set(a["roles"])
                asset.units = {int(u) for u in a["units"]}
                asset.links = {int(u) for u in a["links"]}
                asset.identity = dict(a["identity"])
                asset.learned_identity = dict(a["identity"])
                self.assets[asset.ip] = asset
            for p in doc["pairs"]:
                key: PairKey = (str(p["proto"]), str(p["client"]), str(p["server"]),
                                int(p["port"]), p["unit"], p["link_master"],
                                p["link_outstation"])
                pair = Pair(key, float(p["first_seen"]), True)
                pair.last_seen = float(p["last_seen"])
                pair.count = int(p["count"])
                pair.fcs = {_fc_key(str(f)): True for f in p["functions"]}
                pair.ranges = {_fc_key(k): [int(v[0]), int(v[1])]
                               for k, v in p["ranges"].items()}
                rate = p.get("rate")
                if rate is not None:
                    pair.requests = Reporting(0.0)
                    pair.requests.peak, pair.requests.windows = int(rate["peak"]), \
                        int(rate["windows"])
                for c in p.get("cycles", []):
                    fc_label, where = c["key"]
                    ckey = (_fc_key(fc_label), tuple(where) if isinstance(where, list)
                            else where)
                    cycle = pair.cycles[ckey] = Cycle()
                    cycle.mean, cycle.dev, cycle.n = float(c["mean"]), float(c["dev"]), \
                        int(c["n"])
                self.pairs[key] = pair
            for link in doc["links"]:
                self.link_ips[(str(link["role"]), int(link["link"]))] = set(link["ips"])
            for u in doc.get("unsolicited", []):
                learned = Reporting(0.0)
                learned.peak, learned.windows = int(u["peak"]), int(u["windows"])
                self._reporting.put((str(u["ip"]), int(u["link"])), learned)
            for m in doc.get("master_states", []):
                held = self.assets.get(str(m["ip"]))
                if held is not None:
                    held.master = MasterState(m["state"])
                    held.poller, held.reason = bool(m["poller"]), str(m["reason"])
                    held.best_cycles, held.best_span = int(m["cycles"]), float(m["span"])
                    held.excused = int(m["excused"])
            for ip in self.learned_masters:
                if ip in self.assets:
                    self.assets[ip].master = MasterState.LEARNED
            self.started = doc.get("started")
            self.freeze(doc.get("frozen_at"), vouch=False)
        except BaselineError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise BaselineError(f"malformed baseline: {type(err).__name__}: {err}") from None


def vouch(doc: dict[str, Any]) -> list[str]:
    """``baseline freeze`` on a stored baseline document: what :meth:`Inventory.freeze`
    does with ``vouch``: clean candidates that poll become learned masters (and
    their pairs learned); refused hosts stay out. Returns the IPs it promoted."""
    promoted = []
    for m in doc.get("master_states", []):
        if m.get("state") == MasterState.CANDIDATE.value and m.get("poller"):
            m["state"] = MasterState.LEARNED.value
            promoted.append(str(m["ip"]))
    doc["masters"] = sorted(set(doc.get("masters", [])) | set(promoted))
    return promoted
