"""Normalisation of vendor names, product names and revision strings, from ``tables.toml``.

The tables are data so that a reviewer can add an alias without a code change; this
module only applies them. Every function is pure: the same tables and text give the
same key, on the sensor and at the collector.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from mamori.sensor.advisories.versions import Scheme

TABLES = Path(__file__).with_name("tables.toml")

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_URL_HOST = re.compile(r"^(?:[a-z][a-z0-9+.\-]*://)?(?:[^@/]*@)?([^/:?#]+)")


class TablesError(ValueError):
    """The normalisation tables are malformed (names the table and entry)."""


@dataclass(frozen=True, slots=True)
class ProductCode:
    prefix: str
    vendor: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Tables:
    """The loaded tables, with every alias already reduced to its comparison key."""

    identity: Mapping[str, str]
    suffixes: frozenset[str]
    vendor_aliases: Mapping[str, str]  # alias key -> canonical vendor
    vendor_domains: Mapping[str, str]  # domain -> canonical vendor
    generic_products: frozenset[str]
    product_codes: tuple[ProductCode, ...]
    scheme: Scheme

    def vendor(self, text: str) -> str:
        """Canonical vendor for a name: its alias, else its own normalised key."""
        key = vendor_key(text, self.suffixes)
        return self.vendor_aliases.get(key, key)

    def vendors(self, text: str) -> frozenset[str]:
        """An advisory's vendor field may name several ("Red Lion, AutomationDirect")."""
        whole = self.vendor(text)
        out = {whole} if whole else set()
        if whole not in self.vendor_aliases.values():
            for part in re.split(r",|/|;|\band\b", text):
                canon = self.vendor(part)
                if canon:
                    out.add(canon)
        return frozenset(out)

    def vendor_of_url(self, url: str) -> str | None:
        m = _URL_HOST.match(url.strip().lower())
        if m is None:
            return None
        host = m.group(1).rstrip(".")
        while host:
            if host in self.vendor_domains:
                return self.vendor_domains[host]
            _, dot, host = host.partition(".")
            if not dot:
                break
        return None

    def codes(self, product: str) -> list[ProductCode]:
        compact = compact_key(product).upper()
        return [c for c in self.product_codes if compact.startswith(c.prefix)]


def fold(text: str) -> str:
    """Lower case, accents dropped, ``&`` spelt out, anything else a single space."""
    t = unicodedata.normalize("NFKD", text)
    t = "".join(ch for ch in t if not unicodedata.combining(ch)).lower().replace("&", " and ")
    return _NON_ALNUM.sub(" ", t).strip()


def vendor_key(text: str, suffixes: Iterable[str]) -> str:
    words = fold(re.sub(r"\([^)]*\)", " ", text)).split()
    ends = sorted((s.split() for s in suffixes), key=len, reverse=True)
    changed = True
    while changed and words:
        changed = False
        for end in ends:
            if len(words) > len(end) and words[-len(end):] == end:
                del words[-len(end):]
                changed = True
                break
    return " ".join(words)


def compact_key(text: str) -> str:
    return fold(text).replace(" ", "")


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TablesError(f"{where}: expected a list of strings")
    return list(value)


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TablesError(f"{where}: expected a table")
    return value


def load_tables(path: Path = TABLES) -> Tables:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise TablesError(f"{path}: {err}") from None
    identity = {str(k): str(v) for k, v in _table(raw.get("identity"), "identity").items()}
    vendor = _table(raw.get("vendor"), "vendor")
    suffixes = frozenset(fold(s) for s in _str_list(vendor.get("suffixes"), "vendor.suffixes"))
    aliases: dict[str, str] = {}
    for canon, names in _table(vendor.get("aliases"), "vendor.aliases").items():
        for name in [canon, *_str_list(names, f"vendor.aliases.{canon}")]:
            key = vendor_key(name, suffixes)
            if aliases.get(key, canon) != canon:
                raise TablesError(f"vendor.aliases: {name!r} is listed under {aliases[key]!r} "
                                  f"and {canon!r}")
            aliases[key] = canon
    domains = {str(k).lower(): str(v)
               for k, v in _table(vendor.get("domains"), "vendor.domains").items()}
    product = _table(raw.get("product"), "product")
    generic = frozenset(fold(s) for s in _str_list(product.get("generic"), "product.generic"))
    codes = []
    for i, entry in enumerate(product.get("codes", [])):
        entry = _table(entry, f"product.codes[{i}]")
        try:
            codes.append(ProductCode(compact_key(str(entry["prefix"])).upper(),
                                     str(entry["vendor"]),
                                     tuple(_str_list(entry["names"], f"product.codes[{i}]"))))
        except KeyError as err:
            raise TablesError(f"product.codes[{i}]: missing {err}") from None
    version = _table(raw.get("version"), "version")
    try:
        prefixes = tuple(re.compile(p, re.IGNORECASE)
                         for p in _str_list(version.get("prefixes"), "version.prefixes"))
        rewrites = tuple((re.compile(pair[0], re.IGNORECASE), pair[1])
                         for pair in version.get("range_rewrites", []))
    except (re.error, IndexError, TypeError) as err:
        raise TablesError(f"version: bad pattern: {err}") from None
    scheme = Scheme(prefixes, frozenset(_str_list(version.get("pre_release"),
                                                  "version.pre_release")), rewrites)
    return Tables(identity, suffixes, aliases, domains, generic, tuple(codes), scheme)


@cache
def default_tables() -> Tables:
    """The shipped tables, loaded once per process."""
    return load_tables()
