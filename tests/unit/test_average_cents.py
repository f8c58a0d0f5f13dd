"""The integer average order value equals the Decimal division and half-even quantize it replaced."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from hypothesis import given
from hypothesis import strategies as st

from scoring.orders import _average_cents


def decimal_average(cents: int, count: int) -> int:
    return int((Decimal(cents) / count).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def test_small_values_and_every_tie():
    for cents in range(-60, 61):
        for count in range(1, 13):
            assert _average_cents(cents, count) == decimal_average(cents, count), (cents, count)


@given(st.integers(-(10**19), 10**19), st.integers(1, 10**6))
def test_any_revenue_and_order_count(cents, count):
    assert _average_cents(cents, count) == decimal_average(cents, count)
