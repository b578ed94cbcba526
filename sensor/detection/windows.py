"""Maintenance windows: engineering work the site declared, recorded at info level.

A site declares, in ``[[maintenance.windows]]`` tables, when engineering work is
planned (weekly slots like ``"Tue 22:00-02:00"``, or one-off date ranges, in the
site's time zone), from which engineering workstations and against which assets.
Inside a window, an alert of one of the window's ``actions`` (precursors such as
``M7`` or ``M*``, or rule ids; by default the writes, control, restarts and
programming of the catalogue) from a declared workstation against a declared asset
is raised at ``info`` instead of its own severity. Nothing is dropped: the alert is
stored (and forwarded) like any other, its evidence carries ``maintenance`` with
the window's name and the original severity, its title names the window, it is
logged, and its evidence key appears among the fields in the forwarding audit
chain. Reconnaissance, any other host, any other asset and any time outside the
window alert as usual.

Time is the packet's (replaying last month's capture applies last month's
windows). Local times follow the zone's rules, with DST: a slot is open while the
wall clock reads a time from its start up to its end, so a slot whose start falls
in a spring-forward gap opens when the gap ends, and an end that falls in the
repeated fall-back hour is taken at its second occurrence (the slot lasts until the
clock passes the end for the last time). An end at or before the start crosses
midnight into the next day; ``24:00`` is the end of the day.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.detection.bounded import LruTable
from mamori.sensor.detection.matcher import Peers, roles
from mamori.sensor.detection.model import Rule

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# What "engineering actions" are unless a window says: writes (M7, M9-M11), control
# (D7, D8), restarts and modes (M1, M2, D1, D2), programming, files and
# configuration (M12, D5, D6), counters/reporting changes (M3, D3, D4), time (D13).
# Reconnaissance (M4-M6, D11, D12) is never in it: it alerts as usual.
DEFAULT_ACTIONS = ("M1", "M2", "M3", "M7", "M9", "M10", "M11", "M12",
                   "D1", "D2", "D3", "D4", "D5", "D6", "D7", "D8", "D13")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = {**{d: d for d in _DAYS}, **{n: n[:3] for n in (
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")}}
_WEEKLY = re.compile(r"^\s*(?P<days>[A-Za-z,\- ]+?)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*"
                     r"(?P<end>\d{1,2}:\d{2})\s*$")
_DATES = re.compile(r"^\s*(?P<d1>\d{4}-\d{2}-\d{2})[ T](?P<t1>\d{1,2}:\d{2})\s*-\s*"
                    r"(?:(?P<d2>\d{4}-\d{2}-\d{2})[ T])?(?P<t2>\d{1,2}:\d{2})\s*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_ACTION = re.compile(r"^(?:[A-Z][A-Z0-9]{0,15}\*?|[a-z0-9_]+(?:\.[a-z0-9_]+)+)$")
_KEYS = ("name", "timezone", "weekly", "dates", "workstations", "assets", "actions")
_DAY = 1440  # minutes


class WindowError(ValueError):
    """A problem in the N-th window table; ``at`` points the config line at it."""

    def __init__(self, at: tuple[str | int, ...], message: str) -> None:
        self.at = at
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Weekly:
    """Open from ``start`` on each of ``days`` (0 = Monday) for until ``end`` minutes
    of local time; ``end`` beyond 1440 is on the next day."""

    days: frozenset[int]
    start: int  # minutes after local midnight
    end: int  # minutes after the start day's local midnight, > start


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    name: str
    zone: ZoneInfo
    weekly: tuple[Weekly, ...] = ()
    dates: tuple[tuple[float, float], ...] = ()  # [start, end) as UTC timestamps
    workstations: tuple[Network, ...] = ()
    assets: tuple[Network, ...] = ()
    actions: tuple[str, ...] = DEFAULT_ACTIONS
    specs: tuple[str, ...] = field(default=(), compare=False)  # as written, for the dump

    def open_at(self, ts: float) -> bool:
        """Is the window open at packet time ``ts`` (seconds since the epoch)?"""
        for start, end in self.dates:
            if start <= ts < end:
                return True
        if not self.weekly:
            return False
        local = datetime.fromtimestamp(ts, self.zone).date()
        for slot in self.weekly:
            # a slot opened today, yesterday or (24:00-crossing) the day before may be open
            for back in range((slot.end - 1) // _DAY + 1):
                day = local - timedelta(days=back)
                if day.weekday() not in slot.days:
                    continue
                start = local_instant(day, slot.start, self.zone, last=False)
                end = local_instant(day, slot.end, self.zone, last=True)
                if start <= ts < end:
                    return True
        return False

    def covers_action(self, rule: Rule) -> bool:
        for action in self.actions:
            if action == rule.id or action == rule.precursor or (
                    action.endswith("*") and rule.precursor.startswith(action[:-1])):
                return True
        return False

    def as_config(self) -> dict[str, Any]:
        """The TOML table that configures this window (``check-config --dump``)."""
        return {"name": self.name, "timezone": self.zone.key,
                "weekly": [s for s in self.specs if not _DATES.match(s)],
                "dates": [s for s in self.specs if _DATES.match(s)],
                "workstations": [str(n) for n in self.workstations],
                "assets": [str(n) for n in self.assets], "actions": list(self.actions)}


def local_instant(day: date, minutes: int, zone: ZoneInfo, *, last: bool) -> float:
    """The UTC timestamp at which the wall clock of ``zone`` reads ``minutes`` after
    midnight of ``day`` (minutes may run into later days).

    Twice (fall-back hour): the first time, or with ``last`` the second. Never (a
    spring-forward gap): the instant the gap ends, when the clock first reads later.
    """
    day = day + timedelta(days=minutes // _DAY)
    minutes %= _DAY
    wall = datetime.combine(day, dtime(minutes // 60, minutes % 60), tzinfo=zone)
    first, second = wall.replace(fold=0).timestamp(), wall.replace(fold=1).timestamp()
    if first <= second:  # exists (once: equal; twice: first < second)
        return second if last else first
    # In a gap: fold=0 reads it with the offset before (later instant), fold=1 with the
    # offset after (earlier instant); the transition lies between. Whole seconds.
    lo, hi = int(second), int(first)
    before = datetime.fromtimestamp(lo, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return float(hi)


class Windows:
    """The site's windows, asked per alert occurrence: which window (if any) covers it.

    Address membership is cached per address (bounded); whether a window is open is
    cached per minute of packet time (every boundary falls on a whole minute).
    """

    def __init__(self, windows: Sequence[MaintenanceWindow], max_state: int = 4096) -> None:
        self.windows = tuple(windows)
        self._members: LruTable[tuple[int, str, str], bool] = LruTable(
            max_state, "maintenance window addresses")
        self._open: dict[int, tuple[int, bool]] = {}  # window index -> (minute, open)
        self._actions: dict[tuple[int, str], bool] = {}  # (window, rule id) -> covered
        self.downgraded = 0  # occurrences recorded at info because a window covered them

    def __bool__(self) -> bool:
        return bool(self.windows)

    def covering(self, rule: Rule, p: Peers, ts: float) -> MaintenanceWindow | None:
        if rule.severity < Severity.MEDIUM:
            return None  # below medium already: nothing to downgrade
        client, target = roles(p)
        if client is None or target is None:
            return None
        minute = int(ts // 60)
        actions = self._actions
        for i, window in enumerate(self.windows):
            covered = actions.get((i, rule.id))
            if covered is None:  # rules are few: this table stays small
                covered = actions[(i, rule.id)] = window.covers_action(rule)
            if not covered:
                continue
            if not (self._member(i, "workstations", client)
                    and self._member(i, "assets", target)):
                continue
            known = self._open.get(i)
            if known is None or known[0] != minute:
                known = (minute, window.open_at(ts))
                self._open[i] = known
            if known[1]:
                return window
        return None

    def _member(self, i: int, which: str, ip: str) -> bool:
        key = (i, which, ip)
        hit = self._members.get(key)
        if hit is None:
            nets: tuple[Network, ...] = getattr(self.windows[i], which)
            try:
                addr = ipaddress.ip_address(ip)
                hit = any(addr in net for net in nets)
            except ValueError:
                hit = False
            self._members.put(key, hit)
        return hit

    @staticmethod
    def downgrade(alert: Alert, window: MaintenanceWindow) -> Alert:
        """The alert at info, saying which window and what it would have been."""
        evidence = dict(alert.evidence)
        evidence["maintenance"] = {"window": window.name,
                                   "severity": alert.severity.label}
        return replace(alert, severity=Severity.INFO, evidence=evidence,
                       title=f"{alert.title} (maintenance window {window.name})")


# -- configuration ------------------------------------------------------------------------


def _minutes(text: str, at: tuple[str | int, ...], *, end: bool) -> int:
    hours, minutes = (int(x) for x in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        raise WindowError(at, f"{text!r} is not a time of day (00:00-23:59, or 24:00 "
                              "as an end)")
    return hours * 60 + minutes


def _days(text: str, at: tuple[str | int, ...]) -> frozenset[int]:
    words = text.strip().lower()
    if words in ("daily", "every day", "*"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in (w.strip() for w in words.split(",")):
        ends = [_DAY_NAMES.get(e.strip(), "") for e in part.split("-")]
        if len(ends) > 2 or not all(ends):
            raise WindowError(at, f"{part!r} is not a day or range of days (Mon..Sun, "
                                  "e.g. 'Tue', 'Mon-Fri', 'Sat,Sun', or 'daily')")
        lo, hi = _DAYS.index(ends[0]), _DAYS.index(ends[-1])
        out.update(range(lo, hi + 1) if lo <= hi else [*range(lo, 7), *range(hi + 1)])
    return frozenset(out)


def _weekly(text: str, at: tuple[str | int, ...]) -> Weekly:
    m = _WEEKLY.match(text)
    if not m:
        raise WindowError(at, f"{text!r} is not a weekly slot like 'Tue 22:00-02:00' "
                              "or 'Mon-Fri 06:00-07:30'")
    start = _minutes(m["start"], at, end=False)
    end = _minutes(m["end"], at, end=True)
    if end <= start:
        end += _DAY  # crosses midnight (equal: a whole day)
    return Weekly(_days(m["days"], at), start, end)


def _dates(text: str, zone: ZoneInfo, at: tuple[str | int, ...]) -> tuple[float, float]:
    m = _DATES.match(text)
    if not m:
        raise WindowError(at, f"{text!r} is not a date range like "
                              "'2026-12-24 08:00 - 2026-12-24 18:00' (local time)")
    try:
        d1 = date.fromisoformat(m["d1"])
        d2 = date.fromisoformat(m["d2"]) if m["d2"] else d1
    except ValueError as err:
        raise WindowError(at, f"{text!r}: {err}") from None
    t1, t2 = _minutes(m["t1"], at, end=False), _minutes(m["t2"], at, end=True)
    if not m["d2"] and t2 <= t1:
        d2 = d1 + timedelta(days=1)
    start = local_instant(d1, t1, zone, last=False)
    end = local_instant(d2, t2, zone, last=True)
    if not end > start:
        raise WindowError(at, f"{text!r} ends before it starts")
    return start, end


def _strings(item: dict[str, Any], key: str, at: tuple[str | int, ...]) -> list[str]:
    value = item.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WindowError(at, f"{key} must be a string or a list of strings")
    return value


def _networks(item: dict[str, Any], key: str, index: int) -> tuple[Network, ...]:
    at = (index, key)
    if key not in item:
        raise WindowError((index,), f"window needs {key} (IP addresses or networks)")
    out = []
    for text in _strings(item, key, at):
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise WindowError(at, f"{text!r} is not an IP address or network") from None
    if not out:
        raise WindowError(at, f"{key} must name at least one address or network")
    return tuple(out)


def v_windows(value: Any) -> tuple[MaintenanceWindow, ...]:
    """``[[maintenance.windows]]``: the config validator (errors point at the key)."""
    if not isinstance(value, list):
        raise ValueError("must be a list of [[maintenance.windows]] tables")
    out: list[MaintenanceWindow] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise WindowError((index,), "must be a table with name, weekly or dates, "
                                        "workstations and assets")
        unknown = sorted(set(item) - set(_KEYS))
        if unknown:
            raise WindowError((index, unknown[0]), f"unknown key {unknown[0]!r} (known: "
                                                   + ", ".join(_KEYS) + ")")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise WindowError((index, "name") if "name" in item else (index,),
                              "window needs a name (letters, digits, _ . -; max 64)")
        if any(w.name == name for w in out):
            raise WindowError((index, "name"), f"window {name!r} is declared twice")
        zone_name = item.get("timezone", "UTC")
        try:
            if not isinstance(zone_name, str):
                raise ValueError
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise WindowError((index, "timezone"), f"{zone_name!r} is not a time zone "
                              "(an IANA name like 'Europe/Berlin', or 'UTC')") from None
        weekly_specs = _strings(item, "weekly", (index, "weekly"))
        date_specs = _strings(item, "dates", (index, "dates"))
        if not weekly_specs and not date_specs:
            raise WindowError((index,), "window needs weekly slots or dates")
        weekly = tuple(_weekly(s, (index, "weekly")) for s in weekly_specs)
        dates = tuple(_dates(s, zone, (index, "dates")) for s in date_specs)
        actions = tuple(_strings(item, "actions", (index, "actions"))) \
            if "actions" in item else DEFAULT_ACTIONS
        for action in actions:
            if not _ACTION.match(action):
                raise WindowError((index, "actions"), f"{action!r} is not a precursor "
                                  "(M7, M*) or a rule id")
        if not actions:
            raise WindowError((index, "actions"), "actions must not be empty")
        out.append(MaintenanceWindow(
            name, zone, weekly, dates, _networks(item, "workstations", index),
            _networks(item, "assets", index), actions, (*weekly_specs, *date_specs)))
    return tuple(out)

