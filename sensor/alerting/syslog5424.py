"""RFC 5424 syslog: one message per alert, to a UDP receiver, a unix socket or a file.

The header is RFC 5424's: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID``, then
one SD-ELEMENT ``[mamori@32473 ...]`` with the rule, signature id, severity,
ATT&CK ids, alert id and count (32473 is the private enterprise number RFC 5612
reserves for examples: Mamori has none of its own, and a receiver keys on the
name), and as MSG the alert's EVE record as JSON, after the UTF-8 BOM that RFC
5424 requires of a UTF-8 MSG. PRI is ``facility * 8 + severity``: critical 2
(crit), high 3 (err), medium 4 (warning), low 5 (notice), info 6 (informational).

Targets: ``udp://HOST:PORT`` (RFC 5426, one message per datagram),
``unix:///dev/log`` (a datagram socket, as journald and rsyslog listen) and
``file:///PATH`` (one message per line). A datagram is kept under
``MAX_DATAGRAM`` bytes: a longer record loses its evidence first, then is cut
(``truncated`` counts those). A receiver that is away or a full disk never stops
the sensor: the message is dropped, counted in ``dropped``, and the failure is
logged once until sending works again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.alerting.linefile import open_append
from mamori.sensor.timefmt import iso_time

log = logging.getLogger("mamori.syslog")

FACILITIES = {name: i for i, name in enumerate(
    ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
     "authpriv", "ftp", "ntp", "audit", "alert", "clock"))} | {
    f"local{i}": 16 + i for i in range(8)}
SEVERITY = {Severity.CRITICAL: 2, Severity.HIGH: 3, Severity.MEDIUM: 4, Severity.LOW: 5,
            Severity.INFO: 6}
SD_ID = "mamori@32473"
BOM = "\ufeff"
MAX_DATAGRAM = 8192  # rsyslog's default maxMessageSize; RFC 5426 asks receivers for 2048+
_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def header_field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` chars, or ``-``."""
    text = _PRINTUSASCII.sub("_", value)[:limit]
    return text or "-"


def sd_value(value: object) -> str:
    """A PARAM-VALUE: ``"``, ``\\`` and ``]`` escaped as RFC 5424 section 6.3.3 says."""
    return re.sub(r'(["\\\]])', r"\\\1", str(value))


def structured_data(params: Sequence[tuple[str, object]]) -> str:
    return "[" + SD_ID + "".join(f' {name}="{sd_value(v)}"' for name, v in params) + "]"


def format_message(*, facility: int, severity: int, ts: float, hostname: str, app_name: str,
                   procid: str, msgid: str, sd: str, msg: str) -> bytes:
    """One RFC 5424 SYSLOG-MSG (no trailing newline; a file target adds one)."""
    if not 0 <= facility <= 23 or not 0 <= severity <= 7:
        raise ValueError(f"facility {facility} / severity {severity} out of range")
    head = (f"<{facility * 8 + severity}>1 {iso_time(ts)} {header_field(hostname, 255)} "
            f"{header_field(app_name, 48)} {header_field(procid, 128)} "
            f"{header_field(msgid, 32)} {sd or '-'}")
    return (head + (" " + BOM + msg if msg else "")).encode("utf-8")


def alert_message(alert: Alert, record: Mapping[str, Any], facility: int, hostname: str,
                  limit: int | None = None) -> tuple[bytes, bool]:
    """The syslog message of one alert and its EVE ``record``; (bytes, truncated)."""
    sd = structured_data([
        ("rule", alert.rule), ("sid", record.get("alert", {}).get("signature_id", "")),
        ("severity", alert.severity.label), ("precursor", alert.precursor),
        ("attack", ",".join(alert.attack)), ("alert_id", alert.id), ("count", alert.count)])

    def build(doc: Mapping[str, Any]) -> bytes:
        return format_message(facility=facility, severity=SEVERITY[alert.severity],
                              ts=alert.last_ts, hostname=hostname, app_name="mamori",
                              procid=str(os.getpid()), msgid="alert", sd=sd,
                              msg=json.dumps(doc, separators=(",", ":"), default=str))

    data = build(record)
    if limit is None or len(data) <= limit:
        return data, False
    mamori = dict(record.get("mamori") or {})
    mamori["evidence"] = {"truncated": True}
    data = build(dict(record, mamori=mamori))
    return (data if len(data) <= limit else data[:limit]), True


@dataclass(frozen=True, slots=True)
class Target:
    kind: str  # "udp" | "unix" | "file"
    host: str = ""
    port: int = 514
    path: str = ""


def parse_target(text: str) -> Target:
    """``udp://HOST[:PORT]``, ``unix:///PATH`` or ``file:///PATH``; ValueError says why not."""
    parts = urlsplit(text.strip())
    if parts.scheme == "udp":
        try:
            port = parts.port if parts.port is not None else 514
        except ValueError:
            raise ValueError(f"{text!r}: the port is not a number 0-65535") from None
        if not parts.hostname or not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: udp:// needs a host and a port 1-65535")
        return Target("udp", host=parts.hostname, port=port)
    if parts.scheme in ("unix", "file"):
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"{text!r}: {parts.scheme}:// needs an absolute path "
                             f"({parts.scheme}:///var/run/x)")
        if "\0" in parts.path:
            raise ValueError(f"{text!r}: a path cannot contain a NUL character")
        return Target(parts.scheme, path=parts.path)
    raise ValueError(f"{text!r} is not udp://HOST:PORT, unix:///PATH or file:///PATH")


def v_target(value: Any) -> str:
    """Config validator: empty (off) or a target :func:`parse_target` accepts."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    if value.strip():
        parse_target(value)
    return value.strip()


class SyslogSender:
    """Sends messages to one target; never raises on a send (counts and logs instead)."""

    def __init__(self, target: str | Target, facility: str = "local0",
                 hostname: str | None = None) -> None:
        self.target = parse_target(target) if isinstance(target, str) else target
        if facility not in FACILITIES:
            raise ValueError(f"{facility!r} is not a syslog facility")
        self.facility = FACILITIES[facility]
        self.hostname = hostname or socket.gethostname()
        self.sent = 0
        self.dropped = 0
        self.truncated = 0
        self._sock: socket.socket | None = None
        self._fd: int | None = None
        self._failing: str | None = None

    def send_alerts(self, pairs: Sequence[tuple[Alert, Mapping[str, Any]]]) -> None:
        """Each (alert, its EVE record) as one message."""
        limit = None if self.target.kind == "file" else MAX_DATAGRAM
        for alert, record in pairs:
            data, cut = alert_message(alert, record, self.facility, self.hostname, limit)
            self.truncated += cut
            self.send(data)

    def send(self, data: bytes) -> bool:
        try:
            self._send(data)
        except OSError as err:
            self.dropped += 1
            self._close_transport()
            text = f"{type(err).__name__}: {err.strerror or err}"
            if text != self._failing:
                log.error("syslog %s: %s; messages are dropped (counted) until it works",
                          self.describe(), text)
                self._failing = text
            return False
        if self._failing is not None:
            log.warning("syslog %s: sending again (%d dropped)", self.describe(), self.dropped)
            self._failing = None
        self.sent += 1
        return True

    def _send(self, data: bytes) -> None:
        t = self.target
        if t.kind == "file":
            if self._fd is None:
                self._fd = open_append(t.path, 0o640, who="syslog")
            line = data + b"\n"
            if os.write(self._fd, line) != len(line):  # the part written is cut at reopen
                raise OSError(28, "short write (disk full?)")
            return
        if self._sock is None:
            if t.kind == "udp":
                family, _, _, _, address = socket.getaddrinfo(
                    t.host, t.port, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    sock.connect(address)
                except OSError:
                    sock.close()
                    raise
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    sock.connect(t.path)
                except OSError:
                    sock.close()
                    raise
            sock.setblocking(False)  # a slow receiver drops, it never stalls capture
            self._sock = sock
        self._sock.send(data)

    def describe(self) -> str:
        t = self.target
        return f"udp://{t.host}:{t.port}" if t.kind == "udp" else f"{t.kind}://{t.path}"

    def _close_transport(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def reopen(self) -> None:
        """SIGHUP (logrotate moved a file target): the next send opens the target anew."""
        self._close_transport()

    def close(self) -> None:
        self._close_transport()
