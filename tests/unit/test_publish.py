"""The outbox's records as record batches (streams.publish): where each record goes and in what order.

A fake producer stands for aiokafka's (create_batch / send_batch / partitions_for); the real one carries the
worker's alerts and VIP changes end to end in tests/e2e (test_churn_alerts, test_vip_flags, the chaos run).
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.publish import BatchPublisher, OutputRecord, default_partition


class Builder:
    """A record batch that holds ``room`` records."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.records: list[tuple[bytes | None, bytes]] = []
        self.headers: list[Any] = []

    def append(self, *, key: bytes | None, value: bytes, timestamp: float | None, headers: Any) -> Any:
        assert timestamp is None  # the producer's clock, as a send without a timestamp
        if len(self.records) >= self.room or len(value) > 100:
            return None
        self.records.append((key, value))
        self.headers.append(headers)
        return SimpleNamespace(offset=len(self.records) - 1)


class Producer:
    def __init__(self, partitions: dict[str, int], room: int = 1000) -> None:
        self.partitions = partitions
        self.room = room
        #: (topic, partition, records) of each batch in the order it was handed over
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes]]]] = []
        self.headers: list[Any] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions[topic]))

    def create_batch(self) -> Builder:
        return Builder(self.room)

    async def send_batch(self, builder: Builder, topic: str, *, partition: int) -> asyncio.Future:
        self.sent.append((topic, partition, list(builder.records)))
        self.headers += builder.headers
        future = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(topic=topic, partition=partition))
        return future


@pytest.mark.parametrize("count", [1, 3, 4, 12])
def test_a_record_goes_where_aiokafkas_default_partitioner_puts_it(count: int):
    rng = random.Random(count)
    partitions = list(range(count))
    for _ in range(2_000):
        key = f"C{rng.randrange(10**9)}".encode() if rng.random() < 0.9 else rng.randbytes(rng.randrange(1, 40))
        assert default_partition(key, partitions) == DefaultPartitioner()(key, partitions, partitions)


def test_one_batch_per_topic_partition_each_in_the_records_order():
    producer = Producer({"alerts": 4, "vip": 2})
    rng = random.Random(7)
    records = [
        OutputRecord(rng.choice(["alerts", "vip"]), f"C{rng.randrange(50)}".encode(), f"v{i}".encode())
        for i in range(300)
    ]
    futures = asyncio.run(_publish(producer, records))
    assert len(futures) == len(producer.sent) == len({(t, p) for t, p, _ in producer.sent})
    got = {(t, p): recs for t, p, recs in producer.sent}
    for (topic, partition), recs in got.items():
        expected = [
            (k, v)
            for t, k, v, _ in records
            if t == topic and default_partition(k, list(range(producer.partitions[t]))) == partition
        ]
        assert recs == expected
    assert sum(len(recs) for recs in got.values()) == len(records)


def test_a_full_batch_is_sent_and_the_partition_goes_on_in_a_new_one():
    producer = Producer({"alerts": 1}, room=3)
    records = [OutputRecord("alerts", b"C1", f"v{i}".encode()) for i in range(8)]
    asyncio.run(_publish(producer, records))
    assert [len(recs) for _, _, recs in producer.sent] == [3, 3, 2]
    assert [v for _, _, recs in producer.sent for _, v in recs] == [r.value for r in records]


def test_a_record_larger_than_an_empty_batch_is_an_error_not_a_silent_drop():
    with pytest.raises(ValueError, match="larger than a producer batch"):
        asyncio.run(_publish(Producer({"alerts": 1}), [OutputRecord("alerts", b"C1", b"x" * 101)]))


def test_headers_go_with_their_record_and_a_keyless_record_goes_to_some_partition():
    """A re-published event carries its origin header; a dead letter of a keyless record has no key to place it
    by (aiokafka's partitioner picks any partition for one)."""
    producer = Producer({"orders": 4, "dead": 3})
    origin = [("pulse-origin", b"2:17")]
    asyncio.run(_publish(producer, [OutputRecord("dead", None, b"bad"), OutputRecord("orders", b"C1", b"v", origin)]))
    sent = {topic: (partition, recs) for topic, partition, recs in producer.sent}
    assert sent["dead"][1] == [(None, b"bad")] and sent["dead"][0] in range(3)
    assert sent["orders"] == (default_partition(b"C1", [0, 1, 2, 3]), [(b"C1", b"v")])
    assert producer.headers == [None, origin] or producer.headers == [origin, None]


async def _publish(producer: Producer, records: list[OutputRecord]) -> list[Any]:
    futures = await BatchPublisher(lambda: producer).publish(records)
    return list(await asyncio.gather(*futures))
