"""The console's queue order and its population trends over real HTTP and a real redis-server (no broker: the console
app in-process, without its producer or feed).

* The queue is in priority order: a high-risk customer worth little comes before a medium-risk customer worth a
  lot, the page shows each row's place and priority, and a minimum value keeps that order.
* The population panel's trends survive a restart: one console records readings (as its refresh loop does after
  each population read), is stopped, and a new console, started the way ``pulse console`` starts (its refresh
  loop, here with a broker that is not there), shows the values and trend lines read back from Redis; two
  consoles write one series at the configured spacing, capped at the configured number of points.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import aiohttp
import pytest
import redis.asyncio as aioredis

from pulse.devstack import Server, free_port, start_redis
from pulse_config.settings import Settings
from schemas.profile import CustomerProfile, render_profile
from scoring.customer import assess_customer
from streams.console.trends import INDICATORS, Point, trend_key
from streams.sinks.redis_profiles import RedisProfileSink, profile_key
from testing.console import serve_console
from testing.stack import CONVERGE_SECONDS
from testing.templates import template_states

pytestmark = pytest.mark.e2e

TOKEN = "console-order-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROW = re.compile(r'<tr data-customer-id="([^"]+)" data-priority="(\w+)"[^>]*>\s*<td class="num rank">(\d+)</td>')


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_redis(tmp_path_factory.mktemp("console-order-redis"))
    yield srv
    srv.stop()


def settings_for(redis_server: Server, prefix: str, **extra: object) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        redis_key_prefix=prefix,
        api_token=TOKEN,
        # nothing listens there: the population read fails at once, as with a broker that is down
        broker_url=f"kafka://127.0.0.1:{free_port()}",
        **extra,
    )


async def get(url: str) -> str:
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(url) as r:
            assert r.status == 200, (url, r.status)
            return await r.text()


async def test_a_high_risk_customer_worth_little_comes_before_a_medium_risk_one_worth_much(redis_server: Server):
    settings = settings_for(redis_server, f"ord{uuid.uuid4().hex[:6]}:")
    templates = template_states(300, 7)
    config = settings.scoring()
    scored = []
    for n, state in enumerate(templates.states):
        clv, risk = assess_customer(state, templates.clock_ms, 30.0, config)
        if risk.level in ("medium", "high"):
            scored.append(render_profile(f"T{n:04d}", state, templates.clock_ms, config, "USD", clv, risk))
    sink = RedisProfileSink(settings.redis_url, settings.redis_key_prefix, 1.0)
    sink.submit(scored)
    assert await sink.flush()
    await sink.close()
    client = aioredis.from_url(settings.redis_url, decode_responses=True)
    profiles = {}
    for p in scored:
        fields = await client.hgetall(profile_key(settings.redis_key_prefix, p.customer_id))
        profiles[p.customer_id] = CustomerProfile.from_redis(fields)
    await client.aclose()
    high = [c for c, p in profiles.items() if p.churn_level == "high"]
    medium = [c for c, p in profiles.items() if p.churn_level == "medium"]
    cheap_high = min(high, key=lambda c: (profiles[c].value_at_risk, c))
    dear_medium = max(medium, key=lambda c: (profiles[c].value_at_risk, c))
    assert profiles[cheap_high].value_at_risk < profiles[dear_medium].value_at_risk, "the story needs the pair"

    async with serve_console(settings) as (base, _):
        rows: list[tuple[str, str, int]] = []
        offset = 0
        while True:  # every page of the unfiltered queue, as a person pages it
            page = await get(f"{base}/fragments/queue?offset={offset}")
            found = [(cid, level, int(rank)) for cid, level, rank in ROW.findall(page)]
            if not found:
                break
            rows += found
            offset += len(found)
            assert offset <= len(scored)
        assert "by priority: high risk first" in page
        assert [r[2] for r in rows] == list(range(1, len(rows) + 1))  # the place shown is the place
        ids = [r[0] for r in rows]
        assert sorted(ids) == sorted(profiles)
        assert all(profiles[cid].churn_level == level for cid, level, _ in rows)  # the priority shown is the level
        assert ids.index(cheap_high) < ids.index(dear_medium)
        expected = sorted(profiles, key=lambda c: (profiles[c].churn_level != "high", -profiles[c].value_at_risk, c))
        assert ids == expected
        # a minimum value below both keeps priority first: the high one still leads the medium one
        low = min(profiles[cheap_high].value_at_risk, Decimal("0.01"))
        first = [cid for cid, _, _ in ROW.findall(await get(f"{base}/fragments/queue?min_value={low}"))]
        assert first == expected[: len(first)] and first[0] in high


def reading(at_ms: int, n: int) -> Point:
    return Point(at_ms, 1000 + n, {name: (0.1 * (n % 7) if name != "nps" else float(n)) for name in INDICATORS})


async def test_population_trends_survive_a_console_restart(redis_server: Server):
    prefix = f"trd{uuid.uuid4().hex[:6]}:"
    settings = settings_for(redis_server, prefix, console_trend_seconds=60.0, console_trend_points=5)
    minute = 60_000
    start = int(time.time() * 1000) - 10 * minute
    async with serve_console(settings) as (base, first):
        before = await get(base + "/fragments/population")
        assert "<polyline" not in before and "trends since" not in before  # nothing recorded yet
        # two consoles read every 15 s or so: the series gets one point a minute, whoever recorded it
        async with serve_console(settings) as (_, second):
            for n in range(8):
                await first.record_population(reading(start + n * minute, n))
                await second.record_population(reading(start + n * minute + 15_000, n))
                await first.record_population(reading(start + n * minute + 30_000, n))
            assert [p.at_ms for p in second.population.trend][-2:] == [start + 6 * minute, start + 7 * minute]
        shown = await get(base + "/fragments/population")
        assert shown.count("<polyline") >= 7 and "(1007 customers)" in shown
    client = aioredis.from_url(settings.redis_url, decode_responses=True)
    stored = await client.lrange(trend_key(prefix), 0, -1)
    await client.aclose()
    # capped at console_trend_points, newest first, one per minute
    assert [Point.from_entry(e).at_ms for e in stored] == [start + n * minute for n in (7, 6, 5, 4, 3)]

    # the restart: a new console, started as pulse console starts it (its population loop; no broker there)
    async with serve_console(settings) as (base, console):
        loop = asyncio.ensure_future(console.refresh_population())
        try:
            deadline = time.monotonic() + CONVERGE_SECONDS
            while len(console.population.trend) < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            page = await get(base + "/fragments/population")
        finally:
            console.stopping.set()
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
    assert page.count("<polyline") >= 7, page  # every indicator with values has its trend line back
    assert "trends since" in page
    nps = re.search(r"<th>NPS</th><td class=\"num\">([^<]+)</td>", page)
    assert nps is not None and nps.group(1) == "+7.0"  # the latest reading's value, before any new reading
