"""Live traffic made of a generated history (``pulse.simulate.generate_events``): what the benchmarks (``pulse
bench``'s latency, cost and recovery phases, benchmarks/processor_cost.py) send as "now"."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any


def iso_now() -> str:
    """The wall clock as an event's ``occurred_at``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def live_event(template: tuple[str, dict], n: int, occurred_at: str | None = None) -> tuple[str, dict]:
    """A generated event of the mix as live traffic: new ids, occurring now (or at ``occurred_at``: a load
    generator that stamps a whole tick's events with one reading of the clock)."""
    kind, event = template
    event = {**event, "event_id": f"live-{n}", "occurred_at": occurred_at or iso_now()}
    for id_field in ("order_id", "complaint_id", "ticket_id"):
        if id_field in event:
            event[id_field] = f"L{event[id_field]}"
    return kind, event


#: how long a librdkafka producer's full local queue (~100,000 records) gets to drain before a produce gives up
LIBRDKAFKA_QUEUE_WAIT_SECONDS = 10.0
#: the steps of that wait, each serving the delivery reports
LIBRDKAFKA_QUEUE_POLL_SECONDS = 0.01


def produce_with_room(producer: Any, topic: str, key: bytes, value: bytes, **options: Any) -> None:
    """``producer.produce`` (a confluent-kafka ``Producer``), waiting while its local queue is full: it serves the
    delivery reports (``poll``) and tries again, for at most ``LIBRDKAFKA_QUEUE_WAIT_SECONDS``, then raises."""
    for _ in range(int(LIBRDKAFKA_QUEUE_WAIT_SECONDS / LIBRDKAFKA_QUEUE_POLL_SECONDS)):
        try:
            producer.produce(topic, key=key, value=value, **options)
            return
        except BufferError:
            producer.poll(LIBRDKAFKA_QUEUE_POLL_SECONDS)
    raise RuntimeError(f"librdkafka producer: its queue stayed full for {LIBRDKAFKA_QUEUE_WAIT_SECONDS:g} s")


def produce_librdkafka_defaults(
    bootstrap: str, records: Iterable[tuple[str, bytes, bytes]], flush_seconds: float = 60.0
) -> list[tuple[bytes, int]]:
    """Produce (topic, key, value) records with confluent-kafka's (librdkafka's) default configuration, whose
    partitioner (``consistent_random``: CRC32 of the key) puts most keys in another partition than murmur2 does:
    what a team gets from a producer nobody configured. Returns (key, partition) of each record as delivered;
    raises if any delivery failed. Used by the e2e tests of other producers and by ``pulse bench
    --preload-producer librdkafka-defaults``."""
    import confluent_kafka

    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    landed: list[tuple[bytes, int]] = []
    failed: list[object] = []

    def delivered(err: object, msg: Any) -> None:
        if err is not None:
            failed.append(err)
        else:
            landed.append((msg.key(), msg.partition()))

    for topic, key, value in records:
        produce_with_room(producer, topic, key, value, on_delivery=delivered)
        producer.poll(0)
    if producer.flush(flush_seconds) or failed:
        raise RuntimeError(f"librdkafka producer: {len(failed)} deliveries failed, e.g. {failed[:1]}")
    return landed
