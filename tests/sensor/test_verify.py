"""``mamori verify``: Mamori against tshark (via pyshark), field by field, per frame.

Bounded: small captures only. The sweep over every Modbus and DNP3 capture of the
corpus is the slow-marked test at the end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.cli import main
from mamori.sensor.verify.known import NO_NOTES, REASONS
from mamori.sensor.verify.tshark import (
    MamoriSide,
    TsharkFragment,
    VerifyReport,
    compare_messages,
    verify_capture,
)
from tests.conftest import corpus_path, require_tool
from tests.oracles.tshark_frames import frame_notes

SMALL = [
    ("icsnpp-modbus/testing/traces/modbus_example.pcap", 502, 20000),
    ("zeek/Traces/dnp3/dnp3_select_operate.pcap", 502, 20000),
    ("zeek/Traces/dnp3/dnp3_read_p20001.pcap", 502, 20001),
    ("ICS-Security-Tools/pcaps/dnp3/cold_restart_and_response.pcap", 502, 20000),
    ("icsnpp-dnp3/testing/traces/dnp3_example.pcap", 502, 20000),  # TSHARK_ERRORS, wrap
]


@pytest.mark.corpus
@pytest.mark.tshark
@pytest.mark.parametrize(("relative", "modbus", "dnp3"), SMALL)
def test_small_captures_agree(relative: str, modbus: int, dnp3: int) -> None:
    require_tool("tshark")
    path = corpus_path(relative)
    report = verify_capture(path, PipelineConfig(modbus_ports=frozenset({modbus}),
                                                 dnp3_ports=frozenset({dnp3})),
                            frame_notes(path))
    assert report.fields, "nothing compared"
    assert report.agreed, report.render()


@pytest.mark.corpus
@pytest.mark.tshark
def test_single_frames_of_a_capture_are_the_callers_notes() -> None:
    """``mamori verify`` knows no frame of any file: tshark's wrong CONFIRM in
    dnp3_example.pcap frame 311 is a disagreement there until the caller's notes (the
    tests', tests/oracles/tshark_frames.py) say what it is; then only the notes' reason."""
    require_tool("tshark")
    path = corpus_path("icsnpp-dnp3/testing/traces/dnp3_example.pcap")
    notes = frame_notes(path)
    assert list(notes.errors) == [311]
    alone = verify_capture(path, PipelineConfig())
    assert not alone.agreed
    wrong = {name: [d[0] for d in tally.disagree] for name, tally in alone.fields.items()
             if tally.disagree}
    assert wrong and all(frames == [311] for frames in wrong.values()), wrong
    assert notes.errors[311] not in alone.known
    told = verify_capture(path, PipelineConfig(), notes)
    assert told.agreed, told.render()
    assert told.known[notes.errors[311]] == [311]


def _fragment(frame: int, iin: int, link_control: int = 0x44) -> TsharkFragment:
    return TsharkFragment(frame, 1.5, 1, 2, 129, iin, (), "10.0.0.1", "10.0.0.2", 20000,
                          40000, link_control=link_control)


def _mamori(rows: dict[int | None, list[dict[str, object]]],
            events: list[dict[str, object]] | None = None) -> MamoriSide:
    return MamoriSide(rows, events or [])


def test_report_counts_and_lists_disagreements_with_frames() -> None:
    report = VerifyReport("x.pcap")
    ours = _mamori({7: [{"proto": "dnp3", "link_src": 1, "link_dst": 2, "fc": 129,
                         "iin": 0x9000, "objects": ()}]})
    compare_messages(report, NO_NOTES, [_fragment(7, 0x8000)], [], ours)
    assert not report.agreed
    assert report.fields["dnp3.fc"].agree == 1
    assert report.fields["dnp3.iin"].disagree == [(7, 0x8000, 0x9000)]
    text = report.render()
    assert "frame 7: dnp3.iin: tshark 32768 mamori 36864" in text
    assert text.endswith("verdict: DISAGREEMENT")


def test_known_tshark_error_needs_mamoris_evidence() -> None:
    """A general rule (sensor/verify/known.py) that drops tshark's fragment is a "known tshark
    error" line only where Mamori reports why; else it is a disagreement."""
    dropped = _fragment(9, 0, link_control=0xC2)  # TEST_LINK_STATES with user data
    evidence = {"proto": "dnp3", "ts": 1.5, "src": "10.0.0.1", "sport": 20000,
                "dst": "10.0.0.2", "dport": 40000, "link_src": 1, "link_dst": 2,
                "anomaly": None, "type": "link"}
    report = VerifyReport("x.pcap")
    compare_messages(report, NO_NOTES, [dropped], [], _mamori({}, [evidence]))
    assert report.agreed
    assert list(report.known) == [REASONS["dnp3.link_function"]]
    text = report.render()
    assert "known tshark error (1 at frames 9): packet-dnp.c dissects" in text
    assert text.endswith("verdict: full agreement, except for the known tshark errors above")
    report = VerifyReport("x.pcap")
    compare_messages(report, NO_NOTES, [dropped], [], _mamori({}, []))
    assert report.fields["dnp3.evidence"].disagree == [(9, "UNKNOWN_LINK_FUNCTION|link", None)]


@pytest.mark.corpus
@pytest.mark.tshark
def test_cli_exit_status(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    require_tool("tshark")
    path = corpus_path("zeek/Traces/dnp3/dnp3_select_operate.pcap")
    assert main(["verify", str(path)]) == 0
    assert "verdict: full agreement" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "missing.pcap")]) == 2


def _corpus_modbus_dnp3() -> list[str]:
    from tests.conftest import CORPUS, corpus_captures

    if not CORPUS.is_dir():
        return []
    rows = (CORPUS / "MANIFEST.tsv").read_text().splitlines()[1:]
    protocol = {r.split("\t")[0]: r.split("\t")[4] for r in rows}
    return [str(p.relative_to(CORPUS)) for p in corpus_captures()
            if protocol.get(str(p.relative_to(CORPUS))) in ("modbus", "dnp3")
            and p.name != "modbus_big.pcap"]


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.tshark
@pytest.mark.parametrize("relative", _corpus_modbus_dnp3())
def test_every_corpus_capture_agrees(relative: str) -> None:
    """The acceptance sweep (minutes: pyshark is slow). Ports as in the differential tests.
    Full agreement everywhere, except for the known tshark errors: the general rules of
    sensor/verify/known.py and the corpus's single frames (tests/oracles/tshark_frames.py),
    each used only with Mamori's own evidence."""
    require_tool("tshark")
    from tests.sensor.test_dnp3_vs_tshark import PORTS as DNP3_PORTS
    from tests.sensor.test_modbus_vs_tshark import PORTS as MODBUS_PORTS

    config = PipelineConfig(modbus_ports=frozenset({MODBUS_PORTS.get(relative, 502)}),
                            dnp3_ports=frozenset(DNP3_PORTS.get(relative, (20000,))))
    path = corpus_path(relative)
    report = verify_capture(path, config, frame_notes(path))
    assert report.agreed, report.render(limit=5)



@pytest.mark.corpus
@pytest.mark.tshark
def test_verify_works_after_an_asyncio_run_in_the_same_thread() -> None:
    """asyncio.run() leaves the thread without a current loop (mamori subscribe, or any
    earlier caller in the process); pyshark's get_event_loop() must still get one."""
    require_tool("tshark")

    async def nothing() -> None:
        return None

    asyncio.run(nothing())
    relative, modbus, dnp3 = SMALL[0]
    report = verify_capture(corpus_path(relative), PipelineConfig(
        modbus_ports=frozenset({modbus}), dnp3_ports=frozenset({dnp3})))
    assert report.agreed, report.render()
