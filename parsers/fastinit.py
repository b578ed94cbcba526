"""A faster constructor for the frozen, slotted dataclasses built on the hot path.

The policy (issue 13): every event and PDU a parser builds per message is a
frozen, slotted dataclass with ``@fast_init`` on top; value objects built once
(configuration, tables) are plain frozen, slotted dataclasses. The exceptions are
named tuples built with ``tuple.__new__``, each inside one path and never handed to
an event consumer: ``parsers.packet.Decoded`` (the decoder's per-frame return value)
and, at the collector, ``parsers.wire.Envelope`` and the storage's ``StoredMessage``
(one per received message).

Why: a frozen dataclass's generated ``__init__`` must go around its own
``__setattr__`` (which refuses every write) and so calls
``object.__setattr__(self, name, value)`` once per field: about 0.1 µs a field
in CPython 3.11, which made event construction the largest single cost of
parsing a Modbus message. ``fast_init`` replaces only ``__init__`` with one
that stores each field through its slot descriptor, which costs about half.
Measured (interleaved, best of 5, loaded 2-core box): ModbusRequest (9 fields)
0.9-1.2 µs with it, 1.3-1.5 µs without. A 3-field class in a module compiled
with mypyc (issue 14), fast_init compiled too: 0.26 µs with it, 0.48 µs
without. Compiled, a class under ``@fast_init`` stays a Python class (mypyc
makes native only classes whose decorators it knows), so the ``exec``-built
``__init__`` survives compilation; see ``python_class`` for what that asks of
base classes. Between two values typed as such a class, mypyc compiles ``==``
to an identity test unless the class defines ``__eq__`` in its body: compare
them typed as ``object`` (``parsers.modbus.decoders._echo``).

It keeps the class exactly as it is (frozen, slotted, same fields, defaults,
``repr``, ``eq``, ``hash``, ``__post_init__``) or refuses it: at class creation it
compares the signature it would install with the dataclass's own, and raises
``TypeError`` for anything it cannot reproduce (``kw_only`` fields, ``InitVar``,
``init=False``, ``default_factory``), so a class never silently changes how it is
called.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, TypeVar

T = TypeVar("T")


def fast_init(cls: type[T]) -> type[T]:
    """Replace the ``__init__`` of a frozen, slotted dataclass; returns the class.

    Raises ``TypeError`` when the class is not a frozen, slotted dataclass, or
    when its constructor takes anything but its fields, positionally or by name,
    in order (see the module docstring)."""
    name = cls.__name__
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{name}: not a dataclass (put @fast_init above @dataclass)")
    # getattr: mypyc before 1.10 takes ``type.__dict__`` for a dict and rejects the
    # mappingproxy it is at run time.
    if "__slots__" not in getattr(cls, "__dict__"):  # noqa: B009
        raise TypeError(f"{name} must be a slotted dataclass")
    if not getattr(cls, "__dataclass_params__").frozen:  # noqa: B009 (no stub names it)
        raise TypeError(f"{name} must be frozen (a mutable dataclass's __init__ is fast)")
    namespace: dict[str, Any] = {}
    signature: list[str] = []
    body: list[str] = []
    for field in dataclasses.fields(cls):
        if not field.init:
            raise TypeError(f"{name}.{field.name}: init=False is not supported")
        if field.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{name}.{field.name}: default_factory is not supported")
        if field.kw_only:
            raise TypeError(f"{name}.{field.name}: kw_only is not supported")
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
    _same_call(name, cls.__init__, init)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    init.fast_init = True  # what the policy test looks for
    setattr(cls, "__init__", init)  # noqa: B010 (mypy forbids assigning a method)
    return cls


def python_class(cls: type[T]) -> type[T]:
    """Keep ``cls`` a Python class when its module is compiled with mypyc; returns it as is.

    mypyc turns an undecorated class into a native (extension) class, but one with
    any decorator it does not know, ``fast_init`` among them, stays a Python class,
    and a Python class may not derive from a native one. A base class that
    ``fast_init`` classes derive from (``parsers.modbus.pdu.Pdu``) carries this
    decorator, which does nothing at run time, so base and subclasses are alike;
    so does a subclass of a builtin mypyc cannot derive natively (``str``)."""
    return cls


def _same_call(name: str, theirs: Any, ours: Any) -> None:
    """Refuse unless both constructors take the same parameters, of the same kind,
    in the same order, with the same defaults (an ``InitVar`` is a parameter that
    is no field, so it shows here)."""
    want = [(p.name, p.kind, p.default) for p in inspect.signature(theirs).parameters.values()]
    have = [(p.name, p.kind, p.default) for p in inspect.signature(ours).parameters.values()]
    if want != have:
        extra = sorted({p[0] for p in want} ^ {p[0] for p in have})
        raise TypeError(f"{name}: fast_init cannot keep its constructor "
                        f"({', '.join(extra) or 'parameter kinds or defaults differ'})")
