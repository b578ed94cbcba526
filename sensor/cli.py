"""The ``mamori`` command line.

Exit status: 0 on success; 1 when the input was processed but something was
damaged (a truncated capture file: every good record before the damage was
still processed); 2 for usage errors (bad flags, unreadable files).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mamori.sensor import gcpolicy
from mamori.sensor.paths import OutputError, describe


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


#: Each capability's command-line module, in the order ``mamori --help`` lists them, with
#: the commands it registers. ``main`` imports only the module of the command it is
#: given (the whole set costs ``mamori replay`` a quarter of its imports: zmq, asyncio,
#: the collector, the web page); an unknown command, ``--help`` or ``--version`` builds
#: the full parser. ``tests/sensor/test_cli_lazy.py`` holds this table to the modules.
FEATURES: dict[str, tuple[str, ...]] = {
    "mamori.sensor.detection.replay_cli": ("replay",),
    "mamori.sensor.forwarding.cli": ("keys", "collect", "audit"),
    "mamori.sensor.detection.cli": ("rules", "alerts", "assets", "baseline"),
    "mamori.sensor.daemon.cli": ("run", "check-config", "check-iface"),
    "mamori.sensor.verify.cli": ("verify",),
    "mamori.sensor.web.cli": ("web",),
    "mamori.sensor.advisories.cli": ("advisories",),
    "mamori.sensor.collector.subscribe_cli": ("subscribe",),
    "mamori.sensor.alerting.export_cli": ("attack-layer",),
}
#: What one capability adds to another's commands is handed over here, so that no
#: command-line module imports another: `collect advisories`, `assets --vulnerable`
#: (module: the advisories module's function it is given).
_EXTRAS = {"mamori.sensor.forwarding.cli": "add_collect_command",
           "mamori.sensor.detection.cli": "add_assets_arguments"}


def _register(commands: Any, module_name: str) -> None:
    module = importlib.import_module(module_name)
    extra = _EXTRAS.get(module_name)
    if extra is None:
        module.register_commands(commands)
    else:
        advisories = importlib.import_module("mamori.sensor.advisories.cli")
        module.register_commands(commands, [getattr(advisories, extra)])


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``mamori`` parser; with ``command`` (one that :data:`FEATURES` names), only the
    module that registers it is imported and registered."""
    parser = argparse.ArgumentParser(
        prog="mamori", description="Passive Modbus/TCP and DNP3 sensor for OT networks.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for module_name, names in FEATURES.items():
        if command is None or command in names:
            _register(commands, module_name)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` starts with, when :data:`FEATURES` knows it."""
    if argv and any(argv[0] in names for names in FEATURES.values()):
        return argv[0]
    return None


def program(argv: Sequence[str] | None = None) -> int:
    """The ``mamori`` program (the console script): :func:`main` in a process of its
    own, which also sets that process's garbage collector (``gcpolicy``). ``main``
    alone leaves it as it is, since it also runs inside other programs (tests)."""
    gcpolicy.tune()
    return main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)
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
    sys.exit(program())
