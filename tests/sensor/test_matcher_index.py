"""The matcher's index: a bucket per (class, code), split on one more attribute.

Every event must meet exactly the rules it met when each candidate's whole
predicate ran, in rule order (hits come in that order, and alert ids with them).
"""

from __future__ import annotations

import itertools

from mamori.parsers.modbus.events import ModbusRequest, ModbusResponse
from mamori.parsers.modbus.pdu import EmptyPdu, ExceptionPdu
from mamori.parsers.stream import FlowId, Transport
from mamori.sensor.detection.matcher import Matchable, bucket, compile_match
from mamori.sensor.detection.model import Match, MsgType, Proto

FLOW = FlowId(Transport.TCP, "10.0.0.9", 40000, "10.0.0.5", 502)
MODBUS = frozenset({Proto.MODBUS})
RESPONSE = frozenset({MsgType.RESPONSE})
REQUEST = frozenset({MsgType.REQUEST})


def picked(matches: list[Match], ev: Matchable) -> list[int]:
    """What the bucket of these matches gives ``ev``: the positions that hit."""
    found = bucket(list(enumerate(matches)))
    candidates = found.default
    if found.split is not None:
        candidates = found.by_value.get(getattr(ev, found.split, None), found.default)
    return [i for i, test in candidates if test is None or test(ev)]


def whole(matches: list[Match], ev: Matchable) -> list[int]:
    """Every predicate run in turn (what the index must agree with)."""
    return [i for i, m in enumerate(matches) if compile_match(m)(ev)]


def response(exception: int | None, unit: int = 1) -> ModbusResponse:
    return ModbusResponse(1.0, FLOW, 1, unit, 3, None, 0, 2,
                          ExceptionPdu(exception) if exception is not None else EmptyPdu(),
                          exception, 0.01, False)


RESPONSE_RULES = [
    Match(MODBUS, RESPONSE, exception=frozenset({1})),
    Match(MODBUS, RESPONSE),  # every response: in every bucket, in its place
    Match(MODBUS, RESPONSE, exception=frozenset({2}), unit=frozenset({7})),
    Match(MODBUS, RESPONSE, exception=frozenset({1, 2})),
    Match(MODBUS, RESPONSE, unit=frozenset({7})),
]


def test_a_plain_response_meets_only_the_rules_that_ask_no_exception() -> None:
    found = bucket(list(enumerate(RESPONSE_RULES)))
    assert found.split == "exception"
    assert [i for i, _ in found.default] == [1, 4]
    assert picked(RESPONSE_RULES, response(None)) == [1]
    assert picked(RESPONSE_RULES, response(None, unit=7)) == [1, 4]


def test_the_split_keeps_rule_order_and_the_remaining_checks() -> None:
    assert picked(RESPONSE_RULES, response(2)) == [1, 3]  # rule 2 also wants unit 7
    assert picked(RESPONSE_RULES, response(2, unit=7)) == [1, 2, 3, 4]
    assert picked(RESPONSE_RULES, response(1)) == [0, 1, 3]


def test_a_value_no_rule_names_meets_the_rules_without_that_check() -> None:
    assert picked(RESPONSE_RULES, response(11)) == [1]


def test_the_index_agrees_with_every_predicate_run_in_turn() -> None:
    for exception, unit in itertools.product((None, 0, 1, 2, 3, 4, 11, 255), (0, 1, 7, 255)):
        ev = response(exception, unit)
        assert picked(RESPONSE_RULES, ev) == whole(RESPONSE_RULES, ev), (exception, unit)


def test_a_rule_with_nothing_left_to_check_is_called_for_nothing() -> None:
    found = bucket([(0, Match(MODBUS, REQUEST, fc=frozenset({5}))),
                    (1, Match(MODBUS, REQUEST, fc=frozenset({5}), unit=frozenset({0})))])
    assert found.split == "unit"
    assert found.by_value[0] == ((0, None), (1, None))  # the unit was the only check
    assert found.default == ((0, None),)


def test_rules_that_check_nothing_more_make_no_split() -> None:
    found = bucket([(0, Match(MODBUS, REQUEST)), (1, Match(MODBUS, REQUEST, address=(0, 9)))])
    assert found.split is None and found.by_value == {}
    assert [i for i, _ in found.default] == [0, 1]
    request = ModbusRequest(1.0, FLOW, 1, 1, 3, None, 20, 2, EmptyPdu())
    (_, none_left), (_, address) = found.default
    assert none_left is None and address is not None and not address(request)
