"""Churn signals: the incremental state in any arrival order == a batch recomputation over the events;
and no signal switches before the time the due-time index is told to look again."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring.clv import ClvConfig
from scoring.customer import CustomerState, EventFacts, ScoringConfig, apply_event, assess_customer
from scoring.orders import OrderFact
from scoring.tickets import TicketFact
from scoring.units import DAY_MS
from scoring.voice import SEVERITIES, ComplaintFact, SurveyFact
from testing.reference import batch_churn_codes

CONFIG = ScoringConfig()
T0 = 20006 * DAY_MS
HORIZON_DAYS = 400

ms = st.integers(0, HORIZON_DAYS * DAY_MS).map(lambda x: T0 + x)
orders = st.tuples(st.just("order"), ms, st.integers(100, 50_000), st.booleans().map(lambda b: b and False))
refunds = st.tuples(st.just("order"), ms, st.integers(100, 5_000), st.just(True))
surveys = st.tuples(st.just("survey"), ms, st.none() | st.integers(0, 10), st.none() | st.integers(1, 5)).filter(
    lambda e: e[2] is not None or e[3] is not None
)
complaints = st.tuples(st.just("complaint"), ms, st.sampled_from(SEVERITIES))
tickets = st.tuples(
    st.just("support"),
    ms,
    st.sampled_from(["T1", "T2", "T3"]),
    st.sampled_from(["opened", "first_response", "resolved", "reopened"]),
)
#: at most 30 events: fewer distinct purchase days than PurchaseDays remembers, the regime where it is exact
histories = st.lists(st.one_of(orders, orders, refunds, surveys, complaints, tickets), max_size=30)


def facts(e: tuple) -> dict:
    kind, at = e[0], e[1]
    if kind == "order":
        return {"order": OrderFact(at, e[2], None, e[3])}
    if kind == "survey":
        return {"survey": SurveyFact(at, e[2], e[3])}
    if kind == "complaint":
        return {"complaint": ComplaintFact(at, e[2])}
    return {"ticket": TicketFact(at, e[2], e[3])}


def build(events: list[tuple]) -> CustomerState:
    state = CustomerState()
    for i, e in enumerate(events):
        apply_event(state, EventFacts(kind=e[0], event_id=f"e{i}", occurred_ms=e[1], **facts(e)), CONFIG)
    return state


def codes(state: CustomerState, now: int) -> set[str]:
    return {r.code for r in assess_customer(state, now, None, CONFIG)[1].reasons}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories, st.randoms(use_true_random=False), st.integers(0, 200 * DAY_MS))
def test_signals_equal_a_batch_recomputation_in_any_arrival_order(events, rnd, after):
    now = max((e[1] for e in events), default=T0) + after
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert codes(build(shuffled), now) == batch_churn_codes(events, now)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories, st.integers(0, 200 * DAY_MS), st.floats(0, 1))
def test_no_signal_switches_before_the_next_check(events, after, where):
    state = build(events)
    now = max((e[1] for e in events), default=T0) + after
    nxt = assess_customer(state, now, None, CONFIG)[1].next_change_ms
    later = now + int(where * ((nxt if nxt is not None else now + 3 * 365 * DAY_MS) - 1 - now))
    assert codes(state, later) == codes(state, now), (now, nxt, later)
    if nxt is not None:
        assert codes(state, nxt - 1) == codes(state, now)


def test_histories_stay_in_the_exact_regime():
    assert ClvConfig().max_purchase_days >= 30
