"""The service console's page load and filter response times over a large population.

Usage: .venv/bin/python -m benchmarks.console_load [--customers 100000] [--repeat 30]

Starts a redis-server, writes ``--customers`` realistic profiles straight into it through the worker's own
profile sink (so the at-risk index is the one the sink keeps: clones of customers scored from a simulated year,
each with its own id), marks a share of the at-risk customers as acknowledged/assigned/resolved through the
console's case store, then serves the console in this process (no broker: no population panel, no feed) and
times, over keep-alive HTTP from one client, each request ``--repeat`` times: the queue page, the queue
fragment with each kind of filter (and combinations, a deep page, the "open" status that subtracts sets), the
VIP fragment and a customer page. Prints the median and p95 in ms of each, and the time the sink took to write
the profiles with their index. Numbers are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from pulse.devstack import start_redis
from pulse_config.settings import Settings
from schemas.actions import ActionKind, Outcome, RetentionAction
from schemas.profile import render_profile
from scoring.customer import assess_customer
from streams.at_risk import AT_RISK_LEVELS, index_key
from streams.console.cases import apply_action
from streams.sinks.redis_profiles import RedisProfileSink
from testing.console import serve_console
from testing.templates import template_states

#: profiles handed to the sink per flush (the worker's batches are of this order)
WRITE_BATCH = 2_000
#: share of the at-risk customers with a case action (acknowledged, assigned or resolved)
ACTED_SHARE = 0.1


async def write_profiles(settings: Settings, customers: int) -> float:
    """Clones of a scored year's customers, each rendered under its own id; returns the seconds the sink took."""
    templates = template_states(2_000, 7)
    config = settings.scoring()
    sink = RedisProfileSink(settings.redis_url, settings.redis_key_prefix, 1.0, settings.vip_value)
    rendered = []
    for state in templates.states:
        clv, risk = assess_customer(state, templates.clock_ms, 30.0, config)
        rendered.append((state, clv, risk))
    seconds = 0.0
    try:
        for start in range(0, customers, WRITE_BATCH):
            batch = []
            for i in range(start, min(customers, start + WRITE_BATCH)):
                state, clv, risk = rendered[i % len(rendered)]
                batch.append(render_profile(f"C{i:07d}", state, templates.clock_ms, config, "USD", clv, risk))
            began = time.perf_counter()
            sink.submit(batch)
            assert await sink.flush()
            seconds += time.perf_counter() - began
    finally:
        await sink.close()
    return seconds


async def act_on_some(client: aioredis.Redis, prefix: str) -> int:
    """Acknowledge, assign or resolve the alerts of a share of the at-risk customers (the status/owner sets)."""
    ids = await client.zrange(index_key(prefix, "any"), 0, -1)
    rng = random.Random(3)
    acted = rng.sample(ids, int(len(ids) * ACTED_SHARE))
    at = datetime.now(UTC)
    for n, cid in enumerate(acted):
        kind = (ActionKind.ACKNOWLEDGED, ActionKind.ASSIGNED, ActionKind.RESOLVED)[n % 3]
        extra = {"assignee": f"team-{n % 5}"} if kind is ActionKind.ASSIGNED else {}
        if kind is ActionKind.RESOLVED:
            extra = {"outcome": Outcome.CONTACTED}
        action = RetentionAction(
            event_id=f"bench-{n}", customer_id=cid, occurred_at=at, alert_id=f"{cid}:churn:1", action=kind, **extra
        )
        await apply_action(client, prefix, action)
    return len(acted)


async def measure(base: str, paths: dict[str, str], repeat: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in paths}
    async with aiohttp.ClientSession() as http:
        for name, path in paths.items():
            async with http.get(base + path) as r:  # warm the connection and the route
                await r.read()
            for _ in range(repeat):
                began = time.perf_counter()
                async with http.get(base + path, headers={"HX-Request": "true"}) as r:
                    body = await r.read()
                    assert r.status == 200, (path, r.status, body[:200])
                out[name].append((time.perf_counter() - began) * 1000)
    return out


async def main(customers: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp))
        try:
            settings = Settings(
                _env_file=None, redis_url=f"redis://127.0.0.1:{server.port}/0", redis_key_prefix="bench:", api_token=""
            )
            prefix = settings.redis_key_prefix
            write_seconds = await write_profiles(settings, customers)
            client = aioredis.from_url(settings.redis_url, decode_responses=True)
            acted = await act_on_some(client, prefix)
            counts = {lvl: await client.zcard(index_key(prefix, lvl)) for lvl in (*AT_RISK_LEVELS, "any")}
            memory = (await client.info("memory"))["used_memory"]
            vip_risky = await client.zcard(index_key(prefix, "high:vip"))
            deep = max(0, counts["any"] - settings.console_page_size * 2)
            top_cid = (await client.zrange(index_key(prefix, "any"), 0, 0))[0]  # the queue's first
            # the top customer's segment, and the commonest reason
            segment = await client.hget(f"{prefix}profile:{top_cid}", "segment") or "at_risk"
            reason = "overdue"
            low_value = Decimal(await client.hget(f"{prefix}profile:{top_cid}", "value_at_risk") or "0") / 2
            paths = {
                "queue page (full HTML, VIPs)": "/",
                "queue, no filter": "/fragments/queue",
                "level=high": "/fragments/queue?level=high",
                "vip=true": "/fragments/queue?vip=true",
                "vip=false": "/fragments/queue?vip=false",
                "level=high & vip=true": "/fragments/queue?level=high&vip=true",
                f"segment={segment}": f"/fragments/queue?segment={segment}",
                f"reason={reason}": f"/fragments/queue?reason={reason}",
                "level=high & reason & segment": f"/fragments/queue?level=high&reason={reason}&segment={segment}",
                f"min_value={low_value:.2f}": f"/fragments/queue?min_value={low_value:.2f}",
                "status=open (at risk minus acted)": "/fragments/queue?status=open",
                "status=assigned & owner=team-2": "/fragments/queue?status=assigned&owner=team-2",
                f"deep page (offset {deep})": f"/fragments/queue?offset={deep}",
                "VIP list fragment": "/fragments/vips",
                "customer page": f"/customers/{top_cid}",
            }
            try:
                async with serve_console(settings, client) as (base, _):
                    times = await measure(base, paths, repeat)
            finally:
                await client.aclose()
        finally:
            server.stop()
    print(f"{customers:,} profiles written by the profile sink with the at-risk index in {write_seconds:.1f} s")
    print(f"redis used_memory {memory / 2**20:,.0f} MiB (profiles, VIP set, at-risk index, cases)")
    print(
        f"at risk: {counts['any']:,} ({counts['high']:,} high, {counts['medium']:,} medium; {vip_risky:,} VIP high); "
        f"{acted:,} with an action; page size {settings.console_page_size}; {repeat} requests each"
    )
    width = max(len(n) for n in times)
    print(f"{'request':<{width}}  median ms  p95 ms")
    for name, ms in times.items():
        p95 = statistics.quantiles(ms, n=20)[-1] if len(ms) >= 2 else ms[0]
        print(f"{name:<{width}}  {statistics.median(ms):9.1f}  {p95:6.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.customers, args.repeat))
