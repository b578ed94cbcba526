"""Operator commands for detection: ``rules``, ``alerts``, ``assets``, ``baseline``.

Also the detection part of ``mamori replay`` (flags, building the Detector,
writing ``--alerts OUT.jsonl`` and the store), so ``sensor/cli.py`` only wires
it in. Every handler returns an exit status: 0 success, 1 a check failed or
the input was bad, 2 usage errors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor import config as cfg
from mamori.sensor.alerting.dispatch import AlertOutputs
from mamori.sensor.alerting.export import print_alerts_csv, print_assets_csv
from mamori.sensor.alerting.journald import journald_sink
from mamori.sensor.alerting.siem import SensorSiem
from mamori.sensor.alerting.store import Store, StoreError, open_store
from mamori.sensor.capture.packet_evidence import PacketEvidence
from mamori.sensor.cliargs import add_csv_flag, csv_conflict
from mamori.sensor.cliargs import config_file as _config
from mamori.sensor.cliargs import open_store_of as _open_store
from mamori.sensor.cliargs import store_args as _store_args
from mamori.sensor.detection import bundle_cli as rulebundle_cli
from mamori.sensor.detection.engine import Detector
from mamori.sensor.detection.inventory import Inventory, vouch
from mamori.sensor.detection.loader import RuleError, load_rules, pack_files
from mamori.sensor.detection.session import (
    Consumer,
    ForwardingError,
    Session,
    adopt_stored_baseline,
    open_forwarder,
    stored_enforcing,
)
from mamori.sensor.detection.settings import (
    build_detector,
    build_inventory,
    load_configured_rules,
    rule_dirs,
    set_names,
)
from mamori.sensor.paths import (
    OutputError,
    check_output,
    check_special,
    describe,
    read_bounded,
)


class UsageError(Exception):
    """A problem the operator must fix before the command can run (exit 2)."""


def register_commands(commands: Any,
                      assets_extras: Sequence[Callable[[argparse.ArgumentParser], None]] = ()
                      ) -> None:
    """``rules``, ``alerts``, ``assets``, ``baseline``; ``assets_extras`` add other
    capabilities' flags to ``assets`` (the assembly passes advisories' ``--vulnerable``)."""
    rules = commands.add_parser("rules", help="check rule packs; signed rule bundles",
                                description="Validate rule packs against the schema; build,"
                                " sign, install and inspect signed rule bundles.")
    rules_sub = rules.add_subparsers(dest="rules_command", metavar="ACTION")
    rules_sub.required = True
    check = rules_sub.add_parser("check", help="validate rule packs and exit")
    check.add_argument("dirs", nargs="*", metavar="DIR", type=Path,
                       help="pack directories or files (default: the configured packs)")
    check.add_argument("--config", type=Path, metavar="FILE")
    check.set_defaults(func=cmd_rules_check)
    rulebundle_cli.add_actions(rules_sub)

    alerts = commands.add_parser("alerts", help="show alerts from the local store")
    alerts.add_argument("--since", metavar="DURATION", help="last seen within, e.g. 1h, 7d")
    alerts.add_argument("--severity", metavar="LEVEL", help="at least this severity")
    alerts.add_argument("--follow", action="store_true", help="keep printing new alerts")
    alerts.add_argument("--json", action="store_true", help="one JSON object per line")
    alerts.add_argument("--show", type=int, metavar="ID",
                        help="one alert in full: evidence and the pcap of its packets")
    add_csv_flag(alerts, "the alerts")
    _store_args(alerts)
    _collector_args(alerts)
    alerts.set_defaults(func=cmd_alerts)

    assets = commands.add_parser("assets", help="show the asset inventory")
    assets.add_argument("--json", action="store_true")
    assets.add_argument("--pairs", action="store_true", help="communication pairs instead")
    add_csv_flag(assets, "the assets")
    for extra in assets_extras:  # mamori assets --vulnerable (advisories)
        extra(assets)
    _store_args(assets)
    _collector_args(assets)
    assets.set_defaults(func=cmd_assets)

    baseline = commands.add_parser("baseline", help="freeze, export, import the baseline")
    baseline_sub = baseline.add_subparsers(dest="baseline_command", metavar="ACTION")
    baseline_sub.required = True
    for name, help_text in (("freeze", "end learning now; enforce the baseline"),
                            ("status", "show learning/enforcing and counts"),
                            ("export", "write the baseline to FILE (JSON)"),
                            ("import", "load a reviewed baseline FILE and enforce it")):
        sub = baseline_sub.add_parser(name, help=help_text)
        if name in ("export", "import"):
            sub.add_argument("file", type=Path, metavar="FILE")
        _store_args(sub)
        sub.set_defaults(func=cmd_baseline)


def _collector_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "collector", "on a collector's store (--collector, or --store pointing at one): "
        "every sensor's, selected by")
    group.add_argument("--collector", action="store_true",
                       help="read the collector store of the config's [collect] (db or dsn)")
    group.add_argument("--sensor", metavar="NAME",
                       help="allow-list name, reported name or key (a key that starts "
                            "with '-': --sensor=KEY)")
    group.add_argument("--site", metavar="SITE", help="the site the sensor reports")
    group.add_argument("--sector", metavar="SECTOR", help="the sector the sensor reports")


def _collector_mode(args: argparse.Namespace) -> bool:
    """A collector's store was asked for, or ``--store`` is one. UsageError for a
    sensor selection on a sensor's own store (it holds one sensor)."""
    from mamori.sensor.collector.view import is_collector_store

    on = bool(args.collector) or (args.store is not None and is_collector_store(args.store))
    if not on and (args.sensor, args.site, args.sector) != (None, None, None):
        raise UsageError("--sensor, --site and --sector select sensors on a collector's "
                         "store (--collector, or --store COLLECTOR.db)")
    return on


def _open_collector(args: argparse.Namespace) -> Any:
    """The collector store: ``--store`` (SQLite), else the config's [collect] db or dsn."""
    from mamori.sensor.collector.server import CollectorSettings
    from mamori.sensor.collector.storage import (
        SqliteStorage,
        open_storage,
        storage_errors,
        storage_problem,
    )

    if args.store is not None and not args.collector:
        try:
            return SqliteStorage(args.store)
        except sqlite3.Error as err:
            raise StoreError(f"{args.store}: {err}") from None
    settings = CollectorSettings.from_config(_config(args.config))
    if not settings.dsn and not settings.db.exists():
        raise StoreError(f"{settings.db}: no collector store yet")
    try:
        return open_storage(settings.db, settings.dsn)
    except storage_errors(settings) as err:
        raise StoreError(storage_problem(settings, err)) from None


def _file_problem(path: Path, err: Exception) -> str:
    """``path: reason``: an OSError without its ``[Errno N] ... 'path'`` repetition."""
    if isinstance(err, IsADirectoryError):
        return f"{path}: is a directory, not a file"
    if isinstance(err, OSError):
        return f"{path}: cannot read: {err.strerror or err}"
    if isinstance(err, UnicodeDecodeError):
        return f"{path}: not UTF-8 text (byte {err.start})"
    if isinstance(err, json.JSONDecodeError):
        return f"{path}:{err.lineno}:{err.colno}: not JSON: {err.msg}"
    return f"{path}: {err}"


FOLLOW_INTERVAL = 1.0  # seconds between two reads of the store by alerts --follow
MAX_BASELINE_BYTES = 64 << 20  # a reviewed baseline of a large site is a few MiB


def read_baseline(path: Path) -> Any:
    """The JSON document in ``path``, read bounded (OSError, ValueError: _file_problem)."""
    if (problem := check_special(path)) is not None:
        raise ValueError(problem.removeprefix(f"{path}: "))
    return json.loads(read_bounded(path, MAX_BASELINE_BYTES).decode("utf-8"))


def _fail(command: str, err: Exception | str, status: int = 1) -> int:
    print(f"mamori {command}: {err}", file=sys.stderr)
    return status


# -- rules ------------------------------------------------------------------------------

def cmd_rules_check(args: argparse.Namespace) -> int:
    try:
        config = _config(args.config)
    except cfg.ConfigError as err:
        return _fail("rules", err)
    dirs = args.dirs or rule_dirs(config)
    if (special := next(filter(None, map(check_special, map(Path, dirs))), None)):
        return _fail("rules", special)
    try:
        rules = load_rules(dirs, set_names())
    except RuleError as err:
        for problem in err.problems:  # every one, each on its line, as check-config does
            print(f"mamori rules: {problem}", file=sys.stderr)
        if len(err.problems) > 1:
            print(f"mamori rules: {len(err.problems)} problems", file=sys.stderr)
        return 1
    precursors = sorted({r.precursor for r in rules}, key=lambda p: (p[0], int(p[1:])))
    chains = f", {len(rules.chains)} chains" if rules.chains else ""
    print(f"ok: {len(rules)} rules{chains} in {len(pack_files(dirs))} pack(s); "
          f"precursors {' '.join(precursors)}")
    return 0


# -- alerts and assets ------------------------------------------------------------------

def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _peer(ip: str | None, port: int | None) -> str:
    return "-" if ip is None else f"{ip}:{port}" if port is not None else ip


def render_alert(alert: Alert) -> str:
    where = f"{_peer(alert.src, alert.sport)} -> {_peer(alert.dst, alert.dport)}"
    if alert.unit is not None:
        where += f" unit {alert.unit}"
    if alert.link_src is not None or alert.link_dst is not None:
        where += f" link {alert.link_src}->{alert.link_dst}"
    return (f"{alert.id:>6} {_when(alert.last_ts)} {alert.severity.label:<8} "
            f"{alert.precursor:<4} x{alert.count:<7} {where}  {alert.title} [{alert.rule}]")


def _show_alert(store: Store, alert_id: int, as_json: bool) -> int:
    """``mamori alerts --show ID``: the alert, its evidence and its pcap (issue 20)."""
    found = store.alerts(after_id=alert_id - 1, limit=1) if 0 < alert_id < 2**63 else []
    if not found or found[0].id != alert_id:
        return _fail("alerts", f"{store.path}: no alert {alert_id}")
    alert = found[0]
    pcap = store.pcap(alert_id)
    if as_json:
        print(json.dumps({**alert.to_dict(), "pcap": pcap}, default=str))
        return 0
    print(render_alert(alert))
    for key, value in sorted(alert.evidence.items()):
        print(f"  {key:<10} {json.dumps(value, default=str)}")
    if pcap is None:
        print("  pcap       none (no frames held for this flow, below [packets] "
              "min_severity, or packets off)")
    else:
        gone = "" if Path(pcap).is_file() else "  (deleted by retention)"
        print(f"  pcap       {pcap}{gone}")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    if (conflict := csv_conflict(args)) is not None:
        return _fail("alerts", conflict, 2)
    try:
        since = None if args.since is None else time.time() - cfg.parse_duration(args.since)
        severity = None if args.severity is None else Severity.parse(args.severity)
        collector = _collector_mode(args)
        if collector and args.follow:
            raise UsageError("--follow reads a sensor's store; a collector's alerts are "
                             "followed with mamori subscribe")
    except (ValueError, UsageError) as err:
        return _fail("alerts", err, 2)
    if args.show is not None and (collector or args.follow or args.csv):
        return _fail("alerts", "--show reads one alert of a sensor's store; it does not go "
                     "with --follow, --csv or --collector", 2)
    if collector:
        return _collector_alerts(args, since, severity)
    try:
        store = _open_store(args, readonly=True)
    except (cfg.ConfigError, StoreError) as err:
        return _fail("alerts", err)
    if args.show is not None:
        with store:
            return _show_alert(store, args.show, args.json)
    if args.csv:
        return print_alerts_csv(store, since, severity)
    out = sys.stdout
    last_id = 0
    with store:
        while True:
            for alert in store.alerts(since=since, min_severity=severity, after_id=last_id):
                last_id = alert.id
                print(json.dumps(alert.to_dict()) if args.json else render_alert(alert),
                      file=out)
            out.flush()
            if not args.follow:
                return 0
            try:
                time.sleep(FOLLOW_INTERVAL)
            except KeyboardInterrupt:  # Ctrl-C ends --follow
                return 0


def _collector_rows(args: argparse.Namespace, command: str,
                    read: Callable[[Any, Any], list[Any]]) -> list[Any] | int:
    """``read(storage, selected sensors)`` on the collector store, or the exit status
    of the failure to open it (said on stderr)."""
    from mamori.sensor.collector import view

    try:
        storage = _open_collector(args)
    except (cfg.ConfigError, StoreError) as err:
        return _fail(command, err)
    try:
        return read(storage, view.origins(storage, args.sensor, args.site, args.sector))
    finally:
        storage.close()


def _collector_alerts(args: argparse.Namespace, since: float | None,
                      severity: Severity | None) -> int:
    from mamori.sensor.collector import view

    rows = _collector_rows(args, "alerts", lambda st, selected: view.alerts(
        st, selected, since, severity))
    if isinstance(rows, int):
        return rows
    for origin, alert, doc in rows:
        print(json.dumps(view.alert_json(origin, doc)) if args.json
              else f"{origin.label:<24} {render_alert(alert)}")
    return 0


def _collector_assets(args: argparse.Namespace) -> int:
    from mamori.sensor.collector import view

    if args.pairs:
        return _fail("assets", "--pairs needs a sensor's store: a collector keeps the "
                     "identity of devices, not their communication pairs", 2)
    rows = _collector_rows(args, "assets", view.assets)
    if isinstance(rows, int):
        return rows
    for origin, body, received in rows:
        print(json.dumps({**body, **origin.fields(), "received": received}) if args.json
              else view.asset_line(origin, body))
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    if (conflict := csv_conflict(args)) is not None:
        return _fail("assets", conflict, 2)
    if getattr(args, "vulnerable", False):  # the view an assets extra added
        handler: Callable[[argparse.Namespace], int] = args.vulnerable_view
        return handler(args)
    try:
        collector = _collector_mode(args)
    except UsageError as err:
        return _fail("assets", err, 2)
    if collector:
        return _collector_assets(args)
    try:
        store = _open_store(args, readonly=True)
    except (cfg.ConfigError, StoreError) as err:
        return _fail("assets", err)
    with store:
        rows = store.pairs() if args.pairs else store.assets()
    if args.csv:
        return print_assets_csv(rows)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    for row in rows:
        if args.pairs:
            unit = row["unit"] if row["proto"] == "modbus" else \
                f"{row['link_master']}->{row['link_outstation']}"
            period = "-" if row["period"] is None else f"{row['period']:.3f}s"
            print(f"{row['proto']:<6} {row['client']:>15} -> {row['server']}:{row['port']} "
                  f"[{unit}] fc {','.join(row['functions'])} period {period} "
                  f"n={row['count']}{'' if row['learned'] else ' (new)'}")
        else:
            ident = "; ".join(f"{k}={v}" for k, v in row["identity"].items())
            print(f"{row['ip']:<15} {row['mac'] or '-':<17} {'/'.join(row['roles']):<18} "
                  f"units {row['units'] or '-'} links {row['links'] or '-'} "
                  f"{'' if row['learned'] else '(new) '}{ident}")
    return 0


# -- baseline ---------------------------------------------------------------------------

def cmd_baseline(args: argparse.Namespace) -> int:
    action = args.baseline_command
    # The file first, before the store is opened (or created): say it while it is cheap.
    if action == "export" and (problem := check_output(args.file)) is not None:
        return _fail("baseline", problem, 2)
    inventory = Inventory()
    if action == "import":
        try:
            inventory.import_baseline(read_baseline(args.file))
        except (OSError, ValueError) as err:  # BaselineError, JSONDecodeError
            return _fail("baseline", _file_problem(args.file, err))
    try:
        store = _open_store(args, readonly=action in ("status", "export"))
    except (cfg.ConfigError, StoreError) as err:
        return _fail("baseline", err)
    with store:
        doc = store.load_baseline()
        if action == "import":
            try:
                store.save_baseline(inventory.export())
            except StoreError as err:  # StoreFull: nothing changed
                return _fail("baseline", err)
            print(f"imported {args.file}: {inventory.status()['pairs']} pairs; enforcing")
            return 0
        if doc is None:
            return _fail("baseline", f"{store.path}: no baseline yet (nothing learned)")
        if action == "status":
            print(f"state {doc['state']}; {len(doc['pairs'])} pairs, {len(doc['assets'])} "
                  f"assets, {len(doc['masters'])} masters")
            for line in master_lines(doc):
                print(line)
        elif action == "freeze":
            promoted = vouch(doc) if doc["state"] != "enforcing" else []
            doc["state"] = "enforcing"
            doc["frozen_at"] = time.time()
            try:
                store.save_baseline(doc)
            except StoreError as err:  # StoreFull: nothing changed
                return _fail("baseline", err)
            print("baseline frozen: enforcing" + (
                f"; vouched for {len(promoted)} polling candidate(s): {', '.join(promoted)}"
                if promoted else ""))
        elif action == "export":
            try:
                args.file.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n",
                                     encoding="utf-8")
            except OSError as err:
                return _fail("baseline", f"{args.file}: cannot write: {err.strerror or err}")
            print(f"exported to {args.file}")
    return 0


def master_lines(doc: dict[str, Any]) -> list[str]:
    """What learning made of each client: learned, still a candidate, or refused and why."""
    need_n, need_span = doc.get("min_cycles"), doc.get("min_span")
    states = {m["ip"]: m for m in doc.get("master_states", [])}
    lines = []
    for ip in doc["masters"]:
        m = states.get(ip)
        how = f"{m['cycles']} poll cycles over {m['span']:.0f}s" if m else "imported"
        lines.append(f"learned   {ip}  {how}")
    for m in states.values():
        excused = f"; {m['excused']} start-up writes/control excused" if m["excused"] else ""
        if m["state"] == "candidate":
            why = (f"{m['cycles']}/{need_n} poll cycles over {m['span']:.0f}/{need_span:.0f}s"
                   if m["poller"] else "no regular read cycle yet")
            lines.append(f"candidate {m['ip']}  not learned: {why}{excused}")
        elif m["state"] == "refused":
            lines.append(f"refused   {m['ip']}  raised {m['reason']}{excused}")
    return lines


# -- replay integration -----------------------------------------------------------------

def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("detection")
    group.add_argument("--no-detect", action="store_true", help="parse only; no rules")
    group.add_argument("--alerts", type=Path, metavar="OUT.jsonl",
                       help="write each (aggregated) alert as a JSON line ('-' for stdout)")
    group.add_argument("--rules", type=Path, action="append", metavar="DIR",
                       help="rule pack dir or file (repeatable; default: configured packs)")
    group.add_argument("--config", type=Path, metavar="FILE",
                       help="site configuration (sets, dedup window, learning period)")
    group.add_argument("--store", type=Path, metavar="PATH",
                       help="also keep alerts, assets and baseline in this SQLite store")
    group.add_argument("--baseline", type=Path, metavar="FILE",
                       help="enforce this exported baseline instead of learning")
    group.add_argument("--learn-for", type=_learn_for, metavar="DURATION",
                       help="learn for the first DURATION of packet time (e.g. 10m), "
                            "then enforce, in this one run")


def _learn_for(text: str) -> float:
    seconds = cfg.seconds_flag(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError("a learning duration must be longer than 0 s")
    return seconds


class ReplayDetection:
    """Detection wired into one ``mamori replay`` run: a Session on packet time.

    The store and the forwarder are opened before the first packet, so alerts are
    stored and journaled as the replay goes (mamori.sensor.detection.session); the
    forwarder delivers the journal at the end and waits for the collectors' acks.
    """

    def __init__(self, detector: Detector, alerts_out: Path | None, store: Store | None,
                 config: cfg.Config | None = None) -> None:
        self.detector = detector
        self.alerts_out = alerts_out
        self.store = store
        self.config = config
        self.errors: list[str] = []  # what failed besides the replay (forwarding); exit 1
        self.evidence: PacketEvidence | None = None  # pcaps behind alerts (with --store)
        self.outputs: AlertOutputs | None = None  # store, then forwarder
        self.forwarder: Any = None  # mamori.sensor.forwarding.forwarder.Forwarder
        self._journaled_from = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReplayDetection | None:
        """``None`` with ``--no-detect``; raises UsageError for bad rules/config/baseline."""
        if args.no_detect:
            if args.alerts is not None or args.store is not None:
                raise UsageError("--alerts and --store need detection (drop --no-detect)")
            return None
        try:
            # check_files: a missing server_key or secret key refuses the replay up front,
            # rather than replaying everything and then not forwarding.
            config = cfg.load(args.config, check_files=True)
            packs = [Path(p) for p in args.rules or rule_dirs(config)]
            if (problem := next(filter(None, map(check_special, packs)), None)):
                raise UsageError(problem)
            rules = load_configured_rules(config, args.rules or ())
        except (cfg.ConfigError, RuleError) as err:
            raise UsageError(str(err)) from None
        learn_for = args.learn_for
        if learn_for is not None and args.baseline is not None:
            raise UsageError("--learn-for learns a baseline; --baseline enforces one: "
                             "give one of them")
        inventory = build_inventory(config, learn_for)
        store = None
        if args.store is not None:
            try:
                store = open_store(args.store, config, readonly=False)
            except StoreError as err:
                raise UsageError(str(err)) from None
            if learn_for is not None and stored_enforcing(store) is not None:
                store.close()
                raise UsageError(f"{args.store}: already enforces a baseline; "
                                 "--learn-for needs a store without one")
            adopt_stored_baseline(store, inventory)
        if args.baseline is not None:
            try:
                inventory.import_baseline(read_baseline(args.baseline))
            except (OSError, ValueError) as err:
                raise UsageError(_file_problem(args.baseline, err)) from None
        evidence = PacketEvidence.from_config(config, store) if store is not None else None
        detector = build_detector(
            config, rules, inventory=inventory,
            on_alert=evidence.chain(journald_sink()) if evidence else journald_sink())
        made = cls(detector, args.alerts, store, config)
        made.evidence = evidence
        made.open_outputs()
        return made

    def open_outputs(self) -> None:
        """The store, then the configured collectors' forwarder; neither: no outputs.

        A forwarder that cannot start (what changed since the config was checked, or
        what only opening finds: a full disk) is said at the end, fails the exit
        status, and the alerts are still stored."""
        collectors = self.config is not None and self.config.get("forward", "collectors")
        if not collectors and self.store is None:
            return
        outputs = AlertOutputs(self.store, window=0.0)
        if collectors:
            assert self.config is not None
            try:
                self.forwarder = open_forwarder(self.config, outputs)
            except ForwardingError as err:
                self.errors.append(str(err))
                if self.store is None:
                    return
                if err.journal_full:  # the next run with room journals these
                    self.store.owe_journal(self.store.rev())
            else:
                self._journaled_from = self.forwarder.journal.seq
        outputs.sinks.extend(self.sinks())
        self.outputs = outputs

    def session(self, consumers: Sequence[Consumer] = ()) -> Session:
        """The replay's session: detection, ``consumers`` (the event log), the outputs."""
        return Session(self.detector, store=self.store, outputs=self.outputs,
                       consumers=consumers, evidence=self.evidence, packet_clock=True,
                       persist_every=None)

    def finish(self, session: Session, report: IO[str]) -> bool:
        """Close the session (last alerts stored and journaled), write ``--alerts``,
        deliver and summarise; False when alerts could not be stored (a full disk:
        the summary says how many)."""
        try:
            session.close()
            alerts = self.detector.alerts()
            if self.alerts_out is not None:
                self._write_alerts(alerts)
            if self.forwarder is not None:
                self._deliver(len(alerts), report)
        finally:
            self.release()
        state = self.outputs.status() if self.outputs is not None else {}
        print(render_summary(alerts, self.detector), file=report)
        if self.evidence is not None:
            ev = self.evidence.stats
            print(f"pcaps      {ev.written} written to {self.evidence.directory}"
                  + (f", {ev.refused} refused (see the log)" if ev.refused else ""),
                  file=report)
        if state and (state["unstored"] or state["journal_behind"]):
            print(f"disk full  {self.store.path if self.store else '-'}: {state['unstored']} "
                  f"alert writes refused, {state['stored_late']} stored late, "
                  f"{state['dropped']} never stored; {state['journal_behind']} stored but "
                  f"not yet journaled (the next run journals them)", file=report)
        lost = int(state["dropped"]) if state else 0
        return lost == 0

    def release(self) -> None:
        """Close the forwarder (what is journaled stays for the next run) and the store;
        also after a replay that failed half way (what was flushed is kept)."""
        if self.forwarder is not None:
            self.forwarder.close(flush_timeout=0)
            self.forwarder = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def _write_alerts(self, alerts: list[Alert]) -> None:
        assert self.alerts_out is not None
        if str(self.alerts_out) == "-":
            write_alerts_jsonl(alerts, sys.stdout)
            return
        try:
            with self.alerts_out.open("w", encoding="utf-8") as stream:
                write_alerts_jsonl(alerts, stream)
        except OSError as err:  # checked before the replay; a full disk, ...
            raise OutputError(f"{self.alerts_out}: cannot write: "
                              f"{err.strerror or err}") from None

    def sinks(self) -> list[SensorSiem]:
        """The configured EVE and syslog outputs ([output]); a file that cannot be opened
        is said and the replay goes on without it."""
        if self.config is None:
            return []
        try:
            siem = SensorSiem.from_config(self.config)
        except OSError as err:  # checked at load; what changed since
            self.errors.append(f"[output] eve: {describe(err)}")
            return []
        return [siem] if siem is not None else []

    def _deliver(self, alerts: int, report: IO[str]) -> None:
        """Send what the replay journaled to the collectors, and wait for their acks."""
        assert self.config is not None
        forwarder = self.forwarder
        journaled = forwarder.journal.seq - self._journaled_from
        forwarder.start()
        deadline = time.monotonic() + self.config.get("forward", "ack_timeout") * 2
        while forwarder.unacked() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = forwarder.unacked()
        forwarder.close()
        self.forwarder = None
        print(f"forwarded  {journaled} messages ({alerts} new alerts) to "
              f"{len(self.config.get('forward', 'collectors'))} collector(s); {left} awaiting "
              f"acknowledgement (kept in the journal)", file=report)


def write_alerts_jsonl(alerts: list[Alert], stream: IO[str]) -> None:
    for alert in alerts:
        stream.write(json.dumps(alert.to_dict(), separators=(",", ":"), default=str) + "\n")


def render_summary(alerts: list[Alert], detector: Detector) -> str:
    by_severity = Counter(a.severity for a in alerts)
    head = ", ".join(f"{s.label} {by_severity[s]}" for s in sorted(by_severity, reverse=True))
    lines = [f"baseline   {detector.inventory.state.value}",
             f"alerts     {len(alerts)}" + (f" ({head})" if head else "")]
    for alert in sorted(alerts, key=lambda a: (-a.severity, a.first_ts))[:40]:
        lines.append(f"  {alert.severity.label:<8} {alert.precursor:<4} x{alert.count:<7} "
                     f"{_peer(alert.src, alert.sport)} -> {_peer(alert.dst, alert.dport)} "
                     f"{alert.rule}")
    if len(alerts) > 40:
        lines.append(f"  ... {len(alerts) - 40} more (use --alerts)")
    return "\n".join(lines)
