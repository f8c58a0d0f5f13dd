"""Which input partition a customer's records belong in: the topics' partitioner rule.

Every input topic is keyed by customer id and partitioned like the Java client
and aiokafka do by default: ``murmur2(key) & 0x7fffffff % partitions``. The
state table, the population of each partition and the sweep all rely on one
customer's records arriving in that one partition. Other clients must be
configured to match (librdkafka / confluent-kafka: ``partitioner=murmur2_random``;
its default ``consistent_random`` is CRC32 and places keys elsewhere); a record
that arrives elsewhere is re-published to the right partition by the worker.
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka.partitioner import murmur2


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client (and aiokafka's DefaultPartitioner) sends ``key`` to."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partitioner(partitions: int) -> Callable[[bytes], int]:
    """``murmur2_partition`` bound to the topics' partition count (about 2 us per customer id)."""

    def partition_of(key: bytes) -> int:
        return murmur2_partition(key, partitions)

    return partition_of
