"""`streams.admin.ensure_topics` on the real brokers: it creates the state changelog itself (compacted, one partition
per input partition) and returns only once the broker's metadata lists every partition of what it created.

Why (docs/architecture.md, "Apache Kafka and Tansu"): on Kafka, Faust created the changelog a moment before the
consumer's first metadata request, which missed it; the group leader then assigned without the changelog, no member
recovered the partitions it took, and tests/faults/test_retained_partitions.py[kafka] lost events.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient

from streams.admin import PartitionMismatch, ensure_topics
from streams.security import kafka_client_kwargs

pytestmark = pytest.mark.e2e


def test_ensure_topics_creates_the_changelog_and_returns_once_a_new_client_sees_it(namespace):
    settings = namespace.settings
    changelog = settings.topic_state_changelog()

    async def go() -> tuple[int, set[int] | None]:
        await ensure_topics(settings)
        admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
        await admin.start()
        try:
            (meta,) = await admin.describe_topics([changelog])
        finally:
            await admin.close()
        # a fresh client's first metadata request, as a worker's consumer has it when it joins the group
        client = AIOKafkaClient(**kafka_client_kwargs(settings))
        await client.bootstrap()
        try:
            seen = (await client.fetch_all_metadata()).partitions_for_topic(changelog)
        finally:
            await client.close()
        await ensure_topics(settings)  # idempotent
        return len(meta["partitions"]), seen

    created, seen = asyncio.run(go())
    assert created == settings.partitions
    assert seen == set(range(settings.partitions))


def test_ensure_topics_refuses_a_changelog_with_fewer_partitions_than_the_inputs(namespace):
    """An input partition without its changelog partition is never recovered (its worker would score on empty
    states), so a worker refuses to start against such a changelog; the assignment check behind it is
    tests/unit/test_changelog_assignment.py."""
    # another app id over the namespace's topics: its changelog does not exist yet (the namespace created its own)
    settings = namespace.settings.model_copy(update={"app_id": f"{namespace.settings.app_id}-short"})
    changelog = settings.topic_state_changelog()

    async def go() -> None:
        admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(changelog, settings.partitions - 1, settings.replication_factor)])
        finally:
            await admin.close()
        await ensure_topics(settings)

    with pytest.raises(PartitionMismatch, match=f"topic {changelog} has {settings.partitions - 1} partitions"):
        asyncio.run(go())
