"""One way to write a time for people and for other programs: RFC 3339 (ISO 8601) in UTC.

EVE records, RFC 5424 syslog headers, CSV exports and the advisory evidence all
write times; they share this, so a SIEM correlating them sees one format
(``2026-12-04T21:26:43.123456+00:00``: six fractional digits at most, as RFC 5424
allows, and an explicit offset).
"""

from __future__ import annotations

import datetime as dt
import math

from mamori.sensor.configkit import parse_duration


def iso_time(ts: float) -> str:
    """``ts`` (seconds since the epoch) as RFC 3339 in UTC, microsecond precision."""
    if not math.isfinite(ts):
        raise ValueError(f"not a time: {ts!r}")
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="microseconds")


def parse_time(text: str, now: float) -> float | None:
    """``"24h"`` (that long ago) or an ISO date/time (UTC unless it says otherwise).

    What the web page's filters and ``mamori attack-layer --since/--until`` take;
    empty text is no bound (None).
    """
    text = text.strip()
    if not text:
        return None
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (24h, 7d) nor a date "
                         "(2025-01-31, 2025-01-31T12:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()
