"""``mamori run``, ``mamori check-config`` and ``mamori check-iface``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamori.sensor import config as cfg
from mamori.sensor.capture.addresses import interface_addresses
from mamori.sensor.capture.live import CaptureError, interface_exists
from mamori.sensor.daemon import run as daemon
from mamori.sensor.paths import check_output

log = logging.getLogger("mamori")

IFF_NOARP = 0x80


def register_commands(commands: Any) -> None:
    run = commands.add_parser(
        "run", help="capture live on the configured interfaces (what the service runs)",
        description="Passive live capture: parse, detect, store and forward.")
    run.add_argument("--config", type=Path, default=None, metavar="FILE",
                     help="site configuration (default /etc/mamori/sensor.toml if present)")
    run.add_argument("--events", type=Path, default=None, metavar="OUT.jsonl",
                     help="also write every event as JSON lines (for analysts)")
    run.add_argument("--web", action="store_true",
                     help="also serve the operator web page ([web] enabled; docs/web.md)")
    # The sensor's flags only: the collector's ([collect]) belong to `mamori collect`.
    cfg.add_flags(run, {o.section for o in cfg.SCHEMA if o.section != "collect"})
    run.set_defaults(func=cmd_run)

    check = commands.add_parser(
        "check-config", help="validate a configuration file and exit",
        description="Validate the configuration; print the effective values with --dump.")
    check.add_argument("--config", type=Path, default=None, metavar="FILE")
    check.add_argument("--dump", action="store_true",
                       help="print the effective configuration, each key with its source")
    cfg.add_flags(check)
    check.set_defaults(func=cmd_check_config)

    iface = commands.add_parser(
        "check-iface", help="warn when a capture interface could transmit",
        description="A capture interface should have no IP address, no ARP and no IPv6 "
                    "autoconfiguration. See docs/capture-interface.md.")
    iface.add_argument("interface")
    iface.add_argument("--json", action="store_true")
    iface.set_defaults(func=cmd_check_iface)


def _load(args: argparse.Namespace, *, every: bool = False) -> cfg.Config | None:
    """The configuration with its key files checked, or None after saying why.

    ``every``: print every problem in the file (``check-config``), not just the first.
    """
    path = str(args.config) if args.config is not None else daemon.config_path_default()
    try:
        return cfg.load(path, cfg.flag_overrides(args), check_files=True)
    except cfg.ConfigError as err:
        for problem in err.problems if every else [err]:
            print(f"mamori: {problem}", file=sys.stderr)
        if every and len(err.problems) > 1:
            print(f"mamori: {len(err.problems)} problems", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    conf = _load(args, every=True)
    if conf is None:
        return 2
    if args.dump:
        sys.stdout.write(cfg.dump(conf))
    else:
        print(f"configuration OK ({args.config or 'defaults'})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from mamori.sensor.daemon.notify import setup_logging

    setup_logging()
    # A SIGHUP before the loop's handler is in place (logrotate, `systemctl reload`
    # while we start or wait for disk space) must not kill us: the configuration is
    # read fresh at start anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    conf = _load(args)
    if conf is None:
        return 2
    if args.events is not None and (problem := check_output(args.events)) is not None:
        log.error("--events: %s", problem)
        return 2
    path = str(args.config) if args.config is not None else daemon.config_path_default()
    web = None
    if args.web or conf.get("web", "enabled"):
        from mamori.sensor.web.server import daemon_starter  # Starlette only when serving

        web = daemon_starter(conf)
    sensor = _build_waiting_for_space(conf, path, args.events, web)
    if not isinstance(sensor, daemon.Sensor):
        return sensor
    try:
        sensor.open_captures()
    except CaptureError as err:
        log.error("%s", err)
        sensor.shutdown()
        return 1
    sensor.start_workers()  # as root still: see WorkerPool.start
    sensor.drop_privileges()
    sensor.install_signals()
    return sensor.run()


DISK_RETRY = 5.0  # seconds between start attempts while the state directory is full


def _build_waiting_for_space(conf: cfg.Config, path: str | None, events: Path | None,
                             web: Any) -> daemon.Sensor | int:
    """``build_sensor``; while it fails only for lack of disk space, wait and retry.

    A full disk is a state, not a crash (issue 12): exiting would run into systemd's
    start limit and leave the sensor down after space returns. Meanwhile systemd is
    told READY with a status that says why, and the watchdog is fed; SIGTERM or
    SIGINT stop the wait. Returns the sensor, or the exit status.
    """
    from mamori.sensor.daemon.notify import Notifier

    notifier = Notifier()
    stop: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: stop.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        waiting = False
        while True:
            try:
                return daemon.build_sensor(conf, path, events=events, web=web)
            except daemon.StartupError as err:
                if not err.disk_full:
                    log.error("%s", err)
                    return err.status
                if not waiting:
                    log.error("%s: waiting for disk space (retrying every %.0f s)", err,
                              DISK_RETRY)
                    notifier.ready(f"waiting for disk space: {err}")
                    waiting = True
            deadline = time.monotonic() + DISK_RETRY
            while time.monotonic() < deadline:
                if stop:
                    log.info("signal %d: stopping (still waiting for disk space)", stop[0])
                    notifier.stopping()
                    return 0
                notifier.tick()
                time.sleep(0.1)
            if waiting:
                log.info("retrying start-up")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True, slots=True)
class IfaceFinding:
    ok: bool
    check: str
    detail: str


def inspect_interface(name: str) -> list[IfaceFinding]:
    """What could make this interface transmit, or learn addresses it should not have."""
    findings: list[IfaceFinding] = []
    sysfs = Path("/sys/class/net") / name
    flags = int((sysfs / "flags").read_text().strip(), 16)
    findings.append(IfaceFinding(bool(flags & IFF_NOARP), "arp",
                                 "ARP disabled" if flags & IFF_NOARP else
                                 f"ARP enabled: `ip link set {name} arp off`"))
    addresses = interface_addresses(name)
    findings.append(IfaceFinding(not addresses, "addresses",
                                 "no IP address" if not addresses else
                                 f"has address(es) {', '.join(addresses)}: "
                                 f"`ip addr flush dev {name}`"))
    v6 = Path("/proc/sys/net/ipv6/conf") / name
    if v6.exists():
        disabled = (v6 / "disable_ipv6").read_text().strip() == "1"
        findings.append(IfaceFinding(disabled, "ipv6",
                                     "IPv6 disabled" if disabled else
                                     f"IPv6 enabled (link-local address, router "
                                     f"solicitations): `sysctl -w net.ipv6.conf.{name}."
                                     f"disable_ipv6=1`"))
    return findings


def cmd_check_iface(args: argparse.Namespace) -> int:
    if not interface_exists(args.interface):
        print(f"mamori check-iface: no interface {args.interface}", file=sys.stderr)
        return 2
    findings = inspect_interface(args.interface)
    if args.json:
        print(json.dumps([{"ok": f.ok, "check": f.check, "detail": f.detail}
                          for f in findings]))
    else:
        for f in findings:
            print(f"{'ok  ' if f.ok else 'WARN'} {f.check:<10} {f.detail}")
    return 0 if all(f.ok for f in findings) else 1
