"""Per-customer NPS, CSAT, complaints and tickets: thresholds, event-time order, bounds."""

import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from scoring.tickets import (
    HOUR_MS,
    ServiceConfig,
    ServiceState,
    TicketFact,
    apply_ticket_event,
    service_signals,
)
from scoring.units import DAY_MS
from scoring.voice import (
    DETRACTOR,
    PASSIVE,
    PROMOTER,
    ComplaintFact,
    SurveyFact,
    VoiceConfig,
    VoiceState,
    apply_complaint,
    apply_survey,
    nps_category,
    voice_signals,
)

VOICE = VoiceConfig()
SERVICE = ServiceConfig()
T0 = 1_735_689_600_000  # 2025-01-01T00:00Z


def test_nps_categories_at_the_spec_thresholds():
    cats = {s: nps_category(s, VOICE) for s in range(11)}
    assert [s for s, c in cats.items() if c == PROMOTER] == [9, 10]
    assert [s for s, c in cats.items() if c == PASSIVE] == [7, 8]
    assert [s for s, c in cats.items() if c == DETRACTOR] == list(range(7))


def test_latest_and_previous_answers_follow_event_time_not_arrival():
    state = VoiceState()
    apply_survey(state, SurveyFact(T0 + 3 * DAY_MS, nps=4, csat=None))
    apply_survey(state, SurveyFact(T0 + 1 * DAY_MS, nps=10, csat=5))  # late arrival, older answer
    apply_survey(state, SurveyFact(T0 + 2 * DAY_MS, nps=8, csat=2))
    sig = voice_signals(state, T0 + 3 * DAY_MS, VOICE)
    assert (sig.nps, sig.nps_category, sig.nps_previous) == (4, DETRACTOR, 8)
    assert (sig.csat, sig.csat_satisfied) == (2, False)
    apply_survey(state, SurveyFact(T0 + 4 * DAY_MS, nps=None, csat=4))
    assert voice_signals(state, T0 + 4 * DAY_MS, VOICE).csat_satisfied is True
    assert len(state.nps) == 2  # bounded


def test_complaints_in_the_rolling_window_with_worst_severity():
    state = VoiceState()
    for day, severity in [(0, "critical"), (20, "low"), (25, "medium"), (40, "low")]:
        apply_complaint(state, ComplaintFact(T0 + day * DAY_MS, severity), VOICE)
    sig = voice_signals(state, T0 + 40 * DAY_MS, VOICE)
    # window = the 30 days ending with day 40: days 11..40
    assert (sig.complaints_window, sig.complaint_worst_severity, sig.complaints_total) == (3, "medium", 4)
    assert voice_signals(state, T0 + 100 * DAY_MS, VOICE).complaints_window == 0
    assert len(state.complaint_days) <= VOICE.complaint_window_days


def ticket(state, hours, tid, kind):
    return apply_ticket_event(state, TicketFact(T0 + int(hours * HOUR_MS), tid, kind), SERVICE)


def test_ticket_times_reopen_and_sla_breaches():
    s = ServiceState()
    ticket(s, 0, "T1", "opened")
    ticket(s, 2, "T1", "first_response")
    ticket(s, 10, "T1", "resolved")
    sig = service_signals(s, T0 + 10 * HOUR_MS, SERVICE)
    assert (sig.open_tickets, sig.last_first_response_hours, sig.last_resolution_hours) == (0, 2.0, 10.0)
    assert sig.sla_breaches == 0
    ticket(s, 12, "T1", "reopened")
    sig = service_signals(s, T0 + 12 * HOUR_MS, SERVICE)
    assert (sig.open_tickets, sig.reopened_total) == (1, 1)
    # nobody resolves it again: past the 72 h resolution SLA it breaches, by time alone
    assert service_signals(s, T0 + 71 * HOUR_MS, SERVICE).sla_breaches == 0
    assert service_signals(s, T0 + 73 * HOUR_MS, SERVICE).sla_breaches == 1
    ticket(s, 0, "T2", "opened")
    assert service_signals(s, T0 + 25 * HOUR_MS, SERVICE).sla_breaches == 1  # T2 waits > 24 h for a response


def test_response_before_opened_and_unknown_tickets_are_kept_and_resolved_later():
    s = ServiceState()
    ticket(s, 5, "T9", "first_response")  # arrives first
    sig = service_signals(s, T0 + 5 * HOUR_MS, SERVICE)
    assert sig.open_tickets == 0 and sig.tickets_total == 1 and sig.last_first_response_hours is None
    ticket(s, 1, "T9", "opened")
    assert service_signals(s, T0 + 5 * HOUR_MS, SERVICE).last_first_response_hours == 4.0


def test_ticket_records_are_bounded_and_fold_into_totals():
    config = ServiceConfig(max_tickets=4)
    s = ServiceState()
    for i in range(10):
        apply_ticket_event(s, TicketFact(T0 + i * HOUR_MS, f"T{i}", "opened"), config)
        apply_ticket_event(s, TicketFact(T0 + i * HOUR_MS + HOUR_MS, f"T{i}", "first_response"), config)
        apply_ticket_event(s, TicketFact(T0 + i * HOUR_MS + 2 * HOUR_MS, f"T{i}", "resolved"), config)
    sig = service_signals(s, T0 + 20 * HOUR_MS, config)
    assert len(s.tickets) <= 4
    assert (sig.tickets_total, sig.first_response_hours_mean, sig.open_tickets) == (10, 1.0, 0)


# --- order independence: any arrival order gives the sorted history's signals ---

ticket_events = st.lists(
    st.tuples(
        st.integers(0, 5), st.sampled_from(["opened", "first_response", "resolved", "reopened"]), st.integers(0, 200)
    ),
    max_size=40,
)
surveys = st.lists(
    st.tuples(st.integers(0, 60), st.one_of(st.none(), st.integers(0, 10)), st.one_of(st.none(), st.integers(1, 5))),
    max_size=20,
)
complaints = st.lists(
    st.tuples(st.integers(0, 90), st.sampled_from(["low", "medium", "high", "critical"])), max_size=20
)


@settings(max_examples=200, deadline=None)
@given(ticket_events, surveys, complaints, st.randoms(use_true_random=False), st.integers(0, 300))
# two tickets resolved at the same time: "last resolution" once depended on arrival order
@example([(2, "opened", 1), (2, "resolved", 1), (0, "opened", 0), (0, "resolved", 1)], [], [], random.Random(1), 0)
def test_arrival_order_does_not_matter(tickets, answers, complaint_rows, rnd, now_hours):
    def build(t_rows, s_rows, c_rows):
        service, voice = ServiceState(), VoiceState()
        for tid, kind, hours in t_rows:
            apply_ticket_event(service, TicketFact(T0 + hours * HOUR_MS, f"T{tid}", kind), SERVICE)
        for day, nps, csat in s_rows:
            apply_survey(voice, SurveyFact(T0 + day * DAY_MS, nps, csat))
        for day, severity in c_rows:
            apply_complaint(voice, ComplaintFact(T0 + day * DAY_MS, severity), VOICE)
        now = T0 + max([h * HOUR_MS for _, _, h in t_rows] + [d * DAY_MS for d, *_ in [*s_rows, *c_rows]] + [0])
        now += now_hours * HOUR_MS
        return service_signals(service, now, SERVICE), voice_signals(voice, now, VOICE)

    shuffled = [list(rows) for rows in (tickets, answers, complaint_rows)]
    for rows in shuffled:
        rnd.shuffle(rows)
    ordered = (
        sorted(tickets, key=lambda r: r[2]),
        sorted(answers, key=lambda r: r[0]),
        sorted(complaint_rows, key=lambda r: r[0]),
    )
    assert build(*shuffled) == build(*ordered)
