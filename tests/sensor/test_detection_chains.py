"""Campaign chains: packs load and fail with a place; the engine completes, refuses and bounds.

Events are built here (parser event classes, real flows); the traffic test
(``test_detection_chains_traffic.py``) does the same with pymodbus on loopback.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.dnp3.events import DNP3Request, ObjectHeader
from mamori.parsers.modbus.events import ModbusRequest
from mamori.parsers.modbus.pdu import Diagnostics, EmptyPdu, RawPdu, WriteSingleRegister
from mamori.parsers.stream import Direction, FlowId, Transport
from mamori.sensor.alerting.dispatch import AlertOutputs
from mamori.sensor.alerting.store import Store
from mamori.sensor.detection import Detector, RuleError, load_rules
from mamori.sensor.detection.chains import PER_TARGET_TABLE, TARGETS_TABLE, ChainTracker
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names

RULES = load_rules([SHIPPED_RULES], set_names())
RECON_THEN_ACTION = "mamori.chain.recon_then_action"
PROGRAM_THEN_RESTART = "mamori.chain.program_then_restart"


def flow(client: str, server: str, port: int = 40000) -> FlowId:
    return FlowId(Transport.TCP, client, port, server, 502)


def recon(ts: float, client: str = "10.9.9.9", server: str = "10.0.0.5") -> ModbusRequest:
    return ModbusRequest(ts, flow(client, server), 1, 1, 17, None, None, None, EmptyPdu())


def write(ts: float, client: str = "10.9.9.8", server: str = "10.0.0.5") -> ModbusRequest:
    return ModbusRequest(ts, flow(client, server, 40001), 2, 1, 6, None, 10, 1,
                         WriteSingleRegister(10, 7))


def restart(ts: float, client: str, server: str = "10.0.0.5") -> ModbusRequest:
    return ModbusRequest(ts, flow(client, server, 40002), 3, 1, 8, 1, None, None,
                         Diagnostics(1, b"\x00\x00"))


def program(ts: float, client: str, server: str = "10.0.0.5") -> ModbusRequest:
    return ModbusRequest(ts, flow(client, server, 40003), 4, 1, 90, None, None, None,
                         RawPdu(b"\x00\x02"))


def detector(**kwargs: Any) -> Detector:
    d = Detector(RULES, **kwargs)
    d.inventory.freeze()
    return d


def chains(alerts: list[Alert], rule: str = RECON_THEN_ACTION) -> list[Alert]:
    return [a for a in alerts if a.rule == rule]


# -- loading --------------------------------------------------------------------------------


def test_shipped_chains_load_and_every_step_matches_a_rule() -> None:
    ids = [c.id for c in RULES.chains]
    assert RECON_THEN_ACTION in ids and len(ids) == len(set(ids)) == 5
    tracker = ChainTracker(RULES, RULES.chains, RULES.categories)
    for ci, chain in enumerate(RULES.chains):
        assert chain.severity is Severity.CRITICAL and chain.attack
        covered: set[int] = set()
        for entries in tracker._index.values():
            for index, steps in entries:
                if index == ci:
                    covered |= steps
        assert covered == set(range(len(chain.steps))), chain.id
    recon_rules = {r.id for r in RULES if r.precursor in {"M4", "M5", "M6", "D11", "D12"}}
    assert "mamori.modbus.report_server_id" in recon_rules


SITE_CHAIN = """\
pack: site.chains
chains:
  - id: site.chain.quick
    precursor: C9
    title: quick
    attack: [T0888]
    window: 10m
    steps:
      - {name: look, category: recon}
      - {name: act, rule: mamori.modbus.unauthorised_write}
"""


def chain_problems(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "site.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(RuleError) as err:
        load_rules([SHIPPED_RULES, tmp_path], set_names())
    return [str(p) for p in err.value.problems]


def test_site_chain_uses_shipped_rules_and_categories(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(SITE_CHAIN, encoding="utf-8")
    rules = load_rules([SHIPPED_RULES, tmp_path], set_names())
    (chain,) = [c for c in rules.chains if c.id == "site.chain.quick"]
    assert chain.window == 600.0 and chain.severity is Severity.CRITICAL
    assert chain.source.endswith("site.yaml:3")


@pytest.mark.parametrize(("change", "line", "key", "fragment"), [
    (("rule: mamori.modbus.unauthorised_write", "rule: mamori.modbus.nope"), 10,
     "steps[1].rule", "'mamori.modbus.nope' is not the id of any rule loaded"),
    (("category: recon", "category: [recon, recce]"), 9, "steps[0].category",
     "'recce' is not a category defined in any pack loaded"),
    (("category: recon", "precursor: M99"), 9, "steps[0].precursor",
     "'M99' is not the precursor of any rule loaded"),
    (("window: 10m", "window: soon"), 7, "window", "'soon' has the wrong form"),
    (("window: 10m", "window: 0"), 7, "window", "longer than 0 s"),
    (("precursor: C9", "precursor: M9"), 4, "precursor", "wrong form"),
    (("    attack: [T0888]\n", ""), 3, None, "missing required key 'attack'"),
    (("{name: look, category: recon}", "{name: look}"), 9, "steps[0]",
     "a step needs rule, precursor or category"),
    (("{name: act,", "{name: look,"), 10, "steps[1].name", "named twice"),
    (("{name: look, category: recon}", "{name: look, categroy: recon}"), 9,
     "steps[0].categroy", "unknown key"),
    (("id: site.chain.quick", "id: mamori.modbus.listen_only"), 3, "id", "duplicate id"),
    (("      - {name: look, category: recon}\n",
      "".join(f"      - {{name: s{i}, category: recon}}\n" for i in range(8))), 9, "steps",
     "more than 8 items"),
])
def test_bad_chains_name_file_line_chain_and_key(
        tmp_path: Path, change: tuple[str, str], line: int, key: str | None,
        fragment: str) -> None:
    text = SITE_CHAIN.replace(*change)
    assert text != SITE_CHAIN
    (msg,) = chain_problems(tmp_path, text)
    chain_id = text.split("  - id: ", 1)[1].split("\n", 1)[0]
    where = f"{tmp_path / 'site.yaml'}:{line}: chain {chain_id}:"
    assert msg.startswith(where), msg
    if key:
        assert f" {key}: " in msg, msg
    assert fragment in msg, msg


def test_bad_categories_and_empty_packs_are_located(tmp_path: Path) -> None:
    (msg,) = chain_problems(tmp_path, "pack: site.c\ncategories:\n  recon: {precursors: [M4]}\n")
    assert msg.startswith(f"{tmp_path / 'site.yaml'}:3: category recon:")
    assert "defined twice" in msg
    (msg,) = chain_problems(tmp_path, "pack: site.c\ncategories:\n  mine: {rules: [x.y]}\n")
    assert msg.startswith(f"{tmp_path / 'site.yaml'}:3: category mine: rules:")
    (msg,) = chain_problems(tmp_path, "pack: site.c\ncategories:\n  mine: {}\n")
    assert "needs rules or precursors" in msg
    (msg,) = chain_problems(tmp_path, "pack: site.c\ndescription: nothing\n")
    assert msg == f"{tmp_path / 'site.yaml'}:1: a pack needs rules, chains or categories"


# -- the engine -----------------------------------------------------------------------------


def test_recon_then_write_on_one_target_is_one_critical_alert_naming_each_step() -> None:
    d = detector()
    d.process([recon(1000.0)])
    d.process([write(1000.0 + 1800)])
    alerts = d.alerts()
    (chain,) = chains(alerts)
    (look,) = [a for a in alerts if a.rule == "mamori.modbus.report_server_id"]
    (act,) = [a for a in alerts if a.rule == "mamori.modbus.unauthorised_write"]
    assert chain.severity is Severity.CRITICAL and chain.precursor == "C1"
    assert chain.dst == "10.0.0.5" and chain.src == "10.9.9.8"
    assert (chain.first_ts, chain.last_ts) == (1000.0, 2800.0)
    steps = chain.evidence["steps"]
    assert [(s["step"], s["rule"], s["alert"], s["ts"]) for s in steps] == [
        ("reconnaissance", look.rule, look.id, 1000.0), ("action", act.rule, act.id, 2800.0)]
    assert steps[0]["time"] == "1970-01-01T00:16:40Z"
    assert chain.evidence["clients"] == 2 and d.stats.chains == 1


def test_no_chain_on_other_targets_or_past_the_window() -> None:
    d = detector()
    d.process([recon(0.0, server="10.0.0.5"), write(10.0, server="10.0.0.6")])
    d.process([recon(5000.0, server="10.0.0.7"), write(5000.0 + 3601, server="10.0.0.7")])
    assert chains(d.alerts()) == []
    assert d._chains.expired == 1


def test_the_window_counts_from_the_latest_reconnaissance() -> None:
    d = detector()
    d.process([recon(0.0), recon(3000.0), write(4000.0)])
    (chain,) = chains(d.alerts())
    assert [s["ts"] for s in chain.evidence["steps"]] == [3000.0, 4000.0]


def test_order_matters_and_completions_aggregate() -> None:
    d = detector()
    d.process([write(0.0), recon(10.0)])
    assert chains(d.alerts()) == []  # action before reconnaissance: not the campaign
    d.process([write(20.0), recon(30.0), write(40.0)])
    (chain,) = chains(d.alerts())
    assert chain.count == 2 and chain.last_ts == 40.0  # two completions, one alert


def test_same_source_chain_needs_one_client() -> None:
    d = detector()
    d.process([program(0.0, "10.9.9.1"), restart(60.0, "10.9.9.2")])
    assert chains(d.alerts(), PROGRAM_THEN_RESTART) == []
    d.process([program(100.0, "10.9.9.3"), restart(160.0, "10.9.9.3")])
    (chain,) = chains(d.alerts(), PROGRAM_THEN_RESTART)
    assert chain.src == "10.9.9.3"
    assert [s["rule"] for s in chain.evidence["steps"]] == [
        "mamori.modbus.programming", "mamori.modbus.restart_communications"]


def test_partials_per_target_are_capped_oldest_first_and_counted() -> None:
    d = detector()
    cap = d._chains.per_target
    sources = [f"10.8.0.{i}" for i in range(cap + 8)]
    for i, src in enumerate(sources):  # same_source chain: one partial per source
        d.process([program(float(i), src)])
    assert d._chains.partials() == cap
    assert d.evictions()[PER_TARGET_TABLE] == 8
    d.process([restart(100.0, sources[0]), restart(101.0, sources[-1])])
    (chain,) = chains(d.alerts(), PROGRAM_THEN_RESTART)  # the oldest was forgotten
    assert chain.src == sources[-1]


def test_targets_are_bounded_by_max_state_and_counted() -> None:
    d = detector(max_state=16)
    for i in range(40):
        d.process([recon(float(i), server=f"10.1.0.{i}")])
    assert d._chains.partials() == 16
    assert d.evictions()[TARGETS_TABLE] == 24
    d.process([write(100.0, server="10.1.0.0"), write(101.0, server="10.1.0.39")])
    (chain,) = chains(d.alerts())
    assert chain.dst == "10.1.0.39"


def test_a_step_that_starts_nothing_on_a_new_target_still_takes_its_place() -> None:
    """An action against a target with no partial starts no chain, but it is a new
    target in a full table: the least recently used one goes, as it always has."""
    d = detector(max_state=16)
    for i in range(16):
        d.process([recon(float(i), server=f"10.1.0.{i}")])
    assert d._chains.partials() == 16 and TARGETS_TABLE not in d.evictions()
    d.process([write(50.0, server="10.2.0.1")])
    assert d._chains.partials() == 15
    assert d.evictions()[TARGETS_TABLE] == 1
    d.process([write(100.0, server="10.1.0.0"), write(101.0, server="10.1.0.15")])
    (chain,) = chains(d.alerts())  # the oldest target's reconnaissance was forgotten
    assert chain.dst == "10.1.0.15"


def test_stored_and_published_chain_names_the_store_ids_of_its_steps(tmp_path: Path) -> None:
    store = Store(tmp_path / "mamori.db")
    published: list[Alert] = []
    outputs = AlertOutputs(store, sinks=[published.extend])
    for i in range(3):  # rows before these: store ids differ from the detector's
        outputs.raise_external(Alert(rule=f"x.y{i}", precursor="S1", severity=Severity.LOW,
                                     attack=(), title="t", proto="sensor", first_ts=0.0,
                                     last_ts=0.0))
    d = detector()
    d.process([recon(0.0)])
    outputs.publish(d.drain())  # the step, in an earlier batch
    d.process([write(60.0)])
    outputs.publish(d.drain())  # the second step and the chain, in one batch
    stored = store.alerts()
    rows = {a.rule: a.id for a in stored}
    (chain,) = chains(stored)
    ids = [s["alert"] for s in chain.evidence["steps"]]
    assert ids == [rows["mamori.modbus.report_server_id"],
                   rows["mamori.modbus.unauthorised_write"]]
    detector_ids = [a.id for a in d.alerts() if a.rule in {
        "mamori.modbus.report_server_id", "mamori.modbus.unauthorised_write"}]
    assert ids != detector_ids  # they were mapped, not copied
    (sent,) = chains(published)
    assert sent.evidence["steps"] == chain.evidence["steps"] and sent.id == chain.id
    store.close()


def test_chains_on_many_targets_fold_past_the_storm_cap() -> None:
    d = detector(storm_max_alerts=5)
    for i in range(50):
        d.process([recon(float(i), server=f"10.2.0.{i}"),
                   write(i + 0.5, server=f"10.2.0.{i}")])
    alerts = chains(d.alerts())
    assert d.stats.chains == 50
    assert len(alerts) == 6 and sum(a.count for a in alerts) == 50
    (storm,) = [a for a in alerts if a.evidence.get("storm")]
    assert storm.dst is None and storm.count == 45 and "many targets" in storm.title
    assert storm.severity is Severity.CRITICAL and storm.evidence["steps"]


def _dnp3(ts: float, fc: int, client: str = "10.9.9.7", objects: tuple[ObjectHeader, ...] = ()
          ) -> DNP3Request:
    dflow = FlowId(Transport.TCP, client, 41000, "10.0.0.30", 20000)
    return DNP3Request(ts, dflow, Direction.TO_SERVER, 10, 1, 0xC0, 0, fc, None,
                       objects)


def test_dnp3_disable_control_restart_chain() -> None:
    crob = (ObjectHeader(12, 1, 0x28, None, None, 1, 2),)
    d = detector()
    d.process([_dnp3(0.0, 21), _dnp3(30.0, 5, objects=crob), _dnp3(60.0, 13)])
    (chain,) = chains(d.alerts(), "mamori.chain.dnp3_disable_control_restart")
    assert chain.dst == "10.0.0.30" and chain.proto == "dnp3"
    assert [s["step"] for s in chain.evidence["steps"]] == ["disable", "control", "restart"]
    assert chain.evidence["steps"][1]["rule"] == "mamori.dnp3.control_unauthorised"
    d = detector()  # the same three, the restart past the 15 min window
    d.process([_dnp3(0.0, 21), _dnp3(30.0, 5, objects=crob), _dnp3(901.0, 13)])
    assert chains(d.alerts(), "mamori.chain.dnp3_disable_control_restart") == []


def test_recon_seen_in_responses_targets_the_outstation() -> None:
    from mamori.parsers.modbus.events import ModbusResponse
    from mamori.parsers.modbus.pdu import ExceptionPdu
    scan = flow("10.9.9.9", "10.0.0.5")
    answers = [ModbusResponse(float(i), scan, i, 1, 90 + i, None, None, None, ExceptionPdu(1),
                              1, 0.001, False) for i in range(3)]  # FC scan: 3 x exception 01
    d = detector()
    d.process(answers)
    d.process([write(10.0)])
    (scan_alert,) = [a for a in d.alerts() if a.rule == "mamori.modbus.function_code_scan"]
    assert scan_alert.src == "10.0.0.5"  # the response's direction: from the outstation
    (chain,) = chains(d.alerts())
    assert chain.dst == "10.0.0.5"
    assert chain.evidence["steps"][0]["rule"] == "mamori.modbus.function_code_scan"
