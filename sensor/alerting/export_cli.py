"""``mamori alerts --csv``, ``mamori assets --csv`` and ``mamori attack-layer``.

The CSV flags are added to the ``alerts`` and ``assets`` commands of
mamori.sensor.detection.cli, which hand over to this module when they are given; the
layer command is registered here. All read the store read-only, page by page, so
a store of a million alerts exports in bounded memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor import config as cfg
from mamori.sensor.alerting.export import (
    ALERT_COLUMNS,
    ASSET_COLUMNS,
    alert_row,
    asset_row,
    attack_layer,
    write_csv,
)
from mamori.sensor.alerting.store import Store, StoreError
from mamori.sensor.paths import OutputError, check_output, open_output
from mamori.sensor.timefmt import parse_time

PAGE = 5000  # alerts read from the store at once


def add_csv_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--csv", action="store_true",
                        help=f"{what} as CSV (RFC 4180, a header row) on stdout")


def register_commands(commands: Any) -> None:
    layer = commands.add_parser(
        "attack-layer", help="ATT&CK for ICS Navigator layer of the techniques seen",
        description="Write an ATT&CK Navigator layer (format 4.5, domain ics-attack) "
                    "scoring each technique by how often the store's alerts saw it in the "
                    "period.")
    layer.add_argument("--since", metavar="TIME", default="",
                       help="period start: a duration ago (7d) or an ISO date/time (UTC)")
    layer.add_argument("--until", metavar="TIME", default="",
                       help="period end, the same forms (default: now)")
    layer.add_argument("--name", default="Mamori: techniques seen", help="the layer's name")
    layer.add_argument("--output", "-o", type=Path, metavar="FILE",
                       help="write the layer here (default: stdout)")
    layer.add_argument("--store", type=Path, metavar="PATH",
                       help="store file (default from the config)")
    layer.add_argument("--config", type=Path, metavar="FILE",
                       help="site configuration (default /etc/mamori/sensor.toml if present)")
    layer.set_defaults(func=cmd_attack_layer)


def iter_alerts(store: Store, since: float | None = None,
                min_severity: Severity | None = None) -> Iterator[Alert]:
    """Every matching alert, oldest first, ``PAGE`` rows at a time."""
    after = 0
    while True:
        page = store.alerts(since=since, min_severity=min_severity, after_id=after,
                            limit=PAGE)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].id


def _fail(command: str, err: object, status: int = 1) -> int:
    print(f"mamori {command}: {err}", file=sys.stderr)
    return status


def _store(args: argparse.Namespace) -> Store:
    from mamori.sensor.detection.cli import _open_store
    return _open_store(args, readonly=True)


def csv_conflict(args: argparse.Namespace) -> str | None:
    """Why ``--csv`` cannot be used with the other flags given, or None."""
    if not args.csv:
        return None
    if hasattr(args, "follow"):
        return "--csv does not go with --follow or --json" if args.follow or args.json \
            else None
    if args.json or args.pairs or getattr(args, "vulnerable", False):
        return "--csv does not go with --json, --pairs or --vulnerable"
    return None


def print_alerts_csv(store: Store, since: float | None, severity: Severity | None) -> int:
    """``mamori alerts --csv``: the store's alerts (filtered) as CSV on stdout."""
    with store:
        write_csv(sys.stdout, ALERT_COLUMNS,
                  (alert_row(a) for a in iter_alerts(store, since, severity)))
    return 0


def print_assets_csv(assets: list[dict[str, Any]]) -> int:
    """``mamori assets --csv``: the inventory as CSV on stdout."""
    write_csv(sys.stdout, ASSET_COLUMNS, (asset_row(a) for a in assets))
    return 0


def cmd_attack_layer(args: argparse.Namespace) -> int:
    now = time.time()
    try:
        since = parse_time(args.since, now)
        until = parse_time(args.until, now)
    except ValueError as err:
        return _fail("attack-layer", err, 2)
    if since is not None and until is not None and until < since:
        return _fail("attack-layer", "--until is before --since", 2)
    if args.output is not None and (problem := check_output(args.output)) is not None:
        return _fail("attack-layer", problem, 2)
    try:
        store = _store(args)
    except (cfg.ConfigError, StoreError) as err:
        return _fail("attack-layer", err)
    with store:
        layer = attack_layer(iter_alerts(store, since), since, until, args.name[:200])
    text = json.dumps(layer, indent=1, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        with open_output(args.output) as out:
            out.write(text)
    except (OSError, OutputError) as err:
        return _fail("attack-layer", f"{args.output}: cannot write: "
                                     f"{getattr(err, 'strerror', None) or err}")
    print(f"{args.output}: {len(layer['techniques'])} technique(s)", file=sys.stderr)
    return 0
