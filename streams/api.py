"""The worker's HTTP API: live profiles and the VIP list from Redis, health and readiness.

A small aiohttp app served by each worker (``PULSE_API_PORT``, 0: off) from a
**separate process** (:class:`ApiProcess`) with its own event loop and its own
Redis client: it reads Redis only, so it shares nothing with scoring but the
CPU, and it runs ``PULSE_API_NICE`` steps nicer than the worker, so under CPU
contention the kernel gives it a bounded share (nice 10: about a tenth of the
scoring process's). Any worker answers for any customer (Redis is the shared
view), so a load balancer can spread requests over all of them. The worker
tells the API process its state (starting, waiting for the broker or Redis,
recovering, running, stopping) through one shared integer (:class:`WorkerStatus`).

Limits: at most ``PULSE_API_MAX_CONNECTIONS`` open connections (more are
answered 503 and closed); a connection must deliver a complete request head
within ``PULSE_API_HEADER_TIMEOUT_SECONDS`` of opening or of its previous
response (slowloris), and a request body is drained for at most that long; a
request is answered within ``PULSE_API_REQUEST_TIMEOUT_SECONDS`` (503
otherwise). A header that is not valid UTF-8 (``Authorization: Bearer \\xff``)
is a 400, not a 500.

* ``GET /customers/{customer_id}``: the profile, every field the profile
  model has (scores, segment, VIP flag, churn fields once they exist); 404 for
  an unknown customer, 400 for an id the event schema would reject. An id
  containing ``/`` is sent percent-encoded (``%2F``).
* ``GET /vips?offset=0&limit=50``: a page of the VIP sorted set, highest value
  first, with the total and the next offset (null on the last page).
* ``GET /at-risk?level=&vip=&segment=&reason=&min_value=&offset=0&limit=50``:
  a page of the customers at medium/high churn risk, high risk first, then
  the highest value at risk (ties by customer id), from the at-risk index the profile sink keeps in Redis
  (``streams/at_risk.py``: no scan of the population); each filter is
  optional; the total and the next offset (null on the last page).
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
import ctypes
import hmac
import logging
import multiprocessing
import os
import re
import signal
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
import redis.asyncio as aioredis
from aiohttp import web
from mode import Service
from redis.exceptions import RedisError

from pulse_config.settings import Settings
from schemas.events import ID_PATTERN
from schemas.profile import CustomerProfile
from streams.at_risk import AtRiskQuery, BadFilter, at_risk_page
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
            try:
                # aiohttp keeps undecodable bytes as surrogates: such a header is malformed, not a server error
                given_bytes = given.strip().encode()
            except UnicodeEncodeError:
                return _error(400, "bad_header", "Authorization header is not valid UTF-8")
            # constant-time comparison: the response time must not reveal a prefix of the token
            if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, token):
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
        return web.json_response(CustomerProfile.from_redis(cast(dict[str, str], fields)).model_dump(mode="json"))

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

    async def get_at_risk(request: web.Request) -> web.Response:
        try:
            query = AtRiskQuery.from_params(request.query, min(DEFAULT_PAGE_SIZE, max_page), max_page)
        except BadFilter as exc:
            return _error(400, "bad_filter", str(exc))
        try:
            page = await at_risk_page(client, prefix, query)
        except (RedisError, OSError) as exc:
            return _error(503, "redis_unavailable", repr(exc))
        return web.json_response(page.to_json())

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def ready(_: web.Request) -> web.Response:
        reason = await readiness()
        if reason is not None:
            return web.json_response({"status": "not_ready", "reason": reason}, status=503)
        return web.json_response({"status": "ready"})

    @web.middleware
    async def bounded(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            async with asyncio.timeout(request_timeout):
                return await handler(request)
        except TimeoutError:
            return _error(503, "timeout", f"no answer within {request_timeout:g}s")
        except UnicodeError:
            return _error(400, "bad_request", "undecodable request")

    request_timeout = settings.api_request_timeout_seconds
    api = web.Application(middlewares=[bounded, bearer_auth])
    api.router.add_get("/customers/{customer_id}", get_customer)
    api.router.add_get("/vips", get_vips)
    api.router.add_get("/at-risk", get_at_risk)
    api.router.add_get("/health", health)
    api.router.add_get("/ready", ready)
    return api


class WorkerStatus:
    """The worker's state as the API process sees it: one integer in shared memory, written by the worker."""

    STARTING, WAITING_BROKER, WAITING_REDIS, RECOVERING, RUNNING, STOPPING = range(6)
    REASONS = {
        STARTING: "starting",
        WAITING_BROKER: "waiting for the broker",
        WAITING_REDIS: "waiting for redis",
        RECOVERING: "recovering tables",
        STOPPING: "stopping",
    }

    def __init__(self, shared: Any = None) -> None:
        #: a multiprocessing.Value("i") (lock-free: one writer, aligned int); a plain holder without one
        self.shared = shared if shared is not None else multiprocessing.get_context("spawn").RawValue(ctypes.c_int)

    def set(self, code: int) -> None:
        self.shared.value = code

    def get(self) -> int:
        return self.shared.value

    def reason(self) -> str | None:
        """None while running, else why the worker is not (yet) ready."""
        code = self.get()
        return None if code == self.RUNNING else self.REASONS.get(code, f"unknown state {code}")


def status_readiness(status: WorkerStatus, client: aioredis.Redis) -> Readiness:
    """Ready = the worker runs with its first table recovery done, and Redis answers a PING."""

    async def check() -> str | None:
        reason = status.reason()
        if reason is not None:
            return reason
        try:
            await asyncio.wait_for(client.ping(), timeout=REDIS_TIMEOUT_SECONDS)
        except (RedisError, OSError, TimeoutError) as exc:
            return f"redis unavailable: {exc!r}"
        return None

    return check


def faust_state(app: faust.App) -> int:
    """The :class:`WorkerStatus` code of a Faust app."""
    if app.should_stop:
        return WorkerStatus.STOPPING
    if not app.started:
        return WorkerStatus.STARTING
    if not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]  # TableManager has it
        return WorkerStatus.RECOVERING
    return WorkerStatus.RUNNING


class StatusPublisher(Service):
    """Keeps :class:`WorkerStatus` current from the Faust app (a read of three flags every 0.2 s)."""

    def __init__(self, app: faust.App, status: WorkerStatus, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.faust_app = app
        self.status = status

    @Service.task
    async def _publish(self) -> None:
        while not self.should_stop:
            self.status.set(faust_state(self.faust_app))
            await self.sleep(STATUS_PERIOD_SECONDS)

    async def on_stop(self) -> None:
        self.status.set(WorkerStatus.STOPPING)


#: How often the worker refreshes its status for the API process.
STATUS_PERIOD_SECONDS = 0.2
#: The answer to a connection beyond ``api_max_connections``.
BUSY_RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(BUSY_RESPONSE)  # type: ignore[attr-defined]
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted against the connection limit while open."""

    def __init__(self, inner: asyncio.Protocol, limiter: ConnectionLimiter) -> None:
        self.inner, self.limiter = inner, limiter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.limiter.open -= 1
        self.inner.connection_lost(exc)


class ConnectionLimiter:
    """A protocol factory around aiohttp's: at most ``limit`` open connections, further ones get a 503."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server, self.limit = server, limit
        self.open = 0
        self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limit:
            self.refused += 1
            return _Refused()
        self.open += 1
        return _Counted(self.server(), self)


async def serve_api(settings: Settings, status: WorkerStatus, stop: asyncio.Event) -> None:
    """Serve the API until ``stop`` is set (in the API process; also usable in-process by tests)."""
    client = aioredis.from_url(
        settings.redis_url, decode_responses=True, **redis_client_kwargs(settings, REDIS_TIMEOUT_SECONDS)
    )
    api = build_api(settings, client, status_readiness(status, client))
    header_timeout = settings.api_header_timeout_seconds
    # aiohttp closes a connection still waiting for a complete request head when its keep-alive time is up,
    # counted from the connection's start or its previous response: that is the header (slowloris) timeout;
    # an unread request body is drained for at most lingering_time
    runner = web.AppRunner(api, access_log=None, keepalive_timeout=header_timeout, lingering_time=header_timeout)
    await runner.setup()
    assert runner.server is not None
    limiter = ConnectionLimiter(runner.server, settings.api_max_connections)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(limiter, settings.api_host, settings.api_port, reuse_address=True)
    log.info(
        "HTTP API on http://%s:%d (process %d, max %d connections, header timeout %gs)",
        settings.api_host,
        settings.api_port,
        os.getpid(),
        settings.api_max_connections,
        header_timeout,
    )
    try:
        await stop.wait()
    finally:
        server.close()
        await runner.cleanup()
        await client.aclose()


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (a worker killed with -9 must not leave its API up)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _api_main(settings: Settings, shared: Any, parent: int, loglevel: str) -> None:
    """Entry point of the API process."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the worker, which stops this process
    if settings.api_nice:
        os.nice(settings.api_nice)
    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s] [%(process)s] [%(levelname)s] [api] %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)

        async def orphaned() -> None:
            while os.getppid() == parent:
                await asyncio.sleep(1.0)
            stop.set()

        watch = asyncio.ensure_future(orphaned())
        try:
            await serve_api(settings, WorkerStatus(shared), stop)
        finally:
            watch.cancel()

    asyncio.run(main())


class ApiProcess:
    """The API's own process (spawned, so it shares no event loop, lock or client with the worker)."""

    def __init__(self, settings: Settings, status: WorkerStatus, loglevel: str = "info") -> None:
        self.settings, self.status, self.loglevel = settings, status, loglevel
        self.process: multiprocessing.process.BaseProcess | None = None

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.process = ctx.Process(
            target=_api_main,
            args=(self.settings, self.status.shared, os.getpid(), self.loglevel),
            name="pulse-api",
            daemon=True,
        )
        self.process.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is None or not self.process.is_alive():
            return
        self.process.terminate()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
