"""The SQLite store: upserts, queries, retention, and surviving kill -9 mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.alerting.store import Store, StoreError


def alert(i: int, ts: float = 1000.0, severity: Severity = Severity.HIGH) -> Alert:
    return Alert(rule=f"r.{i % 3}", precursor="M7", severity=severity, attack=("T0855",),
                 title="t", proto="modbus", first_ts=ts, last_ts=ts, src="10.0.0.9",
                 dst="10.0.0.5", dport=502, unit=1, evidence={"fc": 6}, id=i)


def test_wal_upsert_and_query(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        (row,) = store.save_alerts([alert(1)])
        store.save_alerts([alert(1).bumped(2000.0, 41)])
        store.save_alerts([alert(2, 3000.0, Severity.LOW)])
        (first, second) = store.alerts()
        assert (first.id, first.count, first.last_ts) == (row, 42, 2000.0)
        assert first.evidence == {"fc": 6} and first.attack == ("T0855",)
        assert [a.id for a in store.alerts(min_severity=Severity.HIGH)] == [row]
        assert [a.id for a in store.alerts(since=2500.0)] == [second.id]
        assert [a.id for a in store.alerts(after_id=row)] == [second.id]


def test_retention_by_age_and_size(tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    with Store(tmp_path / "s.db", max_age=100.0, max_bytes=1 << 20) as store:
        # Packet times from long ago (a replayed capture): age counts from storing.
        store.save_alerts([alert(i, ts=float(i)) for i in range(1, 101)])
        assert store.prune() == 0
        clock[0] += 60.0
        store.save_alerts([alert(i, ts=float(i)) for i in range(101, 151)])
        clock[0] += 50.0
        assert store.prune() == 100  # stored 110 s ago: the first hundred aged out
        assert store.alert_count() == 50
    with Store(tmp_path / "big.db", max_bytes=1 << 20) as store:
        big = {"detail": "x" * 2000}
        store.save_alerts([Alert(
            rule="r", precursor="M7", severity=Severity.LOW, attack=(), title="t",
            proto="modbus", first_ts=float(i), last_ts=float(i), evidence=big)
            for i in range(2000)])
        assert store.size_bytes() > 1 << 20
        store.prune(now=2000.0)
        assert store.size_bytes() <= 1 << 20
        remaining = store.alerts()
        assert remaining and remaining[0].last_ts > 0  # the oldest went first
        assert store.integrity_ok()


def test_baseline_and_assets(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        assert store.load_baseline() is None
        store.save_inventory(
            [{"ip": "10.0.0.5", "last_seen": 1.0, "roles": ["outstation"]}],
            [{"proto": "modbus", "client": "a", "server": "b", "port": 502, "unit": 1,
              "link_master": None, "link_outstation": None, "last_seen": 1.0}],
            {"state": "learning"})
        assert store.load_baseline() == {"state": "learning"}
        assert store.assets()[0]["ip"] == "10.0.0.5"
        assert store.pairs()[0]["server"] == "b"


def test_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        Store(path)
    with pytest.raises(StoreError, match="no store"):
        Store(tmp_path / "missing.db", readonly=True)


WRITER = textwrap.dedent("""
    import sys
    from mamori.parsers.alerts import Alert, Severity
    from mamori.sensor.alerting.store import Store
    store = Store(sys.argv[1])
    i = 0
    while True:
        i += 1
        batch = [Alert(rule="r", precursor="M7", severity=Severity.HIGH, attack=("T0855",),
                       title="t", proto="modbus", first_ts=float(i), last_ts=float(i),
                       evidence={"n": i}, id=i * 10 + k) for k in range(10)]
        store.save_alerts(batch)
        print(i * 10, flush=True)
""")


def test_survives_kill_9_during_writes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    committed = 0
    deadline = time.monotonic() + 20
    while committed < 3000 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert committed >= 3000
    with Store(path) as store:
        assert store.integrity_ok()
        assert store.alert_count() >= committed  # everything reported committed is there
