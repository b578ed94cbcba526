"""One session for every source (issue 13): replay flushes as it goes, live = replay.

A long capture (``COPIES`` copies of the demo capture, ``EVERY`` seconds of packet
time apart, each from a new client) is many flush intervals long. Replayed with
``--store``, the store must hold alerts while the replay is still reading, and no
publish may carry more than a few copies' worth of alerts. The same packets driven
through the daemon (``build_sensor``, frames through ``Sensor._drain``, its second
``_tick`` on the packets' clock) must store the same alerts as the replay.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mamori.sensor import config as cfg
from mamori.sensor.alerting.dispatch import AlertOutputs
from mamori.sensor.capture import replay as replay_module
from mamori.sensor.capture.pcapfile import read_capture_batches
from mamori.sensor.cli import main
from mamori.sensor.detection.session import FLUSH_EVERY
from tests.conftest import PROJECT
from tests.pcaprewrite import copies
from tests.sensor.test_zeek import CONN, DETAILED_FIELDS, DETAILED_TYPES, write_log

DEMO = PROJECT / "samples" / "modbus_demo.pcap"
COPIES = 40
EVERY = 10.0  # seconds of packet time between copies: ten flush intervals
COLUMNS = ("rule", "precursor", "severity", "count", "first_ts", "last_ts", "src", "sport",
           "dst", "dport")


@pytest.fixture(scope="module")
def long_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = copies(DEMO, tmp_path_factory.mktemp("long") / "long.pcap", COPIES, EVERY)
    assert (COPIES - 1) * EVERY > 100 * FLUSH_EVERY  # well beyond one flush interval
    return out


def _config(directory: Path) -> Path:
    conf = directory / "sensor.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{directory}"\n', encoding="utf-8")
    return conf


def _rows(store: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return list(db.execute(f"SELECT {', '.join(COLUMNS)} FROM alerts ORDER BY id"))


def _count(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM alerts").fetchone()[0])


def _published(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every non-empty batch the alert outputs are given."""
    sizes: list[int] = []
    publish = AlertOutputs.publish

    def spy(self: AlertOutputs, alerts: Any, **kwargs: Any) -> Any:
        batch = list(alerts)
        if batch:
            sizes.append(len(batch))
        return publish(self, batch, **kwargs)

    monkeypatch.setattr(AlertOutputs, "publish", spy)
    return sizes


def test_a_long_replay_stores_alerts_as_it_goes(
        long_capture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "mamori.db"
    seen: list[tuple[int, int]] = []  # (frames read so far, alerts in the store)

    def small_batches(path: Any) -> Iterator[tuple[int, list[Any]]]:
        frames = 0
        for done, batch in read_capture_batches(path):
            for start in range(0, len(batch), 50):
                seen.append((frames, _count(store)))
                frames += len(batch[start:start + 50])
                yield done, batch[start:start + 50]

    monkeypatch.setattr(replay_module, "read_capture_batches", small_batches)
    sizes = _published(monkeypatch)
    assert main(["replay", "--no-progress", "--store", str(store),
                 "--config", str(_config(tmp_path)), str(long_capture)]) == 0
    capsys.readouterr()
    total = _count(store)
    assert total >= COPIES  # every copy raises alerts of its own (a new client)
    frames = seen[-1][0]
    halfway = max(n for read, n in seen if read <= frames // 2)
    assert halfway >= total // 3, (halfway, total)  # stored while the replay went on
    assert seen[1][1] == 0  # and not before any packet said so: the counts can fail
    # What is held between flushes is a flush interval's alerts, not the capture's.
    assert len(sizes) >= COPIES and max(sizes) <= 3 * total // COPIES + 5, sizes


def test_a_zeek_log_replay_flushes_by_packet_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Zeek rows come as one batch; the session still cuts it where flushes fall due."""
    logs = tmp_path / "logs"
    logs.mkdir()
    rows = []
    for k in range(COPIES):
        conn = [f"C{k:05d}", f"10.9.0.{k + 1}", "40000", "10.8.0.1", "502"]
        assert len(conn) == len(CONN)
        rows.append([f"{7.0 + k * EVERY}", *conn, "12", "2", "DIAGNOSTICS", "-", "-", "-",
                     "-", "-", "T", "Force Listen Only Mode", "-", "\\x00\\x00", "-", "-",
                     "-"])
    write_log(logs / "modbus_detailed.log", "modbus_detailed", DETAILED_FIELDS,
              DETAILED_TYPES, rows)
    sizes = _published(monkeypatch)
    store = tmp_path / "mamori.db"
    assert main(["replay", "--zeek-logs", str(logs), "--store", str(store),
                 "--config", str(_config(tmp_path))]) == 0
    assert "records    40" in capsys.readouterr().out
    listen_only = [r for r in _rows(store) if r[0] == "mamori.modbus.listen_only"]
    assert len(listen_only) == COPIES
    assert len(sizes) >= COPIES and max(sizes) <= 2, sizes


def test_live_and_replay_store_the_same_alerts_for_the_same_packets(
        long_capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mamori.sensor.daemon.run import InterfaceHealth, build_sensor

    replayed = tmp_path / "replay"
    replayed.mkdir()
    assert main(["replay", "--no-progress", "--store", str(replayed / "mamori.db"),
                 "--config", str(_config(replayed)), str(long_capture)]) == 0
    capsys.readouterr()

    live = tmp_path / "live"
    live.mkdir()
    sensor = build_sensor(cfg.load(_config(live)), str(live / "sensor.toml"))

    class Capture:
        """One interface's packet socket, as ``Sensor._drain`` reads it."""

        interface = "tap0"

        def __init__(self) -> None:
            self.frames: list[Any] = []

        def read(self) -> list[Any]:
            out, self.frames = self.frames, []
            return out

    cap = Capture()
    sensor.health[cap.interface] = InterfaceHealth(cap.interface)
    frames = [f for _, batch in read_capture_batches(long_capture) for f in batch]
    next_tick = frames[0][0]
    ticks = 0
    for frame in frames:
        while next_tick <= frame[0]:  # the daemon's second, on the packets' clock
            sensor._tick(next_tick)
            next_tick += 1.0
            ticks += 1
        cap.frames = [frame]
        sensor._drain(cap)  # type: ignore[arg-type]
    sensor.shutdown()
    assert ticks > 100 * FLUSH_EVERY
    replay_rows = _rows(replayed / "mamori.db")
    live_rows = _rows(live / "mamori.db")
    assert len(replay_rows) >= COPIES
    assert live_rows == replay_rows
