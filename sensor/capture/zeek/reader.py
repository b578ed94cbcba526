"""Zeek log records from ASCII (TSV) and JSON lines, one line at a time.

Zeek writes each log either as TSV with a self-describing header::

    #separator \\x09
    #set_separator	,
    #empty_field	(empty)
    #unset_field	-
    #path	modbus
    #open	2024-12-10-09-00-07
    #fields	ts	uid	id.orig_h	id.orig_p	...
    #types	time	string	addr	port	...
    1352718180.264939	C9w8Ms3W...	141.81.0.10	57184	...
    #close	2024-12-10-09-00-07

or, with ``LogAscii::use_json=T``, as one JSON object per line with the same field
names (``ts`` a number, or an ISO 8601 string under ``json_timestamps``).

The header-driven typing follows zat's ``ZeekLogReader`` (``#fields``/``#types`` give
one converter per column), with three deliberate differences, because a sensor must
not invent data (see docs/zeek.md): an unset field (``-``) is ``None``, never zat's
0 / ``False`` / 1970-01-02; ``\\xNN`` escapes are decoded; and nothing is printed,
slept or raised for a bad line. A bad line becomes a :class:`ZeekLogProblem` naming
``file:line``, the input being data (architecture principle 3).

The decoder is incremental (``feed_line``) so the batch reader and the live follower
share it: the follower feeds lines as they are appended, and a header that appears
again mid-file (Zeek reopening a log, or concatenated logs) resets the columns.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

#: A record: field name → typed value. ``None`` is "unset" (``-`` or JSON absent).
Record = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ZeekRecord:
    """One log row, with where it came from (for error messages and the join)."""

    path: str  # the log's #path (``modbus``, ``dnp3_objects``...), or the file stem
    source: str  # file name
    line: int  # 1-based line number in the file
    fields: Record


@dataclass(frozen=True, slots=True)
class ZeekLogProblem:
    """A line the reader could not use; ``where`` is ``file:line``."""

    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}"


_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def unescape(text: str) -> str:
    """Zeek's ASCII writer escapes separators and non-printables as ``\\xNN``."""
    if "\\x" not in text:
        return text
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def parse_time(text: str) -> float | None:
    """Epoch seconds from ``1352718180.264939`` or ISO 8601; ``None`` when canonicalised.

    btest baselines replace every time with ``XXXXXXXXXX.XXXXXX``: such a row has no
    time, which the mapper handles (it does not guess one).
    """
    try:
        value = float(text)
    except ValueError:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return value if math.isfinite(value) else None


def _to_bool(text: str) -> bool:
    if text in ("T", "F"):
        return text == "T"
    raise ValueError(f"{text!r} is not T or F")


_SCALARS: dict[str, Callable[[str], Any]] = {
    "bool": _to_bool,
    "count": int,
    "int": int,
    "port": int,
    "double": float,
    "interval": float,
    "time": parse_time,
}


def _converter(zeek_type: str, set_separator: str, empty: str,
               unset: str) -> Callable[[str], Any]:
    """A column converter for one ``#types`` entry; containers become tuples."""
    if zeek_type.startswith(("vector[", "set[")) and zeek_type.endswith("]"):
        inner = _SCALARS.get(zeek_type[zeek_type.index("[") + 1:-1], unescape)

        def container(text: str) -> tuple[Any, ...]:
            if text == empty:
                return ()
            return tuple(None if item == unset else inner(item)
                         for item in text.split(set_separator))
        return container
    scalar = _SCALARS.get(zeek_type)
    if scalar is None:
        return unescape
    return scalar


class ZeekLineDecoder:
    """Turns the lines of one log file into records; keeps the TSV header state.

    ``feed_line`` returns a :class:`ZeekRecord`, a :class:`ZeekLogProblem`, or
    ``None`` for header, comment and blank lines.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.line = 0
        self.path = Path(source).name.split(".")[0]
        self._separator = "\t"
        self._set_separator = ","
        self._empty = "(empty)"
        self._unset = "-"
        self._names: list[str] = []
        self._converters: list[Callable[[str], Any]] = []
        self._types: list[str] = []

    def reset(self) -> None:
        """The file was replaced (rotation): a new header follows."""
        self.__init__(self.source)  # type: ignore[misc]

    def feed_line(self, raw: str) -> ZeekRecord | ZeekLogProblem | None:
        self.line += 1
        text = raw.rstrip("\r\n")
        if not text.strip():
            return None
        if text.startswith("{"):
            return self._json(text)
        if text.startswith("#"):
            self._header(text)
            return None
        if not self._names:
            return self._problem("data line before any #fields header")
        values = text.split(self._separator)
        if len(values) != len(self._names):
            return self._problem(f"{len(values)} columns, the header has {len(self._names)}")
        fields: Record = {}
        for name, value, convert, kind in zip(
                self._names, values, self._converters, self._types, strict=True):
            if value == self._unset:
                fields[name] = None
            elif value == self._empty and not kind.startswith(("vector[", "set[")):
                fields[name] = ""
            else:
                try:
                    fields[name] = convert(value)
                except ValueError:
                    return self._problem(f"field {name}: {value!r} is not a {kind}")
        return ZeekRecord(self.path, self.source, self.line, fields)

    def _header(self, text: str) -> None:
        if text.startswith("#separator"):
            # "#separator \x09": the only header line whose own separator is a space
            self._separator = unescape(text.split(" ", 1)[1].strip()) or "\t"
            return
        key, _, value = text.partition(self._separator)
        if key == "#set_separator":
            self._set_separator = unescape(value)
        elif key == "#empty_field":
            self._empty = value
        elif key == "#unset_field":
            self._unset = value
        elif key == "#path":
            self.path = value
        elif key == "#fields":
            self._names = value.split(self._separator)
            self._types = []
            self._converters = [unescape] * len(self._names)
        elif key == "#types":
            self._types = value.split(self._separator)
            self._converters = [_converter(t, self._set_separator, self._empty, self._unset)
                                for t in self._types]

    def _json(self, text: str) -> ZeekRecord | ZeekLogProblem:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            return self._problem(f"bad JSON: {err.msg} at column {err.colno}")
        if not isinstance(obj, dict):
            return self._problem("JSON line is not an object")
        fields: Record = {}
        for key, value in obj.items():
            if key == "ts":
                fields[key] = (parse_time(value) if isinstance(value, str)
                               else float(value) if isinstance(value, int | float) else None)
            elif isinstance(value, list):
                fields[key] = tuple(value)
            else:
                fields[key] = value
        if "_path" in obj and isinstance(obj["_path"], str):
            self.path = obj["_path"]
        return ZeekRecord(self.path, self.source, self.line, fields)

    def _problem(self, detail: str) -> ZeekLogProblem:
        return ZeekLogProblem(f"{self.source}:{self.line}", detail)


def read_log(path: Path) -> Iterator[ZeekRecord | ZeekLogProblem]:
    """Every record (and problem) of one log file, TSV or JSON, gzip not supported."""
    decoder = ZeekLineDecoder(path.name)
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as stream:
        for raw in stream:
            item = decoder.feed_line(raw)
            if item is not None:
                yield item
