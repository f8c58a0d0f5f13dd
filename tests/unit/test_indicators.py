"""Population indicators: the spec's worked examples through the scorers, window edges, the activity
flags' flip times, lateness, and old states decoding."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse_config.settings import Settings
from scoring.clv import ClvConfig, PurchaseDays, record_purchase
from scoring.customer import CustomerState, EventFacts, apply_event
from scoring.indicator_sums import (
    IndicatorSums,
    churn_rate,
    indicator_values,
    nps,
    quantile_edge,
    ratio,
    retention_rate,
)
from scoring.indicators import (
    DEFAULT_RESPONSE_EDGES_MS,
    IndicatorConfig,
    _active_at_start,
    _first_interval_ending_after,
    _intervals,
    activity,
)
from scoring.population import PopulationView
from scoring.tickets import HOUR_MS, TicketFact
from scoring.units import DAY_MS
from scoring.voice import ComplaintFact, SurveyFact
from streams.codec import decode_state, encode_state, encode_state_orjson
from streams.processor import BatchProcessor, Incoming

SETTINGS = Settings(_env_file=None)
CONFIG = SETTINGS.scoring()
IND = CONFIG.indicators
TODAY = 20_500  # an epoch day
NOW = TODAY * DAY_MS + 12 * HOUR_MS


def customer(*events: EventFacts, now: int = NOW) -> CustomerState:
    state = CustomerState()
    for event in events:
        assert apply_event(state, event, CONFIG)
    state.activity, _ = activity(state.purchases, now, IND)
    return state


def survey(eid: str, day: int, nps_answer: int | None, csat: int | None = None) -> EventFacts:
    return EventFacts("survey", eid, day * DAY_MS, survey=SurveyFact(day * DAY_MS, nps_answer, csat))


def order(eid: str, day: int) -> EventFacts:
    from scoring.orders import OrderFact

    return EventFacts("order", eid, day * DAY_MS, order=OrderFact(day * DAY_MS, 1000, None))


def view_of(states: list[CustomerState]) -> PopulationView:
    view = PopulationView(CONFIG.rfm, IND)
    for n, state in enumerate(states):
        view.add_state(n % 3, f"C{n}".encode(), state)
    return view


# --- the spec's worked examples ----------------------------------------------


def test_nps_60_promoters_20_passives_20_detractors_is_40():
    answers = [10] * 60 + [8] * 20 + [3] * 20
    view = view_of([customer(survey(f"s{n}", TODAY - n % 80, a)) for n, a in enumerate(answers)])
    values = view.indicators(NOW)
    assert (values.promoters, values.passives, values.detractors) == (60, 20, 20)
    assert values.nps == nps(60, 20, 20) == 40


def test_csat_60_satisfied_of_80_is_75_percent():
    answers = [5] * 30 + [4] * 30 + [3] * 10 + [1] * 10
    view = view_of([customer(survey(f"s{n}", TODAY - n, None, a)) for n, a in enumerate(answers)])
    values = view.indicators(NOW)
    assert (values.csat_satisfied, values.csat_answers, values.csat) == (60, 80, 0.75)


def test_retention_70_and_churn_10_percent_from_s_1000_e_900_n_200():
    retained = [customer(order(f"r{n}", TODAY - 100)) for n in range(700)]  # active at the start and now
    lost = [customer(order(f"l{n}", TODAY - 380)) for n in range(300)]  # active at the start only
    new = [customer(order(f"n{n}", TODAY - 5)) for n in range(200)]  # first purchase in the period
    values = view_of(retained + lost + new).indicators(NOW)
    assert (values.active_at_start, values.active, values.new, values.lost) == (1000, 900, 200, 300)
    assert values.retention_rate == retention_rate(1000, 900, 200) == 0.7
    assert values.churn_rate == churn_rate(1000, 900) == 0.1
    assert values.net_additions == 200 - 300


def test_repurchase_300_of_1000_and_complaints_50_of_1000():
    repeat = [customer(order(f"a{n}", TODAY - 200), order(f"b{n}", TODAY - 3)) for n in range(300)]
    once = [customer(order(f"o{n}", TODAY - 50)) for n in range(700)]
    complaints = [
        EventFacts(
            "complaint", f"k{n}", (TODAY - n % 30) * DAY_MS, complaint=ComplaintFact((TODAY - n % 30) * DAY_MS, "low")
        )
        for n in range(50)
    ]
    for state, event in zip(once, complaints, strict=False):
        apply_event(state, event, CONFIG)
    values = view_of(repeat + once).indicators(NOW)
    assert (values.repeat, values.active, values.repurchase_rate) == (300, 1000, ratio(300, 1000)) == (300, 1000, 0.3)
    assert (values.complaints, values.complaint_rate) == (50, 0.05)


# --- windows, tickets, quantiles -------------------------------------------------


def test_windows_end_with_the_clock_day_and_reach_back_n_days():
    states = [
        customer(survey("in", TODAY - 89, 10), survey("out", TODAY - 90, 0)),
        customer(
            EventFacts("complaint", "k1", (TODAY - 29) * DAY_MS, complaint=ComplaintFact((TODAY - 29) * DAY_MS, "low")),
            EventFacts("complaint", "k2", (TODAY - 30) * DAY_MS, complaint=ComplaintFact((TODAY - 30) * DAY_MS, "low")),
            order("o", TODAY - 364),
        ),
        customer(order("gone", TODAY - 365)),
    ]
    values = view_of(states).indicators(NOW)
    assert (values.promoters, values.detractors, values.nps) == (1, 0, 100.0)
    assert (values.complaints, values.active) == (1, 1)


def ticket(eid: str, ms: int, tid: str, kind: str) -> EventFacts:
    return EventFacts("support", eid, ms, ticket=TicketFact(ms, tid, kind))


def test_tickets_count_once_their_opening_is_known_and_reopened_ones_are_not_resolved():
    t0 = (TODAY - 2) * DAY_MS
    state = customer(
        ticket("a2", t0 + 3 * HOUR_MS, "A", "first_response"),  # before its opening: held
        ticket("a3", t0 + 5 * HOUR_MS, "A", "resolved"),
        ticket("b1", t0, "B", "opened"),
        ticket("b2", t0 + HOUR_MS, "B", "resolved"),
        ticket("b3", t0 + 2 * HOUR_MS, "B", "reopened"),  # open again: not resolved
        ticket("x1", t0, "X", "resolved"),  # never opened: counts nowhere
    )
    values = view_of([state]).indicators(NOW)
    assert (values.tickets_opened, values.tickets_resolved, values.first_responses) == (1, 0, 0)
    apply_event(state, ticket("a1", t0, "A", "opened"), CONFIG)
    values = view_of([state]).indicators(NOW)
    assert (values.tickets_opened, values.tickets_resolved, values.first_responses) == (2, 1, 1)
    assert values.resolution_rate == 0.5
    # 3 h rounded up to the histogram's resolution (edges 2^(1/4) apart from one minute)
    p50 = values.first_response_ms[50]
    assert 3 * HOUR_MS <= p50 < 3 * HOUR_MS * 2**0.25


def test_quantiles_are_nearest_rank_bucket_edges():
    edges = (10, 20, 40, 80)
    hist = Counter({0: 5, 1: 4, 3: 1})  # 10 durations
    assert quantile_edge(hist, 50, edges) == 10  # the 5th smallest
    assert quantile_edge(hist, 90, edges) == 20  # the 9th
    assert quantile_edge(Counter({4: 1}), 50, edges) == 80  # past the last edge: the last edge
    assert quantile_edge(Counter(), 50, edges) is None


def test_sums_merge_across_partitions_through_snapshots():
    states = [customer(survey(f"s{n}", TODAY - n, n % 11, 1 + n % 5), order(f"o{n}", TODAY - 3 * n)) for n in range(40)]
    view = view_of(states)
    other = PopulationView(CONFIG.rfm, IND)
    for p in view.local:
        other.apply_snapshot(view.snapshot(p))
    assert other.indicators(NOW) == view.indicators(NOW)


def test_indicators_wait_for_the_partition_read_behind_and_snapshots_keep_its_days():
    """Spec (Clock): population indicators on the low watermark over all partitions. A backlog: partition 0's
    surveys read to today, partition 1's only to 190 days ago with 90 more unread. At the highest time (before)
    the survey window held partition 0's answers alone (NPS 100 from its promoters; partition 1's ten
    detractors outside it); at the lowest partition clock it holds both partitions' answers of those days.
    And a snapshot prunes day rows only before that time's horizon (before: each partition's own watermark's,
    so partition 0's early answers were gone from the snapshot another worker computes with)."""
    settings_ = Settings(_env_file=None)
    processor = BatchProcessor(settings_.processor())
    processor.rebuild({0, 1}, [])
    topic = settings_.topic_surveys

    def answer(partition: int, offset: int, day: int, nps_answer: int) -> Incoming:
        cid = f"P{partition}-{offset}"
        at = datetime.fromtimestamp(day * DAY_MS / 1000, UTC).isoformat()
        event = {"event_id": cid, "customer_id": cid, "occurred_at": at, "nps": nps_answer}
        return Incoming(topic, partition, offset, cid.encode(), orjson.dumps(event))

    fast = [answer(0, n, day, 10) for n, day in enumerate(range(TODAY - 200, TODAY + 1, 5))]
    slow = [answer(1, n, day, 0) for n, day in enumerate(range(TODAY - 200, TODAY - 190))]
    ends = {(topic, 0): len(fast), (topic, 1): len(slow) + 90}
    out = processor.process(fast + slow, lambda k: CustomerState(), ends=ends, starts={(topic, 0): 0, (topic, 1): 0})
    assert not out.rejected
    view = processor.population
    low = (TODAY - 191) * DAY_MS - 1  # partition 1's clock: its watermark less 1 ms (spec: Clock)
    assert view.clock_of(1) == low and view.clock_of(0) == TODAY * DAY_MS
    assert view.indicator_time() == low
    values = view.indicators()
    assert values == view.indicators(low)
    # in the survey window ending with that time's day (TODAY - 192): partition 1's nine detractors until then
    # and partition 0's two promoters
    assert (values.promoters, values.detractors) == (2, 9)
    assert view.indicators(TODAY * DAY_MS).detractors == 0  # what the highest time showed
    other = PopulationView(CONFIG.rfm, IND)
    for p in (0, 1):
        other.apply_snapshot(view.snapshot(p))
    assert other.indicator_time() == low and other.indicators() == values


def test_a_snapshot_before_any_partition_has_a_clock_keeps_every_day():
    """No partition clock yet (a partition of the backlog not read far enough): no indicator time, so nothing is
    pruned and the snapshot carries every day row; another view computes the same indicators from it."""
    states = [customer(survey(f"s{n}", TODAY - 400 * n, 9), order(f"o{n}", TODAY - 400 * n)) for n in range(3)]
    view = view_of(states)
    for part in view.local.values():
        part.watermark_ms = NOW  # read, but no clock
    assert view.indicator_time() is None and view.indicators() is None
    other = PopulationView(CONFIG.rfm, IND)
    for p in view.local:
        other.apply_snapshot(view.snapshot(p))
    days = {p: sorted(part.indicators.voice) for p, part in view.local.items()}
    assert {p: sorted(other.remote[p].indicators.voice) for p in view.local} == days
    assert sum(len(d) for d in days.values()) == 3  # the answers of 800 days ago kept too
    for at in (NOW, NOW - 800 * DAY_MS):
        assert other.indicators(at) == view.indicators(at)


# --- the activity flags change with time alone: the due time is exactly the next flip ------------


def flags_by_brute_force(days: set[int], today: int, cfg: IndicatorConfig) -> tuple[bool, ...]:
    a, p = cfg.activity_days, cfg.period_days
    return (
        any(today - a < d <= today for d in days),
        any(today - p - a < d <= today - p for d in days),
        today - p < min(days) <= today,
        sum(today - a < d <= today for d in days) >= 2,
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 900), min_size=1, max_size=30), st.integers(0, 1400))
def test_flags_hold_until_the_flip_time_and_change_there(days, offset):
    cfg = IndicatorConfig()
    history = PurchaseDays()
    for d in days:
        record_purchase(history, TODAY + d, 100, ClvConfig())
    now_day = TODAY + max(days) + offset
    bits, flip = activity(history, now_day * DAY_MS + 5, cfg)
    shifted = {TODAY + d for d in days}
    expected = flags_by_brute_force(shifted, now_day, cfg)
    assert tuple(bool(bits & b) for b in (1, 2, 4, 8)) == expected
    horizon = now_day + cfg.activity_days + cfg.period_days + 2
    change = next((d for d in range(now_day + 1, horizon) if flags_by_brute_force(shifted, d, cfg) != expected), None)
    assert flip == (None if change is None else change * DAY_MS)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 900), min_size=1, max_size=60),
    st.integers(0, 1400),
    st.integers(1, 8),
    st.integers(0, 60),
    st.integers(1, 400),
)
def test_the_first_interval_after_today_is_the_merged_intervals_one(days, offset, kept, start_offset, length):
    # fewer remembered days than purchase days (kept) takes the approximated range of _intervals too
    history = PurchaseDays()
    for d in days:
        record_purchase(history, TODAY + d, 100, ClvConfig(max_purchase_days=kept * 4))
    today = TODAY + offset
    expected = next(((s, e) for s, e in _intervals(history, start_offset, length) if e > today), None)
    assert _first_interval_ending_after(history, start_offset, length, today) == expected
    # the activity flag's shortcut: in that interval today, and where that changes (its end, else its start)
    at_start = expected is not None and expected[0] <= today
    change = None if expected is None else expected[1] if at_start else expected[0]
    assert _active_at_start(history, start_offset, length, today) == (at_start, change)


# --- lateness, decoding -----------------------------------------------------------------


def test_events_beyond_the_lateness_of_their_partition_are_dead_lettered_too_late():
    settings_ = Settings(_env_file=None, max_lateness_days=10)
    processor = BatchProcessor(settings_.processor())
    topic = settings_.topic_surveys
    store: dict[bytes, CustomerState] = {}

    def rec(offset: int, partition: int, day: int, cid: str = "A") -> Incoming:
        event = {
            "event_id": f"e{offset}-{partition}",
            "customer_id": cid,
            "occurred_at": f"2026-01-{day:02d}T00:00:00Z",
            "nps": 9,
        }
        return Incoming(topic, partition, offset, cid.encode(), orjson.dumps(event))

    out = processor.process(
        [rec(0, 0, 30), rec(1, 0, 21), rec(2, 0, 19), rec(0, 1, 1, "B")], lambda k: store.get(k) or CustomerState()
    )
    store.update(out.states)
    # 9 days behind partition 0's watermark: fine; 11 days: too late; partition 1 has its own watermark
    assert [r.reason for r in out.rejected] == ["too_late"]
    assert orjson.loads(out.rejected[0].record)["detail"].startswith(
        f"occurred_at: 11.0 days behind the watermark of {topic}[0]"
    )
    assert out.counts[("survey", "scored")] == 3
    # a redelivered offset is a duplicate, not late
    again = processor.process([rec(1, 0, 21)], lambda k: store.get(k) or CustomerState())
    assert not again.rejected and again.counts[("survey", "duplicate")] == 1


def test_a_topic_read_far_behind_another_of_its_partition_is_not_late():
    """A backlog reads a partition's topics at different speeds: one topic can be read months (in a replay of
    years, years) ahead of another. Measured against the partition's highest watermark over all its topics, the
    slower topic's events were dead-lettered too_late although each came in order in its own log (bench, 200,000
    events of 4 years for 5,000 customers, lateness 730 days: 63,233 of them). Lateness is measured per
    topic-partition, so only an event out of order in its own log by more than the lateness is refused."""
    settings_ = Settings(_env_file=None, max_lateness_days=10)
    processor = BatchProcessor(settings_.processor())
    store: dict[bytes, CustomerState] = {}

    def load(key: bytes) -> CustomerState:
        return store.get(key) or CustomerState()

    def survey(offset: int, day: int, cid: str = "A") -> Incoming:
        event = {"event_id": f"s{offset}", "customer_id": cid, "occurred_at": f"2026-03-{day:02d}T00:00:00Z", "nps": 9}
        return Incoming(settings_.topic_surveys, 0, offset, cid.encode(), orjson.dumps(event))

    def complaint(offset: int, day: int, cid: str = "A") -> Incoming:
        event = {
            "event_id": f"c{offset}",
            "customer_id": cid,
            "occurred_at": f"2026-01-{day:02d}T00:00:00Z",
            "complaint_id": f"K{offset}",
            "severity": "low",
            "category": "billing",
        }
        return Incoming(settings_.topic_complaints, 0, offset, cid.encode(), orjson.dumps(event))

    # the surveys of partition 0 read up to March 30 first, then its complaints of January, in order: none late
    first = processor.process([survey(n, day) for n, day in enumerate((1, 10, 20, 30))], load)
    store.update(first.states)
    then = processor.process([complaint(n, day) for n, day in enumerate((2, 9, 16))], load)
    store.update(then.states)
    assert not first.rejected and not then.rejected
    assert then.counts[("complaint", "scored")] == 3
    # out of order in its own log by more than the lateness: refused, against that log's watermark
    late = processor.process([complaint(3, 5), complaint(4, 30)], load)
    assert [r.reason for r in late.rejected] == ["too_late"]
    detail = orjson.loads(late.rejected[0].record)["detail"]
    assert detail.startswith(f"occurred_at: 11.0 days behind the watermark of {settings_.topic_complaints}[0]")


def test_states_written_before_the_indicators_decode_with_empty_day_rows():
    state = customer(survey("s", TODAY, 10, 5), ticket("t", NOW, "T", "opened"))
    assert decode_state(encode_state(state)) == state
    old = orjson.loads(encode_state_orjson(state))  # the format the changelog had then
    del (
        old["voice"]["answer_days"],
        old["service"]["ticket_days"],
        old["service"]["ticket_days_newest"],
        old["activity"],
    )
    decoded = decode_state(orjson.dumps(old))
    assert decoded.voice.answer_days == {} and decoded.service.ticket_days == {} and decoded.activity == 0


def test_default_edges_are_log_spaced_from_one_minute():
    assert DEFAULT_RESPONSE_EDGES_MS[0] == 60_000 and DEFAULT_RESPONSE_EDGES_MS[4] == 120_000
    assert IndicatorSums.from_json(IndicatorSums().to_json(0)) == IndicatorSums()
    assert indicator_values([], {}, NOW, IND).nps is None
