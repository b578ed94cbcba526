"""``mamori attack-layer``: the ATT&CK for ICS Navigator layer of the store's alerts.

``alerts --csv`` and ``assets --csv`` are detection's commands; their flag is
``mamori.sensor.cliargs``'s and their writers ``mamori.sensor.alerting.export``'s. All
read the store read-only, page by page, so a store of a million alerts exports in
bounded memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mamori.sensor import config as cfg
from mamori.sensor.alerting.export import (
    attack_layer,
    iter_alerts,
)
from mamori.sensor.alerting.store import Store, StoreError
from mamori.sensor.cliargs import open_store_of, store_args
from mamori.sensor.paths import OutputError, check_output, open_output
from mamori.sensor.timefmt import parse_time


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
    store_args(layer)
    layer.set_defaults(func=cmd_attack_layer)


def _store(args: argparse.Namespace) -> Store:
    return open_store_of(args, readonly=True)


def _fail(command: str, err: object, status: int = 1) -> int:
    print(f"mamori {command}: {err}", file=sys.stderr)
    return status


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
