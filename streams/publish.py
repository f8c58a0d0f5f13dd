"""The checkpoint's records (VIP changes, retention alerts, dead letters, re-published events) handed to the
producer as record batches.

Why: Faust's ``Topic.send`` costs each record its own trip through Faust's send path (a pending message, the
sensors, the producer wrapper) and, awaited one by one, a produce request of its own: ~200 µs of CPU per record
against ~13 µs in a record batch (benchmarks/outbox_publish.py). A backlog from a producer with librdkafka's
default partitioner re-publishes ~3 records in 4, and took twice the worker's CPU per event that way
(docs/benchmarks.md, session 18). The changelog went the same way in session 10
(``CustomerStateTable.write_states``). Here each batch's records go as one aiokafka ``BatchBuilder`` per
(topic, partition), with one future per batch.

Where a record goes does not change: the partition is the one aiokafka's default partitioner (which
Faust's ``Topic.send`` used, no partitioner being configured) gives a keyed record, ``murmur2(key) &
0x7fffffff`` modulo the topic's partition count, over its partitions in order; a customer's records keep one
partition and their order. ``tests/unit/test_publish.py`` checks it against aiokafka's own partitioner.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple

from streams.partitioning import murmur2


class OutputRecord(NamedTuple):
    """One record to publish."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None


def default_partition(key: bytes | None, partitions: list[int]) -> int:
    """The partition aiokafka's ``DefaultPartitioner`` (and the Java client's) gives a record: by the key's
    murmur2; a record without a key (a dead letter of a keyless record) in any partition."""
    if key is None:
        return random.choice(partitions)
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


class BatchPublisher:
    """Hands records to the producer in record batches, one per topic-partition (more when one fills).

    ``producer``: returns the aiokafka producer (the worker's, under Faust's), asked at each publish so a
    restarted producer is the one used."""

    def __init__(self, producer: Callable[[], Any]) -> None:
        self.producer = producer

    async def publish(self, records: Iterable[OutputRecord]) -> list[Awaitable[Any]]:
        """Hand ``records`` to the producer; the futures of their batches' acknowledgements (awaiting them all
        means every record is acknowledged). Records of one partition keep their order."""
        producer = self.producer()
        partitions_of: dict[str, list[int]] = {}
        #: (topic, partition) -> the open batch
        open_batches: dict[tuple[str, int], Any] = {}
        futures: list[Awaitable[Any]] = []
        for topic, key, value, headers in records:
            partitions = partitions_of.get(topic)
            if partitions is None:
                partitions = partitions_of[topic] = sorted(await producer.partitions_for(topic))
            tp = (topic, default_partition(key, partitions))
            builder = open_batches.get(tp)
            if builder is None:
                builder = open_batches[tp] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                # full: sent, and the record starts the partition's next batch
                futures.append(await producer.send_batch(builder, tp[0], partition=tp[1]))
                builder = open_batches[tp] = producer.create_batch()
                if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    raise ValueError(f"a {topic} record of {len(value)} B is larger than a producer batch")
        for (topic, partition), builder in open_batches.items():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        return futures
