"""CPU per published alert: Faust's ``Topic.send`` per record (the checkpoint's outbox until session 18) against
the record batches of ``streams.publish.BatchPublisher`` (the outbox now), on one Faust app's producer.

Starts its own Tansu, publishes rounds of 300 alert-sized records (~600 bytes, 300 customers, a 4-partition
topic; a backlog checkpoint publishes ~300 alerts and VIP changes), alternating the two ways, acks awaited, and
prints the process's CPU µs per record and wall ms per round of each:

    .venv/bin/python -m benchmarks.outbox_publish [--rounds 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import faust

from benchmarks.changelog_batch import create_topic
from pulse.devstack import start_tansu
from streams.publish import BatchPublisher, OutputRecord

RECORDS = 300
VALUE_BYTES = 600
PARTITIONS = 4
TOPIC = "outbox-publish"


async def per_record(topic: Any, records: list[OutputRecord]) -> None:
    await asyncio.gather(*[await topic.send(key=r.key, value=r.value) for r in records])


async def batched(publisher: BatchPublisher, records: list[OutputRecord]) -> None:
    await asyncio.gather(*await publisher.publish(records))


async def run(bootstrap: str, rounds: int, repeats: int) -> None:
    await create_topic(bootstrap, TOPIC, PARTITIONS)
    app = faust.App("outbox-publish", broker=f"kafka://{bootstrap}", producer_acks=-1)
    topic = app.topic(TOPIC, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    await app.producer.start()
    publisher = BatchPublisher(lambda: cast(Any, app.producer)._ensure_producer())
    value = os.urandom(VALUE_BYTES)
    records = [OutputRecord(TOPIC, f"C{i:07d}".encode(), value) for i in range(RECORDS)]
    ways = {
        "Topic.send per record": lambda: per_record(topic, records),
        "record batches": lambda: batched(publisher, records),
    }
    try:
        for way in ways.values():  # warm-up: metadata, connections
            await way()
        for repeat in range(repeats):
            for name, way in ways.items():
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for _ in range(rounds):
                    await way()
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                n = rounds * RECORDS
                print(
                    f"{repeat + 1}  {name:<22} {cpu / n * 1e6:6.1f} µs CPU per record, "
                    f"{wall / rounds * 1000:6.1f} ms wall per {RECORDS}",
                    flush=True,
                )
    finally:
        await app.producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_tansu(Path(tmp))
        try:
            asyncio.run(run(f"127.0.0.1:{broker.port}", args.rounds, args.repeats))
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
