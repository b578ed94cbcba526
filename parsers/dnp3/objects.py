"""THE object size table: every standard DNP3 group/variation and how big it is.

This module is data. Each group maps its variations to one of:

- an int: fixed size of one object in bytes (0: the header carries no data, g60);
- ``BIT1`` / ``BIT2``: packed 1- or 2-bit points (g1v1, g3v1, g10v1, g12v3, g80v1),
  ``ceil(count * bits / 8)`` bytes for the whole header;
- ``FREE``: free-format, the size comes from the 1/2/4-byte object size prefix
  (qualifier prefix codes 4-6, in practice qualifier 0x5B): g70, g120, data sets;
- ``BY_VARIATION``: the variation is the length in bytes (g110-g113 octet strings
  and virtual terminal blocks);
- ``ATTRIBUTE``: g0 device attribute, data type (1) + length (1) + value;
- ``STATUS_LIST``: g91v1, time delay (4) + count (1) + count * (code, len, text).

Variation 0 ("any variation") is valid in headers without data (READ and the
like) for every group listed here. Sizes follow IEEE 1815-2012 Annex A.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

BIT1: Final = -1
BIT2: Final = -2
FREE: Final = -3
BY_VARIATION: Final = -4
ATTRIBUTE: Final = -5
STATUS_LIST: Final = -6

# group: (name, {variation: size})
OBJECT_TABLE: Final[dict[int, tuple[str, dict[int, int] | tuple[range, int]]]] = {
    0: ("device attributes", (range(1, 256), ATTRIBUTE)),
    1: ("binary input", {1: BIT1, 2: 1}),
    2: ("binary input event", {1: 1, 2: 7, 3: 3}),
    3: ("double-bit binary input", {1: BIT2, 2: 1}),
    4: ("double-bit binary input event", {1: 1, 2: 7, 3: 3}),
    10: ("binary output", {1: BIT1, 2: 1}),
    11: ("binary output event", {1: 1, 2: 7}),
    12: ("binary output command", {1: 11, 2: 11, 3: BIT1}),
    13: ("binary output command event", {1: 1, 2: 7}),
    20: ("counter", {1: 5, 2: 3, 3: 5, 4: 3, 5: 4, 6: 2, 7: 4, 8: 2}),
    21: (
        "frozen counter",
        {1: 5, 2: 3, 3: 5, 4: 3, 5: 11, 6: 9, 7: 11, 8: 9, 9: 4, 10: 2, 11: 4, 12: 2},
    ),
    22: ("counter event", {1: 5, 2: 3, 3: 5, 4: 3, 5: 11, 6: 9, 7: 11, 8: 9}),
    23: ("frozen counter event", {1: 5, 2: 3, 3: 5, 4: 3, 5: 11, 6: 9, 7: 11, 8: 9}),
    30: ("analog input", {1: 5, 2: 3, 3: 4, 4: 2, 5: 5, 6: 9}),
    31: ("frozen analog input", {1: 5, 2: 3, 3: 11, 4: 9, 5: 4, 6: 2, 7: 5, 8: 9}),
    32: ("analog input event", {1: 5, 2: 3, 3: 11, 4: 9, 5: 5, 6: 9, 7: 11, 8: 15}),
    33: ("frozen analog input event", {1: 5, 2: 3, 3: 11, 4: 9, 5: 5, 6: 9, 7: 11, 8: 15}),
    34: ("analog input deadband", {1: 2, 2: 4, 3: 4}),
    40: ("analog output status", {1: 5, 2: 3, 3: 5, 4: 9}),
    41: ("analog output", {1: 5, 2: 3, 3: 5, 4: 9}),
    42: ("analog output event", {1: 5, 2: 3, 3: 11, 4: 9, 5: 5, 6: 9, 7: 11, 8: 15}),
    43: ("analog output command event", {1: 5, 2: 3, 3: 11, 4: 9, 5: 5, 6: 9, 7: 11, 8: 15}),
    50: ("time and date", {1: 6, 2: 10, 3: 6, 4: 11}),
    51: ("common time of occurrence", {1: 6, 2: 6}),
    52: ("time delay", {1: 2, 2: 2}),
    60: ("class data", {1: 0, 2: 0, 3: 0, 4: 0}),
    70: ("file transfer", {1: FREE, 2: FREE, 3: FREE, 4: FREE, 5: FREE, 6: FREE, 7: FREE, 8: FREE}),
    80: ("internal indications", {1: BIT1}),
    81: ("device storage", {1: 3}),
    82: ("device profile", {1: FREE}),
    83: ("data set registration", {1: FREE, 2: FREE}),
    85: ("data set prototype", {1: FREE}),
    86: ("data set descriptor", {1: FREE, 2: 1, 3: FREE}),
    87: ("data set present value", {1: FREE}),
    88: ("data set snapshot", {1: FREE}),
    90: ("application identifier", {1: FREE}),
    91: ("status of requested operation", {1: STATUS_LIST}),
    101: ("binary-coded decimal", {1: 2, 2: 4, 3: 8}),
    102: ("unsigned 8-bit integer", {1: 1}),
    110: ("octet string", (range(1, 256), BY_VARIATION)),
    111: ("octet string event", (range(1, 256), BY_VARIATION)),
    112: ("virtual terminal output", (range(1, 256), BY_VARIATION)),
    113: ("virtual terminal event", (range(1, 256), BY_VARIATION)),
    120: ("secure authentication", {v: FREE for v in range(1, 16)} | {3: 6, 4: 2}),
    121: ("security statistic", {1: 7}),
    122: ("security statistic event", {1: 7, 2: 13}),
}


@dataclass(frozen=True, slots=True)
class ObjectSpec:
    """How to size one group/variation. ``size`` is bytes (>= 0) or one of the markers."""

    group: int
    variation: int
    size: int


def _build() -> dict[int, ObjectSpec]:
    specs: dict[int, ObjectSpec] = {}
    for group, (_name, variations) in OBJECT_TABLE.items():
        pairs = (
            variations.items()
            if isinstance(variations, dict)
            else ((v, variations[1]) for v in variations[0])
        )
        for variation, size in pairs:
            specs[group << 8 | variation] = ObjectSpec(group, variation, size)
    return specs


# key: group << 8 | variation
OBJECT_SPECS: Final[dict[int, ObjectSpec]] = _build()
KNOWN_GROUPS: Final[frozenset[int]] = frozenset(OBJECT_TABLE)
# The sizes alone, for the walker's hot path (one dict look-up, no attribute).
OBJECT_SIZES: Final[dict[int, int]] = {key: spec.size for key, spec in OBJECT_SPECS.items()}
# Every group << 8 | variation that ``is_known`` accepts, as one set.
KNOWN_HEADERS: Final[frozenset[int]] = frozenset(OBJECT_SPECS) | frozenset(
    group << 8 for group in KNOWN_GROUPS if group != 0
)


def lookup(group: int, variation: int) -> ObjectSpec | None:
    """The spec of a group/variation with data, or ``None`` if undefined."""
    return OBJECT_SPECS.get(group << 8 | variation)


def is_known(group: int, variation: int) -> bool:
    """Defined in a header without data (variation 0 = any variation is allowed).

    Group 0 has no variation 0: its variations are device attribute numbers (1-255,
    254 = all attributes), so g0v0 is an undefined object; an outstation answers a READ
    of it with IIN2.1 OBJECT_UNKNOWN (opendnp3 conformance test 8.6.3.2).
    """
    return 0 <= variation <= 0xFF and (group << 8 | variation) in KNOWN_HEADERS


def group_name(group: int) -> str:
    entry = OBJECT_TABLE.get(group)
    return entry[0] if entry else f"group {group}"
