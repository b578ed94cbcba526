"""``mamori rules keygen|bundle|install|status|rollback``: signed rule bundles by hand.

The centre generates a signing key and builds bundles; a sensor installs one from a
file (a USB stick on an air-gapped site). A refused bundle is one line on stderr,
exit 1, a count in the bundle state, and an S7 health alert in the local store and
to journald, because a sensor that silently keeps old rules is a blind spot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mamori.sensor import config as cfg

if TYPE_CHECKING:  # imported when a command runs: PyNaCl is not needed for the others
    from mamori.sensor.detection.bundle import BundleRefused, BundleStore


def add_actions(rules_sub: Any) -> None:
    """Adds the bundle actions to ``mamori rules``."""
    keygen = rules_sub.add_parser("keygen", help="make an Ed25519 key to sign bundles with")
    keygen.add_argument("name", help="key name: NAME.sign (secret) and NAME.pub are written")
    keygen.add_argument("--dir", type=Path, default=Path("."), metavar="DIR")
    keygen.set_defaults(func=cmd_keygen)

    bundle = rules_sub.add_parser("bundle", help="build and sign a rule bundle")
    bundle.add_argument("packs", nargs="*", type=Path, metavar="PATH",
                        help="pack files or directories (default: the shipped packs)")
    bundle.add_argument("--key", type=Path, required=True, metavar="NAME.sign")
    bundle.add_argument("--version", type=int, required=True, metavar="N",
                        help="bundle version; sensors accept only a newer one")
    bundle.add_argument("--comment", default="")
    bundle.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.mrb")
    bundle.set_defaults(func=cmd_bundle)

    install = rules_sub.add_parser("install", help="verify and activate a signed bundle")
    install.add_argument("bundle", type=Path, metavar="FILE.mrb")
    install.add_argument("--config", type=Path, metavar="FILE")
    install.set_defaults(func=cmd_install)

    status = rules_sub.add_parser("status", help="the active bundle and refusal counts")
    status.add_argument("--config", type=Path, metavar="FILE")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    rollback = rules_sub.add_parser("rollback", help="make the previous bundle active again")
    rollback.add_argument("--config", type=Path, metavar="FILE")
    rollback.set_defaults(func=cmd_rollback)


def _fail(err: object) -> int:
    print(f"mamori rules: {err}", file=sys.stderr)
    return 1


def _site(args: argparse.Namespace) -> tuple[cfg.Config, BundleStore]:
    """The sensor's configuration and its installed bundles; raises ``ConfigError``."""
    from mamori.sensor.cliargs import config_file as load
    from mamori.sensor.detection.settings import bundle_store

    config = load(args.config)
    return config, bundle_store(config)


def cmd_keygen(args: argparse.Namespace) -> int:
    from mamori.sensor.detection.bundle import generate_key

    try:
        secret, public = generate_key(args.name, args.dir)
    except (OSError, ValueError) as err:
        return _fail(err)
    print(f"signing key: {secret} (mode 0600; keep it off the sensors)")
    print(f"public key: {public} (copy into each sensor's trusted-rule-keys directory)")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from mamori.sensor.detection.bundle import build, read_signing_key
    from mamori.sensor.detection.loader import SHIPPED_RULES, RuleError, load_rules, pack_files
    from mamori.sensor.detection.settings import set_names

    packs = pack_files(args.packs or [SHIPPED_RULES])
    try:
        load_rules(packs, set_names())  # never sign what a sensor would refuse
    except RuleError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return _fail(f"{len(err.problems)} problem(s); bundle not built")
    try:
        key = read_signing_key(args.key)
        raw = build(packs, key, args.version, args.comment)
        args.output.write_bytes(raw)
    except (OSError, ValueError) as err:
        return _fail(err)
    print(f"bundle {args.version}: {len(packs)} pack(s), {len(raw)} bytes -> {args.output}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from mamori.sensor.detection.bundle import BundleRefused
    from mamori.sensor.detection.rulepush import install_signed

    try:
        config, store = _site(args)
    except cfg.ConfigError as err:
        return _fail(err)
    try:
        raw = args.bundle.read_bytes()
        installed = install_signed(store, raw, config.get("detection", "trusted_rule_keys"))
    except BundleRefused as refused:
        counts = store.record_refusal(refused, str(args.bundle))["refused"]
        _health_alert(config, refused, str(args.bundle), counts[refused.reason.name])
        return _fail(f"{args.bundle}: refused ({refused.reason.name}): {refused}")
    except ValueError as err:  # a trusted key file that is not one
        return _fail(err)
    except OSError as err:
        where = err.filename or store.root
        return _fail(f"{where}: cannot install: {err.strerror or err}")
    print(f"bundle {installed.version} active (key {installed.key_id}); "
          "send SIGHUP to a running sensor to load it")
    return 0


def _health_alert(config: cfg.Config, refused: BundleRefused, source: str,
                  count: int) -> None:
    """S7: the refusal where operators and the collector see alerts (best effort)."""
    from mamori.sensor.alerting.journald import journald_sink
    from mamori.sensor.alerting.settings import store_path
    from mamori.sensor.alerting.store import Store, StoreError
    from mamori.sensor.detection.bundle import refusal_alert

    alert = refusal_alert(refused, source, count)
    sink = journald_sink()
    if sink is not None:
        sink(alert)
    try:
        store = Store(store_path(config), max_age=config.get("store", "max_age"),
                      max_bytes=config.get("store", "max_bytes"))
    except (StoreError, OSError) as err:
        print(f"mamori rules: alert not stored: {err}", file=sys.stderr)
        return
    try:
        store.save_alerts([alert])
    finally:
        store.close()


def cmd_status(args: argparse.Namespace) -> int:
    from mamori.sensor.detection.settings import rule_dirs

    try:
        config, store = _site(args)
    except cfg.ConfigError as err:
        return _fail(err)
    active, previous, state = store.active(), store.previous(), store.state()
    doc: dict[str, Any] = {
        "loading": [str(p) for p in rule_dirs(config)],
        "active": None if active is None else {
            "version": active.version, "key": active.key_id, "comment": active.comment,
            "created": active.created},
        "previous": None if previous is None else previous.version,
        "refused": state.get("refused", {}), "last_refusal": state.get("last_refusal"),
        "pushed": store.pushed(),  # what became of bundles collectors pushed, oldest first
    }
    if args.json:
        print(json.dumps(doc, sort_keys=True))
        return 0
    if active is None:
        print("active bundle: none")
    else:
        created = dt.datetime.fromtimestamp(active.created, dt.UTC).strftime("%Y-%m-%d %H:%M")
        print(f"active bundle: {active.version} (key {active.key_id}, built {created} UTC)"
              + (f": {active.comment}" if active.comment else ""))
    print(f"previous: {previous.version if previous else 'none'}")
    print(f"loading: {', '.join(doc['loading'])}")
    refusals = ", ".join(f"{k} {v}" for k, v in sorted(doc["refused"].items())) or "none"
    print(f"refused: {refusals}")
    for push in doc["pushed"][-3:]:
        detail = f" {push['detail']}" if push.get("detail") else ""
        print(f"pushed: {push['sha256'][:16]} {push['outcome']}{detail}"
              + (f" (from {push['source']})" if push.get("source") else ""))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    try:
        back = _site(args)[1].roll_back()
    except (cfg.ConfigError, OSError) as err:
        return _fail(err)
    print(f"bundle {back.version} active again")
    return 0
