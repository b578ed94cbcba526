"""Exports for spreadsheets and ATT&CK tooling: alerts and assets as CSV, a Navigator layer.

CSV is RFC 4180 (``csv`` module, ``\\r\\n`` line ends, a header row), one row per
alert aggregate or per asset, lists joined with spaces and nested data (evidence,
identity) as compact JSON in one cell. Times are RFC 3339 in UTC. A cell that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading
``'``: device identity strings and rule evidence come off the wire, and a
spreadsheet would otherwise run ``=HYPERLINK(...)`` announced by a hostile device.

The layer is the ATT&CK Navigator's layer format 4.5 for the ``ics-attack``
domain: each technique id the period's alerts carry, scored by how many times it
was seen (the sum of the alert aggregates' counts), with the rules behind it in the
comment and metadata. Rules carry the legacy T08xx id and, where ATT&CK v19
renumbered a technique, the new one as well; both are listed, and the Navigator
shows the ones its ATT&CK version knows. No ``attack`` version is pinned, so the
Navigator loads the layer on its current ICS matrix.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.timefmt import iso_time
from mamori.sensor.web.attack import attack_name

if TYPE_CHECKING:
    from mamori.sensor.alerting.store import Store

ALERT_COLUMNS = ("id", "first_seen", "last_seen", "severity", "precursor", "rule", "title",
                 "proto", "src", "sport", "dst", "dport", "unit", "link_src", "link_dst",
                 "count", "attack", "evidence")
ASSET_COLUMNS = ("ip", "mac", "roles", "units", "links", "first_seen", "last_seen",
                 "learned", "identity")
LAYER_VERSION = "4.5"
NAVIGATOR_VERSION = "5.1.0"  # the format 4.5 needs a Navigator of 4.9.0 or later
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    """One CSV cell: text as is (formula starts neutralised), lists spaced, maps as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str,
                          sort_keys=True)
    elif isinstance(value, list | tuple | set | frozenset):
        text = " ".join(str(v) for v in value)
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def _time(value: Any) -> str:
    return iso_time(float(value)) if isinstance(value, int | float) else ""


def alert_row(a: Alert) -> list[str]:
    return [cell(v) for v in (
        a.id, _time(a.first_ts), _time(a.last_ts), a.severity.label, a.precursor, a.rule,
        a.title, a.proto, a.src, a.sport, a.dst, a.dport, a.unit, a.link_src, a.link_dst,
        a.count, list(a.attack),
        {k: (v.hex() if isinstance(v, bytes) else v) for k, v in a.evidence.items()})]


def asset_row(a: Mapping[str, Any]) -> list[str]:
    return [cell(v) for v in (
        a.get("ip"), a.get("mac"), a.get("roles") or [], a.get("units") or [],
        a.get("links") or [], _time(a.get("first_seen")), _time(a.get("last_seen")),
        bool(a.get("learned")), a.get("identity") or {})]


class _Echo:
    """A file-like that hands back what ``csv.writer`` writes (for streaming)."""

    def write(self, text: str) -> str:
        return text


def csv_lines(header: Iterable[str], rows: Iterable[list[str]]) -> Iterator[str]:
    """The CSV text line by line: what a web response streams."""
    writer = csv.writer(_Echo())
    yield writer.writerow(list(header))
    for row in rows:
        yield writer.writerow(row)


def write_csv(out: IO[str], header: Iterable[str], rows: Iterable[list[str]]) -> int:
    """Write the CSV to ``out``; returns the number of data rows."""
    lines = 0
    for line in csv_lines(header, rows):
        out.write(line)
        lines += 1
    return lines - 1


def attack_layer(alerts: Iterable[Alert], since: float | None, until: float | None,
                 name: str = "Mamori: techniques seen") -> dict[str, Any]:
    """A Navigator layer scoring each ATT&CK for ICS technique by occurrences in the period.

    An alert counts when its span (first to last seen) overlaps [since, until].
    """
    seen: Counter[str] = Counter()
    alerts_of: Counter[str] = Counter()
    rules: dict[str, Counter[str]] = defaultdict(Counter)
    first: float | None = None
    last: float | None = None
    for a in alerts:
        if (since is not None and a.last_ts < since) or (until is not None and
                                                         a.first_ts > until):
            continue
        first = a.first_ts if first is None else min(first, a.first_ts)
        last = a.last_ts if last is None else max(last, a.last_ts)
        for technique in dict.fromkeys(a.attack):
            seen[technique] += a.count
            alerts_of[technique] += 1
            rules[technique][a.rule] += a.count
    period = f"{_time(since) or 'the start of the store'} to {_time(until) or 'now'}"
    techniques = []
    for technique, score in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0])):
        by_rule = ", ".join(f"{r} x{n}" for r, n in rules[technique].most_common())
        label = attack_name(technique)
        techniques.append({
            "techniqueID": technique, "score": score, "enabled": True,
            "comment": f"{label + ': ' if label else ''}seen {score} time(s) in "
                       f"{alerts_of[technique]} alert(s): {by_rule}",
            "metadata": [{"name": "alerts", "value": str(alerts_of[technique])},
                         {"name": "rules", "value": by_rule}]})
    top = max(seen.values(), default=0)
    return {
        "name": name,
        "versions": {"navigator": NAVIGATOR_VERSION, "layer": LAYER_VERSION},
        "domain": "ics-attack",
        "description": f"ATT&CK for ICS techniques of the alerts Mamori raised, {period}; "
                       "score = times seen",
        "sorting": 3,  # by score, highest first
        "layout": {"layout": "side", "showID": True, "showName": True},
        "hideDisabled": False,
        "techniques": techniques,
        "gradient": {"colors": ["#ffffff", "#ffb000", "#d62728"], "minValue": 0,
                     "maxValue": max(top, 1)},
        "legendItems": [],
        "metadata": [{"name": "period", "value": period},
                     {"name": "alerts seen from", "value": _time(first) or "-"},
                     {"name": "alerts seen to", "value": _time(last) or "-"}],
    }


PAGE = 5000  # alerts read from the store at once


def iter_alerts(store: Store, since: float | None = None,
                min_severity: Severity | None = None) -> Iterator[Alert]:
    """Every matching alert, oldest first, ``PAGE`` rows at a time."""
    after = 0
    while True:
        page = store.alerts(since=since, min_severity=min_severity, after_id=after,
                            limit=PAGE)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].id


def print_alerts_csv(store: Store, since: float | None, severity: Severity | None) -> int:
    """``mamori alerts --csv``: the store's alerts (filtered) as CSV on stdout."""
    with store:
        write_csv(sys.stdout, ALERT_COLUMNS,
                  (alert_row(a) for a in iter_alerts(store, since, severity)))
    return 0


def print_assets_csv(assets: list[dict[str, Any]]) -> int:
    """``mamori assets --csv``: the inventory as CSV on stdout."""
    write_csv(sys.stdout, ASSET_COLUMNS, (asset_row(a) for a in assets))
    return 0
