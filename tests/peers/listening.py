"""Wait for a server to listen without sending it a packet.

A readiness probe that connects is traffic: on a monitored interface its SYN, and
the RST of every try before the server binds, reach the sensor under test as a
client refused on an ICS port (N1). The kernel's socket tables say the same thing
silently, so the peers wait on them instead.

``/proc/net/tcp`` (and ``tcp6``) rows read ``sl local rem st ...``; ``local`` is
``ADDR:PORT`` in hex, IPv4's ADDR in the host's byte order, and ``st`` 0A is LISTEN.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

LISTEN = "0A"
_ANY = {"00000000", "0" * 32}


def _hex_v4(host: str) -> str:
    return f"{int.from_bytes(socket.inet_aton(host), sys.byteorder):08X}"


def _hex_mapped_v4(host: str) -> str:
    """``::ffff:HOST`` as ``/proc/net/tcp6`` prints it: four 32-bit words, each in host order."""
    raw = b"\0" * 10 + b"\xff\xff" + socket.inet_aton(host)
    return "".join(f"{int.from_bytes(raw[i:i + 4], sys.byteorder):08X}"
                   for i in range(0, 16, 4))


def is_listening(host: str, port: int) -> bool:
    """Whether a TCP socket listens on ``host:port`` (or the wildcard address) here."""
    wanted = {_hex_v4(host), _hex_mapped_v4(host)} | _ANY
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for row in f:
                    fields = row.split()
                    addr, _, hex_port = fields[1].partition(":")
                    if fields[3] == LISTEN and int(hex_port, 16) == port and addr in wanted:
                        return True
        except FileNotFoundError:
            continue
    return False


def wait_listening(host: str, port: int, timeout: float = 10.0,
                   proc: subprocess.Popen[Any] | None = None) -> bool:
    """True once ``host:port`` listens; False at ``timeout`` or when ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    while not is_listening(host, port):
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
