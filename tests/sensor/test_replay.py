"""``mamori replay`` end to end: the whole corpus, the big capture, the CLI contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.l2 import MacPairEvent, MacPairKind
from mamori.parsers.modbus import ModbusRequest, ModbusResponse
from mamori.parsers.packetring import PacketRing
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.cli import main
from tests.conftest import PROJECT, corpus_captures, corpus_path

SAMPLE = PROJECT / "samples" / "modbus_demo.pcap"
ALL_CAPTURES = corpus_captures()


@pytest.mark.corpus
@pytest.mark.parametrize("path", ALL_CAPTURES, ids=lambda p: p.name)
def test_every_corpus_capture_replays(path: Path) -> None:
    """Modbus, DNP3 and other traffic, broken or not: events or anomalies, never a crash."""
    events: list[Any] = []
    config = PipelineConfig(modbus_ports=frozenset({502, 15020}),
                            dnp3_ports=frozenset({20000, 20001, 20030, 20031, 20032, 20033,
                                                  20034}))
    summary = replay_files([path], config, extra_sinks=[events.extend])
    assert summary.files == 1
    for err in summary.errors:
        assert "byte" in err  # damaged files say where


def test_corpus_is_there_in_ci() -> None:
    if os.environ.get("CI"):
        assert len(ALL_CAPTURES) > 200


@pytest.mark.corpus
@pytest.mark.slow
def test_modbus_big_pairs_every_transaction() -> None:
    path = corpus_path("generated/modbus_big.pcap")
    counts: Counter[str] = Counter()
    unpaired = 0

    def sink(events: list[Any]) -> None:
        nonlocal unpaired
        for ev in events:
            if isinstance(ev, ModbusRequest):
                counts["request"] += 1
            elif isinstance(ev, ModbusResponse):
                counts["response"] += 1
                if ev.unsolicited or ev.latency is None:
                    unpaired += 1
            elif isinstance(ev, MacPairEvent) and ev.kind is MacPairKind.STARTED:
                counts["mac pair"] += 1  # one per flow, when it starts
            else:
                counts[f"other {type(ev).__name__}"] += 1

    summary = replay_files([path], PipelineConfig(modbus_ports=frozenset({15020})),
                           extra_sinks=[sink])
    assert summary.packets == 120008
    assert counts["request"] == 60000
    assert counts["response"] == 60000
    assert unpaired == 0
    assert counts["mac pair"] == summary.flows == 1
    assert set(counts) == {"request", "response", "mac pair"}, counts


@pytest.mark.corpus
@pytest.mark.parametrize("relative", ["ICS-Security-Tools/pcaps/ModbusTCP/ModbusTCP.pcap",
                                      "icsnpp-dnp3/testing/traces/dnp3_example.pcap"])
def test_batched_replay_gives_the_same_events_in_fewer_calls(relative: str) -> None:
    path = corpus_path(relative)
    config = PipelineConfig(modbus_ports=frozenset({502}), dnp3_ports=frozenset({20000}))
    calls: dict[bool, list[list[Any]]] = {False: [], True: []}
    summaries = {batched: replay_files([path], config, extra_sinks=[calls[batched].append],
                                       batched=batched)
                 for batched in (False, True)}
    one_by_one, batched = ([ev for call in calls[b] for ev in call] for b in (False, True))
    assert one_by_one and batched == one_by_one
    assert len(calls[True]) < len(calls[False]) / 10
    assert summaries[True].messages == summaries[False].messages
    assert summaries[True].anomalies == summaries[False].anomalies


def test_batched_replay_refuses_a_packet_ring() -> None:
    with pytest.raises(ValueError, match="packet ring"):
        replay_files([SAMPLE], PipelineConfig(), ring=PacketRing(), batched=True)


def test_events_jsonl_has_the_contract_keys(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    assert main(["replay", "--no-progress", str(SAMPLE), "--events", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    messages = [r for r in rows if r["proto"] == "modbus" and r["type"] != "anomaly"]
    assert len(messages) > 100
    required = {"ts", "proto", "type", "src", "sport", "dst", "dport", "tid", "unit", "fc",
                "exception", "sub", "address", "quantity", "anomaly"}
    for row in messages:
        assert required <= row.keys(), required - row.keys()
        assert isinstance(row["ts"], float)
        assert row["type"] in {"request", "response"}
    requests = [r for r in messages if r["type"] == "request"]
    assert all(r["dport"] == 502 for r in requests)
    # The intruder's session in the sample: listen-only, restart, clear counters, device id.
    subs = {(r["fc"], r["sub"]) for r in requests}
    assert {(8, 4), (8, 1), (8, 10), (43, 14)} <= subs
    exceptions = Counter(r["exception"] for r in messages if r["type"] == "response")
    assert exceptions[2] >= 5  # the address probes
    reads = [r for r in requests if r["fc"] == 3 and r["address"] == 0]
    assert reads and all(r["quantity"] in (1, 10) for r in reads)


def test_summary_counts_function_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--no-progress", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "packets    238" in out
    assert "modbus request fc=3" in out
    assert "packets/s" in out


def test_truncated_capture_reports_offset(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = SAMPLE.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])
    assert main(["replay", "--no-progress", str(cut)]) == 1
    captured = capsys.readouterr()
    assert "cut.pcap" in captured.err and "byte" in captured.err
    packets = int(captured.out.split("packets")[1].split()[0])
    assert 100 < packets < 238  # everything before the damage was processed


def test_not_a_capture_is_a_clear_error(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture file at all")
    assert main(["replay", "--no-progress", str(junk)]) == 1
    assert "junk.pcap" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as err:
        main(["replay", "--modbus-ports", "70000", str(SAMPLE)])
    assert err.value.code == 2
    assert main(["replay", str(tmp_path / "missing.pcap")]) == 2
    assert main(["replay", "--modbus-ports", "20000", str(SAMPLE)]) == 2  # clashes with DNP3


def test_installed_console_script_runs() -> None:
    mamori = Path(sys.executable).parent / "mamori"
    result = subprocess.run([str(mamori), "--version"], capture_output=True, text=True,
                            check=True)
    assert result.stdout.startswith("mamori ")


@pytest.mark.corpus
@pytest.mark.parametrize("relative", ["zeek/Traces/modbus/fuzz-72.pcap",
                                      "zeek/Traces/modbus/fuzz-1011.pcap",
                                      "zeek/Traces/dnp3/dnp3-flowbuffer-overflow-assert.pcap"])
def test_zeek_fuzz_traces_give_anomalies(relative: str) -> None:
    summary = replay_files([corpus_path(relative)],
                           PipelineConfig(modbus_ports=frozenset({502}),
                                          dnp3_ports=frozenset({20000})))
    assert not summary.errors
    assert sum(summary.anomalies.values()) > 0, summary.render()
