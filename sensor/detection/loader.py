"""Load rule packs (YAML) and check them against ``rules/schema.yaml``, with located errors.

A bad rule must stop the sensor with a message an operator can act on, so
every problem names the file, the line and the key::

    rules/modbus.yaml:42: rule mamori.modbus.x: severity: 'hgih' is not one of info, ...

PyYAML's ``compose`` gives a node tree with marks. The schema is checked by
``jsonschema`` (Draft 7) over the constructed document, and each error is put back
on its node by its path; the semantic checks, which a schema cannot express, run
over the nodes. Either way a line is always at hand. All problems
of all files are collected before raising, so one run of ``mamori rules check``
shows them all.

``jsonschema`` is imported only when a pack needs the schema walk: the shipped packs,
unchanged, are known to pass it (``checked``, the manifest), which keeps the daemon's and
``mamori replay``'s start-up free of its import.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mamori.parsers.alerts import Severity
from mamori.parsers.dnp3.events import DNP3Anomaly
from mamori.parsers.handshake import TransportKind
from mamori.parsers.modbus.events import ModbusAnomaly
from mamori.parsers.pipeline import PipelineAnomaly
from mamori.parsers.tcp import TcpAnomaly
from mamori.sensor.configkit import parse_duration
from mamori.sensor.detection import checked as manifest
from mamori.sensor.detection.derived import DerivedKind
from mamori.sensor.detection.model import (
    Category,
    Chain,
    ChainStep,
    Conditions,
    GroupKey,
    IinBit,
    Match,
    MsgType,
    ObjectPattern,
    Proto,
    Rule,
    RulePacks,
    Threshold,
)

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

# libyaml's loader when the wheel has it (about 10x faster; the same marks and errors).
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _shipped_rules() -> Path:
    """Where the shipped rule packs are: the ``mamori.rules`` package's folder.

    The same in a checkout (``rules/``, through ``mamori/rules``), an editable install,
    a wheel and the Debian package, since the packs install as package data.
    """
    return Path(str(importlib.resources.files("mamori.rules")))


SHIPPED_RULES = _shipped_rules()
SCHEMA_FILE = SHIPPED_RULES / "schema.yaml"

# Anomaly kind names a rule may use, per proto.
ANOMALY_NAMES: dict[str, frozenset[str]] = {
    "modbus": frozenset(k.name for k in ModbusAnomaly)
    | {k.name for k in DerivedKind if k.proto == "modbus"},
    "dnp3": frozenset(k.name for k in DNP3Anomaly)
    | {k.name for k in DerivedKind if k.proto == "dnp3"},
    "tcp": frozenset(k.name for k in TcpAnomaly) | {k.name for k in TransportKind},
    "ip": frozenset(k.name for k in PipelineAnomaly),
    "baseline": frozenset(k.name for k in DerivedKind if k.proto == "baseline"),
    "sensor": frozenset(k.name for k in DerivedKind if k.proto == "sensor"),
    "network": frozenset(k.name for k in DerivedKind if k.proto == "network"),
}


@dataclass(frozen=True, slots=True)
class RuleProblem:
    file: str
    line: int | None
    rule: str | None
    key: str | None
    message: str
    what: str = "rule"  # or "chain", "category": what ``rule`` names

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        rule = f" {self.what} {self.rule}:" if self.rule else ""
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{rule}{key} {self.message}"


class RuleError(Exception):
    """One or more problems in rule packs; ``str()`` lists them, one per line."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def pack_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` pack under the given dirs (or the files themselves)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir()
                              if p.suffix in {".yaml", ".yml"} and p.name != "schema.yaml"))
        else:
            out.append(path)
    return out


def load_rules(paths: Iterable[str | Path], set_names: Collection[str] = (), *,
               trust_checked: bool = False) -> RulePacks:
    """Load and check every pack; raise :class:`RuleError` listing every problem found.

    ``set_names`` are the named sets a rule may refer to (site config sets and
    the learned ones); an unknown name is an error, not a rule that never fires.
    The result is the list of rules; its ``chains`` and ``categories`` are the
    packs' campaign chains, checked against the rules of every pack loaded.
    ``trust_checked``: a pack whose text the shipped manifest lists as passing the
    schema skips the schema walk (start-up and reloads, see ``checked``); off for
    everything that exists to check packs (``rules check``, signing, pushing).
    """
    problems: list[RuleProblem] = []
    rules: list[Rule] = []
    chains: list[_Located[Chain]] = []
    categories: list[_Located[Category]] = []
    seen: dict[str, str] = {}
    files = pack_files(paths)
    if not files:
        raise RuleError([RuleProblem(", ".join(str(p) for p in paths) or "(none)", None,
                                     None, None, "no rule packs (*.yaml) found")])
    known = _trusted() if trust_checked else frozenset()
    for file in files:
        name = str(file)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as err:
            problems.append(RuleProblem(name, None, None, None, f"cannot read: {err.strerror}"))
            continue
        except UnicodeDecodeError:
            problems.append(RuleProblem(name, None, None, None, "not UTF-8 text"))
            continue
        schema = None if known and manifest.digest(text) in known else _load_schema()
        for rule in _load_pack(name, text, schema, set(set_names), problems, chains,
                               categories):
            if rule.id in seen:
                problems.append(RuleProblem(name, _line(rule.source), rule.id, "id",
                                            f"duplicate rule id (first in {seen[rule.id]})"))
                continue
            seen[rule.id] = rule.source
            rules.append(rule)
    checked = _check_chains(rules, chains, categories, seen, problems)
    if problems:
        raise RuleError(problems)
    return RulePacks(rules, checked, tuple(c.item for c in categories))


def _line(source: str) -> int | None:
    tail = source.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


# -- schema walk ------------------------------------------------------------------------

_schema_cache: dict[str, _SchemaCheck] = {}
_trusted_cache: dict[str, frozenset[str]] = {}


def _trusted() -> frozenset[str]:
    """The digests of the packs the shipped manifest lists, read once a process like the
    schema (a reload reads neither again); nothing when the schema cannot be read."""
    if "trusted" not in _trusted_cache:
        try:
            schema = SCHEMA_FILE.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return frozenset()  # the full check then reports the schema's problem
        _trusted_cache["trusted"] = manifest.trusted(SHIPPED_RULES, schema)
    return _trusted_cache["trusted"]


def _load_schema() -> _SchemaCheck:
    if "schema" not in _schema_cache:
        _schema_cache["schema"] = _SchemaCheck(yaml.load(
            SCHEMA_FILE.read_text(encoding="utf-8"), Loader=_LOADER))
    return _schema_cache["schema"]


_CTOR = SafeConstructor()


def scalar(node: ScalarNode) -> Any:
    """The Python value of a scalar node (int, float, bool, str or None)."""
    return _CTOR.construct_object(node, deep=True)


_Err = tuple[Node, str, str]  # node, key path, message
_Path = tuple[str | int, ...]  # keys and list indexes from the document root


class _SchemaCheck:
    """``rules/schema.yaml`` applied by ``jsonschema``, its errors put back on YAML lines.

    The validator sees the constructed document; an index from each path to its node
    (and to the node of each mapping key) gives every error a line. The messages are
    the operator's words, not the validator's: one per keyword below. Duplicate keys,
    which the constructed document can no longer show, are checked on the nodes.
    """

    def __init__(self, schema: Any) -> None:
        from jsonschema import Draft7Validator  # here: only a pack not known good needs it

        Draft7Validator.check_schema(schema)
        self._root = schema
        self._validator = Draft7Validator(schema)

    def check(self, root: Node, document: Any) -> list[_Err]:
        nodes: dict[_Path, Node] = {}
        keys: dict[_Path, Node] = {}
        errors = _index(root, (), nodes, keys)
        for error in self._validator.iter_errors(document):
            errors.extend(self._explain(error, nodes, keys))
        unique = dict.fromkeys(errors)  # one missing key is one error, not one per branch
        return sorted(unique, key=lambda e: (e[0].start_mark.line, e[0].start_mark.column))

    def _explain(self, error: ValidationError, nodes: dict[_Path, Node],
                 keys: dict[_Path, Node]) -> list[_Err]:
        path: _Path = tuple(error.absolute_path)
        node = nodes[path]
        value: Any = error.instance
        rule: Any = error.validator_value
        where: Any = error.schema
        keyword = error.validator
        if keyword == "anyOf":
            branches = [self._resolve(b) for b in rule]
            fitting = [i for i, b in enumerate(branches)
                       if "type" not in b or self._validator.is_type(value, b["type"])]
            if len(fitting) == 1:
                return [e for sub in error.context or ()
                        if sub.relative_schema_path[0] == fitting[0]
                        for e in self._explain(sub, nodes, keys)]
            return [(node, _dotted(path), f"{_show(node)} is not {_describe(branches)}")]
        if keyword == "additionalProperties":
            known = where.get("properties", {})
            return [(keys[(*path, k)], _dotted((*path, k)),
                     "unknown key (known: " + ", ".join(sorted(known)) + ")")
                    for k in value if k not in known]
        if keyword == "required":
            return [(node, _dotted(path), f"missing required key {k!r}")
                    for k in rule if k not in value]
        messages = {
            "type": lambda: f"{_show(node)} is not {_TYPE_WORDS[rule]}",
            "enum": lambda: f"{_show(node)} is not one of " + ", ".join(map(str, rule)),
            "pattern": lambda: f"{value!r} has the wrong form (expected {rule})",
            "minimum": lambda: f"{value} is below {rule}",
            "maximum": lambda: f"{value} is above {rule}",
            "minItems": lambda: f"needs at least {rule} item(s)",
            "maxItems": lambda: f"has more than {rule} items",
        }
        explain = messages.get(str(keyword))
        return [(node, _dotted(path), explain() if explain else error.message)]

    def _resolve(self, schema: Any) -> Any:
        while isinstance(schema, dict) and "$ref" in schema:
            target = self._root
            for part in schema["$ref"].lstrip("#/").split("/"):
                target = target[part]
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema


def _index(node: Node, path: _Path, nodes: dict[_Path, Node],
           keys: dict[_Path, Node]) -> list[_Err]:
    """Fill ``nodes`` and ``keys`` for the tree under ``node``; return its duplicate keys."""
    nodes[path] = node
    duplicates: list[_Err] = []
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            duplicates += _index(item, (*path, i), nodes, keys)
    elif isinstance(node, MappingNode):
        for knode, vnode in node.value:
            key = scalar(knode) if isinstance(knode, ScalarNode) else "?"
            sub = (*path, key)
            if sub in keys:
                duplicates.append((knode, _dotted(sub), "duplicate key"))
            keys[sub] = knode
            duplicates += _index(vnode, sub, nodes, keys)
    return duplicates


def _dotted(path: _Path) -> str:
    """``rules[0].match.fc[1]``: the key path as the messages show it."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string",
               "integer": "a whole number", "number": "a number", "boolean": "true or false"}


def _describe(branches: list[Any]) -> str:
    words = []
    for b in branches:
        word = _TYPE_WORDS.get(b.get("type", ""), "a value")
        if "pattern" in b:
            word += " like '25-30'" if "-" in b["pattern"] else " of the right form"
        words.append(word)
    return " or ".join(dict.fromkeys(words))


def _show(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return repr(scalar(node))
    return "a list" if isinstance(node, SequenceNode) else "a mapping"


# -- semantic compile -------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, node: Node, key: str, message: str) -> None:
        self.node = node
        self.key = key
        self.message = message


def _mapping(node: MappingNode) -> dict[str, Node]:
    return {str(scalar(k)): v for k, v in node.value if isinstance(k, ScalarNode)}


def _load_pack(name: str, text: str, schema: _SchemaCheck | None, set_names: set[str],
               problems: list[RuleProblem], chains: list[_Located[Chain]] | None = None,
               categories: list[_Located[Category]] | None = None) -> Iterator[Rule]:
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problems.append(RuleProblem(name, mark.line + 1 if mark else None, None, None,
                                    f"not valid YAML: {err.problem or err}"))
        return
    except yaml.YAMLError as err:
        problems.append(RuleProblem(name, None, None, None, f"not valid YAML: {err}"))
        return
    if root is None:
        problems.append(RuleProblem(name, None, None, None, "empty file"))
        return
    try:
        document = SafeConstructor().construct_document(root)
    except yaml.MarkedYAMLError as err:  # a key that is a list or a mapping, ...
        mark = err.problem_mark or err.context_mark
        problems.append(RuleProblem(name, mark.line + 1 if mark else None, None, None,
                                    f"not a rule pack: {err.problem or err}"))
        return
    errors = schema.check(root, document) if schema is not None else []  # None: known good
    bad_rules: set[int] = set()
    bad_chains: set[int] = set()
    rule_nodes: list[MappingNode] = []
    chain_nodes: list[MappingNode] = []
    top = _mapping(root) if isinstance(root, MappingNode) else {}
    rules_node = top.get("rules")
    if isinstance(rules_node, SequenceNode):
        rule_nodes = [n for n in rules_node.value if isinstance(n, MappingNode)]
    chains_node = top.get("chains")
    if isinstance(chains_node, SequenceNode):
        chain_nodes = [n for n in chains_node.value if isinstance(n, MappingNode)]
    for node, path, message in errors:
        index, key = _split_rule_path(path)
        what, nodes, bad = "rule", rule_nodes, bad_rules
        if index is None:
            index, key = _split_chain_path(path)
            what, nodes, bad = "chain", chain_nodes, bad_chains
        rule_id = _rule_id(nodes[index]) if index is not None and index < len(
            nodes) else None
        if index is not None:
            bad.add(index)
        problems.append(RuleProblem(name, node.start_mark.line + 1, rule_id, key or None,
                                    message, what))
    if isinstance(root, MappingNode) and not errors and not (
            rule_nodes or chain_nodes or top.get("categories")):
        problems.append(RuleProblem(name, root.start_mark.line + 1, None, None,
                                    "a pack needs rules, chains or categories"))
    if chains is not None and categories is not None and not errors:
        _compile_chain_section(name, top, chain_nodes, chains, categories, problems)
    for index, node in enumerate(rule_nodes):
        if index in bad_rules:
            continue
        try:
            yield _compile_rule(name, node, set_names)
        except _Bad as bad:
            problems.append(RuleProblem(name, bad.node.start_mark.line + 1, _rule_id(node),
                                        bad.key, bad.message))


def _split_rule_path(path: str) -> tuple[int | None, str]:
    m = re.match(r"^rules\[(\d+)\]\.?(.*)$", path)
    if not m:
        return None, path
    return int(m.group(1)), m.group(2)


def _split_chain_path(path: str) -> tuple[int | None, str]:
    m = re.match(r"^chains\[(\d+)\]\.?(.*)$", path)
    if not m:
        return None, path
    return int(m.group(1)), m.group(2)


def _rule_id(node: MappingNode) -> str | None:
    id_node = _mapping(node).get("id")
    if isinstance(id_node, ScalarNode):
        return str(scalar(id_node))
    return None


def _names(node: Node) -> list[tuple[Node, str]]:
    if isinstance(node, SequenceNode):
        return [(n, str(scalar(n))) for n in node.value if isinstance(n, ScalarNode)]
    assert isinstance(node, ScalarNode)
    return [(node, str(scalar(node)))]


def _numbers(node: Node, key: str) -> frozenset[int]:
    items = node.value if isinstance(node, SequenceNode) else [node]
    out: set[int] = set()
    for item in items:
        value = scalar(item)
        if isinstance(value, int):
            out.add(value)
            continue
        parts = [p.strip() for p in str(value).split("-")]
        try:
            lo, hi = int(parts[0], 0), int(parts[-1], 0)
        except ValueError:
            raise _Bad(item, key, f"{value!r} is not a number or range") from None
        if lo > hi or hi > 0xFFFF:
            raise _Bad(item, key, f"{value!r} is not a range lo-hi within 0-65535")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def _enum_names(node: Node, key: str, known: Collection[str], what: str) -> list[str]:
    out = []
    for item, name in _names(node):
        if name not in known:
            raise _Bad(item, key, f"{name!r} is not {what} (known: "
                       + ", ".join(sorted(known)) + ")")
        out.append(name)
    return out


def _compile_rule(file: str, node: MappingNode, set_names: set[str]) -> Rule:
    fields = _mapping(node)
    value = {k: scalar(v) for k, v in fields.items() if isinstance(v, ScalarNode)}
    match = _compile_match(fields["match"], set_names)
    threshold = None
    if "threshold" in fields:
        threshold = _compile_threshold(fields["threshold"])
    conditions = Conditions()
    if "conditions" in fields:
        cond = _mapping(fields["conditions"])
        kwargs: dict[str, tuple[str, ...]] = {}
        for key, sub in cond.items():
            kwargs[key] = tuple(_enum_names(sub, f"conditions.{key}", set_names, "a known set"))
        conditions = Conditions(**kwargs)
    attack_node = fields["attack"]
    assert isinstance(attack_node, SequenceNode)
    return Rule(
        id=str(value["id"]), precursor=str(value["precursor"]), title=str(value["title"]),
        severity=Severity.parse(str(value["severity"])),
        attack=tuple(str(scalar(a)) for a in attack_node.value),
        match=match, description=str(value.get("description", "")).strip(),
        threshold=threshold, conditions=conditions,
        guidance=str(value.get("guidance", "")).strip(),
        values=bool(value.get("values", False)),
        source=f"{file}:{node.start_mark.line + 1}",
    )


def _compile_match(node: MappingNode, set_names: set[str]) -> Match:
    m = _mapping(node)
    protos = _enum_names(m["proto"], "match.proto", [p.value for p in Proto], "a protocol")
    kwargs: dict[str, Any] = {"proto": frozenset(Proto(p) for p in protos)}
    if "type" in m:
        kwargs["type"] = frozenset(MsgType(t) for t in _enum_names(
            m["type"], "match.type", [t.value for t in MsgType], "a message type"))
    for key in ("fc", "sub", "unit", "link_src", "link_dst", "exception"):
        if key in m:
            kwargs[key] = _numbers(m[key], f"match.{key}")
    if "address" in m:
        addr = m["address"]
        assert isinstance(addr, SequenceNode)
        lo, hi = (int(scalar(n)) for n in addr.value[:2])
        if len(addr.value) != 2 or lo > hi:
            raise _Bad(addr, "match.address", "must be [lo, hi] with lo <= hi")
        kwargs["address"] = (lo, hi)
    if "objects" in m:
        patterns = []
        objects = m["objects"]
        assert isinstance(objects, SequenceNode)
        for i, obj in enumerate(objects.value):
            assert isinstance(obj, MappingNode)
            o = _mapping(obj)
            patterns.append(ObjectPattern(
                groups=_numbers(o["group"], f"match.objects[{i}].group"),
                variations=_numbers(o["variation"], f"match.objects[{i}].variation")
                if "variation" in o else None,
                qualifiers=_numbers(o["qualifier"], f"match.objects[{i}].qualifier")
                if "qualifier" in o else None))
        kwargs["objects"] = tuple(patterns)
    if "iin" in m:
        mask = 0
        for name in _enum_names(m["iin"], "match.iin", IinBit.__members__, "an IIN bit"):
            mask |= IinBit[name].value
        kwargs["iin"] = mask
    if "anomaly" in m:
        known: set[str] = set()
        for p in protos:
            known |= ANOMALY_NAMES[p]
        kwargs["anomaly"] = frozenset(_enum_names(
            m["anomaly"], "match.anomaly", known, f"an anomaly of {'/'.join(protos)}"))
    for key in ("direction", "prm", "unsolicited"):
        if key in m:
            kwargs[key] = scalar(m[key])
    for key in ("src", "dst"):
        if key in m:
            kwargs[key] = tuple(_enum_names(m[key], f"match.{key}", set_names, "a known set"))
    return Match(**kwargs)


def _compile_threshold(node: MappingNode) -> Threshold:
    t = _mapping(node)
    window_node = t["window"]
    raw = scalar(window_node)
    try:
        window = float(raw) if isinstance(raw, int | float) else parse_duration(str(raw))
    except ValueError as err:
        raise _Bad(window_node, "threshold.window", str(err)) from None
    group_by: tuple[GroupKey, ...] = ()
    if "group_by" in t:
        group_by = tuple(GroupKey(g) for _, g in _names(t["group_by"]))
    distinct = GroupKey(str(scalar(t["distinct"]))) if "distinct" in t else None
    return Threshold(count=int(scalar(t["count"])), window=window,
                     group_by=group_by, distinct=distinct)


# -- chains and categories ----------------------------------------------------------------

T = TypeVar("T")
_CATEGORY_NAME = re.compile(r"^[a-z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class _Ref:
    """A name a chain or category uses (a rule id, precursor or category), and where."""

    kind: str  # "rule" | "precursor" | "category"
    name: str
    line: int
    key: str


@dataclass(frozen=True, slots=True)
class _Located(Generic[T]):
    """A compiled chain or category, with its place and the names it refers to, for the
    checks across packs (a chain in one pack may name rules of another)."""

    item: T
    file: str
    line: int
    refs: tuple[_Ref, ...]


def _refs(node: Node | None, kind: str, key: str) -> list[_Ref]:
    if node is None:
        return []
    return [_Ref(kind, name, item.start_mark.line + 1, key) for item, name in _names(node)]


def _duration(node: Node, key: str) -> float:
    raw = scalar(node) if isinstance(node, ScalarNode) else None
    try:
        return float(raw) if isinstance(raw, int | float) else parse_duration(str(raw))
    except ValueError as err:
        raise _Bad(node, key, str(err)) from None


def _compile_chain_section(file: str, top: dict[str, Node], chain_nodes: list[MappingNode],
                           chains: list[_Located[Chain]],
                           categories: list[_Located[Category]],
                           problems: list[RuleProblem]) -> None:
    """The ``categories:`` and ``chains:`` of one pack (already valid by the schema)."""
    section = top.get("categories")
    if isinstance(section, MappingNode):
        for knode, vnode in section.value:
            name = str(scalar(knode)) if isinstance(knode, ScalarNode) else "?"
            line = knode.start_mark.line + 1
            if not _CATEGORY_NAME.match(name):
                problems.append(RuleProblem(file, line, name, None, "a category name is "
                                            "lower-case letters, digits, _ and -", "category"))
                continue
            fields = _mapping(vnode) if isinstance(vnode, MappingNode) else {}
            refs = (_refs(fields.get("rules"), "rule", "rules")
                    + _refs(fields.get("precursors"), "precursor", "precursors"))
            if not refs:
                problems.append(RuleProblem(file, line, name, None,
                                            "a category needs rules or precursors", "category"))
                continue
            category = Category(name, frozenset(r.name for r in refs if r.kind == "rule"),
                                frozenset(r.name for r in refs if r.kind == "precursor"),
                                f"{file}:{line}")
            categories.append(_Located(category, file, line, tuple(refs)))
    for node in chain_nodes:
        try:
            chains.append(_compile_chain(file, node))
        except _Bad as bad:
            problems.append(RuleProblem(file, bad.node.start_mark.line + 1, _rule_id(node),
                                        bad.key, bad.message, "chain"))


def _compile_chain(file: str, node: MappingNode) -> _Located[Chain]:
    fields = _mapping(node)
    value = {k: scalar(v) for k, v in fields.items() if isinstance(v, ScalarNode)}
    window = _duration(fields["window"], "window")
    if not window > 0:
        raise _Bad(fields["window"], "window", "a chain's window must be longer than 0 s")
    steps_node = fields["steps"]
    assert isinstance(steps_node, SequenceNode)
    steps: list[ChainStep] = []
    refs: list[_Ref] = []
    for i, step_node in enumerate(steps_node.value):
        assert isinstance(step_node, MappingNode)
        step = _mapping(step_node)
        name = str(scalar(step["name"]))
        if any(s.name == name for s in steps):
            raise _Bad(step["name"], f"steps[{i}].name", f"step {name!r} is named twice")
        found = (_refs(step.get("rule"), "rule", f"steps[{i}].rule")
                 + _refs(step.get("precursor"), "precursor", f"steps[{i}].precursor")
                 + _refs(step.get("category"), "category", f"steps[{i}].category"))
        if not found:
            raise _Bad(step_node, f"steps[{i}]", "a step needs rule, precursor or category")
        refs += found
        steps.append(ChainStep(
            name, frozenset(r.name for r in found if r.kind == "rule"),
            frozenset(r.name for r in found if r.kind == "precursor"),
            frozenset(r.name for r in found if r.kind == "category")))
    attack_node = fields["attack"]
    assert isinstance(attack_node, SequenceNode)
    line = node.start_mark.line + 1
    chain = Chain(
        id=str(value["id"]), precursor=str(value["precursor"]), title=str(value["title"]),
        severity=Severity.parse(str(value.get("severity", "critical"))),
        attack=tuple(str(scalar(a)) for a in attack_node.value), window=window,
        steps=tuple(steps), same_source=bool(value.get("same_source", False)),
        description=str(value.get("description", "")).strip(),
        guidance=str(value.get("guidance", "")).strip(), source=f"{file}:{line}")
    return _Located(chain, file, line, tuple(refs))


def _check_chains(rules: list[Rule], chains: list[_Located[Chain]],
                  categories: list[_Located[Category]], rule_ids: dict[str, str],
                  problems: list[RuleProblem]) -> tuple[Chain, ...]:
    """What one pack cannot check alone: every name a chain or category uses exists in
    some pack loaded, and no chain id is taken twice (by a chain or a rule)."""
    precursors = {r.precursor for r in rules}
    defined: dict[str, str] = {}
    for located in categories:
        category = located.item
        if category.name in defined:
            problems.append(RuleProblem(located.file, located.line, category.name, None,
                                        f"category defined twice (first in "
                                        f"{defined[category.name]})", "category"))
            continue
        defined[category.name] = category.source
        for ref in located.refs:
            if not _known(ref, rule_ids, precursors, defined):
                problems.append(RuleProblem(located.file, ref.line, category.name, ref.key,
                                            _unknown(ref), "category"))
    out: list[Chain] = []
    taken: dict[str, str] = dict(rule_ids)
    for at in chains:
        chain = at.item
        bad = False
        if chain.id in taken:
            problems.append(RuleProblem(at.file, at.line, chain.id, "id",
                                        f"duplicate id (first in {taken[chain.id]})", "chain"))
            bad = True
        for ref in at.refs:
            if not _known(ref, rule_ids, precursors, defined):
                problems.append(RuleProblem(at.file, ref.line, chain.id, ref.key,
                                            _unknown(ref), "chain"))
                bad = True
        if not bad:
            taken[chain.id] = chain.source
            out.append(chain)
    return tuple(out)


def _known(ref: _Ref, rule_ids: Collection[str], precursors: Collection[str],
           categories: Collection[str]) -> bool:
    if ref.kind == "rule":
        return ref.name in rule_ids
    if ref.kind == "precursor":
        return ref.name in precursors
    return ref.name in categories


def _unknown(ref: _Ref) -> str:
    if ref.kind == "rule":
        return f"{ref.name!r} is not the id of any rule loaded"
    if ref.kind == "precursor":
        return f"{ref.name!r} is not the precursor of any rule loaded"
    return f"{ref.name!r} is not a category defined in any pack loaded"
