"""A backlog written by a transactional upstream producer, against the same backlog written without transactions.

An upstream producer with a ``transactional.id`` (Kafka Streams or Flink exactly-once, an outbox relay) ends
every transaction with a marker: an offset without a record in each partition it wrote. The worker's offset
guard sees each marker as a gap in the batch's offsets and must find it empty before it applies the batch. This
starts one Apache Kafka broker and a Redis, and per run a fresh set of topics: ``--orders`` generated orders,
written first (librdkafka, murmur2), either plainly or in transactions of ``--per-transaction`` (all
committed), then one worker scores them. It prints the worker's scoring time (first to last scored event, from
its ``pulse_events_total``), events per second, and how the gaps were explained
(``pulse_input_gaps_explained_total``: round trips ``read_back`` against ``read_ahead``). The two kinds of run
alternate, ``--rounds`` times each (the box is noisy).

    .venv/bin/python -m benchmarks.transactional_input [--orders 20000] [--per-transaction 5] [--rounds 2]

Run it from a checkout (a ``git archive`` copy with the venv linked) to measure that checkout's worker.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from pulse.devstack import DevStack
from pulse.simulate import generate_orders
from testing.stack import WorkerPool, make_namespace

#: Bounds of every wait here (seconds).
SCORING_SECONDS = 600
POLL_SECONDS = 0.1
#: the history's customers per 1,000 orders (about 25 orders each over the generated days)
CUSTOMERS_PER_1000_ORDERS = 40
SIZING_TRIES = 5


def metric(port: int, name: str) -> dict[str, float]:
    """label text -> value of ``name``'s samples (empty when the worker does not answer or has none)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    return {labels: float(value) for labels, value in re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)}


def produce(bootstrap: str, topic: str, orders: list[dict[str, Any]], per_transaction: int, tag: str) -> None:
    import confluent_kafka

    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5}
    if per_transaction:
        config["transactional.id"] = f"bench-{tag}"
    else:
        config["acks"] = "all"
    producer = confluent_kafka.Producer(config)
    if per_transaction:
        producer.init_transactions(30)
        for i in range(0, len(orders), per_transaction):
            producer.begin_transaction()
            for o in orders[i : i + per_transaction]:
                producer.produce(topic, key=o["customer_id"].encode(), value=orjson.dumps(o))
            producer.commit_transaction(30)
    else:
        for o in orders:
            producer.produce(topic, key=o["customer_id"].encode(), value=orjson.dumps(o))
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("the producer did not deliver everything")


def one_run(stack: DevStack, orders: list[dict[str, Any]], per_transaction: int) -> dict[str, float]:
    namespace = make_namespace(stack.env(), Path(tempfile.mkdtemp(prefix="pulse-txn-")))
    produce(namespace.bootstrap, namespace.settings.topic_orders, orders, per_transaction, namespace.settings.app_id)
    pool = WorkerPool(namespace)
    worker = pool.start()
    try:
        first = None
        deadline = time.monotonic() + SCORING_SECONDS
        while time.monotonic() < deadline:
            scored = sum(v for k, v in metric(worker.metrics_port, "pulse_events_total").items() if "scored" in k)
            now = time.monotonic()
            if scored and first is None:
                first = now
            if scored >= len(orders):
                break
            if not worker.alive():
                raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
            time.sleep(POLL_SECONDS)
        else:
            raise RuntimeError(f"not all scored in {SCORING_SECONDS} s:\n{worker.log_tail()}")
        seconds = now - (first or now)
        explained = metric(worker.metrics_port, "pulse_input_gaps_explained_total")
        skipped = sum(metric(worker.metrics_port, "pulse_input_offsets_skipped_total").values())
        return {
            "seconds": seconds,
            "events_per_second": len(orders) / seconds if seconds else float("nan"),
            "read_back": sum(v for k, v in explained.items() if "read_back" in k),
            "read_ahead": sum(v for k, v in explained.items() if "read_ahead" in k),
            "offsets_skipped": skipped,
        }
    finally:
        pool.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--per-transaction", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    customers = max(10, args.orders * CUSTOMERS_PER_1000_ORDERS // 1000)
    orders = generate_orders(customers=customers, days=200, seed=7)
    for _ in range(SIZING_TRIES):  # more customers until the history holds enough orders
        if len(orders) >= args.orders:
            break
        customers = int(customers * args.orders / max(1, len(orders)) * 1.1) + 1
        orders = generate_orders(customers=customers, days=200, seed=7)
    orders = orders[: args.orders]
    stack = DevStack.start(Path(tempfile.mkdtemp(prefix="pulse-txn-stack-")), broker="kafka")
    try:
        print(f"{len(orders)} orders, transactions of {args.per_transaction}; one worker on Kafka")
        for round_ in range(args.rounds):
            for per in (0, args.per_transaction):
                result = one_run(stack, orders, per)
                kind = "plain" if not per else f"transactions of {per}"
                print(
                    f"round {round_ + 1}, {kind}: {result['seconds']:.1f} s, {result['events_per_second']:,.0f} "
                    f"events/s; gaps explained by read-back {result['read_back']:.0f}, read-ahead "
                    f"{result['read_ahead']:.0f}; offsets skipped {result['offsets_skipped']:.0f}",
                    flush=True,
                )
    finally:
        stack.close()


if __name__ == "__main__":
    main()
