"""Per-customer state stays bounded however long the history (no unbounded lists)."""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime

import orjson
import pytest

from pulse.offline import score_records
from pulse.simulate import generate_events
from pulse_config.settings import Settings
from scoring.customer import CustomerState, EventFacts, apply_event
from scoring.orders import OrderFact
from scoring.tickets import TicketFact
from scoring.units import DAY_MS
from scoring.voice import ComplaintFact, SurveyFact
from streams.codec import encode_state, encode_state_orjson

pytestmark = pytest.mark.faults

#: issue 8's budget: the mean changelog record per customer of a realistic population
TYPICAL_MEAN_BUDGET = 1024
#: the busy customer below (every window full, 32 tickets, 32 recent ids) measured 3,708 bytes
#: (its orjson record: 7,676): this catches a bounded structure that starts growing, or an encoding regression
LARGEST_BUDGET = 4096

SETTINGS = Settings(_env_file=None)
CONFIG = SETTINGS.scoring()
START_MS = 1_600_000_000_000


def busy_customer_events(days: int, rng: random.Random):
    """Every day: 2 orders, a survey, often a complaint and a whole ticket lifecycle; ids never repeat."""
    n = 0
    for day in range(days):
        at = START_MS + day * DAY_MS
        facts = [
            {"order": OrderFact(at, rng.randint(100, 90_000), None, refunded=rng.random() < 0.05)},
            {"order": OrderFact(at + 1000, rng.randint(100, 90_000), rng.randint(50, 900))},
            {"survey": SurveyFact(at + 2000, rng.randint(0, 10), rng.randint(1, 5))},
            {"complaint": ComplaintFact(at + 3000, rng.choice(["low", "medium", "high", "critical"]))},
        ]
        ticket = f"T{day}"
        for k, kind in enumerate(["opened", "first_response", "resolved", "reopened"]):
            facts.append({"ticket": TicketFact(at + 4000 + k * 3_600_000, ticket, kind)})
        for fact in facts:
            n += 1
            kind = next(iter(fact))
            yield EventFacts(kind="support" if kind == "ticket" else kind, event_id=f"e{n}", occurred_ms=at, **fact)


def test_the_largest_state_stops_growing():
    rng = random.Random(7)
    state = CustomerState()
    sizes = {}
    for i, event in enumerate(busy_customer_events(3 * 365, rng), start=1):
        apply_event(state, event, CONFIG)
        if i % 1000 == 0:
            sizes[i] = len(encode_state(state))
    events = i
    final = len(encode_state(state))
    print(
        f"\n[faults] one customer, {events} events over 3 years: state bytes at 1k..{events // 1000}k events "
        f"{list(sizes.values())[:3]}…{list(sizes.values())[-3:]}, final {final} "
        f"(orjson format: {len(encode_state_orjson(state))})"
    )
    cfg = CONFIG
    assert len(state.orders.revenue_buckets) <= cfg.orders.window_buckets + 1
    assert len(state.voice.complaint_days) <= cfg.voice.complaint_window_days + 1
    assert len(state.service.tickets) <= cfg.service.max_tickets
    assert len(state.recent_ids) <= cfg.dedup_event_ids
    # after the windows have filled (a year in), the size no longer grows with the history
    year_in = [size for n, size in sizes.items() if n >= events // 3]
    assert max(year_in) <= min(year_in) * 1.05 + 64, year_in
    assert max(sizes.values()) <= LARGEST_BUDGET and final <= LARGEST_BUDGET, (sizes, final)


def test_typical_state_size_per_customer():
    """What a realistic population costs per customer (issue 8's budget: 1 KB)."""
    events = generate_events(customers=500, days=365, seed=3, end=datetime(2026, 6, 1, tzinfo=UTC))
    topics = SETTINGS.input_topics()
    records = [(topics[k], e["customer_id"].encode(), orjson.dumps(e)) for k, e in events]
    result = score_records(records, SETTINGS)
    sizes = sorted(len(encode_state(state)) for state in result.states.values())
    mean = statistics.fmean(sizes)
    orjson_mean = statistics.fmean(len(encode_state_orjson(state)) for state in result.states.values())
    print(
        f"\n[faults] {len(sizes)} customers, {len(events)} events: state bytes mean {mean:.0f}, "
        f"p50 {sizes[len(sizes) // 2]}, p99 {sizes[int(len(sizes) * 0.99)]}, max {sizes[-1]} "
        f"(orjson format: mean {orjson_mean:.0f})"
    )
    assert 0 < mean <= TYPICAL_MEAN_BUDGET
    assert sizes[-1] <= LARGEST_BUDGET
