"""``mamori alerts --csv``, ``mamori assets --csv`` and ``mamori attack-layer``, on a store
filled by replaying the real demo capture and on one with alerts at known times; the
layer is checked against the ATT&CK Navigator's layer format 4.5 property tables."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.alerting.export import ALERT_COLUMNS, ASSET_COLUMNS, cell
from mamori.sensor.alerting.store import Store
from mamori.sensor.cli import main
from tests.conftest import PROJECT

DEMO = PROJECT / "samples" / "modbus_demo.pcap"

# LAYERFORMATv4_5.md: the properties a layer may have, and the valid values it names.
LAYER_KEYS = {"versions", "name", "description", "domain", "customDataURL", "filters",
              "sorting", "layout", "hideDisabled", "techniques", "gradient", "legendItems",
              "showTacticRowBackground", "tacticRowBackground",
              "selectTechniquesAcrossTactics", "selectSubtechniquesWithParent",
              "selectVisibleTechniques", "metadata", "links"}
TECHNIQUE_KEYS = {"techniqueID", "tactic", "comment", "enabled", "score", "color", "metadata",
                  "links", "showSubtechniques"}
LAYOUT_KEYS = {"layout", "showID", "showName", "showAggregateScores", "countUnscored",
               "aggregateFunction", "expandedSubtechniques"}
TECHNIQUE_ID = re.compile(r"T\d{4}(\.\d{3})?")
HEX = re.compile(r"#[0-9a-fA-F]{6}")


def check_layer(layer: dict[str, Any]) -> None:
    """Every rule of the format 4.5 that our layer touches; fails on anything else."""
    assert set(layer) <= LAYER_KEYS, set(layer) - LAYER_KEYS
    assert isinstance(layer["name"], str) and layer["name"]  # required
    assert layer["domain"] in ("enterprise-attack", "mobile-attack", "ics-attack")  # required
    versions = layer["versions"]
    assert versions["layer"] == "4.5"
    assert tuple(map(int, versions["navigator"].split("."))) >= (4, 9, 0)
    assert set(versions) <= {"attack", "navigator", "layer"}
    assert isinstance(layer.get("description", ""), str)
    assert layer.get("sorting", 0) in (0, 1, 2, 3)
    assert isinstance(layer.get("hideDisabled", False), bool)
    layout = layer.get("layout", {})
    assert set(layout) <= LAYOUT_KEYS and layout.get("layout", "side") in ("side", "flat", "mini")
    for t in layer["techniques"]:
        assert set(t) <= TECHNIQUE_KEYS and TECHNIQUE_ID.fullmatch(t["techniqueID"]), t
        assert isinstance(t.get("score", 0), int | float) and not isinstance(t.get("score"), bool)
        assert isinstance(t.get("enabled", True), bool) and isinstance(t.get("comment", ""), str)
        for m in t.get("metadata", []):
            assert set(m) == {"name", "value"} and all(isinstance(v, str) for v in m.values())
    g = layer["gradient"]
    assert len(g["colors"]) >= 2 and all(HEX.fullmatch(c) for c in g["colors"])
    assert g["maxValue"] > g["minValue"]
    for item in layer.get("legendItems", []):
        assert set(item) == {"label", "color"}
    for m in layer.get("metadata", []):
        assert set(m) == {"name", "value"} and all(isinstance(v, str) for v in m.values())
    json.dumps(layer, allow_nan=False)  # plain JSON, as the Navigator loads it


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def demo_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    conf = tmp_path / "sensor.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\n', encoding="utf-8")
    store = tmp_path / "store.db"
    assert main(["replay", "--no-progress", "--config", str(conf), "--store", str(store),
                 str(DEMO)]) == 0
    capsys.readouterr()
    return store, conf


def _csv(text: str) -> list[dict[str, str]]:
    assert "\r\n" in text  # RFC 4180 line ends
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_alerts_and_assets_csv_from_a_replayed_capture(
        demo_store: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    store, conf = demo_store
    common = ("--store", str(store), "--config", str(conf))
    status, out, err = _run(capsys, "alerts", "--csv", *common)
    assert status == 0, err
    assert out.splitlines()[0] == ",".join(ALERT_COLUMNS)
    rows = _csv(out)
    with Store(store, readonly=True) as db:
        alerts = db.alerts()
        assets = db.assets()
    assert [int(r["id"]) for r in rows] == [a.id for a in alerts]
    for row, a in zip(rows, alerts, strict=True):
        assert dt.datetime.fromisoformat(row["last_seen"]).timestamp() == pytest.approx(a.last_ts)
        assert (row["rule"], row["severity"], row["src"], row["dport"]) == (
            a.rule, a.severity.label, a.src or "", "" if a.dport is None else str(a.dport))
        assert row["attack"].split() == list(a.attack)
        assert json.loads(row["evidence"]) == a.evidence
    status, out, _ = _run(capsys, "alerts", "--csv", "--severity", "high", *common)
    assert {r["severity"] for r in _csv(out)} <= {"high", "critical"} and _csv(out)

    status, out, err = _run(capsys, "assets", "--csv", *common)
    assert status == 0, err
    got = _csv(out)
    assert list(got[0]) == list(ASSET_COLUMNS)
    assert [r["ip"] for r in got] == [a["ip"] for a in assets]
    assert json.loads(got[0]["identity"]) == assets[0]["identity"]
    assert got[0]["roles"].split() == assets[0]["roles"]

    for argv in (("alerts", "--csv", "--json"), ("alerts", "--csv", "--follow"),
                 ("assets", "--csv", "--pairs"), ("alerts", "--csv", "--since", "soon")):
        status, _, err = _run(capsys, *argv, *common)
        assert status == 2 and err.startswith("mamori "), (argv, err)


def test_attack_layer_of_a_replayed_capture(demo_store: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    store, conf = demo_store
    out_file = tmp_path / "layer.json"
    status, _, err = _run(capsys, "attack-layer", "--store", str(store), "--config", str(conf),
                          "--output", str(out_file))
    assert status == 0, err
    layer = json.loads(out_file.read_text())
    check_layer(layer)
    assert layer["domain"] == "ics-attack"
    with Store(store, readonly=True) as db:
        expected: Counter[str] = Counter()
        for a in db.alerts():
            for t in a.attack:
                expected[t] += a.count
    assert {t["techniqueID"]: t["score"] for t in layer["techniques"]} == dict(expected)
    assert layer["gradient"]["maxValue"] == max(expected.values())
    scores = [t["score"] for t in layer["techniques"]]
    assert scores == sorted(scores, reverse=True)


def _at(day: str) -> float:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()


def test_attack_layer_scores_only_the_period(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store.db"
    conf = tmp_path / "sensor.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\n[store]\nmax_age = "36500d"\n',
                    encoding="utf-8")

    def alert(rule: str, attack: tuple[str, ...], start: str, end: str, count: int,
              dst: str) -> Alert:
        return Alert(rule, "M1", Severity.HIGH, attack, rule, "modbus", _at(start), _at(end),
                     count=count, src="10.0.0.1", dst=dst, dport=502)

    with Store(store) as db:
        db.save_alerts([
            alert("r.listen_only", ("T0814", "T0804"), "2026-01-01T10:00", "2026-01-01T11:00",
                  3, "10.0.0.2"),
            alert("r.restart", ("T0814",), "2026-02-01T10:00", "2026-02-03T10:00", 2,
                  "10.0.0.3"),
            alert("r.write", ("T0836",), "2026-03-01T10:00", "2026-03-01T10:00", 7, "10.0.0.4")])
    common = ("--store", str(store), "--config", str(conf))

    def layer(*period: str) -> dict[str, int]:
        status, out, err = _run(capsys, "attack-layer", *period, *common)
        assert status == 0, err
        doc = json.loads(out)
        check_layer(doc)
        return {t["techniqueID"]: t["score"] for t in doc["techniques"]}

    assert layer() == {"T0814": 5, "T0804": 3, "T0836": 7}
    assert layer("--since", "2026-01-15", "--until", "2026-02-02") == {"T0814": 2}  # overlaps
    assert layer("--since", "2026-02-04") == {"T0836": 7}
    assert layer("--until", "2025-12-31") == {}
    status, out, _ = _run(capsys, "attack-layer", "--until", "2025-12-31", *common)
    assert json.loads(out)["gradient"]["maxValue"] == 1  # must stay above minValue
    for bad in (("--since", "last tuesday"), ("--since", "2026-02-01", "--until", "2026-01-01"),
                ("--output", str(tmp_path / "missing" / "x.json"))):
        status, _, err = _run(capsys, "attack-layer", *bad, *common)
        assert status == 2 and err.startswith("mamori attack-layer: "), (bad, err)


def test_csv_cells_never_start_a_formula() -> None:
    for hostile in ("=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"):
        assert cell(hostile).startswith("'")
    assert cell(-3) == "-3" and cell(None) == "" and cell(True) == "true"
    assert cell({"b": 1, "a": "=x"}) == '{"a":"=x","b":1}'
    assert cell(["master", "outstation"]) == "master outstation"
