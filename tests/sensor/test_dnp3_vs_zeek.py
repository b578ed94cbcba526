"""Zeek's DNP3 baselines as an oracle: the same (fc_request, fc_reply, iin) per connection.

Zeek's ``dnp3.log`` (base/protocols/dnp3/main.zeek) keeps one record per connection:
a request sets ``fc_request``; a response or unsolicited response sets ``fc_reply``
and ``iin``, writes the row and starts a fresh record; a request still pending when the
connection ends is written with no reply. We replay the same trace, fold our events the
same way, and compare row for row.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.alerting.eventlog import event_to_dict
from mamori.sensor.capture.replay import replay_files
from tests.conftest import CORPUS

ZeekRow = tuple[str, str, str]  # fc_request, fc_reply, iin ("-" when unset)
Conn = tuple[str, int, str, int]


def baselines() -> list[tuple[str, str]]:
    table = CORPUS / "zeek" / "BASELINES.tsv"
    if not table.exists():
        return []
    out = []
    for row in table.read_text().splitlines()[1:]:
        baseline, traces = row.split("\t")[:2]
        if baseline != "-" and (CORPUS / baseline / "dnp3.log").exists():
            out.append((baseline, traces))
    return out


def zeek_rows(log: Path) -> dict[Conn, list[ZeekRow]]:
    fields: list[str] = []
    rows: dict[Conn, list[ZeekRow]] = defaultdict(list)
    for line in log.read_text().splitlines():
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        if line.startswith("#") or not line.strip():
            continue
        rec = dict(zip(fields, line.split("\t"), strict=True))
        conn = (rec["id.orig_h"], int(rec["id.orig_p"]), rec["id.resp_h"], int(rec["id.resp_p"]))
        rows[conn].append((rec["fc_request"], rec["fc_reply"], rec["iin"]))
    return dict(rows)


def mamori_rows(path: Path) -> dict[Conn, list[ZeekRow]]:
    events: list[Any] = []
    replay_files([path], PipelineConfig(dnp3_ports=frozenset({20000})),
                 extra_sinks=[events.extend])
    pending: dict[Conn, str | None] = {}
    rows: dict[Conn, list[ZeekRow]] = defaultdict(list)
    for ev in events:
        f = event_to_dict(ev)
        if f["proto"] != "dnp3" or f["type"] not in ("request", "response", "unsolicited"):
            continue
        conn = ((f["src"], f["sport"], f["dst"], f["dport"]) if f["dport"] == 20000
                else (f["dst"], f["dport"], f["src"], f["sport"]))
        if f["type"] == "request":
            pending[conn] = f["fc_name"]
        else:
            rows[conn].append((pending.pop(conn, None) or "-", f["fc_name"],
                               str(f["iin"]) if f["iin"] is not None else "-"))
    for conn, fc in pending.items():
        if fc is not None:
            rows[conn].append((fc, "-", "-"))
    return dict(rows)


@pytest.mark.corpus
@pytest.mark.parametrize(("baseline", "traces"), baselines(), ids=lambda v: v.split(".")[-1])
def test_dnp3_log_matches_zeek(baseline: str, traces: str) -> None:
    expected = zeek_rows(CORPUS / baseline / "dnp3.log")
    ours: dict[Conn, list[ZeekRow]] = {}
    for trace in traces.split():
        ours.update(mamori_rows(CORPUS / trace))
    assert ours == expected


def test_baselines_found() -> None:
    if CORPUS.is_dir():
        assert len(baselines()) >= 14
