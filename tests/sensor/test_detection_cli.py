"""Operator commands end to end: replay --alerts/--store, then alerts, assets, baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mamori.sensor.cli import main
from mamori.sensor.detection import cli as detection_cli
from tests.conftest import corpus_path

ARKIME = "arkime/tests/pcap/modbus.pcap"


def test_replay_alerts_store_and_views(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pcap = corpus_path(ARKIME)
    out, store = tmp_path / "alerts.jsonl", tmp_path / "mamori.db"
    assert main(["replay", "--no-progress", "--alerts", str(out), "--store", str(store),
                 str(pcap)]) == 0
    assert "alerts " in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines
    for alert in lines:
        for key in ("rule", "precursor", "severity", "attack", "ts", "src", "dst", "proto",
                    "count"):
            assert key in alert
    assert any(a["precursor"] == "M1" for a in lines)  # the JSONL keeps all; the store ages out

    assert main(["alerts", "--store", str(store), "--json", "--severity", "high"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert shown and all(a["severity"] in ("high", "critical") for a in shown)
    naps: list[float] = []

    def ctrl_c_in_the_second_nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt  # what the operator's Ctrl-C raises there

    with monkeypatch.context() as patch:
        patch.setattr("mamori.sensor.detection.cli.time.sleep", ctrl_c_in_the_second_nap)
        assert main(["alerts", "--store", str(store), "--follow"]) == 0
    assert naps == [detection_cli.FOLLOW_INTERVAL] * 2  # two reads of the store, then Ctrl-C
    assert "[mamori.modbus.unauthorised_write]" in capsys.readouterr().out
    assert main(["alerts", "--store", str(store), "--since", "1h"]) == 0  # old packets

    assert main(["assets", "--store", str(store), "--json"]) == 0
    assets = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any("outstation" in a["roles"] for a in assets)
    assert main(["assets", "--store", str(store), "--pairs"]) == 0
    assert "modbus" in capsys.readouterr().out

    assert main(["baseline", "status", "--store", str(store)]) == 0
    assert main(["baseline", "freeze", "--store", str(store)]) == 0
    exported = tmp_path / "baseline.json"
    assert main(["baseline", "export", str(exported), "--store", str(store)]) == 0
    assert json.loads(exported.read_text())["state"] == "enforcing"
    assert main(["baseline", "import", str(exported), "--store", str(tmp_path / "b.db")]) == 0
    capsys.readouterr()
    assert main(["replay", "--no-progress", "--baseline", str(exported), str(pcap)]) == 0
    assert "baseline   enforcing" in capsys.readouterr().out


def test_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "nope"}')
    assert main(["baseline", "import", str(bad), "--store", str(tmp_path / "s.db")]) == 1
    assert "format" in capsys.readouterr().err
    assert main(["alerts", "--store", str(tmp_path / "missing.db")]) == 1
    assert main(["alerts", "--store", str(tmp_path / "s.db"), "--severity", "hgih"]) == 2


def test_a_baseline_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    """Read bounded: an endless or huge file is not read into memory whole."""
    from mamori.sensor.detection import cli as detection_cli

    path = tmp_path / "big.json"
    with path.open("wb") as out:
        out.truncate(detection_cli.MAX_BASELINE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(ValueError, match="larger than 64 MiB"):
        detection_cli.read_baseline(path)
