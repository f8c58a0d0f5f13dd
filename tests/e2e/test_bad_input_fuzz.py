"""10,000 hostile events mixed with valid ones: all bad ones dead-lettered with a reason, all valid ones scored.

The hostile records go to the four input topics and to the retention-actions topic (what the router and CRM
integrations write: input too).

The verdict for each payload comes from an offline run of the same pure
processor over the same bytes (the schema rules themselves are pinned by the
unit tests); this test proves the worker's routing and accounting under a
stream of hostile input: nothing lost, nothing doubled, no restart.
"""

from __future__ import annotations

import random
import urllib.request
from datetime import UTC, datetime

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pulse.simulate import generate_events
from testing.reference import STATE_FIELDS, offline_run
from testing.stack import consume, produce, wait_until
from tests.fuzz_payloads import hostile

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

HOSTILE = 10_000


def test_hostile_stream_is_dead_lettered_and_valid_events_are_all_scored(namespace, start_worker):
    s = namespace.settings
    topics = {**s.input_topics(), "action": s.topic_retention_actions}
    rng = random.Random(20261123)
    valid = generate_events(customers=150, days=120, seed=9, end=datetime(2026, 5, 1, tzinfo=UTC))
    records: list[tuple[str, bytes | None, bytes | None]] = [
        (topics[k], e["customer_id"].encode(), orjson.dumps(e)) for k, e in valid
    ]
    for n in range(HOSTILE):
        kind = rng.choice(list(topics))
        key, value = hostile(kind, rng, n, s.max_event_bytes)
        records.insert(rng.randrange(len(records) + 1), (topics[kind], key, value))

    expected_profiles, expected_rejects = offline_run(records, s)
    assert len(expected_rejects) > 0.95 * HOSTILE  # the generator really is hostile

    worker = start_worker()
    for topic in topics.values():
        produce(namespace.bootstrap, topic, [(k, v) for t, k, v in records if t == topic])

    letters = consume(namespace.bootstrap, s.topic_dead_letters, expected=len(expected_rejects), timeout=180)
    assert len(letters) == len(expected_rejects)
    reasons = [orjson.loads(m.value) for m in letters]
    assert all(r["reason"] and r["detail"] and r["source_topic"] in topics.values() for r in reasons)
    from_actions = sum(r["source_topic"] == s.topic_retention_actions for r in reasons)
    assert from_actions > 0.15 * HOSTILE, from_actions  # about a fifth of the hostile records are actions
    assert sorted(r["reason"] for r in reasons) == sorted(r.reason for r in expected_rejects)

    import redis

    from schemas.profile import CustomerProfile
    from streams.sinks.redis_profiles import profile_key

    client = redis.Redis.from_url(s.redis_url, decode_responses=True)

    def matches() -> bool:
        for cid, exp in expected_profiles.items():
            fields = client.hgetall(profile_key(s.redis_key_prefix, cid))
            if not fields:
                return False
            got = CustomerProfile.from_redis(fields)
            if any(getattr(got, f) != getattr(exp, f) for f in STATE_FIELDS):
                return False
        return True

    assert wait_until(matches, timeout=120), worker.log_tail()
    assert worker.alive(), worker.log_tail()
    assert worker.log.read_text().count("[^Worker]: Ready") == 1  # never restarted

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).read().decode()
    dead = sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "pulse_dead_letters_total"
    )
    assert dead == len(expected_rejects)
    print(
        f"\n[faults] fuzz: {len(records)} events sent, {len(expected_rejects)} dead-lettered, "
        f"{len(expected_profiles)} customers scored exactly, 0 differing profiles"
    )
