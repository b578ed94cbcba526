"""The argparse pieces that several capabilities' commands share.

A capability's CLI module is a leaf: only the assembly (``mamori.sensor.cli``)
imports it. What two of them need alike lives here instead: the ``--store`` and
``--config`` pair of the commands that read the local store, opening that store
from them, and the ``--csv`` flag of ``alerts`` and ``assets``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mamori.sensor import config as cfg
from mamori.sensor.alerting.settings import store_path
from mamori.sensor.alerting.store import Store, open_store


def store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, metavar="PATH",
                        help="store file (default from the config)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="site configuration (default /etc/mamori/sensor.toml if present)")


def config_file(path: Path | None) -> cfg.Config:
    """``--config FILE``, else the default file if there is one (ConfigError)."""
    if path is None:
        from mamori.sensor.daemon.run import config_path_default
        return cfg.load(config_path_default())
    return cfg.load(path)


def open_store_of(args: argparse.Namespace, readonly: bool) -> Store:
    """The store ``--store`` names, else the config's ``[store] path`` (StoreError)."""
    config = config_file(args.config)
    path = args.store if args.store is not None else store_path(config)
    return open_store(path, config, readonly)


def add_csv_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--csv", action="store_true",
                        help=f"{what} as CSV (RFC 4180, a header row) on stdout")


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
