"""Consumer settings faust-streaming does not expose."""

from __future__ import annotations

from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

_original_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer
_fetch_max_wait_ms: int | None = None
_fetch_min_bytes: int | None = None
_isolation_level: str | None = None


def _create_worker_consumer(self: AIOKafkaConsumerThread, transport: Any) -> Any:
    consumer = _original_create_worker_consumer(self, transport)
    # read by AIOKafkaConsumer.start() when it builds its fetcher
    if _fetch_max_wait_ms is not None:
        consumer._fetch_max_wait_ms = _fetch_max_wait_ms
    if _fetch_min_bytes is not None:
        consumer._fetch_min_bytes = _fetch_min_bytes
    if _isolation_level is not None:
        consumer._isolation_level = _isolation_level
    return consumer


def set_fetch_max_wait_ms(ms: int) -> None:
    """The longest a fetch may wait on the broker for records (Faust hard-codes 1,500 ms).

    A broker answers a fetch as soon as it has ``fetch_min_bytes`` (1 byte): on
    Kafka the wait only bounds idle polls. Tansu holds every fetch for the whole
    wait even when records arrive meanwhile, which delays each record by up to
    that much (measured: p50 388 ms, max 752 ms at 1,500 ms; p50 3 ms at 100 ms).
    """
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = ms
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


def set_fetch_min_bytes(n: int) -> None:
    """The bytes a fetch waits for on the broker, at most ``fetch_max_wait_ms`` (Faust passes none: 1 byte).

    Why: with 1 byte, Kafka answers a fetch as soon as anything arrived, so a live input at 3,000 events/s
    was fetched ~290 times a second with ~9 records each, and each fetch costs the consumer ~0.65 ms of CPU
    (a round trip through the consumer thread's loop, the response's parsing, the hand-over to the main
    thread) besides the broker's own work on the same cores. Waiting for more bytes, bounded by the wait,
    makes fewer, larger fetches (``benchmarks/fetch_pace.py``; docs/benchmarks.md, session 12, pace18).
    """
    global _fetch_min_bytes
    _fetch_min_bytes = n
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


def set_isolation_level(level: str) -> None:
    """Which records of transactional producers the group consumer reads (Faust reads uncommitted ones unless
    the app itself writes in transactions, which this one does not).

    Why: an upstream producer with transactions (Kafka Streams or Flink exactly-once) leaves the records of an
    aborted transaction in the log; read uncommitted, they were scored as if they had happened (an aborted order
    counted in revenue). ``read_committed`` reads up to the last stable offset and drops aborted records, as
    every exactly-once consumer does.
    """
    global _isolation_level
    _isolation_level = level
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
