"""The spend-decline signal looks only at the steps where a bucket leaves a window: the same reason and
flip time as trying every step (the loop it replaced, kept here as the reference)."""

from __future__ import annotations

from itertools import accumulate
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.churn import _spend_decline
from scoring.customer import ScoringConfig
from scoring.orders import OrderState

CONFIG = ScoringConfig()
WIDTH = CONFIG.orders.bucket_ms


def every_step(buckets: dict[int, int], now_ms: int) -> tuple[bool, int | None]:
    c = CONFIG.churn
    n = -(-c.spend_window_days // CONFIG.orders.revenue_bucket_days)
    cur = now_ms // WIDTH
    base = cur - 2 * n + 1
    spend = [buckets.get(b, 0) for b in range(base, cur + 1)]
    if not any(spend):
        return False, None
    sums = list(accumulate(spend, initial=0))
    sums += [sums[-1]] * (2 * n)
    ratio = c.spend_decline_ratio
    hi = 2 * n
    recent, prior = sums[hi] - sums[hi - n], sums[hi - n] - sums[0]
    now_decline = prior > 0 and recent < ratio * prior
    for step in range(1, 2 * n + 1):
        h = hi + step
        r, p = sums[h] - sums[h - n], sums[h - n] - sums[h - 2 * n]
        if (p > 0 and r < ratio * p) != now_decline:
            return now_decline, (cur + step) * WIDTH
    return now_decline, None


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.integers(100, 160), st.integers(-5_000, 50_000), max_size=12),
    st.integers(120 * WIDTH, 170 * WIDTH),
)
def test_the_same_decline_and_flip_as_every_step(buckets, now_ms):
    inputs = SimpleNamespace(orders=OrderState(revenue_buckets=buckets))
    reason, flip = _spend_decline(inputs, now_ms, CONFIG)  # type: ignore[arg-type]
    assert (reason is not None, flip) == every_step(buckets, now_ms)
