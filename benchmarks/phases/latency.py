"""Latency phase of ``pulse bench``: live traffic at half the full rate with tracer events, timed from their
production to their profile in Redis and their alert on the retention topic."""

from __future__ import annotations

import asyncio
import collections
import math
import time
from typing import Any

import orjson

from benchmarks.phases.common import (
    DRAIN_SECONDS,
    LATENCY_WINDOW_SECONDS,
    TRACER_PREFIX,
    TRACERS_PER_SECOND,
    Bench,
    Proc,
    percentile,
)
from benchmarks.phases.throughput import finish_py_spy, start_py_spy
from testing.traffic import iso_now, live_event, produce_with_room

#: The load generator's tick: the events due since the last one go to the producer together. 5 ms, the default
#: ``linger.ms`` of the Java client (Kafka 4) and of librdkafka, i.e. about how a field producer batches. Until
#: session 19 it was 2 ms, with one send per record. Per produce request the broker and this process pay CPU
#: whatever the request carries, on the two cores the worker needs: ``benchmarks/load_tick.py`` (docs/benchmarks.md,
#: session 19).
LOAD_TICK_SECONDS = 0.005


def latency(
    bench: Bench,
    env: dict[str, str],
    rate: float,
    seconds: float,
    spied: Proc | None = None,
    tag: str = "",
    first: int = 0,
) -> dict[str, Any]:
    """``spied``: the worker to profile with py-spy while the live traffic is produced (``--py-spy``): where a live
    batch's time goes (due checks, clock moves, the checkpoint's I/O) differs from the backlog's.

    ``tag`` and ``first`` let one worker take several runs (``--live-rates``): the tracers of a run are fresh
    customers of its own (``tag``), and its live events' ids start at ``first`` (ids seen before would be
    de-duplicated, which costs the worker less than an event)."""
    spy = start_py_spy(bench, spied, f"latency{tag}") if spied is not None else None
    try:
        out = asyncio.run(_latency(bench, env, rate, seconds, tag, first))
    finally:
        profile = finish_py_spy(spy) if spy is not None else None
    if profile is not None:
        out["profile"] = profile
    return out


async def _latency(
    bench: Bench, env: dict[str, str], rate: float, seconds: float, run_tag: str = "", first: int = 0
) -> dict[str, Any]:
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from pulse.simulate import generate_events
    from streams.security import kafka_client_kwargs

    settings = bench.settings(env)
    kafka = kafka_client_kwargs(settings)
    topics = settings.input_topics()
    customers = bench.args.customers or max(10, math.ceil(bench.args.events / 10))
    live = generate_events(customers, 30, seed=bench.args.seed + 1000)
    if not live:
        raise RuntimeError("no live traffic generated")
    tracer_every = max(2, int(rate // TRACERS_PER_SECOND))
    tag = bench.args.run_tag + run_tag
    sent_at: dict[str, float] = {}  # tracer customer -> production time (monotonic)
    alert_tracers: set[str] = set()
    to_redis: dict[str, float] = {}
    to_alert: dict[str, float] = {}

    producer = load_producer(bench.args.load_producer, kafka)
    consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False, group_id=None, fetch_max_wait_ms=10)
    client = aioredis.from_url(settings.redis_url)
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()
    try:
        tps = [TopicPartition(settings.topic_retention_alerts, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)

        async def read_alerts() -> None:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=20)
                now = time.monotonic()
                for records in batch.values():
                    for record in records:
                        # an alert's key is its customer id (the worker publishes it under the customer's key):
                        # only a tracer's alert is parsed, to check that it is one
                        cid = record.key.decode() if record.key else None
                        if cid in alert_tracers and cid not in to_alert:
                            if orjson.loads(record.value).get("customer_id") == cid:
                                to_alert[cid] = now - sent_at[cid]

        # Redis tells when a tracer's profile is written (keyspace notifications for hash commands):
        # polling hundreds of keys every few ms loaded Redis and the two cores the worker runs on
        key_prefix = f"{settings.redis_key_prefix}profile:"
        channel_prefix = f"__keyspace@{client.connection_pool.connection_kwargs.get('db', 0)}__:{key_prefix}"
        await client.config_set("notify-keyspace-events", "Kh")
        pubsub = client.pubsub()
        await pubsub.psubscribe(f"{channel_prefix}{TRACER_PREFIX.decode()}{tag}*")

        async def poll_redis() -> None:
            while not stop.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
                if message is None:
                    continue
                now = time.monotonic()
                cid = message["channel"].decode()[len(channel_prefix) :]
                if cid in sent_at and cid not in to_redis:
                    to_redis[cid] = now - sent_at[cid]

        readers = [asyncio.ensure_future(read_alerts()), asyncio.ensure_future(poll_redis())]
        sent = 0
        tracers = 0
        started = time.monotonic()
        end = started + seconds
        while time.monotonic() < end:
            due = int((time.monotonic() - started) * rate) - sent
            if due > 0:
                # the tick's events: one clock reading stamps them all, and they go to the producer together
                # (the load generator shares the worker's two cores; docs/benchmarks.md, session 19). A tracer's
                # latency counts from before its tick is built: it includes that, never less than the worker's.
                tick_at, occurred_at = time.monotonic(), iso_now()
                records: list[tuple[str, bytes, bytes]] = []
                for _ in range(due):
                    if sent % tracer_every == 0:
                        tracers += 1
                        cid = f"{TRACER_PREFIX.decode()}{tag}{tracers:07d}"
                        kind, event = tracer_event(cid, tracers, tracers % 2 == 0, occurred_at)
                        if kind == "survey":
                            alert_tracers.add(cid)
                        sent_at[cid] = tick_at
                    else:
                        kind, event = live_event(live[sent % len(live)], first + sent, occurred_at)
                    records.append((topics[kind], event["customer_id"].encode(), orjson.dumps(event)))
                    sent += 1
                await producer.send_many(records)
            producer.poll()
            await asyncio.sleep(LOAD_TICK_SECONDS)
        produced_seconds = time.monotonic() - started
        await producer.flush()
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline and (len(to_redis) < len(sent_at) or len(to_alert) < len(alert_tracers)):
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*readers, return_exceptions=True)
        await pubsub.aclose()
    finally:
        await producer.stop()
        await consumer.stop()
        await client.aclose()

    def ms(values: list[float], q: float) -> float | None:
        p = percentile(values, q)
        return None if p is None else round(p * 1000, 1)

    redis_lat = list(to_redis.values())
    alert_lat = list(to_alert.values())
    # p99 by window of production time: a tail only at the start is the warm-up, throughout is steady state
    windows: dict[int, list[float]] = collections.defaultdict(list)
    for cid, lat in to_alert.items():
        windows[int((sent_at[cid] - started) // LATENCY_WINDOW_SECONDS)].append(lat)
    # steady state: the tracers produced after the first window (the warm-up: the clock jumps from the backlog's
    # history to now and the due-time index pops what fell due meanwhile), all of them together
    steady = [lat for cid, lat in to_alert.items() if sent_at[cid] - started >= LATENCY_WINDOW_SECONDS]
    return {
        "alert_p99_ms_by_window": [ms(windows[w], 0.99) for w in sorted(windows)],
        "rate_target": round(rate, 1),
        "rate_achieved": round(sent / produced_seconds, 1),
        "seconds": round(produced_seconds, 2),
        "events": sent,
        "load_producer": producer.name,
        "load_producer_errors": producer.errors,
        "tracers": len(sent_at),
        "redis_seen": len(redis_lat),
        "redis_p50_ms": ms(redis_lat, 0.50),
        "redis_p99_ms": ms(redis_lat, 0.99),
        "redis_max_ms": ms(redis_lat, 1.0),
        "alert_tracers": len(alert_tracers),
        "alerts_seen": len(alert_lat),
        "alert_p50_ms": ms(alert_lat, 0.50),
        "alert_p99_ms": ms(alert_lat, 0.99),
        "alert_max_ms": ms(alert_lat, 1.0),
        "steady_from_seconds": LATENCY_WINDOW_SECONDS,
        "alerts_steady": len(steady),
        "alert_p50_steady_ms": ms(steady, 0.50),
        "alert_p99_steady_ms": ms(steady, 0.99),
    }


class AioLoadProducer:
    """The live traffic through aiokafka (the worker's own client), each tick's records as one record batch per
    topic-partition (``streams.publish.BatchPublisher``, the worker's own path; murmur2 as aiokafka's default
    partitioner). Until session 19 one ``send`` per record: with the per-event JSON, 60-80 µs of this process's
    CPU per event, on the two cores the worker, the broker and Redis share. Failed deliveries are counted (a lost
    tracer also shows as unseen)."""

    name = "aiokafka"

    def __init__(self, kafka: dict[str, Any]) -> None:
        from aiokafka import AIOKafkaProducer

        from streams.publish import BatchPublisher

        self.producer = AIOKafkaProducer(**kafka, acks="all", linger_ms=1)
        self.publisher = BatchPublisher(lambda: self.producer)
        self.errors = 0
        #: the acknowledgements not in yet (awaited by ``flush``)
        self.unacked: set[asyncio.Future] = set()

    async def start(self) -> None:
        await self.producer.start()

    async def send_many(self, records: list[tuple[str, bytes, bytes]]) -> None:
        from streams.publish import OutputRecord

        for sent in await self.publisher.publish(OutputRecord(t, k, v) for t, k, v in records):
            future = asyncio.ensure_future(sent)
            self.unacked.add(future)
            future.add_done_callback(self._acked)

    def _acked(self, future: asyncio.Future) -> None:
        self.unacked.discard(future)
        if future.cancelled() or future.exception() is not None:
            self.errors += 1

    def poll(self) -> None:
        pass

    async def flush(self) -> None:
        await self.producer.flush()
        await asyncio.gather(*list(self.unacked), return_exceptions=True)

    async def stop(self) -> None:
        await self.producer.stop()


class RdLoadProducer:
    """The live traffic through librdkafka (confluent-kafka, a dev dependency): the load generator is not the system
    under test, but on this box it shares the worker's two cores, and aiokafka's per-record Python cost took 0.3-0.4
    of a core at 5,000-6,500 events/s. librdkafka's own cost is a third lower, but in session 13's pairs the
    broker's rose by more (docs/benchmarks.md), so it is not the default. ``murmur2_random`` partitions a key as
    the Java client and aiokafka do, so no record lands on a partition the worker would re-route. Delivery failures
    are counted (a lost tracer also shows as unseen)."""

    name = "librdkafka"

    def __init__(self, kafka: dict[str, Any]) -> None:
        import confluent_kafka

        self.errors = 0
        self.producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": kafka["bootstrap_servers"],
                "acks": "all",
                "linger.ms": 1,
                "partitioner": "murmur2_random",
                "delivery.report.only.error": True,
                "on_delivery": self._delivered,
            }
        )

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors += 1

    async def start(self) -> None:
        pass

    async def send_many(self, records: list[tuple[str, bytes, bytes]]) -> None:
        for topic, key, value in records:
            produce_with_room(self.producer, topic, key, value)

    def poll(self) -> None:
        self.producer.poll(0)

    async def flush(self) -> None:
        left = await asyncio.to_thread(self.producer.flush, 30)
        if left:
            raise RuntimeError(f"{left} records of the live traffic not delivered within 30 s")

    async def stop(self) -> None:
        await self.flush()


def load_producer(choice: str, kafka: dict[str, Any]) -> AioLoadProducer | RdLoadProducer:
    """``--load-producer``: librdkafka only where the broker needs no security settings, else aiokafka."""
    plain = {k: v for k, v in kafka.items() if (k, v) != ("security_protocol", "PLAINTEXT")}
    if choice == "librdkafka" and set(plain) == {"bootstrap_servers"}:
        return RdLoadProducer(kafka)
    return AioLoadProducer(kafka)


def tracer_event(cid: str, n: int, alert: bool, occurred_at: str | None = None) -> tuple[str, dict]:
    """An event for a fresh customer: an order, or a survey (NPS 0, CSAT 1: detractor + dissatisfied =
    medium risk) that raises a retention alert at once; occurring now, or at ``occurred_at``."""
    base = {"event_id": f"trc-{cid}", "customer_id": cid, "occurred_at": occurred_at or iso_now()}
    if alert:
        return "survey", {**base, "nps": 0, "csat": 1}
    return "order", {
        **base,
        "order_id": f"TO{n:08d}",
        "amount": 25.0,
        "currency": "USD",
        "status": "completed",
    }
