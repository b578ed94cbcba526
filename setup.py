"""The ``mamori`` namespace over the tree's top-level folders, and the optional mypyc build.

``parsers/``, ``sensor/`` and ``rules/`` stay at the top of the source tree and install
as ``mamori.parsers``, ``mamori.sensor`` and ``mamori.rules``. The subpackages are
found here, so a new folder ships without a list to keep in step.

Compiling ``parsers/`` and the detection hot path (``DETECTION``) with mypyc (issue 14)
is chosen by ``MAMORI_COMPILE``:

- unset or ``0``: pure Python, the default, so ``pip install .`` and the editable
  ``pip install -e '.[test]'`` need no C compiler and no mypy;
- ``1``: compile, and fail the build if compiling fails (CI and release builds must
  know); mypy is then a build requirement, which setuptools hands to pip as a
  dynamic one (``setup_requires``), so an isolated build fetches it; a build whose
  environment has mypyc already uses that one (the Debian package: python3-mypy);
- ``auto``: compile when the build environment already has mypyc (a
  ``--no-build-isolation`` build, Debian's python3-mypy) and the compiler works,
  otherwise warn and build pure Python; it adds no build requirement.

The compiled wheel carries the ``.py`` files too; the ``.so`` beside each wins the
import, and a ``mamori__mypyc`` library at the top holds the shared runtime code
(named from a hash of the module list by mypyc before 1.10, which also leaves the
modules defining an IntEnum as Python: ``_old_mypyc``).
"""

import os
import re
import sys
from pathlib import Path
from typing import Any

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

ROOTS = ("parsers", "sensor", "rules")
#: Modules left uncompiled: empty package markers gain nothing compiled.
PURE = {"__init__.py"}

packages = ["mamori"]
for root in ROOTS:
    packages += [f"mamori.{root}"] + [f"mamori.{root}.{p}" for p in find_packages(root)]


def _mode() -> str:
    mode = os.environ.get("MAMORI_COMPILE", "0").strip().lower() or "0"
    if mode not in ("0", "1", "auto"):
        sys.exit(f"MAMORI_COMPILE={mode!r}: expected 0, 1 or auto")
    return mode


#: A class deriving from IntEnum (or IntFlag) directly.
INT_ENUM = re.compile(r"^class \w+\((enum\.)?Int(Enum|Flag)\):", re.MULTILINE)


def _old_mypyc() -> bool:
    """mypyc before 1.10 (Debian 12's python3-mypy is 1.0.1) miscompiles IntEnum members.

    It loads ``Direction.TO_SERVER`` from a C static it defines only for classes whose
    first base is ``enum.Enum``, so the C compiler stops at an undeclared
    ``CPyStatic_stream___Direction___TO_SERVER``. Left as Python, such a module's members
    are plain attribute loads from the compiled modules, which works on every version."""
    from mypy.version import __version__

    major, minor = (int(part) for part in re.findall(r"\d+", __version__)[:2])
    return (major, minor) < (1, 10)


#: ``sensor/detection/`` modules on the per-event path: the engine, the rule matcher, the
#: inventory, and what they call per event or per hit (derived events, the flood,
#: link-layer and chain watches). Left Python: ``bounded`` (``LruTable`` derives from
#: ``OrderedDict``, which a native class cannot: it compiles, then crashes), ``model``
#: (``RulePacks`` derives from ``list``, which mypyc refuses), and ``windows`` (runs only
#: when maintenance windows are configured; the rest of it is config validation).
DETECTION = ("engine", "matcher", "inventory", "derived", "floods", "aitm", "chains")


def compiled_sources() -> list[str]:
    """``parsers/`` and :data:`DETECTION` through the ``mamori/`` link, so each module gets
    its installed name."""
    here = Path(__file__).resolve().parent
    old = _old_mypyc()
    detection = here / "mamori" / "sensor" / "detection"
    paths = [*(here / "mamori" / "parsers").rglob("*.py"),
             *(detection / f"{name}.py" for name in DETECTION)]
    return sorted(str(p.relative_to(here)) for p in paths
                  if p.name not in PURE and not (old and INT_ENUM.search(p.read_text())))


class OptionalBuildExt(build_ext):
    """``build_ext`` that, under ``MAMORI_COMPILE=auto``, falls back to pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # the compiler's own error types vary by platform
            if _mode() != "auto":
                raise
            print(f"mamori: compiling failed ({exc}); installing pure Python",
                  file=sys.stderr)
            self.extensions = []


#: mypy options of the build's own type check. The modules it compiles import others it
#: does not (``sensor/detection/__init__`` imports the rule loader, hence jsonschema,
#: which has no stubs in Debian 12): their errors are not the build's to report, the
#: project's ``mypy --strict`` checks them.
MYPY_OPTIONS = ["--follow-imports=silent"]


def _mypycify(mypycify: Any) -> list[object]:
    """The extensions, their shared runtime library named ``mamori__mypyc``.

    Debian 12's mypyc (python3-mypy 1.0.1) predates ``group_name``: there the library
    takes a name hashed from the module list instead, which works the same."""
    paths = [*MYPY_OPTIONS, *compiled_sources()]
    try:
        return list(mypycify(paths, opt_level="3", group_name="mamori"))
    except TypeError as exc:
        if "group_name" not in str(exc):
            raise
    return list(mypycify(paths, opt_level="3"))


def extensions(mode: str) -> list[object]:
    if mode == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        if mode == "1":
            raise
        print("mamori: mypyc is not installed; installing pure Python", file=sys.stderr)
        return []
    try:
        return _mypycify(mypycify)
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        if mode == "1":
            raise
        print(f"mamori: mypyc failed ({exc}); installing pure Python", file=sys.stderr)
        return []


def _has_mypyc() -> bool:
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return False
    return True


MODE = _mode()
# Only a build that compiles needs mypy; its version is the one the tests type-check with.
# A build that already has mypyc (Debian's python3-mypy under pybuild, the venv's) compiles
# with it: asking for another would make setuptools fetch one.
BUILD_REQUIRES = ["mypy>=1.10"] if MODE == "1" and not _has_mypyc() else []

setup(
    packages=packages,
    package_dir={"mamori": "mamori", **{f"mamori.{root}": root for root in ROOTS}},
    # Computed only when setuptools runs a build: ``get_requires_for_build_*`` asks
    # setup.py first, without the extensions, to learn BUILD_REQUIRES.
    ext_modules=extensions(MODE) if "egg_info" not in sys.argv else [],
    setup_requires=BUILD_REQUIRES,
    cmdclass={"build_ext": OptionalBuildExt},
)
