"""An append-only file of lines that neither a full disk nor a crash corrupts: SIEM and EVE.

Written with ``os.write`` on an ``O_APPEND`` descriptor: what the disk refused stays
queued, in order, and goes first at the next write, so a full disk never leaves a
line half written. Past ``max_backlog`` queued bytes new lines are dropped and
counted (the store or the collector's storage has them all). The collector's SIEM
file and the sensor's EVE output are both one of these.

A process killed inside a write can still leave part of a line at the end (Linux
stops a regular file's write between pages for a fatal signal). Appending after it
would glue the next line to the fragment: one line no JSON reader can parse. So
:func:`open_append` cuts an unterminated tail before the first write. The lost line
is one the store or the collector's storage committed first; these files are a copy
with one writer, never the record.
"""

from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger("mamori.output")

MAX_BACKLOG = 64 * 1024 * 1024  # bytes of lines held while the disk is full
_TAIL_CHUNK = 64 * 1024  # bytes read at a time looking back for the last newline


def open_append(path: str, mode: int = 0o644, who: str = "mamori") -> int:
    """An ``O_APPEND`` descriptor on ``path``, after cutting a line a crash left unfinished.

    Only a regular file is looked at: a FIFO or ``/dev/stdout`` has no tail to cut.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        cut = cut_torn_tail(fd, path) if stat.S_ISREG(os.fstat(fd).st_mode) else 0
    except OSError:
        os.close(fd)
        raise
    if cut:
        log.warning("%s: %s: cut %d bytes of a line left unfinished at the end (a process "
                    "killed while writing it)", who, path, cut)
    return fd


def cut_torn_tail(fd: int, path: str) -> int:
    """Truncate ``fd`` (writable, ``path``) after its last newline; the bytes cut."""
    end = os.fstat(fd).st_size
    if end == 0:
        return 0
    with open(path, "rb", buffering=0) as reader:  # fd itself may be write-only
        if os.pread(reader.fileno(), 1, end - 1) == b"\n":
            return 0
        keep, pos = 0, end
        while pos > 0:
            start = max(0, pos - _TAIL_CHUNK)
            newline = os.pread(reader.fileno(), pos - start, start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            pos = start
    os.ftruncate(fd, keep)
    return end - keep


class LineFile:
    """Lines appended to ``path``; ``who`` prefixes the log lines (``mamori collect``)."""

    def __init__(self, path: str, max_backlog: int = MAX_BACKLOG, who: str = "mamori") -> None:
        self.path = path
        self.max_backlog = max_backlog
        self.who = who
        self._fd = open_append(path, who=who)
        self._queue = bytearray()
        self.dropped = 0  # lines never written
        self.error: str | None = None  # set while writes fail

    def write(self, lines: list[str]) -> None:
        for line in lines:
            data = (line + "\n").encode()
            if self._queue and len(self._queue) + len(data) > self.max_backlog:
                self.dropped += 1
            else:
                self._queue += data
        self.flush()

    def flush(self) -> None:
        while self._queue:
            try:
                n = os.write(self._fd, self._queue)
            except OSError as err:
                if self.error is None:
                    log.error("%s: %s: %s; %d bytes of lines held until it works again",
                              self.who, self.path, err.strerror, len(self._queue))
                self.error = err.strerror or str(err)
                return
            del self._queue[:n]
        if self.error is not None:
            log.warning("%s: %s: writing lines again (%d dropped)", self.who, self.path,
                        self.dropped)
        self.error = None

    def reopen(self) -> None:
        """After logrotate moved the file: write on at ``path`` (created anew if gone)."""
        fd = open_append(self.path, who=self.who)
        os.close(self._fd)
        self._fd = fd
        self.flush()  # what the old file refused goes to the new one

    @property
    def held(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        self.flush()
        if self._queue:
            log.error("%s: %s: %d bytes of lines not written at exit", self.who, self.path,
                      len(self._queue))
        os.close(self._fd)
