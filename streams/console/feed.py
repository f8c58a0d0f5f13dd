"""The console's reader of the retention, retention-actions and VIP-change topics.

One consumer group (``PULSE_CONSOLE_GROUP_ID``, default ``{app_id}-console``)
reads the three topics from the beginning, records alerts and actions in the
case store (``streams.console.cases``) and the latest VIP changes in a capped
list, and publishes a small notice per event on the console's Redis channel:
every console process relays the channel to its browsers as server-sent
events, so a page sees a change whichever console read it. Offsets are
committed after the batch is recorded; a batch read again after a crash is
recorded once (the store de-duplicates by id). A record that does not parse
is skipped with a warning and counted (``pulse_console_events_total``,
outcome ``invalid``): the console is a reader, the producers' own dead-letter
paths own bad input.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from redis.exceptions import RedisError

from pulse_config.settings import Settings
from schemas.actions import RetentionAction
from schemas.alerts import RetentionAlert
from schemas.vip import VipChange
from streams import metrics
from streams.admin import console_group
from streams.closing import close_quietly
from streams.console.cases import apply_action, apply_alert, channel, vip_changes_key
from streams.security import kafka_client_kwargs

log = logging.getLogger("pulse.console.feed")

#: VIP entries and exits kept for the console's list
VIP_CHANGES_KEPT = 50
#: records read per poll, and how long a poll waits
POLL_RECORDS = 500
POLL_MS = 500
#: pause after Redis or the broker failed, before reading again
RETRY_SECONDS = 1.0


class Feed:
    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self.settings, self.client = settings, client
        self.prefix = settings.redis_key_prefix
        self.kinds = {
            settings.topic_retention_alerts: "retention_alert",
            settings.topic_retention_actions: "retention_action",
            settings.topic_vip_changes: "vip_change",
        }

    async def handle(self, topic: str, value: bytes | None) -> None:
        """Record one event and announce it on the channel (only when it was new)."""
        kind = self.kinds[topic]
        try:
            if kind == "retention_alert":
                alert = RetentionAlert.model_validate_json(value or b"")
                new = await apply_alert(self.client, self.prefix, alert)
                notice: dict[str, object] = {
                    "type": "alert",
                    "customer_id": alert.customer_id,
                    "alert_id": alert.alert_id,
                }
            elif kind == "retention_action":
                action = RetentionAction.model_validate_json(value or b"")
                new = await apply_action(self.client, self.prefix, action)
                notice = {"type": "action", "customer_id": action.customer_id, "alert_id": action.alert_id}
            else:
                change = VipChange.model_validate_json(value or b"")
                new = await self._vip_change(change)
                notice = {"type": "vip", "customer_id": change.customer_id, "vip": change.vip}
        except ValidationError as exc:
            metrics.CONSOLE_EVENTS.labels(kind, "invalid").inc()
            log.warning("skipped a %s that does not parse: %s", kind, exc.errors()[0]["msg"])
            return
        metrics.CONSOLE_EVENTS.labels(kind, "applied" if new else "duplicate").inc()
        if new:
            await self.client.publish(channel(self.prefix), orjson.dumps(notice))

    async def _vip_change(self, change: VipChange) -> bool:
        key = vip_changes_key(self.prefix)
        entry = change.model_dump_json()
        # a change read again after a crash: its id is in the list already
        if any(orjson.loads(e)["change_id"] == change.change_id for e in await self.client.lrange(key, 0, -1)):
            return False
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(key, entry)
            pipe.ltrim(key, 0, VIP_CHANGES_KEPT - 1)
            await pipe.execute()
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Read until ``stop``; broker or Redis failures are logged and retried (the page shows what Redis has)."""
        group = console_group(self.settings)
        consumer = AIOKafkaConsumer(
            *self.kinds,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka_client_kwargs(self.settings),
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batches = {}
                try:
                    batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=POLL_RECORDS)
                    for tp, records in batches.items():
                        for record in records:
                            await self.handle(tp.topic, record.value)
                    if batches:
                        await consumer.commit()
                except (KafkaError, RedisError, OSError) as exc:
                    log.warning("console feed: %s; retrying in %gs", exc, RETRY_SECONDS)
                    # read the batch again (what was recorded of it is recorded once)
                    for tp, records in batches.items():
                        consumer.seek(tp, records[0].offset)
                    await asyncio.sleep(RETRY_SECONDS)
        finally:
            await close_quietly("the console feed's consumer", consumer.stop(), self.settings.shutdown_grace_seconds)
