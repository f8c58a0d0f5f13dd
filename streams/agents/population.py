"""Keep every worker's view of the whole population current, and drive the sweep.

* Every ``population_publish_seconds`` each worker publishes the counts of the
  partitions it owns (only those that changed) to the compacted population
  topic, keyed by partition.
* Every worker reads that topic from the start with a plain consumer (no
  group): the latest snapshot of each partition it does not own completes its
  view. Partitions add up, so scores are against the whole population, at most
  one publish interval stale; the sweep then corrects them.
* Every ``sweep_tick_seconds`` each worker sends one tick to each partition
  it owns on the ticks topic, which the scoring agent reads with the events:
  the sweep runs inside a checkpoint, with the same single writer per
  customer and the same ordering as an event (see ``streams.processor``).

These are derived views: losing a snapshot or a tick loses nothing, the next
one carries the same information.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.security import kafka_client_kwargs

if TYPE_CHECKING:
    from streams.app import PulseApp
    from streams.processor import BatchProcessor

log = logging.getLogger(__name__)


def register(pulse: PulseApp, processor: BatchProcessor) -> None:
    settings = pulse.settings
    app = pulse.app
    view = processor.population
    #: per owned partition: the version and the exact-value buckets (see scoring.population) last published
    published: dict[int, tuple[int, dict[str, set[int]]]] = {}

    @app.timer(settings.population_publish_seconds, name="publish_population")
    async def publish_population() -> None:
        # also when only the buckets near the thresholds moved (other partitions changed the population)
        exact = view.exact_buckets()
        for partition, part in list(view.local.items()):
            if published.get(partition) != (part.version, exact):
                await pulse.population.send(key=str(partition).encode(), value=view.snapshot(partition, exact))
                published[partition] = (part.version, exact)

    @app.timer(settings.sweep_tick_seconds, name="send_sweep_ticks")
    async def send_sweep_ticks() -> None:
        ticks = settings.topic_ticks()
        tick = orjson.dumps({"wall_ms": int(time.time() * 1000)})
        for tp in sorted(app.consumer.assignment()):
            if tp.topic == ticks:
                await pulse.ticks.send(value=tick, partition=tp.partition)

    @app.task
    async def follow_population() -> None:
        consumer = AIOKafkaConsumer(
            **kafka_client_kwargs(settings), enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            tp = TopicPartition(settings.topic_population(), 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        if record.value:
                            view.apply_snapshot(record.value)
        finally:
            await consumer.stop()
