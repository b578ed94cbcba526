"""Fixtures for the web page: a store made by replaying captures, a token, a server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.alerting.store import Store
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.detection.settings import build_detector
from mamori.sensor.web.auth import create_token_file
from tests.conftest import PROJECT, corpus_path, unavailable

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
        assets = {**old_assets, **{a["ip"]: a for a in inv.asset_docs()}}
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
    """The Modbus sample: M1, M2, M3, M5, M14 (and the chains C1, C2) between 127.0.0.1
    peers."""
    path = tmp_path / "mamori.db"
    replay_into_store(path, [MODBUS_DEMO])
    return path


@pytest.fixture
def dnp3_capture() -> Path:
    return corpus_path(DNP3_COLD_RESTART)


# The Debian package runs the page on Debian's own interpreter and python3-starlette,
# python3-uvicorn and python3-jinja2 (bookworm: 0.26.1, 0.17.6, 3.1.2); the page is
# tested there too, with this tree on PYTHONPATH (mamori/ links its folders), as the
# package installs one mamori package beside those libraries.
DEBIAN_PYTHON = "/usr/bin/python3"
DEBIAN_DIST = "/usr/lib/python3/dist-packages"
# must come from there
DEBIAN_WEB = ("starlette", "uvicorn", "jinja2", "h11", "anyio", "prometheus_client")
CONTROL = PROJECT / "packaging" / "debian" / "control"


def package_depends() -> list[str]:
    """The python3-* packages packaging/debian/control's Depends names (no versions)."""
    text = CONTROL.read_text()
    found = re.search(r"^Depends:(.*?)^\S", text, re.M | re.S)
    assert found, f"{CONTROL}: no Depends"
    return sorted(set(re.findall(r"\b(python3-[a-z0-9.+-]+)", found.group(1))))


@dataclass(frozen=True)
class Interpreter:
    """A Python to run ``mamori web`` with, and the environment it needs."""

    python: str
    env: dict[str, str]
    versions: dict[str, str]  # module: version, as that interpreter imports them


def current_python() -> Interpreter:
    """The test run's own interpreter and the libraries pip installed for it."""
    import jinja2
    import starlette
    import uvicorn

    return Interpreter(sys.executable, {**os.environ, "PYTHONUNBUFFERED": "1"},
                       {"starlette": starlette.__version__, "uvicorn": uvicorn.__version__,
                        "jinja2": jinja2.__version__})


def debian_python() -> Interpreter:
    """Debian's python3 importing Debian's packages, as the package does, or unavailable().

    Skips (fails in CI) unless every python3-* package the Debian package depends on
    is installed (``make packaging-apt``). Anything shadowing DEBIAN_WEB (a pip
    install in /usr/local) is no test of Debian's either.
    """
    packages = package_depends()
    status = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n",
                             *packages], capture_output=True, text=True)
    installed = {line.split()[0] for line in status.stdout.splitlines()
                 if line.split()[1:2] == ["ii"]}
    missing = [p for p in packages if p not in installed]
    if missing or not Path(DEBIAN_PYTHON).exists():
        unavailable(f"Debian's {' '.join(missing) or DEBIAN_PYTHON} not installed "
                    "(make packaging-apt installs them as root)")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env.update(PYTHONPATH=str(PROJECT), PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1")
    probe = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import importlib, importlib.metadata as md, json, sys; "
         "print(json.dumps({n: [md.version(n), importlib.import_module(n).__file__] "
         "for n in sys.argv[1:]}))", *DEBIAN_WEB],
        env=env, capture_output=True, text=True, check=True)
    found = json.loads(probe.stdout)
    elsewhere = {n: f for n, (_, f) in found.items() if not f.startswith(DEBIAN_DIST + "/")}
    if elsewhere:
        unavailable(f"{DEBIAN_PYTHON} imports these from outside {DEBIAN_DIST}: {elsewhere}")
    return Interpreter(DEBIAN_PYTHON, env, {n: v for n, (v, _) in found.items()})


class WebProcess:
    """``mamori web`` as a subprocess on a free port (by default on our interpreter)."""

    def __init__(self, store: Path, token_file: Path, extra: Sequence[str] = (),
                 interpreter: Interpreter | None = None) -> None:
        python = interpreter or current_python()
        self.proc = subprocess.Popen(
            [python.python, "-m", "mamori.sensor.cli", "web", "--store", str(store),
             "--token-file", str(token_file), "--port", "0", *extra],
            cwd=PROJECT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env=python.env)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 30
        said: list[str] = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            if found:
                self.url = found.group(1)
                self.log: list[str] = []  # what it says on stderr from now on
                threading.Thread(target=self._drain, daemon=True).start()
                return
            said.append(line)
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise AssertionError(f"mamori web ({python.python}) did not start: "
                             + "".join(said[-15:]))

    def _drain(self) -> None:
        """Keep reading stderr: a full pipe would block the server's next log line."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

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
