"""A worker stopped mid-stream (crash or graceful), a fresh one recovers from the changelog: exact profiles.

All four event kinds; the expected profiles are those of one uninterrupted
worker (the same scorers, run offline over the same events).

The replacement has an empty in-memory store, so everything it knows comes
from the changelog; events after the last commit are read again and must be
dropped by the offsets stored in each state, not counted twice.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime

import orjson
import pytest
import redis

from pulse.simulate import generate_events
from testing.reference import batch_order_profiles, uninterrupted_profiles
from testing.stack import produce, profile_diffs, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.mark.parametrize(
    ("how", "store"),
    [(signal.SIGKILL, "memory://"), (signal.SIGTERM, "memory://"), (signal.SIGKILL, "rocksdb://")],
    ids=["kill-9", "sigterm", "kill-9-rocksdb"],
)
def test_replacement_worker_recovers_exact_state(namespace, start_worker, how, store):
    """With RocksDB the replacement reuses the local files, which may hold
    state ahead of the changelog and of the commit; the offsets stored in each
    state make the replay drop what that state already contains."""
    settings = namespace.settings
    events = generate_events(customers=200, days=365, seed=int(how), end=datetime(2026, 6, 1, tzinfo=UTC))
    topics = settings.input_topics()
    half = len(events) // 2
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    expected = uninterrupted_profiles(events, settings)
    # the offline reference agrees with the independent batch computation of the order fields
    for cid, exp in batch_order_profiles([e for k, e in events if k == "order"]).items():
        assert {f: expected[cid][f] for f in exp} == exp

    def send(part: list[tuple[str, dict]]) -> None:
        for kind in topics:
            records = [(e["customer_id"].encode(), orjson.dumps(e)) for k, e in part if k == kind]
            produce(namespace.bootstrap, topics[kind], records)

    def processed() -> int:
        return sum(1 for _ in client.scan_iter(f"{settings.redis_key_prefix}profile:*", count=1000))

    first = start_worker(PULSE_BATCH_MAX_EVENTS="50", PULSE_STORE=store)
    send(events[:half])
    assert wait_until(lambda: processed() >= 20), first.log_tail()
    first.proc.send_signal(how)
    first.proc.wait(30)

    second = start_worker(PULSE_BATCH_MAX_EVENTS="50", PULSE_STORE=store)
    send(events[half:])

    converged = wait_until(lambda: not profile_diffs(settings, expected))
    remaining = profile_diffs(settings, expected)
    print(f"\n[faults] {how.name} {store}: events sent {len(events)}, differing profiles {len(remaining)}")
    assert converged, f"{len(remaining)} profiles differ, e.g. {remaining[:2]}\n{second.log_tail()}"
    assert second.alive()
    # the changelog held the state: the second worker did not start from nothing
    assert "Recovery" in second.log.read_text()
