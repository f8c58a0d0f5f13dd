"""``pulse alerts``: read the retention topic and print each alert for a person (or as JSON).

A plain consumer without a group: it never moves anyone's committed offsets,
so any number of people can watch the same topic.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from pulse_config.settings import Settings
from schemas.alerts import RetentionAlert, RiskLevel
from streams.security import kafka_client_kwargs

#: how long one poll of the topic waits for records, and how often a missing topic is looked for
POLL_MS = 500
METADATA_RETRY_SECONDS = 0.5
#: bound on learning the log end for ``--new`` (one fetch per partition)
SEEK_END_SECONDS = 10.0


_LEVEL_RANK = {RiskLevel.LOW: 0, RiskLevel.MEDIUM: 1, RiskLevel.HIGH: 2}
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO date or time (a naive one is UTC), or an age such as ``30m``, ``12h``, ``7d``, ``2w``
    before ``now``. ValueError with the accepted forms otherwise."""
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        seconds = float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: an ISO date or time (2025-05-01, 2025-05-01T08:00+02:00) or an age (30m, 12h, 7d, 2w)"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class AlertFilter:
    """What ``pulse alerts`` shows: ``level`` and above, VIP/priority only, one customer, raised since a time
    (the alert's ``raised_at``, event time)."""

    level: RiskLevel | None = None
    vip: bool = False
    customer: str | None = None
    since: datetime | None = None

    def matches(self, alert: RetentionAlert) -> bool:
        if self.level is not None and _LEVEL_RANK[alert.level] < _LEVEL_RANK[self.level]:
            return False
        if self.vip and not (alert.vip or alert.priority):
            return False
        if self.customer is not None and alert.customer_id != self.customer:
            return False
        return self.since is None or alert.raised_at >= self.since

    @property
    def active(self) -> bool:
        return self != AlertFilter()


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


async def seek_to_log_end(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
    """Seek each partition to its log end, taken from a fetch response's high watermark.

    ``seek_to_end`` asks ListOffsets(latest), which Apache Kafka answers with the log end but
    Tansu with the base offset of the last record batch + 1 (docs/architecture.md), so
    ``pulse alerts --new`` printed the rest of that batch as new. A fetch response carries the
    true high watermark on both: fetch from just before the reported end, then seek to the
    watermark. Bounded by ``SEEK_END_SECONDS``; a partition without an answer keeps the reported end.
    """
    ends = await consumer.end_offsets(partitions)
    pending = [tp for tp in partitions if ends[tp] > 0]
    for tp in partitions:
        consumer.seek(tp, max(ends[tp] - 1, 0))
    deadline = time.monotonic() + SEEK_END_SECONDS
    while pending and time.monotonic() < deadline:
        await consumer.getmany(*pending, timeout_ms=POLL_MS)
        for tp in list(pending):
            highwater = consumer.highwater(tp)
            if highwater is not None:
                consumer.seek(tp, highwater)
                pending.remove(tp)
    for tp in partitions:
        if tp in pending or ends[tp] == 0:
            consumer.seek(tp, ends[tp])


async def watch(
    settings: Settings,
    out: TextIO = sys.stdout,
    follow: bool = False,
    from_beginning: bool = True,
    as_json: bool = False,
    idle_seconds: float = 2.0,
    max_alerts: int | None = None,
    positioned: asyncio.Event | None = None,
    select: AlertFilter | None = None,
) -> int:
    """Print alerts; without ``follow``, stop once no alert came for ``idle_seconds``. Returns how many.

    ``positioned`` is set once the reader is at its start (the beginning, or the end for ``--new``).
    ``select``: only the alerts it matches are printed and counted (``max_alerts``: ``--limit``); with a filter,
    a record that is not a readable alert is skipped in JSON mode too.
    """
    select = select if select is not None and select.active else None
    topic = settings.topic_retention_alerts
    consumer = AIOKafkaConsumer(
        **kafka_client_kwargs(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    shown = 0
    try:
        await consumer.start()  # inside the try: a broker that is down must not leak the client
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
            await seek_to_log_end(consumer, partitions)
        if positioned is not None:
            positioned.set()
        last = time.monotonic()
        while follow or time.monotonic() - last < idle_seconds:
            batches = await consumer.getmany(timeout_ms=POLL_MS)
            records = sorted((r for rs in batches.values() for r in rs), key=lambda r: r.timestamp)
            for record in records:
                last = time.monotonic()
                # validated in --json mode too: a record that is not an alert must not reach a JSON reader
                try:
                    alert = RetentionAlert.model_validate_json(record.value or b"")
                except ValidationError as exc:
                    note = f"(unreadable record at offset {record.offset}: {exc.errors()[0]['msg']})"
                    print(note, file=sys.stderr if as_json else out)
                    continue
                if select is not None and not select.matches(alert):
                    continue
                if as_json:
                    print((record.value or b"").decode(), file=out, flush=True)
                else:
                    print(format_alert(alert), file=out, flush=True)
                shown += 1
                if max_alerts is not None and shown >= max_alerts:
                    return shown
        return shown
    finally:
        await consumer.stop()
