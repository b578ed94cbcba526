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


def test_refuses_kw_only_instead_of_making_it_positional() -> None:
    with pytest.raises(TypeError, match="kw_only"):
        @fast_init
        @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
        class KwOnly:
            a: int

    with pytest.raises(TypeError, match="kw_only"):
        @fast_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class Marker:
            a: int
            _: dataclasses.KW_ONLY
            b: int = 0


def test_refuses_an_init_var_instead_of_breaking_the_constructor() -> None:
    with pytest.raises(TypeError, match="seed"):
        @fast_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class WithInitVar:
            a: int
            seed: dataclasses.InitVar[int] = 0

            def __post_init__(self, seed: int) -> None:
                pass


def test_refuses_init_false_mutable_and_undecorated_classes() -> None:
    with pytest.raises(TypeError, match="init=False"):
        @fast_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class Hidden:
            a: int
            b: int = dataclasses.field(default=0, init=False)

    with pytest.raises(TypeError, match="frozen"):
        @fast_init
        @dataclasses.dataclass(slots=True)
        class Mutable:
            a: int

    with pytest.raises(TypeError, match="not a dataclass"):
        @fast_init
        class Bare:
            __slots__ = ("a",)


def test_inherited_fields_keep_the_base_signature() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Base:
        a: int
        b: int = 2

    @fast_init
    @dataclasses.dataclass(frozen=True, slots=True)
    class Child(Base):
        pass

    assert Child(1) == Child(a=1, b=2) and Child(1, 3).b == 3
    assert repr(Child(1)).endswith("Child(a=1, b=2)")


def test_every_event_and_pdu_module_follows_the_policy() -> None:
    """The parsers' per-message classes all use fast_init (one policy, see its docstring)."""
    from mamori.parsers.dnp3 import events as dnp3
    from mamori.parsers.modbus import events as modbus
    from mamori.parsers.modbus import pdu

    for module in (dnp3, modbus, pdu):
        classes = [c for c in vars(module).values() if isinstance(c, type)
                   and dataclasses.is_dataclass(c) and c.__module__ == module.__name__]
        assert classes, module
        slow = [c.__name__ for c in classes if not getattr(c.__init__, "fast_init", False)]
        assert slow == [], module.__name__
