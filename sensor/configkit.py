"""The pieces a configuration schema is made of: options, validators, loading, flags.

The site configuration is TOML (``/etc/mamori/sensor.toml``). Every key the sensor
understands is declared once, as an ``Option``: each capability lists its own as
data (``OPTIONS`` and ``CHECKS`` in its settings module), ``mamori.sensor.schema``
puts them together in one fixed order, and ``mamori.sensor.config`` loads, checks
and dumps against that whole schema. From that one table we get the defaults, the
validation, the error messages, the ``--flag`` overrides and the documentation
(``mamori check-config --dump``). A key that is not in the schema is an error, not a
silent typo: a mistyped ``alowed_masters`` would otherwise leave a site unprotected.

This module knows no capability, so every capability can import it; the whole
schema is only known above them all (``schema``, then ``config``), which is what
keeps the imports free of circles.

Every error names the file, the line and the key, e.g.::

    /etc/mamori/sensor.toml:12: [ports] modbus: 70000 is not a port number (1-65535)
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Validator = Callable[[Any], Any]  # returns the normalised value or raises ValueError


class ConfigError(Exception):
    """A configuration problem, located: ``file:line[:column]: [section] key: message``.

    ``problems`` lists every problem ``load`` found, this one first: ``check-config``
    prints them all, the other commands only this one.
    """

    def __init__(self, file: str, line: int | None, key: str | None, message: str,
                 column: int | None = None) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        self.column = column if line else None
        where = f"{file}:{line}" if line else file
        if self.column:
            where += f":{self.column}"
        what = f" {key}:" if key else ""
        super().__init__(f"{where}:{what} {message}")
        self.problems: list[ConfigError] = [self]  # every problem found; this is the first

    @classmethod
    def collected(cls, problems: list[ConfigError]) -> ConfigError:
        """The first problem, carrying all of them (``load`` finds every one at once)."""
        first = problems[0]
        first.problems = list(problems)
        return first


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
    text = v_nonempty_str(value)
    if "\0" in text:
        raise ValueError("a path cannot contain a NUL character")
    return Path(text)


def v_int_range(low: int, high: int) -> Validator:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not a whole number")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}-{high}")
        return value
    return check


MAX_SECONDS = 100 * 365 * 86400.0  # below threading.TIMEOUT_MAX; nothing waits longer


def v_seconds(value: Any) -> float:
    """A duration: a number of seconds, or a string like ``"90s"``, ``"15m"``, ``"7d"``.

    ``nan`` and ``inf`` are refused: a NaN compares false with everything, so a NaN
    dedup window or timeout would silently switch the feature off.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} is not a duration (a finite number of seconds)")
        seconds = float(value) if abs(value) <= MAX_SECONDS else math.copysign(
            math.inf, value)
    elif isinstance(value, str):
        seconds = parse_duration(value)
    else:
        raise ValueError(f"{value!r} is not a duration")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{str(value)[:40]} is longer than 100 years")
    return seconds


def v_positive_seconds(value: Any) -> float:
    """A duration longer than zero (a timeout of 0 s would expire everything at once)."""
    seconds = v_seconds(value)
    if seconds <= 0:
        raise ValueError("the duration must be longer than 0 s")
    return seconds


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def seconds_flag(text: str) -> float:
    """argparse ``type=`` for a duration flag (``--duration 30``, ``--duration 2m``).

    The same rules as a duration in the file: ``nan``, ``inf`` and negative numbers
    are usage errors, not a loop that never ends or never starts.
    """
    try:
        number = float(text)
    except ValueError:
        number = None
    try:
        return v_seconds(number if number is not None else text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_duration(text: str) -> float:
    """``"1h"`` → 3600.0. Used by the config and by ``--since`` style flags."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 15m, 2h, 7d)")
    seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"{text[:40]!r} is too long a duration")
    return seconds


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


# -- the keys of no one capability ------------------------------------------------------

CORE_OPTIONS: tuple[Option, ...] = (  # what every process reads: who, which ports, bounds
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
    Option("limits", "max_handshakes", 4096, v_int_range(16, 10_000_000),
           "TCP handshakes on ICS ports in progress at once; a scan beyond it forgets the oldest"),
    Option("limits", "handshake_timeout", 10.0, v_positive_seconds,
           "a SYN with no answer for this long is an unanswered connection attempt"),
)


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


@dataclass(frozen=True, slots=True)
class Problem:
    """What a cross-key check found: the key at fault, and the key whose line to show."""

    section: str
    key: str
    message: str
    # Where to point (default: section, key). Longer paths point closer when the file
    # has them on lines of their own: ("forward", "collectors", 1, "server_key") is the
    # server_key line of the second [[forward.collectors]] table.
    at: tuple[str | int, ...] | None = None


Check = Callable[[Config], Iterable[Problem]]


@dataclass(frozen=True, slots=True)
class CrossCheck:
    """A check that needs more than one value or the filesystem (key files exist, ...).

    ``load(..., check_files=True)`` runs them: ``check-config``, ``run`` and ``replay``
    do; commands that create those files (``keys generate``) do not. ``reads`` are
    the (section, key) values it looks at: it is skipped when one of them is invalid
    (that value is then its default, and the check would report a consequence of the
    error already reported rather than a problem of its own).
    """

    check: Check
    reads: frozenset[tuple[str, str]]

    @classmethod
    def of(cls, check: Check, reads: Iterable[tuple[str, str]]) -> CrossCheck:
        return cls(check, frozenset(reads))


def check_state_dir(config: Config) -> list[Problem]:
    """``[sensor] state_dir`` is a directory, or can become one (start-up creates it).

    Without this a file there fails later and far away: the store reports
    ``File exists``, every key file ``Not a directory``.
    """
    path = Path(config.get("sensor", "state_dir"))
    for candidate in (path, *path.parents):  # the nearest one that exists decides
        try:
            if not candidate.exists():
                continue
            if not candidate.is_dir():
                where = "" if candidate == path else f" ({candidate} is a file)"
                return [Problem("sensor", "state_dir", f"{path}: not a directory{where}")]
        except OSError as err:
            return [Problem("sensor", "state_dir", f"{candidate}: {err.strerror or err}")]
        return []
    return []


CORE_CHECKS: tuple[CrossCheck, ...] = (CrossCheck.of(check_state_dir, [("sensor", "state_dir")]),)


_KEY_PART = r"""(?:[A-Za-z0-9_\-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_KEY_PATH = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_KEY_PATH})\s*\]\]?\s*(#.*)?$")
_ASSIGNMENT = re.compile(rf"^\s*({_KEY_PATH})\s*=(.*)$")
_MULTILINE_QUOTES = ('"' * 3, "'" * 3)


def _key_path(text: str) -> tuple[str, ...]:
    parts = re.findall(_KEY_PART, text)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


KeyPath = tuple[str | int, ...]


def _locate(text: str) -> dict[KeyPath, int]:
    """Line of the first mention of each table and key path (tomllib gives no positions).

    ``[sensor.sub]`` locates ``("sensor",)`` and ``("sensor", "sub")``; a dotted
    ``sensor.name = 5`` locates ``("sensor",)`` and ``("sensor", "name")``; the keys
    of the N-th ``[[a.b]]`` table are under ``("a", "b", N)``. Lines inside
    multi-line strings are skipped.
    """
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    arrays: dict[KeyPath, int] = {}  # [[table]] -> index of its latest element
    open_string: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if open_string is not None:
            if line.count(open_string) % 2 == 1:
                open_string = None
            continue
        if m := _HEADER.match(line):
            table = _key_path(m.group(2))
            for i in range(1, len(table) + 1):
                lines.setdefault(table[:i], number)
            if m.group(1) == "[[":
                arrays[table] = arrays.get(table, -1) + 1
                table = (*table, arrays[table])
                lines.setdefault(table, number)
        elif m := _ASSIGNMENT.match(line):
            path = table + _key_path(m.group(1))
            for i in range(len(table) + 1, len(path) + 1):
                lines.setdefault(path[:i], number)
            open_string = next((q for q in _MULTILINE_QUOTES
                                if m.group(2).count(q) % 2 == 1), None)
    return lines


MAX_CONFIG_BYTES = 1 << 20  # a real one is a few KiB


_DECODE_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


def _decode_error(name: str, text: str, err: tomllib.TOMLDecodeError) -> ConfigError:
    """``file:line:column: not valid TOML: ...`` from tomllib's message."""
    message = str(err)
    line: int | None = getattr(err, "lineno", None)  # Python 3.14 has the attributes
    column: int | None = getattr(err, "colno", None)
    if match := _DECODE_POSITION.search(message):
        line, column = int(match.group(1)), int(match.group(2))
        message = message[:match.start()] + message[match.end():]
    elif "(at end of document)" in message:
        lines = text.splitlines() or [""]
        if text.endswith(("\n", "\r")):  # the end is the start of a line past the last
            lines.append("")
        line, column = len(lines), len(lines[-1]) + 1
        message = message.replace(" (at end of document)", " at the end of the file")
    return ConfigError(name, line, None, f"not valid TOML: {message}", column)


def load(path: str | Path | None, overrides: Mapping[tuple[str, str], Any] | None,
         schema: Iterable[Option], checks: Iterable[CrossCheck] = ()) -> Config:
    """Defaults, then the file (if any), then overrides (CLI flags). Validates everything.

    Every problem is collected before anything is raised, so ``check-config`` can
    list them all at once (``ConfigError.problems``); the exception itself reads as
    the first one, which is all most commands print. An unreadable file or a TOML
    syntax error stops at once: nothing after it can be trusted.

    ``checks`` (``CrossCheck``) run after the values, each one whose values are valid,
    so their problems are listed with the rest.
    """
    options = {(o.section, o.key): o for o in schema}
    values: dict[tuple[str, str], Any] = {k: o.default for k, o in options.items()}
    sources: dict[tuple[str, str], str] = {k: "default" for k in options}
    sections = {o.section for o in options.values()}
    name = "defaults" if path is None else str(path)
    located: dict[tuple[str, str], tuple[str, int | None]] = {}
    invalid: set[tuple[str, str]] = set()  # failed validation: read as the default
    where: dict[KeyPath, int] = {}
    problems: list[ConfigError] = []
    if path is not None:
        try:
            with Path(path).open("rb") as stream:  # bounded: /dev/zero is not a config
                raw = stream.read(MAX_CONFIG_BYTES + 1)
        except IsADirectoryError:
            raise ConfigError(name, None, None, "cannot read: is a directory") from None
        except OSError as err:
            raise ConfigError(name, None, None,
                              f"cannot read: {err.strerror or err}") from None
        except ValueError as err:  # a NUL byte in the path
            raise ConfigError(name, None, None, f"cannot read: {err}") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(name, None, None, f"larger than {MAX_CONFIG_BYTES >> 20} MiB: "
                              "not a configuration file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(name, raw.count(b"\n", 0, err.start) + 1, None,
                              "not UTF-8 text") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise _decode_error(name, text, err) from None
        where = _locate(text)
        for section, table in data.items():
            section_line = where.get((section,))
            if section not in sections:
                problems.append(ConfigError(
                    name, section_line, f"[{section}]",
                    "unknown section (known: " + ", ".join(sorted(sections)) + ")"))
                continue
            if not isinstance(table, dict):
                problems.append(ConfigError(name, section_line, section,
                                            "must be a [section] table"))
                continue
            for key, raw in table.items():
                option = options.get((section, key))
                line = where.get((section, key)) or section_line
                if option is None:
                    known = ", ".join(sorted(k for s, k in options if s == section))
                    if isinstance(raw, dict):
                        problems.append(ConfigError(
                            name, line, f"[{section}] {key}",
                            f"unknown table [{section}.{key}] ([{section}] has no "
                            f"sub-tables; its keys: {known})"))
                    else:
                        problems.append(ConfigError(
                            name, line, f"[{section}] {key}",
                            f"unknown key (known in [{section}]: {known})"))
                    continue
                try:
                    values[(section, key)] = option.validate(raw)
                except ValueError as err:
                    # A validator of a table or list may say where inside it (``at``):
                    # the line of the deepest part of that path the file names.
                    inside = (section, key, *getattr(err, "at", ()))
                    line = next((where[inside[:n]] for n in range(len(inside), 2, -1)
                                 if inside[:n] in where), line)
                    problems.append(ConfigError(name, line, option.name, str(err)))
                    invalid.add((section, key))
                    continue
                sources[(section, key)] = f"{name}:{line}" if line else name
                located[(section, key)] = (name, line)
    for key, raw in (overrides or {}).items():
        option = options[key]
        try:
            values[key] = option.validate(raw)
        except ValueError as err:
            problems.append(ConfigError(option.flag or "command line", None, option.name,
                                        str(err)))
            invalid.add(key)
            continue
        invalid.discard(key)  # a valid flag replaces the file's invalid value
        sources[key] = option.flag or "override"
        located[key] = (option.flag or "command line", None)
    config = Config(values, sources)
    for cross in checks:
        if not cross.reads & invalid:
            for problem in cross.check(config):
                at = problem.at or (problem.section, problem.key)
                file, line = located.get((str(at[0]), str(at[1])), (name, None))
                if file == name:  # the value is from the file: the closest line there
                    line = next((where[at[:n]] for n in range(len(at), 2, -1)
                                 if at[:n] in where), line)
                problems.append(ConfigError(file, line, f"[{problem.section}] {problem.key}",
                                            problem.message))
    if problems:
        raise ConfigError.collected(problems)
    return config


def add_flags(parser: argparse.ArgumentParser, schema: Iterable[Option],
              sections: Iterable[str] | None = None) -> None:
    """Add a ``--flag`` for every option that has one (in ``sections``, if given).

    Flags take the TOML spelling of the value: ``--modbus-ports 502,15020`` becomes
    the list [502, 15020]; numbers and booleans are parsed as TOML values.
    """
    wanted = set(sections) if sections is not None else None
    for option in schema:
        if option.flag is None or (wanted is not None and option.section not in wanted):
            continue
        parser.add_argument(option.flag, dest=f"cfg:{option.section}:{option.key}",
                            metavar=option.key.upper(), default=None,
                            help=f"{option.help} (config {option.name})")


def add_value_flag(parser: argparse.ArgumentParser, option: Option) -> None:
    """The option's ``--flag``, its value validated as it is parsed (a usage error).

    For a command that takes the value itself rather than through a configuration
    file (``replay`` and ``verify`` take the ports so): the same flag, the same
    spelling and the same validation as everywhere else, in ``args.<flag_name>``.
    """
    assert option.flag is not None, f"{option.name} has no flag"

    def parse(text: str) -> Any:
        try:
            return option.validate(_flag_value(text))
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parser.add_argument(option.flag, type=parse, default=option.default,
                        metavar=option.key.upper(),
                        help=f"{option.help} (default {_flag_text(option.default)})")


def _flag_text(value: Any) -> str:
    """A default as it is typed after its flag: ``502,15020``."""
    if isinstance(value, frozenset | set | tuple | list):
        return ",".join(sorted(map(str, value)))
    return str(value)


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


def dump(config: Config, schema: Iterable[Option]) -> str:
    """The effective configuration as TOML, each key commented with its source."""
    sections: dict[str, list[Option]] = {}
    for option in schema:
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
    as_config = getattr(value, "as_config", None)  # a structured value (a collector entry)
    if callable(as_config):
        value = as_config()
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, frozenset | set | tuple | list):
        return "[" + ", ".join(_toml(v) for v in sorted(value, key=str)) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
