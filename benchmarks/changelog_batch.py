"""CPU per changelog record: one ``AIOKafkaProducer.send`` each (what the checkpoint does) against aiokafka
record batches built per partition (``create_batch`` / ``send_batch``).

Starts its own Tansu, sends 20 rounds of 500 records of 470 bytes (about the mean state) to 4 partitions
each way, three times alternating, and prints CPU µs per record and wall ms per 500 (acks awaited):

    .venv/bin/python benchmarks/changelog_batch.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pulse.devstack import start_tansu

RECORDS = 500
VALUE_BYTES = 470
PARTITIONS = 4
ROUNDS = 20
TOPIC = "changelog-batch"


async def one_send_each(producer: AIOKafkaProducer, records: list[tuple[bytes, bytes, int]]) -> None:
    await asyncio.gather(*[await producer.send(TOPIC, v, key=k, partition=p) for k, v, p in records])


async def batches(producer: AIOKafkaProducer, records: list[tuple[bytes, bytes, int]]) -> None:
    futures = []
    for partition in range(PARTITIONS):
        batch = producer.create_batch()
        for key, value, p in records:
            if p != partition:
                continue
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start the next
                futures.append(await producer.send_batch(batch, TOPIC, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        futures.append(await producer.send_batch(batch, TOPIC, partition=partition))
    await asyncio.gather(*futures)


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` (replication 1) on the benchmark's own broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def main(bootstrap: str) -> None:
    await create_topic(bootstrap, TOPIC, PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=-1)
    await producer.start()
    value = os.urandom(VALUE_BYTES)
    records = [(f"C{i:07d}".encode(), value, i % PARTITIONS) for i in range(RECORDS)]
    try:
        for name, send in (("one send each", one_send_each), ("batches", batches)) * 3:
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(ROUNDS):
                await send(producer, records)
            cpu_us = (time.process_time() - cpu) / (ROUNDS * RECORDS) * 1e6
            wall_ms = (time.perf_counter() - wall) / ROUNDS * 1000
            print(f"{name:>14}: {cpu_us:5.1f} µs CPU per record, {wall_ms:5.1f} ms per {RECORDS}")
    finally:
        await producer.stop()


if __name__ == "__main__":
    server = start_tansu(Path(tempfile.mkdtemp(prefix="changelog-batch-")))
    try:
        asyncio.run(main(f"127.0.0.1:{server.port}"))
    finally:
        server.stop()
