"""Alert episodes (issue 19, scoring.episodes): the rules, and the scoring worker's processor consuming the
retention-actions topic.

The processor tests extend the churn story of tests/churn_story.py (a monthly buyer who stops, buys once
more, then complains), one batch per day of event time, with a second critical complaint on day 600: the
level is high from day 502, medium from 532 and high again on 600, after the cooldown, so the churn warning
alone raises alert 4 that day. An acknowledgement of alert 3 suppresses it.
"""

from __future__ import annotations

import random
from collections import Counter

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulse_config.settings import Settings
from scoring.customer import CustomerState
from scoring.episodes import (
    ACKNOWLEDGED,
    ASSIGNED,
    DELIVERED,
    NOT_SAVED,
    OPEN,
    PENDING,
    RESOLVED,
    SAVED,
    EpisodeConfig,
    EpisodeState,
    PendingAction,
    apply_due_actions,
    next_due_ms,
    on_alert,
    on_assessed,
    on_purchase,
    record_action,
    save_rates,
    state_tallies,
)
from scoring.units import DAY_MS
from streams.codec import decode_state, encode_state
from streams.processor import BatchProcessor, Incoming
from tests.churn_story import D0, MONTHLY, STORY, clock, complaint, iso, order
from tests.churn_story import Feed as StoryFeed

SETTINGS = Settings(_env_file=None)
ACTIONS = SETTINGS.topic_retention_actions
CFG = EpisodeConfig()
DAY = DAY_MS

# --- the rules ------------------------------------------------------------------------------------------------


def test_an_alert_opens_an_episode_and_a_reminder_joins_it_while_nobody_acted():
    s = EpisodeState()
    assert on_alert(s, 1, "medium", 10 * DAY, CFG)
    assert on_alert(s, 2, "medium", 30 * DAY, CFG)  # the churn warning re-alerted after its cooldown
    assert len(s.episodes) == 1 and (s.episodes[0].first_alert, s.episodes[0].last_alert) == (1, 2)
    assert s.suppressed == 0


def test_a_handled_episode_is_not_re_alerted_at_its_level_but_a_higher_level_opens_a_new_one():
    for status in (ACKNOWLEDGED, ASSIGNED, RESOLVED):
        s = EpisodeState()
        on_alert(s, 1, "medium", 10 * DAY, CFG)
        record_action(s, PendingAction(11 * DAY, 1, status, "desk" if status == ASSIGNED else None, "contacted"), CFG)
        assert apply_due_actions(s, 11 * DAY, 9, CFG) == ["applied"]
        assert s.episodes[0].status == status
        assert not on_alert(s, 2, "medium", 30 * DAY, CFG) and s.suppressed == 1
        assert on_alert(s, 2, "high", 31 * DAY, CFG)  # the risk rose above what the team handled
        assert [e.first_alert for e in s.episodes] == [1, 2]
        assert s.episodes[0].closed_ms == 31 * DAY and s.episodes[1].status == OPEN


def test_recovering_closes_the_episode_and_falling_again_opens_a_new_one():
    s = EpisodeState()
    on_alert(s, 1, "high", 10 * DAY, CFG)
    record_action(s, PendingAction(11 * DAY, 1, ACKNOWLEDGED), CFG)
    apply_due_actions(s, 11 * DAY, 9, CFG)
    assert not on_assessed(s, "medium", 12 * DAY, CFG)  # still at risk: the episode stays open
    assert on_assessed(s, "low", 13 * DAY, CFG) and s.open() is None
    assert on_alert(s, 2, "medium", 40 * DAY, CFG) and s.open().first_alert == 2


def test_status_only_moves_forward_and_a_later_resolution_corrects_the_outcome():
    s = EpisodeState()
    on_alert(s, 1, "medium", 0, CFG)
    for at, action in enumerate([(ASSIGNED, "ana", None), (ACKNOWLEDGED, None, None), (RESOLVED, None, "lost")]):
        record_action(s, PendingAction(at + 1, 1, action[0], action[1], action[2]), CFG)
    record_action(s, PendingAction(9, 1, RESOLVED, None, "won_back"), CFG)
    apply_due_actions(s, 10, 9, CFG)
    e = s.episodes[0]
    assert (e.status, e.owner, e.outcome, e.action) == (RESOLVED, "ana", "won_back", "won_back")


def test_an_action_takes_effect_when_the_clock_reaches_its_time_in_time_order():
    s = EpisodeState()
    on_alert(s, 1, "medium", 0, CFG)
    record_action(s, PendingAction(5 * DAY, 1, RESOLVED, None, "lost"), CFG)
    record_action(s, PendingAction(3 * DAY, 1, RESOLVED, None, "won_back"), CFG)  # read later, happened earlier
    assert next_due_ms(s, 9, CFG) == 3 * DAY
    assert apply_due_actions(s, 2 * DAY, 9, CFG) == [] and s.episodes[0].status == OPEN
    assert apply_due_actions(s, 5 * DAY, 9, CFG) == ["applied", "applied"]
    assert s.episodes[0].outcome == "lost" and not s.pending


def test_an_action_for_an_alert_no_episode_holds_is_stale():
    s = EpisodeState()
    on_alert(s, 3, "medium", 0, CFG)
    record_action(s, PendingAction(1, 2, ACKNOWLEDGED), CFG)
    assert apply_due_actions(s, 1, 9, CFG) == ["stale"] and s.stale_actions == 1 and s.episodes[0].status == OPEN


def test_an_action_for_an_alert_not_raised_yet_waits_for_it_without_making_the_customer_due():
    s = EpisodeState()
    on_alert(s, 1, "medium", 0, CFG)
    record_action(s, PendingAction(10 * DAY, 2, DELIVERED, destination="ops"), CFG)
    assert apply_due_actions(s, 10 * DAY, 1, CFG) == [] and s.pending and s.stale_actions == 0
    assert next_due_ms(s, 1, CFG) == 60 * DAY + 1  # only the save window's end
    assert on_alert(s, 2, "high", 10 * DAY, CFG)
    assert apply_due_actions(s, 10 * DAY, 2, CFG) == ["applied"] and s.episodes[-1].destinations == ["ops"]


def test_deliveries_record_bounded_distinct_destinations_and_change_no_status():
    s = EpisodeState()
    on_alert(s, 1, "medium", 0, CFG)
    for name in ["ops", "ops", "crm", "a", "b", "c"]:
        record_action(s, PendingAction(1, 1, DELIVERED, destination=name), CFG)
    apply_due_actions(s, 1, 9, CFG)
    assert s.episodes[0].destinations == ["ops", "crm", "a", "b"] and s.episodes[0].status == OPEN


def test_the_save_window_saves_on_the_earliest_purchase_and_settles_after_its_end():
    s = EpisodeState()
    on_alert(s, 1, "medium", 10 * DAY, CFG)
    on_purchase(s, 10 * DAY, 500, CFG)  # at the alert: not after it
    on_purchase(s, 50 * DAY, 700, CFG)
    on_purchase(s, 20 * DAY, 300, CFG)  # read later, bought earlier
    on_purchase(s, 71 * DAY, 900, CFG)  # after the window
    e = s.episodes[0]
    assert (e.purchased_ms, e.recovered_cents, e.result) == (20 * DAY, 1000, SAVED)
    assert next_due_ms(s, 9, CFG) == 70 * DAY + 1
    on_assessed(s, "low", 70 * DAY + 1, CFG)
    assert e.settled and e.result == SAVED and next_due_ms(s, 9, CFG) is None
    other = EpisodeState()
    on_alert(other, 1, "high", 0, CFG)
    assert other.episodes[0].result == PENDING
    on_assessed(other, "high", 60 * DAY + 1, CFG)
    assert other.episodes[0].result == NOT_SAVED


def test_the_state_stays_bounded_and_folded_episodes_keep_their_tallies():
    cfg = EpisodeConfig(history=2, max_pending_actions=3)
    s = EpisodeState()
    expected: Counter = Counter()
    for n in range(1, 8):
        on_alert(s, n, "medium", n * 100 * DAY, cfg)
        on_purchase(s, n * 100 * DAY + DAY, 100, cfg)
        on_assessed(s, "low", n * 100 * DAY + 61 * DAY, cfg)
        expected.update({"episodes:medium:none:saved": 1, "episode_destinations:none:saved": 1})
        expected.update({"recovered_cents:medium:none": 100, "recovered_destination_cents:none": 100})
    assert len(s.episodes) <= cfg.history + 1
    assert +state_tallies(s) == +expected
    for i in range(5):
        record_action(s, PendingAction(10**15 + i, 7, ACKNOWLEDGED), cfg)
    assert len(s.pending) == 3 and s.stale_actions == 2


def test_save_rates_by_level_action_and_destination():
    counts = {
        "episodes:high:won_back:saved": 2,
        "episodes:high:none:not_saved": 1,
        "episodes:medium:none:pending": 4,
        "episode_destinations:ops-webhook:saved": 2,
        "episode_destinations:ops-webhook:not_saved": 1,
        "recovered_cents:high:won_back": 25_000,
        "recovered_destination_cents:ops-webhook": 25_000,
    }
    rates = save_rates(counts)
    (overall,) = rates["all"]
    assert (overall.episodes, overall.saved, overall.settled, overall.pending) == (7, 2, 3, 4)
    assert overall.save_rate == 2 / 3 and overall.recovered_cents == 25_000
    assert {r.group: r.save_rate for r in rates["level"]} == {"high": 2 / 3, "medium": None}
    assert {r.group: r.save_rate for r in rates["action"]} == {"won_back": 1.0, "none": 0.0}
    assert [(r.group, r.save_rate, r.recovered_cents) for r in rates["destination"]] == [("ops-webhook", 2 / 3, 25_000)]


# random sequences of alerts, assessments, actions and purchases: the invariants hold
steps = st.lists(
    st.one_of(
        st.tuples(st.just("alert"), st.sampled_from(["medium", "high"])),
        st.tuples(st.just("assess"), st.sampled_from(["low", "medium", "high"])),
        st.tuples(st.just("act"), st.sampled_from([ACKNOWLEDGED, ASSIGNED, RESOLVED, DELIVERED]), st.integers(0, 3)),
        st.tuples(st.just("buy"), st.integers(1, 10_000)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_invariants_over_random_sequences(seq):
    cfg = EpisodeConfig(history=2, max_pending_actions=4)
    s = EpisodeState()
    alerts, now = 0, 0
    for step in seq:
        now += 7 * DAY
        if step[0] == "alert":
            alerts += 1
            current = s.open()
            raised = on_alert(s, alerts, step[1], now, cfg)
            rank = {"medium": 1, "high": 2}
            handled_same = current is not None and current.status != OPEN and rank[step[1]] <= rank[current.level]
            # suppressed exactly when the open episode was handled and the alert is not above its level
            assert raised != handled_same
            if not raised:
                alerts -= 1
        elif step[0] == "assess":
            apply_due_actions(s, now, alerts, cfg)
            on_assessed(s, step[1], now, cfg)
        elif step[0] == "act" and alerts:
            outcome = "won_back" if step[1] == RESOLVED else None
            assignee = "desk" if step[1] == ASSIGNED else None
            dest = ("ops" if step[2] % 2 else "crm") if step[1] == DELIVERED else None
            record_action(s, PendingAction(now, max(1, alerts - step[2]), step[1], assignee, outcome, dest), cfg)
        elif step[0] == "buy":
            on_purchase(s, now, step[1], cfg)
        assert len(s.episodes) <= cfg.history + 1 and len(s.pending) <= cfg.max_pending_actions
        assert all(e.closed_ms is not None for e in s.episodes[:-1])
        starts = [e.first_alert for e in s.episodes]
        assert starts == sorted(starts) and all(e.first_alert <= e.last_alert for e in s.episodes)
        assert all(n >= 0 for n in state_tallies(s).values())
        # the memoised keys and the one-dict sum give exactly the tallies as first defined (keys with 0 too)
        assert dict(state_tallies(s)) == dict(tallies_as_defined(s))


def tallies_as_defined(s: EpisodeState) -> Counter:
    """The save-rate tallies as scoring.episodes first computed them: formatted per episode, Counter-summed."""
    out: Counter = Counter(s.totals)
    for e in s.episodes:
        names = e.destinations or ["none"]
        one: dict[str, int] = {}
        for r in (SAVED, NOT_SAVED, PENDING):
            one[f"episodes:{e.level}:{e.action}:{r}"] = int(r == e.result)
            for name in names:
                one[f"episode_destinations:{name}:{r}"] = int(r == e.result)
        one[f"recovered_cents:{e.level}:{e.action}"] = e.recovered_cents
        for name in names:
            one[f"recovered_destination_cents:{name}"] = e.recovered_cents
        out.update(one)
    return out


# --- the processor --------------------------------------------------------------------------------------------

EXTRA = {600: [complaint(600, "critical")], 540: [order(540)]}


def action(alert: int, verb: str, day: int, eid: str | None = None, **fields) -> tuple[str, dict]:
    value = {
        "event_id": eid or f"a{alert}-{verb}-{day}",
        "customer_id": "C",
        "occurred_at": iso(day),
        "alert_id": f"C:churn:{alert}",
        "action": verb,
        **fields,
    }
    return (ACTIONS, value)


class Feed(StoryFeed):
    """The churn story's feed with retention actions; states go through the codec, as the changelog's would."""

    through_codec = True

    def episodes(self) -> EpisodeState:
        state = self.store[b"C"].episodes
        assert state is not None
        return state


def story(actions: dict[int, list[tuple[str, dict]]], last_day: int = 700) -> Feed:
    feed = Feed()
    for day in range(0, last_day):
        events = [*([order(day)] if day in MONTHLY else []), *STORY.get(day, []), *EXTRA.get(day, [])]
        feed.day(day, *events, *actions.get(day, []))
    return feed


def alert_ids(feed: Feed) -> list[tuple[int, str, str]]:
    return [(day, a["alert_id"], a["level"]) for day, a in feed.alerts]


def test_without_actions_the_churn_warning_re_alerts_the_open_episode():
    feed = story({})
    assert alert_ids(feed) == [
        (421, "C:churn:1", "medium"),
        (467, "C:churn:2", "high"),
        (502, "C:churn:3", "high"),
        (600, "C:churn:4", "high"),  # medium since 532, high again after the cooldown: a reminder
        (665, "C:churn:5", "medium"),  # recovered (low) on day 660, falling again: a new episode
    ]
    eps = feed.episodes().episodes
    assert [(e.first_alert, e.last_alert) for e in eps] == [(1, 1), (2, 2), (3, 4), (5, 5)]


def test_an_acknowledged_episode_is_not_re_alerted():
    feed = story({505: [action(3, "acknowledged", 503, actor="ana")]})
    assert alert_ids(feed) == [
        (421, "C:churn:1", "medium"),
        (467, "C:churn:2", "high"),
        (502, "C:churn:3", "high"),
        (665, "C:churn:4", "medium"),  # the next alert keeps the next number
    ]
    episodes = feed.episodes()
    third = next(e for e in episodes.episodes if e.first_alert == 3)
    assert (third.status, third.last_alert, third.closed_ms) == (ACKNOWLEDGED, 3, (D0 + 660) * DAY)
    assert episodes.suppressed == 1
    assert sum(o.suppressed_alerts for o in feed.outcomes) == 1
    assert sum(o.counts.get(("action", "applied"), 0) for o in feed.outcomes) == 1


def test_an_escalation_of_an_acknowledged_episode_is_alerted_as_a_new_episode():
    feed = story({430: [action(1, "acknowledged", 425)]}, last_day=470)
    assert alert_ids(feed) == [(421, "C:churn:1", "medium"), (467, "C:churn:2", "high")]
    first, second = feed.episodes().episodes
    assert first.status == ACKNOWLEDGED and first.closed_ms == (D0 + 467) * DAY and second.status == OPEN


def test_a_purchase_in_the_window_saves_the_episode_and_a_resolution_feeds_the_outcome():
    feed = story(
        {
            503: [action(3, "delivered", 502, eid="d3", destination="ops-webhook")],
            510: [action(3, "assigned", 504, assignee="vip-desk"), action(3, "resolved", 509, outcome="won_back")],
        },
        last_day=620,
    )
    third = next(e for e in feed.episodes().episodes if e.first_alert == 3)
    assert (third.status, third.owner, third.outcome, third.destinations) == (
        RESOLVED,
        "vip-desk",
        "won_back",
        ["ops-webhook"],
    )
    assert third.purchased_ms == (D0 + 540) * DAY and third.recovered_cents == 10_000 and third.settled
    counts = feed.processor.population.save_counts()
    assert counts["episodes:high:won_back:saved"] == 1
    assert counts["episode_destinations:ops-webhook:saved"] == 1
    assert counts["recovered_cents:high:won_back"] == 10_000
    # episodes 1 and 2 were saved by the order of day 472 (within 60 days of both alerts)
    assert counts["episodes:medium:none:saved"] == 1 and counts["episodes:high:none:saved"] == 1
    rates = save_rates(counts)
    assert rates["all"][0].save_rate == 1.0 and rates["all"][0].recovered_cents == 30_000
    # the snapshot carries them to the other workers and to `pulse stats`
    other = BatchProcessor(SETTINGS.processor())
    other.population.apply_snapshot(feed.processor.population.snapshot(0))
    assert other.population.save_counts() == counts


def test_an_action_read_before_its_time_waits_for_the_clock():
    # read on day 300, before alert 3 exists: it is kept and takes effect when the clock reaches day 503
    feed = story({300: [action(3, "acknowledged", 503)]}, last_day=620)
    assert [a for _, a, _ in alert_ids(feed)] == ["C:churn:1", "C:churn:2", "C:churn:3"]
    third = next(e for e in feed.episodes().episodes if e.first_alert == 3)
    assert third.status == ACKNOWLEDGED


def test_a_redelivered_action_is_dropped_and_a_bad_one_is_counted():
    feed = story({}, last_day=425)
    records = feed.batch(425, action(1, "acknowledged", 424), action(9, "acknowledged", 424))
    feed.run(425, records)
    out = feed.run(425, records)  # a crash before the commit: the same records again
    assert out.counts[("action", "duplicate")] == 2
    feed.day(426, action(1, "resolved", 425))  # resolved needs an outcome: a dead letter, the worker goes on
    applied = Counter()
    for o in feed.outcomes:
        applied.update({k: v for k, v in o.counts.items() if k[0] == "action"})
    assert applied[("action", "applied")] == 1 and applied[("action", "scored")] == 2
    assert applied[("action", "dead_lettered")] == 1
    assert orjson.loads(feed.outcomes[-1].rejected[0].record)["reason"] == "invalid_value"
    episodes = feed.episodes()
    assert episodes.episodes[0].status == ACKNOWLEDGED
    # an alert this history has not raised (yet): kept, not applied, not making the customer due
    assert [a.alert for a in episodes.pending] == [9] and episodes.stale_actions == 0


def test_an_action_for_an_unknown_customer_creates_no_customer():
    feed = Feed()
    feed.day(0, ("retention-actions", {**action(1, "acknowledged", 0)[1], "customer_id": "C"}))
    assert b"C" not in feed.store


def test_retention_actions_hold_no_clock_and_move_no_watermark():
    feed = story({}, last_day=425)
    part = feed.processor.population.partition(0)
    clock_before, mark_before = part.clock_ms, part.watermark_ms
    # wall time years ahead of the event-time clock: a click during a replay of old history
    future = action(1, "acknowledged", 425 + 3 * 365)
    records = feed.batch(425, future)
    surveys_end = feed.offsets["surveys"] + 1
    # the actions topic is far behind its end offset; the inputs are caught up
    ends = {(ACTIONS, 0): feed.offsets[ACTIONS] + 1000, ("surveys", 0): surveys_end}
    for topic in ("orders", "complaints", "support-tickets"):
        ends[(topic, 0)] = feed.offsets.get(topic, -1) + 1
    feed.run(425, records, ends=ends)
    assert feed.processor.held == set()
    # everything the inputs hold is read: the clock is the inputs' watermark, whatever the actions topic holds
    assert clock_before == (D0 + 424) * DAY and mark_before == (D0 + 424) * DAY
    assert part.clock_ms == part.watermark_ms == (D0 + 425) * DAY
    state = feed.store[b"C"]
    assert state.last_event_ms < (D0 + 426) * DAY  # the action is not an event of the customer
    assert feed.episodes().pending and feed.episodes().episodes[0].status == OPEN


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 599), st.integers(1, 599), st.integers(0, 2**32 - 1))
def test_where_the_actions_are_read_does_not_change_the_episodes(read_ack, read_delivered, seed):
    """Incremental (each action read in a random day's batch, possibly long before its time, in random order,
    some twice at new offsets as a producer retry) == every action read in one batch at the start."""
    ack = action(3, "acknowledged", 503, eid="ack3")
    delivered = action(3, "delivered", 502, eid="dlv3", destination="ops-webhook")
    resolve = action(3, "resolved", 520, eid="res3", outcome="offer_made")
    reference = story({1: [ack, delivered, resolve]})
    rnd = random.Random(seed)
    placed: dict[int, list] = {}
    for day, act in ((read_ack, ack), (read_delivered, delivered), (rnd.randint(1, 519), resolve)):
        placed.setdefault(day, []).append(act)
        if rnd.random() < 0.5:
            placed.setdefault(rnd.randint(day, 599), []).append(act)  # the same event id again
    for acts in placed.values():
        rnd.shuffle(acts)
    incremental = story(placed)
    assert alert_ids(incremental) == alert_ids(reference)
    assert incremental.episodes().episodes == reference.episodes().episodes
    assert incremental.processor.population.save_counts() == reference.processor.population.save_counts()


# --- the profile ----------------------------------------------------------------------------------------------


def test_the_profile_shows_the_latest_episode_the_same_on_both_renderings():
    from schemas.profile import CustomerProfile, render_profile

    feed = story(
        {
            503: [action(3, "delivered", 502, eid="d3", destination="ops-webhook")],
            510: [action(3, "assigned", 504, assignee="vip-desk"), action(3, "resolved", 509, outcome="won_back")],
        },
        last_day=610,
    )
    state, now = feed.store[b"C"], (D0 + 609) * DAY
    config, currency = SETTINGS.scoring(), SETTINGS.base_currency.upper()
    rendered = render_profile("C", state, now, config, currency)
    assert rendered.fields == CustomerProfile.from_state("C", state, now, config, currency).to_redis()
    episode = rendered.model().episode
    assert episode is not None
    assert (episode.alert_id, episode.latest_alert_id, episode.status, episode.owner, episode.outcome) == (
        "C:churn:3",
        "C:churn:3",
        "resolved",
        "vip-desk",
        "won_back",
    )
    assert str(episode.recovered) == "100.00" and episode.destinations == ["ops-webhook"] and episode.settled
    assert episode.saved_at is not None and episode.closed_at is None
    never = CustomerState()
    assert render_profile("N", never, now, config, currency).fields["episode"] == ""
    assert CustomerProfile.from_state("N", never, now, config, currency).episode is None


def test_pulse_stats_shows_the_save_rate_by_level_action_and_destination():
    from streams.stats import PopulationStats, format_stats, stats_json

    feed = story(
        {503: [action(3, "delivered", 502, eid="d3", destination="ops-webhook")]},
        last_day=620,
    )
    view = feed.processor.population
    stats = PopulationStats(1, 2, view.indicators(), view.save_counts())
    text = format_stats(stats, SETTINGS)
    assert "save rate (purchase within 60 d of an alert" in text
    lines = {line.split("  ")[1].strip(): line for line in text.splitlines() if line.startswith("  ")}
    assert "100.0 %" in lines["all alerted customers"] and "300.00 USD recovered" in lines["all alerted customers"]
    assert "1 saved of 1 settled" in lines["destination ops-webhook"]
    assert "2 saved of 2 settled" in lines["destination none"]
    assert "3 saved of 3 settled" in lines["action none"]
    data = stats_json(stats)["save_rate"]
    assert data["all"]["all"]["save_rate"] == 1.0 and data["level"]["high"]["saved"] == 2
    assert data["destination"]["ops-webhook"]["recovered"] == "100.00"


# --- offline: pulse score ------------------------------------------------------------------------------------


def story_records(last_day: int = 640) -> list[tuple[str, bytes, bytes]]:
    topics = SETTINGS.input_topics()
    by_name = {"orders": topics["order"], "surveys": topics["survey"], "complaints": topics["complaint"]}
    out = []
    for day in range(0, last_day):
        events = [*([order(day)] if day in MONTHLY else []), *STORY.get(day, []), *EXTRA.get(day, []), clock(day)]
        out += [(by_name[t], v["customer_id"].encode(), orjson.dumps(v)) for t, v in events]
    return out


def offline_episodes(records: list) -> tuple[dict, Counter]:
    from pulse.offline import score_records

    # one record per batch: moving an action record leaves every other batch as it was
    result = score_records(records, SETTINGS.model_copy(update={"batch_max_events": 1}), wall_ms=(D0 + 2000) * DAY)
    states = {k: decode_state(encode_state(s)) for k, s in result.states.items()}
    totals: Counter = Counter()
    for state in states.values():
        totals.update(state_tallies(state.episodes))
    return {k: s.episodes for k, s in states.items()}, +totals


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3))
def test_pulse_score_gives_the_same_episodes_wherever_the_actions_are_in_the_history(where):
    """`pulse score` (the offline processor): the actions anywhere in the file before their time, once or twice,
    give the episodes of the file with every action first; and a second run gives the same (a replay)."""
    base = story_records()
    acts = [
        action(3, "acknowledged", 503, eid="ack3"),
        action(3, "delivered", 502, eid="dlv3", destination="crm"),
        action(3, "resolved", 560, eid="res3", outcome="won_back"),
    ]
    raw = [(ACTIONS, b"C", orjson.dumps(v)) for _, v in acts]
    # the first records create customer C: an action for an unknown customer is stale
    first = [*base[:1], *raw, *base[1:]]
    reference, totals = offline_episodes(first)
    third = next(e for e in reference[b"C"].episodes if e.first_alert == 3)
    assert (third.status, third.outcome, third.destinations) == (RESOLVED, "won_back", ["crm"])
    assert reference[b"C"].suppressed == 1
    # each action somewhere in the first 80 % of the story (day 502 is about 78 % in)
    anywhere = list(base)
    for record, at in sorted(zip(raw, where, strict=True), key=lambda ra: -ra[1]):
        anywhere.insert(1 + int(at * 0.78 * (len(base) - 1)), record)
    again, again_totals = offline_episodes(anywhere)
    assert again == reference and again_totals == totals
    assert offline_episodes(first) == (reference, totals)


def test_a_mis_keyed_or_misplaced_action_is_re_published_not_applied():
    value = orjson.dumps(action(1, "acknowledged", 1)[1])
    processor = BatchProcessor(SETTINGS.processor(), partition_of=lambda key: 1)
    out = processor.process([Incoming(ACTIONS, 0, 0, b"C", value)], lambda key: CustomerState())
    assert out.rerouted == [(ACTIONS, b"C", value)] and out.misplaced == {(ACTIONS, 0): 1}
    fresh = BatchProcessor(SETTINGS.processor())
    out = fresh.process([Incoming(ACTIONS, 0, 1, b"X", value)], lambda key: CustomerState())
    assert out.rerouted == [(ACTIONS, b"C", value)] and not out.misplaced and not out.states
    assert out.counts == {("action", "rerouted"): 1}
