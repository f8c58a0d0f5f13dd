"""Per-customer NPS, CSAT, complaints and tickets: thresholds, event-time order, bounds."""

import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from scoring.tickets import (
    HOUR_MS,
    Folded,
    ServiceConfig,
    ServiceState,
    TicketFact,
    _breached,
    apply_ticket_event,
    is_open,
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


def service_signals_as_defined(state: ServiceState, now_ms: int, config: ServiceConfig) -> tuple:
    """service_signals as first written (list passes, keyed max): the reference of the one-pass version."""
    f = state.folded
    tickets = list(state.tickets.values())
    responses = [max(0, t[1] - t[0]) for t in tickets if t[0] is not None and t[1] is not None]
    n_resp = len(responses) + f.first_responses
    with_open = [(tid, t) for tid, t in state.tickets.items() if t[0] is not None]
    last_opened = max(with_open, key=lambda it: (it[1][0], it[0]), default=(None, None))[1]
    resolved = [(tid, t) for tid, t in with_open if t[2] is not None and not is_open(t)]
    last_resolved = max(resolved, key=lambda it: (it[1][2], it[0]), default=(None, None))[1]
    open_ages = [now_ms - t[0] for t in tickets if is_open(t) and t[0] is not None]

    def hours(t, a, b):
        return None if t is None or t[a] is None or t[b] is None else max(0, t[b] - t[a]) / HOUR_MS

    return (
        len(tickets) + f.tickets,
        len(open_ages),
        sum(t[4] or 0 for t in tickets) + f.reopens,
        sum(_breached(t, now_ms, config) for t in tickets) + f.breaches,
        None if not n_resp else (sum(responses) + f.first_response_ms_sum) / n_resp / HOUR_MS,
        hours(last_opened, 0, 1),
        hours(last_resolved, 0, 2),
        None if not open_ages else max(0, max(open_ages)) / HOUR_MS,
    )


_mark = st.one_of(st.none(), st.integers(T0, T0 + 200 * HOUR_MS))


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["t1", "t2", "t3", "t4", "t5", "t6"]),
        st.tuples(_mark, _mark, _mark, _mark, st.one_of(st.none(), st.integers(0, 3))),
        min_size=1,
    ),
    st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5), st.integers(0, 10**7), st.integers(0, 5)),
    st.integers(T0, T0 + 300 * HOUR_MS),
)
def test_service_signals_in_one_pass_equal_the_list_passes(tickets, folded, now_ms):
    state = ServiceState(tickets={tid: list(t) for tid, t in tickets.items()}, folded=Folded(*folded))
    sig = service_signals(state, now_ms, SERVICE)
    got = (
        sig.tickets_total,
        sig.open_tickets,
        sig.reopened_total,
        sig.sla_breaches,
        sig.first_response_hours_mean,
        sig.last_first_response_hours,
        sig.last_resolution_hours,
        sig.oldest_open_ticket_hours,
    )
    assert got == service_signals_as_defined(state, now_ms, SERVICE)
