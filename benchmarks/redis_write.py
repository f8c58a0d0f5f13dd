"""How long one profile write takes Redis, by the number of profiles it carries (session 26).

Usage::

    .venv/bin/python -m benchmarks.redis_write [--sizes 2000,20000,200000] [--rounds 3]
    .venv/bin/python -m benchmarks.redis_write --fence [--sizes 10,100,500,2000] [--rounds 5]

Why: the worker's profile writer reads all the replies of one write under one socket timeout
(``PULSE_REDIS_TIMEOUT_SECONDS``, 5 s by default). After a Redis outage, the profiles pending can be every customer
of the worker (the target is 1M); written in one round trip they could outlast the timeout, fail, and be retried
for ever. This times ``pack_batch`` + one round trip on a real ``redis-server`` (a private one on a free port) for
each size, as one write and in round trips of ``WRITE_CHUNK_PROFILES``, back to back, and prints the seconds and
the µs per profile. Profiles are realistic (the templates' rendered profiles, distinct customer ids).

``--fence`` (session 31) compares instead, back to back in alternating rounds, the write without a fence and the
fenced write the worker makes (fences read with WATCH + MGET, then MULTI/EXEC: one more round trip and a QUEUED
reply per command), at live and backlog batch sizes, with the writer's CPU seconds besides the wall time
(Redis runs on the same box, so the wall time counts its work too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from msgspec.structs import replace

from pulse.devstack import start_redis
from pulse_config.settings import Settings
from schemas.profile import render_profile
from scoring.customer import assess_customer
from streams.partitioning import partitioner
from streams.sinks.redis_profiles import (
    WRITE_CHUNK_PROFILES,
    Packed,
    ProfileFence,
    RedisProfileSink,
    pack_batch,
    pack_profile,
    write_chunks,
)
from testing.templates import template_states

#: seconds: long enough for any size measured here (the point is to time the write, not to bound it)
NO_BOUND_SECONDS = 600.0


def packed_profiles(n: int, prefix: str) -> dict[str, Packed]:
    settings = Settings(_env_file=None)
    config = settings.scoring()
    templates = template_states(200, 7)
    out: dict[str, Packed] = {}
    states = templates.states
    for i in range(n):
        state = states[i % len(states)]
        if i % 10 == 0:
            state = replace(state, vip=True)
        clv, risk = assess_customer(state, templates.clock_ms, 30.0, config)
        profile = render_profile(f"B{i:07d}", state, templates.clock_ms, config, "USD", clv, risk)
        out[profile.customer_id] = pack_profile(profile, prefix, settings.vip_value)
    return out


async def timed(sink: RedisProfileSink, batch: dict[str, Packed], prefix: str, chunk: int) -> float:
    started = time.perf_counter()
    for part in write_chunks(batch, chunk):
        await sink._write(*pack_batch(part, prefix))
    return time.perf_counter() - started


async def timed_fence(
    sink: RedisProfileSink, batch: dict[str, Packed], fence: ProfileFence | None
) -> tuple[float, float]:
    """Wall and CPU seconds of writing ``batch`` in round trips of WRITE_CHUNK_PROFILES, fenced or not."""
    started, cpu = time.perf_counter(), time.process_time()
    for part in write_chunks(batch, WRITE_CHUNK_PROFILES):
        if fence is None:
            await sink._write(*pack_batch(part, "bench:"))
        else:
            await sink._write_fenced(part, fence)
    return time.perf_counter() - started, time.process_time() - cpu


async def compare_fence(sizes: list[int], rounds: int) -> None:
    settings = Settings(_env_file=None)
    partition_of = partitioner(settings.partitions)
    fence = ProfileFence(lambda cid: partition_of(cid.encode()), lambda p: (1, 0))
    repeats = {n: max(1, 20_000 // n) for n in sizes}  # small batches are timed over many writes
    async with bench_sink() as sink:
        items = list(packed_profiles(max(sizes), "bench:").items())
        print(f"{settings.partitions} partitions; µs per profile, wall (writer CPU); >= 20,000 profiles per size")
        for n in sizes:
            batch = dict(items[:n])
            for r in range(rounds):
                row = []
                for label, f in (("unfenced", None), ("fenced", fence)):
                    wall = cpu = 0.0
                    for _ in range(repeats[n]):
                        w, c = await timed_fence(sink, batch, f)
                        wall, cpu = wall + w, cpu + c
                    per = 1e6 / (n * repeats[n])
                    row.append(f"{label} {wall * per:6.1f} ({cpu * per:5.1f})")
                print(f"{n:>6,} profiles per write, round {r + 1}: " + "; ".join(row), flush=True)


@contextlib.asynccontextmanager
async def bench_sink() -> AsyncIterator[RedisProfileSink]:
    """A profile sink on a private redis-server (on a free port, in a temporary directory), stopped after."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp))
        url = f"redis://127.0.0.1:{server.port}/0"
        sink = RedisProfileSink(
            url, "bench:", 1.0, client_kwargs={"socket_timeout": NO_BOUND_SECONDS, "socket_connect_timeout": 5.0}
        )
        try:
            yield sink
        finally:
            await sink.close()
            server.stop()


async def main(sizes: list[int], rounds: int) -> None:
    async with bench_sink() as sink:
        items = list(packed_profiles(max(sizes), "bench:").items())
        print(f"profiles per round trip when chunked: {WRITE_CHUNK_PROFILES:,}")
        for n in sizes:
            batch = dict(items[:n])
            for r in range(rounds):
                one = await timed(sink, batch, "bench:", n)
                chunked = await timed(sink, batch, "bench:", WRITE_CHUNK_PROFILES)
                print(
                    f"{n:>9,} profiles, round {r + 1}: one round trip {one:7.3f} s ({1e6 * one / n:5.1f} µs each); "
                    f"chunked {chunked:7.3f} s ({1e6 * chunked / n:5.1f} µs each)",
                    flush=True,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000,200000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fence", action="store_true", help="compare the fenced write with the unfenced one")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    asyncio.run(compare_fence(sizes, args.rounds) if args.fence else main(sizes, args.rounds))
