"""Types of the C module schemas._native (schemas/_native.c): the profile's rendering and HSET packing."""

from typing import Any

#: the profile's field names in the order render() writes them (CustomerProfile.model_fields)
FIELDS: tuple[str, ...]

def render(
    customer_id: str, state: Any, now_ms: int, context: tuple[object, ...], currency: str, clv: Any, risk: Any
) -> tuple[tuple[str, ...], int] | None: ...
def pack_hset(key: str, args: tuple[str, ...]) -> bytes | None: ...
def last_bail() -> int: ...
