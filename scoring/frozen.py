"""A cheaper ``__init__`` for the frozen slotted dataclasses built on every scored event.

Why: a frozen dataclass's generated ``__init__`` sets each field with ``object.__setattr__`` looked up and
called by name, about 4× the cost of a plain attribute store; the scorer builds about twenty such value
objects per event (facts, keys, signals, assessments), which was 8 % of the processor's CPU (issue 18).
Setting the slots through their member descriptors, bound once, halves that, and nothing else changes:
the class stays frozen (assignment raises ``FrozenInstanceError``), hashable and equal by value, with the
same signature, defaults and ``repr``.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

T = TypeVar("T")


def fast_init(cls: type[T]) -> type[T]:
    """Replace the ``__init__`` of frozen slotted dataclass ``cls`` (apply above ``@dataclass``)."""
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
