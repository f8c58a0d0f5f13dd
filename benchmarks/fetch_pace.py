"""Fetches per second on live traffic, and their cost, by ``fetch_min_bytes`` and ``fetch_max_wait_ms``.

Issue 18, the fixed costs of a live batch: on Kafka a fetch returns as soon as ``fetch_min_bytes`` are there
(aiokafka's default, and Faust's: 1 byte), so a consumer of a steady stream fetches again and again with a few
records each; every fetch is a round trip through the consumer thread's event loop, the cross-thread hand-over to
the main thread, and the broker's own work on the same cores. This probe starts its own broker, produces live
traffic as ``pulse bench``'s latency phase does (every 2 ms what fell due at ``--rate`` events/s, ``linger_ms=1``,
``acks=all``, four topics of four partitions, ~300-byte events) from a separate process, and reads it with one
aiokafka consumer per setting; per setting it prints the fetches per second, records per fetch, the consumer's own
CPU per event, the broker's CPU per event (both from /proc: load-independent yardsticks) and the delivery delay
(production to receipt, p50 / p99 / max).

With ``--preload N,...`` it runs once per count on a fresh broker that first holds that many records (~300
bytes each, over the same topics), and each row also gives the broker's share of a core: what serving the same
live traffic costs a broker by what it already holds. Tansu keeps its logs in memory with no retention; in session
15 the same 1,000 records/s cost it more CPU, and the worker's live alerts took seconds, once it held a few
hundred thousand records (docs/benchmarks.md). Apache Kafka for comparison.

    .venv/bin/python -m benchmarks.fetch_pace [--broker kafka|tansu] [--rate 3000] [--seconds 10]
        [--settings 1:100,16384:10,65536:20]     # fetch_min_bytes:fetch_max_wait_ms, comma-separated
        [--preload 0,300000,600000]               # records held before the live traffic, a fresh broker each
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

TOPICS = ("orders", "surveys", "complaints", "support-tickets")
PARTITIONS = 4
#: a live event's size on the wire, about (the generator's order events are 250-350 bytes)
PAD = "x" * 240
TICK_SECONDS = 0.002
#: the preload's value: no "t", so the consumer (which may start among the preload's last records: Tansu's
#: "latest" offset can be short of the log end, docs/architecture.md) skips it
PRELOAD_VALUE = orjson.dumps({"pad": PAD})


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _produce(bootstrap: str, rate: float, seconds: float) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    try:
        sent = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * rate) - sent
            for _ in range(max(0, due)):
                value = orjson.dumps({"t": time.time(), "n": sent, "pad": PAD})
                key = f"c{sent % 5000}".encode()
                await producer.send(TOPICS[sent % len(TOPICS)], key=key, value=value)
                sent += 1
            await asyncio.sleep(TICK_SECONDS)
        await producer.flush()
    finally:
        await producer.stop()


async def _preload(bootstrap: str, records: int) -> None:
    """``records`` records the broker holds before the timed traffic, round robin over the topics."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for n in range(records):
            await producer.send(TOPICS[n % len(TOPICS)], key=f"c{n % 5000}".encode(), value=PRELOAD_VALUE)
        await producer.flush()
    finally:
        await producer.stop()


def _delays(batch: dict, now: float) -> list[float]:
    """Production to receipt of a fetched batch's timed records (a preload record has no time)."""
    out = []
    for records in batch.values():
        for r in records:
            t = orjson.loads(r.value).get("t")
            if t is not None:
                out.append(now - t)
    return out


async def _consume(
    bootstrap: str, min_bytes: int, max_wait_ms: int, producer: list[str], broker_pid: int
) -> dict[str, Any]:
    """Read the traffic ``producer`` (a command) makes, counting the fetch responses aiokafka processes; the
    broker's CPU is taken from the first timed record received to the last (the producer's start is not in it)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.consumer import fetcher

    counts = {"fetches": 0}
    original = fetcher.Fetcher._proc_fetch_request

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["fetches"] += 1
        return await original(self, *args, **kwargs)

    fetcher.Fetcher._proc_fetch_request = counted  # type: ignore[method-assign]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        fetch_min_bytes=min_bytes,
        fetch_max_wait_ms=max_wait_ms,
    )
    await consumer.start()
    delays: list[float] = []
    try:
        tps = [TopicPartition(t, p) for t in TOPICS for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        await asyncio.sleep(0.5)  # the first fetches out
        proc = subprocess.Popen(producer)
        counts["fetches"] = 0
        cpu0 = time.process_time()
        started = time.monotonic()
        first: tuple[float, float] | None = None  # (monotonic, broker CPU seconds) at the first timed record
        last: tuple[float, float] | None = None
        rounds_after = 5  # polls after the producer exited: what it flushed last
        while proc.poll() is None or time.monotonic() - started < 1 or rounds_after > 0:
            if proc.poll() is not None:
                rounds_after -= 1
            got = _delays(await consumer.getmany(timeout_ms=200), time.time())
            if got:
                last = (time.monotonic(), cpu_seconds(broker_pid))
                first = first or last
                delays.extend(got)
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu0
    finally:
        await consumer.stop()
        fetcher.Fetcher._proc_fetch_request = original  # type: ignore[method-assign]
    delays.sort()
    n = len(delays)
    return {
        "seconds": round(elapsed, 2),
        "broker_core_share": (
            round((last[1] - first[1]) / (last[0] - first[0]), 2) if first and last and last[0] > first[0] else None
        ),
        "events": n,
        "fetches": counts["fetches"],
        "fetches_per_second": round(counts["fetches"] / elapsed),
        "records_per_fetch": round(n / max(1, counts["fetches"]), 1),
        "consumer_cpu_us_per_event": round(cpu / max(1, n) * 1e6, 1),
        "delay_p50_ms": round(delays[n // 2] * 1000, 1) if n else None,
        "delay_p99_ms": round(delays[min(n - 1, int(n * 0.99))] * 1000, 1) if n else None,
        "delay_max_ms": round(delays[-1] * 1000, 1) if n else None,
    }


async def create_topics(bootstrap: str) -> None:
    """The four input topics of four partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in TOPICS])
    finally:
        await admin.close()
    await asyncio.sleep(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", default="kafka", choices=("kafka", "tansu"))
    p.add_argument("--rate", type=float, default=3000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--settings", default="1:100,16384:10,65536:20", help="fetch_min_bytes:fetch_max_wait_ms, ...")
    p.add_argument("--preload", default="0", help="records a fresh broker holds before the traffic, comma-separated")
    p.add_argument("--produce", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.produce:
        asyncio.run(_produce(args.produce, args.rate, args.seconds))
        return 0
    from pulse.devstack import start_kafka, start_tansu

    for preload in [int(x) for x in args.preload.split(",") if x.strip()]:
        log_dir = Path(tempfile.mkdtemp(prefix="fetch-pace-"))
        server = start_kafka(log_dir) if args.broker == "kafka" else start_tansu(log_dir)  # a fresh one each
        bootstrap = f"127.0.0.1:{server.port}"
        try:
            asyncio.run(create_topics(bootstrap))
            if preload:
                asyncio.run(_preload(bootstrap, preload))
            producer = [sys.executable, "-m", "benchmarks.fetch_pace", "--produce", bootstrap]
            producer += ["--rate", str(args.rate), "--seconds", str(args.seconds)]
            for setting in args.settings.split(","):
                min_bytes, max_wait = (int(x) for x in setting.split(":"))
                broker0 = cpu_seconds(server.proc.pid)
                row = asyncio.run(_consume(bootstrap, min_bytes, max_wait, producer, server.proc.pid))
                broker_cpu = cpu_seconds(server.proc.pid) - broker0
                row = {
                    "broker": args.broker,
                    "preload": preload,
                    "fetch_min_bytes": min_bytes,
                    "fetch_max_wait_ms": max_wait,
                    **row,
                    "broker_cpu_us_per_event": round(broker_cpu / max(1, row["events"]) * 1e6, 1),
                }
                print(orjson.dumps(row).decode(), flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
