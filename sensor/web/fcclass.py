"""Function-code classes for the communication map: read, write, control, diagnostics,
programming. The whole classification is this one table of data.

Labels are those of the stored pair documents (``Pair.to_dict()["functions"]``):
``"3"`` (an FC), ``"8/4"`` (Modbus FC 8 sub-function 4, or 43/14) and ``"g12"``
(a DNP3 object group). Object groups carry no class of their own; an FC not in the
table is ``other``, so an unexpected code is still visible on the edge.
"""

from __future__ import annotations

from collections.abc import Iterable

CLASSES = ("read", "write", "control", "diagnostics", "programming", "other")

_MODBUS: dict[str, tuple[int, ...]] = {
    "read": (1, 2, 3, 4, 23, 24, 43),  # 23 read/write multiple: its read part
    "write": (5, 6, 15, 16, 22, 23),
    "diagnostics": (7, 8, 11, 12, 17),
    "programming": (9, 13, 14, 18, 20, 21, 40, 90, 91, 125, 126),  # UMAS, firmware, files
}

_DNP3: dict[str, tuple[int, ...]] = {
    "read": (1,),
    "write": (2, 20, 21),  # 20/21 enable/disable unsolicited change what is reported
    "control": (3, 4, 5, 6, 7, 8, 9, 10, 11, 12),  # select/operate, freeze
    "diagnostics": (13, 14, 23, 24),  # restarts, delay measurement, record time
    "programming": (15, 16, 17, 18, 19, 22, 25, 26, 27, 28, 29, 30, 31),  # apps, files, config
}

FC_CLASSES: dict[str, dict[int, tuple[str, ...]]] = {}
for _proto, _table in (("modbus", _MODBUS), ("dnp3", _DNP3)):
    _by_fc: dict[int, list[str]] = {}
    for _cls, _fcs in _table.items():
        for _fc in _fcs:
            _by_fc.setdefault(_fc, []).append(_cls)
    FC_CLASSES[_proto] = {fc: tuple(sorted(c, key=CLASSES.index)) for fc, c in _by_fc.items()}


def fc_of(label: str) -> int | None:
    """``"8/4"`` → 8, ``"3"`` → 3, ``"g12"`` → None (an object group, not an FC)."""
    head = label.split("/", 1)[0]
    return int(head) if head.isdigit() else None


def classify(proto: str, labels: Iterable[str]) -> list[str]:
    """The classes of the function codes in ``labels``, in ``CLASSES`` order."""
    table = FC_CLASSES.get(proto, {})
    found: set[str] = set()
    for label in labels:
        fc = fc_of(label)
        if fc is not None:
            found.update(table.get(fc, ("other",)))
    return [c for c in CLASSES if c in found]
