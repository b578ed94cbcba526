"""The line files (EVE, SIEM JSONL, syslog ``file://``) after a writer died mid-line.

CI's fault schedule once SIGKILLed a collector inside a write of its SIEM file; the
restarted collector appended after the fragment and the file held a line no JSON
reader could parse. These tests tear a line for real, with a killed process, and
build the torn tails a crash can leave (a fragment longer than one read back, a file
with no newline at all) by hand.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mamori.sensor.alerting.linefile import LineFile, cut_torn_tail, open_append
from mamori.sensor.alerting.syslog5424 import SyslogSender

# A writer that never stops: lines of 16 MiB, so a SIGKILL lands inside a write.
WRITER = """
import sys
from mamori.sensor.alerting.linefile import LineFile
out = LineFile(sys.argv[1])
body = "x" * (16 * 1024 * 1024)
print("ready", flush=True)
n = 0
while True:
    n += 1
    out.write(['{"n": %d, "pad": "%s"}' % (n, body)])
"""


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_a_line_torn_by_sigkill_is_cut_before_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "siem.jsonl"
    for attempt in range(20):  # a kill between two writes tears nothing: try again
        path.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(0.3 + 0.05 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            break
    else:
        pytest.fail("20 SIGKILLs never landed inside a write")
    whole = data.count(b"\n")
    out = LineFile(str(path))
    out.write(['{"n": "after"}'])
    out.close()
    records = _records(path)  # every line parses
    assert [r["n"] for r in records] == [*range(1, whole + 1), "after"]


@pytest.mark.parametrize("before,fragment", [
    (b'{"a": 1}\n{"a": 2}\n', b'{"a": 3, "pad": "'),
    (b'{"a": 1}\n', b'{"pad": "' + b"y" * 300_000),  # longer than one read back
    (b"", b'{"pad": "no newline at all'),
    (b'{"a": 1}\n', b""),  # nothing torn: nothing cut
])
def test_open_append_cuts_only_the_unterminated_tail(tmp_path: Path, before: bytes,
                                                     fragment: bytes) -> None:
    path = tmp_path / "eve.json"
    path.write_bytes(before + fragment)
    fd = open_append(str(path))
    try:
        assert os.fstat(fd).st_size == len(before)
        os.write(fd, b'{"a": "next"}\n')
    finally:
        os.close(fd)
    assert path.read_bytes() == before + b'{"a": "next"}\n'


def test_reopen_after_logrotate_cuts_a_torn_tail_of_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "siem.jsonl"
    out = LineFile(str(path))
    out.write(['{"a": 1}'])
    path.rename(tmp_path / "siem.jsonl.1")
    path.write_bytes(b'{"a": 2}\n{"torn')  # what a killed writer left in the new file
    out.reopen()
    out.write(['{"a": 3}'])
    out.close()
    assert [r["a"] for r in _records(path)] == [2, 3]


def test_syslog_file_target_cuts_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "mamori.log"
    path.write_bytes(b"<133>1 2026-12-06T00:00:00Z h mamori - - - whole\n<133>1 2026-12-")
    sender = SyslogSender(f"file://{path}", "local0")
    assert sender.send(b"<133>1 2026-12-06T00:00:01Z h mamori - - - next")
    sender.close()
    assert path.read_bytes().splitlines() == [
        b"<133>1 2026-12-06T00:00:00Z h mamori - - - whole",
        b"<133>1 2026-12-06T00:00:01Z h mamori - - - next"]


def test_a_character_device_is_written_as_it_is(tmp_path: Path) -> None:
    out = LineFile(os.devnull)
    out.write(["{}"])
    out.close()
    assert out.dropped == 0 and out.error is None
    fd = os.open(tmp_path / "x", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert cut_torn_tail(fd, str(tmp_path / "x")) == 0  # empty: nothing to cut
    finally:
        os.close(fd)
