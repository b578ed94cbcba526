"""``captured_on_lo`` makes spoilt traffic again, and only so many times.

A loaded host spoils traffic made on lo in two known ways: tcpdump misses a frame
(``make`` returns None) and the opendnp3 stacks stall at start-up
(:class:`tests.peers.dnp3_peer.StartupStalled`). Both are made again; anything else
the maker raises is a real failure and goes straight through.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import captured_on_lo, require_tool
from tests.peers.dnp3_peer import StartupStalled


@pytest.fixture(autouse=True)
def _tcpdump() -> None:
    require_tool("tcpdump")


def _maker(outcomes: list[object]) -> tuple[list[Path], Callable[[Path], object]]:
    dirs: list[Path] = []

    def make(tmp: Path) -> object:
        dirs.append(tmp)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return dirs, make


def test_a_stall_and_a_miss_are_made_again_each_in_a_new_directory(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    dirs, make = _maker([StartupStalled("stalled"), None, "traffic"])
    assert captured_on_lo(make, tmp_path_factory, "again") == "traffic"
    assert len(dirs) == 3 and len(set(dirs)) == 3


def test_three_stalls_give_up(tmp_path_factory: pytest.TempPathFactory,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)  # skipped here; in CI the same gives a failure
    dirs, make = _maker([StartupStalled("stalled")] * 3 + ["never reached"])
    with pytest.raises(pytest.skip.Exception, match="kept stalling"):
        captured_on_lo(make, tmp_path_factory, "stalls")
    assert len(dirs) == 3


def test_another_timeout_is_a_failure_not_a_remake(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    dirs, make = _maker([TimeoutError("the sensor never answered"), "traffic"])
    with pytest.raises(TimeoutError, match="never answered"):
        captured_on_lo(make, tmp_path_factory, "fails")
    assert len(dirs) == 1
