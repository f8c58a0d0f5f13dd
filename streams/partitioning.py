"""Which input partition a customer's records belong in: the topics' partitioner rule.

Every input topic is keyed by customer id and partitioned like the Java client
and aiokafka do by default: ``murmur2(key) & 0x7fffffff % partitions``. The
state table, the population of each partition and the sweep all rely on one
customer's records arriving in that one partition. Other clients must be
configured to match (librdkafka / confluent-kafka: ``partitioner=murmur2_random``;
its default ``consistent_random`` is CRC32 and places keys elsewhere); a record
that arrives elsewhere is re-published to the right partition by the worker.

A re-published record carries the partition and offset it was first read at in
the :data:`ORIGIN_HEADER`. A replay (a crash or rebalance before the commit of
the wrong partition) publishes it again, with a new offset in the right
partition, so the copies' own offsets cannot tell them apart; their origin can
(``scoring.customer.apply_event``), however many of the customer's events came
in between (the ring of recent event ids only spans the last
``PULSE_DEDUP_EVENT_IDS``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
#: the little-endian 32-bit words of a key, by their count (customer ids are short)
_WORDS = [struct.Struct(f"<{n}I").unpack_from for n in range(33)]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), the same value as aiokafka's pure-Python
    ``aiokafka.partitioner.murmur2`` (tests/unit/test_partitioning.py), with the key's words unpacked in C and each
    step masked once: 25,000 -> ~7,000 instructions for a customer id; the processor places every customer of a
    batch (issue 18)."""
    length = len(data)
    h = 0x9747B28C ^ length
    n = length >> 2
    words = _WORDS[n](data) if n < len(_WORDS) else struct.unpack_from(f"<{n}I", data)
    for k in words:
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra:
        tail = length & ~3
        if extra >= 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client (and aiokafka's DefaultPartitioner) sends ``key`` to."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partitioner(partitions: int) -> Callable[[bytes], int]:
    """``murmur2_partition`` bound to the topics' partition count (about 1 µs per customer id)."""

    def partition_of(key: bytes) -> int:
        return (murmur2(key) & 0x7FFFFFFF) % partitions  # murmur2_partition, one call less per customer

    return partition_of


#: Record header of a re-published record: ``b"<partition>:<offset>"`` where it was first read (same topic)
ORIGIN_HEADER = "pulse-origin"

#: (partition, offset) of a re-published record's first read
Origin = tuple[int, int]


#: Record header of a re-published record whose first copy was keyed by its customer id (b"1"): misplaced by
#: another partitioner or by a partition count the topic no longer has, not mis-keyed. At another partition
#: count its first copy can be in the customer's own partition and applied there directly
#: (``scoring.customer.origin_applied``); a mis-keyed first copy never is.
KEYED_HEADER = "pulse-origin-keyed"


def origin_header(origin: Origin, keyed: bool = False) -> list[tuple[str, bytes]]:
    """The headers to re-publish a record first read at ``origin`` with (``keyed``: see :data:`KEYED_HEADER`)."""
    headers = [(ORIGIN_HEADER, f"{origin[0]}:{origin[1]}".encode())]
    if keyed:
        headers.append((KEYED_HEADER, b"1"))
    return headers


def origin_keyed(headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None) -> bool:
    """True if a re-published record's first copy was keyed by its customer id (:data:`KEYED_HEADER`)."""
    if not headers:
        return False
    items = headers.items() if isinstance(headers, Mapping) else headers
    return any(name == KEYED_HEADER and bytes(value) == b"1" for name, value in items)


def origin_of(headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None) -> Origin | None:
    """The origin a re-published record carries; None for any other record (or an unreadable header)."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name == ORIGIN_HEADER and value:
            partition, _, offset = bytes(value).partition(b":")
            try:
                return int(partition), int(offset)
            except ValueError:
                return None
    return None
