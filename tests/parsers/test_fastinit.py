"""fast_init keeps a frozen, slotted dataclass exactly as it was, only faster to build."""

from __future__ import annotations

import dataclasses

import pytest

from mamori.parsers.fastinit import fast_init


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    a: int
    b: str = "x"
    c: tuple[int, ...] = ()


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class Checked:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("negative")


def test_same_behaviour_as_the_dataclass() -> None:
    s = Sample(1)
    assert (s.a, s.b, s.c) == (1, "x", ())
    assert Sample(1, "y", (2,)) == Sample(a=1, b="y", c=(2,))
    assert repr(Sample(1)) == "Sample(a=1, b='x', c=())"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.a = 2  # type: ignore[misc]
    assert not hasattr(s, "__dict__")
    assert hash(Sample(1)) == hash(Sample(1))
    with pytest.raises(TypeError):
        Sample()  # type: ignore[call-arg]


def test_post_init_still_runs() -> None:
    assert Checked(1).n == 1
    with pytest.raises(ValueError):
        Checked(-1)


def test_rejects_what_it_cannot_keep() -> None:
    with pytest.raises(TypeError):
        @fast_init
        @dataclasses.dataclass(frozen=True)
        class NoSlots:
            a: int

    with pytest.raises(TypeError):
        @fast_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class Factory:
            a: list[int] = dataclasses.field(default_factory=list)
