"""One schema for the sensor's configuration: file keys, defaults, validation, CLI flags.

The site configuration is TOML (``/etc/mamori/sensor.toml``). Every key the sensor
understands is declared once, as an ``Option`` in ``SCHEMA``; from that one table we
get the defaults, the validation, the error messages, the ``--flag`` overrides and
the documentation (``mamori check-config --dump``). A key that is not in the schema
is an error, not a silent typo: a mistyped ``alowed_masters`` would otherwise leave a
site unprotected.

Every error names the file, the line and the key, e.g.::

    /etc/mamori/sensor.toml:12: [ports] modbus: 70000 is not a port number (1-65535)
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Validator = Callable[[Any], Any]  # returns the normalised value or raises ValueError


class ConfigError(Exception):
    """A configuration problem, located: ``file:line: [section] key: message``."""

    def __init__(self, file: str, line: int | None, key: str | None, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        where = f"{file}:{line}" if line else file
        what = f" {key}:" if key else ""
        super().__init__(f"{where}:{what} {message}")


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration key. ``flag`` (e.g. ``--modbus-ports``) makes it a CLI override."""

    section: str
    key: str
    default: Any
    validate: Validator
    help: str
    flag: str | None = None

    @property
    def name(self) -> str:
        return f"[{self.section}] {self.key}"


# -- validators -------------------------------------------------------------------------


def v_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def v_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def v_nonempty_str(value: Any) -> str:
    text = v_str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def v_path(value: Any) -> Path:
    return Path(v_nonempty_str(value))


def v_int_range(low: int, high: int) -> Validator:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not a whole number")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}-{high}")
        return value
    return check


def v_seconds(value: Any) -> float:
    """A duration: a number of seconds, or a string like ``"90s"``, ``"15m"``, ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_duration(value)
    else:
        raise ValueError(f"{value!r} is not a duration")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``"1h"`` → 3600.0. Used by the config and by ``--since`` style flags."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 15m, 2h, 7d)")
    return float(match.group(1)) * _UNIT[match.group(2)]


def v_ports(value: Any) -> frozenset[int]:
    items = value if isinstance(value, list) else [value]
    ports: set[int] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 < item < 65536:
            raise ValueError(f"{item!r} is not a port number (1-65535)")
        ports.add(item)
    if not ports:
        raise ValueError("at least one port is needed")
    return frozenset(ports)


def v_str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # one item, e.g. from a flag: --interface eth1
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{value!r} is not a list of strings")
    return tuple(value)


def v_networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A list of IP addresses or networks (``"10.0.0.5"``, ``"10.1.0.0/16"``)."""
    nets = []
    for item in v_str_list(value):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(nets)


def v_choice(*choices: str) -> Validator:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return str(value)
    return check


# -- the schema -------------------------------------------------------------------------

SCHEMA: list[Option] = [
    Option("sensor", "name", "mamori", v_nonempty_str,
           "a human name for this sensor, shown to operators and sent to collectors"),
    Option("sensor", "site", "", v_str,
           "the site this sensor watches (sent to collectors; empty = not said)"),
    Option("sensor", "sector", "", v_str,
           "the sector of that site, e.g. 'energy' or 'water' (sent to collectors)"),
    Option("sensor", "state_dir", Path("/var/lib/mamori"), v_path,
           "where the store, the journal and keys live", "--state-dir"),
    Option("ports", "modbus", frozenset({502}), v_ports,
           "Modbus/TCP server ports", "--modbus-ports"),
    Option("ports", "dnp3", frozenset({20000}), v_ports,
           "DNP3 ports (TCP and UDP)", "--dnp3-ports"),
    Option("limits", "max_flows", 65536, v_int_range(16, 10_000_000),
           "flows tracked at once; a full table evicts the least recently active"),
    Option("limits", "tcp_idle_timeout", 600.0, v_seconds,
           "a TCP flow with no packet for this long is closed"),
    Option("limits", "udp_idle_timeout", 120.0, v_seconds,
           "a UDP conversation with no packet for this long is closed"),
    Option("limits", "max_buffered_per_flow", 256 * 1024, v_int_range(4096, 64 * 1024 * 1024),
           "bytes of out-of-order TCP data buffered per flow"),
]


def register(options: Iterable[Option]) -> None:
    """Feature modules add their sections here, at import, so the schema stays one table."""
    known = {(o.section, o.key) for o in SCHEMA}
    for option in options:
        if (option.section, option.key) in known:
            raise AssertionError(f"duplicate config option {option.name}")
        SCHEMA.append(option)
        known.add((option.section, option.key))


@dataclass(frozen=True)
class Config:
    """Validated values by (section, key), plus where each came from."""

    values: Mapping[tuple[str, str], Any]
    sources: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def get(self, section: str, key: str) -> Any:
        return self.values[(section, key)]

    def state_path(self, section: str, key: str) -> Path:
        """A path option: as given when absolute, else under ``[sensor] state_dir``."""
        path = Path(self.get(section, key))
        return path if path.is_absolute() else Path(self.get("sensor", "state_dir")) / path

    def section(self, section: str) -> dict[str, Any]:
        return {k: v for (s, k), v in self.values.items() if s == section}


def _locate(text: str) -> dict[tuple[str, str], int]:
    """Line number of each ``key =`` under its ``[section]`` (tomllib gives no positions)."""
    lines: dict[tuple[str, str], int] = {}
    section = ""
    header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]\s*(#.*)?$")
    assignment = re.compile(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\")\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if m := header.match(line):
            section = m.group(1)
            lines.setdefault((section, ""), number)
        elif m := assignment.match(line):
            lines.setdefault((section, m.group(1).strip('"')), number)
    return lines


def _decode_error_line(err: tomllib.TOMLDecodeError) -> int | None:
    match = re.search(r"line (\d+)", str(err))
    return int(match.group(1)) if match else None


def load(path: str | Path | None, overrides: Mapping[tuple[str, str], Any] | None = None,
         schema: Iterable[Option] | None = None) -> Config:
    """Defaults, then the file (if any), then overrides (CLI flags). Validates everything."""
    options = {(o.section, o.key): o for o in (schema if schema is not None else SCHEMA)}
    values: dict[tuple[str, str], Any] = {k: o.default for k, o in options.items()}
    sources: dict[tuple[str, str], str] = {k: "default" for k in options}
    sections = {o.section for o in options.values()}
    if path is not None:
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(name, None, None, f"cannot read: {err.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(name, None, None, "not UTF-8 text") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(name, _decode_error_line(err), None,
                              f"not valid TOML: {err}") from None
        where = _locate(text)
        for section, table in data.items():
            if section not in sections:
                raise ConfigError(name, where.get((section, "")) or where.get(("", section)),
                                  f"[{section}]", "unknown section (known: "
                                  + ", ".join(sorted(sections)) + ")")
            if not isinstance(table, dict):
                raise ConfigError(name, where.get(("", section)), section,
                                  "must be a [section] table")
            for key, raw in table.items():
                option = options.get((section, key))
                line = where.get((section, key))
                if option is None:
                    known = sorted(k for s, k in options if s == section)
                    raise ConfigError(name, line, f"[{section}] {key}",
                                      f"unknown key (known in [{section}]: {', '.join(known)})")
                try:
                    values[(section, key)] = option.validate(raw)
                except ValueError as err:
                    raise ConfigError(name, line, option.name, str(err)) from None
                sources[(section, key)] = f"{name}:{line}" if line else name
    for key, raw in (overrides or {}).items():
        option = options[key]
        try:
            values[key] = option.validate(raw)
        except ValueError as err:
            raise ConfigError(option.flag or "command line", None, option.name,
                              str(err)) from None
        sources[key] = option.flag or "override"
    return Config(values, sources)


def add_flags(parser: argparse.ArgumentParser, sections: Iterable[str] | None = None) -> None:
    """Add a ``--flag`` for every option that has one (in ``sections``, if given).

    Flags take the TOML spelling of the value: ``--modbus-ports 502,15020`` becomes
    the list [502, 15020]; numbers and booleans are parsed as TOML values.
    """
    wanted = set(sections) if sections is not None else None
    for option in SCHEMA:
        if option.flag is None or (wanted is not None and option.section not in wanted):
            continue
        parser.add_argument(option.flag, dest=f"cfg:{option.section}:{option.key}",
                            metavar=option.key.upper(), default=None,
                            help=f"{option.help} (config {option.name})")


def flag_overrides(args: argparse.Namespace) -> dict[tuple[str, str], Any]:
    """The overrides given on the command line, as raw values for ``load``."""
    out: dict[tuple[str, str], Any] = {}
    for dest, text in vars(args).items():
        if not dest.startswith("cfg:") or text is None:
            continue
        _, section, key = dest.split(":", 2)
        out[(section, key)] = _flag_value(text)
    return out


def _flag_value(text: str) -> Any:
    """TOML-ish: ``502,15020`` → [502, 15020]; ``true`` → True; ``12`` → 12; else the text."""
    parts = [p.strip() for p in text.split(",")] if "," in text else None
    if parts is not None:
        return [_scalar(p) for p in parts if p]
    return _scalar(text)


def _scalar(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def dump(config: Config) -> str:
    """The effective configuration as TOML, each key commented with its source."""
    sections: dict[str, list[Option]] = {}
    for option in SCHEMA:
        sections.setdefault(option.section, []).append(option)
    out: list[str] = []
    for section, options in sections.items():
        out.append(f"\n[{section}]")
        for option in options:
            value = config.values.get((option.section, option.key), option.default)
            out.append(f"# {option.help} ({config.sources.get((option.section, option.key))})")
            out.append(f"{option.key} = {_toml(value)}")
    return "\n".join(out).lstrip() + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, frozenset | set | tuple | list):
        return "[" + ", ".join(_toml(v) for v in sorted(value, key=str)) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
