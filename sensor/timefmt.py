"""One way to write a time for people and for other programs: RFC 3339 (ISO 8601) in UTC.

EVE records, RFC 5424 syslog headers, CSV exports and the advisory evidence all
write times; they share this, so a SIEM correlating them sees one format
(``2026-12-04T21:26:43.123456+00:00``: six fractional digits at most, as RFC 5424
allows, and an explicit offset).
"""

from __future__ import annotations

import datetime as dt
import math


def iso_time(ts: float) -> str:
    """``ts`` (seconds since the epoch) as RFC 3339 in UTC, microsecond precision."""
    if not math.isfinite(ts):
        raise ValueError(f"not a time: {ts!r}")
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="microseconds")
