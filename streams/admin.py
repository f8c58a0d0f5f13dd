"""Create the topics the app reads and writes, with the configured partitions."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pulse_config.settings import Settings
from streams.security import kafka_client_kwargs

log = logging.getLogger(__name__)


COMPACTED = {"cleanup.policy": "compact"}
#: ticks are only useful for a moment: keep an hour
TICKS = {"retention.ms": str(3_600_000)}


class PartitionMismatch(RuntimeError):
    """An input topic or the state changelog exists with another partition count: co-partitioning would break."""


#: what an operator can do about an input topic that gained partitions (the worker's refusals end with it)
PARTITIONS_ADDED_HINT = (
    "Every state is kept in partition murmur2(customer id) % PULSE_PARTITIONS of every input topic and of the "
    "changelog, and Kafka cannot remove partitions: see docs/operations.md, 'Partitions added to an input topic'."
)


#: how long ``ensure_topics`` waits for topics it created to show in the broker's metadata, and how often it asks
METADATA_WAIT_SECONDS = 30.0
METADATA_POLL_SECONDS = 0.1


async def ensure_topics(settings: Settings) -> None:
    """Idempotent: create missing topics; refuse input topics and a state changelog with the wrong partition count.

    The state table's changelog is created here too, and every topic created is waited for until the broker's
    metadata lists all its partitions. Why: Faust otherwise creates the changelog itself a moment before the
    consumer's first metadata request, and on Apache Kafka that request can miss a topic just created; the group
    leader then assigns without the changelog ("Ignoring missing topic"), no member recovers the partitions it
    takes, and events applied meanwhile by another member are lost (tests/faults/test_retained_partitions.py on
    Kafka, session 11). The consumer does not ask again for minutes (``metadata_max_age_ms``)."""
    # the ticks topic is read with the inputs, so it must be co-partitioned with them
    inputs = [*settings.input_topics().values(), settings.topic_retention_actions, settings.topic_ticks()]
    changelog = settings.topic_state_changelog()
    wanted = inputs + [
        settings.topic_dead_letters,
        settings.topic_retention_alerts,
        settings.topic_vip_changes,
        changelog,
    ]
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings), request_timeout_ms=15000)
    try:
        await admin.start()  # inside the try: a broker that is down must not leak the client (start-up retries)
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        configs = {settings.topic_ticks(): TICKS, changelog: COMPACTED}
        new = [
            NewTopic(t, settings.partitions, settings.replication_factor, topic_configs=configs.get(t) or {})
            for t in missing
        ]
        if settings.topic_population() not in existing:
            # one compacted partition: the latest counts of every input partition, keyed by partition
            new.append(NewTopic(settings.topic_population(), 1, settings.replication_factor, topic_configs=COMPACTED))
        if new:
            try:
                await admin.create_topics(new)
                log.info("created topics %s", [t.name for t in new])
            except TopicAlreadyExistsError:
                log.info("topics created meanwhile by another worker")
            # a topic another worker (or anyone) created a moment ago may be missing from ``existing`` on Kafka:
            # its partition count is whatever it was created with, so it is checked below with the rest
            await _listed(admin, [t.name for t in new])
        # the changelog too: an input partition without its changelog partition is never recovered
        for meta in await admin.describe_topics([*inputs, changelog]):
            n = len(meta["partitions"])
            if n != settings.partitions:
                raise PartitionMismatch(
                    f"topic {meta['topic']} has {n} partitions, PULSE_PARTITIONS is {settings.partitions}. "
                    + PARTITIONS_ADDED_HINT
                )
    finally:
        await admin.close()


async def _listed(admin: AIOKafkaAdminClient, topics: list[str]) -> None:
    """Wait until the broker's metadata lists each of ``topics`` with its partitions, each with a leader (Kafka
    lists a new topic's partitions together, in one metadata update)."""
    deadline = time.monotonic() + METADATA_WAIT_SECONDS
    waiting = set(topics)
    while waiting:
        for meta in await admin.describe_topics(sorted(waiting)):
            found = meta.get("partitions") or []
            if meta.get("error_code", 0) == 0 and found and all(p.get("leader", -1) >= 0 for p in found):
                waiting.discard(meta["topic"])
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"topics created but not in the broker's metadata after {METADATA_WAIT_SECONDS} s: {sorted(waiting)}"
            )
        await asyncio.sleep(METADATA_POLL_SECONDS)
