"""Packets behind alerts: write a flow's recent frames to a pcap when it alerts (issue 20).

The pipeline keeps the recent frames of every flow in a ``PacketRing``. When the
detector raises a new alert at ``[packets] min_severity`` or above (medium by
default) for a flow, ``PacketEvidence.on_alert`` takes that flow's frames, up to
and including the one that completed the triggering message, waits ``after``
seconds of packet time for the frames that follow (the answer to a write), then
writes them to ``<directory>/<time>-<random>.pcap`` (classic pcap, the frames' own
link type) and records the path in the alert's row of the local store. The frames never leave the
box: the path is in the store's ``pcap`` column, not in the alert, so neither the
frames nor the path are forwarded. ``mamori alerts --show ID`` prints the path and
the web page's alert detail links to ``/alerts/ID/pcap``.

The directory is bounded by size and age (``retention_bytes``, ``retention_age``):
each write deletes the oldest pcaps past either bound. A write that fails (a full
disk, a read-only directory) is counted in ``refused`` and logged once until
writes succeed again; the alert itself is stored as always, without a pcap.

Sites that may not keep packet content set ``[packets] enabled = false``: then no
frame is held in memory and no file is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.packetring import FLOW_OVERHEAD, Frame, PacketRing
from mamori.sensor import configkit as cfg

log = logging.getLogger("mamori.packets")

PCAP_MAGIC = 0xA1B2C3D4  # classic pcap, microsecond timestamps
SNAPLEN = 262144
_HEADER = struct.Struct("<IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, link
_RECORD = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len
PCAP_NAME = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{12}\.pcap$")  # what this module writes

DEFAULT_DIRECTORY = Path("pcaps")
MAX_PENDING = 64  # alerts waiting for their post-window; past it (or past the ring's
# total_bytes of frames waiting) a pcap is written when its alert fires
RESCAN_EVERY = 3600.0  # seconds between listings of the pcap directory
_PARTIAL_AGE = 60.0  # a partial file this old is a write that was killed


def _v_severity(value: Any) -> str:
    return Severity.parse(cfg.v_nonempty_str(value)).label


OPTIONS: tuple[cfg.Option, ...] = (
    cfg.Option("packets", "enabled", True, cfg.v_bool,
               "keep the recent frames of each flow in memory and write them to a pcap "
               "when the flow alerts (false where a site may not keep packet content)"),
    cfg.Option("packets", "flow_bytes", 64 * 1024, cfg.v_int_range(16 * 1024, 64 * 1024 * 1024),
               "bytes of recent frames kept per flow (the newest are kept)"),
    cfg.Option("packets", "total_bytes", 32 * 1024 * 1024,
               cfg.v_int_range(64 * 1024, 16 * 1024 * 1024 * 1024),
               "bytes of frames kept across all flows; past it the least recently active "
               "flows give up their oldest frames"),
    cfg.Option("packets", "max_age", 60.0, cfg.v_positive_seconds,
               "frames older than this (packet time) are not kept"),
    cfg.Option("packets", "after", 2.0, cfg.v_seconds,
               "frames of the flow this long after the alert go into its pcap too (the "
               "answer to a write, the next requests); 0: only up to the trigger"),
    cfg.Option("packets", "min_severity", "medium", _v_severity,
               "alerts at this severity or above get a pcap (info, low, medium, high, "
               "critical)"),
    cfg.Option("packets", "directory", DEFAULT_DIRECTORY, cfg.v_path,
               "where the pcaps go (relative to the store's directory)"),
    cfg.Option("packets", "retention_bytes", 256 * 1024 * 1024,
               cfg.v_int_range(1024 * 1024, 1024 * 1024 * 1024 * 1024),
               "the pcap directory is kept under this size (oldest pcaps deleted first)"),
    cfg.Option("packets", "retention_age", 30 * 86400.0, cfg.v_positive_seconds,
               "pcaps older than this are deleted"),
)


def check_packets(config: cfg.Config) -> list[cfg.Problem]:
    """The bounds must fit inside each other, or the ring or the directory keeps nothing."""
    flow = config.get("packets", "flow_bytes")
    problems = []
    if config.get("packets", "total_bytes") < flow + FLOW_OVERHEAD:
        problems.append(cfg.Problem("packets", "total_bytes",
                                    f"must be at least flow_bytes + {FLOW_OVERHEAD} "
                                    f"({flow + FLOW_OVERHEAD})"))
    if config.get("packets", "after") > config.get("packets", "max_age"):
        problems.append(cfg.Problem("packets", "after",
                                    "must not be longer than max_age (the ring would have "
                                    "forgotten the frames by then)"))
    if config.get("packets", "retention_bytes") < flow + _HEADER.size:
        problems.append(cfg.Problem("packets", "retention_bytes",
                                    f"must be at least flow_bytes + {_HEADER.size} "
                                    f"({flow + _HEADER.size}): one pcap must fit"))
    return problems


CHECKS: tuple[cfg.CrossCheck, ...] = (
    cfg.CrossCheck.of(check_packets, [("packets", "flow_bytes"), ("packets", "total_bytes"),
                                      ("packets", "retention_bytes"), ("packets", "after"),
                                      ("packets", "max_age")]),
)


def pcap_bytes(frames: Sequence[Frame]) -> bytes:
    """A classic pcap of ``frames``, in the link type of the last (the triggering) one.

    A pcap has one link type; frames of another (a flow seen on two interfaces of
    different kinds) are left out rather than written as garbage.
    """
    if not frames:
        raise ValueError("no frames")
    linktype = frames[-1][1]
    parts = [_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, linktype)]
    record = _RECORD.pack
    for ts, link, data in frames:
        if link != linktype:
            continue
        micros = round(ts * 1_000_000)
        parts.append(record(micros // 1_000_000, micros % 1_000_000, len(data), len(data)))
        parts.append(data)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class _Pending:
    """An alert's frames so far, waiting for the end of its post-window."""

    alert_id: int
    first_ts: float
    key: Hashable
    frames: list[Frame]
    deadline: float  # packet time
    size: int  # bytes of frames held


class PcapStore(Protocol):
    def attach_pcap(self, alert_id: int, path: str) -> None: ...


@dataclass
class EvidenceStats:
    written: int = 0  # pcaps written
    bytes_written: int = 0
    no_frames: int = 0  # alerts at the severity with no frames held for their flow
    refused: int = 0  # writes that failed (full disk, permissions): alert kept, no pcap
    deleted: int = 0  # pcaps deleted by retention


def pcap_directory(conf: cfg.Config, store_path: Path) -> Path:
    """``[packets] directory``: as given when absolute, else beside the store."""
    directory = Path(conf.get("packets", "directory"))
    return directory if directory.is_absolute() else Path(store_path).parent / directory


class PacketEvidence:
    """The ring the pipeline feeds, and the alert hook that turns it into pcaps."""

    def __init__(self, ring: PacketRing, directory: Path, store: PcapStore,
                 min_severity: Severity = Severity.MEDIUM,
                 retention_bytes: int = 256 * 1024 * 1024,
                 retention_age: float = 30 * 86400.0,
                 clock: Callable[[], float] = time.time, after: float = 0.0) -> None:
        self.ring = ring
        self.directory = Path(directory)
        self.store = store
        self.min_severity = min_severity
        self.retention_bytes = retention_bytes
        self.retention_age = retention_age
        self.clock = clock
        self.stats = EvidenceStats()
        self._failing = False
        self.after = after
        self._pending: deque[_Pending] = deque()  # waiting for their post-window, by deadline
        self._pending_bytes = 0
        if after > 0:
            ring.on_due = self.due
        self._index: deque[tuple[float, int, str]] = deque()  # (mtime, size, path), oldest first
        self._held = 0  # bytes of the pcaps in the index
        self._scanned: float | None = None  # when the directory was last listed

    @classmethod
    def from_config(cls, conf: cfg.Config, store: Any) -> PacketEvidence | None:
        """None when ``[packets] enabled = false`` (nothing held, nothing written)."""
        if not conf.get("packets", "enabled"):
            return None
        ring = PacketRing(conf.get("packets", "flow_bytes"), conf.get("packets", "total_bytes"),
                          conf.get("packets", "max_age"))
        return cls(ring, pcap_directory(conf, store.path), store,
                   Severity.parse(conf.get("packets", "min_severity")),
                   conf.get("packets", "retention_bytes"),
                   conf.get("packets", "retention_age"), after=conf.get("packets", "after"))

    def chain(self, other: Callable[[Alert], None] | None) -> Callable[[Alert], None]:
        """An ``on_alert`` for the detector: this hook, then ``other`` (journald)."""
        def both(alert: Alert) -> None:
            self.on_alert(alert)
            if other is not None:
                other(alert)
        return both

    def on_alert(self, alert: Alert) -> None:
        """A new alert: its flow's frames (now, and for ``after`` seconds) to a pcap."""
        if alert.severity < self.min_severity or alert.id <= 0:
            return
        ring = self.ring
        key = ring.find(alert.src, alert.sport, alert.dst, alert.dport)
        frames = ring.frames(key) if key is not None else []
        if not frames:
            self.stats.no_frames += 1
            return
        size = sum(len(f[2]) for f in frames)
        if self.after <= 0 or len(self._pending) >= MAX_PENDING \
                or self._pending_bytes + size > ring.total_bytes:
            self._save(alert.id, alert.first_ts, frames)
            return
        # The frames so far are kept now: the ring may drop them before the window ends.
        # What waits is bounded by the ring's own total, so memory stays within twice it.
        deadline = ring.last_ts + self.after
        self._pending.append(_Pending(alert.id, alert.first_ts, key, frames, deadline, size))
        self._pending_bytes += size
        if deadline < ring.due_at:
            ring.due_at = deadline

    def due(self, ts: float) -> None:
        """Packet time ``ts`` has come: write the pcaps whose post-window has ended.

        The ring calls this with the first frame past the earliest deadline, and the
        daemon once a second with the clock (a flow, or the network, may go quiet).
        """
        pending = self._pending
        while pending and pending[0].deadline <= ts:
            self._complete(pending.popleft())
        self.ring.due_at = pending[0].deadline if pending else float("inf")

    def flush(self) -> None:
        """End of the run: write every pcap still waiting, with what arrived so far."""
        while self._pending:
            self._complete(self._pending.popleft())
        self.ring.due_at = float("inf")

    def retain(self, rescan: bool = False) -> None:
        """Delete pcaps older than ``retention_age``, then the oldest past ``retention_bytes``.

        The directory is listed once (the first call, ``rescan``, and every
        ``RESCAN_EVERY`` seconds, for what other instances sharing it wrote); between
        listings the pcaps this process writes are tracked in memory, so an alert
        costs no listing of a directory of a hundred thousand small files. Only files
        named as this module names them are touched (and the partial files of a write
        killed more than ``_PARTIAL_AGE`` ago), whatever else is in the directory.
        """
        now = self.clock()
        if rescan or self._scanned is None or now - self._scanned > RESCAN_EVERY:
            self._scan(now)
        index = self._index
        horizon = now - self.retention_age
        while index and (index[0][0] < horizon or self._held > self.retention_bytes):
            _, size, path = index.popleft()
            self._held -= size
            self._delete(path, False)

    # -- internals -------------------------------------------------------------------

    def _complete(self, wait: _Pending) -> None:
        self._pending_bytes -= wait.size
        seen = {id(f) for f in wait.frames}  # alive (held here), so ids are unique
        after = [f for f in self.ring.frames(wait.key)
                 if id(f) not in seen and f[0] <= wait.deadline]
        self._save(wait.alert_id, wait.first_ts, wait.frames + after)

    def _save(self, alert_id: int, first_ts: float, frames: list[Frame]) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(first_ts))
        path = self.directory / f"{stamp}-{secrets.token_hex(6)}.pcap"
        data = pcap_bytes(frames)
        if not self._write(path, data):
            return
        self.stats.written += 1
        self.stats.bytes_written += len(data)
        if self._scanned is not None:  # else the first retain() lists it
            self._index.append((self.clock(), len(data), str(path)))
            self._held += len(data)
        self.store.attach_pcap(alert_id, str(path))
        self.retain()

    def _scan(self, now: float) -> None:
        self._scanned = now
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return  # no directory yet, or unreadable: nothing of ours to delete
        found: list[tuple[float, int, str]] = []
        for entry in entries:
            name = entry.name
            partial = name.endswith(".part") and PCAP_NAME.match(name[:-5]) is not None
            if not partial and PCAP_NAME.match(name) is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if partial:
                if st.st_mtime < now - _PARTIAL_AGE:
                    self._delete(entry.path, True)
            else:
                found.append((st.st_mtime, st.st_size, entry.path))
        found.sort()
        self._index = deque(found)
        self._held = sum(size for _, size, _ in found)

    def _write(self, path: Path, data: bytes) -> bool:
        part = path.with_name(path.name + ".part")
        try:
            self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(part, path)
        except OSError as err:
            self.stats.refused += 1
            with contextlib.suppress(OSError):
                os.unlink(part)
            if not self._failing:
                self._failing = True
                log.error("%s: cannot write the packets of an alert: %s; the alert is "
                          "stored without them (counted, said once until writes work)",
                          path, err.strerror or err)
            return False
        if self._failing:
            self._failing = False
            log.warning("%s: writing alert pcaps again", self.directory)
        return True

    def _delete(self, path: str, partial: bool) -> bool:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return True
        except OSError as err:
            log.warning("%s: cannot delete an old pcap: %s", path, err.strerror or err)
            return False
        if not partial:
            self.stats.deleted += 1
        return True
