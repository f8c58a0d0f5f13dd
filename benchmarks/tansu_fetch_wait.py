"""How long a record waits in the broker before a waiting consumer gets it, by ``fetch_max_wait_ms``.

Starts its own Tansu, produces one record every 100 ms while an aiokafka consumer
fetches, and prints the delivery delay (p50, max) for each wait. On Apache Kafka
a fetch returns as soon as ``fetch_min_bytes`` (1) are there, whatever the wait;
Tansu holds it for the whole wait, which is why the worker's
``PULSE_CONSUMER_FETCH_MAX_WAIT_MS`` defaults to 100 instead of Faust's 1,500.

    .venv/bin/python benchmarks/tansu_fetch_wait.py [--broker tansu|kafka] [WAIT_MS ...]    # default 1500 100 10
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pulse.devstack import start_kafka, start_tansu

RECORDS = 30
INTERVAL_SECONDS = 0.1
TIMEOUT_SECONDS = 30


async def delays(bootstrap: str, wait_ms: int) -> list[float]:
    topic = f"fetch-wait-{wait_ms}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms, auto_offset_reset="earliest"
    )
    await producer.start()
    await consumer.start()
    out: list[float] = []
    try:

        async def consume() -> None:
            while len(out) < RECORDS:
                batch = await consumer.getmany(timeout_ms=1000)
                now = time.time()
                out.extend(now - float(r.value) for records in batch.values() for r in records)

        reader = asyncio.ensure_future(consume())
        for _ in range(RECORDS):
            await producer.send_and_wait(topic, str(time.time()).encode())
            await asyncio.sleep(INTERVAL_SECONDS)
        await asyncio.wait_for(reader, TIMEOUT_SECONDS)
    finally:
        await consumer.stop()
        await producer.stop()
    return sorted(out)


def main(argv: list[str]) -> None:
    broker = "tansu"
    if argv[:1] == ["--broker"]:
        broker, argv = argv[1], argv[2:]
    waits = [int(a) for a in argv] or [1500, 100, 10]
    start = {"tansu": start_tansu, "kafka": start_kafka}[broker]
    server = start(Path(tempfile.mkdtemp(prefix="fetch-wait-")))
    print(f"broker: {broker}")
    try:
        for wait_ms in waits:
            d = asyncio.run(delays(f"127.0.0.1:{server.port}", wait_ms))
            p50, worst = d[len(d) // 2] * 1000, d[-1] * 1000
            print(f"fetch_max_wait_ms={wait_ms:>5}: delivery p50 {p50:6.0f} ms, max {worst:6.0f} ms")
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
