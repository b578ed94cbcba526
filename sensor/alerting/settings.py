"""The ``[store]`` configuration keys: the local SQLite store's (``OPTIONS``).

The store (``mamori.sensor.alerting.store``) is alerting's, so its keys are declared
here and put in the schema by ``mamori.sensor.schema``. Kept free of SQLite so the
schema can be assembled without opening anything.
"""

from __future__ import annotations

from pathlib import Path

from mamori.sensor import configkit as cfg

OPTIONS: tuple[cfg.Option, ...] = (
    cfg.Option("store", "path", Path("mamori.db"), cfg.v_path,
               "SQLite store of alerts, assets and baseline (relative to state_dir)",
               "--store"),
    cfg.Option("store", "max_age", 90 * 86400.0, cfg.v_seconds,
               "alerts older than this (by last seen) are deleted"),
    cfg.Option("store", "max_bytes", 512 * 1024 * 1024, cfg.v_int_range(1 << 20, 1 << 40),
               "the store is kept under this size by deleting the oldest alerts"),
)


def store_path(config: cfg.Config) -> Path:
    """``[store] path``: absolute, or relative to ``[sensor] state_dir``."""
    return config.state_path("store", "path")
