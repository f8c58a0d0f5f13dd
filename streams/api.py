"""The worker's HTTP API: live profiles and the VIP list from Redis, health and readiness.

A small aiohttp app served by each worker (``PULSE_API_PORT``, 0: off) on the
worker's event loop. It reads Redis only, with ``redis.asyncio``, so a request
never blocks the scoring agent; any worker answers for any customer (Redis is
the shared view), so a load balancer can spread requests over all of them.

* ``GET /customers/{customer_id}``: the profile, every field the profile
  model has (scores, segment, VIP flag, churn fields once they exist); 404 for
  an unknown customer, 400 for an id the event schema would reject. An id
  containing ``/`` is sent percent-encoded (``%2F``).
* ``GET /vips?offset=0&limit=50``: a page of the VIP sorted set, highest value
  first, with the total and the next offset (null on the last page).
* ``GET /health``: 200 while the process serves HTTP (liveness: a long table
  recovery is not a reason to restart the worker).
* ``GET /ready``: 200 once the Faust app runs, has finished its first table
  recovery (it then has an assignment, possibly empty) and Redis answers;
  503 with the reason otherwise (readiness: send API traffic elsewhere).

With ``PULSE_API_TOKEN`` set, every endpoint but /health and /ready requires
``Authorization: Bearer <token>`` (401 otherwise).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import redis.asyncio as aioredis
from aiohttp import web
from mode import Service
from redis.exceptions import RedisError

from pulse.settings import Settings
from schemas.events import ID_PATTERN
from schemas.profile import CustomerProfile
from streams.security import redis_client_kwargs
from streams.sinks.redis_profiles import profile_key, vip_key

log = logging.getLogger(__name__)

#: Page size of GET /vips without ``limit`` (capped by ``api_max_page_size``).
DEFAULT_PAGE_SIZE = 50
#: A request (and a readiness probe) must answer quickly even when Redis hangs.
REDIS_TIMEOUT_SECONDS = 1.0
#: Endpoints open without a token: probes of the orchestrator.
OPEN_PATHS = frozenset({"/health", "/ready"})

_ID = re.compile(ID_PATTERN)

#: Returns None when ready, else the reason (shown in the 503 body).
Readiness = Callable[[], Awaitable[str | None]]


def _error(status: int, error: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers or None)


def build_api(settings: Settings, client: aioredis.Redis, readiness: Readiness) -> web.Application:
    """The aiohttp application; ``client`` is a decode_responses redis.asyncio client."""
    prefix = settings.redis_key_prefix
    token = settings.api_token.get_secret_value().encode()
    max_page = settings.api_max_page_size

    @web.middleware
    async def bearer_auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if token and request.path not in OPEN_PATHS:
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            # constant-time comparison: the response time must not reveal a prefix of the token
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
                return _error(401, "unauthorized", "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        return await handler(request)

    async def get_customer(request: web.Request) -> web.Response:
        customer_id = request.match_info["customer_id"]
        if not _ID.match(customer_id):
            return _error(400, "malformed_id", f"customer id must match {ID_PATTERN}")
        try:
            fields = await client.hgetall(profile_key(prefix, customer_id))
        except (RedisError, OSError) as exc:
            return _error(503, "redis_unavailable", repr(exc))
        if not fields:
            return _error(404, "unknown_customer", f"no profile for {customer_id}")
        return web.json_response(CustomerProfile.from_redis(fields).model_dump(mode="json"))

    async def get_vips(request: web.Request) -> web.Response:
        try:
            offset = int(request.query.get("offset", "0"))
            limit = int(request.query.get("limit", str(min(DEFAULT_PAGE_SIZE, max_page))))
        except ValueError:
            return _error(400, "bad_paging", "offset and limit must be integers")
        if offset < 0 or not 1 <= limit <= max_page:
            return _error(400, "bad_paging", f"offset must be >= 0 and limit within 1..{max_page}")
        key = vip_key(prefix)
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.zcard(key)
                pipe.zrevrange(key, offset, offset + limit - 1, withscores=True)
                total, page = await pipe.execute()
        except (RedisError, OSError) as exc:
            return _error(503, "redis_unavailable", repr(exc))
        end = offset + len(page)
        return web.json_response(
            {
                "total": total,
                "offset": offset,
                "limit": limit,
                "next_offset": end if end < total else None,
                "value": settings.vip_value,
                "vips": [{"customer_id": cid, "value": score} for cid, score in page],
            }
        )

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def ready(_: web.Request) -> web.Response:
        reason = await readiness()
        if reason is not None:
            return web.json_response({"status": "not_ready", "reason": reason}, status=503)
        return web.json_response({"status": "ready"})

    api = web.Application(middlewares=[bearer_auth])
    api.router.add_get("/customers/{customer_id}", get_customer)
    api.router.add_get("/vips", get_vips)
    api.router.add_get("/health", health)
    api.router.add_get("/ready", ready)
    return api


def faust_readiness(app: faust.App, client: aioredis.Redis) -> Readiness:
    """Ready = the app runs, its first table recovery is done, and Redis answers a PING."""

    async def check() -> str | None:
        if app.should_stop:
            return "stopping"
        if not app.started:
            return "starting"
        if not app.tables.recovery.completed.is_set():
            return "recovering tables"
        try:
            await asyncio.wait_for(client.ping(), timeout=REDIS_TIMEOUT_SECONDS)
        except (RedisError, OSError, TimeoutError) as exc:
            return f"redis unavailable: {exc!r}"
        return None

    return check


class ApiServer(Service):
    """Serves :func:`build_api` for the worker; started before the Faust app so /health answers during recovery."""

    def __init__(self, settings: Settings, app: faust.App, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.faust_app = app
        self._client: aioredis.Redis | None = None
        self._runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        settings = self.settings
        self._client = aioredis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            **redis_client_kwargs(settings),
        )
        api = build_api(settings, self._client, faust_readiness(self.faust_app, self._client))
        self._runner = web.AppRunner(api, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, settings.api_host, settings.api_port).start()
        log.info("HTTP API on http://%s:%d", settings.api_host, settings.api_port)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.aclose()
