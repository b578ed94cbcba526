"""A storm of distinct sources is bounded in alerts and in state (issue 12 item 5).

The capture (``tests/stormcap.py``, a real pcap) has a learned master, then far
more distinct rogue masters than every limit configured here: the per-rule storm
cap, the assets/pairs the inventory holds, the per-source tables (``max_state``)
and the ended connections the pipeline lets linger; then rogues that spread over
more servers than the per-rule storm targets. The assertions: each rule raises
at most its cap of ordinary alerts plus bounded storm aggregates, whose evidence
says the cap was reached and how many sources they cover; every table stays
within its limit and says what it forgot; the learned baseline is intact, so the
learned master still raises nothing; and once the storm has been quiet for two
windows, a new rogue gets an ordinary alert of its own again.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert
from mamori.parsers.pipeline import Pipeline, PipelineConfig
from mamori.sensor import config as cfg
from mamori.sensor.alerting.store import Store
from mamori.sensor.capture.pcapfile import read_capture_batches
from mamori.sensor.capture.replay import ReplaySummary, replay_files
from mamori.sensor.cli import main
from mamori.sensor.detection.engine import _STORM_TARGETS, Detector
from mamori.sensor.detection.settings import build_detector
from tests import stormcap

SOURCES = 1500  # rogue masters against the learned server
TARGETS = 40  # then rogues against as many other servers (> _STORM_TARGETS)
LEARN = 30.0
CAP = 20  # storm_max_alerts
WINDOW = 60.0  # storm_window
MAX_ASSETS = 200
MAX_STATE = 128
MAX_CLOSED = 64
STORM_RULES = ("mamori.modbus.unauthorised_write", "mamori.modbus.new_master",
               "mamori.baseline.new_pair")
LATE = "10.99.0.1"  # a rogue after the storm has been quiet for two windows
CONFIG = f"""\
[detection]
learning_period = {LEARN}
learning_min_span = {LEARN - 10}  # the master polls once a second: learned within the period
storm_max_alerts = {CAP}
storm_window = {WINDOW}
max_assets = {MAX_ASSETS}
max_state = {MAX_STATE}
"""


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(capture, config): the storm, then the learned master, then a late rogue."""
    root = tmp_path_factory.mktemp("storm")
    end = stormcap.storm_start(LEARN) + (SOURCES + TARGETS) * 0.001
    write = stormcap.write_register(10, 7)
    frames = [*stormcap.storm_frames(SOURCES, LEARN, targets=TARGETS),
              *stormcap.session(stormcap.MASTER, 39000, end + 5, [(write, write)]),
              *stormcap.session(LATE, 39001, end + 2.5 * WINDOW, [(write, write)])]
    capture = root / "storm.pcap"
    stormcap.write_pcap(capture, frames)
    config = root / "sensor.toml"
    config.write_text(CONFIG, encoding="utf-8")
    return capture, config


def _run(capture: Path, config: Path) -> tuple[Detector, ReplaySummary]:
    detector = build_detector(cfg.load(config))
    summary = replay_files([capture], PipelineConfig(max_closed_flows=MAX_CLOSED),
                           extra_sinks=[detector.process])
    return detector, summary


def _storms(alerts: list[Alert], rule: str) -> list[Alert]:
    return [a for a in alerts if a.rule == rule and a.evidence.get("storm")]


def test_storm_is_bounded_in_alerts_and_state(storm: tuple[Path, Path],
                                              caplog: pytest.LogCaptureFixture) -> None:
    capture, config = storm
    caplog.set_level(logging.WARNING, logger="mamori.detection")
    detector, summary = _run(capture, config)
    alerts = detector.alerts()
    by_rule = Counter(a.rule for a in alerts)

    # Alerts: per rule, the cap of ordinary ones, one storm aggregate per target up
    # to the storm-target limit, and one rule-wide aggregate past it.
    assert len(alerts) < 5 * (CAP + _STORM_TARGETS + 1), by_rule
    for rule in STORM_RULES:
        ordinary = [a for a in alerts if a.rule == rule and not a.evidence.get("storm")]
        folded = _storms(alerts, rule)
        assert len([a for a in ordinary if a.src != LATE]) == CAP, (rule, by_rule)
        assert folded, rule
        assert len(folded) <= _STORM_TARGETS + 1
        occurrences = sum(a.count for a in ordinary if a.src != LATE) + sum(
            a.count for a in folded)
        for alert in folded:
            ev = alert.evidence
            assert ev["cap"] == CAP and ev["window"] == WINDOW
            assert "storm cap reached" in ev["detail"]
            assert "(storm" in alert.title
            assert alert.src is None
            assert ev["sources"] >= 1
        main_storm = [a for a in folded if a.dst == stormcap.SERVER]
        assert len(main_storm) == 1
        if rule == "mamori.modbus.new_master":  # only known (learned) servers: no spread
            assert occurrences == SOURCES
            assert main_storm[0].evidence["sources"] == SOURCES - CAP
            continue
        assert occurrences == SOURCES + TARGETS
        # the learned server's storm covers every rogue past the cap, exactly
        assert main_storm[0].count == SOURCES - CAP
        assert main_storm[0].evidence["sources"] == SOURCES - CAP
        # more distinct sources than one storm aggregate remembers (max_state): still
        # counted, as an upper bound, and the evidence says it is one
        assert main_storm[0].evidence["sources_exact"] is False
        wide = [a for a in folded if a.dst is None]
        assert len(wide) == 1, rule  # more targets than _STORM_TARGETS: one rule-wide
        assert wide[0].dport is None
        per_target = [a for a in folded if a.dst is not None]
        assert len(per_target) == _STORM_TARGETS
        assert wide[0].evidence["sources"] == TARGETS - (_STORM_TARGETS - 1)
        assert "against any target" in wide[0].evidence["detail"]

    # State: every table within its limit, and each says what it forgot.
    sizes = detector.state_sizes()
    assert sizes["assets"] <= MAX_ASSETS and sizes["pairs"] <= MAX_ASSETS, sizes
    for table in ("threshold_groups", "protocol_state", "set_cache", "flow_cache",
                  "reported_masters"):
        assert sizes[table] <= MAX_STATE, (table, sizes)
    assert sizes["known_masters"] <= MAX_ASSETS
    assert sizes["open_aggregates"] <= len(alerts)
    evicted = detector.evictions()
    assert detector.stats.evicted == evicted
    assert evicted["inventory assets"] > SOURCES - MAX_ASSETS
    assert evicted["inventory pairs"] > SOURCES - MAX_ASSETS
    assert evicted["reported masters"] > 0
    assert detector.stats.storms >= 3 and detector.stats.storm_folded > 3 * (SOURCES - CAP)
    logged = caplog.text
    assert "reported masters full" in logged and "inventory assets" in logged
    assert summary.flows > SOURCES

    # The learned baseline survived: the master, the server and their pair.
    inv = detector.inventory
    assert stormcap.MASTER in inv.learned_masters
    assert stormcap.SERVER in inv.learned_outstations
    for ip in (stormcap.MASTER, stormcap.SERVER):
        assert inv.assets[ip].learned
    assert any(p.learned and p.key[1] == stormcap.MASTER for p in inv.pairs.values())
    assert not [a for a in alerts if a.src == stormcap.MASTER and a.rule in STORM_RULES]

    # Two quiet windows after the storm: the cap is open again for a new rogue.
    late = [a for a in alerts if a.src == LATE]
    assert {a.rule for a in late} >= {"mamori.modbus.unauthorised_write",
                                      "mamori.modbus.new_master"}
    assert not any(a.evidence.get("storm") for a in late)


def test_pipeline_bounds_lingering_ended_connections(storm: tuple[Path, Path]) -> None:
    capture, _ = storm
    limited = PipelineConfig(max_closed_flows=MAX_CLOSED)
    seen: list[int] = []  # the flow table's size after each packet
    pipeline = Pipeline(limited)
    events: list[Any] = []
    for _, batch in read_capture_batches(capture):
        for ts, linktype, data, frame in batch:
            events.extend(pipeline.packet(ts, linktype, data, frame))
            seen.append(pipeline.active_flows)
    events.extend(pipeline.finish())
    assert max(seen) <= MAX_CLOSED + 2  # the learned master's poll and one being set up
    assert pipeline.stats.flows_closed_early > SOURCES - MAX_CLOSED
    # the same events as with every ended connection lingering its full 30 s
    unlimited = Pipeline(PipelineConfig(max_closed_flows=10 * SOURCES))
    reference: list[Any] = []
    for _, batch in read_capture_batches(capture):
        for ts, linktype, data, frame in batch:
            reference.extend(unlimited.packet(ts, linktype, data, frame))
    reference.extend(unlimited.finish())
    assert unlimited.stats.flows_closed_early == 0
    assert events == reference


def test_storm_through_mamori_replay_into_a_store(storm: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    capture, config = storm
    db = tmp_path / "mamori.db"
    assert main(["replay", "--no-progress", "--config", str(config), "--store", str(db),
                 str(capture)]) == 0
    capsys.readouterr()
    with Store(db, readonly=True) as store:
        alerts = store.alerts()
        assets = store.assets()
    assert len(alerts) < 5 * (CAP + _STORM_TARGETS + 1)
    folded = _storms(alerts, "mamori.modbus.unauthorised_write")
    main_storm = [a for a in folded if a.dst == stormcap.SERVER]
    assert [a.evidence["sources"] for a in main_storm] == [SOURCES - CAP]
    assert len(assets) <= MAX_ASSETS
    assert {stormcap.MASTER, stormcap.SERVER} <= {a["ip"] for a in assets}
    assert main(["alerts", "--store", str(db), "--json"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(a.get("evidence", {}).get("sources") == SOURCES - CAP for a in shown)
