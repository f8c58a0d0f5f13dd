"""Cost phase of ``pulse bench``: CPU per event of the processor alone (decode, process, encode, Redis
fields), no Kafka, against populations cloned from scored templates."""

from __future__ import annotations

import collections
import gc
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from testing.templates import Templates
from testing.traffic import live_event


def cost_per_event(size: int, templates: Templates, events: int, seed: int, partitions: int = 4) -> dict[str, Any]:
    """CPU µs per event of decode + process + encode + Redis fields, against ``size`` cloned customers."""
    from pulse.simulate import generate_events
    from pulse_config.settings import Settings
    from streams.codec import decode_state, encode_state
    from streams.processor import BatchProcessor, Incoming
    from streams.sinks.redis_profiles import pack_batch, pack_profile

    settings = Settings(_env_file=None, partitions=partitions)
    gc.set_threshold(*settings.gc_thresholds)  # as the worker runs
    topics = settings.input_topics()
    variants = templates.variant(partitions)
    t = len(variants)
    started = time.perf_counter()
    store: dict[bytes, bytes] = {}
    processor = BatchProcessor(settings.processor())

    def clones():
        for j in range(size):
            key = f"P{j:08d}".encode()
            raw, state = variants[j % t][j % partitions]
            store[key] = raw
            yield key, state

    processor.rebuild(set(range(partitions)), clones())
    build_seconds = time.perf_counter() - started
    # live traffic of the mix, a few events per second of event time after the population's clock
    rng = random.Random(seed)
    live = generate_events(max(10, t), 30, seed=seed + 2000)
    clock = datetime.fromtimestamp(templates.clock_ms / 1000, UTC)
    offsets: dict[tuple[str, int], int] = collections.Counter()
    batches: list[list[Incoming]] = []
    batch: list[Incoming] = []
    for n in range(events):
        kind, event = live_event(live[n % len(live)], n)
        j = (int(event["customer_id"][1:]) % t) + t * rng.randrange(max(1, size // t))
        j = min(j, size - 1)
        cid = f"P{j:08d}"
        event = {
            **event,
            "customer_id": cid,
            "occurred_at": (clock + timedelta(milliseconds=200 * (n + 1))).isoformat(),
        }
        p = j % partitions
        topic = topics[kind]
        offsets[(topic, p)] += 1
        batch.append(Incoming(topic, p, offsets[(topic, p)], cid.encode(), orjson.dumps(event)))
        if len(batch) >= settings.batch_max_events:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)

    def load(key: bytes):
        return decode_state(store.get(key))

    def run(batch: list[Incoming]) -> tuple[int, int]:
        out = processor.process(batch, load)
        for key, state in out.states.items():
            store[key] = encode_state(state)
        # as the worker's Redis sink (submit, then the flush's buffer), short of the I/O
        prefix = settings.redis_key_prefix
        pack_batch({p.customer_id: pack_profile(p, prefix, settings.vip_value) for p in out.profiles}, prefix)
        return len(out.profiles), out.due_checked

    warm = min(2, len(batches) - 1)
    for b in batches[:warm]:
        run(b)
    timed = batches[warm:]
    n_events = sum(len(b) for b in timed)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    profiles = due = 0
    for b in timed:
        p, d = run(b)
        profiles += p
        due += d
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "customers": size,
        "events": n_events,
        "cpu_us_per_event": round(cpu / n_events * 1e6, 1),
        "wall_us_per_event": round(wall / n_events * 1e6, 1),
        "profiles_rendered": profiles,
        "due_checks": due,
        "population_build_seconds": round(build_seconds, 2),
    }
