"""A pymodbus server (SimDevice API of pymodbus 3.16) and a tcpdump capture on ``lo``.

Run as ``python -m tests.peers.modbus_peer PORT REVISION`` to serve; tests use
:func:`server` and :func:`capture` as context managers. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from tests.peers.listening import wait_listening

HOST = "127.0.0.1"


def serve(port: int, revision: str) -> None:
    """The demo sample's server (samples/make_modbus_sample.py), units 1-10, on any address."""
    from samples.make_modbus_sample import serve as serve_sample

    serve_sample(port, "0.0.0.0", units=tuple(range(1, 11)), revision=revision)


@contextlib.contextmanager
def server(port: int, revision: str = "2.4.1") -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.peers.modbus_peer", str(port),
                             revision], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_listening(HOST, port, 10, proc):
            raise TimeoutError(f"pymodbus server on {port} did not start")
        yield
    finally:
        terminate(proc)


def terminate(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    """SIGTERM (or ``sig``), and SIGKILL if it has not gone within 5 s."""
    proc.send_signal(sig)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])
