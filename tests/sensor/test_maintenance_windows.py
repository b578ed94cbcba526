"""Maintenance windows: recurring slots across midnight, DST change days and zones; config
errors with file, line and key; the engine records covered actions at info, nothing else."""

from __future__ import annotations

import logging
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Severity
from mamori.parsers.modbus.events import ModbusRequest
from mamori.parsers.modbus.pdu import EmptyPdu, WriteSingleRegister
from mamori.parsers.stream import FlowId, Transport
from mamori.sensor import config as cfg
from mamori.sensor.alerting.dispatch import AlertOutputs
from mamori.sensor.alerting.store import Store
from mamori.sensor.detection import Detector, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import build_detector, set_names
from mamori.sensor.detection.windows import MaintenanceWindow, v_windows

RULES = load_rules([SHIPPED_RULES], set_names())
WRITE = "mamori.modbus.unauthorised_write"


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def window(**item: Any) -> MaintenanceWindow:
    base: dict[str, Any] = {"name": "w", "workstations": ["10.0.5.20"],
                            "assets": ["10.0.0.0/24"]}
    (out,) = v_windows([{**base, **item}])
    return out


def opened(w: MaintenanceWindow, *times: str) -> list[bool]:
    return [w.open_at(utc(t)) for t in times]


# -- recurring slots ------------------------------------------------------------------------


def test_weekly_slot_crossing_midnight_in_berlin() -> None:
    w = window(timezone="Europe/Berlin", weekly="Tue 22:00-02:00")
    # 2026-12-08 is a Tuesday; Berlin is UTC+1 in December
    assert opened(w, "2026-12-08 20:59:59", "2026-12-08 21:00", "2026-12-09 00:59:59",
                  "2026-12-09 01:00", "2026-12-09 21:30", "2026-12-07 22:00",
                  "2026-12-15 21:00") == [False, True, True, False, False, False, True]


def test_day_ranges_lists_daily_and_24h() -> None:
    w = window(weekly=["Fri-Mon 23:00-01:00", "Wed,Thu 00:00-24:00"])
    assert opened(w, "2026-12-11 23:30", "2026-12-15 00:30", "2026-12-15 23:30",
                  "2026-12-09 00:00", "2026-12-10 23:59:59", "2026-12-11 00:00",
                  "2026-12-12 00:30") == [True, True, False, True, True, False, True]
    daily = window(weekly="daily 12:00-12:00")  # equal ends: a whole day
    assert opened(daily, "2026-12-11 11:59", "2026-12-12 11:59") == [True, True]


def test_spring_forward_night_berlin() -> None:
    # 2026-03-29 (Sunday) 02:00 CET -> 03:00 CEST, at 01:00 UTC
    night = window(timezone="Europe/Berlin", weekly="Sat 22:00-06:00")
    assert opened(night, "2026-03-28 20:59", "2026-03-28 21:00", "2026-03-29 03:59",
                  "2026-03-29 04:00") == [False, True, True, False]  # 7 h of real time
    gap = window(timezone="Europe/Berlin", weekly="Sun 02:30-04:00")  # starts in the gap
    assert opened(gap, "2026-03-29 00:59:59", "2026-03-29 01:00", "2026-03-29 01:59",
                  "2026-03-29 02:00") == [False, True, True, False]


def test_fall_back_night_berlin() -> None:
    # 2026-10-25 (Sunday) 03:00 CEST -> 02:00 CET, at 01:00 UTC; 02:00-03:00 happens twice
    night = window(timezone="Europe/Berlin", weekly="Sat 22:00-06:00")
    assert opened(night, "2026-10-24 19:59", "2026-10-24 20:00", "2026-10-25 04:59",
                  "2026-10-25 05:00") == [False, True, True, False]  # 9 h of real time
    # the end in the repeated hour is taken at its second occurrence (01:30 UTC)
    early = window(timezone="Europe/Berlin", weekly="Sun 00:00-02:30")
    assert opened(early, "2026-10-24 21:59", "2026-10-24 22:00", "2026-10-25 00:45",
                  "2026-10-25 01:15", "2026-10-25 01:30") == [False, True, True, True, False]
    # a start in the repeated hour: its first occurrence (00:30 UTC)
    late = window(timezone="Europe/Berlin", weekly="Sun 02:30-03:30")
    assert opened(late, "2026-10-25 00:29", "2026-10-25 00:30", "2026-10-25 02:29",
                  "2026-10-25 02:30") == [False, True, True, False]


def test_time_zones_and_the_new_york_change_day() -> None:
    spec = "Mon 08:00-09:00"
    tokyo = window(timezone="Asia/Tokyo", weekly=spec)  # UTC+9, no DST
    york = window(timezone="America/New_York", weekly=spec)
    plain = window(weekly=spec)  # UTC by default
    assert opened(tokyo, "2026-12-06 23:30") == [True]  # Monday 08:30 in Tokyo
    assert opened(york, "2026-12-07 13:30", "2026-12-07 12:30") == [True, False]  # EST
    assert opened(york, "2026-07-06 12:30") == [True]  # EDT: UTC-4
    assert opened(plain, "2026-12-07 08:30", "2026-12-07 13:30") == [True, False]
    # 2026-03-08: New York springs forward at 02:00 local (07:00 UTC)
    sunday = window(timezone="America/New_York", weekly="Sun 01:00-03:00")
    assert opened(sunday, "2026-03-08 05:59", "2026-03-08 06:00", "2026-03-08 06:59",
                  "2026-03-08 07:00") == [False, True, True, False]  # 1 h long that day


def test_one_off_dates_local_and_across_midnight() -> None:
    w = window(timezone="Europe/Berlin",
               dates=["2026-12-24 22:00-02:00", "2027-01-02 08:00 - 2027-01-03 18:00"])
    assert opened(w, "2026-12-24 20:59", "2026-12-24 21:00", "2026-12-25 00:59",
                  "2026-12-25 01:00", "2027-01-02 07:00", "2027-01-03 16:59",
                  "2027-01-03 17:00", "2026-12-31 21:30") == [
        False, True, True, False, True, True, False, False]


# -- configuration errors -------------------------------------------------------------------

GOOD = """\
[[maintenance.windows]]
name = "plc-work"
timezone = "Europe/Berlin"
weekly = ["Tue 22:00-02:00"]
workstations = ["10.0.5.20", "10.0.6.0/24"]
assets = ["10.0.0.0/24"]
"""


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sensor.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert len(err.value.problems) == 1
    return str(err.value)


def test_good_config_builds_a_detector_with_the_window(tmp_path: Path) -> None:
    path = tmp_path / "sensor.toml"
    path.write_text(GOOD, encoding="utf-8")
    conf = cfg.load(path)
    (w,) = conf.get("maintenance", "windows")
    assert w.name == "plc-work" and w.zone.key == "Europe/Berlin"
    assert "M7" in w.actions and "M4" not in w.actions  # recon is never an action
    assert build_detector(conf, RULES)._windows.windows == (w,)
    assert "plc-work" in cfg.dump(conf)


@pytest.mark.parametrize(("change", "line", "fragment"), [
    (('weekly = ["Tue 22:00-02:00"]', 'weekly = ["Tues 22:00-02:00"]'), 4,
     "not a day or range of days"),
    (('weekly = ["Tue 22:00-02:00"]', 'weekly = ["Tue 22:00-25:00"]'), 4,
     "'25:00' is not a time of day"),
    (('weekly = ["Tue 22:00-02:00"]', 'weekly = ["Tue 22:00"]'), 4, "not a weekly slot"),
    (('timezone = "Europe/Berlin"', 'timezone = "Europe/Berlinn"'), 3, "not a time zone"),
    (('timezone = "Europe/Berlin"', 'timezone = "../../etc/passwd"'), 3, "not a time zone"),
    (('"10.0.6.0/24"', '"10.0.6.0/33"'), 5, "'10.0.6.0/33' is not an IP address"),
    (('assets = ["10.0.0.0/24"]', 'assets = []'), 6, "at least one"),
    (('assets = ["10.0.0.0/24"]\n', ''), 1, "window needs assets"),
    (('name = "plc-work"', 'nmae = "plc-work"'), 2, "unknown key 'nmae'"),
    (('weekly = ["Tue 22:00-02:00"]', 'dates = ["2026-02-30 10:00-12:00"]'), 4,
     "day is out of range"),
    (('weekly = ["Tue 22:00-02:00"]', 'dates = ["2026-12-24 10:00 - 2026-12-23 12:00"]'),
     4, "ends before it starts"),
    (('weekly = ["Tue 22:00-02:00"]\n', ''), 1, "needs weekly slots or dates"),
    (('assets = ["10.0.0.0/24"]', 'assets = ["10.0.0.0/24"]\nactions = ["write"]'), 7,
     "'write' is not a precursor"),
])
def test_config_errors_name_file_line_and_key(
        tmp_path: Path, change: tuple[str, str], line: int, fragment: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    msg = config_error(tmp_path, text)
    assert msg.startswith(f"{tmp_path / 'sensor.toml'}:{line}: [maintenance] windows: "), msg
    assert fragment in msg, msg


def test_second_window_errors_point_at_its_own_lines(tmp_path: Path) -> None:
    msg = config_error(tmp_path, GOOD + "\n" + GOOD.replace("Tue 22", "Wed 22"))
    assert msg.startswith(f"{tmp_path / 'sensor.toml'}:9: [maintenance] windows: ")
    assert "'plc-work' is declared twice" in msg


# -- the engine -----------------------------------------------------------------------------

STATION, OTHER, ASSET = "10.0.5.20", "10.9.9.8", "10.0.0.5"
INSIDE = utc("2020-03-03 21:30")  # a Tuesday 22:30 in Berlin, years before this test ran
OUTSIDE = utc("2020-03-04 21:30")


def write(ts: float, client: str, server: str = ASSET) -> ModbusRequest:
    return ModbusRequest(ts, FlowId(Transport.TCP, client, 40001, server, 502), 2, 1, 6,
                         None, 10, 1, WriteSingleRegister(10, 7))


def recon(ts: float, client: str, server: str = ASSET) -> ModbusRequest:
    return ModbusRequest(ts, FlowId(Transport.TCP, client, 40000, server, 502), 1, 1, 17,
                         None, None, None, EmptyPdu())


def detector() -> Detector:
    w = window(name="plc-work", timezone="Europe/Berlin", weekly="Tue 22:00-02:00",
               workstations=[STATION], assets=["10.0.0.0/28"])
    d = Detector(RULES, windows=[w])
    d.inventory.freeze()
    return d


def by_rule(d: Detector, rule: str) -> list[Any]:
    return [a for a in d.alerts() if a.rule == rule]


def test_workstation_writes_in_the_window_are_info_with_the_window_recorded(
        caplog: pytest.LogCaptureFixture) -> None:
    d = detector()
    with caplog.at_level(logging.INFO, logger="mamori.maintenance"):
        d.process([write(INSIDE, STATION), write(INSIDE + 5, STATION)])
    (alert,) = by_rule(d, WRITE)
    assert alert.severity is Severity.INFO and alert.count == 2
    assert alert.evidence["maintenance"] == {"window": "plc-work", "severity": "high"}
    assert "maintenance window plc-work" in alert.title
    assert d.stats.maintenance == 2
    (record,) = [r for r in caplog.records if r.name == "mamori.maintenance"]
    assert WRITE in record.getMessage() and "plc-work" in record.getMessage()
    assert "2020-03-03T21:30:00Z" in record.getMessage()  # packet time, not the clock


@pytest.mark.parametrize(("client", "server", "ts"), [
    (OTHER, ASSET, INSIDE),  # another host
    (STATION, "10.0.0.99", INSIDE),  # an asset the window does not cover
    (STATION, ASSET, OUTSIDE),  # the window is closed (Wednesday)
])
def test_anyone_else_anything_else_any_other_time_alerts_as_before(
        client: str, server: str, ts: float) -> None:
    d = detector()
    d.process([write(ts, client, server)])
    (alert,) = by_rule(d, WRITE)
    assert alert.severity is Severity.HIGH and "maintenance" not in alert.evidence


def test_reconnaissance_from_the_workstation_alerts_and_chains_ignore_sanctioned_work() -> None:
    d = detector()
    d.process([recon(INSIDE, STATION), write(INSIDE + 60, STATION)])
    (look,) = by_rule(d, "mamori.modbus.report_server_id")
    assert look.severity is Severity.MEDIUM
    assert by_rule(d, "mamori.chain.recon_then_action") == []  # the write was planned work
    d.process([write(INSIDE + 120, OTHER)])  # but a write by anyone else completes it
    (chain,) = by_rule(d, "mamori.chain.recon_then_action")
    assert chain.severity is Severity.CRITICAL


def test_a_window_opening_splits_the_aggregate() -> None:
    d = detector()
    before = utc("2020-03-03 20:55")  # 21:55 in Berlin: closed
    d.process([write(before, STATION), write(INSIDE, STATION), write(OUTSIDE, STATION)])
    assert [(a.severity, a.count) for a in by_rule(d, WRITE)] == [
        (Severity.HIGH, 1), (Severity.INFO, 1), (Severity.HIGH, 1)]


def test_downgraded_alert_is_stored_with_window_and_original_severity(tmp_path: Path) -> None:
    d = detector()
    d.process([write(INSIDE, STATION)])
    with Store(tmp_path / "mamori.db") as store:
        AlertOutputs(store).publish(d.drain())
        (alert,) = [a for a in store.alerts() if a.rule == WRITE]
    assert alert.severity is Severity.INFO
    assert alert.evidence["maintenance"] == {"window": "plc-work", "severity": "high"}


def test_forwarded_downgraded_alert_carries_the_window_into_the_audited_fields(
        tmp_path: Path) -> None:
    from mamori.parsers.wire import Kind, decode
    from mamori.sensor.forwarding.forwarder import Forwarder

    d = detector()
    d.process([write(INSIDE, STATION)])
    (alert,) = [a for a in d.drain() if a.rule == WRITE]
    conf = cfg.load(None, {("sensor", "state_dir"): str(tmp_path)})
    fw = Forwarder(conf)
    try:
        fw.submit_alert(alert)
        (row,) = [r for r in fw.journal.pending("x", 0, 10) if r.kind == Kind.ALERT]
    finally:
        fw.close(0)
    body = decode(row.frame).body
    assert body.severity == Severity.INFO and body.rule == WRITE
    assert body.evidence["maintenance"] == {"window": "plc-work", "severity": "high"}
    # the fields of the row are what its audit-chain row records when it is sent
    assert "evidence.maintenance" in row.fields.split(",")
