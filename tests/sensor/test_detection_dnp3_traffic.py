"""DNP3 rules on traffic made in the test: real opendnp3 (yadnp3) stacks on loopback.

One capture, three parts. Learning: an opendnp3 master and outstation start up,
poll, operate a CROB and report events unsolicited. Attack, same stacks: the
outstation reports device trouble and a corrupt configuration (application IIN
bits), the master moves every binary input to class 0 (ASSIGN_CLASS g60v1 + g1v0,
which the outstation records), sends INITIALIZE_DATA, SAVE_CONFIG and
ACTIVATE_CONFIG, and a burst of link resets reaches the outstation (opendnp3 3.x
masters never reset the link, so those frames are built by the peer; the real
outstation ACKs each). Rogue outstation: the same real master talks to a
stand-in outstation that sets the reserved IIN2.6/2.7 bits and keeps reporting
unsolicited after the master's DISABLE_UNSOLICITED, which no opendnp3 outstation
would do. S2: the learning part with one outstation data segment cut out.

The negative for each rule is the learning part alone, learned then enforced:
the same real stacks doing their ordinary work.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert
from mamori.parsers.capfile import CaptureFileParser
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.detection import Detector, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names
from tests.conftest import captured_on_lo, unavailable
from tests.peers import dnp3_peer

RULES = load_rules([SHIPPED_RULES], set_names())
MASTER, OUTSTATION = dnp3_peer.MASTER_ADDR, dnp3_peer.OUTSTATION_ADDR
RESETS = 6
RESERVED_IIN = 0x00C0  # IIN2.6 and IIN2.7


@dataclass
class Traffic:
    pcap: Path
    gapped: Path  # the learning part with one outstation data segment removed
    port: int
    marker: float  # packet time between learning and attack
    class_assignments: list[tuple[str, str, int, int]]
    results: dict[str, str]  # what the master's tasks reported
    acks: int  # link ACKs the outstation sent back to the resets
    rogue_requests: list[int]


def _record(stacks: dnp3_peer.Stacks, results: dict[str, str]) -> None:
    results["trouble_poll"] = stacks.integrity_poll()
    results["assign_class"] = stacks.perform(22, [stacks.header_all(60, 1),
                                                  stacks.header_all(1, 0)])
    for fc in (15, 19, 31):
        results[f"fc{fc}"] = stacks.perform(fc)


def _drop_segment(source: Path, out: Path, port: int, before: float) -> Path:
    """Write ``source`` without the largest outstation→master TCP segment before ``before``.

    The capture's own records and bytes are kept; only that frame goes (and every
    frame from ``before`` on, so the gapped file is the learning part).
    """
    parser = CaptureFileParser()
    parser.receive(source.read_bytes())
    records = [r for r in parser.records() if r.ts < before]
    parser.close()

    def payload(rec: Any) -> int:
        frame: bytes = rec.data
        if rec.linktype != 1 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            return 0
        ihl = (frame[14] & 0x0F) * 4
        tcp = 14 + ihl
        if struct.unpack_from("!H", frame, tcp)[0] != port:
            return 0  # not from the outstation
        return int(struct.unpack_from("!H", frame, 16)[0]) - ihl - (frame[tcp + 12] >> 4) * 4

    victim = max(records, key=payload)
    assert payload(victim) > 0
    with out.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for rec in records:
            if rec is victim or rec.linktype != 1:
                continue
            sec = int(rec.ts)
            f.write(struct.pack("<IIII", sec, round((rec.ts - sec) * 1e6), len(rec.data),
                                max(rec.orig_len, len(rec.data))))
            f.write(rec.data)
    return out


def _make(tmp: Path) -> Traffic | None:
    port = dnp3_peer.free_port()
    pcap = tmp / "dnp3.pcap"
    results: dict[str, str] = {}
    with dnp3_peer.capture(pcap, port):
        with dnp3_peer.Stacks(port) as stacks:
            results["poll"] = stacks.integrity_poll()
            results["operate"] = stacks.direct_operate(3)
            stacks.emit_events(2)
            dnp3_peer.wait_for(lambda: stacks.unsolicited_seen() >= 2, what="unsolicited")
            time.sleep(0.1)
            marker = time.time()
            time.sleep(0.1)
            stacks.iin.update(device_trouble=True, config_corrupt=True)
            _record(stacks, results)
            reply = stacks.link_resets(RESETS)
            with stacks.seen.lock:
                assignments = list(stacks.seen.class_assignments)
        acks = reply.count(dnp3_peer.raw_link_frame(0, MASTER, OUTSTATION, prm=False,
                                                     master=False))
        with dnp3_peer.ScriptedOutstation(port, iin=RESERVED_IIN, ignore_disable=True) as rogue, \
                dnp3_peer.Stacks(port, outstation=False) as master:
            results["rogue_poll"] = master.integrity_poll()
        rogue_requests = list(rogue.requests)
    if pcap.stat().st_size < 1000:
        unavailable("tcpdump captured nothing on lo")
    if not dnp3_peer.capture_complete(pcap):
        return None
    gapped = _drop_segment(pcap, tmp / "gapped.pcap", port, marker)
    return Traffic(pcap, gapped, port, marker, assignments, results, acks, rogue_requests)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    return captured_on_lo(_make, tmp_path_factory, "dnp3traffic")


def _config(port: int) -> PipelineConfig:
    return PipelineConfig(modbus_ports=frozenset(), dnp3_ports=frozenset({port}))


def _alerts(pcap: Path, port: int, keep: Callable[[Any], bool] = lambda e: True
            ) -> list[Alert]:
    detector = Detector(RULES)
    replay_files([pcap], _config(port),
                 extra_sinks=[lambda ev: detector.process([e for e in ev if keep(e)])])
    return detector.alerts()


# rule -> (link_src, link_dst) of the alert: who the precursor comes from
TRAFFIC_RULES: dict[str, tuple[int, int]] = {
    "mamori.dnp3.assign_class": (MASTER, OUTSTATION),
    "mamori.dnp3.assign_class_zero": (MASTER, OUTSTATION),
    "mamori.dnp3.configuration": (MASTER, OUTSTATION),
    "mamori.dnp3.device_trouble": (OUTSTATION, MASTER),
    "mamori.dnp3.config_corrupt": (OUTSTATION, MASTER),
    "mamori.dnp3.link_reset_burst": (MASTER, OUTSTATION),
    "mamori.dnp3.reserved_iin": (OUTSTATION, MASTER),
    "mamori.dnp3.unsolicited_after_disable": (OUTSTATION, MASTER),
}
GAP_RULES = ("mamori.health.dnp3_gap", "mamori.health.tcp_gap")


def test_the_stacks_did_what_the_rules_look_for(traffic: Traffic) -> None:
    """The oracle side: the real outstation executed (or refused) each request."""
    assert traffic.results["poll"] == traffic.results["operate"] == "SUCCESS"
    assert traffic.results["assign_class"] == "SUCCESS"
    assert traffic.class_assignments == [("BinaryInput", "Class0", 0, 9)]
    # opendnp3 does not implement 15/19/31: it answers IIN2.0, the master calls that bad
    assert {traffic.results[f"fc{fc}"] for fc in (15, 19, 31)} == {"FAILURE_BAD_RESPONSE"}
    assert traffic.acks == RESETS  # every reset ACKed by the real outstation
    assert traffic.rogue_requests[0] == 21 and 0 in traffic.rogue_requests  # CONFIRMed


@pytest.mark.parametrize("rule", sorted(TRAFFIC_RULES))
def test_rule_fires_on_generated_dnp3_traffic(traffic: Traffic, rule: str) -> None:
    alerts = [a for a in _alerts(traffic.pcap, traffic.port) if a.rule == rule]
    assert alerts, f"{rule} did not fire"
    assert any((a.link_src, a.link_dst) == TRAFFIC_RULES[rule] for a in alerts), alerts
    assert all(a.first_ts >= traffic.marker for a in alerts)  # never in the learning part
    assert all(a.proto == "dnp3" and traffic.port in (a.sport, a.dport) for a in alerts)


def test_alert_counts_match_what_was_sent(traffic: Traffic) -> None:
    by_rule = {a.rule: a for a in _alerts(traffic.pcap, traffic.port)}
    assert by_rule["mamori.dnp3.configuration"].count == 3  # FC 15, 19, 31
    assert by_rule["mamori.dnp3.assign_class_zero"].count == 1
    assert by_rule["mamori.dnp3.link_reset_burst"].count == RESETS - 5 + 1  # from the 5th on


@pytest.mark.parametrize("rule", GAP_RULES)
def test_gap_rules_fire_on_a_segment_lost_from_a_dnp3_flow(traffic: Traffic, rule: str
                                                           ) -> None:
    alerts = [a for a in _alerts(traffic.gapped, traffic.port) if a.rule == rule]
    assert alerts, f"{rule} did not fire on the gapped capture"
    assert all(traffic.port in (a.sport, a.dport) for a in alerts)


@pytest.mark.parametrize("rule", sorted(TRAFFIC_RULES) + list(GAP_RULES))
def test_rule_quiet_on_the_learning_part(traffic: Traffic, rule: str) -> None:
    before = traffic.marker
    learned = Detector(RULES)
    replay_files([traffic.pcap], _config(traffic.port),
                 extra_sinks=[lambda ev: learned.process([e for e in ev if e.ts < before])])
    learned.inventory.freeze()
    again = Detector(RULES, inventory=learned.inventory)
    replay_files([traffic.pcap], _config(traffic.port),
                 extra_sinks=[lambda ev: again.process([e for e in ev if e.ts < before])])
    assert rule not in {a.rule for a in learned.alerts() + again.alerts()}
