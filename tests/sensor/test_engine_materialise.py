"""An aggregate's alert as drained: the same fields as ``dataclasses.replace`` made.

``_Aggregate.materialise`` returns the alert it was raised with while nothing joined
it, and otherwise builds the counted copy field by field (``engine._counted``), which
names every field of :class:`Alert` by position. These tests fail when a field is
added to ``Alert`` (or reordered) and ``_counted`` is not told.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.detection.engine import _Aggregate, _counted, _StormAggregate


def _distinct() -> Alert:
    """An alert whose every field holds a value no other field holds."""
    values: dict[str, Any] = {}
    for i, f in enumerate(dataclasses.fields(Alert)):
        if f.name == "severity":
            values[f.name] = Severity.HIGH
        elif f.name == "attack":
            values[f.name] = (f"T{i}",)
        elif f.name == "evidence":
            values[f.name] = {"field": i}
        elif f.type in ("float", float):
            values[f.name] = float(i) + 0.5
        elif f.type in ("str", str):
            values[f.name] = f"value {i}"
        else:
            values[f.name] = 1000 + i
    return Alert(**values)


def test_counted_copies_every_field_as_replace_does() -> None:
    alert = _distinct()
    evidence = {"other": True}
    made = _counted(alert, 7, 99.25, evidence)
    want = dataclasses.replace(alert, count=7, last_ts=99.25, evidence=evidence)
    for f in dataclasses.fields(Alert):
        assert getattr(made, f.name) == getattr(want, f.name), f.name
    assert made == want


def _raised() -> Alert:
    """An alert as the engine raises it: counted once."""
    return dataclasses.replace(_distinct(), count=1)


def test_an_aggregate_nothing_joined_is_its_alert() -> None:
    alert = _raised()
    agg = _Aggregate(alert, ("key",))
    assert agg.materialise() is alert


def test_a_joined_aggregate_is_a_counted_copy() -> None:
    alert = _raised()
    agg = _Aggregate(alert, ("key",))
    agg.count += 2
    assert agg.materialise() == dataclasses.replace(alert, count=3)
    agg.last_ts = alert.last_ts + 10.0
    got = agg.materialise()
    assert got == dataclasses.replace(alert, count=3, last_ts=alert.last_ts + 10)
    assert alert.count == 1  # the raised alert itself is untouched


def test_a_storm_aggregate_says_its_sources() -> None:
    alert = _raised()
    agg = _StormAggregate(alert, ("key",), limit=2)
    for source in ("a", "b", "c"):
        agg.add_source(source)
    got = agg.materialise()
    assert got == dataclasses.replace(
        alert, evidence={**alert.evidence, "sources": 3, "sources_exact": False})
    assert got is not alert
    assert got.evidence is not alert.evidence
