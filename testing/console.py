"""The service console served in-process for tests and benchmarks (``streams.console``), on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from aiohttp import web

from pulse.devstack import free_port
from pulse_config.settings import Settings
from streams.console.app import CONSOLE, REDIS_TIMEOUT_SECONDS, Console, build_console
from streams.security import redis_client_kwargs


@asynccontextmanager
async def serve_console(settings: Settings, client: aioredis.Redis | None = None) -> AsyncIterator[tuple[str, Console]]:
    """Yield the console's base URL and its :class:`Console`; stopped (live streams ended) on the way out.

    Without ``client`` it opens its own decoding Redis client on ``settings.redis_url`` and closes it after;
    a given one is left open. No actions producer: the pages read, acting needs ``pulse console``.
    """
    own = client is None
    # the client `pulse console` makes: its password, CA file and time bound (streams.console.app.serve_console)
    bounds = redis_client_kwargs(settings, REDIS_TIMEOUT_SECONDS)
    redis_client = aioredis.from_url(settings.redis_url, decode_responses=True, **bounds) if own else client
    app = build_console(settings, redis_client, None)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", app[CONSOLE]
    finally:
        app[CONSOLE].stopping.set()
        await runner.cleanup()
        if own:
            await redis_client.aclose()
