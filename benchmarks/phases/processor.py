"""Processor phase of ``pulse bench``: the backlog of the throughput phases through ``BatchProcessor.process``
alone, in the worker's batches, no Kafka, no Redis: the most the worker's scoring allows on one core."""

from __future__ import annotations

import collections
import gc
import time
from typing import Any

import orjson


def processor_alone(events: list[tuple[str, dict]], partitions: int) -> dict[str, Any]:
    """CPU per event of ``process`` (its ``load`` decodes each state, the changed states are encoded after each
    batch, as the checkpoint writes them) over the same N events the broker phases preload, in event-time order,
    each in its customer's murmur2 partition, in batches of ``batch_max_events``."""
    from pulse_config.settings import Settings
    from streams.codec import decode_state, encode_state
    from streams.partitioning import partitioner
    from streams.processor import BatchProcessor, Incoming

    settings = Settings(_env_file=None, partitions=partitions)
    gc.set_threshold(*settings.gc_thresholds)  # as the worker runs
    topics = settings.input_topics()
    partition_of = partitioner(partitions)
    processor = BatchProcessor(settings.processor(), partition_of)
    offsets: collections.Counter[tuple[str, int]] = collections.Counter()
    records = []
    for kind, event in events:
        key = event["customer_id"].encode()
        p = partition_of(key)
        topic = topics[kind]
        records.append(Incoming(topic, p, offsets[(topic, p)], key, orjson.dumps(event)))
        offsets[(topic, p)] += 1
    size = settings.batch_max_events
    batches = [records[i : i + size] for i in range(0, len(records), size)]
    store: dict[bytes, bytes] = {}

    def load(key: bytes) -> Any:
        return decode_state(store.get(key))

    alerts = profiles = 0
    wall_ms = int(time.time() * 1000)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for batch in batches:
        out = processor.process(batch, load, wall_ms=wall_ms)
        for key, state in out.states.items():
            store[key] = encode_state(state)
        alerts += len(out.alerts)
        profiles += len(out.profiles)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n = len(records)
    return {
        "events": n,
        "batches": len(batches),
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_event": round(cpu / max(1, n) * 1e6, 1),
        "events_per_second": round(n / max(cpu, 1e-9), 1),
        "wall_events_per_second": round(n / max(wall, 1e-9), 1),
        "alerts": alerts,
        "profiles": profiles,
    }
