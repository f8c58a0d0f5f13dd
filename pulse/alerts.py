"""``pulse alerts``: read the retention topic and print each alert for a person (or as JSON).

A plain consumer without a group: it never moves anyone's committed offsets,
so any number of people can watch the same topic.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from pulse.settings import Settings
from schemas.alerts import RetentionAlert
from streams.security import kafka_client_kwargs

#: how long one poll of the topic waits for records, and how often a missing topic is looked for
POLL_MS = 500
METADATA_RETRY_SECONDS = 0.5


def format_alert(alert: RetentionAlert) -> str:
    """A few lines a service agent can act on: who, how bad, why, what it is worth, what to do."""
    who = alert.customer_id + ("  [VIP, priority]" if alert.priority else "")
    value = f"revenue {alert.revenue} {alert.currency}, value at risk {alert.value_at_risk}"
    if alert.clv is not None:
        value += f", CLV {alert.clv}"
    if alert.p_alive is not None:
        value += f", P(alive) {alert.p_alive:.3f}"
    context = ", ".join(x for x in (alert.segment, alert.rfm_cell and f"RFM {alert.rfm_cell}") if x)
    lines = [
        f"{alert.raised_at:%Y-%m-%d %H:%M} {alert.level.value.upper():<6} {who}  risk {alert.risk_score}"
        f" ({alert.kind}, was {alert.previous_level.value})  {alert.alert_id}"
        + ("  [historical]" if alert.historical else ""),
        f"    {context}{'; ' if context else ''}{value}",
    ]
    lines += [f"    - {r.code}: {r.detail} (observed {r.observed}, threshold {r.threshold})" for r in alert.reasons]
    lines.append(f"    -> {alert.suggested_action}")
    return "\n".join(lines)


async def watch(
    settings: Settings,
    out: TextIO = sys.stdout,
    follow: bool = False,
    from_beginning: bool = True,
    as_json: bool = False,
    idle_seconds: float = 2.0,
    max_alerts: int | None = None,
) -> int:
    """Print alerts; without ``follow``, stop once no alert came for ``idle_seconds``. Returns how many."""
    topic = settings.topic_retention_alerts
    consumer = AIOKafkaConsumer(
        **kafka_client_kwargs(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    shown = 0
    try:
        deadline = time.monotonic() + idle_seconds
        while not consumer.partitions_for_topic(topic):
            if not follow and time.monotonic() > deadline:
                return 0
            await consumer._client.force_metadata_update()
            await asyncio.sleep(METADATA_RETRY_SECONDS)
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        last = time.monotonic()
        while follow or time.monotonic() - last < idle_seconds:
            batches = await consumer.getmany(timeout_ms=POLL_MS)
            records = sorted((r for rs in batches.values() for r in rs), key=lambda r: r.timestamp)
            for record in records:
                last = time.monotonic()
                if as_json:
                    print(record.value.decode(), file=out, flush=True)
                else:
                    try:
                        alert = RetentionAlert.model_validate_json(record.value)
                    except ValidationError as exc:
                        print(f"(unreadable record at offset {record.offset}: {exc.errors()[0]['msg']})", file=out)
                        continue
                    print(format_alert(alert), file=out, flush=True)
                shown += 1
                if max_alerts is not None and shown >= max_alerts:
                    return shown
        return shown
    finally:
        await consumer.stop()
