"""tcpdump on ``lo`` for the traffic tests, and a check that the capture is whole.

Shared by the Modbus and DNP3 peers: real stacks talk on loopback, tcpdump writes
the pcap, and the test replays it through the sensor.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mamori.parsers.capfile import CaptureFileParser

TIMEOUT = 10.0  # seconds for any single wait


@dataclass
class CaptureStats:
    """tcpdump's own counters, read from its exit report."""

    captured: int = -1
    dropped: int = -1  # by the kernel; -1 if tcpdump did not say


@contextmanager
def capture(path: Path, port: int) -> Iterator[CaptureStats]:
    """tcpdump on lo for ``tcp port PORT`` into ``path`` (tests run as root).

    ``--immediate-mode`` matters: without it libpcap hands packets over in blocks
    with a timeout, and a capture stopped within a second of short traffic loses
    the whole exchange (the file is a bare header). The yielded stats are filled
    in on exit, so a test can tell capture loss from a sensor fault.
    """
    stats = CaptureStats()
    proc = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-B", "8192",
                             "-w", str(path), f"tcp port {port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:  # "listening on lo" means packets are captured
        line = proc.stderr.readline()
        if b"listening" in line or not line:
            break
    try:
        yield stats
    finally:
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=5)
        for report in err.decode(errors="replace").splitlines():
            words = report.split()
            if len(words) >= 3 and words[0].isdigit() and words[1] == "packets":
                if words[2] == "captured":
                    stats.captured = int(words[0])
                elif report.endswith("dropped by kernel"):
                    stats.dropped = int(words[0])


def capture_complete(path: Path) -> bool:
    """No TCP payload missing from the capture, by sequence numbers alone.

    Independent of the sensor: each direction's data must continue exactly where
    the previous segment ended (retransmissions allowed). tcpdump on a loaded
    host occasionally misses a frame on ``lo`` without counting a kernel drop;
    a test then re-runs its exchange rather than blame the sensor for the hole.
    """
    parser = CaptureFileParser()
    parser.receive(path.read_bytes())
    records = parser.records()
    parser.close()
    expected: dict[tuple[bytes, int, bytes, int], int] = {}
    for rec in records:
        frame = rec.data
        if rec.linktype != 1 or len(frame) < 34 or frame[12:14] != b"\x08\x00" \
                or frame[23] != 6:
            continue
        ihl = (frame[14] & 0x0F) * 4
        total = int.from_bytes(frame[16:18], "big")
        tcp = 14 + ihl
        sport, dport = int.from_bytes(frame[tcp:tcp + 2], "big"), \
            int.from_bytes(frame[tcp + 2:tcp + 4], "big")
        seq = int.from_bytes(frame[tcp + 4:tcp + 8], "big")
        flags = frame[tcp + 13]
        size = total - ihl - (frame[tcp + 12] >> 4) * 4
        key = (frame[26:30], sport, frame[30:34], dport)
        if flags & 0x02:  # SYN
            expected[key] = (seq + 1) & 0xFFFFFFFF
            continue
        want = expected.get(key)
        if want is None or size <= 0:
            continue
        if (seq - want) & 0xFFFFFFFF < 0x80000000 and seq != want:
            return False  # data begins beyond what was seen: a hole
        end = (seq + size) & 0xFFFFFFFF
        if (end - want) & 0xFFFFFFFF < 0x80000000:
            expected[key] = end
    return True
