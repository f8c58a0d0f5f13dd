from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from hashlib import blake2b

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.profile import CustomerProfile
from scoring.customer import CustomerState, EventFacts, ScoringConfig, apply_event, event_id_hash
from scoring.orders import (
    OrderFact,
    OrderScoringConfig,
    OrderState,
    apply_order,
    order_cost_cents,
    order_signals,
    to_cents,
)
from scoring.units import DAY_MS
from testing.reference import batch_order_profiles

CONFIG = OrderScoringConfig()
SCORING_4 = ScoringConfig(orders=CONFIG, dedup_event_ids=4)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def fact(amount: str, day: float, cost: str | None = None, refunded: bool = False) -> OrderFact:
    return OrderFact(
        occurred_ms=ms(T0 + timedelta(days=day)),
        amount_cents=to_cents(Decimal(amount)),
        cost_cents=None if cost is None else to_cents(Decimal(cost)),
        refunded=refunded,
    )


def test_spec_worked_example_revenue_profit_aov():
    # 100 per purchase, 5 purchases: revenue 500; no cost given -> 30 % margin.
    state = OrderState()
    for day in range(5):
        apply_order(state, fact("100", day * 70), CONFIG)
    sig = order_signals(state, ms(T0 + timedelta(days=300)), CONFIG)
    assert (sig.revenue_cents, sig.profit_cents, sig.orders, sig.aov_cents) == (50000, 15000, 5, 10000)
    assert sig.recency_days == 20.0 and sig.tenure_days == 300.0


def test_own_cost_wins_over_default_margin_and_refund_reverses_amount_and_cost():
    state = OrderState()
    apply_order(state, fact("200", 0, cost="150"), CONFIG)
    apply_order(state, fact("50", 1), CONFIG)  # cost 35 by default margin
    apply_order(state, fact("50", 3, refunded=True), CONFIG)
    sig = order_signals(state, ms(T0 + timedelta(days=3)), CONFIG)
    assert sig.revenue_cents == 20000 and sig.profit_cents == 20000 - 15000
    assert (sig.orders, sig.refunds) == (2, 1)
    assert sig.aov_cents == 10000
    assert sig.last_purchase_ms == ms(T0 + timedelta(days=1))  # a refund is not a purchase


def test_configurable_margin():
    state = apply_order(OrderState(), fact("100", 0), OrderScoringConfig(default_gross_margin=Decimal("0.5")))
    assert state.revenue_cents - state.cost_cents == 5000


def test_rolling_window_revenue_and_bounded_buckets():
    cfg = OrderScoringConfig(revenue_window_days=28, revenue_bucket_days=7)
    state = OrderState()
    for day in range(0, 400):  # a daily buyer for 400 days
        apply_order(state, fact("1", day), cfg)
    assert len(state.revenue_buckets) <= cfg.window_buckets
    now = ms(T0 + timedelta(days=399))
    # the window is the 4 weekly buckets ending with the one holding "now"
    current = now // cfg.bucket_ms
    expected = sum(1 for d in range(400) if ms(T0 + timedelta(days=d)) // cfg.bucket_ms > current - 4) * 100
    assert order_signals(state, now, cfg).window_revenue_cents == expected
    assert order_signals(state, now + 60 * DAY_MS, cfg).window_revenue_cents == 0


def test_orders_per_month_counts_a_young_customer_as_one_month():
    state = apply_order(OrderState(), fact("10", 0), CONFIG)
    apply_order(state, fact("10", 2), CONFIG)
    assert order_signals(state, ms(T0 + timedelta(days=2)), CONFIG).orders_per_month == 2.0


def scored(event_id: str, offset: int | None, f: OrderFact) -> EventFacts:
    return EventFacts(kind="order", event_id=event_id, occurred_ms=f.occurred_ms, offset=offset, order=f)


def test_redelivered_offset_and_duplicate_event_id_are_dropped():
    state = CustomerState()
    assert apply_event(state, scored("a", 10, fact("5", 0)), SCORING_4)
    assert not apply_event(state, scored("a", 10, fact("5", 0)), SCORING_4)  # redelivery
    assert not apply_event(state, scored("b", 9, fact("5", 0)), SCORING_4)  # older offset
    assert not apply_event(state, scored("a", 11, fact("5", 0)), SCORING_4)  # producer duplicate
    assert state.source_offsets["order"] == 11
    assert apply_event(state, scored("c", 12, fact("5", 0)), SCORING_4)
    assert state.orders.orders == 2 and state.events == {"order": 2}


def test_event_id_memory_is_bounded():
    state = CustomerState()
    for i in range(100):
        apply_event(state, scored(f"e{i}", i, fact("1", 0)), ScoringConfig(dedup_event_ids=8))
    assert len(state.recent_ids) == 8


# --- property: incremental == batch, in any arrival order, with duplicates ---

amounts = st.decimals(min_value=Decimal("0"), max_value=Decimal("5000"), places=2)
orders_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=4),  # customer
        amounts,
        st.one_of(st.none(), amounts),  # cost
        st.booleans(),  # refunded
        st.integers(min_value=0, max_value=720),  # day
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(orders_strategy, st.randoms(use_true_random=False), st.data())
def test_incremental_equals_batch_in_any_order(rows, rnd, data):
    events = []
    for i, (c, amount, cost, refunded, day) in enumerate(rows):
        event = {
            "event_id": f"e{i}",
            "customer_id": f"C{c}",
            "occurred_at": (T0 + timedelta(days=day, seconds=i)).isoformat(),
            "amount": str(amount),
            "status": "refunded" if refunded else "completed",
        }
        if cost is not None:
            event["cost"] = str(cost)
        events.append(event)
    # duplicates (same event_id, as a producer retry would send) and shuffling
    dupes = data.draw(st.lists(st.sampled_from(events), max_size=10))
    arrival = events + dupes
    rnd.shuffle(arrival)

    states: dict[str, CustomerState] = {}
    for event in arrival:
        f = OrderFact(
            occurred_ms=ms(datetime.fromisoformat(event["occurred_at"])),
            amount_cents=to_cents(Decimal(event["amount"])),
            cost_cents=None if "cost" not in event else to_cents(Decimal(event["cost"])),
            refunded=event["status"] == "refunded",
        )
        state = states.setdefault(event["customer_id"], CustomerState())
        apply_event(state, scored(event["event_id"], None, f), ScoringConfig(dedup_event_ids=1024))

    expected = batch_order_profiles(events)
    now = max(ms(datetime.fromisoformat(e["occurred_at"])) for e in events)
    assert set(states) == set(expected)
    for cid, state in states.items():
        profile = CustomerProfile.from_state(cid, state, now, ScoringConfig(), "USD")
        exp = expected[cid]
        got = {k: getattr(profile, k) for k in exp}
        assert got == exp, cid


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, 10**15),
    st.sampled_from(["0.30", "0", "1", "0.5", "0.123456789012", "0.1234567890123", "0.07", "0.333", "1.5", "-0.2"]),
)
def test_default_cost_in_integers_equals_the_decimal_product(amount_cents, margin):
    config = OrderScoringConfig(default_gross_margin=Decimal(margin))
    expected = int((Decimal(amount_cents) * (1 - Decimal(margin))).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    assert order_cost_cents(OrderFact(0, amount_cents, None), config) == expected


def test_the_event_id_hash_is_the_one_stored_states_hold():
    """``recent_ids`` in the changelog hold these values: the hash must never change (BLAKE2b-64, signed big
    endian), however it is computed."""
    assert event_id_hash("e-1") == 3563339379545017759
    assert event_id_hash("order-000123") == 1337413329615114042
    assert event_id_hash("é🙂") == 428517516755516126
    for n in range(300):
        event_id = f"evt-{n * 7919:x}" * (n % 5 + 1)
        assert event_id_hash(event_id) == int.from_bytes(
            blake2b(event_id.encode(), digest_size=8).digest(), "big", signed=True
        )
