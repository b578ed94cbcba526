"""The ``mamori`` command line.

Exit status: 0 on success; 1 when the input was processed but something was
damaged (a truncated capture file: every good record before the damage was
still processed); 2 for usage errors (bad flags, unreadable files).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor import config as cfg
from mamori.sensor.advisories import cli as advisories_cli
from mamori.sensor.alerting import export_cli
from mamori.sensor.capture.replay import progress_stream, replay_files
from mamori.sensor.collector import subscribe_cli
from mamori.sensor.daemon import cli as daemon_cli
from mamori.sensor.detection import cli as detection_cli
from mamori.sensor.forwarding import cli as forwarding_cli
from mamori.sensor.paths import OutputError, check_input, check_output, describe, open_output
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

    replay = commands.add_parser(
        "replay", help="run capture files (pcap, pcapng) through the sensor pipeline",
        description="Replay capture files through decoding, reassembly and the protocol "
                    "parsers, then print a summary.")
    replay.add_argument("files", nargs="*", metavar="FILE", type=Path)
    replay.add_argument("-r", "--read", dest="read", action="append", type=Path, default=[],
                        metavar="FILE", help="a capture file, as with Suricata's and Zeek's "
                        "-r (may be repeated; the same as giving FILE)")
    replay.add_argument("--zeek-logs", type=Path, metavar="DIR",
                        help="replay a directory of Zeek/ICSNPP logs instead of captures")
    cfg.add_value_flag(replay, "ports", "modbus")  # --modbus-ports, as in the schema
    cfg.add_value_flag(replay, "ports", "dnp3")
    replay.add_argument("--events", type=Path, metavar="OUT.jsonl",
                        help="write every parsed message and anomaly as JSON lines "
                             "('-' for stdout)")
    replay.add_argument("--no-progress", action="store_true",
                        help="no progress bar, even on a terminal")
    detection_cli.add_replay_arguments(replay)
    replay.set_defaults(func=_cmd_replay)

    # What one capability adds to another's commands is handed over here, so that no
    # command-line module imports another: `collect advisories`, `assets --vulnerable`.
    forwarding_cli.register_commands(commands, [advisories_cli.add_collect_command])
    detection_cli.register_commands(commands, [advisories_cli.add_assets_arguments])
    for feature in (daemon_cli, zeek_cli, web_cli, advisories_cli, subscribe_cli, export_cli):
        feature.register_commands(commands)
    return parser


def _cmd_replay(args: argparse.Namespace) -> int:
    args.files = [*args.files, *args.read]
    zeek: Path | None = args.zeek_logs
    problem = None
    if zeek is not None and args.files:
        problem = "give capture files or --zeek-logs, not both"
    elif zeek is None and not args.files:
        problem = "no capture file given (or use --zeek-logs DIR)"
    elif zeek is not None and not zeek.is_dir():
        problem = f"{zeek}: {'not a directory' if zeek.exists() else 'no such directory'}"
    else:
        problem = next(filter(None, map(check_input, args.files)), None)
    if problem is None:
        problem = next(filter(None, (check_output(out) for out in (args.events, args.alerts)
                                     if out is not None and str(out) != "-")), None)
    if problem is not None:
        print(f"mamori replay: {problem}", file=sys.stderr)
        return 2
    try:
        config = PipelineConfig(modbus_ports=args.modbus_ports, dnp3_ports=args.dnp3_ports)
        detection = detection_cli.ReplayDetection.from_args(args)
    except (ValueError, detection_cli.UsageError) as err:
        print(f"mamori replay: {err}", file=sys.stderr)
        return 2
    sinks = [detection.detector.process] if detection is not None else []
    with contextlib.ExitStack() as stack:
        events_out: IO[str] | None = None
        if args.events is not None:
            if str(args.events) == "-":
                events_out = sys.stdout
            else:
                events_out = stack.enter_context(open_output(args.events))
        if zeek is not None:
            from mamori.sensor.capture.zeek import replay_zeek_logs

            summary = replay_zeek_logs(zeek, events_out=events_out, extra_sinks=sinks)
        else:
            summary = replay_files(
                args.files, config, events_out=events_out, extra_sinks=sinks,
                progress=None if args.no_progress else progress_stream(),
                ring=detection.evidence.ring if detection and detection.evidence else None)
    to_stdout = events_out is sys.stdout or (detection is not None
                                             and str(detection.alerts_out) == "-")
    report = sys.stderr if to_stdout else sys.stdout
    print(summary.render(), file=report)
    stored = detection.finish(report) if detection is not None else True
    for failure in detection.errors if detection is not None else ():
        print(f"mamori replay: {failure}", file=sys.stderr)
    if zeek is not None and summary.files == 0:
        print(f"mamori replay: {zeek}: no Modbus or DNP3 Zeek logs", file=sys.stderr)
        return 1
    for damage in summary.errors:
        print(f"mamori replay: {damage}", file=sys.stderr)
    if not stored:
        print("mamori replay: disk full: some alerts were not stored (see the summary)",
              file=sys.stderr)
    failed = detection is not None and bool(detection.errors)
    return 1 if summary.errors or not stored or failed else 0


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
