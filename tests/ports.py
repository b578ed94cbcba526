"""Ports for test servers, picked below the kernel's ephemeral range.

``bind(("127.0.0.1", 0))`` hands out a port from the ephemeral range, the same
range the kernel draws the source port of every outgoing connection from. A test
that stops a server and starts it again on the same port (a collector after a
SIGKILL) then races every connect on the machine: CI saw "Address already in use"
when a relay's outgoing connection took a collector's port while it was down.
Below the range no connect ever takes a port on its own.

Each port is checked free for both TCP and UDP on ``host`` and handed out once per
process, so two servers of one test never share one.
"""

from __future__ import annotations

import random
import socket

_DEFAULT_RANGE = (32768, 60999)  # Linux's default ip_local_port_range
_SPAN = 16384  # ports below the range to choose from
_handed: set[int] = set()
_random = random.SystemRandom()


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return _DEFAULT_RANGE
    return low, high


def _bindable(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` for TCP and UDP that no outgoing connection will take."""
    low, _ = ephemeral_range()
    first = max(1024, low - _SPAN)
    for _ in range(1000):
        port = _random.randrange(first, low)
        if port not in _handed and _bindable(host, port):
            _handed.add(port)
            return port
    raise RuntimeError(f"no free port in {first}-{low - 1}")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    return [free_port(host) for _ in range(n)]
