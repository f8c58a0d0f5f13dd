"""The base of the mutable per-customer state classes: what the changelog holds of a customer (streams/codec.py).

Why msgspec Structs rather than slotted dataclasses: the worker encodes every state it writes, and decodes each
one its state cache misses (streams/state_cache.py). With the classes as ``array_like`` Structs msgspec writes
and reads them in C, in the changelog's positional format (each class an array of its fields in declaration
order), where the codec took the dataclasses apart and built them again field by field in Python (~35,000
instructions an encode, ~79,000 a decode: issue 18, docs/benchmarks.md session 38). The classes keep what the
scorers rely on: mutable attributes in slots, value equality, the signature, defaults fresh per instance (msgspec
copies an empty ``[]`` or ``{}`` default; nested states take ``msgspec.field(default_factory=...)``) and the repr.

The declaration order of a class's fields is its wire order: append-only (tests/unit/test_codec.py freezes it).
Pure: msgspec is only the class machinery here; nothing is encoded in ``scoring``.
"""

from __future__ import annotations

import msgspec


class State(msgspec.Struct, array_like=True):
    """Subclass with annotated fields, like a ``@dataclass(slots=True)``: ``class X(State)``. ``array_like``
    (inherited): encoded as an array of the field values, in declaration order."""


class FrozenState(msgspec.Struct, array_like=True, frozen=True):
    """:class:`State` for a part that never changes once made (assignment raises, hashable), like a
    ``@dataclass(frozen=True, slots=True)``: ``class X(FrozenState, frozen=True)`` (restated, so type checkers
    see it)."""
