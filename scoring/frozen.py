"""The base of the immutable value objects the scorers build on every scored event.

Why: the scorer builds about twenty small value objects per event (facts, rank keys, signals, assessments).
As frozen slotted dataclasses each cost a Python ``__init__`` frame that stores every field through
``object.__setattr__`` (or, with the former ``fast_init``, through each slot's descriptor): measured with
callgrind, about 5,000 instructions for an eight-field object. A frozen ``msgspec.Struct`` is built in C for
about a tenth of that and keeps what the scorers rely on: assignment raises (``AttributeError``), instances
are equal by value and hashable, the signature, defaults (mutable ones fresh per instance) and ``repr`` are
a dataclass's, attributes are slots.

``gc=False``: the objects hold numbers, strings, tuples of other value objects, or (``ChurnInputs``,
``Contribution``) references to state parts and dict copies, none of which ever refers back to a value
object: they can form no reference cycle, so the garbage collector need not track them (fewer tracked
objects, cheaper collections). Pure: msgspec is only the class machinery here, nothing is encoded.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import msgspec


class Value(msgspec.Struct, frozen=True, gc=False):
    """Subclass with annotated fields, like a ``@dataclass(frozen=True, slots=True)``: ``class X(Value,
    frozen=True)`` (subclasses inherit frozen and gc at run time; restated, so type checkers see it too)."""


T = TypeVar("T")


def fast_init(cls: type[T]) -> type[T]:
    """Replace the ``__init__`` of frozen slotted dataclass ``cls`` (apply above ``@dataclass``): the former way
    (setting the slots through their member descriptors, about half the dataclass's own cost); the scorers'
    value classes are :class:`Value` now, kept for frozen dataclasses that must stay dataclasses."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not params.frozen or "__slots__" not in cls.__dict__ or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: fast_init is for frozen slotted dataclasses without __post_init__")
    namespace: dict[str, object] = {"_MISSING": dataclasses.MISSING}
    args, body = [], []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: keyword-only fields and fields left out of __init__")
        namespace[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            args.append(f"{f.name}=_default_{f.name}")
            body.append(f"    _set_{f.name}(self, {f.name})")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            args.append(f"{f.name}=_MISSING")
            body.append(f"    _set_{f.name}(self, _factory_{f.name}() if {f.name} is _MISSING else {f.name})")
        else:
            args.append(f.name)
            body.append(f"    _set_{f.name}(self, {f.name})")
    source = f"def __init__(self, {', '.join(args)}) -> None:\n" + ("\n".join(body) or "    pass")
    exec(source, namespace)  # noqa: S102 - generated from the dataclass's own fields, as dataclasses does
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign,assignment]
    return cls
