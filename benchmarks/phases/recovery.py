"""Recovery phase of ``pulse bench``: N customers' states written to the changelog, a fresh RocksDB worker
timed until it scored, then scoring a backlog against a population of N."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from benchmarks.phases.common import (
    PHASE_SECONDS,
    POLL_SECONDS,
    Bench,
    Proc,
    counted_seconds,
    metric_sum,
    peak_rss_bytes,
    wait_count,
    worker_deltas,
)
from testing.templates import Templates, template_states
from testing.traffic import iso_now, live_event


def recovery(bench: Bench, n: int) -> dict[str, Any]:
    from pulse.simulate import send

    tag = f"rec{bench.args.run_tag}"
    data_dir = bench.log_dir / tag / "rocksdb"
    env = bench.env(tag, PULSE_STORE="rocksdb://", PULSE_DATA_DIR=str(data_dir))
    settings = bench.settings(env)
    templates = template_states(bench.args.template_customers, bench.args.seed)
    started = time.perf_counter()
    written = asyncio.run(write_changelog(settings, templates, n))
    preload_seconds = time.perf_counter() - started
    # one event so that the first checkpoint (and the population rebuild) runs once recovery is done
    probe = {
        "event_id": f"probe-{tag}",
        "customer_id": f"PROBE{tag}",
        "occurred_at": iso_now(),
        "order_id": "PROBE1",
        "amount": 10.0,
        "currency": "USD",
        "status": "completed",
    }
    from streams.security import kafka_client_kwargs

    asyncio.run(send(kafka_client_kwargs(settings), settings.input_topics(), [("order", probe)]))
    proc = bench.worker(f"worker-{tag}", env)
    t0 = time.monotonic()
    ready = None
    try:
        deadline = t0 + PHASE_SECONDS
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"recovery worker exited:\n{proc.tail()}")
            if ready is None and "Ready" in proc.log.read_text(errors="replace"):
                ready = time.monotonic() - t0
            # the one metric polled (a full scrape renders every histogram under the recovering worker's GIL)
            if metric_sum(proc.metrics(("pulse_events_total",)), "pulse_events_total") >= 1:
                break
            time.sleep(POLL_SECONDS)
        else:
            raise RuntimeError(f"the recovering worker scored nothing in {PHASE_SECONDS}s")
        first_event = time.monotonic() - t0
        text = proc.metrics()
        table_customers = int(metric_sum(text, "pulse_table_customers"))
        rebuild = metric_sum(text, "pulse_population_rebuild_seconds_sum")
        scoring = score_at_scale(bench, proc, settings, n) if bench.args.recovery_events else {}
        rss = peak_rss_bytes(proc.popen.pid)
    finally:
        proc.stop()
    return {
        **scoring,
        "customers": written,
        "store": "rocksdb://",
        "changelog_write_seconds": round(preload_seconds, 2),
        "ready_seconds": None if ready is None else round(ready, 2),
        "first_event_seconds": round(first_event, 2),
        "population_rebuild_seconds": round(rebuild, 2),
        "table_customers": table_customers,
        "peak_rss_mib": None if rss is None else round(rss / 2**20, 1),
    }


def score_at_scale(bench: Bench, proc: Proc, settings: Any, n: int) -> dict[str, Any]:
    """The recovered worker then scores a backlog of the mix for random customers among its ``n``
    (RocksDB reads, a population of ``n``): events/s over the polls from just before the backlog's first
    scored event to its last."""
    from pulse.simulate import generate_events, send
    from streams.security import kafka_client_kwargs

    k = bench.args.recovery_events
    rng = random.Random(bench.args.seed + 3000)
    live = generate_events(200, 30, seed=bench.args.seed + 3000)
    events = []
    for i in range(k):
        kind, event = live_event(live[i % len(live)], i)
        events.append((kind, {**event, "customer_id": f"R{rng.randrange(n):08d}"}))
    # the checkpoints of the backlog only (the first one also rebuilt the population)
    before_text = proc.metrics()
    asyncio.run(send(kafka_client_kwargs(settings), settings.input_topics(), events))
    samples: list[tuple[float, float]] = []
    text = wait_count([proc], "pulse_events_total", "", 1 + k, samples=samples)
    # the backlog was all produced before the first poll; the probe event was counted before it
    seconds = counted_seconds(samples, 1)
    worker = worker_deltas(before_text, text)
    return {
        "scored_events": k,
        "scored_events_per_second": round((samples[-1][1] - 1) / seconds, 1),
        "scored_checkpoint_ms_mean": worker["checkpoint_ms_mean"],
        "swept_customers": worker["swept_customers"],
    }


async def write_changelog(settings: Any, templates: Templates, n: int) -> int:
    """``n`` customers' states (clones of the templates) straight to the table's changelog, then end markers."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError
    from aiokafka.partitioner import murmur2

    from streams.admin import ensure_topics
    from streams.security import kafka_client_kwargs
    from streams.tables import END_MARKER_KEY

    await ensure_topics(settings)
    kafka = kafka_client_kwargs(settings)
    topic = f"{settings.app_id}-customer_states-changelog"
    admin = AIOKafkaAdminClient(**kafka, request_timeout_ms=15000)
    await admin.start()
    try:
        topic_config = {"cleanup.policy": "compact"}
        await admin.create_topics(
            [NewTopic(topic, settings.partitions, settings.replication_factor, topic_configs=topic_config)]
        )
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()
    variants = templates.variant(settings.partitions)
    producer = AIOKafkaProducer(**kafka, acks="all", linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = []
        for j in range(n):
            key = f"R{j:08d}".encode()
            # the partition the worker's producer gives the key (Kafka's murmur2 partitioner)
            p = (murmur2(key) & 0x7FFFFFFF) % settings.partitions
            futures.append(await producer.send(topic, variants[j % len(variants)][p][0], key=key, partition=p))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
        await asyncio.gather(
            *[await producer.send(topic, None, key=END_MARKER_KEY, partition=p) for p in range(settings.partitions)]
        )
    finally:
        await producer.stop()
    return n
