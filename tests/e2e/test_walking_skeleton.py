"""Orders in, profiles out: a real Tansu broker, a real redis-server, a worker subprocess.

Checks the exact profile of every customer in Redis against the batch
reference, the exact dead-letter records of the malformed events, and that the
worker kept running through them.
"""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from pulse.simulate import generate_orders
from schemas.profile import CustomerProfile
from streams.sinks.redis_profiles import profile_key
from testing.reference import batch_order_profiles
from testing.stack import consume, produce, profile_diffs, wait_until

pytestmark = pytest.mark.e2e

END = datetime(2026, 6, 30, tzinfo=UTC)
ORDER = {
    "event_id": "bad",
    "customer_id": "C000001",
    "occurred_at": "2026-01-01T00:00:00Z",
    "order_id": "O",
    "amount": 5,
    "currency": "USD",
    "status": "completed",
}


def j(obj: dict) -> bytes:
    return orjson.dumps(obj)


#: (payload, reason the dead-letter record must carry)
BAD = [
    (b"{not json", "malformed_json"),
    (b"\xff\xfe\x00\x01", "malformed_json"),
    (b"[1,2,3]", "not_an_object"),
    (j({k: v for k, v in ORDER.items() if k != "amount"}), "missing_field"),
    (j({**ORDER, "amount": "five"}), "wrong_type"),
    (j({**ORDER, "amount": -5}), "out_of_range"),
    (j({**ORDER, "amount": "Infinity"}), "out_of_range"),
    (j({**ORDER, "status": "stolen"}), "unknown_value"),
    (j({**ORDER, "occurred_at": "2026-01-01T00:00:00"}), "invalid_time"),
    (j({**ORDER, "currency": "JPY"}), "unsupported_currency"),
    (b'{"pad": "' + b"x" * 70_000 + b'"}', "payload_too_large"),
]


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_orders_become_exact_profiles_in_redis_and_bad_input_is_dead_lettered(namespace, start_worker, store):
    settings = namespace.settings
    orders = generate_orders(customers=60, days=200, seed=11, end=END)
    assert any(o["status"] == "refunded" for o in orders)
    records = [(o["customer_id"].encode(), j(o)) for o in orders]
    # a producer retry: same event_id again, must count once
    records += [(o["customer_id"].encode(), j(o)) for o in orders[:25]]
    # valid but published without a key: re-keyed, then scored
    extra = {**orders[0], "event_id": "unkeyed-1", "order_id": "OX", "amount": 12.34}
    records.append((None, j(extra)))
    bad_start = len(records)
    records += [(b"C000001", payload) for payload, _ in BAD]

    worker = start_worker(PULSE_STORE=store)
    produce(namespace.bootstrap, settings.topic_orders, records)

    expected = batch_order_profiles(orders + [extra])
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    converged = wait_until(lambda: not profile_diffs(settings, expected))
    diffs = profile_diffs(settings, expected)
    assert converged, f"{len(diffs)} profiles differ, e.g. {diffs[:2]}\n{worker.log_tail()}"
    for cid in expected:
        profile = CustomerProfile.from_redis(client.hgetall(profile_key(settings.redis_key_prefix, cid)))
        assert profile.currency == "USD"
        if profile.last_purchase_at is not None:
            recency = (profile.as_of - profile.last_purchase_at).total_seconds() / 86400
            assert profile.recency_days == pytest.approx(recency, abs=1e-4)

    letters = consume(namespace.bootstrap, settings.topic_dead_letters, expected=len(BAD))
    assert len(letters) == len(BAD)
    by_offset = sorted((orjson.loads(m.value) for m in letters), key=lambda r: r["offset"])
    assert [r["reason"] for r in by_offset] == [reason for _, reason in BAD]
    for record, (payload, _) in zip(by_offset, BAD, strict=False):
        assert record["source_topic"] == settings.topic_orders and record["detail"]
        assert record["payload_bytes"] == len(payload)
        assert record["payload_truncated"] == (len(payload) > settings.dead_letter_payload_bytes)
    assert by_offset[0]["payload"] == "{not json" and by_offset[1]["payload_encoding"] == "base64"
    assert bad_start == len(records) - len(BAD)

    assert worker.alive(), worker.log_tail()
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert sum(v for (name, _), v in samples.items() if name == "pulse_dead_letters_total") == len(BAD)
    assert samples[("pulse_events_total", (("kind", "order"), ("outcome", "scored")))] == len(orders) + 1
    assert samples[("pulse_events_total", (("kind", "order"), ("outcome", "duplicate")))] == 25
    assert samples[("pulse_events_total", (("kind", "order"), ("outcome", "rerouted")))] == 1
