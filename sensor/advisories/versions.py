"""Firmware revision strings and advisory version ranges, compared without guessing.

Why not univers (the purl/vers library): its ``all`` scheme accepts only
``vers:all/*`` and so rejects ``vers:all/<V3.5.20``, the form CISA's CSAF
generator writes for every bounded range, and its generic version compares
``2.10`` below ``2.9`` (as strings). More than half of the real ranges are not
``vers`` at all but free text in the CISA "vls" style (``<= 4.00.02``,
``All versions < V2.0 SP1``, ``>= V7.80 < V9.30``, ``< 1.99 | 2.20 | 2.40``).
So this module parses both into one constraint list and evaluates it with the
algorithm of the vers specification.

A version key splits the text into numbers and words (after the prefixes in
the tables: ``v``, ``FW``, ``Rev`` ...). Numbers compare as integers (``V02.40``
is 2.40, ``2.4`` is 2.4.0), a pre-release word sorts before the release, any
other word (``SP1``, ``HF6``, a letter suffix) after it. Anything we cannot
read (no digit, prose, ``VX.2.11``) yields ``None``: the caller then knows
the version only as unknown, and never guesses that it is inside a range.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

Key = tuple[tuple[int, int | str], ...]

_ZERO: tuple[int, int | str] = (2, 0)
_PART = re.compile(r"\d+|[a-z]+")
_CONSTRAINT = re.compile(r"\s*(>=|<=|!=|==|=|<|>)?\s*([^<>=!|]+?)\s*(?=$|<|>|=|!)")
_VERSIONISH = re.compile(r"[a-z]{0,3}\d[a-z0-9._+\-() ]*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Scheme:
    """What the tables say about version text: prefixes to drop, pre-release words."""

    prefixes: tuple[re.Pattern[str], ...]
    pre_release: frozenset[str]
    range_rewrites: tuple[tuple[re.Pattern[str], str], ...]
    max_words: int = 3


def version_key(text: str, scheme: Scheme) -> Key | None:
    """Comparable key of a revision string, or None when it is not a version."""
    t = text.strip().lower()
    for prefix in scheme.prefixes:
        t = prefix.sub("", t, count=1).strip()
    if not t or not _VERSIONISH.fullmatch(t) or len(t) > 64:
        return None
    parts = _PART.findall(t)
    words = [p for p in parts if not p.isdigit()]
    if len(words) > scheme.max_words:
        return None
    key: list[tuple[int, int | str]] = []
    for p in parts:
        if p.isdigit():
            key.append((2, int(p)))
        elif p in scheme.pre_release:
            key.append((0, p))
        else:
            key.append((3, p))
    while key and key[-1] == _ZERO:  # 2.4 == 2.4.0
        key.pop()
    return tuple(key)


def compare(a: Key, b: Key) -> int:
    n = max(len(a), len(b))
    pa = a + (_ZERO,) * (n - len(a))
    pb = b + (_ZERO,) * (n - len(b))
    return (pa > pb) - (pa < pb)


@dataclass(frozen=True, slots=True)
class Range:
    """A parsed version constraint list; ``constraints`` empty with ``every`` = all."""

    text: str
    every: bool
    constraints: tuple[tuple[str, Key], ...]

    def contains(self, version: Key) -> bool:
        """The vers specification's containment check on sorted constraints."""
        if self.every:
            return True
        cons = sorted(self.constraints, key=_SortKey)
        for op, key in cons:
            c = compare(version, key)
            if op == "=" and c == 0:
                return True
            if op == "!=" and c == 0:
                return False
        ranged = [(op, key) for op, key in cons if op not in ("=", "!=")]
        if not ranged:
            return any(op == "!=" for op, _ in cons)
        first_op, first = ranged[0]
        if first_op in ("<", "<=") and _satisfies(version, first_op, first):
            return True
        last_op, last = ranged[-1]
        if last_op in (">", ">=") and _satisfies(version, last_op, last):
            return True
        for (op1, k1), (op2, k2) in itertools.pairwise(ranged):
            if op1 in (">", ">=") and op2 in ("<", "<=") and _satisfies(
                    version, op1, k1) and _satisfies(version, op2, k2):
                return True
        return False


class _SortKey:
    __slots__ = ("key",)

    def __init__(self, item: tuple[str, Key]) -> None:
        self.key = item[1]

    def __lt__(self, other: _SortKey) -> bool:
        return compare(self.key, other.key) < 0


def _satisfies(version: Key, op: str, bound: Key) -> bool:
    c = compare(version, bound)
    return {"<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0, "=": c == 0,
            "!=": c != 0}[op]


_WILDCARD = re.compile(r"(?:v|sv)?(\d+(?:\.\d+)*)\.(?:\*|x)", re.IGNORECASE)
_SPAN = re.compile(r"((?:v|sv)?\d+(?:\.\d+)+)\s*-\s*((?:v|sv)?\d+(?:\.\d+)+)", re.IGNORECASE)


def _series(text: str, scheme: Scheme) -> list[tuple[str, Key]] | None:
    """``12.7.*`` or ``12.7.X``: every version of the 12.7 series, as ``>= 12.7 < 12.8``."""
    m = _WILDCARD.fullmatch(text.strip())
    if m is None:
        return None
    numbers = [int(n) for n in m.group(1).split(".")]
    upper = ".".join(str(n) for n in (*numbers[:-1], numbers[-1] + 1))
    low, high = version_key(m.group(1), scheme), version_key(upper, scheme)
    if low is None or high is None:
        return None
    return [(">=", low), ("<", high)]


def series_of(text: str, scheme: Scheme) -> Range | None:
    """A version series (``12.4``, ``4.x``, ``12.7.*``) as a range: ``>= 12.4 < 12.5``."""
    t = text.strip()
    cons = _series(t if _WILDCARD.fullmatch(t) else f"{t}.*", scheme)
    return None if cons is None else Range(text, False, tuple(cons))


def parse_range(text: str, scheme: Scheme) -> Range | None:
    """A ``vers:`` string or CISA-style free text; None when any part is unreadable."""
    raw = text.strip()
    body = raw
    if body.lower().startswith("vers:"):
        _, _, body = body.partition("/")
    else:
        for pattern, replacement in scheme.range_rewrites:
            body = pattern.sub(replacement, body).strip()
    body = body.strip().strip(",;").strip()
    if body == "*":
        return Range(raw, True, ())
    constraints: list[tuple[str, Key]] = []
    for part in body.split("|"):
        part = part.strip()
        if not part:
            continue
        if part == "*":
            return Range(raw, True, ())
        series = _series(part, scheme)
        if series is not None:
            constraints.extend(series)
            continue
        pos = 0
        found = False
        for m in _CONSTRAINT.finditer(part):
            if m.start() != pos or not m.group(2):
                return None
            key = version_key(m.group(2), scheme)
            if key is None:
                return None
            op = m.group(1) or "="
            constraints.append(("=" if op == "==" else op, key))
            pos = m.end()
            found = True
        if not found or part[pos:].strip():
            return None
    if not constraints:
        return None
    return Range(raw, False, tuple(constraints))


def parse_versions(text: str, scheme: Scheme) -> Range | None:
    """A ``product_version`` name: one version, or a list (``7.30 | 7.40``, ``A and B``).

    A part may be a series (``12.7.*``, ``13.0.X``) or a span of dotted versions
    (``12.4.1-12.4.11``); a catalogue number (``1766-L32AWA``) is neither.
    """
    if text.strip().lower().startswith("vers:"):
        return parse_range(text, scheme)
    keys: list[tuple[str, Key]] = []
    for part in re.split(r"\s*(?:\||,|/|\band\b|;)\s*", text.strip()):
        if not part:
            continue
        series = _series(part, scheme)
        span = _SPAN.fullmatch(part)
        if series is not None:
            keys.extend(series)
            continue
        if span is not None:
            low, high = version_key(span.group(1), scheme), version_key(span.group(2), scheme)
            if low is None or high is None or compare(low, high) > 0:
                return None
            keys.extend([(">=", low), ("<=", high)])
            continue
        key = version_key(part, scheme)
        if key is None:
            return None
        keys.append(("=", key))
    return Range(text, False, tuple(keys)) if keys else None


def best_key(texts: Sequence[str], scheme: Scheme) -> tuple[str, Key] | None:
    """The first of the observed revision strings that reads as a version."""
    for text in texts:
        key = version_key(text, scheme)
        if key is not None:
            return text, key
    return None
