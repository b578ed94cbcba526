"""Talking to systemd: readiness, status, watchdog, and where logs should go.

Under a ``Type=notify`` unit systemd waits for ``READY=1`` before it calls the
sensor started, shows ``STATUS=`` in ``systemctl status``, and restarts the
sensor when ``WATCHDOG=1`` stops arriving within ``WatchdogSec``. Outside
systemd (no ``NOTIFY_SOCKET``) every call is a no-op, so the same code runs from
a shell.

systemd-python's ``systemd.daemon.notify`` does the sending. Where that package
is absent (a developer's venv without libsystemd headers), an equivalent
datagram to ``$NOTIFY_SOCKET`` is sent directly: the protocol is one line of
text per message, and tests bind that socket to check what the daemon says.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

try:  # systemd-python
    from systemd import daemon as _sd_daemon
except ImportError:  # pragma: no cover - depends on the environment
    _sd_daemon = None


def _send(message: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if _sd_daemon is not None:
        return bool(_sd_daemon.notify(message))
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


class Notifier:
    """READY/STATUS/WATCHDOG/STOPPING, with the watchdog paced from ``WATCHDOG_USEC``."""

    def __init__(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine else 0.0
        self._next_ping = 0.0

    def ready(self, status: str) -> None:
        _send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        _send(f"STATUS={status}")

    def reloading(self) -> None:
        _send("RELOADING=1")

    def stopping(self) -> None:
        _send("STOPPING=1")

    def tick(self) -> None:
        """Ping the watchdog at half its period; cheap to call often."""
        if not self.watchdog_interval:
            return
        now = time.monotonic()
        if now >= self._next_ping:
            _send("WATCHDOG=1")
            self._next_ping = now + self.watchdog_interval


def setup_logging(level: int = logging.INFO) -> None:
    """journald with structured fields under systemd (JOURNAL_STREAM), else stderr."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if os.environ.get("JOURNAL_STREAM"):
        try:
            from systemd.journal import JournalHandler

            root.addHandler(JournalHandler(SYSLOG_IDENTIFIER="mamori"))
            return
        except ImportError:  # pragma: no cover
            pass
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
