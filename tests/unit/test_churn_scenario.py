"""A customer who buys monthly, then stops, then complains: the exact alert sequence (spec: Churn warning).

Driven through the worker's own processor, one batch per day of event time:
another customer's daily survey moves the clock, as the rest of the
population does in production, and the due-time index raises the
time-driven alerts on the day they fall due.
"""

from __future__ import annotations

import orjson

from pulse_config.settings import Settings
from scoring.clv import DEFAULT_CLV_PARAMS
from scoring.customer import CustomerState
from scoring.units import DAY_MS
from streams.processor import BatchOutcome, BatchProcessor, Incoming
from tests.churn_story import D0, MONTHLY, STORY, Feed, order

SETTINGS = Settings(_env_file=None)


def spec_p_alive(x: int, t_x: float, T: float) -> float:
    """The spec's formula, written out independently of scoring.clv."""
    p = DEFAULT_CLV_PARAMS.bgnbd
    return 1 / (1 + p.a / (p.b + x - 1) * ((p.alpha + T) / (p.alpha + t_x)) ** (p.r + x))


def test_buys_monthly_then_stops_then_complains():
    feed = Feed()
    levels = {}
    for day in range(0, 511):
        feed.day(day, *([order(day)] if day in MONTHLY else []), *STORY.get(day, []))
        levels[day] = feed.store[b"C"].churn.level if b"C" in feed.store else None

    # Overdue: the mean gap is 30 days, so silence over 90 days after day 330: first seen on day 421.
    # Low P(alive): the first day the spec's formula is below 0.3 (x = 11, t_x = 330 days, in weeks).
    drop = next(d for d in range(331, 1000) if spec_p_alive(11, 330 / 7, d / 7) < 0.3)
    assert 421 < drop < 470
    expected = [
        (421, "entered", "medium", {"overdue", "spend_decline"}),
        (drop, "escalated", "high", {"overdue", "low_p_alive", "spend_decline"}),
        # 35 days after the last alert: the cooldown has passed
        (502, "entered", "high", {"detractor", "dissatisfied", "severe_complaint"}),
    ]
    got = [(day, a["kind"], a["level"], {r["code"] for r in a["reasons"]}) for day, a in feed.alerts]
    assert got == expected
    # what was suppressed, and why, really happened
    assert (levels[420], levels[472], levels[476], levels[480], levels[500]) == (
        "low",
        "low",
        "medium",
        "high",
        "medium",
    )
    assert [a["alert_id"] for _, a in feed.alerts] == ["C:churn:1", "C:churn:2", "C:churn:3"]
    assert [a["previous_level"] for _, a in feed.alerts] == ["low", "medium", "medium"]
    first = feed.alerts[0][1]
    # 40 (overdue) + 20 (spend decline); the only buyer sits at the 50th percentile: not VIP
    assert first["risk_score"] == 60 and not first["vip"] and not first["priority"]
    assert first["revenue"] == "1200.00" and first["suggested_action"].startswith("win-back")
    # 1,000 in the revenue window (53 weekly buckets: days 56-426) × the default 30 % margin
    assert first["value_at_risk"] == "300.00"
    overdue = next(r for r in first["reasons"] if r["code"] == "overdue")
    assert overdue["observed"] == 91.0 and overdue["threshold"] == 90.0
    last = feed.alerts[2][1]
    assert last["risk_score"] == 75 and last["suggested_action"].startswith("resolve the open complaint")

    # The profile carries the latest risk and reasons.
    profile = feed.processor.profiles({b"C": feed.store[b"C"]}, (D0 + 510) * DAY_MS)[0].model()
    assert profile.churn_level == "high" and profile.churn_alerts == 3
    assert {r.code for r in profile.churn_reasons} == {"detractor", "dissatisfied", "severe_complaint"}


def test_a_redelivered_batch_raises_no_second_alert():
    feed = Feed()
    for day in range(0, 421):
        feed.day(day, *([order(day)] if day in MONTHLY else []))
    saved = {k: CustomerState(**{f: getattr(v, f) for f in v.__slots__}) for k, v in feed.store.items()}
    assert not feed.alerts
    # day 421 raises the first alert; a crash before the commit replays the same records
    batch_offsets = dict(feed.offsets)
    out = feed.day(421)
    assert [a["alert_id"] for _, a in feed.alerts] == ["C:churn:1"]
    from streams.codec import decode_state, encode_state

    feed.store = {k: decode_state(encode_state(v)) for k, v in out.states.items()} | {
        k: v for k, v in feed.store.items() if k not in out.states
    }
    feed.offsets = batch_offsets
    feed.processor.rebuild({0}, feed.store.items())
    feed.day(421)
    assert [a["alert_id"] for _, a in feed.alerts] == ["C:churn:1"]
    assert saved  # the states before the alert were taken (sanity of the setup)


def test_idle_advance_moves_the_clock_with_the_wall_clock_when_no_event_comes():
    """Live operation: traffic stops, the sweep's ticks keep coming; the overdue alert still fires."""
    settings = Settings(_env_file=None, clock_idle_advance_seconds=60)
    processor = BatchProcessor(settings.processor())
    store: dict[bytes, CustomerState] = {}
    ticks = settings.topic_ticks()
    offsets = iter(range(1000))
    records = [Incoming("orders", 0, next(offsets), b"C", orjson.dumps(order(day)[1])) for day in MONTHLY]
    last = (D0 + 330) * DAY_MS
    wall0 = last + 3_600_000  # live: the last order came an hour ago
    out = processor.process(records, lambda k: store.get(k) or CustomerState(), wall_ms=wall0)
    store.update(out.states)
    assert processor.watermark_ms == last

    def tick(wall_ms: int) -> BatchOutcome:
        out = processor.process([Incoming(ticks, 0, next(offsets), None, b"{}")], lambda k: store[k], wall_ms)
        store.update(out.states)
        return out

    assert tick(wall0 + 59_000).alerts == [] and processor.watermark_ms == last  # not idle long enough
    tick(wall0 + 60_000)
    assert processor.watermark_ms == last + 60_000  # the clock follows the wall clock
    # 90 days of silence later (in wall time, as a live worker would live it) the overdue alert fires
    out = tick(wall0 + 91 * DAY_MS)
    assert [(a.kind, a.level.value) for _, a, _ in out.alerts] == [("entered", "medium")]
    # without the setting, the clock never moves without events (replays stay exact)
    still = BatchProcessor(Settings(_env_file=None).processor())
    still.process(records, lambda k: CustomerState(), wall_ms=wall0)
    still.process([Incoming(ticks, 0, 999, None, b"{}")], lambda k: CustomerState(), wall0 + 91 * DAY_MS)
    assert still.watermark_ms == last
