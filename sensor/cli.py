"""The ``mamori`` command line.

Exit status: 0 on success; 1 when the input was processed but something was
damaged (a truncated capture file: every good record before the damage was
still processed); 2 for usage errors (bad flags, unreadable files).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mamori.sensor.advisories import cli as advisories_cli
from mamori.sensor.alerting import export_cli
from mamori.sensor.collector import subscribe_cli
from mamori.sensor.daemon import cli as daemon_cli
from mamori.sensor.detection import cli as detection_cli
from mamori.sensor.detection import replay_cli
from mamori.sensor.forwarding import cli as forwarding_cli
from mamori.sensor.paths import OutputError, describe
from mamori.sensor.verify import cli as zeek_cli
from mamori.sensor.web import cli as web_cli


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mamori")
    except PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``, resolved only when asked (importlib.metadata costs ~20 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"mamori {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mamori", description="Passive Modbus/TCP and DNP3 sensor for OT networks.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    replay_cli.register_commands(commands)
    # What one capability adds to another's commands is handed over here, so that no
    # command-line module imports another: `collect advisories`, `assets --vulnerable`.
    forwarding_cli.register_commands(commands, [advisories_cli.add_collect_command])
    detection_cli.register_commands(commands, [advisories_cli.add_assets_arguments])
    for feature in (daemon_cli, zeek_cli, web_cli, advisories_cli, subscribe_cli, export_cli):
        feature.register_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except BrokenPipeError:
        # `mamori alerts --json | head`: the reader left; that is not an error. Point
        # stdout at /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OutputError as err:  # --events or --alerts failed mid-run (disk full, ...)
        print(f"mamori {args.command}: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        # The last resort: every file, directory and permission failure a command does
        # not report itself is still one line naming the path, never a traceback.
        problem = describe(err)
        if err.filename is None and err.errno in _WRITE_ERRNOS:
            # Every file a command writes reports its own failures by name; an unnamed
            # write error this far up is standard output (`> /dev/full`, a full disk).
            problem = f"standard output: cannot write: {err.strerror or err}"
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # exit flush
        print(f"mamori {args.command}: {problem}", file=sys.stderr)
        return 1


_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


if __name__ == "__main__":
    sys.exit(main())
