"""``mamori alerts`` and ``mamori assets`` on a collector's store (issue 16 item 7).

Three real sensor processes, each configured with its own name, site and sector,
forward alerts and one asset record each to a real collector; the commands then read
the collector's SQLite file, as an operator would, and select by sensor, site, sector.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sensor.test_collector import PROJECT, Site

SENSOR = """
import sys, time
from mamori.sensor import config as cfg
from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.forwarding.forwarder import Forwarder
from mamori.parsers.wire import Kind
conf, n, severity = sys.argv[1], int(sys.argv[2]), Severity.parse(sys.argv[3])
fw = Forwarder(cfg.load(conf)).start()
for i in range(1, n + 1):
    t = time.time()
    fw.submit_alert(Alert("mamori.test", "M3", severity, ("T0836",), "test write",
                          "modbus", t, t, src="10.0.0.1", sport=40000 + i, dst="10.0.0.2",
                          dport=502, unit=1, evidence={"fc": 6}, id=i))
fw.submit(Kind.ASSET, {"ip": "10.0.0.2", "identity": {"vendor": sys.argv[4]}})
fw.close(20)
"""

IDENTITIES = [("rtu-a", "harbour", "port", "high", "Acme"),
              ("rtu-b", "harbour", "water", "low", "Bolt"),
              ("rtu-c", "dam", "water", "critical", "Crane")]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A collector store filled by three sensors: 3, 4 and 5 alerts, one asset each."""
    s = Site(tmp_path_factory.mktemp("view"), sensors=3)
    for conf, (name, where, sector, _, _) in zip(s.sensor_confs, IDENTITIES, strict=True):
        conf.write_text(conf.read_text().replace(
            "[sensor]\n", f'[sensor]\nname = "{name}"\nsite = "{where}"\n'
                          f'sector = "{sector}"\n'))
    s.start_collector()
    try:
        procs = [subprocess.Popen([sys.executable, "-c", SENSOR, str(conf), str(3 + i),
                                   severity, vendor], cwd=PROJECT)
                 for i, (conf, (_, _, _, severity, vendor))
                 in enumerate(zip(s.sensor_confs, IDENTITIES, strict=True))]
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        s.stop_collector()
    yield s


def mamori(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mamori.sensor.cli", *args], cwd=PROJECT,
                          capture_output=True, text=True, timeout=60)


def db(site: Site) -> str:
    return str(site.coll_dir / "collector" / "collector.db")


def listed(site: Site, command: str, *args: str) -> list[dict[str, Any]]:
    done = mamori(site, command, "--store", db(site), "--json", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_alerts_on_a_collector_store_list_every_sensor(site: Site) -> None:
    rows = listed(site, "alerts")
    counts = {name: sum(1 for r in rows if r["sensor"] == f"s{i}")
              for i, (name, *_) in enumerate(IDENTITIES)}
    assert counts == {"rtu-a": 3, "rtu-b": 4, "rtu-c": 5}
    first = next(r for r in rows if r["sensor"] == "s2")
    assert (first["sensor_name"], first["site"], first["sector"], first["severity"]) == (
        "rtu-c", "dam", "water", "critical")
    assert first["sensor_key"] == site.sensor_key("s2")
    table = mamori(site, "alerts", "--store", db(site))
    assert table.returncode == 0, table.stderr
    assert len(table.stdout.splitlines()) == 12
    assert all(line.startswith(("s0@port/harbour ", "s1@water/harbour ", "s2@water/dam "))
               for line in table.stdout.splitlines())


def test_alerts_select_by_sensor_site_sector_and_severity(site: Site) -> None:
    assert {r["sensor"] for r in listed(site, "alerts", "--sector", "water")} == {"s1", "s2"}
    assert {r["sensor"] for r in listed(site, "alerts", "--site", "harbour")} == {"s0", "s1"}
    assert {r["sensor"] for r in listed(site, "alerts", "--site", "harbour",
                                        "--sector", "water")} == {"s1"}
    by_reported = listed(site, "alerts", "--sensor", "rtu-b")
    assert len(by_reported) == 4 and {r["sensor"] for r in by_reported} == {"s1"}
    assert len(listed(site, "alerts", "--sensor", "s2")) == 5
    # --sensor=KEY: a Z85 key may start with '-' (one in 85), which argparse takes for
    # an option after a separate --sensor (the run that found it: '-tLG5t^]Ba!w@...').
    assert len(listed(site, "alerts", f"--sensor={site.sensor_key('s0')}")) == 3
    assert {r["sensor"] for r in listed(site, "alerts", "--severity", "high")} == {"s0", "s2"}
    assert listed(site, "alerts", "--sector", "energy") == []


def test_assets_on_a_collector_store(site: Site) -> None:
    rows = listed(site, "assets")
    assert sorted((r["sensor"], r["ip"], r["identity"]["vendor"]) for r in rows) == [
        ("s0", "10.0.0.2", "Acme"), ("s1", "10.0.0.2", "Bolt"), ("s2", "10.0.0.2", "Crane")]
    assert [r["identity"]["vendor"] for r in listed(site, "assets", "--site", "dam")] == [
        "Crane"]
    table = mamori(site, "assets", "--store", db(site), "--sector", "port")
    assert table.returncode == 0 and "Acme" in table.stdout and "Bolt" not in table.stdout


def test_collector_flag_reads_the_configured_store(site: Site) -> None:
    done = mamori(site, "alerts", "--collector", "--config", str(site.collector_conf),
                  "--json", "--sector", "port")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3


def test_collector_view_usage_errors(site: Site, tmp_path: Path) -> None:
    follow = mamori(site, "alerts", "--store", db(site), "--follow")
    assert follow.returncode == 2 and "mamori subscribe" in follow.stderr
    pairs = mamori(site, "assets", "--store", db(site), "--pairs")
    assert pairs.returncode == 2 and "--pairs" in pairs.stderr
    sensor_store = tmp_path / "store.db"
    conf = tmp_path / "sensor.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\n')
    picked = mamori(site, "alerts", "--store", str(sensor_store), "--config", str(conf),
                    "--sector", "water")
    assert picked.returncode == 2 and "collector" in picked.stderr
    missing = tmp_path / "none.toml"
    missing.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\n')
    absent = mamori(site, "alerts", "--collector", "--config", str(missing))
    assert absent.returncode == 1 and "no collector store yet" in absent.stderr
