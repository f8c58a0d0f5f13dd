"""Input as other producers write it: compressed record batches and transactions (a real worker, broker and Redis).

* **Compression.** Java and librdkafka producers often set ``compression.type`` (gzip, snappy, lz4, zstd), and
  the broker keeps the producer's codec. Until session 23 the worker could read only gzip: the first snappy,
  lz4 or zstd batch raised ``UnsupportedCodecError`` in the consumer, the worker crashed, and crashed again on
  the same batch after every restart. Here one librdkafka producer per codec writes a share of the orders.
* **Transactions.** An upstream producer with a ``transactional.id`` (Kafka Streams or Flink exactly-once, an
  outbox relay) commits some transactions and aborts others. Until session 23 the worker read uncommitted:
  the aborted orders were scored as if they had happened. Each transaction leaves a marker, an offset without a
  record: every partition such a producer wrote ends with one, so its end offset stayed one past the last
  record read, and the partition held its clock while the input was quiet (no profile of its backlog written,
  no time-driven alert). And every marker was a gap the offset guard read back from the broker, one round
  trip each. Kafka only: Tansu fails InitProducerId (tests/e2e/test_broker_behaviour.py::test_transactions).
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from pulse.simulate import generate_orders
from testing.reference import batch_order_profiles
from testing.stack import metric_sum, profile_diffs, wait_until
from tests.conftest import on_broker

pytestmark = pytest.mark.e2e

END = datetime(2026, 6, 30, tzinfo=UTC)
CODECS = ("gzip", "snappy", "lz4", "zstd")
#: every this-many-th transaction of the upstream producer is aborted
ABORT_EVERY = 4
#: orders per upstream transaction
PER_TRANSACTION = 3


def librdkafka_producer(bootstrap: str, **config: object) -> object:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    # murmur2 like the Java client: this test is about the batches, not the partitioner (see
    # test_any_producer_no_poison.py for librdkafka's default one)
    return confluent_kafka.Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", **config})


def test_compressed_batches_of_every_codec_are_scored(namespace, start_worker):
    settings = namespace.settings
    orders = generate_orders(customers=60, days=200, seed=3, end=END)
    worker = start_worker()
    for i, codec in enumerate(CODECS):
        producer = librdkafka_producer(namespace.bootstrap, acks="all", **{"compression.type": codec, "linger.ms": 20})
        for o in orders[i :: len(CODECS)]:
            producer.produce(settings.topic_orders, key=o["customer_id"].encode(), value=orjson.dumps(o))
        assert producer.flush(30) == 0, codec

    expected = batch_order_profiles(orders)
    converged = wait_until(lambda: not profile_diffs(settings, expected))
    diffs = profile_diffs(settings, expected)
    assert converged, f"{len(diffs)} profiles differ, e.g. {diffs[:2]}\n{worker.log_tail()}"
    assert worker.alive(), worker.log_tail()
    assert metric_sum(worker.metrics_port, "pulse_events_total", {"outcome": "scored"}) == len(orders)
    assert "Traceback" not in worker.log.read_text(errors="replace")


def produce_transactions(producer: object, topic: str, orders: list[dict]) -> tuple[list[dict], int]:
    """``orders`` in transactions of ``PER_TRANSACTION``, each committed; after every ``ABORT_EVERY``-th, the
    same orders again with new ids and doubled amounts, flushed to the log and aborted. Returns the committed
    orders and the number of transactions."""
    committed: list[dict] = []
    transactions = 0
    for i in range(0, len(orders), PER_TRANSACTION):
        chunk = orders[i : i + PER_TRANSACTION]
        producer.begin_transaction()
        for o in chunk:
            producer.produce(topic, key=o["customer_id"].encode(), value=orjson.dumps(o))
        producer.commit_transaction(30)
        committed += chunk
        transactions += 1
        if transactions % ABORT_EVERY == 0:
            producer.begin_transaction()
            for o in chunk:
                bad = {**o, "event_id": f"aborted-{o['event_id']}", "order_id": f"aborted-{o['order_id']}"}
                bad["amount"] = round(2 * float(o["amount"]), 2)
                producer.produce(topic, key=o["customer_id"].encode(), value=orjson.dumps(bad))
            producer.flush(30)  # the aborted records are in the log, not just in the producer's queue
            producer.abort_transaction(30)
            transactions += 1
    return committed, transactions


def test_aborted_transactions_are_not_scored_and_markers_cost_no_round_trip_each(namespace, start_worker, devstack):
    """A backlog written in transactions, then more while the worker reads. Only committed orders count, the
    clocks are not held by the marker at each log's end, and the backlog's markers are explained in a few
    read-backs per partition (a fetch's worth each), not one per marker."""
    if not on_broker(devstack, "kafka"):
        pytest.skip("Tansu fails InitProducerId: no producer can write transactions to it")
    settings = namespace.settings
    orders = generate_orders(customers=60, days=200, seed=4, end=END)
    backlog, live = orders[: 2 * len(orders) // 3], orders[2 * len(orders) // 3 :]
    producer = librdkafka_producer(namespace.bootstrap, **{"transactional.id": f"upstream-{settings.app_id}"})
    producer.init_transactions(30)
    committed, transactions = produce_transactions(producer, settings.topic_orders, backlog)

    worker = start_worker()
    converged = wait_until(lambda: not profile_diffs(settings, batch_order_profiles(committed)))
    assert converged, worker.log_tail()
    port = worker.metrics_port
    read_back = metric_sum(port, "pulse_input_gaps_explained_total", {"how": "read_back"})
    read_ahead = metric_sum(port, "pulse_input_gaps_explained_total", {"how": "read_ahead"})
    assert read_back + read_ahead >= transactions  # a marker after each in at least one partition
    assert read_back <= 2 * settings.partitions, (read_back, read_ahead)

    more, _ = produce_transactions(producer, settings.topic_orders, live)
    committed += more
    expected = batch_order_profiles(committed)
    converged = wait_until(lambda: not profile_diffs(settings, expected))
    diffs = profile_diffs(settings, expected)
    assert converged, f"{len(diffs)} profiles differ, e.g. {diffs[:2]}\n{worker.log_tail()}"
    assert worker.alive(), worker.log_tail()
    assert metric_sum(port, "pulse_events_total", {"outcome": "scored"}) == len(committed)
    assert metric_sum(port, "pulse_input_offset_gaps_total") == 0
    log = worker.log.read_text(errors="replace")
    assert "Traceback" not in log and "input offset gap" not in log
    assert "clock of partition" not in log, "a partition's clock waited for a transaction marker"

    # a transaction left open holds what comes after it in its partitions until it ends (read_committed)
    customer = committed[0]["customer_id"]
    late = [
        {**o, "event_id": f"{tag}-{o['event_id']}", "order_id": f"{tag}-{o['order_id']}"}
        for tag, o in (("open", committed[0]), ("after", committed[1]))
    ]
    late[1]["customer_id"] = customer
    producer.begin_transaction()
    producer.produce(settings.topic_orders, key=customer.encode(), value=orjson.dumps(late[0]))
    producer.flush(30)
    other = librdkafka_producer(namespace.bootstrap, acks="all")
    other.produce(settings.topic_orders, key=customer.encode(), value=orjson.dumps(late[1]))
    assert other.flush(30) == 0
    scored = metric_sum(port, "pulse_events_total", {"outcome": "scored"})
    assert not wait_until(lambda: metric_sum(port, "pulse_events_total", {"outcome": "scored"}) > scored, timeout=3)
    producer.commit_transaction(30)
    expected = batch_order_profiles(committed + late)
    converged = wait_until(lambda: not profile_diffs(settings, expected))
    assert converged, worker.log_tail()
    assert metric_sum(port, "pulse_events_total", {"outcome": "scored"}) == len(committed) + 2
