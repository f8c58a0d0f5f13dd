"""Create the topics the app reads and writes, with the configured partitions."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pulse.settings import Settings

log = logging.getLogger(__name__)


class PartitionMismatch(RuntimeError):
    """An input topic exists with another partition count: co-partitioning would break."""


async def ensure_topics(settings: Settings) -> None:
    """Idempotent: create missing topics; refuse input topics with the wrong partition count."""
    inputs = list(settings.input_topics().values())
    wanted = inputs + [settings.topic_dead_letters, settings.topic_retention_alerts]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_bootstrap(), request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            await admin.create_topics([NewTopic(t, settings.partitions, settings.replication_factor) for t in missing])
            log.info("created topics %s", missing)
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
