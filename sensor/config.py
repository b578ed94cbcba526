"""The sensor's configuration, against the whole schema: load, check, dump, flags.

Every command and the daemon read the configuration here. The pieces (``Option``,
the validators, ``Config``, ``ConfigError``) are ``mamori.sensor.configkit``'s, named
here too; the options themselves are each capability's, put together in one fixed
order by ``mamori.sensor.schema``. Nothing is registered at import: the schema is
a value, so what a command knows does not depend on what happened to be imported.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mamori.sensor import configkit
from mamori.sensor.configkit import MAX_SECONDS as MAX_SECONDS
from mamori.sensor.configkit import Check as Check
from mamori.sensor.configkit import Config as Config
from mamori.sensor.configkit import ConfigError as ConfigError
from mamori.sensor.configkit import CrossCheck as CrossCheck
from mamori.sensor.configkit import Option as Option
from mamori.sensor.configkit import Problem as Problem
from mamori.sensor.configkit import Validator as Validator
from mamori.sensor.configkit import flag_overrides as flag_overrides
from mamori.sensor.configkit import parse_duration as parse_duration
from mamori.sensor.configkit import seconds_flag as seconds_flag
from mamori.sensor.configkit import v_bool as v_bool
from mamori.sensor.configkit import v_choice as v_choice
from mamori.sensor.configkit import v_int_range as v_int_range
from mamori.sensor.configkit import v_networks as v_networks
from mamori.sensor.configkit import v_nonempty_str as v_nonempty_str
from mamori.sensor.configkit import v_path as v_path
from mamori.sensor.configkit import v_ports as v_ports
from mamori.sensor.configkit import v_positive_seconds as v_positive_seconds
from mamori.sensor.configkit import v_seconds as v_seconds
from mamori.sensor.configkit import v_str as v_str
from mamori.sensor.configkit import v_str_list as v_str_list
from mamori.sensor.schema import CHECKS as CHECKS
from mamori.sensor.schema import SCHEMA as SCHEMA


def load(path: str | Path | None, overrides: Mapping[tuple[str, str], Any] | None = None,
         schema: Iterable[Option] | None = None, *, check_files: bool = False) -> Config:
    """Defaults, then the file (if any), then overrides (CLI flags), all validated.

    ``schema`` narrows or replaces the whole one (tests). ``check_files`` also runs
    the cross-key checks (``CHECKS``: key files exist, bounds fit inside each other),
    each one whose values are valid: ``check-config``, ``run`` and ``replay`` do;
    commands that create those files (``keys generate``) do not.
    """
    return configkit.load(path, overrides, SCHEMA if schema is None else schema,
                          CHECKS if check_files else ())


def add_flags(parser: argparse.ArgumentParser, sections: Iterable[str] | None = None) -> None:
    """A ``--flag`` for every option of the schema that has one (in ``sections``)."""
    configkit.add_flags(parser, SCHEMA, sections)


def add_value_flag(parser: argparse.ArgumentParser, section: str, key: str) -> None:
    """The ``--flag`` of ``[section] key``, validated as parsed (``replay --modbus-ports``)."""
    configkit.add_value_flag(parser, option(section, key))


def option(section: str, key: str) -> Option:
    """The schema's ``[section] key``."""
    return next(o for o in SCHEMA if (o.section, o.key) == (section, key))


def dump(config: Config) -> str:
    """The effective configuration as TOML, each key commented with its source."""
    return configkit.dump(config, SCHEMA)
