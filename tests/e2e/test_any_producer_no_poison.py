"""Any producer works and no record stops a partition: a real worker, broker and Redis.

* Orders produced with confluent-kafka (librdkafka) **default** settings, whose partitioner (CRC32,
  ``consistent_random``) puts many customer ids in another partition than murmur2 does, for known and new
  customers: every profile right, one state per customer (in its murmur2 changelog partition), the worker
  alive, the misplaced records counted.
* A record whose processing raises (the test-only fault injection ``PULSE_TEST_FAIL_EVENT_IDS``: no real
  input is known to raise once the schemas accept it) is dead-lettered as ``processing_error`` with the
  exception, the worker stays up, and the next events of its partition are scored.
"""

from __future__ import annotations

import urllib.request
import zlib
from datetime import UTC, datetime

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pulse.simulate import generate_orders
from streams.partitioning import murmur2_partition, origin_of
from testing.reference import batch_order_profiles
from testing.stack import consume, produce, profile_diffs, wait_until
from testing.traffic import produce_librdkafka_defaults

pytestmark = pytest.mark.e2e

END = datetime(2026, 6, 30, tzinfo=UTC)


def metric_samples(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def produce_with_librdkafka_defaults(bootstrap: str, topic: str, orders: list[dict]) -> list[int]:
    """Produce with confluent-kafka's default configuration (partitioner consistent_random = CRC32 of the key);
    returns the partition each record landed in."""
    pytest.importorskip("confluent_kafka")
    records = [(topic, o["customer_id"].encode(), orjson.dumps(o)) for o in orders]
    return [partition for _, partition in produce_librdkafka_defaults(bootstrap, records)]


def test_librdkafka_default_partitioner_for_known_and_new_customers(namespace, start_worker):
    settings = namespace.settings
    n = settings.partitions
    orders = generate_orders(customers=80, days=200, seed=5, end=END)
    customers = sorted({o["customer_id"] for o in orders})
    misplaced = [c for c in customers if zlib.crc32(c.encode()) % n != murmur2_partition(c.encode(), n)]
    known, new = misplaced[:10], misplaced[10:20]
    assert len(new) == 10
    first = [o for o in orders if o["customer_id"] not in new]  # new customers: none of their orders yet
    later = [o for o in orders if o["customer_id"] in new] + [
        {**o, "event_id": f"again-{o['event_id']}", "order_id": f"again-{o['order_id']}"}
        for o in orders
        if o["customer_id"] in known
    ]

    worker = start_worker()
    produce(namespace.bootstrap, settings.topic_orders, [(o["customer_id"].encode(), orjson.dumps(o)) for o in first])
    converged = wait_until(lambda: not profile_diffs(settings, batch_order_profiles(first)))
    assert converged, worker.log_tail()

    landed = produce_with_librdkafka_defaults(namespace.bootstrap, settings.topic_orders, later)
    crc = [zlib.crc32(o["customer_id"].encode()) % n for o in later]
    assert sorted(landed) == sorted(crc)  # librdkafka's CRC32 placed them, not murmur2
    wrong = sum(
        1 for o in later if zlib.crc32(o["customer_id"].encode()) % n != murmur2_partition(o["customer_id"].encode(), n)
    )
    assert wrong == len(later)

    expected = batch_order_profiles(first + later)
    converged = wait_until(lambda: not profile_diffs(settings, expected))
    diffs = profile_diffs(settings, expected)
    assert converged, f"{len(diffs)} profiles differ, e.g. {diffs[:2]}\n{worker.log_tail()}"
    assert worker.alive(), worker.log_tail()

    # one state per customer, in its murmur2 partition of the changelog
    changelog = consume(
        namespace.bootstrap, f"{settings.app_id}-customer_states-changelog", expected=len(customers), quiet=3
    )
    partitions_of: dict[str, set[int]] = {}
    for m in changelog:
        if m.value is not None and m.key and m.key.decode(errors="replace") in customers:
            partitions_of.setdefault(m.key.decode(), set()).add(m.partition)
    assert set(partitions_of) == set(customers)
    split = {c: ps for c, ps in partitions_of.items() if ps != {murmur2_partition(c.encode(), n)}}
    assert not split, split

    # each re-published record carries where it was first read (pulse-origin), so a replay's copy is dropped
    records = consume(namespace.bootstrap, settings.topic_orders, expected=len(first) + 2 * len(later), quiet=3)
    read_first = {(m.partition, m.offset): m.value for m in records if origin_of(m.headers) is None}
    copies = [m for m in records if origin_of(m.headers) is not None]
    assert len(copies) >= len(later)
    for m in copies:
        assert read_first[origin_of(m.headers)] == m.value and m.partition == murmur2_partition(m.key, n)

    samples = metric_samples(worker.metrics_port)
    moved = sum(v for (name, _), v in samples.items() if name == "pulse_misplaced_events_total")
    assert moved == len(later)
    assert samples[("pulse_events_total", (("kind", "order"), ("outcome", "rerouted")))] == len(later)
    assert samples[("pulse_events_total", (("kind", "order"), ("outcome", "scored")))] == len(first) + len(later)
    log = worker.log.read_text(errors="replace")
    assert "murmur2 puts in another partition" in log and "Traceback" not in log


def test_retention_actions_from_librdkafka_or_keyed_by_alert_are_moved_to_their_customer(namespace, start_worker):
    """A CRM integration acting on alerts: retention actions produced with librdkafka's defaults (CRC32 places
    the customer in another partition than murmur2) and one keyed by its alert id instead of its customer. Each
    is re-published under its customer id into the customer's partition with where it was first read, the
    worker stays up, and the partitions go on scoring. Until session 18 such an action's copy had no origin and
    the checkpoint raised on every retry of its batch: a crash loop over one record."""
    settings = namespace.settings
    n = settings.partitions
    orders = generate_orders(customers=60, days=200, seed=9, end=END)
    customers = sorted({o["customer_id"] for o in orders})
    misplaced = [c for c in customers if zlib.crc32(c.encode()) % n != murmur2_partition(c.encode(), n)]
    crc_customer, keyed_customer = misplaced[0], customers[0]
    worker = start_worker()
    first = orders[: len(orders) // 2]
    produce(namespace.bootstrap, settings.topic_orders, [(o["customer_id"].encode(), orjson.dumps(o)) for o in first])
    assert wait_until(lambda: not profile_diffs(settings, batch_order_profiles(first))), worker.log_tail()

    def action(customer: str) -> dict:
        return {
            "event_id": f"act-{customer}",
            "customer_id": customer,
            "occurred_at": END.isoformat(),
            "alert_id": f"{customer}:churn:1",
            "action": "acknowledged",
        }

    actions = settings.topic_retention_actions
    [landed] = produce_with_librdkafka_defaults(namespace.bootstrap, actions, [action(crc_customer)])
    assert landed != murmur2_partition(crc_customer.encode(), n)
    produce(
        namespace.bootstrap, actions, [(f"{keyed_customer}:churn:1".encode(), orjson.dumps(action(keyed_customer)))]
    )

    rest = orders[len(orders) // 2 :]
    produce(namespace.bootstrap, settings.topic_orders, [(o["customer_id"].encode(), orjson.dumps(o)) for o in rest])
    expected = batch_order_profiles(orders)
    converged = wait_until(lambda: not profile_diffs(settings, expected))
    diffs = profile_diffs(settings, expected)
    assert converged, f"{len(diffs)} profiles differ, e.g. {diffs[:2]}\n{worker.log_tail()}"
    assert worker.alive(), worker.log_tail()

    records = consume(namespace.bootstrap, actions, expected=4, quiet=3)
    copies = {m.key: m for m in records if origin_of(m.headers) is not None}
    assert set(copies) == {crc_customer.encode(), keyed_customer.encode()}, records
    for key, m in copies.items():
        assert m.partition == murmur2_partition(key, n)
        first_read = [r for r in records if (r.partition, r.offset) == origin_of(m.headers)]
        assert [r.value for r in first_read] == [m.value]
    samples = metric_samples(worker.metrics_port)
    assert samples[("pulse_events_total", (("kind", "action"), ("outcome", "rerouted")))] == 2
    assert "Traceback" not in worker.log.read_text(errors="replace")


def test_a_record_that_raises_is_dead_lettered_and_its_partition_moves_on(namespace, start_worker):
    settings = namespace.settings
    n = settings.partitions
    orders = generate_orders(customers=40, days=200, seed=8, end=END)
    poison = orders[len(orders) // 2]
    victim = poison["customer_id"].encode()
    partition = murmur2_partition(victim, n)
    worker = start_worker(PULSE_TEST_FAIL_EVENT_IDS=orjson.dumps([poison["event_id"]]).decode())
    produce(namespace.bootstrap, settings.topic_orders, [(o["customer_id"].encode(), orjson.dumps(o)) for o in orders])

    [letter] = [orjson.loads(m.value) for m in consume(namespace.bootstrap, settings.topic_dead_letters, expected=1)]
    assert letter["reason"] == "processing_error"
    assert "InjectedFailure" in letter["detail"] and poison["event_id"] in letter["detail"]
    assert (letter["source_topic"], letter["partition"]) == (settings.topic_orders, partition)
    assert orjson.loads(letter["payload"]) == poison

    scored = [o for o in orders if o is not poison]
    converged = wait_until(lambda: not profile_diffs(settings, batch_order_profiles(scored)))
    assert converged, worker.log_tail()

    # the next events of the poison's partition (its own customer's and others') are scored
    same_partition = sorted(
        {o["customer_id"] for o in orders if murmur2_partition(o["customer_id"].encode(), n) == partition}
    )
    more = [
        {**poison, "event_id": f"next-{cid}", "order_id": f"next-{cid}", "customer_id": cid, "amount": 3.5}
        for cid in same_partition
    ]
    produce(namespace.bootstrap, settings.topic_orders, [(o["customer_id"].encode(), orjson.dumps(o)) for o in more])
    expected = batch_order_profiles(scored + more)
    converged = wait_until(lambda: not profile_diffs(settings, expected))
    diffs = profile_diffs(settings, expected)
    assert converged, f"{len(diffs)} profiles differ, e.g. {diffs[:2]}\n{worker.log_tail()}"
    assert worker.alive(), worker.log_tail()

    samples = metric_samples(worker.metrics_port)
    assert samples[("pulse_dead_letters_total", (("kind", "order"), ("reason", "processing_error")))] == 1
    tries = samples[("pulse_processing_errors_total", (("stage", "event"),))]
    assert settings.processing_retries + 1 <= tries <= settings.processing_retries + 2
    assert "dead-lettered as processing_error" in worker.log.read_text(errors="replace")


def test_a_history_produced_by_librdkafka_loses_no_event_to_the_lateness_bound(namespace, start_worker):
    """A history produced in time order with librdkafka's defaults: each misplaced record is in order in the log
    it landed in, and its copy lands at the end of the right partition's log, after that partition's whole
    history. Checked for lateness there (PULSE_MAX_LATENESS_DAYS=30 against a 200-day history), the copies
    older than the last 30 days were dead-lettered too_late; now decided in the log it was produced to."""
    settings = namespace.settings
    orders = generate_orders(customers=80, days=200, seed=6, end=END)
    worker = start_worker(PULSE_MAX_LATENESS_DAYS="30")
    produce_with_librdkafka_defaults(namespace.bootstrap, settings.topic_orders, orders)
    expected = batch_order_profiles(orders)
    converged = wait_until(lambda: not profile_diffs(settings, expected))
    dead = consume(namespace.bootstrap, settings.topic_dead_letters, 1, timeout=3)
    assert converged, ([orjson.loads(r.value)["detail"] for r in dead[:3]], worker.log_tail())
    assert dead == []
    samples = metric_samples(worker.metrics_port)
    assert sum(v for (name, _), v in samples.items() if name == "pulse_misplaced_events_total") > len(orders) // 4
    assert samples[("pulse_events_total", (("kind", "order"), ("outcome", "scored")))] == len(orders)
    assert worker.alive(), worker.log_tail()
