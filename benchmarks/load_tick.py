"""What a load generator's tick costs the broker and itself: CPU per event by how often it hands records over.

``pulse bench``'s latency phase produces live traffic on the two cores the worker, the broker and Redis
share. It hands each tick's due events to the producer together (one record batch per topic-partition,
``streams.publish.BatchPublisher``); the shorter the tick, the more produce requests per event, and each
request costs the broker and the producer CPU whatever it carries. This starts its own broker, produces
``--rate`` events/s of ~180-byte records over 4 topics x 4 partitions for ``--seconds`` at each tick, and
prints the broker's CPU (``/proc``) and this process's CPU per event. Ticks run twice, alternating, on one
broker (the box is noisy). The records are not scored: no worker, no Redis.

    .venv/bin/python -m benchmarks.load_tick [--broker tansu|kafka] [--rate 7000] [--seconds 12] [--ticks 2,5,10]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from benchmarks.changelog_batch import create_topic
from benchmarks.phases.common import cpu_seconds
from pulse.devstack import start_kafka, start_tansu
from streams.publish import BatchPublisher, OutputRecord

TOPICS = ("load-orders", "load-surveys", "load-complaints", "load-support")
PARTITIONS = 4
CUSTOMERS = 5_000
#: the broker's start and the topics' creation, before the first run
SETTLE_SECONDS = 2.0


def broker_cpu_seconds(pid: int) -> float:
    """The broker's CPU so far (it must be running)."""
    seconds = cpu_seconds(pid)
    if seconds is None:
        raise RuntimeError(f"the broker (pid {pid}) is gone")
    return seconds


async def one_run(bootstrap: str, broker_pid: int, rate: float, tick: float, seconds: float) -> dict[str, float]:
    """``rate`` events/s for ``seconds``, handed over every ``tick`` seconds; CPU per event of both sides."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    publisher = BatchPublisher(lambda: producer)
    value = orjson.dumps(
        {
            "event_id": "live-0000000000",
            "customer_id": "C000000",
            "occurred_at": "2026-11-30T00:00:00.000+00:00",
            "order_id": "LO000000000",
            "amount": 12.5,
            "currency": "USD",
            "status": "completed",
        }
    )
    sent = 0
    try:
        broker_before, own_before = broker_cpu_seconds(broker_pid), time.process_time()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * rate) - sent
            if due > 0:
                records = [
                    OutputRecord(TOPICS[n % len(TOPICS)], f"C{n % CUSTOMERS:06d}".encode(), value)
                    for n in range(sent, sent + due)
                ]
                await asyncio.gather(*await publisher.publish(records))
                sent += due
            await asyncio.sleep(tick)
        await producer.flush()
        broker, own = broker_cpu_seconds(broker_pid) - broker_before, time.process_time() - own_before
    finally:
        await producer.stop()
    return {
        "tick_ms": tick * 1000,
        "events": sent,
        "broker_us_per_event": round(broker / sent * 1e6, 1),
        "broker_cores": round(broker / seconds, 2),
        "producer_us_per_event": round(own / sent * 1e6, 1),
    }


async def main(args: argparse.Namespace) -> None:
    log_dir = Path(tempfile.mkdtemp(prefix="load-tick-"))
    server = start_tansu(log_dir) if args.broker == "tansu" else start_kafka(log_dir)
    bootstrap = f"127.0.0.1:{server.port}"
    try:
        for topic in TOPICS:
            await create_topic(bootstrap, topic, PARTITIONS)
        await asyncio.sleep(SETTLE_SECONDS)
        ticks = [float(t) / 1000 for t in args.ticks.split(",")]
        print(f"{args.broker}, {args.rate:g} events/s, {args.seconds:g} s per run, ticks (ms): {args.ticks}")
        for _ in range(args.rounds):
            for tick in ticks:
                r = await one_run(bootstrap, server.proc.pid, args.rate, tick, args.seconds)
                print(
                    f"  tick {r['tick_ms']:4.0f} ms: {r['events']:,} events; broker {r['broker_us_per_event']:5.1f} µs"
                    f" per event ({r['broker_cores']:.2f} of a core), producer {r['producer_us_per_event']:5.1f} µs"
                    " per event",
                    flush=True,
                )
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu")
    parser.add_argument("--rate", type=float, default=7000.0)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--ticks", default="2,5,10", help="ticks in ms, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
