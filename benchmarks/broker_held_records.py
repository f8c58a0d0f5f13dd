"""What serving the same live traffic costs a broker, by the records it already holds.

For each ``--preload`` a fresh broker gets that many records (200 B, over ``benchmarks.fetch_pace``'s four
topics of 4 partitions), then ``--rate`` records/s for ``--seconds`` while one aiokafka consumer (no group, the
worker's fetch settings: ``fetch_max_wait_ms`` 100, ``fetch_min_bytes`` 1) reads the new ones. Prints the
broker's CPU (share of one core, from /proc), the consumer's fetches per second and the delivery delay
(production to receipt, p50 / p99).

Tansu keeps its logs in memory with no retention: in session 15 the same 1,000 records/s cost it more CPU, and
the worker's live alerts took seconds, once it held a few hundred thousand records (docs/benchmarks.md). Apache
Kafka (``--broker kafka``) for comparison.

    .venv/bin/python -m benchmarks.broker_held_records [--broker tansu|kafka] [--preload 0,600000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchmarks.fetch_pace import TOPICS, cpu_seconds, create_topics
from pulse.devstack import start_kafka, start_tansu

VALUE_BYTES = 200
#: the consumer's settings: the worker's defaults (PULSE_CONSUMER_FETCH_MAX_WAIT_MS, Faust's fetch_min_bytes)
FETCH_MAX_WAIT_MS = 100
#: bounds of the waits (seconds)
SETTLE_SECONDS = 2.0
DRAIN_SECONDS = 30.0


async def measure(bootstrap: str, pid: int, preload: int, rate: float, seconds: float) -> dict[str, float]:
    await create_topics(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    filler = b"x" * VALUE_BYTES
    for i in range(preload):
        await producer.send(TOPICS[i % len(TOPICS)], key=str(i % 5000).encode(), value=filler)
    await producer.flush()
    consumer = AIOKafkaConsumer(
        *TOPICS, bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        auto_offset_reset="latest",
    )  # fmt: skip
    await consumer.start()
    delays: list[float] = []
    fetches = 0
    stop = asyncio.Event()

    async def read() -> None:
        nonlocal fetches
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            now = time.time()
            if batch:
                fetches += 1
            # the preload's records are skipped: Tansu's "latest" offset can be short of the log end (the rest of
            # the last batch produced; docs/architecture.md), so the consumer may start among them
            delays.extend(
                now - float(r.value[:20]) for records in batch.values() for r in records if r.value[:1] != filler[:1]
            )

    try:
        reader = asyncio.ensure_future(read())
        await asyncio.sleep(SETTLE_SECONDS)  # the consumer at the log ends before the timed traffic
        delays.clear()
        fetches = 0
        cpu0, started = cpu_seconds(pid), time.monotonic()
        sent = 0
        while time.monotonic() < started + seconds:
            due = int((time.monotonic() - started) * rate) - sent
            for _ in range(max(0, due)):
                value = f"{time.time():<20.6f}".encode() + filler[20:]
                await producer.send(TOPICS[sent % len(TOPICS)], key=str(sent % 5000).encode(), value=value)
                sent += 1
            await asyncio.sleep(0.002)
        await producer.flush()
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu0
        deadline = time.monotonic() + DRAIN_SECONDS
        while len(delays) < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await reader
    finally:
        await consumer.stop()
        await producer.stop()
    delays.sort()
    n = len(delays)
    return {
        "preload": preload,
        "sent": sent,
        "received": n,
        "broker_core_share": round(cpu / elapsed, 2),
        "fetches_per_second": round(fetches / elapsed, 1),
        "delivery_p50_ms": round(1000 * delays[n // 2], 1) if n else float("nan"),
        "delivery_p99_ms": round(1000 * delays[min(n - 1, int(n * 0.99))], 1) if n else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", choices=("tansu", "kafka"), default="tansu")
    p.add_argument("--preload", default="0,600000", help="records held before the timed traffic, comma-separated")
    p.add_argument("--rate", type=float, default=1000.0, help="records/s of the timed traffic")
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    start = {"tansu": start_tansu, "kafka": start_kafka}[args.broker]
    for preload in [int(x) for x in args.preload.split(",") if x.strip()]:
        server = start(Path(tempfile.mkdtemp(prefix="held-records-")))  # a fresh broker for each
        try:
            out = asyncio.run(measure(f"127.0.0.1:{server.port}", server.proc.pid, preload, args.rate, args.seconds))
        finally:
            server.stop()
        print({"broker": args.broker, "rate": args.rate, **out}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
