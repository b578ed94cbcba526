"""The forwarding wire format (version 1): msgpack, positional, strictly validated.

Shared by the forwarder (sensor side) and the collector; neither owns it. The layout
is documented field by field in ``docs/wire.md`` so that a collector written in any
language with a msgpack library can read it. In short, every ZeroMQ message is one
frame holding one msgpack array::

    sensor -> collector   [ver, epoch, seq, ts, kind, body]
                           ver   uint   WIRE_VERSION (1)
                           epoch uint   sensor boot epoch, +1 at every sensor start
                           seq   uint   +1 per journaled message within an epoch, from 1
                           ts    float  sensor wall clock, seconds since 1970 (UTC)
                           kind  uint   1 alert, 2 heartbeat, 3 asset, 4 health, 5 lost
                           body  kind-specific (see below)

    collector -> sensor   [ver, kind, body]
                           kind 16 ack     body [epoch, seq]          cumulative
                           kind 17 replay  body [epoch, first, last]  inclusive range

Positional arrays (not maps with names) keep an alert near 1/10 of the equivalent
Suricata EVE JSON record; the order is fixed by ``ALERT_FIELDS``.

The decoder treats every byte as hostile: size caps before unpacking, msgpack limits
on string/bin/array/map lengths, no ext types, exact types per position, and every
failure is a ``WireError`` with a short ``reason`` that the collector counts.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

import msgpack

from sensor.alerts import Alert, Severity

WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024  # a whole frame; alerts are ~100-200 bytes
MAX_STR = 1024  # any string
MAX_LIST = 256  # any array (attack ids, evidence lists)
MAX_MAP = 64  # any map (evidence, heartbeat, asset, health)
MAX_DEPTH = 4  # nesting inside a body
MAX_UINT = 2**63 - 1


class Kind(IntEnum):
    """Message kinds. 1-15 go sensor -> collector, 16+ collector -> sensor."""

    ALERT = 1
    HEARTBEAT = 2  # not journaled: seq is the last seq assigned in this epoch
    ASSET = 3
    HEALTH = 4
    LOST = 5  # not journaled: body [first, last] of a range the journal evicted unacked
    RELAY = 6  # a collector forwarding another sensor's message upward (federation)
    ACK = 16
    REPLAY = 17
    RELAY_ACK = 18  # ack of a relayed stream: [origin, epoch, seq]
    RELAY_REPLAY = 19  # replay of a relayed stream: [origin, epoch, first, last]


JOURNALED_KINDS = frozenset({Kind.ALERT, Kind.ASSET, Kind.HEALTH})
SENSOR_KINDS = frozenset({Kind.ALERT, Kind.HEARTBEAT, Kind.ASSET, Kind.HEALTH, Kind.LOST})
UPSTREAM_KINDS = SENSOR_KINDS | {Kind.RELAY}
MAX_RELAY_PATH = 16  # collectors a relayed message may have passed through

# Position of every Alert field in an alert body. Never reorder: append and bump the version.
ALERT_FIELDS: tuple[str, ...] = (
    "id", "count", "rule", "precursor", "severity", "attack", "title", "proto",
    "first_ts", "last_ts", "src", "sport", "dst", "dport", "unit", "link_src", "link_dst",
    "evidence",
)
# Fields a forwarding policy cannot withhold: without them an alert means nothing.
REQUIRED_ALERT_FIELDS = frozenset(
    {"id", "count", "rule", "precursor", "severity", "proto", "first_ts", "last_ts"})
# Principle 5: register and point values stay on the box unless the site widens this.
DEFAULT_DENY_FIELDS: tuple[str, ...] = (
    "evidence.data", "evidence.payload", "evidence.points", "evidence.registers",
    "evidence.value", "evidence.values",
)


class WireError(ValueError):
    """A peer sent something that is not a valid message. ``reason`` is a counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One sensor -> collector message, validated. ``body`` is already checked per kind."""

    epoch: int
    seq: int
    ts: float
    kind: Kind
    body: Any


@dataclass(frozen=True, slots=True)
class Relayed:
    """The body of a kind 6 message: another sensor's message, as a relay forwards it.

    ``origin`` is the original sensor's key (Z85), ``name`` its name at the first
    collector, ``path`` the public keys of the collectors it passed through (the first
    one first; the last is the relay that sent it). ``inner`` carries the original
    epoch, seq, timestamp, kind and validated body.
    """

    origin: str
    name: str
    path: tuple[str, ...]
    inner: Envelope


@dataclass(frozen=True, slots=True)
class Ack:
    """Everything up to and including ``seq`` of ``epoch`` is stored by the collector.

    ``origin`` is set for a relayed stream (kind 18): the original sensor's key."""

    epoch: int
    seq: int
    origin: str = ""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """The collector misses ``first..last`` (inclusive) of ``epoch``; resend from the journal.

    ``origin`` is set for a relayed stream (kind 19)."""

    epoch: int
    first: int
    last: int
    origin: str = ""


# -- forwarding policy ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    """Which alert fields leave the box. ``allow`` of ``("*",)`` means every field.

    Names are Alert fields (``src``) or evidence keys (``evidence.fc``). Deny wins
    over allow. Withheld top-level fields travel as nil; withheld evidence keys are
    left out of the evidence map.
    """

    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = DEFAULT_DENY_FIELDS

    def __post_init__(self) -> None:
        for name in (*self.allow, *self.deny):
            top = name.split(".", 1)[0]
            if name != "*" and top not in ALERT_FIELDS:
                raise ValueError(f"{name!r} is not an alert field ({', '.join(ALERT_FIELDS)})")
        blocked = sorted(REQUIRED_ALERT_FIELDS.intersection(self.deny))
        if blocked:
            raise ValueError(f"cannot deny required field(s) {', '.join(blocked)}")

    def _allowed(self, name: str) -> bool:
        top = name.split(".", 1)[0]
        if name in self.deny or top in self.deny:
            return False
        if name in REQUIRED_ALERT_FIELDS:
            return True
        return "*" in self.allow or name in self.allow or top in self.allow

    def apply(self, alert: Alert) -> tuple[list[Any], tuple[str, ...]]:
        """The alert body to send, and the names of the fields it carries (for the audit)."""
        body = alert_body(alert)
        sent: list[str] = []
        for index, name in enumerate(ALERT_FIELDS):
            if name == "evidence":
                evidence = {k: v for k, v in alert.evidence.items()
                            if self._allowed(f"evidence.{k}")}
                body[index] = evidence or None
                sent.extend(f"evidence.{k}" for k in sorted(evidence))
            elif not self._allowed(name):
                body[index] = None
            elif body[index] is not None:
                sent.append(name)
        return body, tuple(sent)


# -- encoding ------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """msgpack ``default`` hook: sets, enums and odd types become plain values."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True, default=_plain)
    return data


def _addr(text: str | None) -> bytes | str | None:
    """Addresses travel as 4 or 16 raw bytes; anything else (a MAC, a name) as text."""
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        return text


def alert_body(alert: Alert) -> list[Any]:
    """All fields of an alert in ``ALERT_FIELDS`` order (before any policy)."""
    return [
        alert.id, alert.count, alert.rule, alert.precursor, int(alert.severity),
        list(alert.attack), alert.title, alert.proto, alert.first_ts, alert.last_ts,
        _addr(alert.src), alert.sport, _addr(alert.dst), alert.dport, alert.unit,
        alert.link_src, alert.link_dst, dict(alert.evidence) or None,
    ]


def encode(epoch: int, seq: int, ts: float, kind: Kind, body: Any) -> bytes:
    """One sensor -> collector frame."""
    return pack([WIRE_VERSION, epoch, seq, float(ts), int(kind), body])


def encode_ack(ack: Ack) -> bytes:
    if ack.origin:
        return pack([WIRE_VERSION, int(Kind.RELAY_ACK), [ack.origin, ack.epoch, ack.seq]])
    return pack([WIRE_VERSION, int(Kind.ACK), [ack.epoch, ack.seq]])


def encode_replay(req: ReplayRequest) -> bytes:
    if req.origin:
        return pack([WIRE_VERSION, int(Kind.RELAY_REPLAY),
                     [req.origin, req.epoch, req.first, req.last]])
    return pack([WIRE_VERSION, int(Kind.REPLAY), [req.epoch, req.first, req.last]])


def encode_relayed(origin: str, name: str, path: Sequence[str], epoch: int, seq: int,
                   ts: float, kind: Kind, body: Any) -> bytes:
    """One relay -> upper collector frame: the original (epoch, seq, ts) in the envelope."""
    return pack([WIRE_VERSION, epoch, seq, float(ts), int(Kind.RELAY),
                 [origin, name, list(path), int(kind), body]])


# -- decoding ------------------------------------------------------------------------------


def _unpack(data: bytes, max_bytes: int) -> Any:
    if len(data) > max_bytes:
        raise WireError("too_large", f"{len(data)} bytes > {max_bytes}")
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_STR, max_bin_len=MAX_STR, max_array_len=MAX_LIST,
            max_map_len=MAX_MAP, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as err:
        raise WireError("not_msgpack", type(err).__name__) from None


def _uint(value: Any, what: str, high: int = MAX_UINT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise WireError("bad_type", f"{what} must be an unsigned integer")
    return value


def _opt_uint(value: Any, what: str, high: int = MAX_UINT) -> int | None:
    return None if value is None else _uint(value, what, high)


def _float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError("bad_type", f"{what} must be a number")
    result = float(value)
    if not math.isfinite(result):
        raise WireError("bad_type", f"{what} must be finite")
    return result


def _str(value: Any, what: str, high: int = MAX_STR) -> str:
    if not isinstance(value, str) or len(value) > high:
        raise WireError("bad_type", f"{what} must be a string of at most {high}")
    return value


def _opt_str(value: Any, what: str, high: int = MAX_STR) -> str | None:
    return None if value is None else _str(value, what, high)


def _check_value(value: Any, depth: int = 0) -> None:
    """Free-form values (evidence, heartbeat fields): scalars, lists and maps, bounded."""
    if depth > MAX_DEPTH:
        raise WireError("bad_body", "nested too deep")
    if value is None or isinstance(value, bool | int | str | bytes):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise WireError("bad_body", "non-finite number")
        return
    if isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _str(key, "map key", 64)
            _check_value(item, depth + 1)
        return
    raise WireError("bad_body", f"unexpected {type(value).__name__}")


def _map(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError("bad_body", f"{what} must be a map")
    _check_value(value)
    return value


def _address(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        if len(value) == 4:
            return str(ipaddress.IPv4Address(value))
        if len(value) == 16:
            return str(ipaddress.IPv6Address(value))
        raise WireError("bad_body", f"{what} must be 4 or 16 bytes")
    return _str(value, what, 64)


def decode_alert(body: Any) -> Alert:
    """An alert body back into an ``Alert``; raises ``WireError`` on any deviation."""
    if not isinstance(body, list) or len(body) != len(ALERT_FIELDS):
        raise WireError("bad_body", f"alert must be an array of {len(ALERT_FIELDS)}")
    (id_, count, rule, precursor, severity, attack, title, proto, first_ts, last_ts,
     src, sport, dst, dport, unit, link_src, link_dst, evidence) = body
    if attack is None:
        attack = []
    if not isinstance(attack, list):
        raise WireError("bad_body", "attack must be an array")
    sev = _uint(severity, "severity", max(Severity))
    first, last = _float(first_ts, "first_ts"), _float(last_ts, "last_ts")
    return Alert(
        id=_uint(id_, "id"), count=_uint(count, "count"), rule=_str(rule, "rule", 128),
        precursor=_str(precursor, "precursor", 16), severity=Severity(sev),
        attack=tuple(_str(a, "attack id", 32) for a in attack),
        title=_opt_str(title, "title", 256) or "", proto=_str(proto, "proto", 16),
        first_ts=first, last_ts=last,
        src=_address(src, "src"), sport=_opt_uint(sport, "sport", 65535),
        dst=_address(dst, "dst"), dport=_opt_uint(dport, "dport", 65535),
        unit=_opt_uint(unit, "unit", 255), link_src=_opt_uint(link_src, "link_src", 65535),
        link_dst=_opt_uint(link_dst, "link_dst", 65535),
        evidence=_map(evidence, "evidence") if evidence is not None else {},
    )


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Envelope:
    """Validate one sensor -> collector frame. The body of an alert becomes an ``Alert``;
    that of a relayed message (kind 6) a ``Relayed`` holding the validated original."""
    obj = _unpack(data, max_bytes)
    if not isinstance(obj, list) or len(obj) != 6:
        raise WireError("bad_envelope", "not an array of 6")
    version, epoch, seq, ts, kind, body = obj
    if version != WIRE_VERSION or isinstance(version, bool):
        raise WireError("bad_version", repr(version)[:32])
    epoch = _uint(epoch, "epoch", 2**32 - 1)
    seq = _uint(seq, "seq")
    stamp = _float(ts, "ts")
    if isinstance(kind, bool) or not isinstance(kind, int) or kind not in UPSTREAM_KINDS:
        raise WireError("unknown_kind", repr(kind)[:32])
    if kind == Kind.RELAY:
        return Envelope(epoch, seq, stamp, Kind.RELAY, _relayed(epoch, seq, stamp, body))
    return _envelope(epoch, seq, stamp, Kind(kind), body)


def _envelope(epoch: int, seq: int, stamp: float, k: Kind, body: Any) -> Envelope:
    if k in JOURNALED_KINDS and seq == 0:
        raise WireError("bad_type", "journaled messages have seq >= 1")
    checked: Any
    if k is Kind.ALERT:
        checked = decode_alert(body)
    elif k is Kind.LOST:
        if not isinstance(body, list) or len(body) != 1:
            raise WireError("bad_body", "lost body must be [first]")
        checked = _uint(body[0], "first")
        if checked > seq or checked == 0:
            raise WireError("bad_body", "lost range is empty")
    else:
        checked = _map(body, k.name.lower())
    return Envelope(epoch, seq, stamp, k, checked)


def _key(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 40:
        raise WireError("bad_body", f"{what} must be a 40-character Z85 key")
    return value


def _relayed(epoch: int, seq: int, stamp: float, body: Any) -> Relayed:
    """[origin, name, path, kind, body]; the inner kind is any sensor kind, not 6."""
    if not isinstance(body, list) or len(body) != 5:
        raise WireError("bad_body", "relayed body must be [origin, name, path, kind, body]")
    origin, name, path, kind, inner = body
    if not isinstance(path, list) or not 1 <= len(path) <= MAX_RELAY_PATH:
        raise WireError("bad_body", f"relay path must hold 1..{MAX_RELAY_PATH} keys")
    if isinstance(kind, bool) or not isinstance(kind, int) or kind not in SENSOR_KINDS:
        raise WireError("unknown_kind", f"relayed {repr(kind)[:24]}")
    return Relayed(_key(origin, "origin"), _str(name, "name", 64),
                   tuple(_key(p, "relay path entry") for p in path),
                   _envelope(epoch, seq, stamp, Kind(kind), inner))


def decode_control(data: bytes, relayed: bool = False) -> Ack | ReplayRequest:
    """A collector -> sensor frame. The sensor is as strict with the collector.

    ``relayed``: the reader is a relay, which takes only kinds 18 and 19 (acks and
    replay requests naming the original sensor); a sensor takes only 16 and 17."""
    obj = _unpack(data, 1024)
    if not isinstance(obj, list) or len(obj) != 3 or obj[0] != WIRE_VERSION:
        raise WireError("bad_envelope", "not [1, kind, body]")
    _, kind, body = obj
    if not isinstance(body, list):
        raise WireError("bad_body", "control body must be an array")
    origin = ""
    if relayed and kind in (Kind.RELAY_ACK, Kind.RELAY_REPLAY) and body:
        origin, body = _key(body[0], "origin"), body[1:]
        kind = Kind.ACK if kind == Kind.RELAY_ACK else Kind.REPLAY
    elif relayed:
        raise WireError("unknown_kind", repr(kind)[:32])
    if kind == Kind.ACK and len(body) == 2:
        return Ack(_uint(body[0], "epoch"), _uint(body[1], "seq"), origin)
    if kind == Kind.REPLAY and len(body) == 3:
        first, last = _uint(body[1], "first"), _uint(body[2], "last")
        if not 1 <= first <= last:
            raise WireError("bad_body", "empty replay range")
        return ReplayRequest(_uint(body[0], "epoch"), first, last, origin)
    raise WireError("unknown_kind", repr(kind)[:32])


def alert_json(alert: Alert) -> dict[str, Any]:
    """The JSON form the collector stores, publishes and writes for a SIEM."""
    doc = alert.to_dict()
    doc["evidence"] = {k: (v.hex() if isinstance(v, bytes) else v)
                       for k, v in doc["evidence"].items()}
    return doc


def field_names(names: Iterable[str]) -> str:
    """The audit's spelling of a field list."""
    return ",".join(names)
