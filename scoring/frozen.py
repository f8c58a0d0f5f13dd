"""The base of the immutable value objects the scorers build on every scored event.

Why: the scorer builds about twenty small value objects per event (facts, rank keys, signals, assessments).
As frozen slotted dataclasses each cost a Python ``__init__`` frame that stores every field through
``object.__setattr__``: measured with
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

import msgspec


class Value(msgspec.Struct, frozen=True, gc=False):
    """Subclass with annotated fields, like a ``@dataclass(frozen=True, slots=True)``: ``class X(Value,
    frozen=True)`` (subclasses inherit frozen and gc at run time; restated, so type checkers see it too)."""
