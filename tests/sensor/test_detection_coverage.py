"""The catalogue cannot silently lose its tests: every shipped rule has a positive and a negative.

The registry below is built from the tables the detection tests parametrize over
(so it names real test ids, not a hand-kept copy): corpus captures, Modbus
traffic made with pymodbus and nmap, DNP3 traffic made with opendnp3. A rule
added to ``rules/`` without a positive test fails here, and so does a table
entry naming a rule that no longer exists.
"""

from __future__ import annotations

from collections import defaultdict

from mamori.sensor.detection import load_rules
from mamori.sensor.detection.loader import SHIPPED_RULES
from mamori.sensor.detection.settings import set_names
from tests.sensor import test_detection_corpus as corpus
from tests.sensor import test_detection_dnp3_rates as dnp3_rates
from tests.sensor import test_detection_dnp3_traffic as dnp3_traffic
from tests.sensor import test_detection_floods as floods
from tests.sensor import test_detection_floods_state as floods_state
from tests.sensor import test_detection_traffic as modbus_traffic
from tests.sensor import test_network_traffic as network_traffic
from tests.sensor import test_scan_bounds as scan_bounds

SHIPPED = sorted(r.id for r in load_rules([SHIPPED_RULES], set_names()))


def registry() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """rule id -> test node ids proving it fires / stays quiet."""
    positive: dict[str, list[str]] = defaultdict(list)
    negative: dict[str, list[str]] = defaultdict(list)
    corpus_file = "tests/sensor/test_detection_corpus.py"
    for rule in corpus.POSITIVE:
        positive[rule].append(f"{corpus_file}::test_rule_fires_on_its_capture[{rule}]")
    for rule in (r.id for r in corpus.RULES):  # parametrized over every rule
        negative[rule].append(f"{corpus_file}::test_rule_quiet_on_benign_traffic[{rule}]")
    modbus_file = "tests/sensor/test_detection_traffic.py"
    for rule in modbus_traffic.TRAFFIC_RULES:
        positive[rule].append(f"{modbus_file}::test_rule_fires_on_generated_traffic[{rule}]")
        negative[rule].append(f"{modbus_file}::test_rule_quiet_on_the_learning_phase[{rule}]")
    dnp3_file = "tests/sensor/test_detection_dnp3_traffic.py"
    for rule in dnp3_traffic.TRAFFIC_RULES:
        positive[rule].append(f"{dnp3_file}::test_rule_fires_on_generated_dnp3_traffic[{rule}]")
    for rule in dnp3_traffic.GAP_RULES:
        positive[rule].append(
            f"{dnp3_file}::test_gap_rules_fire_on_a_segment_lost_from_a_dnp3_flow[{rule}]")
    for rule in (*dnp3_traffic.TRAFFIC_RULES, *dnp3_traffic.GAP_RULES):
        negative[rule].append(f"{dnp3_file}::test_rule_quiet_on_the_learning_part[{rule}]")
    rates_file = "tests/sensor/test_detection_dnp3_rates.py"
    for rule, (fires, quiet) in dnp3_rates.TESTS.items():
        assert all(callable(getattr(dnp3_rates, name, None)) for name in (fires, *quiet))
        positive[rule].append(f"{rates_file}::{fires}")
        negative[rule].extend(f"{rates_file}::{name}" for name in quiet)
    floods_file = "tests/sensor/test_detection_floods.py"
    for rule, (fires, quiet) in floods.TESTS.items():
        assert all(callable(getattr(floods, name, None)) for name in (fires, *quiet))
        positive[rule].append(f"{floods_file}::{fires}")
        negative[rule].extend(f"{floods_file}::{name}" for name in quiet)
    for rule in floods.REAL:
        positive[rule].append(f"{floods_file}::test_new_dnp3_rules_fire_on_real_captures[{rule}]")
    assert callable(floods_state.test_connections_past_the_cap_are_forgotten_and_said_once_an_hour)
    positive[floods_state.FULL].append(
        "tests/sensor/test_detection_floods_state.py::"
        "test_connections_past_the_cap_are_forgotten_and_said_once_an_hour")
    negative[floods_state.FULL].append(f"{floods_file}::test_new_rules_quiet_on_the_learning_parts")
    learning_file = "tests/sensor/test_detection_learning.py"
    negative["mamori.modbus.new_master"].append(
        f"{learning_file}::test_new_master_is_modbus_only")
    # (test file, its rules, the positive test, the negative test), all parametrized by rule
    for path, rules, fires_name, quiet_name in (
            ("test_network_traffic.py", network_traffic.TRAFFIC_RULES,
             "test_rule_fires_in_its_labelled_window", "test_rule_quiet_on_the_benign_phase"),
            ("test_scan_bounds.py", scan_bounds.SWEEP_RULES,
             "test_a_slash16_sweep_past_every_cap", "test_the_real_flows_alone_raise_none")):
        for rule in rules:
            positive[rule].append(f"tests/sensor/{path}::{fires_name}[{rule}]")
            negative[rule].append(f"tests/sensor/{path}::{quiet_name}[{rule}]")
    return dict(positive), dict(negative)


def test_every_shipped_rule_has_a_positive_test() -> None:
    positive, _ = registry()
    missing = [rule for rule in SHIPPED if not positive.get(rule)]
    assert missing == [], f"rules without a positive test: {missing}"


def test_every_shipped_rule_has_a_negative_test() -> None:
    _, negative = registry()
    missing = [rule for rule in SHIPPED if not negative.get(rule)]
    assert missing == [], f"rules without a negative test: {missing}"


def test_registry_names_only_shipped_rules() -> None:
    positive, negative = registry()
    stale = sorted((set(positive) | set(negative) | set(corpus.NEGATIVE)) - set(SHIPPED))
    assert stale == [], f"tests name rules that no longer exist: {stale}"


def test_traffic_tests_use_the_shipped_packs() -> None:
    for module in (corpus, modbus_traffic, dnp3_traffic, dnp3_rates, network_traffic,
                   scan_bounds, floods, floods_state):
        assert sorted(r.id for r in module.RULES) == SHIPPED, module.__name__
