"""Scale 1 → 3 → 2 workers during a replay: the result equals one uninterrupted worker's."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
import redis

from pulse.simulate import generate_events
from testing.reference import uninterrupted_profiles
from testing.stack import produce, profile_diffs, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


def test_scaling_out_and_in_during_a_replay_changes_nothing(namespace, start_worker):
    s = namespace.settings
    topics = s.input_topics()
    events = generate_events(customers=300, days=365, seed=42, end=datetime(2026, 6, 1, tzinfo=UTC))
    expected = uninterrupted_profiles(events, s)
    client = redis.Redis.from_url(s.redis_url, decode_responses=True)
    thirds = [
        events[: len(events) // 3],
        events[len(events) // 3 : 2 * len(events) // 3],
        events[2 * len(events) // 3 :],
    ]

    def send(part: list[tuple[str, dict]]) -> None:
        for kind, topic in topics.items():
            produce(
                namespace.bootstrap, topic, [(e["customer_id"].encode(), orjson.dumps(e)) for k, e in part if k == kind]
            )

    def profiles_written() -> int:
        return sum(1 for _ in client.scan_iter(f"{s.redis_key_prefix}profile:*", count=1000))

    small_batches = {"PULSE_BATCH_MAX_EVENTS": "50"}
    first = start_worker(**small_batches)
    send(thirds[0])
    assert wait_until(lambda: profiles_written() >= 50), first.log_tail()
    second, third = start_worker(**small_batches), start_worker(**small_batches)
    send(thirds[1])
    assert wait_until(lambda: "Worker ready" in third.log.read_text()), third.log_tail()
    third.stop()  # scale in while events are still flowing
    send(thirds[2])

    converged = wait_until(lambda: not profile_diffs(s, expected), timeout=150)
    remaining = profile_diffs(s, expected)
    print(f"\n[faults] 1 -> 3 -> 2 workers: events sent {len(events)}, differing profiles {len(remaining)}")
    assert converged, f"{len(remaining)} of {len(expected)} differ, e.g. {remaining[:2]}\n{second.log_tail()}"
    assert first.alive() and second.alive()
