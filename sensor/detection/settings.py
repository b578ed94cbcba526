"""Detection's configuration keys, and building a Detector from a loaded config.

``OPTIONS`` are detection's keys, put in the schema by ``mamori.sensor.schema``:
``[detection]`` for the engine and ``[sets]`` for the named address sets that rules
refer to (allowed masters, engineering workstations, outstations). A mistyped set
name in the config is rejected by the schema; in a rule, by the rule loader.
``[[maintenance.windows]]`` declares planned engineering work
(``mamori.sensor.detection.windows``). The ``[store]`` keys are the store's owner's,
``mamori.sensor.alerting.settings``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mamori.sensor import configkit as cfg
from mamori.sensor.detection.bounded import DEFAULT_MAX_STATE
from mamori.sensor.detection.bundle import BundleRefused, BundleStore, Refusal
from mamori.sensor.detection.engine import Detector
from mamori.sensor.detection.inventory import (
    DEFAULT_MAX_ASSETS,
    DEFAULT_MIN_CYCLES,
    DEFAULT_MIN_SPAN,
    DEFAULT_REQUEST_CEILING,
    DEFAULT_REQUEST_FACTOR,
    DEFAULT_REQUEST_WINDOW,
    Inventory,
)
from mamori.sensor.detection.loader import SHIPPED_RULES, RuleError, load_rules
from mamori.sensor.detection.model import LEARNED_SETS, Rule
from mamori.sensor.detection.windows import v_windows

log = logging.getLogger("mamori.rules")

SET_NAMES = ("allowed_masters", "engineering_workstations", "outstations")


def _v_factor(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 1 <= value <= 1_000_000:
        raise ValueError(f"{value!r} is not a number from 1 to 1000000")
    return float(value)


def _v_window(value: Any) -> float:
    seconds = cfg.v_seconds(value)
    if not seconds > 0:
        raise ValueError("a storm window must be longer than 0 s")
    return seconds


OPTIONS: tuple[cfg.Option, ...] = (
    cfg.Option("detection", "enabled", True, cfg.v_bool,
               "run the detection engine on every event"),
    cfg.Option("detection", "rules", (), cfg.v_str_list,
               "rule pack directories or files (empty: the active signed bundle, else the"
               " packs shipped with mamori)", "--rules"),
    cfg.Option("detection", "trusted_rule_keys", Path("/etc/mamori/trusted-rule-keys"),
               cfg.v_path, "directory of Ed25519 public keys (*.pub) whose rule bundles"
               " this sensor accepts"),
    cfg.Option("detection", "dedup_window", 300.0, cfg.v_seconds,
               "the same rule on the same peers within this time aggregates into one alert"),
    cfg.Option("detection", "learning_period", 7 * 86400.0, cfg.v_seconds,
               "learn the baseline for this long, then enforce (0: until 'baseline freeze')"),
    cfg.Option("detection", "learning_min_cycles", DEFAULT_MIN_CYCLES,
               cfg.v_int_range(3, 1_000_000),
               "while learning, a client becomes a learned master only after this many "
               "regular poll intervals of one read ..."),
    cfg.Option("detection", "learning_min_span", DEFAULT_MIN_SPAN, cfg.v_seconds,
               "... covering at least this long (a single connection is never enough)"),
    cfg.Option("detection", "learning_hold", 30.0, cfg.v_seconds,
               "while learning, writes and control from a client not yet polling wait this "
               "long for it to poll, then alert"),
    cfg.Option("detection", "silence_after", 900.0, cfg.v_seconds,
               "S3: alert when no ICS traffic is seen for this long (0: never)"),
    cfg.Option("detection", "values_allowed", False, cfg.v_bool,
               "let value rules put register/point values in local alert evidence"),
    cfg.Option("detection", "storm_max_alerts", 100, cfg.v_int_range(1, 1_000_000),
               "new alerts one rule may raise per storm_window; past that they fold into "
               "storm aggregates that count their sources"),
    cfg.Option("detection", "storm_window", 60.0, _v_window,
               "the window of storm_max_alerts"),
    cfg.Option("detection", "max_assets", DEFAULT_MAX_ASSETS, cfg.v_int_range(16, 10_000_000),
               "assets (and pairs) held in memory; the least recently seen unlearned go first"),
    cfg.Option("detection", "max_state", DEFAULT_MAX_STATE, cfg.v_int_range(16, 10_000_000),
               "entries per per-source detection table (threshold groups, protocol state)"),
    *(cfg.Option("sets", name, (), cfg.v_networks,
                 f"named set '{name}' for rules: IP addresses or networks")
      for name in SET_NAMES),
    cfg.Option("detection", "request_window", DEFAULT_REQUEST_WINDOW, cfg.v_positive_seconds,
               "B6: requests per communication pair are counted in windows this long"),
    cfg.Option("detection", "request_ceiling", DEFAULT_REQUEST_CEILING,
               cfg.v_int_range(1, 100_000_000),
               "B6: requests per window a pair with no learned rate may send (new pairs, "
               "and every pair while learning)"),
    cfg.Option("detection", "request_factor", DEFAULT_REQUEST_FACTOR, _v_factor,
               "B6: a learned pair may send this many times its learned peak per window"),
    cfg.Option("maintenance", "windows", (), v_windows,
               "[[maintenance.windows]]: name, timezone, weekly ('Tue 22:00-02:00') and/or"
               " dates ('2026-12-24 08:00 - 2026-12-24 18:00'), workstations, assets and"
               " optionally actions (precursors or rule ids); inside one, those actions"
               " from those workstations against those assets are recorded at info"),
)


def set_names() -> frozenset[str]:
    """Every set name a rule may use: config sets and learned ones."""
    return frozenset(SET_NAMES) | LEARNED_SETS


def bundle_store(config: cfg.Config) -> BundleStore:
    """The signed rule bundles installed on this sensor (``mamori rules install``)."""
    return BundleStore(Path(config.get("sensor", "state_dir")) / "rules")


def rule_dirs(config: cfg.Config | None) -> list[Path]:
    """What is loaded: the configured packs, else the active bundle, else the shipped."""
    dirs = config.get("detection", "rules") if config is not None else ()
    if dirs:
        return [Path(d) for d in dirs]
    active = bundle_store(config).active() if config is not None else None
    return [active.path] if active is not None else [SHIPPED_RULES]


def load_configured_rules(config: cfg.Config | None,
                          extra: Sequence[str | Path] = ()) -> list[Rule]:
    """The rules the config names (or the bundle, or the shipped packs).

    An active bundle that must not or cannot be loaded (its files changed on disk;
    the sensor was upgraded under it and its packs no longer load) is rolled back to
    the previous one, or to the shipped packs, logged and counted; the sensor keeps
    detecting. Other load failures raise ``RuleError``.
    """
    if extra:
        return load_rules(list(extra), set_names(), trust_checked=True)
    bundles = bundle_store(config) if config is not None and not config.get(
        "detection", "rules") else None
    while True:
        refused = bundles.check_active() if bundles is not None else None
        if refused is None:
            paths = rule_dirs(config)
            try:
                return load_rules(paths, set_names(), trust_checked=True)
            except RuleError as err:
                if bundles is None or paths == [SHIPPED_RULES]:
                    raise
                refused = BundleRefused(Refusal.INVALID_RULES, str(err.problems[0]))
        assert bundles is not None
        bundles.record_refusal(refused, "load")
        try:
            back: int | None = bundles.roll_back().version
        except FileNotFoundError:
            back = None
            bundles.deactivate()
        log.error("active rule bundle refused (%s: %s); now running %s", refused.reason.name,
                  refused.detail, f"bundle {back}" if back else "the shipped packs")


def build_inventory(config: cfg.Config, learn_for: float | None = None) -> Inventory:
    """An empty inventory with the config's learning settings. ``learn_for``
    (``replay --learn-for``) replaces the learning period, and its end vouches for
    the clean pollers seen, as ``baseline freeze`` does."""
    period = config.get("detection", "learning_period") if learn_for is None else learn_for
    return Inventory(period, min_cycles=config.get("detection", "learning_min_cycles"),
                     min_span=config.get("detection", "learning_min_span"),
                     vouch=learn_for is not None,
                     request_window=config.get("detection", "request_window"),
                     request_ceiling=config.get("detection", "request_ceiling"),
                     request_factor=config.get("detection", "request_factor"))


def build_detector(config: cfg.Config | None, rules: Sequence[Rule] | None = None,
                   **kwargs: Any) -> Detector:
    """A Detector configured from ``config`` (the defaults of the keys it reads when ``None``)."""
    if config is None:
        config = cfg.load(None, None, (*cfg.CORE_OPTIONS, *OPTIONS))
    if rules is None:
        rules = load_configured_rules(config)
    sets = {name: config.get("sets", name) for name in SET_NAMES}
    max_assets = config.get("detection", "max_assets")
    max_state = config.get("detection", "max_state")
    inventory = kwargs.pop("inventory", None) or build_inventory(config)
    inventory.bound(max_assets=max_assets, max_state=max_state)
    return Detector(rules, sets=sets, inventory=inventory,
                    dedup_window=config.get("detection", "dedup_window"),
                    silence_after=config.get("detection", "silence_after"),
                    values_allowed=config.get("detection", "values_allowed"),
                    storm_max_alerts=config.get("detection", "storm_max_alerts"),
                    storm_window=config.get("detection", "storm_window"),
                    hold=config.get("detection", "learning_hold"),
                    windows=config.get("maintenance", "windows"),
                    max_state=max_state, **kwargs)
