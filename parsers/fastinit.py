"""A faster constructor for the frozen, slotted dataclasses built on the hot path.

Events and PDUs are frozen, slotted dataclasses: immutable, small, and the
public contract. A frozen dataclass's generated ``__init__`` must go around its
own ``__setattr__`` (which refuses every write) and so calls
``object.__setattr__(self, name, value)`` once per field: about 0.1 µs a field
in CPython 3.11, which made event construction the largest single cost of
parsing a Modbus message.

``fast_init`` keeps the class exactly as it is (frozen, slotted, same fields,
defaults, ``repr``, ``eq``, ``__post_init__``) and only replaces ``__init__`` with
one that stores each field through its slot descriptor, which skips the attribute
lookup machinery and costs about half. Measured on ModbusRequest (9 fields):
0.94 µs → 0.52 µs per instance.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def fast_init(cls: type[T]) -> type[T]:
    """Replace the ``__init__`` of a frozen, slotted dataclass; returns the class."""
    params = dataclasses.fields(cls)  # type: ignore[arg-type]
    if "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} must be a slotted dataclass")
    namespace: dict[str, Any] = {}
    signature: list[str] = []
    body: list[str] = []
    for field in params:
        if not field.init:
            raise TypeError(f"{cls.__name__}.{field.name}: init=False is not supported")
        if field.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: default_factory is not supported")
        if field.default is dataclasses.MISSING:
            signature.append(field.name)
        else:
            namespace[f"_default_{field.name}"] = field.default
            signature.append(f"{field.name}=_default_{field.name}")
        namespace[f"_set_{field.name}"] = getattr(cls, field.name).__set__
        body.append(f"    _set_{field.name}(self, {field.name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(signature)}):\n" + "\n".join(body or ["    pass"])
    exec(source, namespace)  # the same technique dataclasses itself uses
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 (mypy forbids assigning a method)
    return cls
