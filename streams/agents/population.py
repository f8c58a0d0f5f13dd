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

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.security import kafka_client_kwargs
from streams.startup import masked, retry

if TYPE_CHECKING:
    from scoring.partition import PartitionPopulation
    from scoring.population import PopulationView
    from streams.app import PulseApp
    from streams.processor import BatchProcessor

log = logging.getLogger(__name__)


#: per owned partition: the population object, its version and the exact-value buckets (see scoring.population)
#: last published
Published = dict[int, tuple["PartitionPopulation", int, dict[str, set[int]]]]


async def publish_changed(
    view: PopulationView, send: Callable[[int, bytes], Awaitable[None]], published: Published
) -> None:
    """Send the snapshot of each owned partition that changed since it was last published: its counts moved, or only
    the buckets near the thresholds did (other partitions changed the population).

    A rebalance drops every owned partition from the view (``table.on_rebalanced``) and may do so while a send is
    awaited: a partition gone by its turn is skipped (its rebuild is published at a later tick), and the snapshot
    is taken with no await between the check and the read. (Reading a dropped partition raised ``KeyError`` in
    this timer, which crashed the worker at a rebalance: tests/e2e/test_deploy_smoke.py, session 13.) A rebuilt
    partition is a new object, so it is published even where its version and buckets equal the last ones sent; the
    entries of partitions no longer owned are forgotten at each call, so a dropped partition's object (its rank
    indexes: large at a million customers) is not kept beyond one publish interval.

    What is recorded as published is the version the snapshot was taken at, not the one after the send: a batch
    that runs while the send is awaited (moving the clock to the last event's time, say) changes the partition
    after its snapshot, and recording the later version marked that change as sent. With no later change the
    partition was never published again, and every worker's population indicators stayed at the earlier time for
    good (CI, sessions 16, 19 and 20: ``test_population_indicators``, every count right). For the same reason
    ``send`` returns once the snapshot is acknowledged, and a send that raises is not recorded: the next call
    sends the partition again."""
    for gone in published.keys() - view.local.keys():
        del published[gone]
    exact = view.exact_buckets()
    for partition in list(view.local):
        part = view.local.get(partition)
        if part is None:
            continue
        last = published.get(partition)
        if last is not None and last[0] is part and last[1] == part.version and last[2] == exact:
            continue
        # the version of what is sent, read with it: a batch may change the partition while the send is awaited
        version = part.version
        snapshot = view.snapshot(partition, exact)
        try:
            await send(partition, snapshot)
        except Exception as exc:  # noqa: BLE001 - not recorded as published: the next call sends it again
            log.warning("population snapshot of partition %d not sent, retried at the next publish: %r", partition, exc)
            continue
        published[partition] = (part, version, exact)


def register(pulse: PulseApp, processor: BatchProcessor) -> None:
    settings = pulse.settings
    app = pulse.app
    view = processor.population
    published: Published = {}

    async def send_snapshot(partition: int, snapshot: bytes) -> None:
        # returns once the broker acknowledged it: only then is the snapshot recorded as published (a quiet
        # partition is not published again, so a snapshot lost on the way would stay missing for good)
        sent = await pulse.population.send(key=str(partition).encode(), value=snapshot)
        await sent

    @app.timer(settings.population_publish_seconds, name="publish_population")
    async def publish_population() -> None:
        await publish_changed(view, send_snapshot, published)

    @app.timer(settings.sweep_tick_seconds, name="send_sweep_ticks")
    async def send_sweep_ticks() -> None:
        ticks = settings.topic_ticks()
        tick = orjson.dumps({"wall_ms": int(time.time() * 1000)})
        for tp in sorted(app.consumer.assignment()):
            if tp.topic == ticks:
                await pulse.ticks.send(value=tick, partition=tp.partition)

    async def started_follower() -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **kafka_client_kwargs(settings), enable_auto_commit=False, auto_offset_reset="earliest"
        )
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    @app.task
    async def follow_population() -> None:
        # retried while the broker does not answer: started as the worker becomes ready, a broker that went down
        # just then raised out of this task and crashed the worker (exit 1; the fresh clone of 66fbaaa, in the
        # broker-restart test)
        consumer = await retry(
            "the broker (population follower)",
            masked(settings.broker_url),
            started_follower,
            settings,
            (KafkaError, OSError, asyncio.TimeoutError),
        )
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
