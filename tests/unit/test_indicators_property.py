"""Population indicators over the worker's processor == a batch recomputation from the raw events.

Histories of all four kinds in any arrival order, with producer duplicates, spread over partitions owned
by 1–3 "workers" that see each other only through population snapshots; the clock then jumps to a random
later time and only the due-time index re-evaluates customers (no sweep). Every worker's merged
indicators must equal testing/reference.py's batch computation at that clock.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulse_config.settings import Settings
from scoring.customer import CustomerState
from streams.processor import BatchProcessor, Incoming
from testing.reference import batch_population_indicators
from tests.multiworker import feed_workers

SETTINGS = Settings(_env_file=None, batch_max_events=7)
DAY0 = datetime(2025, 1, 1, tzinfo=UTC)
HISTORY_DAYS = 500
#: fields compared with the reference (every count and every indicator)
FIELDS = tuple(batch_population_indicators([], 0, SETTINGS.indicators().response_edges_ms))

#: days before the end of the history, often on a window's edge (30, 90, 365 and 395 days)
EDGES = [0, 1, 29, 30, 31, 89, 90, 91, 364, 365, 366, 394, 395, 396]
back = st.sampled_from(EDGES) | st.integers(0, HISTORY_DAYS)
when = st.tuples(back.map(lambda b: HISTORY_DAYS - b), st.integers(0, 86_399))
#: seconds from a ticket's opening to one of its other events (edges of the response histogram included)
after = st.none() | st.sampled_from([0, 60, 61, 3_600, 86_400]) | st.integers(0, 5 * 86_400)
customers = st.integers(0, 5)
orders = st.tuples(st.just("order"), customers, when)
surveys = st.tuples(st.just("survey"), customers, when, st.none() | st.integers(0, 10), st.none() | st.integers(1, 5))
complaints = st.tuples(st.just("complaint"), customers, when)
#: a ticket's lifecycle: opened (or never seen opened), then maybe a response, a resolution, a reopening
tickets = st.tuples(
    st.just("support"),
    st.integers(0, 2),
    st.tuples(st.sampled_from([0, 1, 2, 29, 30, 31, 32]).map(lambda b: HISTORY_DAYS - b), st.integers(0, 86_399)),
    st.integers(0, 1),
    st.booleans() | st.just(True),
    after,
    after,
    after,
)
event_rows = st.lists(st.one_of(orders, orders, surveys, surveys, complaints, tickets), min_size=1, max_size=40)


def to_events(rows: list[tuple]) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for row in rows:
        if row[0] != "support":
            out.append(to_event(len(out), row))
            continue
        _, c, (day, sec), ticket, opened, response, resolution, reopening = row
        steps = [("opened", 0)] if opened else []
        steps += [(k, s) for k, s in (("first_response", response), ("resolved", resolution)) if s is not None]
        if reopening is not None and resolution is not None:
            steps.append(("reopened", resolution + reopening))
        for kind, offset in steps:
            out.append(to_event(len(out), ("support", c, (day, sec + offset), ticket, kind)))
    return out


def to_event(n: int, row: tuple) -> tuple[str, dict]:
    kind, c, (day, sec) = row[0], row[1], row[2]
    base = {
        "event_id": f"e{n}",
        "customer_id": f"C{c}",
        "occurred_at": (DAY0 + timedelta(days=day, seconds=sec)).isoformat(),
    }
    if kind == "order":
        return kind, {**base, "order_id": f"o{n}", "amount": "10.00", "currency": "USD", "status": "completed"}
    if kind == "survey":
        answers = {"nps": row[3], "csat": row[4]} if row[3] is not None or row[4] is not None else {"nps": 5}
        return kind, {**base, **answers}
    if kind == "complaint":
        return kind, {**base, "complaint_id": f"k{n}", "severity": "low", "category": "x"}
    return kind, {**base, "ticket_id": f"T{row[3]}", "kind": row[4]}


def partition_of(cid: str, partitions: int) -> int:
    return zlib.crc32(cid.encode()) % partitions


def run_workers(arrivals: list[tuple[str, dict]], partitions: int, workers: int) -> list[BatchProcessor]:
    topics = SETTINGS.input_topics()
    processors = [BatchProcessor(SETTINGS.processor()) for _ in range(workers)]
    stores: list[dict[bytes, CustomerState]] = [{} for _ in range(workers)]
    owner = {p: p % workers for p in range(partitions)}
    offsets: dict[tuple[str, int], int] = {}
    batches: list[list[Incoming]] = [[] for _ in range(workers)]
    for kind, e in arrivals:
        p = partition_of(e["customer_id"], partitions)
        offset = offsets[(kind, p)] = offsets.get((kind, p), -1) + 1
        batches[owner[p]].append(Incoming(topics[kind], p, offset, e["customer_id"].encode(), orjson.dumps(e)))
    for out in feed_workers(processors, stores, batches, owner):
        assert not out.rejected

    def exchange() -> None:
        for processor in processors:
            for other in processors:
                if other is not processor:
                    for p in other.population.local:
                        processor.population.apply_snapshot(other.population.snapshot(p))

    exchange()  # every worker now has the final clock
    for w, processor in enumerate(processors):
        for p in sorted(processor.population.local):
            stores[w].update(processor.check_due_whole(p, lambda k, s=stores[w]: s[k]).states)
    exchange()
    return processors


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    event_rows,
    st.randoms(use_true_random=False),
    st.lists(st.integers(0, 89), max_size=10),  # events sent twice by the producer
    st.sampled_from([0, 0, 0, 1, 30, 90]) | st.integers(0, 420),  # days from the end of the history to the clock
    st.integers(1, 4),
    st.integers(1, 3),
)
def test_merged_indicators_equal_a_batch_recomputation(rows, rnd, duplicated, clock_days, partitions, workers):
    events = to_events(rows)
    arrivals = list(events)
    rnd.shuffle(arrivals)
    for i in sorted({i for i in duplicated if i < len(arrivals)}, reverse=True):
        arrivals.insert(min(len(arrivals), i + 1 + rnd.randint(0, 4)), arrivals[i])
    at = DAY0 + timedelta(days=HISTORY_DAYS + clock_days, seconds=rnd.randint(0, 86_399))
    # the clock moves with one more event (a survey of a customer of its own), read last
    tick = ("survey", {"event_id": "clock", "customer_id": "Z", "occurred_at": at.isoformat(), "nps": 9})
    arrivals.append(tick)
    processors = run_workers(arrivals, partitions, workers)
    now_ms = max(int(datetime.fromisoformat(e["occurred_at"]).timestamp() * 1000) for _, e in arrivals)
    config = SETTINGS.indicators()
    expected = batch_population_indicators([*events, tick], now_ms, config.response_edges_ms)
    for processor in processors:
        assert processor.watermark_ms == now_ms
        got = processor.population.indicators().to_json()
        got["first_response_ms"] = {int(k): v for k, v in got["first_response_ms"].items()}
        for name in FIELDS:
            assert got[name] == pytest.approx(expected[name]), name
