"""``mamori run --web``: build_sensor starts the page in a thread with live health."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mamori.sensor import cli  # noqa: F401  registers every feature's config keys, as mamori does
from mamori.sensor import config as cfg
from mamori.sensor.daemon import run as daemon
from mamori.sensor.web.auth import create_token_file
from mamori.sensor.web.server import daemon_starter


def _conf(tmp_path: Path, **web: object) -> cfg.Config:
    overrides = {("sensor", "state_dir"): str(tmp_path), ("web", "port"): 0,
                 **{("web", k): v for k, v in web.items()}}
    return cfg.load(None, overrides)


def test_run_serves_live_health(tmp_path: Path) -> None:
    create_token_file(tmp_path / "web" / "token")
    token = (tmp_path / "web" / "token").read_text().strip()
    conf = _conf(tmp_path)
    sensor = daemon.build_sensor(conf, None, web=daemon_starter(conf))
    try:
        req = urllib.request.Request(sensor.web.url + "api/health",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            health = json.load(resp)
        assert health["live"] is True
        assert {"pps", "drops", "flows", "forwarding"} <= set(health)
        assert health["forwarding"] == {"configured": False}
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(sensor.web.url + "api/health", timeout=10)
        assert refused.value.code == 401
    finally:
        sensor.shutdown()


def test_run_refuses_to_start_without_token_or_on_a_bad_address(tmp_path: Path) -> None:
    conf = _conf(tmp_path)
    with pytest.raises(daemon.StartupError, match="mamori web token"):
        daemon.build_sensor(conf, None, web=daemon_starter(conf))
    create_token_file(tmp_path / "web" / "token")
    conf = _conf(tmp_path, bind="0.0.0.0")
    with pytest.raises(daemon.StartupError, match="management_interface"):
        daemon.build_sensor(conf, None, web=daemon_starter(conf))
