"""``mamori replay``: capture files or Zeek logs through the sensor, as the daemon runs it.

The command wires its source to one :class:`~mamori.sensor.detection.session.Session`
(detection, inventory, the event log, the store, the forwarder), the same object the
daemon uses, so a replay stores and forwards alerts as it reads, by packet time.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import IO, Any

from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor import config as cfg
from mamori.sensor.capture.replay import EventsOut, ReplaySummary, progress_stream, replay_files
from mamori.sensor.detection import cli as detection_cli
from mamori.sensor.detection.session import Session
from mamori.sensor.paths import check_input, check_output, open_output


def register_commands(commands: Any) -> None:
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
    replay.set_defaults(func=cmd_replay)



def cmd_replay(args: argparse.Namespace) -> int:
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
    with contextlib.ExitStack() as stack:
        events_out: IO[str] | None = None
        if args.events is not None:
            if str(args.events) == "-":
                events_out = sys.stdout
            else:
                events_out = stack.enter_context(open_output(args.events))
        consumers = [EventsOut(events_out)] if events_out is not None else []
        session = detection.session(consumers) if detection is not None else \
            Session(consumers=consumers, packet_clock=True)
        try:
            summary = _replay_source(args, config, session, detection)
        except BaseException:
            if detection is not None:
                detection.release()  # what was flushed so far stays stored and journaled
            raise
    to_stdout = events_out is sys.stdout or (detection is not None
                                             and str(detection.alerts_out) == "-")
    report = sys.stderr if to_stdout else sys.stdout
    print(summary.render(), file=report)
    stored = detection.finish(session, report) if detection is not None else True
    if detection is None:
        session.close()
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


def _replay_source(args: argparse.Namespace, config: PipelineConfig, session: Session,
                   detection: detection_cli.ReplayDetection | None) -> ReplaySummary:
    """Capture files or a Zeek log directory, fed to ``session``."""
    if args.zeek_logs is not None:
        from mamori.sensor.capture.zeek import replay_zeek_logs

        return replay_zeek_logs(args.zeek_logs, extra_sinks=[session.feed])
    evidence = detection.evidence if detection is not None else None
    # Nothing stored, forwarded or cut from a packet ring: the session sees only the
    # events, so they may come a chunk of the file at a time.
    quiet = session.outputs is None and evidence is None
    return replay_files(args.files, config, extra_sinks=[session.feed],
                        progress=None if args.no_progress else progress_stream(),
                        ring=evidence.ring if evidence is not None else None, batched=quiet)
