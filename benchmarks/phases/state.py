"""State-size phase of ``pulse bench``: the bytes of every customer's latest changelog value."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from benchmarks.phases.common import (
    PHASE_SECONDS,
    TRACER_PREFIX,
    Bench,
    percentile,
)


def state_size(bench: Bench, env: dict[str, str]) -> dict[str, Any]:
    """Bytes of the latest changelog value of every customer of the phase's app."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.security import kafka_client_kwargs
    from streams.tables import RESERVED_PREFIX

    settings = bench.settings(env)
    topic = f"{settings.app_id}-customer_states-changelog"

    async def go() -> dict[bytes, int]:
        consumer = AIOKafkaConsumer(**kafka_client_kwargs(settings), enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            sizes: dict[bytes, int] = {}
            deadline = time.monotonic() + PHASE_SECONDS
            quiet_since = time.monotonic()
            while time.monotonic() < deadline:
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= ends[tp] for tp in tps) or time.monotonic() - quiet_since > 5:
                    break
                batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                for records in batch.values():
                    quiet_since = time.monotonic()
                    for record in records:
                        if record.key.startswith(RESERVED_PREFIX) or record.key.startswith(TRACER_PREFIX):
                            continue
                        if record.value is None:
                            sizes.pop(record.key, None)
                        else:
                            sizes[record.key] = len(record.value)
            return sizes
        finally:
            await consumer.stop()

    sizes = list(asyncio.run(go()).values())
    if not sizes:
        raise RuntimeError(f"no state in {topic}")
    return {
        "customers": len(sizes),
        "mean_bytes": round(statistics.fmean(sizes), 1),
        "p50_bytes": percentile(sizes, 0.5),
        "p99_bytes": percentile(sizes, 0.99),
        "max_bytes": max(sizes),
    }
