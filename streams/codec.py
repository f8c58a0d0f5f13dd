"""Compact, fast encoding of :class:`CustomerState` for the changelog-backed table."""

from __future__ import annotations

import orjson

from scoring.customer import CustomerState
from scoring.orders import OrderState


def encode_state(state: CustomerState) -> bytes:
    # orjson serialises dataclasses natively; int dict keys need OPT_NON_STR_KEYS.
    return orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS)


def decode_state(raw: bytes | None) -> CustomerState:
    if not raw:
        return CustomerState()
    data = orjson.loads(raw)
    orders = data["orders"]
    orders["revenue_buckets"] = {int(k): v for k, v in orders["revenue_buckets"].items()}
    data["orders"] = OrderState(**orders)
    return CustomerState(**data)
