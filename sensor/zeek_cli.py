"""Subcommands of the Zeek and verification features: ``verify`` and ``zeek-replay``.

``mamori verify FILE...`` compares Mamori's parsing with tshark's (exit 0 on full
agreement, 1 on any disagreement, 2 for usage errors). ``mamori zeek-replay DIR`` is
the stand-alone form of ``mamori replay --zeek-logs DIR`` (same summary, same
``--events`` output), for trees where the replay subcommand is not yet wired to it.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path
from typing import IO, Any

from sensor.paths import check_input, check_output, open_output
from sensor.pipeline import PipelineConfig


def register_commands(commands: Any) -> None:
    from sensor.cli import port_list  # cli imports this module lazily; no cycle at load

    verify = commands.add_parser(
        "verify", help="compare Mamori's parsing of a capture with tshark's, field by field",
        description="Dissect each capture with tshark (through pyshark) and with Mamori, "
                    "and print per field how often they agree, every disagreement with its "
                    "frame number, and a verdict. Known tshark errors are not counted.")
    verify.add_argument("files", nargs="+", metavar="FILE.pcap", type=Path)
    verify.add_argument("--modbus-ports", type=port_list, default=frozenset({502}),
                        metavar="PORTS", help="Modbus/TCP server ports (default 502)")
    verify.add_argument("--dnp3-ports", type=port_list, default=frozenset({20000}),
                        metavar="PORTS", help="DNP3 ports, TCP and UDP (default 20000)")
    verify.add_argument("--limit", type=int, default=20, metavar="N",
                        help="disagreements listed per field (default 20)")
    verify.set_defaults(func=_cmd_verify)

    replay = commands.add_parser(
        "zeek-replay", help="run a directory of Zeek/ICSNPP logs through the sensor's event "
                            "model (the same as 'replay --zeek-logs DIR')")
    replay.add_argument("directory", metavar="DIR", type=Path)
    replay.add_argument("--events", type=Path, metavar="OUT.jsonl",
                        help="write every event as JSON lines ('-' for stdout)")
    replay.set_defaults(func=cmd_zeek_replay)


def _cmd_verify(args: argparse.Namespace) -> int:
    from sensor.verify import verify_capture

    for path in args.files:
        if (problem := check_input(path)) is not None:
            print(f"mamori verify: {problem}", file=sys.stderr)
            return 2
    if shutil.which("tshark") is None:
        print("mamori verify: tshark is not installed (apt install tshark)", file=sys.stderr)
        return 2
    try:
        config = PipelineConfig(modbus_ports=args.modbus_ports, dnp3_ports=args.dnp3_ports)
    except ValueError as err:
        print(f"mamori verify: {err}", file=sys.stderr)
        return 2
    status = 0
    for path in args.files:
        report = verify_capture(path, config)
        print(report.render(limit=args.limit))
        if not report.agreed:
            status = 1
    return status


def cmd_zeek_replay(args: argparse.Namespace) -> int:
    """Also the handler for ``replay --zeek-logs`` (reads ``args.zeek_logs`` if set)."""
    from sensor.zeek import replay_zeek_logs

    zeek_logs: Path | None = getattr(args, "zeek_logs", None)
    directory: Path = zeek_logs or args.directory
    prog = "mamori replay" if zeek_logs is not None else "mamori zeek-replay"
    problem = None
    if not directory.is_dir():
        problem = f"{directory}: {'not a directory' if directory.exists() else 'no such directory'}"
    elif args.events is not None and str(args.events) != "-":
        problem = check_output(args.events)
    if problem is not None:
        print(f"{prog}: {problem}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        events_out: IO[str] | None = None
        if args.events is not None:
            events_out = sys.stdout if str(args.events) == "-" else stack.enter_context(
                open_output(args.events))
        summary = replay_zeek_logs(directory, events_out=events_out)
    print(summary.render(), file=sys.stderr if events_out is sys.stdout else sys.stdout)
    if summary.files == 0:
        print(f"{prog}: {directory}: no Modbus or DNP3 Zeek logs", file=sys.stderr)
        return 1
    return 1 if summary.errors else 0
