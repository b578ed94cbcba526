"""The forwarder without a network: policy, audit, S4 on data loss, ``mamori audit``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.wire import Kind, decode
from mamori.sensor import config as cfg
from mamori.sensor.forwarding.cli import main
from mamori.sensor.forwarding.forwarder import EVICTION_RULE, Forwarder
from mamori.sensor.forwarding.journal import AuditEntry


def alert(i: int) -> Alert:
    t = time.time()
    return Alert("mamori.test", "M3", Severity.HIGH, (), "t", "modbus", t, t, src="10.0.0.1",
                 dst="10.0.0.2", dport=502, evidence={"fc": 16, "values": [1, 2, 3]}, id=i)


def test_policy_applies_and_s4_is_raised_on_unacked_eviction(tmp_path: Path) -> None:
    conf = cfg.load(None, {("sensor", "state_dir"): str(tmp_path),
                           ("forward", "journal_max_bytes"): 64 * 1024})
    meta: list[Alert] = []
    fw = Forwarder(conf, on_meta_alert=meta.append)
    seq = fw.submit_alert(alert(1))
    row = fw.journal.pending("x", 0, 10)[1]
    assert row.seq == seq == 2 and "values" not in decode(row.frame).body.evidence
    assert row.fields.split(",")[-1] == "evidence.fc"
    for i in range(2, 2000):
        fw.submit_alert(alert(i))
    assert meta and meta[0].precursor == "S4" and meta[0].rule == EVICTION_RULE
    s4 = [r for r in fw.journal.pending("x", 0, 100_000) if r.kind == Kind.ALERT
          and decode(r.frame).body.rule == EVICTION_RULE]
    assert s4  # the data-loss alert is forwarded too
    fw.close(0)


def test_audit_command_reports_what_was_sent(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    conf = cfg.load(None, {("sensor", "state_dir"): str(tmp_path)})
    fw = Forwarder(conf)
    fw.journal.record_audit([AuditEntry("tcp://c:1", 1, "rule,src", 120, False),
                             AuditEntry("tcp://c:1", 1, "rule,src", 120, True)])
    fw.close(0)
    assert main(["audit", "--state-dir", str(tmp_path), "--since", "1h", "--json"]) == 0
    (row,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (row["kind"], row["messages"], row["retransmits"], row["fields"]) == (
        "alert", 2, 1, ["rule", "src"])
    assert main(["audit", "--state-dir", str(tmp_path)]) == 0
    assert "tcp://c:1" in capsys.readouterr().out
