"""Incremental per-customer order state (spec: Financial, Behaviour).

Money is kept in integer cents of the base currency so that the streaming
result is independent of event order and equals a batch sum to the cent.
Every update is commutative (sums, min, max, bucketed sums), so late and
out-of-order events give the same state as the sorted history.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache

from scoring.frozen import Value
from scoring.state import State
from scoring.units import DAY_MS

#: Average month length used for "orders per month of tenure".
MONTH_MS = int(30.436875 * DAY_MS)


@dataclass(frozen=True, slots=True)
class OrderScoringConfig:
    default_gross_margin: Decimal = Decimal("0.30")
    revenue_window_days: int = 365
    revenue_bucket_days: int = 7

    @property
    def bucket_ms(self) -> int:
        return self.revenue_bucket_days * DAY_MS

    @property
    def window_buckets(self) -> int:
        """Buckets covering the window: the current one plus enough whole ones behind it."""
        return -(-self.revenue_window_days // self.revenue_bucket_days)


class OrderFact(Value, frozen=True):
    """An order event reduced to what scoring needs (base-currency cents, epoch ms)."""

    occurred_ms: int
    amount_cents: int
    cost_cents: int | None
    refunded: bool = False


class OrderState(State):
    orders: int = 0
    refunds: int = 0
    revenue_cents: int = 0
    cost_cents: int = 0
    first_purchase_ms: int | None = None
    last_purchase_ms: int | None = None
    #: bucket index (occurred_ms // bucket_ms) -> net revenue cents; sparse and
    #: pruned to the window, so at most ``window_buckets + 1`` entries.
    revenue_buckets: dict[int, int] = {}


def to_cents(amount: Decimal, rate: Decimal = Decimal(1)) -> int:
    """Base-currency cents, banker's rounding (the rounding a ledger would use)."""
    return int((amount * rate * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def order_cost_cents(fact: OrderFact, config: OrderScoringConfig) -> int:
    """Cost of an order: its own cost, else amount × (1 − default margin), rounded half to even."""
    if fact.cost_cents is not None:
        return fact.cost_cents
    share = _cost_share(config.default_gross_margin)
    if share is None or not -_EXACT_CENTS < fact.amount_cents < _EXACT_CENTS:
        return _decimal_cost_cents(fact.amount_cents, config.default_gross_margin)
    # the Decimal product and quantize in integers (they agree exactly: see _cost_share); an order without its
    # own cost is the usual one, and the Decimal arithmetic was a tenth of applying it
    num, den = share
    q, r = divmod(fact.amount_cents * num, den)
    twice = 2 * r
    if twice > den or (twice == den and q % 2):
        q += 1
    return q


#: below this many cents, an amount times a margin of at most 12 decimals has at most 27 digits: exact in Decimal
_EXACT_CENTS = 10**14


def _decimal_cost_cents(amount_cents: int, margin: Decimal) -> int:
    return int((Decimal(amount_cents) * (1 - margin)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@lru_cache(maxsize=16)
def _cost_share(margin: Decimal) -> tuple[int, int] | None:
    """1 − ``margin`` as an exact fraction (numerator, denominator > 0), or None to keep the Decimal arithmetic:
    a margin with more than 12 decimals (its product with an amount could need more than Decimal's 28 digits,
    where Decimal rounds); amounts of 10^14 cents or more keep it too (``_EXACT_CENTS``)."""
    exponent = margin.as_tuple().exponent
    if not margin.is_finite() or not isinstance(exponent, int) or exponent < -12:
        return None
    return (1 - margin).as_integer_ratio()


def apply_order(state: OrderState, fact: OrderFact, config: OrderScoringConfig) -> OrderState:
    """Fold one order into the state (mutates and returns it).

    A completed order adds revenue and cost and counts as a purchase; a refund
    reverses the refunded amount and its cost, in the bucket of the refund's own
    time, and counts in ``refunds`` only.
    """
    sign = -1 if fact.refunded else 1
    amount = sign * fact.amount_cents
    state.revenue_cents += amount
    state.cost_cents += sign * order_cost_cents(fact, config)
    if fact.refunded:
        state.refunds += 1
    else:
        state.orders += 1
        if state.first_purchase_ms is None or fact.occurred_ms < state.first_purchase_ms:
            state.first_purchase_ms = fact.occurred_ms
        if state.last_purchase_ms is None or fact.occurred_ms > state.last_purchase_ms:
            state.last_purchase_ms = fact.occurred_ms
    bucket = fact.occurred_ms // config.bucket_ms
    buckets = state.revenue_buckets
    buckets[bucket] = buckets.get(bucket, 0) + amount
    _prune_buckets(buckets, config)
    return state


def _prune_buckets(buckets: dict[int, int], config: OrderScoringConfig) -> None:
    """Keep only buckets that can still fall inside the window of the newest one."""
    if len(buckets) <= config.window_buckets:
        return
    oldest_kept = max(buckets) - config.window_buckets + 1
    for bucket in [b for b in buckets if b < oldest_kept]:
        del buckets[bucket]


def window_revenue_cents(state: OrderState, now_ms: int, config: OrderScoringConfig) -> int:
    """Net revenue of the buckets in the rolling window ending at ``now_ms``.

    The window is ``window_buckets`` whole buckets ending with the one that
    holds ``now_ms``; its resolution is one bucket (``revenue_bucket_days``).
    """
    current = now_ms // config.bucket_ms
    oldest = current - config.window_buckets + 1
    buckets = state.revenue_buckets
    if not buckets:
        return 0
    if oldest <= min(buckets) and max(buckets) <= current:
        return sum(buckets.values())  # the usual case (pruned to the window of the newest): summed in C
    return sum(cents for bucket, cents in buckets.items() if oldest <= bucket <= current)


class OrderSignals(Value, frozen=True):
    """Derived order indicators at a point of event time."""

    revenue_cents: int
    profit_cents: int
    orders: int
    refunds: int
    aov_cents: int | None
    first_purchase_ms: int | None
    last_purchase_ms: int | None
    recency_days: float | None
    tenure_days: float | None
    orders_per_month: float | None
    window_revenue_cents: int


def _average_cents(cents: int, count: int) -> int:
    """``cents / count`` rounded half to even, as ``Decimal`` division and ``quantize`` gave it, in integers
    (the Decimal quotient is exact to 28 digits, so the two agree below 10^18 cents)."""
    if abs(cents) >= 10**18 or count <= 0:
        return int((Decimal(cents) / count).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    q, r = divmod(cents, count)
    twice = 2 * r
    if twice > count or (twice == count and q % 2):
        q += 1
    return q


def order_signals(state: OrderState, now_ms: int, config: OrderScoringConfig) -> OrderSignals:
    """Indicators of the state as seen at event time ``now_ms`` (the watermark)."""
    recency = tenure = per_month = None
    if state.last_purchase_ms is not None and state.first_purchase_ms is not None:
        recency = max(0, now_ms - state.last_purchase_ms) / DAY_MS
        tenure_ms = max(0, now_ms - state.first_purchase_ms)
        tenure = tenure_ms / DAY_MS
        # A first-month customer has a tenure of (at least) one month.
        per_month = state.orders / max(1.0, tenure_ms / MONTH_MS)
    aov = None
    if state.orders:
        aov = _average_cents(state.revenue_cents, state.orders)
    return OrderSignals(
        revenue_cents=state.revenue_cents,
        profit_cents=state.revenue_cents - state.cost_cents,
        orders=state.orders,
        refunds=state.refunds,
        aov_cents=aov,
        first_purchase_ms=state.first_purchase_ms,
        last_purchase_ms=state.last_purchase_ms,
        recency_days=recency,
        tenure_days=tenure,
        orders_per_month=per_month,
        window_revenue_cents=window_revenue_cents(state, now_ms, config),
    )
