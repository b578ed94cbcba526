"""``mamori verify``: Mamori against tshark (via pyshark), field by field, per frame.

Bounded: small captures only. The sweep over every Modbus and DNP3 capture of the
corpus is the slow-marked test at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.cli import main
from sensor.pipeline import PipelineConfig
from sensor.verify import VerifyReport, compare_messages, verify_capture
from tests.conftest import corpus_path, require_tool

SMALL = [
    ("icsnpp-modbus/testing/traces/modbus_example.pcap", 502, 20000),
    ("zeek/Traces/dnp3/dnp3_select_operate.pcap", 502, 20000),
    ("zeek/Traces/dnp3/dnp3_read_p20001.pcap", 502, 20001),
    ("ICS-Security-Tools/pcaps/dnp3/cold_restart_and_response.pcap", 502, 20000),
    ("icsnpp-dnp3/testing/traces/dnp3_example.pcap", 502, 20000),  # uses both gap tables
]


@pytest.mark.corpus
@pytest.mark.tshark
@pytest.mark.parametrize(("relative", "modbus", "dnp3"), SMALL)
def test_small_captures_agree(relative: str, modbus: int, dnp3: int) -> None:
    require_tool("tshark")
    report = verify_capture(corpus_path(relative),
                            PipelineConfig(modbus_ports=frozenset({modbus}),
                                           dnp3_ports=frozenset({dnp3})))
    assert report.fields, "nothing compared"
    assert report.agreed, report.render()


def test_report_counts_and_lists_disagreements_with_frames() -> None:
    report = VerifyReport("x.pcap")
    theirs = {7: [{"proto": "dnp3", "link_src": 1, "link_dst": 2, "fc": 129, "iin": 0x8000,
                   "objects": [], "objects_complete": True, "user_data": True}]}
    ours: dict[int | None, list[dict[str, object]]] = {
        7: [{"proto": "dnp3", "link_src": 1, "link_dst": 2, "fc": 129, "iin": 0x9000,
             "objects": []}]}
    compare_messages(report, "digest", theirs, ours)
    assert not report.agreed
    assert report.fields["dnp3.fc"].agree == 1
    assert report.fields["dnp3.iin"].disagree == [(7, 0x8000, 0x9000)]
    text = report.render()
    assert "frame 7: dnp3.iin: tshark 32768 mamori 36864" in text
    assert text.endswith("verdict: DISAGREEMENT")


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


#: Captures where verify still reports disagreements, with what is known. Open work:
#: each needs either a fix or a TSHARK_GAPS/TSHARK_ERRORS entry with evidence.
OPEN: dict[str, str] = {
    "ICS-Security-Tools/pcaps/ModbusTCP/mb2.pcap":
        "frame 1131 (60 bytes, 4 requests) is a '[TCP Retransmission]' to tshark, which "
        "does not dissect it; Mamori's reassembly reports its 4 requests",
    "ICS-Security-Tools/pcaps/bro/modbus/modbusBig.pcap": "frame 3150: one PDU tshark lacks",
    "ICS-Security-Tools/pcaps/bro/modbus/fuzz-72.pcap": "fuzz trace: 18 PDUs differ",
    "ICS-Security-Tools/pcaps/openics/DNP3-Malformed.pcap":
        "not investigated yet; likely the malformed-header rules of test_dnp3_vs_tshark "
        "(_view) that verify does not have",
    "arkime/tests/pcap/dnp3_synthetic.pcap":
        "not investigated yet; likely the cut-short header rule of test_dnp3_vs_tshark",
    "nDPI/tests/cfgs/default/pcap/dnp3.pcap":
        "not investigated yet; likely tshark's retransmitted fragments (every packet is "
        "in the capture three times)",
}


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.tshark
@pytest.mark.parametrize("relative", [
    pytest.param(r, marks=pytest.mark.xfail(reason=OPEN[r], strict=True)) if r in OPEN else r
    for r in _corpus_modbus_dnp3()])
def test_every_corpus_capture_agrees(relative: str) -> None:
    """The acceptance sweep (minutes: pyshark is slow). Ports as in the differential tests."""
    require_tool("tshark")
    from tests.sensor.test_dnp3_vs_tshark import PORTS as DNP3_PORTS
    from tests.sensor.test_modbus_vs_tshark import PORTS as MODBUS_PORTS

    config = PipelineConfig(modbus_ports=frozenset({MODBUS_PORTS.get(relative, 502)}),
                            dnp3_ports=frozenset(DNP3_PORTS.get(relative, (20000,))))
    report = verify_capture(corpus_path(relative), config)
    assert report.agreed, report.render(limit=5)
