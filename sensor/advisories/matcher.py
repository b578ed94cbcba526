"""Observed device identity against the advisory index, with a confidence and evidence.

Confidence, strongest first:

* ``exact``: vendor and product match, and the observed revision is inside the
  advisory's version range (or the advisory says all versions). Only this is
  reported as *affected*.
* ``product``: vendor and product match but the version cannot be decided (the
  device did not say, or the range is prose we cannot read). Shown as *possibly
  affected*, so an operator can look.
* ``vendor``: only the vendor matches. Listed by ``mamori advisories match`` for
  review and never reported as affected nor alerted: a vendor has hundreds of
  products.

A product whose observed revision is outside every range of an advisory is not a
match at all, even though its vendor is: the advisory says it is not affected.

When one advisory tells variants of the product apart ("Series A: all versions",
"Series B: <= 21.003") and the revision is affected in one and not in another,
the match is ``product``: the device did not say which variant it is. A version
series in the product name ("RTU500 series CMU Firmware Version 12.4") bounds the
match like a range does.

A vendor match is required for anything else. Product names are compared as
word sequences, so "M340" matches "Modicon M340" but "1756" alone matches
nothing; a generic advisory product ("Firmware", "PLC") never matches.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from mamori.sensor.advisories.index import IndexedProduct
from mamori.sensor.advisories.normalise import Tables, compact_key, fold
from mamori.sensor.advisories.versions import (
    Key,
    Range,
    best_key,
    parse_range,
    parse_versions,
    series_of,
)

_WILDCARD = re.compile(r"([A-Za-z0-9][A-Za-z0-9\-]{2,})\*")
# A part number whose last characters are x placeholders: "BMX P34x", "750-82xx".
_PLACEHOLDER = re.compile(
    r"\b((?:[A-Za-z]{2,4}\s+)?(?:[A-Za-z]+-?)?\d[A-Za-z0-9\-]*?\d)[xX]+(?=$|[\s,;/)])")
_PRINTABLE = re.compile(rb"[\x20-\x7e]{4,}")
# A version series named in the product name itself: "RTU500 series CMU Firmware
# Version 12.4", "S7-1200 CPU family V4.x" (the version field then says "All versions").
_NAME_SERIES = re.compile(r"(?:\b(?:firmware\s+)?versions?\s+v?|\bv)(\d+(?:\.\d+)*(?:\.[x*])?)$",
                          re.IGNORECASE)


class Confidence(Enum):
    EXACT = "exact"
    PRODUCT = "product"
    VENDOR = "vendor"

    @property
    def rank(self) -> int:
        return {"exact": 3, "product": 2, "vendor": 1}[self.value]

    @property
    def affected(self) -> bool:
        return self is Confidence.EXACT


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """The identity strings one device (Modbus unit, DNP3 link address) announced."""

    ip: str
    scope: str  # "unit1", "link10"
    vendors: tuple[tuple[str, str], ...]  # (identity key, value)
    products: tuple[tuple[str, str], ...]
    versions: tuple[tuple[str, str], ...]
    urls: tuple[tuple[str, str], ...] = ()
    first_seen: float | None = None
    last_seen: float | None = None
    # identity key -> its first and last sighting (frame numbers and times), as the
    # inventory keeps them (``Inventory`` ``identity_seen``); empty for older stores
    seen: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Match:
    ip: str
    advisory_id: str
    confidence: Confidence
    scopes: tuple[str, ...]
    product_ids: tuple[str, ...]
    products: tuple[str, ...]  # advisory product names that matched
    ranges: tuple[str, ...]  # their version texts
    cves: tuple[str, ...]
    cvss: float | None
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ip": self.ip, "advisory": self.advisory_id,
                "confidence": self.confidence.value, "affected": self.confidence.affected,
                "scopes": list(self.scopes), "product_ids": list(self.product_ids),
                "products": list(self.products), "ranges": list(self.ranges),
                "cves": list(self.cves), "cvss": self.cvss, "evidence": dict(self.evidence)}


def identities(asset: Mapping[str, Any], tables: Tables) -> list[DeviceIdentity]:
    """Group an inventory asset's identity strings by device scope, by role from the tables."""
    roles: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for key, value in sorted((asset.get("identity") or {}).items()):
        scope, _, name = str(key).partition(".")
        role = tables.identity.get(name)
        if role is None or not isinstance(value, str) or not value.strip():
            continue
        if role == "server_id":
            try:
                data = bytes.fromhex(value)
            except ValueError:
                continue
            for run in _PRINTABLE.findall(data):
                roles[scope]["product"].append((str(key), run.decode("ascii").strip()))
            continue
        roles[scope][role].append((str(key), value.strip()))
    seen = asset.get("identity_seen")
    seen = seen if isinstance(seen, Mapping) else {}
    out = []
    for scope, by_role in sorted(roles.items()):
        keys = {k for pairs in by_role.values() for k, _ in pairs}
        out.append(DeviceIdentity(
            str(asset.get("ip", "")), scope, tuple(by_role["vendor"]), tuple(by_role["product"]),
            tuple(by_role["version"]), tuple(by_role["vendor_url"]),
            asset.get("first_seen"), asset.get("last_seen"),
            {k: v for k, v in seen.items() if k in keys and isinstance(v, Mapping)}))
    return out


@dataclass(frozen=True, slots=True)
class _Prepared:
    product: IndexedProduct
    names: tuple[tuple[str, ...], ...]  # word sequences of the product name(s)
    wildcards: tuple[str, ...]  # compact prefixes from "BMXP34*"
    range: Range | None
    every: bool
    series: Range | None  # the version series in the product's name, if it names one
    words: frozenset[str]  # every word of ``names``: no word shared, no name match


def _specific(words: Sequence[str], tables: Tables) -> bool:
    """Words that can name a product on their own: not generic, not a bare short number."""
    text = " ".join(words)
    compact = text.replace(" ", "")
    if not words or text in tables.generic_products or len(compact) < 3:
        return False
    has_digit = any(ch.isdigit() for ch in compact)
    has_alpha = any(ch.isalpha() for ch in compact)
    if has_digit and has_alpha:
        return len(compact) >= 3
    if has_digit:
        return len(compact) >= 5
    return len(compact) >= 6 and all(w not in tables.generic_products for w in words[-1:])


def _contains(outer: Sequence[str], inner: Sequence[str]) -> bool:
    n = len(inner)
    return any(tuple(outer[i:i + n]) == tuple(inner) for i in range(len(outer) - n + 1))


class Matcher:
    """Prepared advisory products, by canonical vendor; ``match`` is then cheap."""

    def __init__(self, products: Iterable[IndexedProduct], tables: Tables) -> None:
        self.tables = tables
        self.by_vendor: dict[str, list[_Prepared]] = defaultdict(list)
        scheme = tables.scheme
        for p in products:
            vendors = tables.vendors(p.vendor) if p.vendor else frozenset()
            names = []
            vendor_words = [fold(v).split() for v in (p.vendor, *vendors)]
            for raw in dict.fromkeys((p.name, re.sub(r"\([^)]*\)", " ", p.name))):
                words = fold(raw).split()
                for vw in vendor_words:  # "Schneider Electric Modicon M340" -> "modicon m340"
                    if vw and words[:len(vw)] == vw and len(words) > len(vw):
                        words = words[len(vw):]
                if _specific(words, tables):
                    names.append(tuple(words))
            text = f"{p.name} {p.full_name}"
            wild = tuple(dict.fromkeys(
                w for w in (compact_key(m).upper() for m in (*_WILDCARD.findall(text),
                                                             *_PLACEHOLDER.findall(text)))
                if len(w) >= 5))
            rng = None
            if p.version_kind == "range":
                rng = parse_range(p.version, scheme)
            elif p.version_kind == "version":
                rng = parse_versions(p.version, scheme)
                if re.search(re.escape(p.version) + r"\.[*xX]\s*$", p.full_name):
                    rng = series_of(p.version, scheme)  # "version 12.2.*" kept as "12.2"
            prepared = _Prepared(p, tuple(dict.fromkeys(names)), wild, rng,
                                 rng is not None and rng.every, _name_series(p.name, tables),
                                 frozenset(w for n in names for w in n))
            for vendor in vendors:
                self.by_vendor[vendor].append(prepared)

    def _observed_vendors(self, ident: DeviceIdentity) -> dict[str, str]:
        """Canonical vendor -> the identity key that said so."""
        out: dict[str, str] = {}
        for key, value in ident.vendors:
            out.setdefault(self.tables.vendor(value), key)
        for key, value in ident.urls:
            vendor = self.tables.vendor_of_url(value)
            if vendor is not None:
                out.setdefault(vendor, key)
        for key, value in ident.products:
            for code in self.tables.codes(value):
                out.setdefault(code.vendor, key)
        out.pop("", None)
        return out

    def _product_words(self, ident: DeviceIdentity) -> list[tuple[str, tuple[str, ...], str]]:
        """(identity key, word sequence, compact upper form) of every product string."""
        out = []
        for key, value in ident.products:
            out.append((key, tuple(fold(value).split()), compact_key(value).upper()))
            for code in self.tables.codes(value):
                for name in code.names:
                    out.append((f"{key} (code {code.prefix})", tuple(fold(name).split()),
                                compact_key(name).upper()))
        return out

    def _product_hits(self, prep: _Prepared,
                      observed: Sequence[tuple[str, tuple[str, ...], str]]) -> tuple[str, ...]:
        """Every observed product string that names this advisory product (the evidence)."""
        if not prep.wildcards and not any(w in prep.words for _, ws, _ in observed
                                          for w in ws):
            return ()  # the common case, decided without comparing sequences
        hits: list[str] = []
        for key, words, compact in observed:
            if not words:
                continue
            if any(_contains(words, name) or (_specific(words, self.tables)
                                              and _contains(name, words))
                   for name in prep.names) or any(compact.startswith(w)
                                                  for w in prep.wildcards):
                hits.append(key)
        return tuple(dict.fromkeys(hits))

    def match(self, ident: DeviceIdentity) -> list[Match]:
        vendors = self._observed_vendors(ident)
        if not vendors:
            return []
        observed = self._product_words(ident)
        version = best_key([v for _, v in ident.versions], self.tables.scheme)
        version_key_name = next((k for k, v in ident.versions
                                 if version is not None and v == version[0]), "")
        per: dict[str, dict[str, Any]] = {}
        for vendor in vendors:
            for prep in self.by_vendor.get(vendor, ()):
                p = prep.product
                slot = per.setdefault(p.advisory_id, {"conf": None, "hits": [], "out": [],
                                                      "cves": set(), "cvss": None,
                                                      "vendor_key": vendors[vendor]})
                product_keys = self._product_hits(prep, observed)
                if not product_keys:
                    conf: Confidence | None = Confidence.VENDOR
                elif prep.series is not None and version is None:
                    conf = Confidence.PRODUCT
                elif prep.series is not None and version is not None \
                        and not prep.series.contains(version[1]):
                    conf = None  # "... Firmware Version 12.4": another series
                    slot["out"].append(p)
                elif prep.every:
                    conf = Confidence.EXACT
                elif prep.range is None or version is None:
                    conf = Confidence.PRODUCT
                elif prep.range.contains(version[1]):
                    conf = Confidence.EXACT
                else:
                    conf = None
                    slot["out"].append(p)
                if conf is None:
                    continue
                if conf is not Confidence.VENDOR:
                    slot["hits"].append((conf, p, product_keys))
                if slot["conf"] is None or conf.rank > slot["conf"].rank:
                    slot["conf"] = conf
        out = []
        for adv_id, slot in per.items():
            conf = slot["conf"]
            if conf is None:
                continue
            if conf is Confidence.VENDOR and slot["out"]:
                continue  # the product is named, and this revision is not affected
            hits = [(c, p, k) for c, p, k in slot["hits"] if c is conf]
            if conf is Confidence.EXACT and {p.name for p in slot["out"]} - {
                    p.name for _, p, _ in hits}:
                # The advisory tells variants apart ("Series A: all versions", "Series
                # B: <= 21.003") and this revision is affected in one, not in another:
                # the device did not say which it is.
                conf = Confidence.PRODUCT
                hits = [(conf, p, k) for _, p, k in hits]
            used = {k.split(" ")[0] for k in (slot["vendor_key"], *(
                k for _, _, keys in hits for k in keys))}
            if version is not None:
                used.add(version_key_name)
            identity = {k: v for k, v in (*ident.vendors, *ident.products, *ident.versions,
                                          *ident.urls) if k in used}
            evidence: dict[str, Any] = {
                "scope": ident.scope,
                "identity": identity,
                "seen_in": {k: frame_of(k) for k in identity},
                "frames": {k: frames_of(k, ident.seen.get(k)) for k in identity},
                "version": None if version is None else version[0],
                "first_seen": ident.first_seen, "last_seen": ident.last_seen}
            if slot["out"]:
                evidence["out_of_range"] = sorted({p.version for p in slot["out"]})
            products = [p for _, p, _ in hits]
            cves = sorted({c for p in products for c in p.cves})
            scores = [p.cvss for p in products if p.cvss is not None]
            out.append(Match(ident.ip, adv_id, conf, (ident.scope,),
                             tuple(p.product_id for p in products),
                             tuple(dict.fromkeys(p.name for p in products)),
                             tuple(dict.fromkeys(p.version for p in products)),
                             tuple(cves), max(scores) if scores else None, evidence))
        return sorted(out, key=lambda m: (-m.confidence.rank, m.advisory_id))

    def match_asset(self, asset: Mapping[str, Any]) -> list[Match]:
        """All scopes of one asset, one match per advisory (the strongest)."""
        best: dict[str, Match] = {}
        for ident in identities(asset, self.tables):
            for m in self.match(ident):
                known = best.get(m.advisory_id)
                if known is None or m.confidence.rank > known.confidence.rank:
                    best[m.advisory_id] = m
        return sorted(best.values(), key=lambda m: (-m.confidence.rank, m.advisory_id))


def _name_series(name: str, tables: Tables) -> Range | None:
    """The series a product name ends with (``... Version 12.4``), not a bound (``< V4.x``)."""
    text = re.sub(r"\([^)]*\)", " ", name).strip()
    m = _NAME_SERIES.search(text)
    if m is None or text[:m.start()].rstrip().endswith(("<", ">", "=")):
        return None
    return series_of(m.group(1), tables.scheme)


def version_of(ident: DeviceIdentity, tables: Tables) -> tuple[str, Key] | None:
    return best_key([v for _, v in ident.versions], tables.scheme)


_MODBUS_KEY = re.compile(r"unit(\d+)\.(\w+)")
_DNP3_KEY = re.compile(r"link(\d+)\.g0v(\d+)")


def frames_of(key: str, seen: Mapping[str, Any] | None) -> dict[str, Any]:
    """The evidence for one identity string: its message, and the frames that carried it.

    Frame numbers are those of the capture file replayed (as Wireshark numbers
    them) or of the daemon's per-interface counter; ``None`` where the source had
    no frames (Zeek logs) or the store predates them.
    """
    seen = seen or {}
    return {"message": frame_of(key),
            **{k: seen.get(k) for k in ("first_frame", "first_seen", "last_frame",
                                        "last_seen")}}


def frame_of(key: str) -> str:
    """Which message carried an identity string, from the inventory's key for it.

    The key says which protocol message it came in; :func:`frames_of` adds the
    frame numbers and times the inventory keeps per key.
    """
    m = _MODBUS_KEY.fullmatch(key)
    if m is not None:
        unit, name = m.groups()
        if name.startswith("server_id"):
            return f"Modbus FC 17 Report Server ID response, unit {unit}"
        return f"Modbus FC 43/14 Read Device Identification response, unit {unit}, {name}"
    m = _DNP3_KEY.fullmatch(key)
    if m is not None:
        link, attr = m.groups()
        return (f"DNP3 response from link address {link}, group 0 variation {attr} "
                f"(device attribute)")
    return "identity log"
