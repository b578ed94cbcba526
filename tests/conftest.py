"""Shared test fixtures: where the public corpus lives, and which tools exist."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

PROJECT = Path(__file__).resolve().parents[1]
CORPUS = PROJECT.parent / "shared" / "corpus"
CSAF = PROJECT.parent / "shared" / "csaf"  # real CSAF 2.0 advisories (read-only)


def unavailable(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, where everything must be present."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(reason)


def corpus_path(relative: str) -> Path:
    """A file of the read-only public corpus; the test skips if the corpus is absent."""
    path = CORPUS / relative
    if not path.exists():
        unavailable(f"corpus file {relative} not present")
    return path


def csaf_path(relative: str = "") -> Path:
    """A file or folder of the shared CSAF advisory set; skips (fails in CI) if absent."""
    path = CSAF / relative
    if not path.exists():
        unavailable(f"CSAF advisory {relative or 'set'} not present")
    return path


def corpus_captures() -> list[Path]:
    """Every real capture in the corpus (Git LFS pointers excluded), one per distinct content.

    Several folders hold byte-identical copies of the same trace; testing each once keeps
    the suite honest about what it covers.
    """
    if not CORPUS.is_dir():
        return []
    seen: set[str] = set()
    out: list[Path] = []
    for path in sorted(CORPUS.rglob("*")):
        if not path.is_file() or path.name.endswith(".lfs-pointer"):
            continue
        if path.suffix not in {".pcap", ".pcapng", ".cap"}:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        out.append(path)
    return out


@pytest.fixture
def tshark() -> str:
    """For ``pytest.mark.usefixtures("tshark")``: tshark, or skip (fail in CI)."""
    return require_tool("tshark")


def require_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        unavailable(f"{name} is not installed (make test installs it as root)")
    assert found is not None
    return found


T = TypeVar("T")


def captured_on_lo(make: Callable[[Path], T | None], tmp: pytest.TempPathFactory,
                   name: str, attempts: int = 3) -> T:
    """Traffic made and captured on lo by ``make``, made again, up to ``attempts`` times,
    each in a new directory, when a loaded host spoilt it: ``make`` returned None
    (tcpdump missed a frame) or the DNP3 peer stacks stalled at start-up
    (:class:`tests.peers.dnp3_peer.StartupStalled`); then skipped (failed in CI)."""
    from tests.peers.dnp3_peer import StartupStalled

    require_tool("tcpdump")
    for _attempt in range(attempts):
        try:
            made = make(tmp.mktemp(name))
        except StartupStalled:
            continue
        if made is not None:
            return made
    unavailable("tcpdump kept missing frames on lo, or the DNP3 peers kept stalling")
    raise AssertionError("unreachable")


def mamori_without(modules: Sequence[str], *argv: str,
                   **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``mamori ARGV`` in a fresh interpreter where ``modules`` cannot be imported, as on
    an install without the extra that brings them (their None in ``sys.modules`` makes
    ``import`` raise ImportError and ``importlib.util.find_spec`` answer None)."""
    code = ("import sys; sys.modules.update(dict.fromkeys(sys.argv[1].split(','))); "
            "from mamori.sensor.cli import main; sys.exit(main(sys.argv[2:]))")
    return subprocess.run([sys.executable, "-c", code, ",".join(modules), *argv],
                          capture_output=True, text=True, timeout=120, **kwargs)


def stop_all(procs: Sequence[subprocess.Popen[Any]]) -> None:
    """Stop what a test started, the last first: SIGTERM, then SIGKILL after 10 s."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
