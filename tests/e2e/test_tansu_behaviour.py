"""What the embedded broker does that the design relies on or works around.

If Tansu changes, these say so before a subtler test fails.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

pytestmark = pytest.mark.e2e


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _end_offset(bootstrap: str, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


def test_end_offset_counts_only_to_the_last_batch_start_and_a_lone_marker_fixes_it(namespace):
    bootstrap, topic = namespace.bootstrap, namespace.settings.topic_orders + "-quirk"
    tp = TopicPartition(topic, 0)

    async def go() -> tuple[int, int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
        await producer.start()
        try:
            batch = [await producer.send(topic, b"v", key=b"k", partition=0) for _ in range(10)]
            last = (await asyncio.gather(*batch))[-1].offset  # one 10-record batch: offsets 0..9
            reported = await _end_offset(bootstrap, tp)
            marker = await (await producer.send(topic, None, key=b"\x00marker", partition=0))
            after_marker = await _end_offset(bootstrap, tp)
            return last, reported, after_marker - marker.offset
        finally:
            await producer.stop()

    last, reported, after_marker = run(go())
    assert last == 9
    # Kafka would report 10; Tansu reports the batch's base offset + 1.
    assert reported == 1, "Tansu now reports true end offsets: PULSE_CHANGELOG_END_MARKERS may be unneeded"
    assert after_marker == 1  # with a one-record batch last, the end offset is exact


def test_transactions_are_not_supported(namespace):
    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=namespace.bootstrap, transactional_id="pulse-probe")
        try:
            await producer.start()
        finally:
            await producer.stop()

    with pytest.raises(KafkaError):
        run(go())
