"""What may import what, read from the source of the installed ``mamori`` package.

The graph is built with ``ast``: no module is imported, so a cycle or a stray import
is found even where importing would hide it (a lazy import inside a function is an
edge as well; only ``if TYPE_CHECKING:`` blocks are left out, they never run).
Importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` too, so those are
edges as well, except towards the importer's own packages (already being imported).

The rules (ARCHITECTURE.md, "Boundaries"):

- no import cycle among mamori's modules;
- ``parsers`` imports nothing from ``sensor``;
- a capability's command-line module (``cli``, ``*_cli``) is a leaf: only
  ``mamori.sensor.cli``, the argparse assembly, imports one of another capability;
- nothing registers config options at import (``cfg.register``): the schema is
  assembled in one place, ``mamori.sensor.schema``.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT_PACKAGE = "mamori"
ASSEMBLY = "mamori.sensor.cli"


@cache
def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name (symlinked folders followed)."""
    spec = importlib.util.find_spec(ROOT_PACKAGE)  # locates; runs no module
    assert spec is not None and spec.submodule_search_locations
    found: dict[str, Path] = {}
    for location in spec.submodule_search_locations:
        base = Path(location)
        for path in sorted(Path(folder) / file
                           for folder, _, files in os.walk(base, followlinks=True)
                           for file in files if file.endswith(".py")):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((ROOT_PACKAGE, *parts))] = path
    assert len(found) > 100, f"only {len(found)} modules under {spec.submodule_search_locations}"
    return found


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _resolve(importer: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The mamori modules an import statement names (the most specific that exist)."""
    known = modules()
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = importer if _is_package(importer) else importer.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                   for alias in node.names]
    for target in targets:
        if target.split(".")[0] != ROOT_PACKAGE:
            continue
        parts = target.split(".")
        for n in range(2, len(parts) + 1):  # the packages on the way run their __init__
            name = ".".join(parts[:n])
            if name in known and not importer.startswith(f"{name}.") and name != importer:
                yield name


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in (child, *_runtime_nodes(child)))
            continue
        yield node
        yield from _runtime_nodes(node)


@cache
def tree(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text(encoding="utf-8"), str(modules()[name]))


@cache
def graph() -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for name in modules():
        edges = {target for node in _runtime_nodes(tree(name))
                 if isinstance(node, ast.Import | ast.ImportFrom)
                 for target in _resolve(name, node)}
        out[name] = frozenset(edges)
    return out


def cycles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:  # iterative: the graph is deep enough for recursion
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    found.append(sorted(component))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    return sorted(found)


def capability(name: str) -> str | None:
    """``mamori.sensor.detection.cli`` -> ``detection``; top-level sensor modules: None."""
    parts = name.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "sensor" else None


def is_cli(name: str) -> bool:
    leaf = name.rpartition(".")[2]
    return leaf == "cli" or leaf.endswith("_cli")


def test_the_graph_sees_lazy_imports_and_skips_type_checking() -> None:
    """The checks below see what they claim to: a lazy import is an edge, TYPE_CHECKING not."""
    source = ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from mamori.sensor import paths\n"
              "def f() -> None:\n    from mamori.sensor.alerting import store\n")
    edges = {t for node in _runtime_nodes(ast.parse(source))
             if isinstance(node, ast.Import | ast.ImportFrom)
             for t in _resolve("mamori.sensor.timefmt", node)}
    assert edges == {"mamori.sensor.alerting", "mamori.sensor.alerting.store"}
    assert cycles({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}),
                   "d": frozenset({"a"})}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_parsers_import_nothing_from_sensor() -> None:
    bad = sorted(f"{name} -> {target}" for name, targets in graph().items()
                 if name.startswith("mamori.parsers") for target in targets
                 if target.startswith("mamori.sensor"))
    assert bad == []


def test_cli_modules_are_leaves() -> None:
    """Only the assembly imports a CLI module of another capability (its own: allowed)."""
    bad = sorted(f"{name} -> {target}" for name, targets in graph().items()
                 if name != ASSEMBLY for target in targets
                 if is_cli(target) and capability(target) != capability(name))
    assert bad == []


def _module_level_calls(module: ast.Module) -> Iterator[ast.Call]:
    """Calls that run at import: in the module body, not inside a def or a lambda."""
    pending: list[ast.AST] = list(module.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Call):
            yield node
        pending.extend(ast.iter_child_nodes(node))


def _registrations(module: ast.Module) -> list[int]:
    """Lines of ``cfg.register(...)``/``config.register_check(...)`` calls run at import."""
    return sorted(call.lineno for call in _module_level_calls(module)
                  if isinstance(call.func, ast.Attribute)
                  and call.func.attr in {"register", "register_check"}
                  and ast.unparse(call.func.value) in {"cfg", "config"})


def test_the_registration_check_sees_module_level_calls_only() -> None:
    source = ("cfg.register([cfg.Option('a', 'b', 1, int, '')])\n"
              "X = [config.register_check(f, [])]\n"
              "def later() -> None:\n    cfg.register([])\n")
    assert _registrations(ast.parse(source)) == [1, 2]


def test_nothing_registers_config_options_at_import() -> None:
    bad = sorted(f"{name}:{line}" for name in modules() for line in _registrations(tree(name)))
    assert bad == []
