"""One identity per box (issue 19): per-interface daemons (mamori-sensor@eth1, @eth2)
share the box's key and state directory, yet each has its own journal and epoch stream
and says which interface it is; ``collect status`` shows one line per interface.

Real processes: a ``mamori collect`` and forwarder processes started at the same time
on one state directory, one key.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mamori.parsers.wire import Kind
from mamori.sensor.collector.storage import SqliteStorage
from tests.sensor.test_collector import PROJECT, Site

# A daemon's forwarder as `mamori run` builds it: the configured interface is part of
# its identity.
INSTANCE = """
import sys, time
from mamori.sensor import config as cfg
from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.forwarding.forwarder import Forwarder
conf, n = sys.argv[1], int(sys.argv[2])
fw = Forwarder(cfg.load(conf), health=lambda: {"pps": 1.0, "drops": 0, "flows": 1}).start()
print(fw.epoch, flush=True)
for i in range(1, n + 1):
    t = time.time()
    fw.submit_alert(Alert("mamori.test", "M3", Severity.HIGH, ("T0836",), "test", "modbus",
                          t, t, src="10.0.0.1", sport=40000 + i, dst="10.0.0.2", dport=502,
                          unit=1, evidence={"fc": 6}, id=i))
    time.sleep(0.02)
fw.close(20.0)
"""


def _instance_conf(site: Site, interface: str) -> Path:
    conf = site.tmp / f"{interface}.toml"
    text = site.sensor_confs[0].read_text()  # s0's state dir and key, shared
    conf.write_text(text.replace("[sensor]\n", f'[sensor]\ninstance = "{interface}"\n')
                    + f'[capture]\ninterfaces = ["{interface}"]\n')
    return conf


def _run(confs: list[tuple[Path, int]]) -> list[int]:
    procs = [subprocess.Popen([sys.executable, "-c", INSTANCE, str(conf), str(n)],
                              cwd=PROJECT, stdout=subprocess.PIPE, text=True)
             for conf, n in confs]
    epochs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        epochs.append(int(out.split()[0]))
    return epochs


def test_two_instances_sharing_one_key_have_their_own_epochs_and_say_which_they_are(
        tmp_path: Path) -> None:
    site = Site(tmp_path, sensors=1)
    eth1, eth2 = _instance_conf(site, "eth1"), _instance_conf(site, "eth2")
    site.start_collector()
    try:
        first1, only2 = _run([(eth1, 5), (eth2, 3)])  # at the same time
        (second1,) = _run([(eth1, 2)])
        status = subprocess.run(
            [sys.executable, "-m", "mamori.sensor.cli", "collect", "status", "--config",
             str(site.collector_conf), "--json"], cwd=PROJECT, capture_output=True,
            text=True, timeout=30, check=True)
        table = subprocess.run(
            [sys.executable, "-m", "mamori.sensor.cli", "collect", "status", "--config",
             str(site.collector_conf)], cwd=PROJECT, capture_output=True, text=True,
            timeout=30, check=True).stdout
    finally:
        site.stop_collector()
    assert len({first1, only2, second1}) == 3, (first1, only2, second1)
    assert first1 < second1
    state = tmp_path / "s0" / "forward"
    assert (state / "eth1" / "journal.db").exists() and (state / "eth2" / "journal.db").exists()
    assert not (state / "journal.db").exists()
    key = site.sensor_key("s0")
    st = SqliteStorage(site.coll_dir / "collector" / "collector.db")
    try:
        alerts = st.sequence(key, int(Kind.ALERT))
        starts = {epoch: json.loads(st.messages_after(key, epoch, 0, 1, 1)[0][4])
                  for epoch in (first1, only2, second1)}
    finally:
        st.close()
    per_epoch = {e: sum(1 for x, _ in alerts if x == e) for e in (first1, only2, second1)}
    assert per_epoch == {first1: 5, only2: 3, second1: 2}  # nothing taken for a duplicate
    assert {e: (s["event"], s["interface"], s["instance"]) for e, s in starts.items()} == {
        first1: ("start", "eth1", "eth1"), only2: ("start", "eth2", "eth2"),
        second1: ("start", "eth1", "eth1")}
    (row,) = [r for r in json.loads(status.stdout) if r["sensor"] == key]
    assert [(i["interface"], i["epoch"], i["last_seq"], i["epochs"])
            for i in row["instances"]] == [("eth1", second1, 3, 2), ("eth2", only2, 4, 1)]
    assert all(isinstance(i["last_ts"], float) for i in row["instances"])
    assert f"interface eth1: epoch {second1}, last seq 3" in table, table
    assert f"interface eth2: epoch {only2}, last seq 4" in table, table


def test_a_daemon_without_an_instance_keeps_the_one_journal_and_plain_status(
        tmp_path: Path) -> None:
    """One daemon per box, as before: forward/journal.db, no per-interface lines."""
    site = Site(tmp_path, sensors=1)
    site.start_collector()
    try:
        assert site.sensor(site.sensor_confs[0], 2).wait(timeout=40) == 0
        status = subprocess.run(
            [sys.executable, "-m", "mamori.sensor.cli", "collect", "status", "--config",
             str(site.collector_conf), "--json"], cwd=PROJECT, capture_output=True,
            text=True, timeout=30, check=True)
    finally:
        site.stop_collector()
    assert (tmp_path / "s0" / "forward" / "journal.db").exists()
    assert (tmp_path / "s0" / "forward" / "epoch").read_text() == "1\n"
    (row,) = json.loads(status.stdout)
    assert row["instances"] == [] and row["epoch"] == 1
