"""Fixtures for the web page: a store made by replaying captures, a token, a server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from sensor.detection.settings import build_detector
from sensor.pipeline import PipelineConfig
from sensor.replay import replay_files
from sensor.store import Store
from sensor.web.auth import create_token_file
from tests.conftest import PROJECT, corpus_path

MODBUS_DEMO = PROJECT / "samples" / "modbus_demo.pcap"
DNP3_COLD_RESTART = "ICS-Security-Tools/pcaps/dnp3/cold_restart_and_response.pcap"


def replay_into_store(store: Path, captures: Sequence[Path]) -> None:
    """Replay captures with detection and keep alerts and inventory in ``store``.

    Like ``mamori replay --store`` but without its retention pass: that prunes by the
    capture's own clock, and our two captures are eleven years apart.
    """
    detector = build_detector(None)
    replay_files(captures, PipelineConfig(), extra_sinks=[detector.process])
    with Store(store) as db:
        db.save_alerts(detector.drain())
        inv = detector.inventory
        old_assets = {a["ip"]: a for a in db.assets()}
        old_pairs = db.pairs()
        assets = {**old_assets, **{a.ip: a.to_dict() for a in inv.assets.values()}}
        db.save_inventory(list(assets.values()),
                          old_pairs + [p.to_dict() for p in inv.pairs.values()], None)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    create_token_file(path)
    return path


@pytest.fixture
def token(token_file: Path) -> str:
    return token_file.read_text().strip()


@pytest.fixture
def modbus_store(tmp_path: Path) -> Path:
    """The Modbus sample: M1, M2, M3, M5, M14 between 127.0.0.1 peers."""
    path = tmp_path / "mamori.db"
    replay_into_store(path, [MODBUS_DEMO])
    return path


@pytest.fixture
def dnp3_capture() -> Path:
    return corpus_path(DNP3_COLD_RESTART)


class WebProcess:
    """``mamori web`` as a subprocess on a free port."""

    def __init__(self, store: Path, token_file: Path, extra: Sequence[str] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sensor.cli", "web", "--store", str(store),
             "--token-file", str(token_file), "--port", "0", *extra],
            cwd=PROJECT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            if found:
                self.url = found.group(1)
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise AssertionError(f"mamori web did not start: {line}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def web_server(modbus_store: Path, token_file: Path) -> Iterator[WebProcess]:
    server = WebProcess(modbus_store, token_file)
    yield server
    server.stop()
