"""What each broker does that the design relies on or works around (docs/architecture.md,
"Apache Kafka and Tansu").

Each test asserts the behaviour of the broker it runs on ([tansu] or [kafka]): if Tansu
changes, these say so before a subtler test fails, and they show which workaround is
needed where.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from tests.conftest import on_broker

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


async def _create(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


def test_end_offset_after_a_batch_and_after_a_lone_marker(devstack, namespace):
    bootstrap, topic = namespace.bootstrap, namespace.settings.topic_orders + "-quirk"
    tp = TopicPartition(topic, 0)

    async def go() -> tuple[int, int, int]:
        await _create(bootstrap, topic)
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
    if on_broker(devstack, "tansu"):
        # the base offset of the last batch + 1: why PULSE_CHANGELOG_END_MARKERS is on by default
        assert reported == 1, "Tansu now reports true end offsets: PULSE_CHANGELOG_END_MARKERS may be unneeded"
    else:
        # the log end: the markers are not needed on Apache Kafka (and harmless: the recovery tests run with them)
        assert reported == 10
    assert after_marker == 1  # with a one-record batch last, the end offset is exact on both


def test_transactions(devstack, namespace):
    """Tansu fails InitProducerId; Apache Kafka commits a transaction a read_committed consumer sees.

    The design does not use them (docs/architecture.md): the checkpoint's order gives exact state.
    """
    bootstrap, topic = namespace.bootstrap, namespace.settings.topic_orders + "-txn"

    async def go() -> list[bytes]:
        await _create(bootstrap, topic)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"pulse-probe-{topic}")
        try:
            await producer.start()
            async with producer.transaction():
                await producer.send(topic, b"committed", partition=0)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            return [r.value for r in (await consumer.getmany(tp, timeout_ms=5000)).get(tp, [])]
        finally:
            await consumer.stop()

    if on_broker(devstack, "tansu"):
        with pytest.raises(KafkaError):
            run(go())
    else:
        assert run(go()) == [b"committed"]


def test_group_offsets_through_the_admin_client(devstack, namespace):
    """Tansu closes the connection on the admin client's OffsetFetch; Apache Kafka answers it.

    So nothing in the worker or the CLI reads group offsets through the admin client.
    """
    bootstrap, topic = namespace.bootstrap, namespace.settings.topic_orders + "-offsets"
    group = f"{namespace.settings.app_id}-probe"

    async def go() -> dict:
        await _create(bootstrap, topic)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        tp = TopicPartition(topic, 0)
        try:
            consumer.assign([tp])
            await consumer.commit({tp: 7})
            assert await consumer.committed(tp) == 7  # a group consumer's own OffsetFetch works on both
        finally:
            await consumer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        await admin.start()
        try:
            return {tp: meta.offset for tp, meta in (await admin.list_consumer_group_offsets(group)).items()}
        finally:
            await admin.close()

    if on_broker(devstack, "tansu"):
        with pytest.raises((KafkaError, OSError, asyncio.TimeoutError)):
            run(go())
    else:
        assert run(go()) == {TopicPartition(topic, 0): 7}
