"""The alert timeline: alerts per hour by severity, as server-rendered SVG bars.

SVG made here, like the map, because the CSP allows no inline script or style and
nothing from a CDN: the bars are plain ``<rect>`` elements whose colours come from
classes in ``static/app.css``, with a ``<title>`` per hour that the browser shows on
hover. An alert is an aggregate, so it is counted once, in the hour it was first
seen (its count of occurrences and its last-seen time are on the list).

The window ends at the filter's ``until`` or at the newest alert the filter matches
(a replayed capture's alerts are years old: a window ending now would be empty) and
starts at ``since``, else ``DEFAULT_HOURS`` before; at most ``MAX_HOURS`` bars.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape

from mamori.parsers.alerts import Severity

DEFAULT_HOURS = 48
MAX_HOURS = 14 * 24
HOUR = 3600
_HEIGHT = 80  # px of the tallest bar
_AXIS = 18  # px below the bars for the hour labels
_LEFT = 34  # px left of the bars for the scale
# The hours a label can name: a filter's ``until`` may lie past 9999-12-31 (an offset
# pushes it there) or before year 1, where ``datetime`` ends; the window stays inside.
_LAST_END = int(datetime(9999, 12, 31, 23, tzinfo=UTC).timestamp())
_FIRST_END = int(datetime(1, 1, 1, tzinfo=UTC).timestamp()) + (MAX_HOURS + 1) * HOUR


@dataclass(frozen=True, slots=True)
class Window:
    """``hours`` whole hours from ``start`` (epoch seconds, on an hour boundary)."""

    start: int
    hours: int
    clipped: bool = False  # ``since`` asked for more than MAX_HOURS

    @property
    def end(self) -> int:
        return self.start + self.hours * HOUR


def window(newest: float | None, since: float | None, until: float | None,
           now: float) -> Window:
    """The hours to draw (see module docstring)."""
    end_ts = until if until is not None else newest if newest is not None else now
    end = min(max((math.floor(end_ts / HOUR) + 1) * HOUR, _FIRST_END), _LAST_END)
    if since is None:
        return Window(end - DEFAULT_HOURS * HOUR, DEFAULT_HOURS)
    hours = max(1, (end - math.floor(since / HOUR) * HOUR) // HOUR)
    if hours > MAX_HOURS:
        return Window(end - MAX_HOURS * HOUR, MAX_HOURS, clipped=True)
    return Window(end - hours * HOUR, int(hours))


@dataclass
class Timeline:
    """Counts per hour (epoch second of the hour) and severity."""

    window: Window
    counts: dict[int, dict[Severity, int]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, win: Window, rows: Iterable[tuple[int, int, int]]) -> Timeline:
        """``rows``: (hour index = first_ts // 3600, severity, count), as the store gives."""
        tl = cls(win)
        for hour, severity, count in rows:
            at = int(hour) * HOUR
            if win.start <= at < win.end:
                per = tl.counts.setdefault(at, {})
                sev = Severity(int(severity))
                per[sev] = per.get(sev, 0) + int(count)
        return tl

    def total(self) -> int:
        return sum(sum(per.values()) for per in self.counts.values())

    def by_severity(self) -> dict[Severity, int]:
        out = {s: 0 for s in Severity}
        for per in self.counts.values():
            for sev, n in per.items():
                out[sev] += n
        return out


def _hour_text(at: int) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:00 UTC")


def render_svg(tl: Timeline) -> str:
    """The bars as an ``<svg>`` element (every text escaped)."""
    win = tl.window
    bar = max(3, min(16, 960 // win.hours))
    width = _LEFT + win.hours * bar + 4
    height = _HEIGHT + _AXIS + 4
    peak = max((sum(per.values()) for per in tl.counts.values()), default=0)
    scale = _HEIGHT / peak if peak else 0.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline-svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="alerts per hour by severity">',
           f'<line class="axis" x1="{_LEFT}" y1="{_HEIGHT + 2}" x2="{width - 4}" '
           f'y2="{_HEIGHT + 2}"/>',
           f'<text class="scale" x="{_LEFT - 4}" y="10" text-anchor="end">{peak}</text>',
           f'<text class="scale" x="{_LEFT - 4}" y="{_HEIGHT + 2}" text-anchor="end">0</text>']
    every = next(k for k in (1, 2, 3, 6, 12, 24, 48, 96) if k * bar >= 70)
    for i in range(win.hours):
        at = win.start + i * HOUR
        x = _LEFT + i * bar
        if at // HOUR % every == 0:
            stamp = datetime.fromtimestamp(at, UTC)
            label = stamp.strftime("%d %b" if stamp.hour == 0 else "%H:00")
            out.append(f'<line class="tick" x1="{x}" y1="{_HEIGHT + 2}" x2="{x}" '
                       f'y2="{_HEIGHT + 6}"/><text class="hour-label" x="{x}" '
                       f'y="{_HEIGHT + _AXIS}">{label}</text>')
        per = tl.counts.get(at)
        if not per:
            continue
        attrs = " ".join(f'data-{s.label}="{per.get(s, 0)}"' for s in Severity)
        parts = ", ".join(f"{per[s]} {s.label}" for s in reversed(Severity) if per.get(s))
        out.append(f'<g class="hour" data-hour="{at}" data-total="{sum(per.values())}" '
                   f'{attrs}><title>{escape(_hour_text(at))}: {escape(parts)}</title>')
        y = float(_HEIGHT + 2)
        for sev in Severity:  # info at the bottom, critical on top
            n = per.get(sev, 0)
            if not n:
                continue
            h = max(1.0, n * scale)
            y -= h
            out.append(f'<rect class="bar-{sev.label}" x="{x + 0.5}" y="{y:.1f}" '
                       f'width="{bar - 1}" height="{h:.1f}"/>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)
