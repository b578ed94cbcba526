"""Alerts to the systemd journal, as structured fields.

Under systemd (``JOURNAL_STREAM`` set, as Radicale detects it) each new alert
is sent with ``MESSAGE_ID`` fixed per rule (so ``journalctl MESSAGE_ID=...``
finds every alert of one rule across releases), ``PRIORITY`` from the
severity, and ``MAMORI_*`` fields for the peers and evidence. The binding is
systemd-python (``systemd.journal.send``); when it is missing, or the process
does not run under systemd, nothing is sent and the caller keeps stderr.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

from mamori.parsers.alerts import Alert, Severity

# syslog priorities: crit, err, warning, notice, info
PRIORITY: dict[Severity, int] = {
    Severity.CRITICAL: 2, Severity.HIGH: 3, Severity.MEDIUM: 4, Severity.LOW: 5,
    Severity.INFO: 6,
}

_NAMESPACE = uuid.UUID("5b0f3e8e-4a0c-4c1e-9d7e-6d616d6f7269")  # fixed: ids must not change

Send = Callable[..., Any]


def message_id(rule: str) -> str:
    """The journal MESSAGE_ID of a rule: 128 bits, stable, derived from the rule id."""
    return uuid.uuid5(_NAMESPACE, rule).hex


def under_journald() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM"))


def _systemd_send() -> Send | None:
    try:
        from systemd import journal
    except ImportError:
        return None
    send: Send = journal.send
    return send


def fields(alert: Alert) -> dict[str, str]:
    """The journal fields of one alert (values are strings; empty ones left out)."""
    peers = f"{alert.src}:{alert.sport} -> {alert.dst}:{alert.dport}"
    out = {
        "MESSAGE": f"[{alert.severity.label}] {alert.precursor} {alert.title} ({peers})",
        "MESSAGE_ID": message_id(alert.rule),
        "PRIORITY": str(PRIORITY[alert.severity]),
        "SYSLOG_IDENTIFIER": "mamori",
        "MAMORI_ALERT_ID": str(alert.id),
        "MAMORI_RULE": alert.rule,
        "MAMORI_PRECURSOR": alert.precursor,
        "MAMORI_SEVERITY": alert.severity.label,
        "MAMORI_ATTACK": ",".join(alert.attack),
        "MAMORI_PROTO": alert.proto,
        "MAMORI_COUNT": str(alert.count),
        "MAMORI_FIRST_TS": repr(alert.first_ts),
    }
    for name in ("src", "sport", "dst", "dport", "unit", "link_src", "link_dst"):
        value = getattr(alert, name)
        if value is not None:
            out[f"MAMORI_{name.upper()}"] = str(value)
    for key, value in alert.evidence.items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            out[f"MAMORI_EV_{key.upper()}"] = str(value)
    return out


class JournaldAlertSink:
    """Callable(alert): sends one alert to the journal. ``send`` is injectable for tests."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.sent = 0

    def __call__(self, alert: Alert) -> None:
        self._send(**fields(alert))
        self.sent += 1


def journald_sink(force: bool = False) -> JournaldAlertSink | None:
    """A sink when running under journald (or ``force``) and systemd-python is present."""
    if not (force or under_journald()):
        return None
    send = _systemd_send()
    return None if send is None else JournaldAlertSink(send)
