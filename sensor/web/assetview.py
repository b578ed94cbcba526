"""One device as the asset page shows it: identity, roles, function codes, peers and
the learned polling periods, from the stored asset, its pairs and the baseline.

The store keeps each of these apart (``assets``, ``pairs``, ``baseline`` documents,
see ``mamori.sensor.alerting.store``); this module joins them for one IP, so the template only
lays out what is here. Everything is read from JSON the sensor wrote, so every
field is read defensively: a missing or odd value is left out, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mamori.sensor.web.fcclass import classify, fc_of
from mamori.sensor.web.fcnames import identity_label, label_name

MAX_ASSET_KEY = 100  # longer path parameters are no stored IP (IPv6 is at most 45)


@dataclass(frozen=True, slots=True)
class IdentityRow:
    key: str
    where: str  # "unit 1" / "link 10"
    what: str  # "Vendor name"
    value: str
    first_frame: int | None
    last_frame: int | None
    first_seen: float | None
    last_seen: float | None


@dataclass(frozen=True, slots=True)
class FunctionRow:
    proto: str
    label: str
    name: str
    classes: tuple[str, ...]
    sent: bool  # this device asked for it (as the master)
    received: bool  # this device was asked (as the outstation)


@dataclass(frozen=True, slots=True)
class PeerRow:
    ip: str
    proto: str
    role: str  # the peer's role toward this device: "master" or "outstation"
    port: int | None
    address: str  # "unit 1" / "link 1 → 10"
    functions: tuple[str, ...]
    count: int | None
    period: float | None  # the pair's observed median period
    learned: tuple[str, ...]  # the baseline's learned cycles of this pair, in words
    first_seen: float | None
    last_seen: float | None


@dataclass
class AssetView:
    ip: str
    identity: list[IdentityRow] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    functions: list[FunctionRow] = field(default_factory=list)
    peers: list[PeerRow] = field(default_factory=list)
    master_state: str | None = None  # "learned" / "candidate" / "refused"
    master_reason: str = ""
    learned_master: bool = False
    learned_outstation: bool = False
    baseline_state: str | None = None
    first_seen: float | None = None  # the asset's span widened by its pairs' (see below)
    last_seen: float | None = None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _label_key(label: str) -> tuple[int, int, str]:
    fc = fc_of(label)
    return (1 if fc is None else 0, fc if fc is not None else 0, label)


def _pair_key(p: Mapping[str, Any]) -> tuple[Any, ...]:
    return (p.get("proto"), p.get("client"), p.get("server"), p.get("port"), p.get("unit"),
            p.get("link_master"), p.get("link_outstation"))


def cycle_text(proto: str, cycle: Mapping[str, Any]) -> str | None:
    """A baseline cycle ``{"key": ["3", 0], "mean", "dev", "n"}`` in words."""
    key, mean = cycle.get("key"), _num(cycle.get("mean"))
    if not isinstance(key, list) or len(key) != 2 or mean is None or mean <= 0:
        return None
    label, where = str(key[0]), key[1]
    name = label_name(proto, label)
    what = f"FC {label}" + (f" {name}" if name else "")
    if proto == "modbus" and isinstance(where, int):
        what += f" at address {where}"
    elif isinstance(where, list) and len(where) == 2:
        what += f" of g{where[0]}v{where[1]}"
    dev, n = _num(cycle.get("dev")), _int(cycle.get("n"))
    out = f"{what}: every {mean:.3f} s"
    if dev is not None:
        out += f" ± {dev:.3f} s"
    if n is not None:
        out += f" ({n} intervals)"
    return out


def asset_view(doc: Mapping[str, Any], pairs: Sequence[Mapping[str, Any]],
               baseline: Mapping[str, Any] | None) -> AssetView:
    ip = str(doc.get("ip", ""))
    view = AssetView(ip)
    identity = _mapping(doc.get("identity"))
    seen = _mapping(doc.get("identity_seen"))
    for key, value in sorted(identity.items()):
        where, what = identity_label(str(key))
        s = _mapping(seen.get(key))
        view.identity.append(IdentityRow(
            str(key), where, what, str(value), _int(s.get("first_frame")),
            _int(s.get("last_frame")), _num(s.get("first_seen")), _num(s.get("last_seen"))))

    learned_cycles: dict[tuple[Any, ...], list[str]] = {}
    if baseline is not None:
        view.baseline_state = str(baseline.get("state")) if baseline.get("state") else None
        view.learned_master = ip in (baseline.get("masters") or [])
        view.learned_outstation = ip in (baseline.get("outstations") or [])
        for m in baseline.get("master_states") or []:
            if isinstance(m, Mapping) and m.get("ip") == ip:
                view.master_state = str(m.get("state") or "") or None
                view.master_reason = str(m.get("reason") or "")
        for bp in baseline.get("pairs") or []:
            if not isinstance(bp, Mapping):
                continue
            proto = str(bp.get("proto"))
            texts = [t for c in bp.get("cycles") or [] if isinstance(c, Mapping)
                     and (t := cycle_text(proto, c))]
            if texts:
                learned_cycles[_pair_key(bp)] = texts

    functions: dict[tuple[str, str], list[bool]] = {}
    protocols: set[str] = set()
    for p in pairs:
        proto = str(p.get("proto", ""))
        client, server = p.get("client"), p.get("server")
        if ip not in (client, server):
            continue
        protocols.add(proto)
        labels = [str(f) for f in p.get("functions") or []]
        for label in labels:
            sides = functions.setdefault((proto, label), [False, False])
            sides[0] |= client == ip
            sides[1] |= server == ip
        if p.get("unit") is not None:
            address = f"unit {p.get('unit')}"
        elif p.get("link_master") is not None:
            address = f"link {p.get('link_master')} → {p.get('link_outstation')}"
        else:
            address = ""
        peer, role = (str(server), "outstation") if client == ip else (str(client), "master")
        view.peers.append(PeerRow(
            peer, proto, role, _int(p.get("port")), address,
            tuple(sorted(labels, key=_label_key)), _int(p.get("count")), _num(p.get("period")),
            tuple(learned_cycles.get(_pair_key(p), ())), _num(p.get("first_seen")),
            _num(p.get("last_seen"))))
    view.protocols = sorted(protocols)
    # The inventory moves an asset's last_seen when it opens a flow or a pair (not on
    # every request: that is the hot path); its pairs' times say when it last talked.
    times = [t for d in (doc, *(p for p in pairs if ip in (p.get("client"), p.get("server"))))
             for t in (_num(d.get("first_seen")), _num(d.get("last_seen"))) if t is not None]
    if times:
        view.first_seen, view.last_seen = min(times), max(times)
    for (proto, label), (sent, received) in sorted(
            functions.items(), key=lambda kv: (kv[0][0], _label_key(kv[0][1]))):
        view.functions.append(FunctionRow(proto, label, label_name(proto, label),
                                          tuple(classify(proto, [label])), sent, received))
    view.peers.sort(key=lambda r: (r.proto, r.ip, r.address))
    return view
