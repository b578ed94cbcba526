"""SIEM outputs of the sensor and of the collector: EVE JSON lines and RFC 5424 syslog.

On the sensor, ``[output] eve`` (a file) and ``[output] syslog`` (a target) receive
every alert the daemon or a replay publishes, after the store took it: the same
record a SIEM gets from the collector, without waiting for the link. On the
collector, ``[collect] jsonl_format = "eve"`` writes the SIEM file as EVE records
instead of Mamori's own alert JSON, and ``[collect] syslog`` sends each accepted
alert as syslog too. Records and messages are built by mamori.sensor.alerting.eve and
mamori.sensor.alerting.syslog5424; this module only reads the configuration and wires them.

Neither output can stop detection or collection: the file is a
:class:`~mamori.sensor.alerting.linefile.LineFile` (a full disk queues, then drops and counts) and
the syslog sender drops and counts what a receiver does not take.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mamori.parsers.alerts import Alert
from mamori.parsers.wire import Kind
from mamori.sensor import configkit as cfg
from mamori.sensor.alerting.eve import eve_alert, eve_health
from mamori.sensor.alerting.linefile import LineFile
from mamori.sensor.alerting.syslog5424 import FACILITIES, SyslogSender, parse_target, v_target
from mamori.sensor.paths import check_creatable, check_output

if TYPE_CHECKING:
    from mamori.sensor.collector.storage import StoredMessage

log = logging.getLogger("mamori.output")

_v_facility = cfg.v_choice(*FACILITIES)
_v_format = cfg.v_choice("mamori", "eve")

def _syslog_options(section: str, which: str) -> list[cfg.Option]:
    return [cfg.Option(section, "syslog", "", v_target,
                       f"send every {which} alert as RFC 5424 syslog to udp://HOST:PORT, "
                       "unix:///dev/log or file:///PATH; empty = off"),
            cfg.Option(section, "syslog_facility", "local0", _v_facility,
                       "the syslog facility of those messages")]


OPTIONS: tuple[cfg.Option, ...] = (
    cfg.Option("output", "eve", "", cfg.v_str,
               "append every published alert as an EVE JSON line to this file (relative "
               "to state_dir); empty = off"),
    *_syslog_options("output", "published"),
    cfg.Option("collect", "jsonl_format", "mamori", _v_format,
               "records of the [collect] jsonl file: 'mamori' (the alert JSON) or 'eve'"),
    *_syslog_options("collect", "accepted"),
)


def check_outputs(config: cfg.Config) -> list[cfg.Problem]:
    """The EVE file and a syslog file target can be written (before any input is read).

    An EVE path under the state directory needs only be creatable: start-up makes
    that directory. Sockets are not checked: a receiver may come up later.
    """
    problems = []
    eve = str(config.get("output", "eve"))
    if eve:
        path = config.state_path("output", "eve")
        why = check_creatable(path) if not Path(eve).is_absolute() else check_output(path)
        if why is not None:
            problems.append(cfg.Problem("output", "eve", why))
    for section in ("output", "collect"):
        target = str(config.get(section, "syslog"))
        if target and parse_target(target).kind == "file":
            why = check_output(Path(parse_target(target).path))
            if why is not None:
                problems.append(cfg.Problem(section, "syslog", why))
    return problems


CHECKS: tuple[cfg.CrossCheck, ...] = (
    cfg.CrossCheck.of(check_outputs, [("sensor", "state_dir"), ("output", "eve"),
                                      ("output", "syslog"), ("collect", "syslog")]),
)


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str)


class SensorSiem:
    """An ``AlertOutputs`` sink: EVE lines and syslog for each published alert."""

    def __init__(self, identity: Mapping[str, str], eve: Path | None = None,
                 syslog: SyslogSender | None = None) -> None:
        self.identity = dict(identity)
        self.eve = LineFile(str(eve), who="mamori eve") if eve is not None else None
        self.syslog = syslog

    @classmethod
    def from_config(cls, conf: cfg.Config) -> SensorSiem | None:
        """The configured outputs, or None when both are off; OSError if the file cannot
        be opened (the caller says so and starts without it)."""
        eve_text = str(conf.get("output", "eve"))
        target = str(conf.get("output", "syslog"))
        if not eve_text and not target:
            return None
        identity = {k: str(conf.get("sensor", k)) for k in ("name", "site", "sector")}
        syslog = SyslogSender(target, conf.get("output", "syslog_facility")) if target \
            else None
        return cls(identity, conf.state_path("output", "eve") if eve_text else None, syslog)

    def __call__(self, alerts: Sequence[Alert]) -> None:
        records = [(a, eve_alert(a, self.identity)) for a in alerts]
        if self.eve is not None:
            self.eve.write([_line(r) for _, r in records])
        if self.syslog is not None:
            self.syslog.send_alerts(records)

    def status(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.eve is not None:
            out.update(eve_dropped=self.eve.dropped, eve_held=self.eve.held)
        if self.syslog is not None:
            out.update(syslog_sent=self.syslog.sent, syslog_dropped=self.syslog.dropped,
                       syslog_truncated=self.syslog.truncated)
        return out

    def reopen(self) -> None:
        """SIGHUP, after logrotate: write on to files created anew at their paths; a
        path that cannot be opened now keeps the old file."""
        if self.eve is not None:
            try:
                self.eve.reopen()
            except OSError as err:
                log.error("[output] eve %s: cannot reopen: %s; writing on to the old file",
                          self.eve.path, err.strerror or err)
        if self.syslog is not None:
            self.syslog.reopen()

    def close(self) -> None:
        if self.eve is not None:
            self.eve.close()
        if self.syslog is not None:
            self.syslog.close()


@dataclass(frozen=True, slots=True)
class CollectorSiemSettings:
    eve: bool  # the SIEM file holds EVE records
    syslog: str  # target, "" = off
    facility: str

    @classmethod
    def from_section(cls, s: Mapping[str, Any]) -> CollectorSiemSettings:
        return cls(s.get("jsonl_format") == "eve", str(s.get("syslog") or ""),
                   str(s.get("syslog_facility") or "local0"))


class CollectorSiem:
    """The collector's EVE records (with each sensor's site and sector) and syslog."""

    def __init__(self, settings: CollectorSiemSettings) -> None:
        self.settings = settings
        self.syslog = SyslogSender(settings.syslog, settings.facility) if settings.syslog \
            else None
        self._sites: dict[str, tuple[str, str]] = {}  # sensor key -> (site, sector)

    def heartbeat(self, sensor_key: str, body: Any) -> None:
        """Remember the site and sector a sensor's heartbeat says (bounded, 64 chars)."""
        if isinstance(body, dict) and (len(self._sites) < 100_000 or sensor_key in self._sites):
            self._sites[sensor_key] = (str(body.get("site") or "")[:64],
                                       str(body.get("sector") or "")[:64])

    def alert(self, sensor_key: str, name: str, alert: Alert) -> dict[str, Any]:
        site, sector = self._sites.get(sensor_key, ("", ""))
        record = eve_alert(alert, {"name": name, "site": site, "sector": sector})
        record["sensor"]["key"] = sensor_key
        return record

    def lines(self, stored: Sequence[tuple[StoredMessage, str]],
              health: Sequence[Mapping[str, Any]]) -> list[str]:
        """EVE lines for the SIEM file from (message as stored, sensor name) and the
        collector's own health records; syslog messages go out here too. A sensor's
        start record says its site and sector before its first heartbeat may have."""
        records = []
        for msg, name in stored:
            if msg.kind == Kind.ALERT:
                alert = Alert.from_dict(msg.body)
                records.append((alert, self.alert(msg.sensor, name, alert)))
            elif msg.kind == Kind.HEALTH and isinstance(msg.body, dict) \
                    and msg.body.get("event") == "start":
                self.heartbeat(msg.sensor, msg.body)
        if self.syslog is not None:
            self.syslog.send_alerts(records)
        return [_line(eve_health(h)) for h in health] + [_line(r) for _, r in records]

    def reopen(self) -> None:
        if self.syslog is not None:
            self.syslog.reopen()

    def close(self) -> None:
        if self.syslog is not None:
            self.syslog.close()
