"""Per-destination forwarding policy: what leaves the box for one collector, and how.

A sector CERT and a national collector need not see the same thing. Each
``[forward] collectors`` entry names a policy (``[forward.policies.NAME]``); one
without a name gets ``default``, the metadata-only ``[forward] allow_fields`` and
``deny_fields``. A policy decides, per message:

- whether it leaves at all (``severities``, ``precursors``, ``assets``); a message
  that does not is never journaled for that destination, so its stream stays
  contiguous and it learns nothing, not even that something was held back;
- which fields and evidence keys leave (the ``FieldPolicy``);
- which addresses are replaced by keyed pseudonyms (``pseudonymise``).

``shape`` returns the body and what the audit records: the fields sent, withheld
and pseudonymised. ``digest`` is the policy's hash, which every audit row carries,
so a row proves under which rules a message left.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.wire import (
    ALERT_FIELDS,
    DEFAULT_DENY_FIELDS,
    FieldPolicy,
    Kind,
    alert_body,
    pseudonym_ext,
)
from mamori.sensor.forwarding.pseudonym import MAC, Pseudonymiser

DEFAULT_POLICY = "default"
CATEGORIES = ("ip", "mac", "unit", "link", "identity")
_POLICY_KEYS = ("allow_fields", "deny_fields", "severities", "precursors", "assets",
                "pseudonymise", "pseudonym_key")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_PRECURSOR = re.compile(r"^[A-Z][A-Z0-9]{0,15}\*?$")
# Addresses inside free text (evidence detail, titles): IPv4 and MAC tokens.
_IPV4_TOKEN = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_MAC_TOKEN = re.compile(r"(?<![0-9A-Fa-f:-])[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}"
                        r"[0-9A-Fa-f]{2}(?![0-9A-Fa-f:-])")
_IDENTITY_KEY = re.compile(r"^(unit|link)(\d+)\.(.+)$")
_SRC, _DST, _UNIT, _LINK_SRC, _LINK_DST, _EVIDENCE, _TITLE = (
    ALERT_FIELDS.index(n) for n in ("src", "dst", "unit", "link_src", "link_dst", "evidence",
                                    "title"))


class PolicyError(ValueError):
    """A policy table is wrong; ``at`` is the key within it (for the config line)."""

    def __init__(self, at: tuple[str | int, ...], message: str) -> None:
        self.at = at
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A policy as configured (before its key is loaded)."""

    name: str
    fields: FieldPolicy = field(default_factory=FieldPolicy)
    severities: frozenset[Severity] = frozenset(Severity)
    precursors: tuple[str, ...] = ()  # empty: all; "S*" is a family
    assets: bool = True
    pseudonymise: frozenset[str] = frozenset()
    pseudonym_key: Path | None = None  # None: [forward] pseudonym_key

    def as_config(self) -> dict[str, Any]:
        """The TOML table that configures this policy (``check-config --dump``)."""
        out: dict[str, Any] = {
            "allow_fields": list(self.fields.allow), "deny_fields": list(self.fields.deny),
            "severities": [s.label for s in sorted(self.severities)],
            "precursors": list(self.precursors), "assets": self.assets,
            "pseudonymise": sorted(self.pseudonymise)}
        if self.pseudonym_key is not None:
            out["pseudonym_key"] = str(self.pseudonym_key)
        return out

    def describe(self, key_fingerprint: str | None) -> dict[str, Any]:
        """Everything that decides what leaves, canonical: what the hash covers."""
        return {"name": self.name, "allow": sorted(self.fields.allow),
                "deny": sorted(self.fields.deny),
                "severities": sorted(s.label for s in self.severities),
                "precursors": sorted(self.precursors), "assets": self.assets,
                "pseudonymise": sorted(self.pseudonymise),
                "key": key_fingerprint if self.pseudonymise else None}

    def admits(self, alert: Alert) -> bool:
        if alert.severity not in self.severities:
            return False
        if not self.precursors:
            return True
        return any(alert.precursor == p or (p.endswith("*") and
                                            alert.precursor.startswith(p[:-1]))
                   for p in self.precursors)


def parse_policies(value: Any) -> dict[str, PolicySpec]:
    """``[forward.policies]``: a table of NAME = {policy keys}; raises ``PolicyError``."""
    if not isinstance(value, dict):
        raise PolicyError((), "must be a table of [forward.policies.NAME] tables")
    out: dict[str, PolicySpec] = {}
    for name, table in value.items():
        if not _NAME.match(name):
            raise PolicyError((name,), f"{name!r} is not a policy name (letters, digits, "
                                       "_ . -)")
        if name == DEFAULT_POLICY:
            raise PolicyError((name,), "'default' is reserved: it is [forward] allow_fields "
                                       "and deny_fields")
        if not isinstance(table, dict):
            raise PolicyError((name,), "must be a [forward.policies.NAME] table")
        out[name] = _parse_one(name, table)
    return out


def _parse_one(name: str, table: Mapping[str, Any]) -> PolicySpec:
    for key in table:
        if key not in _POLICY_KEYS:
            raise PolicyError((name, key), f"{name}.{key}: unknown policy key (known: "
                                           f"{', '.join(_POLICY_KEYS)})")

    def strings(key: str) -> tuple[str, ...]:
        raw = table[key]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise PolicyError((name, key), f"{name}.{key}: must be a list of strings")
        return tuple(raw)

    def fail(key: str, message: str) -> PolicyError:
        return PolicyError((name, key), f"{name}.{key}: {message}")

    allow = strings("allow_fields") if "allow_fields" in table else ("*",)
    deny = strings("deny_fields") if "deny_fields" in table else DEFAULT_DENY_FIELDS
    try:
        fields = FieldPolicy(tuple(sorted(set(allow))), tuple(sorted(set(deny))))
    except ValueError as err:
        raise fail("deny_fields" if "cannot deny" in str(err) else "allow_fields",
                   str(err)) from None
    severities = frozenset(Severity)
    if "severities" in table:
        try:
            severities = frozenset(Severity.parse(s) for s in strings("severities"))
        except ValueError as err:
            raise fail("severities", str(err)) from None
        if not severities:
            raise fail("severities", "empty: nothing would leave (remove the collector)")
    precursors = strings("precursors") if "precursors" in table else ()
    for p in precursors:
        if not _PRECURSOR.match(p):
            raise fail("precursors", f"{p!r} is not a precursor id (M1, D3, S4) or family "
                                     "(S*)")
    assets = table.get("assets", True)
    if not isinstance(assets, bool):
        raise fail("assets", "must be true or false")
    cats = strings("pseudonymise") if "pseudonymise" in table else ()
    for c in cats:
        if c not in CATEGORIES:
            raise fail("pseudonymise", f"{c!r} is not one of {', '.join(CATEGORIES)}")
    key_file = table.get("pseudonym_key")
    if key_file is not None and (not isinstance(key_file, str) or not key_file):
        raise fail("pseudonym_key", "must be a path")
    return PolicySpec(name, fields, severities, tuple(sorted(set(precursors))), assets,
                      frozenset(cats), Path(key_file) if key_file else None)


@dataclass(frozen=True, slots=True)
class Shaped:
    """One message as it leaves for one destination, and what the audit says of it."""

    body: Any
    sent: tuple[str, ...]
    withheld: tuple[str, ...]
    pseudonymised: tuple[str, ...]


class DestinationPolicy:
    """A ``PolicySpec`` with its key loaded: shapes messages for one destination."""

    def __init__(self, spec: PolicySpec, pseudonymiser: Pseudonymiser | None) -> None:
        if spec.pseudonymise and pseudonymiser is None:
            raise ValueError(f"policy {spec.name} pseudonymises: it needs a key")
        self.spec = spec
        self.name = spec.name
        self.pseudonymiser = pseudonymiser if spec.pseudonymise else None
        canonical = json.dumps(spec.describe(
            self.pseudonymiser.key_id if self.pseudonymiser else None), sort_keys=True)
        self.digest = hashlib.sha256(canonical.encode()).hexdigest()

    def shape_alert(self, alert: Alert) -> Shaped | None:
        """The alert body for this destination, or None when it does not leave."""
        if not self.spec.admits(alert):
            return None
        body, sent = self.spec.fields.apply(alert)
        full = alert_body(alert)
        withheld = [n for i, n in enumerate(ALERT_FIELDS)
                    if n != "evidence" and full[i] is not None and body[i] is None]
        withheld += [f"evidence.{k}" for k in sorted(alert.evidence)
                     if f"evidence.{k}" not in sent]
        changed: list[str] = []
        if self.pseudonymiser is not None:
            self._alert_addresses(body, changed)
        return Shaped(body, sent, tuple(withheld), tuple(sorted(set(changed))))

    def shape(self, kind: Kind, body: Mapping[str, Any]) -> Shaped | None:
        """An asset or health body for this destination, or None when it does not leave."""
        if kind is Kind.ASSET and not self.spec.assets:
            return None
        out = dict(body)
        changed: list[str] = []
        if self.pseudonymiser is not None:
            for key in sorted(out):
                if kind is Kind.ASSET and key == "identity" and isinstance(out[key], dict):
                    out[key] = self._identity(out[key], changed)
                else:
                    out[key] = self._value(out[key], key, changed)
        return Shaped(out, tuple(sorted(body)), (), tuple(sorted(set(changed))))

    # -- pseudonymising ---------------------------------------------------------------

    def _alert_addresses(self, body: list[Any], changed: list[str]) -> None:
        cats = self.spec.pseudonymise
        p = self.pseudonymiser
        assert p is not None
        for index in (_SRC, _DST):
            value = body[index]
            if isinstance(value, bytes) and "ip" in cats:
                body[index] = pseudonym_ext(p.ip(ipaddress.ip_address(value)))
            elif isinstance(value, str):
                body[index] = self._value(value, ALERT_FIELDS[index], changed, whole=True)
                continue
            else:
                continue
            changed.append(ALERT_FIELDS[index])
        for index, cat in ((_UNIT, "unit"), (_LINK_SRC, "link"), (_LINK_DST, "link")):
            if isinstance(body[index], int) and cat in cats:
                body[index] = pseudonym_ext(p.number(cat, body[index]))
                changed.append(ALERT_FIELDS[index])
        if isinstance(body[_TITLE], str):
            body[_TITLE] = self._value(body[_TITLE], "title", changed)
        if isinstance(body[_EVIDENCE], dict):
            body[_EVIDENCE] = {k: self._value(v, f"evidence.{k}", changed)
                               for k, v in body[_EVIDENCE].items()}

    def _value(self, value: Any, name: str, changed: list[str], whole: bool = False) -> Any:
        """Addresses in a free-form value: whole strings become pseudonym exts, tokens
        inside text become ``pn:HEX``; lists and maps are walked."""
        if isinstance(value, list):
            return [self._value(v, name, changed) for v in value]
        if isinstance(value, dict):
            return {k: self._value(v, f"{name}.{k}", changed) for k, v in value.items()}
        if not isinstance(value, str):
            return value
        p, cats = self.pseudonymiser, self.spec.pseudonymise
        assert p is not None
        digest = self._whole(value)
        if digest is not None:
            changed.append(name)
            return pseudonym_ext(digest)
        if whole and "identity" in cats and value:  # a device name where an address goes
            changed.append(name)
            return pseudonym_ext(p.text(value))
        text = value
        if "ip" in cats:
            text = _IPV4_TOKEN.sub(lambda m: self._token(m.group(0), "ip"), text)
        if "mac" in cats:
            text = _MAC_TOKEN.sub(lambda m: self._token(m.group(0), "mac"), text)
        if text != value:
            changed.append(name)
        return text

    def _whole(self, value: str) -> bytes | None:
        """The pseudonym digest when all of ``value`` is an address this policy hides."""
        p, cats = self.pseudonymiser, self.spec.pseudonymise
        assert p is not None
        if "mac" in cats and MAC.match(value):
            return p.mac(value)
        if "ip" in cats and len(value) <= 45:
            try:
                return p.ip(ipaddress.ip_address(value))
            except ValueError:
                return None
        return None

    def _token(self, text: str, cat: str) -> str:
        p = self.pseudonymiser
        assert p is not None
        if cat == "mac":
            return "pn:" + p.mac(text).hex()
        try:
            return "pn:" + p.ip(ipaddress.ip_address(text)).hex()
        except ValueError:  # 999.1.1.1: not an address
            return text

    def _identity(self, identity: Mapping[str, Any], changed: list[str]) -> dict[str, Any]:
        """An asset's identity map: values become pseudonyms under ``identity``; the
        unit or link number in a key (``unit1.VendorName``) under ``unit``/``link``."""
        p, cats = self.pseudonymiser, self.spec.pseudonymise
        assert p is not None
        out: dict[str, Any] = {}
        for key, value in identity.items():
            new_key = key
            m = _IDENTITY_KEY.match(key)
            if m and m.group(1) in cats:
                digest = p.number(m.group(1), int(m.group(2)))
                new_key = f"{m.group(1)}[pn:{digest.hex()}].{m.group(3)}"[:64]
                changed.append(f"identity.{m.group(1)}")
            if isinstance(value, str) and "identity" in cats:
                out[new_key] = pseudonym_ext(p.text(value))
                changed.append(f"identity.{key}")
            else:
                out[new_key] = self._value(value, f"identity.{key}", changed)
        return out
