"""The forwarding wire format (version 2): msgpack, positional, strictly validated.

Shared by the forwarder (sensor side) and the collector; neither owns it. The layout
is documented field by field in ``docs/wire.md`` so that a collector written in any
language with a msgpack library can read it. In short, every ZeroMQ message is one
frame holding one msgpack array::

    sensor -> collector   [ver, epoch, seq, ts, kind, body]
                           ver   uint   WIRE_VERSION (2; collectors also read 1)
                           epoch uint   sensor boot epoch, +1 at every sensor start
                           seq   uint   +1 per journaled message within an epoch, from 1
                           ts    float  sensor wall clock, seconds since 1970 (UTC)
                           kind  uint   1 alert, 2 heartbeat, 3 asset, 4 health, 5 lost,
                                        6 rules fetch
                           body  kind-specific (see below)

    collector -> sensor   [ver, kind, body]
                           kind 16 ack     body [epoch, seq]          cumulative
                           kind 17 replay  body [epoch, first, last]  inclusive range
                           kind 18 rules offer  body [version, size, sha256]
                           kind 19 rules chunk  body [sha256, offset, data]

Positional arrays (not maps with names) keep an alert near 1/10 of the equivalent
Suricata EVE JSON record; the order is fixed by ``ALERT_FIELDS``.

The decoder treats every byte as hostile: size caps before unpacking, msgpack limits
on string/bin/array/map lengths, no ext types, exact types per position, and every
failure is a ``WireError`` with a short ``reason`` that the collector counts.

Version 2 adds one msgpack ext type, the keyed pseudonym (``PSEUDONYM_EXT``): where a
destination's policy replaces an address, the value is that ext, so no reader can
take a pseudonym for an address or a unit number. Version 1 frames (no ext types)
are still read, so sensors can be upgraded after their collectors.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, NamedTuple

import msgpack

from mamori.parsers.alerts import Alert, Pseudonym, Severity

WIRE_VERSION = 2
KNOWN_VERSIONS = frozenset({1, 2})  # what this decoder reads; anything else: bad_version
PSEUDONYM_EXT = 1  # msgpack ext code of a keyed pseudonym (version 2)
PSEUDONYM_BYTES = 12  # truncated HMAC-SHA256: 96 bits, collision-free at any site's scale
MAX_MESSAGE_BYTES = 64 * 1024  # a whole frame; alerts are ~100-200 bytes
MAX_STR = 1024  # any string
MAX_LIST = 256  # any array (attack ids, evidence lists)
MAX_MAP = 64  # any map (evidence, heartbeat, asset, health)
MAX_DEPTH = 4  # nesting inside a body
MAX_UINT = 2**63 - 1
_MAX_EPOCH = 2**32 - 1
MAX_ADDRESS_TEXTS = 4096  # entries a caller's address-text cache grows to (decode_alert_doc)


class Kind(IntEnum):
    """Message kinds. 1-15 go sensor -> collector, 16+ collector -> sensor."""

    ALERT = 1
    HEARTBEAT = 2  # not journaled: seq is the last seq assigned in this epoch
    ASSET = 3
    HEALTH = 4
    LOST = 5  # not journaled: body [first, last] of a range the journal evicted unacked
    RULES_FETCH = 6  # not journaled: body [sha256, offset], a chunk of an offered bundle
    RELAY = 7  # a collector forwarding another sensor's message upward (federation)
    ACK = 16
    REPLAY = 17
    RULES_OFFER = 18  # body [version, size, sha256]: a signed rule bundle to fetch
    RULES_CHUNK = 19  # body [sha256, offset, data]: the answer to a fetch
    RELAY_ACK = 20  # ack of a relayed stream: [origin, epoch, seq]
    RELAY_REPLAY = 21  # replay of a relayed stream: [origin, epoch, first, last]


JOURNALED_KINDS = frozenset({Kind.ALERT, Kind.ASSET, Kind.HEALTH})
SENSOR_KINDS = frozenset({Kind.ALERT, Kind.HEARTBEAT, Kind.ASSET, Kind.HEALTH, Kind.LOST,
                          Kind.RULES_FETCH})
RELAYED_KINDS = SENSOR_KINDS - {Kind.RULES_FETCH}  # what a relay forwards: the streams
UPSTREAM_KINDS = SENSOR_KINDS | {Kind.RELAY}
_UPSTREAM = {int(k): k for k in UPSTREAM_KINDS}  # decode's kind lookup
_ALERT = Kind.ALERT
_new_tuple = tuple.__new__  # a named tuple without its Python-level __new__: 2/3 the cost
_RELAYED = {int(k): k for k in RELAYED_KINDS}
MAX_RELAY_PATH = 16  # collectors a relayed message may have passed through
RULES_CHUNK_BYTES = 16 * 1024  # data per rules chunk: a bundle of the shipped packs is two
MAX_CONTROL_BYTES = RULES_CHUNK_BYTES + 256  # a collector -> sensor frame, whole

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


class Envelope(NamedTuple):
    """One sensor -> collector message, validated. ``body`` is already checked per kind.

    A named tuple, not a frozen dataclass: made once per message at the collector, where
    the dataclass's per-field ``object.__setattr__`` cost as much as unpacking."""

    epoch: int
    seq: int
    ts: float
    kind: Kind
    body: Any


@dataclass(frozen=True, slots=True)
class Relayed:
    """The body of a kind 7 message: another sensor's message, as a relay forwards it.

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

    ``origin`` is set for a relayed stream (kind 20): the original sensor's key."""

    epoch: int
    seq: int
    origin: str = ""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """The collector misses ``first..last`` (inclusive) of ``epoch``; resend from the journal.

    ``origin`` is set for a relayed stream (kind 21)."""

    epoch: int
    first: int
    last: int
    origin: str = ""


@dataclass(frozen=True, slots=True)
class RulesOffer:
    """The collector holds a rule bundle of ``size`` bytes for this sensor. Nothing in
    it is trusted: the bundle's own signature decides (mamori.sensor.detection.rulepush)."""

    version: int
    size: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class RulesChunk:
    """``data`` is the bundle ``sha256`` from byte ``offset`` on."""

    sha256: bytes
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RulesFetch:
    """The sensor asks for the chunk of bundle ``sha256`` at ``offset``."""

    sha256: bytes
    offset: int


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


def encode_offer(offer: RulesOffer) -> bytes:
    return pack([WIRE_VERSION, int(Kind.RULES_OFFER), [offer.version, offer.size, offer.sha256]])


def encode_chunk(chunk: RulesChunk) -> bytes:
    return pack([WIRE_VERSION, int(Kind.RULES_CHUNK), [chunk.sha256, chunk.offset, chunk.data]])


def encode_relayed(origin: str, name: str, path: Sequence[str], epoch: int, seq: int,
                   ts: float, kind: Kind, body: Any) -> bytes:
    """One relay -> upper collector frame: the original (epoch, seq, ts) in the envelope."""
    return pack([WIRE_VERSION, epoch, seq, float(ts), int(Kind.RELAY),
                 [origin, name, list(path), int(kind), body]])


# -- decoding ------------------------------------------------------------------------------


def pseudonym_ext(digest: bytes) -> msgpack.ExtType:
    """The wire form of a pseudonym (what ``mamori.sensor.forwarding.policy`` puts in a body)."""
    return msgpack.ExtType(PSEUDONYM_EXT, digest[:PSEUDONYM_BYTES])


_PSEUDONYM_TEXT = re.compile(rf"{re.escape(Pseudonym.PREFIX)}[0-9a-f]{{{2 * PSEUDONYM_BYTES}}}")


def restore_pseudonyms(value: Any) -> Any:
    """A stored body with its pseudonyms typed again, for a relay to send upward.

    A collector stores what it decoded as JSON, where a pseudonym is its ``pn:`` text;
    sent on as that text, an upper tier would take it for a plain string, and refuse it
    outright where only a number or a pseudonym may stand (unit, link addresses). Every
    string of exactly the pseudonym's form becomes the ext type again: a string of that
    form reads as a pseudonym in every output already, so nothing changes its meaning."""
    if isinstance(value, str):
        if value.startswith(Pseudonym.PREFIX) and _PSEUDONYM_TEXT.fullmatch(value):
            return pseudonym_ext(bytes.fromhex(value[len(Pseudonym.PREFIX):]))
        return value
    if isinstance(value, list):
        return [restore_pseudonyms(v) for v in value]
    if isinstance(value, dict):
        return {k: restore_pseudonyms(v) for k, v in value.items()}
    return value


def _ext(code: int, data: bytes) -> Pseudonym:
    """The only ext type there is: a pseudonym of exactly ``PSEUDONYM_BYTES``."""
    if code != PSEUDONYM_EXT or len(data) != PSEUDONYM_BYTES:
        raise ValueError("unknown ext type")
    return Pseudonym.from_digest(data)


def _unpack(data: bytes, max_bytes: int, max_bin: int = MAX_STR) -> Any:
    if len(data) > max_bytes:
        raise WireError("too_large", f"{len(data)} bytes > {max_bytes}")
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_STR, max_bin_len=max_bin, max_array_len=MAX_LIST,
            max_map_len=MAX_MAP, max_ext_len=PSEUDONYM_BYTES, ext_hook=_ext)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as err:
        raise WireError("not_msgpack", type(err).__name__) from None


def _known_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in KNOWN_VERSIONS


def _has_pseudonym(value: Any) -> bool:
    if isinstance(value, Pseudonym):
        return True
    if isinstance(value, list):
        return any(_has_pseudonym(v) for v in value)
    if isinstance(value, dict):
        return any(_has_pseudonym(v) for v in value.values())
    return False


def _uint(value: Any, what: str, high: int = MAX_UINT) -> int:
    # ``type(...) is int`` first: the common case, and it already excludes bool.
    if type(value) is int and 0 <= value <= high:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise WireError("bad_type", f"{what} must be an unsigned integer")
    return value


def _opt_uint(value: Any, what: str, high: int = MAX_UINT) -> int | None:
    return None if value is None else _uint(value, what, high)


def _opt_uint_or_pseudonym(value: Any, what: str, high: int) -> int | Pseudonym | None:
    return value if isinstance(value, Pseudonym) else _opt_uint(value, what, high)


def _float(value: Any, what: str) -> float:
    if type(value) is float and math.isfinite(value):
        return value
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
        return  # a Pseudonym is a str
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
            if type(key) is not str or len(key) > 64:
                _str(key, "map key", 64)
            if type(item) is not int and type(item) is not str:  # the common leaves
                _check_value(item, depth + 1)
        return
    raise WireError("bad_body", f"unexpected {type(value).__name__}")


def _map(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError("bad_body", f"{what} must be a map")
    _check_value(value)
    return value


def _address(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, Pseudonym):
        return value
    if isinstance(value, bytes):
        if len(value) == 4:
            return socket.inet_ntoa(value)  # what IPv4Address gives, at a tenth the cost
        if len(value) == 16:
            return str(ipaddress.IPv6Address(value))
        raise WireError("bad_body", f"{what} must be 4 or 16 bytes")
    return _str(value, what, 64)


_SEVERITY_LABELS = tuple(Severity(i).label for i in range(max(Severity) + 1))
_MAX_SEVERITY = len(_SEVERITY_LABELS) - 1


def _evidence(value: Any) -> dict[str, Any]:
    """The evidence map, checked as ``_map`` checks it, with raw bytes as hex.

    One pass: the checks of ``_check_value`` for the top level inline (the common
    leaves, integers and strings, cost nothing more), deeper values through it. The
    map is returned as it came when no value is bytes (it belongs to the caller's
    unpacked frame, so nothing else holds it), otherwise a copy with the bytes as hex."""
    if not isinstance(value, dict):
        raise WireError("bad_body", "evidence must be a map")
    hexed = False
    for key, item in value.items():
        if type(key) is not str or len(key) > 64:
            _str(key, "map key", 64)
        kind = type(item)
        if kind is int or kind is str:
            continue
        if kind is bytes:
            hexed = True
        else:
            _check_value(item, 1)
    if not hexed:
        return value
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in value.items()}


_NTOA = socket.inet_ntoa  # what IPv4Address gives, at a tenth the cost


def _address_text(value: bytes, what: str, texts: dict[bytes, str]) -> str | None:
    """``_address`` of raw address bytes, remembered in ``texts`` (the caller's, so the
    decoder keeps no state) up to ``MAX_ADDRESS_TEXTS`` entries; past that, made anew
    each time. Only what ``_address`` accepted is remembered: a refused value raises
    every time, with the same reason."""
    text = _address(value, what)
    if text is not None and len(texts) < MAX_ADDRESS_TEXTS:
        texts[value] = text
    return text


def decode_alert_doc(body: Any, texts: dict[bytes, str] | None = None) -> dict[str, Any]:
    """Validate an alert body into its JSON document (``alert_json``'s form, the one the
    collector stores and publishes) without building an ``Alert``: the collector needs
    only the document, and at tens of thousands of alerts a second the object costs.
    Raises ``WireError`` on any deviation; the one validator of alert bodies.

    ``texts``: a cache of address bytes -> text the caller keeps (a site's alerts name
    the same few hundred devices over and over; formatting one costs more than looking
    it up), filled here, bounded by ``MAX_ADDRESS_TEXTS``."""
    if not isinstance(body, list) or len(body) != len(ALERT_FIELDS):
        raise WireError("bad_body", f"alert must be an array of {len(ALERT_FIELDS)}")
    (id_, count, rule, precursor, severity, attack, title, proto, first_ts, last_ts,
     src, sport, dst, dport, unit, link_src, link_dst, evidence) = body
    isfinite = math.isfinite
    # What sensors send: every field of its exact type and in range, checked in one
    # expression (the attack ids in the loop after it, cheaper than ``all`` of a
    # generator). Anything else (an error to name, or a variant the general path
    # accepts: an integer time, no title, no attack list) takes the general path.
    usual = (type(id_) is int and type(count) is int and type(severity) is int
             and 0 <= id_ <= MAX_UINT and 0 <= count <= MAX_UINT
             and 0 <= severity <= _MAX_SEVERITY
             and type(rule) is str and len(rule) <= 128
             and type(precursor) is str and len(precursor) <= 16
             and type(proto) is str and len(proto) <= 16
             and type(title) is str and len(title) <= 256
             and type(first_ts) is float and isfinite(first_ts)
             and type(last_ts) is float and isfinite(last_ts)
             and (sport is None or (type(sport) is int and 0 <= sport <= 65535))
             and (dport is None or (type(dport) is int and 0 <= dport <= 65535))
             and (unit is None or (type(unit) is int and 0 <= unit <= 255))
             and (link_src is None or (type(link_src) is int and 0 <= link_src <= 65535))
             and (link_dst is None or (type(link_dst) is int and 0 <= link_dst <= 65535))
             and type(attack) is list)
    if usual:
        for a in attack:
            if type(a) is not str or len(a) > 32:
                usual = False
                break
    if not usual:
        if attack is None:
            attack = []
        if not isinstance(attack, list):
            raise WireError("bad_body", "attack must be an array")
        id_, count = _uint(id_, "id"), _uint(count, "count")
        severity = _uint(severity, "severity", _MAX_SEVERITY)
        rule, precursor = _str(rule, "rule", 128), _str(precursor, "precursor", 16)
        attack = [_str(a, "attack id", 32) for a in attack]
        title, proto = _opt_str(title, "title", 256) or "", _str(proto, "proto", 16)
        first_ts, last_ts = _float(first_ts, "first_ts"), _float(last_ts, "last_ts")
        sport, dport = _opt_uint(sport, "sport", 65535), _opt_uint(dport, "dport", 65535)
        unit = _opt_uint_or_pseudonym(unit, "unit", 255)  # a policy may pseudonymise
        link_src = _opt_uint_or_pseudonym(link_src, "link_src", 65535)  # these three
        link_dst = _opt_uint_or_pseudonym(link_dst, "link_dst", 65535)
    # Address bytes from the caller's cache, or an IPv4 address (4 bytes) inline; the
    # rest (IPv6, a pseudonym, text) by _address.
    if src is not None:
        if type(src) is not bytes:
            src = _address(src, "src")
        elif texts is not None:
            src = texts.get(src) or _address_text(src, "src", texts)
        else:
            src = _NTOA(src) if len(src) == 4 else _address(src, "src")
    if dst is not None:
        if type(dst) is not bytes:
            dst = _address(dst, "dst")
        elif texts is not None:
            dst = texts.get(dst) or _address_text(dst, "dst", texts)
        else:
            dst = _NTOA(dst) if len(dst) == 4 else _address(dst, "dst")
    return {
        "id": id_, "rule": rule, "precursor": precursor,
        "severity": _SEVERITY_LABELS[severity], "attack": attack, "title": title,
        "proto": proto, "ts": first_ts, "first_ts": first_ts, "last_ts": last_ts,
        "count": count, "src": src, "sport": sport, "dst": dst, "dport": dport,
        "unit": unit, "link_src": link_src, "link_dst": link_dst,
        "evidence": {} if evidence is None else _evidence(evidence),
    }


def decode_alert(body: Any) -> Alert:
    """An alert body back into an ``Alert``; raises ``WireError`` on any deviation."""
    doc = decode_alert_doc(body)
    evidence = body[-1] or {}  # as sent (bytes stay bytes), validated by decode_alert_doc
    return Alert(
        id=doc["id"], count=doc["count"], rule=doc["rule"], precursor=doc["precursor"],
        severity=Severity.parse(doc["severity"]), attack=tuple(doc["attack"]),
        title=doc["title"], proto=doc["proto"], first_ts=doc["first_ts"],
        last_ts=doc["last_ts"], src=doc["src"], sport=doc["sport"], dst=doc["dst"],
        dport=doc["dport"], unit=doc["unit"], link_src=doc["link_src"],
        link_dst=doc["link_dst"], evidence=evidence)


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES, documents: bool = False,
           texts: dict[bytes, str] | None = None) -> Envelope:
    """Validate one sensor -> collector frame. The body of an alert becomes an ``Alert``,
    or with ``documents`` its JSON document (``decode_alert_doc``, with the caller's
    address-text cache ``texts``); that of a relayed message (kind 7) a ``Relayed``
    holding the validated original."""
    obj = _unpack(data, max_bytes)
    if not isinstance(obj, list) or len(obj) != 6:
        raise WireError("bad_envelope", "not an array of 6")
    version, epoch, seq, ts, kind, body = obj
    # Each check's usual case inline (exact type, in range); anything else goes through
    # the named checker, which accepts what it accepts and names what it refuses.
    if not (type(version) is int and version in KNOWN_VERSIONS) \
            and not _known_version(version):
        raise WireError("bad_version", repr(version)[:32])
    if version == 1 and _has_pseudonym(body):
        raise WireError("bad_type", "pseudonyms need wire version 2")
    if not (type(epoch) is int and 0 <= epoch <= _MAX_EPOCH):
        epoch = _uint(epoch, "epoch", _MAX_EPOCH)
    if not (type(seq) is int and 0 <= seq <= MAX_UINT):
        seq = _uint(seq, "seq")
    stamp = ts if type(ts) is float and math.isfinite(ts) else _float(ts, "ts")
    k = _UPSTREAM.get(kind) if type(kind) is int else None  # one lookup; bools excluded
    if k is None:
        raise WireError("unknown_kind", repr(kind)[:32])
    if k is _ALERT and documents:  # the collector's usual message, without _envelope
        if seq == 0:
            raise WireError("bad_type", "journaled messages have seq >= 1")
        doc = decode_alert_doc(body, texts)
        env: Envelope = _new_tuple(Envelope, (epoch, seq, stamp, k, doc))
        return env
    if k is Kind.RELAY:
        return Envelope(epoch, seq, stamp, Kind.RELAY,
                        _relayed(epoch, seq, stamp, body, documents))
    return _envelope(epoch, seq, stamp, k, body, documents)


def _envelope(epoch: int, seq: int, stamp: float, k: Kind, body: Any,
              documents: bool = False) -> Envelope:
    if k in JOURNALED_KINDS and seq == 0:
        raise WireError("bad_type", "journaled messages have seq >= 1")
    checked: Any
    if k is Kind.ALERT:
        checked = decode_alert_doc(body) if documents else decode_alert(body)
    elif k is Kind.RULES_FETCH:
        if not isinstance(body, list) or len(body) != 2:
            raise WireError("bad_body", "rules fetch body must be [sha256, offset]")
        checked = RulesFetch(_sha256(body[0]), _uint(body[1], "offset"))
    elif k is Kind.LOST:
        if not isinstance(body, list) or len(body) != 1:
            raise WireError("bad_body", "lost body must be [first]")
        checked = _uint(body[0], "first")
        if checked > seq or checked == 0:
            raise WireError("bad_body", "lost range is empty")
    else:
        checked = _map(body, k.name.lower())
    return Envelope(epoch, seq, stamp, k, checked)


def _sha256(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise WireError("bad_body", "sha256 must be 32 bytes")
    return value


def _key(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 40:
        raise WireError("bad_body", f"{what} must be a 40-character Z85 key")
    return value


def _relayed(epoch: int, seq: int, stamp: float, body: Any, documents: bool) -> Relayed:
    """[origin, name, path, kind, body]; the inner kind is a stream's (alert, heartbeat,
    asset, health, lost), never a relay or a rules fetch."""
    if not isinstance(body, list) or len(body) != 5:
        raise WireError("bad_body", "relayed body must be [origin, name, path, kind, body]")
    origin, name, path, kind, inner = body
    if not isinstance(path, list) or not 1 <= len(path) <= MAX_RELAY_PATH:
        raise WireError("bad_body", f"relay path must hold 1..{MAX_RELAY_PATH} keys")
    inner_kind = _RELAYED.get(kind) if type(kind) is int else None
    if inner_kind is None:
        raise WireError("unknown_kind", f"relayed {repr(kind)[:24]}")
    return Relayed(_key(origin, "origin"), _str(name, "name", 64),
                   tuple(_key(p, "relay path entry") for p in path),
                   _envelope(epoch, seq, stamp, inner_kind, inner, documents))


def decode_control(data: bytes, relayed: bool = False
                   ) -> Ack | ReplayRequest | RulesOffer | RulesChunk:
    """A collector -> sensor frame. The sensor is as strict with the collector.

    ``relayed``: the reader is a relay, which takes only kinds 20 and 21 (acks and
    replay requests naming the original sensor); a sensor takes 16 to 19."""
    obj = _unpack(data, MAX_CONTROL_BYTES, RULES_CHUNK_BYTES)
    if not isinstance(obj, list) or len(obj) != 3 or not _known_version(obj[0]):
        raise WireError("bad_envelope", f"not [{WIRE_VERSION}, kind, body]")
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
    if kind == Kind.RULES_OFFER and len(body) == 3:
        return RulesOffer(_uint(body[0], "version"), _uint(body[1], "size"), _sha256(body[2]))
    if kind == Kind.RULES_CHUNK and len(body) == 3:
        if not isinstance(body[2], bytes) or not body[2]:
            raise WireError("bad_body", "chunk data must be bytes")
        return RulesChunk(_sha256(body[0]), _uint(body[1], "offset"), body[2])
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
