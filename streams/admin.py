"""Create the topics the app reads and writes, with the configured partitions."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pulse_config.settings import Settings
from streams.security import kafka_client_kwargs

log = logging.getLogger(__name__)


COMPACTED = {"cleanup.policy": "compact"}
#: ticks are only useful for a moment: keep an hour
TICKS = {"retention.ms": str(3_600_000)}


class PartitionMismatch(RuntimeError):
    """An input topic exists with another partition count: co-partitioning would break."""


async def ensure_topics(settings: Settings) -> None:
    """Idempotent: create missing topics; refuse input topics with the wrong partition count."""
    # the ticks topic is read with the inputs, so it must be co-partitioned with them
    inputs = [*settings.input_topics().values(), settings.topic_retention_actions, settings.topic_ticks()]
    wanted = inputs + [settings.topic_dead_letters, settings.topic_retention_alerts, settings.topic_vip_changes]
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings), request_timeout_ms=15000)
    try:
        await admin.start()  # inside the try: a broker that is down must not leak the client (start-up retries)
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        configs = {settings.topic_ticks(): TICKS}
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
        present = [t for t in inputs if t in existing]
        if present:
            for meta in await admin.describe_topics(present):
                n = len(meta["partitions"])
                if n != settings.partitions:
                    raise PartitionMismatch(
                        f"topic {meta['topic']} has {n} partitions, PULSE_PARTITIONS is {settings.partitions}"
                    )
    finally:
        await admin.close()
