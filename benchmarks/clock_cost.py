"""Cost of the clock's bookkeeping (spec: Clock): per-topic-partition watermarks and the per-partition clock.

Usage: .venv/bin/python benchmarks/clock_cost.py [CUSTOMERS]   (default 10000)

All three in CPU time (the box is shared).

1. The per-record part: each record read updates its topic-partition's progress (position, wall time,
   watermark). Timed alone on the records of a year of four-kind traffic: ns per record.
2. The per-batch part: ``move_clocks`` (for each owned partition, is each of its four topic-partitions
   caught up, behind or idle; the lowest watermark of those holding it back). Timed alone with 4 owned
   partitions (16 topic-partitions): µs per batch, and per event at the default batch of 500.
3. The whole processor on the same history in batches of 500, with the consumer's end offsets handed in
   (the clock waits for topic-partitions behind) and without (every topic-partition counts as caught up:
   the clock is the latest time read, as before): µs per event both ways. The difference is not only the
   bookkeeping: with end offsets, customers whose own events are ahead of their partition's clock are
   assessed later, by the due check, instead of at once.
"""

from __future__ import annotations

import sys
import time
import zlib

import orjson

from pulse.simulate import generate_events
from pulse_config.settings import Settings
from scoring.customer import CustomerState
from streams.processor import BatchProcessor, Incoming, TopicProgress

PARTITIONS = 4
BATCH = 500
MOVE_CLOCK_CALLS = 20_000


def records(customers: int, settings: Settings) -> list[Incoming]:
    topics = settings.input_topics()
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for kind, event in generate_events(customers, 365, seed=9):
        key = event["customer_id"].encode()
        tp = (topics[kind], zlib.crc32(key) % PARTITIONS)
        offsets[tp] = offsets.get(tp, -1) + 1
        out.append(Incoming(tp[0], tp[1], offsets[tp], key, orjson.dumps(event)))
    return out


def run(settings: Settings, batch: list[Incoming], with_ends: bool) -> tuple[float, BatchProcessor]:
    processor = BatchProcessor(settings.processor())
    store: dict[bytes, CustomerState] = {}
    ends = {(t, p): 0 for t in settings.input_topics().values() for p in range(PARTITIONS)}
    for r in batch:
        ends[(r.topic, r.partition)] = r.offset + 1
    wall = int(time.time() * 1000)
    started = time.process_time()
    for i in range(0, len(batch), BATCH):
        out = processor.process(
            batch[i : i + BATCH],
            lambda k: store.get(k) or CustomerState(),
            wall,
            ends if with_ends else None,
            dict.fromkeys(ends, 0) if with_ends else None,
        )
        store.update(out.states)
    return time.process_time() - started, processor


def bench_per_record(batch: list[Incoming]) -> float:
    """The per-record lines of ``BatchProcessor.process`` alone: ns per record."""
    progress: dict[tuple[str, int], TopicProgress] = {}
    wall, mark = 1, 1
    started = time.process_time_ns()
    for record in batch:
        read = progress.get((record.topic, record.partition))
        if read is None:
            read = progress[(record.topic, record.partition)] = TopicProgress()
        read.next_offset = record.offset + 1
        read.active_wall_ms = wall
        if read.mark_ms is None or mark > read.mark_ms:
            read.mark_ms = mark
        mark += 1
    return (time.process_time_ns() - started) / len(batch)


def main() -> None:
    customers = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    settings = Settings(_env_file=None)
    batch = records(customers, settings)
    print(f"{len(batch)} events of {customers} customers, {PARTITIONS} partitions, batches of {BATCH}")
    per_record = min(bench_per_record(batch) for _ in range(3))
    print(f"1. per record: progress of its topic-partition {per_record:.0f} ns")
    with_ends_s, processor = run(settings, batch, True)
    started = time.process_time()
    for _ in range(MOVE_CLOCK_CALLS):
        processor.move_clocks()
    per_batch_us = (time.process_time() - started) / MOVE_CLOCK_CALLS * 1e6
    per_event_ns = per_batch_us / BATCH * 1000
    print(f"2. per batch: move_clocks {per_batch_us:.1f} µs ({per_event_ns:.0f} ns per event at {BATCH})")
    without_s, _ = run(settings, batch, False)
    with_ends_s, _ = run(settings, batch, True)
    n = len(batch)
    print(
        f"3. processor: {with_ends_s / n * 1e6:.1f} µs/event with end offsets, "
        f"{without_s / n * 1e6:.1f} µs/event without (CPU time)"
    )


if __name__ == "__main__":
    main()
