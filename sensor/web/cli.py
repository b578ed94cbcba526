"""``mamori web`` (serve the operator page from the store) and ``mamori web token``.

``mamori web`` is the stand-alone page: it reads the store the sensor writes and
shows health from the store only. ``mamori run --web`` (or ``[web] enabled``) serves
the same page from inside the daemon, with live health. See docs/web.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mamori.sensor import config as cfg
from mamori.sensor.paths import describe_mkdir
from mamori.sensor.web import settings as web_settings
from mamori.sensor.web.auth import TokenFileError, create_token_file

_FLAGS = (("--bind", "bind", "ADDRESS"), ("--port", "port", "PORT"),
          ("--token-file", "token_file", "FILE"))


def _option_help(key: str) -> str:
    option = next(o for o in cfg.SCHEMA if (o.section, o.key) == ("web", key))
    return f"{option.help} (config {option.name}, default {option.default})"


def register_commands(commands: Any) -> None:
    web = commands.add_parser(
        "web", help="serve the operator web page (alerts, assets, map, health)",
        description="Serve the read-only operator page from the local store on "
                    "127.0.0.1:8470 (see docs/web.md). 'mamori web token' creates the "
                    "login token file.")
    web.add_argument("--config", type=Path, default=None, metavar="FILE",
                     help="site configuration (default /etc/mamori/sensor.toml if present)")
    cfg.add_flags(web, ("store", "sensor"))
    for flag, key, metavar in _FLAGS:  # the [web] keys' flags, for this command only
        web.add_argument(flag, dest=f"cfg:web:{key}", metavar=metavar, default=None,
                         help=_option_help(key))
    web.set_defaults(func=cmd_web)
    sub = web.add_subparsers(dest="web_command", metavar="ACTION")
    token = sub.add_parser("token", help="create the login token file (mode 0600)",
                           description="Write a new random login token to the token file.")
    token.add_argument("--config", type=Path, default=None, metavar="FILE")
    token.add_argument("--token-file", dest="cfg:web:token_file", metavar="FILE",
                       default=None, help=_option_help("token_file"))
    cfg.add_flags(token, ("sensor",))
    token.add_argument("--force", action="store_true", help="replace an existing token")
    token.set_defaults(func=cmd_token)


def _load(args: argparse.Namespace) -> cfg.Config:
    from mamori.sensor.daemon.run import config_path_default

    path = str(args.config) if args.config is not None else config_path_default()
    return cfg.load(path, cfg.flag_overrides(args))


def cmd_token(args: argparse.Namespace) -> int:
    try:
        conf = _load(args)
        path = web_settings.token_path(conf)
        create_token_file(path, force=args.force)
    except (cfg.ConfigError, TokenFileError) as err:
        print(f"mamori web token: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # the token's directory cannot be made, or is not writable
        print(f"mamori web token: {describe_mkdir(err)}", file=sys.stderr)
        return 1
    print(f"token written to {path} (mode 0600); log in with your name and its contents")
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from mamori.sensor.alerting.settings import store_path
    from mamori.sensor.alerting.store import StoreError, open_store
    from mamori.sensor.web.server import WebSetupError, build_context, listen, serve_forever, url_of

    try:
        conf = _load(args)
        store = store_path(conf)
        open_store(store, conf, readonly=True).close()  # a store, not just a file there
        ctx = build_context(conf, store)
        sock = listen(conf)
    except (cfg.ConfigError, WebSetupError, StoreError) as err:
        print(f"mamori web: {err}", file=sys.stderr)
        return 2
    print(f"mamori web: serving {store} on {url_of(sock)} (health is live only under "
          "'mamori run --web')", file=sys.stderr, flush=True)
    serve_forever(ctx, sock)
    return 0
