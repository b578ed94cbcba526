"""An append-only file of lines that a full disk never corrupts: SIEM and EVE outputs.

Written with ``os.write`` on an ``O_APPEND`` descriptor, so no line is ever half
written by us: what the disk refused stays queued, in order, and goes first at the
next write. Past ``max_backlog`` queued bytes new lines are dropped and counted (the
store or the collector's storage has them all). The collector's SIEM file and the
sensor's EVE output are both one of these.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("mamori.output")

MAX_BACKLOG = 64 * 1024 * 1024  # bytes of lines held while the disk is full


class LineFile:
    """Lines appended to ``path``; ``who`` prefixes the log lines (``mamori collect``)."""

    def __init__(self, path: str, max_backlog: int = MAX_BACKLOG, who: str = "mamori") -> None:
        self.path = path
        self.max_backlog = max_backlog
        self.who = who
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
