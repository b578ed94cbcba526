"""An alert's evidence as rows an operator reads, not a Python dict.

The detection engine stores metadata of the first matching event (``fc``, ``sub``,
``address``/``quantity``, DNP3 ``objects`` headers, ``iin``, an ``anomaly``, a
``detail``) and the storm fold adds its counts; health alerts and other producers
add keys of their own. Known keys get names and units (``6 Write Single Register``,
``g12v1 q0x28 count 1``, ``start 0, count 10 (40001-40010)``, an en dash in the
range); any other key is shown generically. ``None`` is never shown: it means "not
known" and says nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mamori.sensor.web.fcnames import exception_name, fc_name, group_name, iin_names, sub_name


@dataclass(frozen=True, slots=True)
class EvidenceRow:
    key: str  # the stored key (``data-key`` on the page)
    label: str
    lines: tuple[str, ...]
    links: tuple[int | None, ...] = ()  # per line: the alert id it names (chain steps)


DASH = "\u2013"  # an en dash between the ends of a range

LABELS = {
    "fc": "Function code", "sub": "Sub-function", "exception": "Exception",
    "iin": "Internal indications", "address": "Addresses", "objects": "Object headers",
    "anomaly": "Anomaly", "detail": "Detail", "transport": "Transport", "value": "Value",
    "unsolicited": "Unsolicited", "storm": "Storm", "sources": "Sources",
    "sources_exact": "Sources counted exactly", "cap": "Storm cap",
    "window": "Window", "chain": "Chain", "steps": "Steps", "same_source": "Same source",
    "maintenance": "Maintenance window",
}
_ORDER = ("fc", "sub", "exception", "address", "objects", "iin", "anomaly", "detail",
          "chain", "steps", "maintenance")
_HIDDEN = frozenset({"ids"})  # bookkeeping: a chain's step ids are the store's already
_SECONDS = frozenset({"window"})

# Modicon reference numbers: the data table an FC addresses, as 0xxxx ... 4xxxx.
_TABLE_OF_FC = {1: 0, 5: 0, 15: 0, 2: 1, 4: 3, 3: 4, 6: 4, 16: 4, 22: 4, 23: 4, 24: 4}
_TABLE_NAMES = {0: "coils", 1: "discrete inputs", 3: "input registers", 4: "holding registers"}


def evidence_rows(proto: str, evidence: Mapping[str, Any]) -> list[EvidenceRow]:
    """The rows for one alert's evidence, known keys first, then the rest by name."""
    ev = {k: v for k, v in evidence.items() if v is not None}
    fc = ev.get("fc") if isinstance(ev.get("fc"), int) else None
    rows: list[EvidenceRow] = []
    for key in (*[k for k in _ORDER if k in ev], *sorted(k for k in ev if k not in _ORDER)):
        value = ev[key]
        if key == "quantity" and "address" in ev:
            continue  # shown with the address
        if key in _HIDDEN:
            continue
        if key == "steps" and isinstance(value, list):
            rows.append(_steps(value))
            continue
        lines = _lines(proto, fc, key, value, ev)
        if not lines:
            continue
        rows.append(EvidenceRow(key, LABELS.get(key, _label(key)), lines))
    return rows


def _steps(steps: list[Any]) -> EvidenceRow:
    """A campaign chain's steps, one line each, linked to the step's alert:
    ``reconnaissance: alert 12, mamori.modbus.device_id_read, 2026-11-25T20:49:19Z``."""
    lines: list[str] = []
    links: list[int | None] = []
    for step in steps:
        if not isinstance(step, Mapping):
            lines.append(_text(step))
            links.append(None)
            continue
        ident = step.get("alert")
        alert = ident if isinstance(ident, int) and not isinstance(ident, bool) else None
        said = (f"alert {alert}" if alert is not None
                else f"not stored (detector alert {step.get('detector_alert')})")
        lines.append(f"{_text(step.get('step'))}: {said}, {_text(step.get('rule'))}, "
                     f"{_text(step.get('time'))}")
        links.append(alert)
    return EvidenceRow("steps", LABELS["steps"], tuple(lines), tuple(links))


def _label(key: str) -> str:
    return key.replace("_", " ").strip().capitalize() or key


def _named(code: int, name: str) -> str:
    return f"{code} {name}" if name else str(code)


def _lines(proto: str, fc: int | None, key: str, value: Any,
           ev: Mapping[str, Any]) -> tuple[str, ...]:
    if key == "fc" and isinstance(value, int):
        return (_named(value, fc_name(proto, value)),)
    if key == "sub" and isinstance(value, int) and fc is not None:
        return (f"{_named(value, sub_name(fc, value))} (0x{value:04x})",)
    if key == "exception" and isinstance(value, int) and proto == "modbus":
        return (_named(value, exception_name(value)),)
    if key == "address" and isinstance(value, int):
        quantity = ev.get("quantity")
        return (address_range(fc, value, quantity if isinstance(quantity, int) else None),)
    if key == "objects" and isinstance(value, list):
        return tuple(object_header(h) if isinstance(h, Mapping) else _text(h) for h in value)
    if key == "iin" and isinstance(value, int):
        names = iin_names(value)
        return (f"0x{value:04x}" + (f": {', '.join(names)}" if names else ""),)
    if key == "anomaly" and isinstance(value, str):
        return (f"{value.replace('_', ' ').lower().capitalize()} ({value})",)
    if key in _SECONDS and isinstance(value, int | float) and not isinstance(value, bool):
        return (f"{value:g} s",)
    text = _text(value)
    return (text,) if text else ()


def address_range(fc: int | None, start: int, quantity: int | None) -> str:
    """``start 0, count 10 (holding registers 40001-40010)``: the PDU's zero-based
    start and count, and the Modicon reference numbers (with the table's name) where
    the function code says which table it is."""
    count = max(quantity or 1, 1)
    out = f"start {start}, count {count}" if quantity is not None else f"address {start}"
    table = _TABLE_OF_FC.get(fc if fc is not None else -1)
    last = start + count - 1
    if table is not None and start >= 0 and last <= 65535:
        width = 4 if last < 9999 else 5
        ref = f"{table}{start + 1:0{width}d}"
        what = _TABLE_NAMES[table] if count > 1 else _TABLE_NAMES[table][:-1]
        out += f" ({what} {ref}{DASH}{table}{last + 1:0{width}d})" if count > 1 \
            else f" ({what} {ref})"
    return out


def object_header(h: Mapping[str, Any]) -> str:
    """One DNP3 object header: ``g12v1 q0x28 count 1`` (+ range and group name)."""
    parts = [f"g{h.get('group')}v{h.get('variation')}"]
    qualifier = h.get("qualifier")
    if isinstance(qualifier, int):
        parts.append(f"q0x{qualifier:02x}")
    start, stop = h.get("start"), h.get("stop")
    if isinstance(start, int) and isinstance(stop, int):
        parts.append(f"{start}{DASH}{stop}" if stop != start else f"index {start}")
    if h.get("count") is not None:
        parts.append(f"count {h['count']}")
    group = h.get("group")
    name = group_name(group) if isinstance(group, int) else ""
    return " ".join(parts) + (f" ({name})" if name else "")


def _text(value: Any) -> str:
    """Anything else, without ``None`` and without Python's reprs."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{_label(str(k))}: {t}" for k, v in value.items()
                         if (t := _text(v)))
    if isinstance(value, list | tuple):
        return ", ".join(t for v in value if (t := _text(v)))
    return str(value)
