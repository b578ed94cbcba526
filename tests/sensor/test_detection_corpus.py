"""Every rule on real captures: a positive (it fires) and a negative (it stays quiet).

Modes: ``learn`` is a fresh sensor (learning; the default 7-day learning period
ends by packet time, so captures spanning years also enforce); ``empty`` enforces
a reviewed baseline that knows no master (what a site that pre-loads its
baseline sees from any unknown host); ``learn+enforce`` learns over a capture,
freezes, then runs the same traffic again (the benign acceptance).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.detection import Detector, Inventory, load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names
from tests.conftest import corpus_path

pytestmark = pytest.mark.corpus

RULES = load_rules([SHIPPED_RULES], set_names())
PORTS = PipelineConfig(modbus_ports=frozenset({502, 15020}),
                       dnp3_ports=frozenset({20000, 20030}))

PLANT1 = "ct-samples/Protocols/Modbus/ModbusTCP/Plant1_ModbusTCP.pcap"
MODBUS_BIG = "zeek/Traces/modbus/modbusBig.pcap"
MODBUS_SMALL = "zeek/Traces/modbus/modbusSmall.pcap"
YADNP3 = "generated/yadnp3.pcap"
BENIGN = (PLANT1, MODBUS_BIG, MODBUS_SMALL, YADNP3)
ARKIME = "arkime/tests/pcap/modbus.pcap"
BRO_DNP3 = "ICS-Security-Tools/pcaps/bro/dnp3/dnp3.pcap"
ITI = "ICS-Security-Tools/pcaps/dnp3/"
CONF = ITI + "opendnp3-3/conformance/"


@cache
def run(capture: str, mode: str) -> tuple[Alert, ...]:
    path = corpus_path(capture)
    if mode == "learn+enforce":
        first = Detector(RULES)
        replay_files([path], PORTS, extra_sinks=[first.process])
        first.inventory.freeze()
        second = Detector(RULES, inventory=first.inventory)
        replay_files([path], PORTS, extra_sinks=[second.process])
        return tuple(first.alerts() + second.alerts())
    inventory = Inventory(7 * 86400.0)
    if mode == "empty":
        inventory.import_baseline(Inventory().export())
    detector = Detector(RULES, inventory=inventory)
    replay_files([path], PORTS, extra_sinks=[detector.process])
    return tuple(detector.alerts())


def fired(capture: str, mode: str) -> set[str]:
    return {a.rule for a in run(capture, mode)}


# rule id -> (capture, mode) where it must fire
POSITIVE: dict[str, tuple[str, str]] = {
    "mamori.modbus.listen_only": (ARKIME, "learn"),
    "mamori.modbus.restart_communications": ("suricata-verify/tests/modbus/modbus.pcap", "learn"),
    "mamori.modbus.clear_counters": (ARKIME, "learn"),
    "mamori.modbus.device_id_read": ("zeek/Traces/modbus/modbus-eit.pcap", "empty"),
    "mamori.modbus.report_server_id": (ARKIME, "learn"),
    "mamori.modbus.function_code_scan": ("ICS-Security-Tools/pcaps/bro/modbus/fuzz-72.pcap",
                                         "learn"),
    "mamori.modbus.point_scan": (ARKIME, "learn"),
    "mamori.modbus.unit_sweep": ("icsnpp-modbus/testing/traces/modbus_example.pcap", "learn"),
    "mamori.modbus.unauthorised_write": (ARKIME, "learn"),
    "mamori.modbus.programming": (ARKIME, "learn"),
    "mamori.modbus.exception_storm": ("suricata-verify/tests/modbus/modbus.pcap", "learn"),
    "mamori.modbus.malformed_framing": ("ICS-Security-Tools/pcaps/bro/modbus/fuzz-72.pcap",
                                        "learn"),
    "mamori.modbus.malformed_pdu": ("zeek/Traces/modbus/modbus-eit.pcap", "learn"),
    "mamori.modbus.response_without_request": (PLANT1, "learn"),
    "mamori.modbus.transaction_mismatch": (ARKIME, "learn"),
    "mamori.dnp3.restart": ("arkime/tests/pcap/dnp3_synthetic.pcap", "learn"),
    "mamori.dnp3.restart_unauthorised": ("arkime/tests/pcap/dnp3_synthetic.pcap", "empty"),
    "mamori.dnp3.restart_repeated": (BRO_DNP3, "learn"),
    "mamori.dnp3.application_control": (BRO_DNP3, "learn"),
    "mamori.dnp3.disable_unsolicited": (YADNP3, "learn"),
    "mamori.dnp3.disable_unsolicited_unauthorised": (YADNP3, "empty"),
    "mamori.dnp3.assign_class": (ITI + "assign_class.pcap", "learn"),
    "mamori.dnp3.file_operation": (ITI + "file_delete.pcap", "learn"),
    "mamori.dnp3.file_object": (ITI + "file_read.pcap", "learn"),
    "mamori.dnp3.control_unauthorised": (BRO_DNP3, "learn"),
    "mamori.dnp3.operate_without_select": (CONF + "8.4.1.2.10/dump.pcap", "learn"),
    "mamori.dnp3.direct_operate_no_ack": (ITI + "direct_operate_no_ack_crob.pcap", "learn"),
    "mamori.dnp3.broadcast_request": (CONF + "8.6.5.2/dump.pcap", "learn"),
    "mamori.dnp3.all_stations_indication": (CONF + "8.6.5.2/dump.pcap", "learn"),
    "mamori.dnp3.device_restart_indication": (YADNP3, "learn"),
    "mamori.dnp3.local_control": (CONF + "8.6.4.2/dump.pcap", "learn"),
    "mamori.dnp3.event_buffer_overflow": (CONF + "8.6.6.2.1/dump.pcap", "learn"),
    "mamori.dnp3.scan_indications": (BRO_DNP3, "learn"),
    "mamori.dnp3.integrity_poll_unauthorised": (BRO_DNP3, "learn"),
    "mamori.dnp3.time_write_unauthorised": (ITI + "lan_time_sync.pcap", "empty"),
    "mamori.dnp3.time_sync_unauthorised": ("ICS-Security-Tools/pcaps/bro/dnp3/dnp3_rec_time.pcap",
                                           "empty"),
    "mamori.dnp3.link_reset_unexpected": (CONF + "6.6.2.1/dump.pcap", "learn"),
    "mamori.dnp3.link_malformed": ("arkime/tests/pcap/dnp3_synthetic.pcap", "learn"),
    "mamori.dnp3.application_malformed": ("arkime/tests/pcap/dnp3_synthetic.pcap", "learn"),
    "mamori.dnp3.address_binding_drift": (BRO_DNP3, "learn"),
    "mamori.baseline.new_pair": (ARKIME, "learn"),
    "mamori.baseline.period_change": (PLANT1, "learn+enforce"),
    "mamori.health.tcp_gap": (PLANT1, "learn"),
    "mamori.health.modbus_resync": ("ICS-Security-Tools/pcaps/bro/modbus/fuzz-72.pcap", "learn"),
    "mamori.health.silence": (ARKIME, "learn"),
}

# Low-severity rules that rightly fire on benign traffic get their own negatives.
NEGATIVE: dict[str, tuple[str, str]] = {
    "mamori.modbus.response_without_request": (MODBUS_SMALL, "learn+enforce"),
    "mamori.dnp3.disable_unsolicited": ("ICS-Security-Tools/pcaps/bro/dnp3/dnp3_read.pcap",
                                        "learn"),
    "mamori.dnp3.device_restart_indication": (ITI + "assign_class.pcap", "learn"),
    # opendnp3's start-up: its null unsolicited response crosses the master's DISABLE
    # on the wire. That used to be this rule's "positive"; it is benign.
    "mamori.dnp3.unsolicited_after_disable": ("suricata-verify/tests/dnp3/dnp3-eve/input.pcap",
                                              "learn"),
    "mamori.baseline.period_change": (MODBUS_BIG, "learn+enforce"),
    # an outstation reporting about once a second for half a minute: its normal, not a
    # storm (this was the rule's positive while it counted 5 per 10 s for everyone)
    "mamori.dnp3.unsolicited_storm": ("suricata-verify/tests/dnp3/dnp3-eve/input.pcap",
                                      "learn"),
    "mamori.health.tcp_gap": (MODBUS_SMALL, "learn+enforce"),
}


@pytest.mark.parametrize("rule", sorted(POSITIVE))
def test_rule_fires_on_its_capture(rule: str) -> None:
    capture, mode = POSITIVE[rule]
    assert rule in fired(capture, mode), f"{rule} did not fire on {capture} ({mode})"


@pytest.mark.parametrize("rule", sorted(r.id for r in RULES))
def test_rule_quiet_on_benign_traffic(rule: str) -> None:
    if rule in NEGATIVE:
        capture, mode = NEGATIVE[rule]
        assert rule not in fired(capture, mode)
        return
    for capture in BENIGN:
        assert rule not in fired(capture, "learn+enforce"), capture


@pytest.mark.parametrize("capture", BENIGN)
def test_benign_captures_raise_nothing_medium_or_higher(capture: str) -> None:
    loud = [(a.rule, a.count) for a in run(capture, "learn+enforce")
            if a.severity >= Severity.MEDIUM]
    assert loud == []


def test_alerts_carry_metadata_not_values() -> None:
    for alert in run(ARKIME, "learn"):
        assert "value" not in alert.evidence and "values" not in alert.evidence
    (m1,) = [a for a in run(ARKIME, "learn") if a.rule == "mamori.modbus.listen_only"]
    assert m1.evidence["fc"] == 8 and m1.evidence["sub"] == 4
    assert m1.attack == ("T0814", "T0804", "T1691.002") and m1.count == 3
    assert m1.proto == "modbus" and m1.dport == 502 and m1.unit is not None


def test_corpus_helpers_find_files() -> None:
    assert isinstance(corpus_path(ARKIME), Path)
