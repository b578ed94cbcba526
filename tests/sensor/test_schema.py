"""The configuration schema is one value, assembled in one place, whatever was imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mamori.sensor import config as cfg
from mamori.sensor import configkit, schema
from mamori.sensor.alerting import settings as store_settings
from mamori.sensor.detection import settings as detection_settings

SECTIONS = {"sensor", "ports", "limits", "output", "collect", "metrics", "capture", "health",
            "web", "packets", "detection", "store", "sets", "maintenance", "forward"}


def test_importing_config_alone_knows_every_section() -> None:
    """A fresh process that imports nothing but the config module knows every key:
    nothing depends on which feature modules a command happened to import first."""
    out = subprocess.run(
        [sys.executable, "-c", "from mamori.sensor import config as c\n"
         "print(' '.join(f'{o.section}.{o.key}' for o in c.SCHEMA))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert out == [f"{o.section}.{o.key}" for o in cfg.SCHEMA]
    assert {name.split(".")[0] for name in out} == SECTIONS
    assert len(out) == len(set(out)) == 112


def test_a_key_declared_twice_is_refused() -> None:
    twice = configkit.Option("store", "path", None, configkit.v_path, "again")
    with pytest.raises(AssertionError, match=r"duplicate config option \[store\] path"):
        schema.assemble(schema.SCHEMA, [twice])


def test_the_store_keys_are_the_stores_owners() -> None:
    """``[store]`` is alerting's (the store's owner), not detection's."""
    assert {o.section for o in store_settings.OPTIONS} == {"store"}
    assert "store" not in {o.section for o in detection_settings.OPTIONS}
    assert [o for o in cfg.SCHEMA if o.section == "store"] == list(store_settings.OPTIONS)


def test_the_checks_run_only_when_asked() -> None:
    """``check_files`` runs the schema's cross-key checks; without it they do not run."""
    bad = {("packets", "flow_bytes"): 1 << 20, ("packets", "total_bytes"): 1 << 20}
    cfg.load(None, bad)  # each value is in range: only the cross-key check objects
    with pytest.raises(cfg.ConfigError, match=r"\[packets\] total_bytes: must be at least"):
        cfg.load(None, bad, check_files=True)


def test_build_detector_without_a_config_reads_its_own_defaults() -> None:
    """No config: the defaults of detection's keys, as the whole schema has them."""
    alone = detection_settings.build_detector(None, [])
    whole = detection_settings.build_detector(cfg.load(None), [])
    assert alone.dedup_window == whole.dedup_window == 300.0
    assert alone.inventory.learning_period == whole.inventory.learning_period
