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


async def _create(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
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


def test_the_coordinator_confirms_a_members_current_generation_only(devstack, namespace):
    """A heartbeat in the worker's generation is how a worker that read a later generation's owner marker tells a
    stale assignment from generations numbered anew (streams.offsets.generation_confirmed). The broker must answer
    it for the current generation and refuse a member it no longer knows (the worker frozen past its session).
    Apache Kafka also refuses a generation the group has left; Tansu does not check the generation."""
    from types import SimpleNamespace

    from streams.offsets import generation_confirmed

    bootstrap, topic = namespace.bootstrap, namespace.settings.topic_orders + "-generations"
    group = f"{namespace.settings.app_id}-generations"

    def app_of(consumer: AIOKafkaConsumer, member: str | None = None) -> SimpleNamespace:
        """Faust's consumer thread as generation_confirmed reaches it, around a plain aiokafka consumer."""
        coordinator = consumer._coordinator
        if member is not None:  # the same coordinator, asked for a member the group does not know
            coordinator = SimpleNamespace(
                group_id=coordinator.group_id,
                member_id=member,
                _session_timeout_ms=coordinator._session_timeout_ms,
                _send_req=coordinator._send_req,
            )

        async def call_thread(fun, *args):
            return await fun(*args)

        thread = SimpleNamespace(_ensure_consumer=lambda: SimpleNamespace(_coordinator=coordinator))
        thread.call_thread = call_thread
        return SimpleNamespace(consumer=SimpleNamespace(_thread=thread))

    async def joined(consumer: AIOKafkaConsumer, after: int | None = None) -> int:
        """Poll until the consumer holds an assignment in a generation other than ``after``; that generation."""
        for _ in range(100):
            await consumer.getmany(timeout_ms=200)
            generation = consumer._coordinator.generation
            if consumer.assignment() and generation not in (-1, after):
                return generation
        raise AssertionError(f"no assignment after generation {after}")

    def member() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, session_timeout_ms=10000)

    async def go() -> dict[str, bool]:
        await _create(bootstrap, topic, partitions=2)
        first, second = member(), member()
        await first.start()
        try:
            before = await joined(first)
            answers = {"current": await generation_confirmed(app_of(first), before)}
            await second.start()
            try:
                # the first member sees the rebalance and joins the next generation beside the second
                after = await asyncio.wait_for(asyncio.gather(joined(first, before), joined(second, before)), 50)
                assert after[0] == after[1], after
                answers["left generation"] = await generation_confirmed(app_of(first), before)
                answers["next generation"] = await generation_confirmed(app_of(first), after[0])
                answers["unknown member"] = await generation_confirmed(app_of(first, "nobody"), after[0])
            finally:
                await second.stop()
        finally:
            await first.stop()
        return answers

    answers = run(go())
    assert answers == {
        "current": True,
        # Tansu checks the member, not the generation: its stale-assignment check rests on the member alone
        "left generation": on_broker(devstack, "tansu"),
        "next generation": True,
        "unknown member": False,
    }
