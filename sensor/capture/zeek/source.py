"""Zeek logs as a capture source: a directory replayed once, or followed as it grows.

``replay_zeek_logs`` is ``mamori replay --zeek-logs DIR``: it reads every Modbus and
DNP3 log of the directory (TSV or JSON, rotated chunks and ``.gz`` included), maps
the rows to events and hands them, in time order, to the same sinks a pcap replay
feeds. ``ZeekLogFollower`` is the live ``zeek`` source of ``mamori run``: ``poll()``
returns the events of the lines appended since the last call, across rotation.

Reading order matters for the ICSNPP joins (see :mod:`mamori.sensor.capture.zeek.mapping`):
conn.log first (which uids are UDP), then the enrichment logs, then the logs that
make events.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mamori.parsers.events import Event
from mamori.sensor.capture.replay import EventsOut, EventTally, ReplaySummary, fan_out
from mamori.sensor.capture.zeek.mapping import DNP3_LOGS, MODBUS_LOGS, ZeekEventMapper
from mamori.sensor.capture.zeek.reader import ZeekLineDecoder, ZeekLogProblem, ZeekRecord

#: Read first: conn.log, then logs that only enrich, then logs that make events.
READ_ORDER: tuple[str, ...] = (
    "conn", "modbus_read_device_identification", "dnp3_objects", "dnp3_control",
    "modbus_detailed", "modbus", "dnp3",
)
WANTED = frozenset(READ_ORDER)
assert set(MODBUS_LOGS) | set(DNP3_LOGS) <= WANTED


def log_kind(path: Path) -> str | None:
    """``modbus`` for modbus.log, modbus.json, modbus.2024-01-01-00-00-00.log.gz..."""
    if not path.name.endswith((".log", ".json", ".log.gz", ".json.gz")):
        return None
    kind = path.name.split(".")[0]
    return kind if kind in WANTED else None


def zeek_log_files(directory: Path) -> list[Path]:
    """The logs of ``directory`` we read, in READ_ORDER, then by name (rotation order)."""
    found = [p for p in directory.iterdir() if p.is_file() and log_kind(p) is not None]
    return sorted(found, key=lambda p: (READ_ORDER.index(log_kind(p) or ""), p.name))


def _lines(path: Path) -> Iterator[str]:
    opener: Callable[..., IO[str]] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="surrogateescape", newline="") as stream:
        yield from stream


def _note_transport(mapper: ZeekEventMapper, record: ZeekRecord) -> None:
    uid, proto = record.fields.get("uid"), record.fields.get("proto")
    if isinstance(uid, str) and proto == "udp":
        mapper.note_udp(uid)


def read_zeek_log(path: Path, mapper: ZeekEventMapper | None = None,
                  problems: list[ZeekLogProblem] | None = None) -> list[Event]:
    """Events of one log file, in file order (a mapper carries joins across files)."""
    mapper = mapper if mapper is not None else ZeekEventMapper()
    decoder = ZeekLineDecoder(path.name)
    events: list[Event] = []
    for raw in _lines(path):
        item = decoder.feed_line(raw)
        if isinstance(item, ZeekRecord):
            if item.path == "conn":
                _note_transport(mapper, item)
            else:
                events.extend(mapper.map(item))
        elif item is not None and problems is not None:
            problems.append(item)
    return events


def read_zeek_logs(directory: Path, problems: list[ZeekLogProblem] | None = None,
                   mapper: ZeekEventMapper | None = None) -> list[Event]:
    """Every event of a directory of logs, sorted by time (stable: file order on ties)."""
    mapper = mapper if mapper is not None else ZeekEventMapper()
    events: list[Event] = []
    for path in zeek_log_files(directory):
        events.extend(read_zeek_log(path, mapper, problems))
    events.sort(key=lambda event: event.ts)
    return events


def replay_zeek_logs(
    directory: str | os.PathLike[str],
    *,
    events_out: IO[str] | None = None,
    extra_sinks: Iterable[Callable[[list[Event]], None]] = (),
) -> ReplaySummary:
    """``mamori replay --zeek-logs DIR``: like ``replay_files`` for a log directory.

    In the summary, ``packets`` counts log rows (rendered as "records") and ``bytes``
    the log files' size; lines that could not be read are ``errors`` (``file:line: why``).
    """
    folder = Path(directory)
    summary = ReplaySummary(unit="records")
    started = time.perf_counter()
    sinks = ([EventsOut(events_out).consume] if events_out else []) + list(extra_sinks)
    tally = EventTally(summary, fan_out(sinks))
    problems: list[ZeekLogProblem] = []
    mapper = ZeekEventMapper()
    files = zeek_log_files(folder)
    events: list[Event] = []
    uids: set[str] = set()
    for path in files:
        summary.files += 1
        summary.bytes += path.stat().st_size
        decoder = ZeekLineDecoder(path.name)
        for raw in _lines(path):
            item = decoder.feed_line(raw)
            if isinstance(item, ZeekRecord):
                summary.packets += 1
                if item.path == "conn":
                    _note_transport(mapper, item)
                    continue
                if isinstance(item.fields.get("uid"), str):
                    uids.add(item.fields["uid"])
                events.extend(mapper.map(item))
            elif item is not None:
                problems.append(item)
    events.sort(key=lambda event: event.ts)
    if events:
        tally(events)
    summary.flows = len(uids)
    summary.errors.extend(str(p) for p in problems)
    summary.elapsed = time.perf_counter() - started
    return summary


# ---------------------------------------------------------------------- live


@dataclass
class _Followed:
    """One log path being followed: the open file, where we are, the partial line."""

    path: Path
    decoder: ZeekLineDecoder
    stream: IO[bytes] | None = None
    inode: int = -1
    partial: bytes = b""


class ZeekLogFollower:
    """Follows the current Modbus/DNP3 logs of a live Zeek's log directory.

    Zeek writes ``DIR/modbus.log`` and, at rotation, renames it away and starts a new
    one (or a tool copies and truncates it). ``poll()`` reads what was appended since
    the last call, finishes the renamed file before switching to the new one (the
    file object stays open across the rename), restarts at 0 when a file shrank
    (copytruncate), and keeps an unfinished last line for the next call. It never
    sleeps and never raises for bad content: problems are kept in ``problems``.

    ``from_start`` False (the daemon's default) skips what the files held when the
    follower started, the way ``tail -f`` does; True replays it first.
    """

    def __init__(self, directory: str | os.PathLike[str], *, from_start: bool = False,
                 max_read: int = 4 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.mapper = ZeekEventMapper()
        self.problems: list[ZeekLogProblem] = []
        self.rows = 0
        self._max_read = max_read
        self._followed: dict[str, _Followed] = {}
        self._from_start = from_start
        self._first = True

    def _candidates(self) -> list[Path]:
        return [self.directory / f"{kind}.{ext}" for kind in READ_ORDER
                for ext in ("log", "json")]

    def poll(self) -> list[Event]:
        """Events of every complete line appended since the last call, in time order."""
        events: list[Event] = []
        for path in self._candidates():
            events.extend(self._poll_one(path))
        self._first = False
        events.sort(key=lambda event: event.ts)
        return events

    def close(self) -> None:
        for followed in self._followed.values():
            if followed.stream is not None:
                followed.stream.close()
        self._followed.clear()

    def _poll_one(self, path: Path) -> list[Event]:
        key = str(path)
        followed = self._followed.get(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        if followed is None:
            if st is None:
                return []
            followed = self._followed[key] = _Followed(path, ZeekLineDecoder(path.name))
        out: list[Event] = []
        if followed.stream is not None:
            out.extend(self._drain(followed))
            if st is None or st.st_ino != followed.inode:
                followed.stream.close()  # rotated away: old file finished above
                followed.stream = None
                followed.partial = b""
            elif st.st_size < followed.stream.tell():
                followed.stream.seek(0)  # truncated in place: a new header follows
                followed.decoder.reset()
                followed.partial = b""
                out.extend(self._drain(followed))
        if followed.stream is None and st is not None:
            try:
                followed.stream = path.open("rb")
            except OSError as err:
                self.problems.append(ZeekLogProblem(str(path.name), f"cannot open: {err}"))
                return out
            followed.inode = os.fstat(followed.stream.fileno()).st_ino
            followed.decoder.reset()
            skip = self._first and not self._from_start
            out.extend(self._drain(followed, skip_rows=skip))
        return out

    def _drain(self, followed: _Followed, skip_rows: bool = False) -> list[Event]:
        assert followed.stream is not None
        out: list[Event] = []
        while True:
            chunk = followed.stream.read(self._max_read)
            if not chunk:
                break
            data = followed.partial + chunk
            lines = data.split(b"\n")
            followed.partial = lines.pop()
            for line in lines:
                item = followed.decoder.feed_line(line.decode("utf-8", "surrogateescape"))
                if isinstance(item, ZeekRecord):
                    if item.path == "conn":
                        _note_transport(self.mapper, item)
                    elif not skip_rows:
                        self.rows += 1
                        out.extend(self.mapper.map(item))
                elif item is not None:
                    self.problems.append(item)
        return out
