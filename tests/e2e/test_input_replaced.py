"""An input topic deleted and created again (an operator purging it, or a producer's auto-create after a
delete) while the worker is stopped: its offsets start again at 0.

Each customer's state remembers the last offset it applied per input (scoring.customer ``source_offsets``) and
drops a record at or below it as a redelivery. Read against those offsets, the new log's records look like
redeliveries until their offsets pass what the old log reached: events lost without a word (37 of the 80
orders below, before session 29). Now the end markers name the last record decided per input log
(streams.ownership.InputLog); the worker that takes the partition reads it back, finds the log replaced, and
reads it from its start with its offsets counted above the old log's.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from pulse.simulate import generate_events
from streams.admin import ensure_topics
from streams.security import kafka_client_kwargs
from testing.reference import uninterrupted_profiles
from testing.stack import metric_sum, profile_diffs, send_events, wait_until

pytestmark = pytest.mark.e2e

CUSTOMERS = 30
VERDICTS = ("same", "replaced", "unknown")
DAYS = 240


def recreate(settings, topic: str, timeout: float = 60.0) -> None:
    """Delete ``topic``, wait until the broker no longer lists it, and create the worker's topics again."""

    async def go() -> None:
        admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings), request_timeout_ms=15000)
        await admin.start()
        try:
            await admin.delete_topics([topic])
            deadline = time.monotonic() + timeout
            while topic in await admin.list_topics():
                assert time.monotonic() < deadline, f"{topic} still listed {timeout:g} s after its deletion"
                await asyncio.sleep(0.5)
        finally:
            await admin.close()
        deadline = time.monotonic() + timeout
        while True:  # Kafka may refuse the create while the deletion completes
            try:
                await ensure_topics(settings)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)

    asyncio.run(go())


def first_half(namespace, start_worker, seed: int) -> tuple[list, int, object]:
    """A generated history, a worker, and the first half of the history applied: (events, half, worker)."""
    events = generate_events(customers=CUSTOMERS, days=DAYS, seed=seed, end=datetime(2026, 6, 1, tzinfo=UTC))
    half = len(events) // 2
    worker = start_worker(PULSE_BATCH_MAX_EVENTS="50")
    send_events(namespace, events[:half])
    assert wait_until(
        lambda: not profile_diffs(namespace.settings, uninterrupted_profiles(events[:half], namespace.settings))
    )
    return events, half, worker


def whole_history(namespace, events: list, worker) -> tuple[dict, bool, list, dict]:
    """Wait until every profile is the whole history's: (those profiles, converged, the profiles differing, the
    worker's orders by outcome)."""
    settings = namespace.settings
    expected = uninterrupted_profiles(events, settings)
    converged = wait_until(lambda: not profile_diffs(settings, expected))
    remaining = profile_diffs(settings, expected)
    outcomes = {
        o: metric_sum(worker.metrics_port, "pulse_events_total", {"outcome": o, "kind": "order"})
        for o in ("scored", "duplicate")
    }
    return expected, converged, remaining, outcomes


def test_an_input_topic_created_again_loses_no_event(namespace, start_worker):
    settings = namespace.settings
    events, half, first = first_half(namespace, start_worker, seed=29)
    first.stop()

    recreate(settings, settings.topic_orders)
    send_events(namespace, events[half:])
    second = start_worker(PULSE_BATCH_MAX_EVENTS="50")
    expected, converged, remaining, outcomes = whole_history(namespace, events, second)
    orders_after = sum(1 for kind, _ in events[half:] if kind == "order")
    print(
        f"\n[replaced] orders after the topic was created again: {orders_after}; the second worker's orders by "
        f"outcome {outcomes}; {len(remaining)} profiles differ"
    )
    replaced = metric_sum(second.metrics_port, "pulse_input_logs_replaced_total", {"topic": settings.topic_orders})
    assert converged, f"{remaining[:2]}\n{second.log_tail()}"
    assert outcomes == {"scored": orders_after, "duplicate": 0}, outcomes
    # every partition of the topic: each new log is shorter than, or differs at, the record the changelog named
    assert replaced == settings.partitions
    assert "input log replaced: " in second.log.read_text(errors="replace")
    second.stop()

    # the next start finds the new logs as the changelog names them: nothing replaced, nothing read twice
    third = start_worker(PULSE_BATCH_MAX_EVENTS="50")
    send_events(namespace, events[-3:])  # read again by id: the producer's duplicates, and a batch to run

    def duplicates() -> float:
        try:
            return metric_sum(third.metrics_port, "pulse_events_total", {"outcome": "duplicate"})
        except OSError:  # not listening yet
            return 0.0

    assert wait_until(lambda: duplicates() >= 3)
    assert metric_sum(third.metrics_port, "pulse_input_logs_replaced_total") == 0
    # it did read them back: every orders partition (the others' logs too), each the same
    checks = {v: metric_sum(third.metrics_port, "pulse_input_log_checks_total", {"verdict": v}) for v in VERDICTS}
    assert checks["same"] >= settings.partitions and checks["replaced"] == checks["unknown"] == 0, checks
    assert not profile_diffs(settings, expected)
