"""The mypyc-compiled ``parsers/`` and detection behave exactly as pure Python (issue 14).

``MAMORI_COMPILE=1 setup.py build`` compiles a copy of the tree in a temporary
directory (about a minute and a half on a loaded 2-core machine); then
``mamori replay`` runs over the corpus twice in subprocesses, once on that build
and once on the checkout's pure Python, and the JSON event logs (``--events``)
and alert logs (``--alerts``) must be byte-identical. Each run first proves
which variant it is: every module of ``mamori.parsers`` but the package markers,
and every ``sensor/detection/`` module ``setup.py`` lists in ``DETECTION`` (the
engine, the matcher and the inventory among them), is an extension module
(``.so``) in the compiled run and a ``.py`` file in the pure one, so the
comparison can never pit pure Python against itself.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CORPUS, PROJECT, corpus_captures, unavailable

#: What ``setup.py build`` reads: the packages (through the ``mamori/`` links) and metadata.
TREE = ("mamori", "parsers", "sensor", "rules", "setup.py", "pyproject.toml", "README.md")


def _detection() -> tuple[str, ...]:
    """``setup.py``'s ``DETECTION``: the ``sensor/detection/`` modules it compiles."""
    for node in ast.parse((PROJECT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "DETECTION" for t in node.targets):
            names = ast.literal_eval(node.value)
            assert isinstance(names, tuple)
            return tuple(f"mamori.sensor.detection.{name}" for name in names)
    raise AssertionError("setup.py defines no DETECTION")


DETECTION = _detection()

#: Loads every parsers module and the compiled detection modules (named in argv[2]),
#: reports where each came from, then runs the CLI.
RUN = """
import json, pkgutil, importlib, sys
import mamori.parsers
for info in pkgutil.walk_packages(mamori.parsers.__path__, "mamori.parsers."):
    importlib.import_module(info.name)
detection = sys.argv[2].split(",")
for name in detection:
    importlib.import_module(name)
files = {n: m.__file__ for n, m in sys.modules.items()
         if n.startswith("mamori.parsers") or n in detection}
with open(sys.argv[1], "w") as f:
    json.dump(files, f)
from mamori.sensor.cli import main
sys.exit(main(sys.argv[3:]))
"""

# The generated captures use their own ports (see the corpus README).
GENERATED_PORTS = ["--modbus-ports", "15020", "--dnp3-ports", "20030,20031,20032,20033,20034"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build's library directory: ``mamori`` with ``parsers/`` compiled."""
    if importlib.util.find_spec("mypyc") is None:
        unavailable("mypyc is not installed (the [test] extra brings mypy)")
    if shutil.which(os.environ.get("CC", "cc")) is None:
        unavailable("no C compiler (make test installs the Debian toolchain as root)")
    root = tmp_path_factory.mktemp("compiled")
    src = root / "src"
    src.mkdir()
    for name in TREE:
        path = PROJECT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(path, src / name)
    env = {**os.environ, "MAMORI_COMPILE": "1"}
    done = subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base",
                           str(root / "build")], cwd=src, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (lib,) = (root / "build").glob("lib.*")
    return lib


def replay(path_entry: Path, workdir: Path, name: str, args: list[str]) -> dict[str, str]:
    """``mamori replay`` with ``path_entry`` first on sys.path; returns the module files."""
    workdir.mkdir(exist_ok=True)
    modules = workdir / f"{name}.modules.json"
    env = {**os.environ, "PYTHONPATH": str(path_entry), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(modules), ",".join(DETECTION), "replay",
         "--no-progress",
         "--events", str(workdir / f"{name}.events.jsonl"),
         "--alerts", str(workdir / f"{name}.alerts.jsonl"), *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    files: dict[str, str] = json.loads(modules.read_text())
    return files


def assert_variant(files: dict[str, str], suffix: str) -> None:
    assert len(files) > 20, files  # every parsers module was imported
    missing = set(DETECTION) - files.keys()
    assert not missing, f"not imported: {sorted(missing)}"
    for name, file in files.items():
        if Path(file).name == "__init__.py":
            continue
        assert file.endswith(suffix), f"{name} loaded from {file}, expected {suffix}"


def test_the_detection_hot_path_is_in_the_compiled_set() -> None:
    """What issue 14 asks to compile beyond parsers/: the engine, the rule matcher and
    the inventory (setup.py's other detection modules are what they call per event)."""
    assert {f"mamori.sensor.detection.{m}" for m in ("engine", "matcher", "inventory")} \
        <= set(DETECTION), DETECTION


CASES: dict[str, tuple[list[str], Callable[[], list[Path]]]] = {
    # Every distinct corpus capture on the standard ports (Modbus 502, DNP3 20000),
    # broken ones included: anomalies must match as exactly as messages.
    "corpus": ([], lambda: [p for p in corpus_captures() if "generated" not in p.parts]),
    # The generated captures: modbus_big (120,008 packets) and the DNP3 stacks.
    "generated": (GENERATED_PORTS, lambda: sorted((CORPUS / "generated").glob("*.pcap"))),
}


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_and_pure_give_identical_events_and_alerts(
    compiled: Path, tmp_path: Path, case: str,
) -> None:
    ports, captures = CASES[case]
    paths = captures()
    if not paths:
        unavailable(f"no {case} captures under {CORPUS}")
    args = [*ports, *map(str, paths)]
    assert_variant(replay(compiled, tmp_path / "compiled", case, args), ".so")
    assert_variant(replay(PROJECT, tmp_path / "pure", case, args), ".py")
    for log in ("events", "alerts"):
        ours = (tmp_path / "compiled" / f"{case}.{log}.jsonl").read_bytes()
        theirs = (tmp_path / "pure" / f"{case}.{log}.jsonl").read_bytes()
        assert ours.count(b"\n") > (1000 if log == "events" else 10), (case, log)
        if ours != theirs:
            a, b = ours.splitlines(), theirs.splitlines()
            first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                         min(len(a), len(b)))
            pytest.fail(f"{case} {log} differ from line {first + 1} ({len(a)} lines "
                        f"compiled, {len(b)} pure):\n"
                        f"compiled {a[first][:300] if first < len(a) else b'(end)'!r}\n"
                        f"pure     {b[first][:300] if first < len(b) else b'(end)'!r}")
