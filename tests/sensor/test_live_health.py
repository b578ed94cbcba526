"""The daemon's own blind spots, live: S3 (silence on an interface) and S1 (kernel drops).

Both run ``mamori run`` on the lab's capture interface (tests/netns.py). S3: no traffic
at all for longer than ``[health] silence_alert``. S1: a one-MiB ring and a capture
replayed at tcpreplay's top speed, so the kernel must drop frames and the daemon must
say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import corpus_path
from tests.netns import SpanLab, lab_or_skip

MAMORI = str(Path(sys.executable).parent / "mamori")


@pytest.fixture
def lab() -> Iterator[SpanLab]:
    with lab_or_skip("mmhl") as span:
        yield span


def _config(base: Path, ring_mb: int, silence: str) -> Path:
    path = base / "sensor.toml"
    path.write_text(
        f'[sensor]\nstate_dir = "{base}/state"\n\n[capture]\ninterfaces = ["cap0"]\n'
        f'ring_mb = {ring_mb}\n\n[ports]\nmodbus = [15020]\n\n'
        f'[health]\nsilence_alert = "{silence}"\nstats_interval = 0.5\n')
    return path


def _alerts(base: Path) -> list[dict[str, Any]]:
    out = subprocess.run([MAMORI, "alerts", "--json", "--store", str(base / "state" /
                                                                     "mamori.db")],
                         capture_output=True, text=True, timeout=30)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _run(lab: SpanLab, config: Path, seconds: float) -> subprocess.Popen[str]:
    return lab.popen(lab.sensor, [MAMORI, "run", "--config", str(config), "--max-seconds",
                                  str(seconds)], stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT)


def test_silence_on_the_capture_interface_raises_s3(lab: SpanLab, tmp_path: Path) -> None:
    sensor = _run(lab, _config(tmp_path, 4, "2s"), 5)
    out, _ = sensor.communicate(timeout=60)
    assert sensor.returncode == 0, out
    s3 = [a for a in _alerts(tmp_path) if a["precursor"] == "S3"]
    assert len(s3) == 1, out
    assert s3[0]["src"] == "cap0"
    assert s3[0]["evidence"]["interface"] == "cap0"


def test_kernel_drops_raise_s1(lab: SpanLab, tmp_path: Path) -> None:
    capture = lab.rewrite(corpus_path("generated/modbus_big.pcap"), tmp_path / "big.pcap")
    sensor = _run(lab, _config(tmp_path, 1, "10m"), 25)
    time.sleep(3)
    lab.ns(lab.tap, "tcpreplay", "-q", "-i", "gen0", "--topspeed", str(capture), timeout=120)
    out, _ = sensor.communicate(timeout=90)
    assert sensor.returncode == 0, out
    s1 = [a for a in _alerts(tmp_path) if a["precursor"] == "S1"]
    assert s1, out
    dropped = sum(int(a["evidence"]["dropped"]) for a in s1)
    assert dropped > 0
    assert s1[0]["src"] == "cap0"
