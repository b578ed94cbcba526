"""``mamori advisories import|list|match`` and ``mamori assets --vulnerable``.

The advisory index is its own SQLite file (default ``advisories.db`` beside the
alert store, ``--index`` to choose), so an air-gapped site imports from a USB
stick with ``mamori advisories import /media/usb/csaf`` and nothing else changes.
Exit status: 0 success; 1 some document was rejected or a file could not be
used; 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from mamori.sensor import config as cfg
from mamori.sensor.advisories.csaf import CsafError, NotAnAdvisory, document_files, read_document
from mamori.sensor.advisories.index import AdvisoryIndex, AdvisoryIndexError
from mamori.sensor.advisories.live import RULE, alerts_for, claim_alerts, index_beside
from mamori.sensor.advisories.matcher import Confidence, Match, Matcher, frame_of
from mamori.sensor.advisories.normalise import TablesError, default_tables
from mamori.sensor.timefmt import iso_time

__all__ = ["RULE", "add_collect_command", "alerts_for", "cmd_assets_vulnerable",
           "register_commands"]


def register_commands(commands: Any) -> None:
    adv = commands.add_parser("advisories", help="CSAF advisories: import, list, match",
                              description="Import CSAF 2.0 advisories into the local index "
                                          "and match them against the asset inventory.")
    sub = adv.add_subparsers(dest="advisories_command", metavar="ACTION")
    sub.required = True
    imp = sub.add_parser("import", help="import CSAF documents (files or directories)")
    imp.add_argument("paths", nargs="+", type=Path, metavar="DIR|FILE")
    imp.add_argument("--no-alert", action="store_true",
                     help="do not re-evaluate the stored assets after the import")
    _common(imp)
    imp.set_defaults(func=cmd_import)
    lst = sub.add_parser("list", help="list imported advisories")
    lst.add_argument("--json", action="store_true")
    _common(lst)
    lst.set_defaults(func=cmd_list)
    match = sub.add_parser("match", help="match the stored assets against the index")
    match.add_argument("--all", action="store_true", help="also vendor-only matches")
    match.add_argument("--json", action="store_true")
    match.add_argument("--alert", action="store_true",
                       help="raise one alert per new (asset, advisory) that is affected")
    _common(match)
    match.set_defaults(func=cmd_match)


def add_assets_arguments(assets: argparse.ArgumentParser) -> None:
    """The ``--vulnerable`` view of ``mamori assets``: the assembly (``mamori.sensor.cli``)
    hands it to detection's command, which calls ``args.vulnerable_view`` when it is given."""
    assets.add_argument("--vulnerable", action="store_true",
                        help="only devices matching an imported advisory")
    assets.set_defaults(vulnerable_view=cmd_assets_vulnerable)
    assets.add_argument("--index", type=Path, metavar="PATH",
                        help="advisory index (default advisories.db beside the store)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", type=Path, metavar="PATH",
                        help="advisory index (default advisories.db beside the store)")
    parser.add_argument("--store", type=Path, metavar="PATH",
                        help="alert store holding the assets (default from the config)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="site configuration (default /etc/mamori/sensor.toml if present)")


def _config(args: argparse.Namespace) -> cfg.Config:
    if args.config is not None:
        return cfg.load(args.config)
    from mamori.sensor.daemon.run import config_path_default
    return cfg.load(config_path_default())


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    from mamori.sensor.alerting.settings import store_path

    config = _config(args)
    store = args.store if args.store is not None else store_path(config)
    index = args.index if args.index is not None else index_beside(store)
    return index, store


def _fail(command: str, err: object, status: int = 1) -> int:
    print(f"mamori {command}: {err}", file=sys.stderr)
    return status


def cmd_import(args: argparse.Namespace) -> int:
    try:
        index_path, store_path = _paths(args)
    except cfg.ConfigError as err:
        return _fail("advisories", err, 2)
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        return _fail("advisories", f"{missing[0]}: no such file or directory", 2)
    try:
        counts = import_documents(index_path, args.paths)
    except AdvisoryIndexError as err:
        return _fail("advisories", err)
    if not args.no_alert and store_path.exists():
        status = _evaluate(index_path, store_path, args, alert=True, quiet=True)
        if status:
            return status
    return 1 if counts["rejected"] else 0


def import_documents(index_path: Path, paths: Sequence[Path], out: IO[str] | None = None
                     ) -> Counter[str]:
    """Import every document under ``paths``; prints each rejection and a summary line."""
    counts: Counter[str] = Counter()
    started = time.perf_counter()
    with AdvisoryIndex(index_path) as index:
        for path in document_files(paths):
            try:
                counts[index.put(read_document(path))] += 1
            except NotAnAdvisory as err:
                counts["skipped"] += 1
                print(f"skipped {err}", file=sys.stderr)
            except CsafError as err:
                counts["rejected"] += 1
                print(f"rejected {err}", file=sys.stderr)
        total = index.count()
    took = time.perf_counter() - started
    print(f"imported {counts['added'] + counts['replaced']} document(s) in {took:.2f} s: "
          f"{counts['added']} new, {counts['replaced']} newer revision, {counts['kept']} "
          f"unchanged or older, {counts['rejected']} rejected, {counts['skipped']} not "
          f"advisories; {total} in {index_path}",
          file=out or sys.stdout)
    return counts


def cmd_list(args: argparse.Namespace) -> int:
    try:
        index_path, _ = _paths(args)
        with AdvisoryIndex(index_path, readonly=True) as index:
            rows = index.summaries()
    except (cfg.ConfigError, AdvisoryIndexError) as err:
        return _fail("advisories", err)
    for s in rows:
        if args.json:
            print(json.dumps({"id": s.id, "title": s.title, "version": s.version,
                              "release_date": s.release_date, "cves": list(s.cves),
                              "cvss": s.cvss, "products": s.products}))
        else:
            cvss = "-" if s.cvss is None else f"{s.cvss:.1f}"
            print(f"{s.id:<18} rev {s.version:<4} {s.release_date[:10]} cvss {cvss:<4} "
                  f"{s.products:>3} products  {s.title}  {' '.join(s.cves[:6])}"
                  f"{' ...' if len(s.cves) > 6 else ''}")
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    try:
        index_path, store_path = _paths(args)
    except cfg.ConfigError as err:
        return _fail("advisories", err, 2)
    return _evaluate(index_path, store_path, args, alert=args.alert, quiet=False)


def load_matches(index_path: Path, assets: Iterable[dict[str, Any]]) -> list[Match]:
    """Every match of these inventory assets, strongest first per asset."""
    with AdvisoryIndex(index_path, readonly=True) as index:
        matcher = Matcher(index.affected_products(), default_tables())
    return [m for asset in assets for m in matcher.match_asset(asset)]


def _assets(store_path: Path) -> list[dict[str, Any]]:
    from mamori.sensor.alerting.store import Store

    with Store(store_path, readonly=True) as store:
        return store.assets()


def _evaluate(index_path: Path, store_path: Path, args: argparse.Namespace, *, alert: bool,
              quiet: bool) -> int:
    from mamori.sensor.alerting.store import StoreError

    try:
        matches = load_matches(index_path, _assets(store_path))
    except (AdvisoryIndexError, StoreError, TablesError) as err:
        return _fail("advisories", err)
    if not quiet:
        shown = [m for m in matches if args.all or m.confidence is not Confidence.VENDOR]
        for m in shown:
            print(json.dumps(m.to_dict(), default=str) if args.json else render_match(m))
        counts = Counter(m.confidence.value for m in matches)
        print(f"{len(shown)} match(es) shown; by confidence: exact {counts['exact']}, "
              f"product {counts['product']}, vendor {counts['vendor']}", file=sys.stderr)
    if alert:
        raised = raise_alerts(index_path, store_path, matches, args)
        if raised or not quiet:
            print(f"{raised} new advisory alert(s)", file=sys.stderr)
    return 0


def raise_alerts(index_path: Path, store_path: Path, matches: Sequence[Match],
                 args: argparse.Namespace) -> int:
    """Store the alerts (and forward them when collectors are configured)."""
    from mamori.sensor.alerting.dispatch import AlertOutputs
    from mamori.sensor.alerting.store import Store

    now = time.time()
    with AdvisoryIndex(index_path) as index:
        new = claim_alerts(index, matches, now)
    if not new:
        return 0
    config = _config(args)
    with Store(store_path, max_age=config.get("store", "max_age"),
               max_bytes=config.get("store", "max_bytes")) as store:
        forwarder = None
        if config.get("forward", "collectors"):
            from mamori.sensor.forwarding.forwarder import Forwarder
            from mamori.sensor.forwarding.keys import KeyFileError
            try:
                forwarder = Forwarder(config)
            except (KeyFileError, OSError) as err:
                print(f"forwarding disabled: {err}", file=sys.stderr)
        outputs = AlertOutputs(store, forwarder, window=0.0)
        outputs.publish(new)
        if forwarder is not None:
            forwarder.start()
            deadline = time.monotonic() + config.get("forward", "ack_timeout") * 2
            while forwarder.unacked() and time.monotonic() < deadline:
                time.sleep(0.05)
            forwarder.close()
    return len(new)


def render_match(m: Match, remediation: Sequence[tuple[str, str]] = ()) -> str:
    cvss = "-" if m.cvss is None else f"{m.cvss:.1f}"
    ident = "; ".join(f"{k}={v}" for k, v in m.evidence.get("identity", {}).items())
    line = (f"{m.ip:<15} {m.confidence.value:<8} {m.advisory_id:<18} cvss {cvss:<4} "
            f"{' '.join(m.cves[:4])}{' ...' if len(m.cves) > 4 else ''}  "
            f"[{', '.join(m.products[:2])} {', '.join(m.ranges[:2])}]  {ident}")
    frames = m.evidence.get("frames") or {}
    for key in m.evidence.get("identity", {}):
        line += f"\n    seen: {key} in {describe_sighting(frames.get(key) or {}, key)}"
    for category, details in remediation[:3]:
        line += f"\n    {category}: {details[:160]}"
    return line


def describe_sighting(seen: Mapping[str, Any], key: str) -> str:
    """``Modbus FC 43/14 ... response, unit 1, ...; frame 12 at 2026-...; last frame 40 at ...``"""
    text = str(seen.get("message") or frame_of(key))
    for which in ("first", "last"):
        frame, ts = seen.get(f"{which}_frame"), seen.get(f"{which}_seen")
        if which == "last" and (frame, ts) == (seen.get("first_frame"), seen.get("first_seen")):
            break  # seen once
        lead = "; last " if which == "last" else "; "
        if frame is not None:
            text += f"{lead}frame {frame}"
        elif isinstance(ts, int | float):
            text += f"{lead}seen"  # no frames (Zeek logs)
        else:
            continue
        if isinstance(ts, int | float):
            text += f" at {iso_time(ts)}"
    return text


def cmd_assets_vulnerable(args: argparse.Namespace) -> int:
    """``mamori assets --vulnerable``: affected and possibly affected devices only."""
    from mamori.sensor.alerting.store import StoreError

    try:
        index_path, store_path = _paths(args)
        matches = [m for m in load_matches(index_path, _assets(store_path))
                   if m.confidence is not Confidence.VENDOR]
        with AdvisoryIndex(index_path, readonly=True) as index:
            for m in matches:
                fixes = index.remediations(m.advisory_id, list(m.product_ids))
                if args.json:
                    print(json.dumps(m.to_dict() | {"remediations": [
                        {"category": c, "details": d} for c, d in fixes]}, default=str))
                else:
                    print(render_match(m, fixes))
    except (cfg.ConfigError, AdvisoryIndexError, StoreError, TablesError) as err:
        return _fail("assets", err)
    return 0


# -- at the collector ---------------------------------------------------------------------

def add_collect_command(collect_cmds: Any, config_flags: Callable[[Any, list[str]], None]
                        ) -> None:
    """``mamori collect advisories`` (the assembly hands it to forwarding's ``collect``)."""
    adv = collect_cmds.add_parser(
        "advisories", help="per advisory: the sites that run affected devices",
        description="Match the identities every sensor reported against the collector's "
                    "advisory index (re-evaluated on every call; --import adds documents "
                    "first).")
    config_flags(adv, ["sensor", "collect"])
    adv.add_argument("--index", type=Path, metavar="PATH",
                     help="advisory index (default advisories.db beside the collector db)")
    adv.add_argument("--import", dest="import_paths", type=Path, action="append",
                     default=[], metavar="DIR|FILE",
                     help="import CSAF documents into the index first (repeatable)")
    adv.add_argument("--json", action="store_true", help="one JSON document per advisory")
    adv.set_defaults(func=cmd_collect_advisories)


def cmd_collect_advisories(args: argparse.Namespace) -> int:
    from mamori.sensor.advisories.national import national_view, reported_assets
    from mamori.sensor.collector.server import CollectorSettings
    from mamori.sensor.collector.storage import open_storage

    try:
        config = cfg.load(args.config, cfg.flag_overrides(args))
    except cfg.ConfigError as err:
        return _fail("collect advisories", err, 2)
    s = CollectorSettings.from_config(config)
    index_path = args.index if args.index is not None else s.db.with_name("advisories.db")
    missing = [p for p in args.import_paths if not p.exists()]
    if missing:
        return _fail("collect advisories", f"{missing[0]}: no such file or directory", 2)
    rejected = 0
    try:
        if args.import_paths:
            rejected = import_documents(index_path, args.import_paths, sys.stderr)["rejected"]
        if not s.dsn and not s.db.exists():
            return _fail("collect advisories", f"{s.db}: no collector store yet")
        storage = open_storage(s.db, s.dsn)
        try:
            reported = reported_assets(storage)
        finally:
            storage.close()
        rows = national_view(index_path, reported)
    except (AdvisoryIndexError, TablesError, OSError) as err:
        return _fail("collect advisories", err)
    for row in rows:
        if args.json:
            print(json.dumps(row.to_dict(), default=str))
            continue
        cvss = "-" if row.cvss is None else f"{row.cvss:.1f}"
        print(f"{row.advisory:<18} cvss {cvss:<4} {len(row.sites())} site(s)  {row.title}  "
              f"{' '.join(row.cves[:4])}{' ...' if len(row.cves) > 4 else ''}")
        for d in row.devices:
            what = "affected" if d["affected"] else "possibly"
            print(f"    {d['site']:<24} {d['ip']:<15} {what:<8} {d['version'] or '-':<10} "
                  f"{', '.join(d['products'][:2])}")
    sites = {d["site"] for r in rows for d in r.devices}
    print(f"{len(rows)} advisory(ies) affect devices at {len(sites)} site(s); "
          f"{len(reported)} device identity(ies) reported", file=sys.stderr)
    return 1 if rejected else 0
