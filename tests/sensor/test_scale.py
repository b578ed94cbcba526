"""A few hundred simulated sensors against one real collector: every stream complete.

The simulator (``bench/sim_sensors.py``, the same one the scale bench runs with
thousands) gives each sensor its own CURVE key and connection, heartbeats, a trickle of
alerts, and leaves out a share of first sends on purpose. The collector must find
every gap (from the next message or a heartbeat), have it resent, and end with each
sensor's stream stored whole, once, in order, and marked complete.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from mamori.sensor.collector.storage import SqliteStorage
from tests.sensor.test_collector import PROJECT, Site

SENSORS = 300


def _simulator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sim_sensors",
                                                  PROJECT / "bench" / "sim_sensors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sim_sensors"] = module
    spec.loader.exec_module(module)
    return module


def test_hundreds_of_simulated_sensors_are_all_complete_with_every_gap_repaired(
        tmp_path: Path) -> None:
    sim = _simulator()
    site = Site(tmp_path, sensors=0)
    keys = site.coll_dir / "keys" / "sensors"
    secrets = tmp_path / "secrets.txt"
    sim.make_keys(SENSORS, keys, secrets)
    site.start_collector()
    try:
        report = sim.run(site.endpoint, site.coll_dir / "keys" / "collector.pub", secrets,
                         SENSORS, 2, duration=5.0, heartbeat=1.0, alert_interval=0.5,
                         drop=0.03, ack_timeout=2.0, drain=40.0, connect_rate=600.0)
    finally:
        site.stop_collector()
    assert report["sensors"] == report["connected"] == SENSORS
    assert report["complete"] == SENSORS, report
    assert report["dropped"] > 50 and report["replays"] > 0  # there were gaps to repair
    last = report["last_seq"]
    st = SqliteStorage(site.coll_dir / "collector" / "collector.db")
    try:
        names = {r[1]: r[0] for r in st._all("SELECT sensor, name FROM sensors")}
        assert len(names) == SENSORS
        lost = st._all("SELECT COUNT(*) FROM lost")[0][0]
        rows = {r.name: r for r in st.status()}
        for name, seq in last.items():
            assert seq > 5  # start record and several alerts each
            assert st.sequence(names[name]) == [(1, q) for q in range(1, seq + 1)], name
            assert rows[name].last_seq == seq and rows[name].outstanding == 0, name
            assert rows[name].complete_ts is not None, name
        assert lost == 0
    finally:
        st.close()
