"""The at-risk queue's order as sorted-set scores: priority (high before medium), then value at risk in exact cents,
then customer id; and the score ranges of a minimum value at risk. Redis's sorted set itself is exercised by
tests/e2e/test_at_risk.py against a brute-force oracle."""

from __future__ import annotations

import random
from decimal import Decimal

from streams.at_risk import MAX_CENTS, index_score, score_ranges, value_cents


def queue_order(entries: list[tuple[str, str, str]]) -> list[str]:
    """Customer ids as Redis orders (score, member) ascending, the queue's order."""
    return [cid for _, cid in sorted((index_score(level, value), cid) for cid, level, value in entries)]


def test_a_high_risk_low_value_customer_comes_before_a_medium_risk_high_value_one():
    entries = [
        ("m-rich", "medium", "90000.00"),
        ("h-poor", "high", "0.01"),
        ("h-zero", "high", "0"),
        ("h-mid", "high", "250.00"),
        ("m-poor", "medium", "12.50"),
        ("m-tie-b", "medium", "12.50"),
    ]
    assert queue_order(entries) == ["h-mid", "h-poor", "h-zero", "m-rich", "m-poor", "m-tie-b"]


def test_cents_stay_exact_at_any_value_a_double_can_hold():
    """Two values a cent apart never tie, up to the cap, and a score survives Redis's parse (a double) exactly."""
    top = Decimal(MAX_CENTS) / 100
    for level in ("high", "medium"):
        for value in (top, top - Decimal("0.01"), Decimal("123456789012.34"), Decimal("0.01"), Decimal(0)):
            score = index_score(level, value)
            assert int(float(str(score))) == score, (level, value)
            assert index_score(level, value - Decimal("0.01")) > score or value == 0
    # beyond the cap (45 trillion) values tie at the cap: still after no high-risk customer, before no lower one
    assert index_score("medium", top * 10) == index_score("medium", top)
    assert index_score("high", "0") < index_score("medium", top * 10)


def test_value_cents_of_odd_input():
    assert value_cents("12.345") == 1234  # floor: a profile's money has two decimals anyway
    assert value_cents(None) == value_cents("") == value_cents("n/a") == 0
    assert value_cents("-3") == value_cents("NaN") == value_cents("Infinity") == 0


def test_score_ranges_hold_exactly_the_customers_at_or_above_the_minimum():
    rng = random.Random(7)
    values = [Decimal(rng.randrange(0, 10**9)) / 100 for _ in range(300)] + [Decimal(0), Decimal(MAX_CENTS) / 100]
    for minimum in (None, Decimal(0), Decimal("0.01"), Decimal("4999.995"), Decimal(-1), values[5], values[6]):
        ranges = score_ranges(minimum)
        assert len(ranges) == (1 if minimum is None else 2)
        for level in ("high", "medium"):
            for value in values:
                score = index_score(level, value)
                inside = [
                    n
                    for n, (low, high) in enumerate(ranges)
                    if (low == "-inf" or score >= int(low)) and (high == "+inf" or score <= int(high))
                ]
                wanted = minimum is None or value >= minimum
                assert len(inside) == (1 if wanted else 0), (minimum, level, value, ranges)
                # the ranges are in queue order: high-risk customers in the first one
                if wanted and minimum is not None:
                    assert inside == [0 if level == "high" else 1]
