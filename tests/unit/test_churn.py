"""Churn signals at their thresholds, the score and level, and the alert rule (spec: Churn warning)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import churn
from scoring.churn import ChurnAssessment, ChurnConfig, ChurnReason, ChurnState
from scoring.customer import CustomerState, EventFacts, ScoringConfig, apply_event, assess_customer
from scoring.orders import OrderFact
from scoring.tickets import HOUR_MS, TicketFact
from scoring.units import DAY_MS
from scoring.voice import ComplaintFact, SurveyFact

CONFIG = ScoringConfig()
#: a Monday 00:00 UTC whose epoch day is a multiple of 7: revenue buckets start on it
D0 = 20006 * DAY_MS


def customer(*events: tuple[str, int, object]) -> CustomerState:
    state = CustomerState()
    for i, (kind, at, fact) in enumerate(events):
        apply_event(state, EventFacts(kind=kind, event_id=f"e{i}", occurred_ms=at, **{kind_field(kind): fact}), CONFIG)
    return state


def kind_field(kind: str) -> str:
    return {"order": "order", "survey": "survey", "complaint": "complaint", "support": "ticket"}[kind]


def order(day: float, cents: int = 10_000) -> tuple[str, int, OrderFact]:
    at = D0 + int(day * DAY_MS)
    return ("order", at, OrderFact(at, cents, None))


def codes(state: CustomerState, now_ms: int, gap: float | None = None) -> set[str]:
    return {r.code for r in assess_customer(state, now_ms, gap, CONFIG)[1].reasons}


def test_overdue_after_three_mean_gaps_and_not_a_millisecond_before():
    state = customer(*(order(d) for d in (0, 10, 20, 30)))  # mean gap 10 days
    last = D0 + 30 * DAY_MS
    assert churn.OVERDUE not in codes(state, last + 30 * DAY_MS)
    assert churn.OVERDUE in codes(state, last + 30 * DAY_MS + 1)
    risk = assess_customer(state, last + 31 * DAY_MS, None, CONFIG)[1]
    [overdue] = [r for r in risk.reasons if r.code == churn.OVERDUE]
    assert (overdue.observed, overdue.threshold) == (31.0, 30.0)


def test_overdue_uses_the_population_gap_for_customers_with_few_orders():
    state = customer(order(0), order(5))  # one repeat: below the default minimum of 2
    assert churn.OVERDUE not in codes(state, D0 + 5 * DAY_MS + 60 * DAY_MS, gap=20.0)
    assert churn.OVERDUE in codes(state, D0 + 5 * DAY_MS + 60 * DAY_MS + 1, gap=20.0)
    # no population gap known yet: the configured default (30 days)
    assert churn.OVERDUE not in codes(state, D0 + 5 * DAY_MS + 90 * DAY_MS)
    assert churn.OVERDUE in codes(state, D0 + 5 * DAY_MS + 90 * DAY_MS + 1)


def test_overdue_is_scheduled_exactly_when_it_starts():
    state = customer(*(order(d) for d in (0, 10, 20, 30)))
    risk = assess_customer(state, D0 + 31 * DAY_MS, None, CONFIG)[1]
    assert risk.next_change_ms is not None and risk.next_change_ms <= D0 + 60 * DAY_MS + 1


def test_low_p_alive_only_for_repeat_customers_and_due_when_it_crosses():
    once = customer(order(0))
    assert churn.LOW_P_ALIVE not in codes(once, D0 + 3000 * DAY_MS)
    state = customer(*(order(d) for d in (0, 7, 14)))
    clv, _ = assess_customer(state, D0 + 15 * DAY_MS, None, CONFIG)
    assert clv.p_alive > 0.3
    # the first whole day on which P(alive) is below the threshold
    day = next(d for d in range(15, 5000) if assess_customer(state, D0 + d * DAY_MS, None, CONFIG)[0].p_alive < 0.3)
    assert churn.LOW_P_ALIVE not in codes(state, D0 + (day - 1) * DAY_MS)
    assert churn.LOW_P_ALIVE in codes(state, D0 + day * DAY_MS)
    earlier = assess_customer(state, D0 + 15 * DAY_MS, None, CONFIG)[1]
    assert earlier.next_change_ms is not None and earlier.next_change_ms <= D0 + day * DAY_MS


def test_spend_decline_below_half_of_the_span_before():
    # 13 weekly buckets = 91 days per span (bucket resolution); prior span: 300 spent
    state = customer(order(0, 10_000), order(30, 10_000), order(60, 10_000), order(91, 14_999))
    now = D0 + 181 * DAY_MS
    assert churn.SPEND_DECLINE in codes(state, now)
    state2 = customer(order(0, 10_000), order(30, 10_000), order(60, 10_000), order(91, 15_000))
    assert churn.SPEND_DECLINE not in codes(state2, now)  # exactly half is not below half


def test_survey_signals_at_their_thresholds_and_their_age_limit():
    at = D0

    def survey(*answers: tuple[int | None, int | None]) -> CustomerState:
        return customer(*(("survey", at + i, SurveyFact(at + i, n, c)) for i, (n, c) in enumerate(answers)))

    assert churn.DETRACTOR in codes(survey((6, None)), at + DAY_MS)
    assert churn.DETRACTOR not in codes(survey((7, None)), at + DAY_MS)
    assert churn.NPS_DROP in codes(survey((10, None), (7, None)), at + DAY_MS)
    assert churn.NPS_DROP not in codes(survey((10, None), (8, None)), at + DAY_MS)
    assert churn.DISSATISFIED in codes(survey((None, 2)), at + DAY_MS)
    assert churn.DISSATISFIED not in codes(survey((None, 3)), at + DAY_MS)
    # older than 180 days: no longer a signal
    assert churn.DETRACTOR not in codes(survey((0, None)), at + 180 * DAY_MS)


def test_complaints_burst_or_severe_within_the_window():
    def complaints(*rows: tuple[float, str]) -> CustomerState:
        return customer(*(("complaint", D0 + int(d * DAY_MS), ComplaintFact(D0 + int(d * DAY_MS), s)) for d, s in rows))

    assert codes(complaints((0, "low")), D0) == set()
    assert codes(complaints((0, "low"), (1, "medium")), D0 + DAY_MS) == {churn.COMPLAINT_BURST}
    assert codes(complaints((0, "high")), D0) == {churn.SEVERE_COMPLAINT}
    assert codes(complaints((0, "critical")), D0 + 29 * DAY_MS) == {churn.SEVERE_COMPLAINT}
    assert codes(complaints((0, "critical")), D0 + 30 * DAY_MS) == set()  # out of the 30-day window


def test_slow_service_at_the_slas_and_reopened_tickets():
    def tickets(*rows: tuple[float, str, str]) -> CustomerState:
        return customer(
            *(("support", D0 + int(h * HOUR_MS), TicketFact(D0 + int(h * HOUR_MS), t, k)) for h, t, k in rows)
        )

    waiting = tickets((0, "T1", "opened"))
    assert codes(waiting, D0 + 24 * HOUR_MS) == set()
    assert codes(waiting, D0 + 24 * HOUR_MS + 1) == {churn.SLOW_FIRST_RESPONSE}
    assert codes(waiting, D0 + 72 * HOUR_MS + 1) == {churn.SLOW_FIRST_RESPONSE, churn.SLOW_RESOLUTION}
    answered = tickets((0, "T1", "opened"), (1, "T1", "first_response"))
    assert codes(answered, D0 + 72 * HOUR_MS + 1) == {churn.SLOW_RESOLUTION}
    assert assess_customer(answered, D0 + 2 * HOUR_MS, None, CONFIG)[1].next_change_ms == D0 + 72 * HOUR_MS + 1
    reopened = tickets((0, "T1", "opened"), (1, "T1", "first_response"), (2, "T1", "resolved"), (3, "T1", "reopened"))
    assert churn.REOPENED_TICKET in codes(reopened, D0 + 4 * HOUR_MS)
    closed_again = tickets((0, "T", "opened"), (1, "T", "first_response"), (3, "T", "reopened"), (4, "T", "resolved"))
    assert churn.REOPENED_TICKET in codes(closed_again, D0 + 29 * DAY_MS)
    assert churn.REOPENED_TICKET not in codes(closed_again, D0 + 3 * HOUR_MS + 30 * DAY_MS)


def test_score_adds_weights_once_per_signal_caps_at_100_and_sets_the_level():
    config = ChurnConfig()
    assert config.level(39) == churn.LOW and config.level(40) == churn.MEDIUM and config.level(70) == churn.HIGH
    state = customer(
        ("complaint", D0, ComplaintFact(D0, "critical")), ("complaint", D0 + 1, ComplaintFact(D0 + 1, "low"))
    )
    risk = assess_customer(state, D0 + DAY_MS, None, CONFIG)[1]
    # burst and severe are both "complaints": counted once
    assert {r.code for r in risk.reasons} == {churn.COMPLAINT_BURST, churn.SEVERE_COMPLAINT}
    assert risk.score == config.weights[churn.COMPLAINTS] and risk.level == churn.LOW
    every = ChurnAssessment(sum(config.weights.values()), churn.HIGH, (), None)
    assert min(100, every.score) == 100


def assessment(level: str, score: int = 50, next_change: int | None = None) -> ChurnAssessment:
    return ChurnAssessment(score, level, (ChurnReason("overdue", 1, 1, ""),), next_change)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # enters medium: alert; staying there is no news
        ([("medium", 0), ("medium", 1), ("medium", 13.9), ("medium", 30)], ["entered", None, None, None]),
        # above the last alerted level: at once, even after a fall back to low
        ([("medium", 0), ("low", 1), ("high", 2)], ["entered", None, "escalated"]),
        # escalation alerts at once, de-escalation never
        ([("medium", 0), ("high", 1), ("medium", 2), ("high", 3)], ["entered", "escalated", None, None]),
        # back to low and up again within the cooldown: no second alert
        ([("high", 0), ("low", 1), ("high", 2), ("low", 3), ("high", 15)], ["entered", None, None, None, "entered"]),
        ([("low", 0), ("low", 30)], [None, None]),
    ],
)
def test_alerts_on_entering_or_escalating_and_re_entering_only_after_the_cooldown(steps, expected):
    state = ChurnState()
    got = [churn.update(state, assessment(level), int(day * DAY_MS), ChurnConfig()).kind for level, day in steps]
    assert got == expected
    assert state.alerts == sum(1 for k in expected if k)


def test_the_next_check_is_the_next_signal_change():
    state = ChurnState()
    churn.update(state, assessment("medium", next_change=5 * DAY_MS), 0, ChurnConfig())
    assert state.next_check_ms == 5 * DAY_MS
    churn.update(state, assessment("low", next_change=None), DAY_MS, ChurnConfig())
    assert state.next_check_ms is None


def test_suggested_action_depends_on_vip_and_service_reasons():
    overdue = (ChurnReason(churn.OVERDUE, 1, 1, ""),)
    assert "account manager" in churn.suggested_action(True, overdue)
    assert churn.suggested_action(False, overdue).startswith("win-back")
    assert churn.suggested_action(False, (ChurnReason(churn.SEVERE_COMPLAINT, "high", "high", ""),)).startswith(
        "resolve"
    )


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(10**12), 10**13).map(lambda ms: ms / DAY_MS),
        st.integers(0, 10**6).map(lambda n: n / 200),  # exact halves of a cent: ties
        st.floats(-2e11, 2e11),
    )
)
def test_round2_is_round_and_its_str(value: float) -> None:
    """The reasons' observed values and details (``_round2``): one ".2f" conversion gives what ``round(value, 2)``
    and its ``str`` gave, down to the sign of a zero and the float's type."""
    rounded, shown = churn._round2(value)
    expected = round(value, 2)
    assert shown == str(expected) and type(rounded) is float
    assert rounded == expected or (math.isnan(rounded) and math.isnan(expected))
    assert math.copysign(1.0, rounded) == math.copysign(1.0, expected)
