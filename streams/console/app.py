"""The service console: the web page a retention team works from (``pulse console``).

Server-rendered HTML (Jinja2, autoescaped) made live with htmx (vendored in
``static/``, no CDN at run time): the pages are plain HTML from the server,
htmx swaps fragments on filter changes, paging and actions, and one
server-sent-event stream per page (``/events``) tells it when to fetch a
fragment again. No front-end build, no framework of our own, and nothing but
a page of customers ever reaches the browser: paging and filtering happen in
Redis (``streams.at_risk``), so it works the same at 1M customers.

What it serves, all behind the login (``PULSE_API_TOKEN``: the same bearer
token as the APIs, or a login form that sets a signed, HttpOnly,
SameSite=Strict cookie; without a token configured the console is open, as
the APIs are):

* ``/`` the at-risk queue (level, VIP, segment, reason, owner, status,
  minimum value at risk; paged; live), the VIP list (live entries and exits)
  and the population panel (indicators with trends);
* ``/customers/{id}`` the profile, churn reasons with observed values and
  thresholds, spend by month, risk over the alerts, the alert history with
  the actions taken (who did what), and the acknowledge / assign / resolve
  forms; any profile field the console does not know (e.g. the episode the
  scoring worker records from the actions, issue 19) is listed as is;
* ``POST /actions/{alert_id}/{verb}``: the router API's action, built by the
  same function (``streams.router.api.build_action``) and written to the same
  ``retention-actions`` topic, with the logged-in user as the actor.

``/health`` and ``/metrics`` (no customer data) and ``/static`` are open.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import orjson
import redis.asyncio as aioredis
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from redis.exceptions import RedisError

from pulse_config.settings import Settings
from schemas.actions import Outcome
from schemas.events import ID_PATTERN
from schemas.profile import CustomerProfile
from scoring import churn
from scoring.rfm import DEFAULT_SEGMENTS
from streams import metrics
from streams.at_risk import AT_RISK_LEVELS, AtRiskQuery, BadFilter, at_risk_page
from streams.closing import close_quietly
from streams.console import charts, trends
from streams.console.cases import (
    STATUSES,
    TRACKED,
    Case,
    apply_action,
    case_key,
    channel,
    history,
    owner_key,
    owners_key,
    status_key,
    vip_changes_key,
)
from streams.router.api import VERBS, build_action
from streams.security import kafka_client_kwargs, redis_client_kwargs
from streams.sinks.redis_profiles import profile_key, vip_key

log = logging.getLogger("pulse.console")

HERE = Path(__file__).resolve().parent
COOKIE = "pulse_console"
OPEN_PATHS = frozenset({"/health", "/metrics", "/login"})
#: the reason codes a churn assessment can give (the queue's reason filter)
REASON_CODES = tuple(
    sorted(v for k, v in vars(churn).items() if k.isupper() and isinstance(v, str) and re.fullmatch(r"[a-z_]+", v))
)
SEGMENTS = tuple(sorted({r.name for r in DEFAULT_SEGMENTS} | {"others"}))
#: VIPs listed on the queue page, and VIP changes shown
VIPS_SHOWN = 10
VIP_CHANGES_SHOWN = 10
#: trend points read back from Redis after each reading (another console may have recorded the newest)
TREND_SYNC_POINTS = 10
#: a name a person logs in with (shown as the actor of their actions)
USER = re.compile(r"^[\w .@-]{1,64}$")
#: seconds between keep-alive comments on an idle event stream
KEEPALIVE_SECONDS = 15.0
#: a Redis call of a page must not hang the page
REDIS_TIMEOUT_SECONDS = 2.0
_ID = re.compile(ID_PATTERN)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _session_key(token: bytes) -> bytes:
    """The cookie's signing key, derived from the token (the token itself is never in a cookie or a page)."""
    return hashlib.sha256(b"pulse-console-session\0" + token).digest()


def make_session(token: bytes, user: str, expires: int) -> str:
    name = base64.urlsafe_b64encode(user.encode()).decode().rstrip("=")
    mac = hmac.new(_session_key(token), f"{name}.{expires}".encode(), "sha256").hexdigest()
    return f"{name}.{expires}.{mac}"


def read_session(token: bytes, value: str, now: float) -> str | None:
    """The user of a valid, unexpired session cookie, else None."""
    try:
        name, expires, mac = value.split(".")
        good = hmac.new(_session_key(token), f"{name}.{expires}".encode(), "sha256").hexdigest()
        if not hmac.compare_digest(mac, good) or int(expires) < now:
            return None
        return base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
    except (ValueError, UnicodeError):
        return None


def money(value: Any) -> str:
    if value in (None, ""):
        return "–"
    try:
        return f"{Decimal(str(value)):,.2f}"
    except InvalidOperation:
        return str(value)


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


@dataclass
class Population:
    """The latest population indicators and their history (the panel's trend lines, as kept in Redis)."""

    latest: trends.Point | None = None
    trend: deque[trends.Point] = field(default_factory=deque)
    error: str | None = None


#: the panel's rows: (label, trends.INDICATORS name, format)
PANEL = (
    ("NPS", "nps", lambda v: "–" if v is None else f"{v:+.1f}"),
    ("CSAT", "csat", pct),
    ("retention rate", "retention_rate", pct),
    ("churn rate", "churn_rate", pct),
    ("repurchase rate", "repurchase_rate", pct),
    ("complaint rate", "complaint_rate", pct),
    ("resolution rate", "resolution_rate", pct),
    ("save rate", "save_rate", pct),
)


class Console:
    """The console's state shared by its handlers: Redis, the producer of actions, templates, population."""

    def __init__(self, settings: Settings, client: aioredis.Redis, producer: AIOKafkaProducer | None) -> None:
        self.settings, self.client, self.producer = settings, client, producer
        self.prefix = settings.redis_key_prefix
        self.token = settings.api_token.get_secret_value().encode()
        self.population = Population(trend=deque(maxlen=settings.console_trend_points))
        self.stopping = asyncio.Event()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
        )
        # a path segment: every reserved character encoded ('/' included: ids may contain it, sent as %2F)
        self.env.filters.update(money=money, pct=pct, pathpart=lambda v: quote(str(v), safe=""))
        self.env.globals.update(
            levels=AT_RISK_LEVELS,
            statuses=STATUSES,
            segments=SEGMENTS,
            reasons=REASON_CODES,
            outcomes=[o.value for o in Outcome],
            page_size=settings.console_page_size,
            stats_seconds=settings.console_stats_seconds,
            queue_refresh_seconds=settings.console_queue_refresh_seconds,
            htmx="htmx-2.0.11.min.js",
        )

    def render(self, name: str, request: web.Request, status: int = 200, **context: Any) -> web.Response:
        context.setdefault("user", self.user_of(request))
        html = self.env.get_template(name).render(**context)
        return web.Response(text=html, content_type="text/html", status=status)

    # --- access ---------------------------------------------------------------------------------------

    def user_of(self, request: web.Request) -> str | None:
        """Who is asking: a valid session's user, "api" (or X-Pulse-Actor) with the bearer token; None if
        neither. Without a token configured, everyone is let in (as "console" unless logged in by name)."""
        session = request.cookies.get(COOKIE)
        if session:
            user = read_session(self.token, session, time.time())
            if user is not None:
                return user
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if self.token and scheme.lower() == "bearer":
            try:
                if hmac.compare_digest(given.strip().encode(), self.token):
                    actor = request.headers.get("X-Pulse-Actor", "api")
                    return actor if USER.match(actor) else "api"
            except UnicodeEncodeError:
                return None
        return None if self.token else "console"

    @web.middleware
    async def access(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or request.path.startswith("/static/"):
            return await handler(request)
        user = self.user_of(request)
        if user is None:
            page = request.path == "/" or request.path.startswith("/customers/")
            if request.method == "GET" and page and "HX-Request" not in request.headers:
                raise web.HTTPFound(f"/login?next={request.path_qs if request.path_qs.startswith('/') else '/'}")
            return web.json_response({"error": "unauthorized", "detail": "log in or send the bearer token"}, status=401)
        # a form post riding on the cookie must come from the console's own page (htmx sends HX-Request; another
        # site's form cannot set a header, and the cookie is SameSite=Strict anyway)
        if (
            request.method == "POST"
            and request.path != "/logout"
            and COOKIE in request.cookies
            and "HX-Request" not in request.headers
        ):
            return web.json_response({"error": "forbidden", "detail": "not from the console page"}, status=403)
        return await handler(request)

    @web.middleware
    async def timed(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        started = time.perf_counter()
        try:
            return await handler(request)
        except (RedisError, OSError, TimeoutError) as exc:
            if isinstance(exc, ConnectionResetError):
                raise
            log.warning("console %s: redis unavailable: %s", route, exc)
            return web.Response(text=f"redis unavailable: {type(exc).__name__}", status=503)
        finally:
            if route != "/events":
                metrics.CONSOLE_REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)

    async def login_form(self, request: web.Request) -> web.Response:
        return self.render("login.html", request, next=_safe_next(request.query.get("next")), error=None)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        name, given = str(form.get("name", "")).strip(), str(form.get("token", "")).strip()
        target = _safe_next(str(form.get("next", "/")))
        if not USER.match(name):
            return self.render("login.html", request, 400, next=target, error="a name of 1-64 letters, digits, .@-")
        if self.token and not hmac.compare_digest(given.encode(), self.token):
            return self.render("login.html", request, 401, next=target, error="wrong token")
        hours = self.settings.console_session_hours
        response = web.HTTPFound(target)
        response.set_cookie(
            COOKIE,
            make_session(self.token, name, int(time.time() + hours * 3600)),
            max_age=int(hours * 3600),
            httponly=True,
            samesite="Strict",
            # behind a TLS-terminating ingress the console sees plain HTTP: the proxy's X-Forwarded-Proto says the
            # browser used HTTPS (a forged header can only make the browser withhold the cookie over plain HTTP)
            secure=request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https",
            path="/",
        )
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.HTTPFound("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # --- the queue page ------------------------------------------------------------------------------

    async def queue_context(self, request: web.Request) -> dict[str, Any]:
        params = request.query
        filters = {k: params.get(k, "") for k in ("level", "vip", "segment", "reason", "owner", "status", "min_value")}
        page = self.settings.console_page_size
        try:
            query = AtRiskQuery.from_params(params, page, page)
            status, owner = filters["status"], filters["owner"].strip()
            if status and status not in STATUSES:
                raise BadFilter(f"status must be one of {', '.join(STATUSES)}")
        except BadFilter as exc:
            return {"filters": filters, "error": str(exc), "page": None, "rows": [], "owners": await self.owners()}
        include = [owner_key(self.prefix, owner)] if owner else []
        exclude: list[str] = []
        if status == "open":
            exclude = [status_key(self.prefix, s) for s in TRACKED]
        elif status:
            include.append(status_key(self.prefix, status))
        result = await at_risk_page(self.client, self.prefix, query, include, exclude)
        async with self.client.pipeline(transaction=False) as pipe:
            for item in result.items:
                pipe.hmget(case_key(self.prefix, item["customer_id"]), ("status", "owner", "alert_id"))
            cases = await pipe.execute() if result.items else []
        rows = [
            {**item, "status": c[0] or "open", "owner": c[1], "alert_id": c[2]}
            for item, c in zip(result.items, cases, strict=True)
        ]
        return {"filters": filters, "error": None, "page": result, "rows": rows, "owners": await self.owners()}

    async def owners(self) -> list[str]:
        return sorted(await self.client.smembers(owners_key(self.prefix)))  # type: ignore[arg-type]  # decoded: str

    async def index(self, request: web.Request) -> web.Response:
        context = await self.queue_context(request)
        context.update(await self.vip_context())
        context.update(self.population_context())
        return self.render("queue.html", request, title="At-risk queue", customer_id="", **context)

    async def queue_fragment(self, request: web.Request) -> web.Response:
        return self.render("_queue.html", request, oob=True, **await self.queue_context(request))

    async def vip_context(self) -> dict[str, Any]:
        key = vip_key(self.prefix)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zcard(key)
            pipe.zrevrange(key, 0, VIPS_SHOWN - 1, withscores=True)
            pipe.lrange(vip_changes_key(self.prefix), 0, VIP_CHANGES_SHOWN - 1)
            total, top, changes = await pipe.execute()
        return {
            "vip_total": total,
            "vip_top": top,
            "vip_value": self.settings.vip_value,
            "vip_changes": [orjson.loads(c) for c in changes],
        }

    async def vips_fragment(self, request: web.Request) -> web.Response:
        return self.render("_vips.html", request, **await self.vip_context())

    def population_context(self) -> dict[str, Any]:
        p = self.population
        rows = []
        for label, name, fmt in PANEL:
            value = p.latest.values.get(name) if p.latest is not None else None
            rows.append({"label": label, "value": fmt(value), "spark": charts.spark([t.values[name] for t in p.trend])})
        since = None
        if len(p.trend) >= 2:
            since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(p.trend[0].at_ms / 1000))
        return {
            "population_rows": rows,
            "population_customers": p.latest.customers if p.latest is not None else 0,
            "population_error": p.error,
            "population_trend_since": since,
        }

    async def population_fragment(self, request: web.Request) -> web.Response:
        return self.render("_population.html", request, **self.population_context())

    async def load_trend(self) -> None:
        """The trend (and the latest reading) as kept in Redis: a restarted console shows them at once."""
        points = await trends.load(self.client, self.prefix, self.settings.console_trend_points)
        self.population.trend.clear()
        self.population.trend.extend(points)
        if points and self.population.latest is None:
            self.population.latest = points[-1]

    async def record_population(self, point: trends.Point) -> None:
        """Show a reading, add it to the Redis trend (at most one point per ``console_trend_seconds`` from all
        consoles), and take in the newest points whichever console recorded them."""
        self.population.latest = point
        await trends.record(
            self.client, self.prefix, point, self.settings.console_trend_seconds, self.settings.console_trend_points
        )
        trend = self.population.trend
        newest = trend[-1].at_ms if trend else -1
        trend.extend(p for p in await trends.load(self.client, self.prefix, TREND_SYNC_POINTS) if p.at_ms > newest)

    async def refresh_population(self) -> None:
        """Re-read the population indicators every ``console_stats_seconds`` (as ``pulse stats`` does)."""
        from streams.stats import read_stats

        try:
            await self.load_trend()
        except (RedisError, OSError) as exc:
            log.warning("population trend not read from Redis: %s", exc)
        while not self.stopping.is_set():
            try:
                stats = await read_stats(self.settings, timeout=self.settings.console_stats_seconds)
                point = trends.point_of(stats, int(time.time() * 1000))
                if point is not None:
                    await self.record_population(point)
                    self.population.error = None
            except (KafkaError, OSError) as exc:
                self.population.error = f"indicators unavailable: {type(exc).__name__}"
            except RedisError as exc:
                self.population.error = f"trend not saved: {type(exc).__name__}"
            try:
                await asyncio.wait_for(self.stopping.wait(), self.settings.console_stats_seconds)
            except TimeoutError:
                pass

    # --- the customer page ---------------------------------------------------------------------------

    async def customer_context(self, customer_id: str) -> dict[str, Any] | None:
        fields = await self.client.hgetall(profile_key(self.prefix, customer_id))
        alerts, actions, case = await history(self.client, self.prefix, customer_id)
        if not fields and not alerts:
            return None
        profile = CustomerProfile.from_redis(fields) if fields else None  # type: ignore[arg-type]  # decoded: str
        extra = {k: v for k, v in fields.items() if k not in CustomerProfile.model_fields}
        by_alert: dict[str, list[dict]] = {}
        for action in actions:
            by_alert.setdefault(action["alert_id"], []).append(action)
        latest = case.alert_id if case is not None else (alerts[-1]["alert_id"] if alerts else None)
        spend = [(m, c / 100) for m, c in charts.monthly_spend(profile.revenue_buckets)] if profile else []
        risk = [(a["raised_at"][:10] + " " + a["level"], float(a["risk_score"])) for a in alerts]
        return {
            "customer_id": customer_id,
            "profile": profile,
            "extra": extra,
            "alerts": list(reversed(alerts)),
            "actions_of": by_alert,
            "case": case or (Case(latest) if latest else None),
            "act_on": latest,
            "idempotency_key": uuid.uuid4().hex,
            "spend_chart": charts.bars(spend, title="spend by month"),
            "risk_chart": charts.line(risk, 0, 100, title="risk score at each alert"),
            "message": None,
        }

    async def _customer_of(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        """The requested customer's id and page context (400 for a malformed id, 404 for an unknown one)."""
        customer_id = request.match_info["customer_id"]
        if not _ID.match(customer_id):
            raise web.HTTPBadRequest(text="malformed customer id")
        context = await self.customer_context(customer_id)
        if context is None:
            raise web.HTTPNotFound(text=f"no profile for {customer_id}")
        return customer_id, context

    async def customer(self, request: web.Request) -> web.Response:
        customer_id, context = await self._customer_of(request)
        return self.render("customer.html", request, title=customer_id, **context)

    async def customer_fragment(self, request: web.Request) -> web.Response:
        """The customer page's live part (htmx swaps it in on a server-sent event)."""
        _, context = await self._customer_of(request)
        return self.render("_customer.html", request, **context)

    async def act(self, request: web.Request) -> web.Response:
        """An action from the customer page: the router API's event, on the same topic, by the logged-in user;
        recorded in the case store once the broker took it (the feed reads it again and finds it there)."""
        alert_id, verb = request.match_info["alert_id"], request.match_info["verb"]
        if verb not in VERBS:
            raise web.HTTPNotFound(text=f"unknown action {verb}")
        form = await request.post()
        body = {k: str(form[k]).strip() for k in ("assignee", "outcome", "note") if str(form.get(k, "")).strip()}
        body["actor"] = self.user_of(request) or "console"
        message = None
        try:
            event = build_action(alert_id, verb, body, request.headers.get("Idempotency-Key"))
        except ValidationError as exc:
            message = f"not recorded: {exc.errors()[0]['msg'].removeprefix('Value error, ')}"
        except ValueError as exc:
            message = f"not recorded: {exc}"
        else:
            if not _ID.match(event.customer_id):
                raise web.HTTPBadRequest(text="malformed alert id")
            try:
                assert self.producer is not None
                await self.producer.send_and_wait(
                    self.settings.topic_retention_actions,
                    event.model_dump_json().encode(),
                    key=event.customer_id.encode(),
                )
            except KafkaError as exc:
                message = f"not recorded, the broker did not take it ({type(exc).__name__}): try again"
            else:
                if await apply_action(self.client, self.prefix, event):
                    notice = {"type": "action", "customer_id": event.customer_id, "alert_id": alert_id}
                    await self.client.publish(channel(self.prefix), orjson.dumps(notice))
        context = await self.customer_context(_customer_of(alert_id))
        if context is None:
            raise web.HTTPNotFound(text="unknown customer")
        context["message"] = message
        return self.render("_customer.html", request, **context)

    # --- live updates --------------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one ``data:`` line per alert, action or VIP change any console recorded."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(channel(self.prefix))
        metrics.CONSOLE_LIVE_CLIENTS.inc()
        try:
            await response.write(b"retry: 2000\n: live\n\n")
            quiet_since = time.monotonic()
            while not self.stopping.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    data = message["data"]
                    await response.write(b"data: " + (data.encode() if isinstance(data, str) else data) + b"\n\n")
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                    await response.write(b": keep-alive\n\n")
                    quiet_since = time.monotonic()
        except (ConnectionResetError, RedisError):
            pass
        finally:
            metrics.CONSOLE_LIVE_CLIENTS.dec()
            await pubsub.aclose()
        return response

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics_endpoint(self, _: web.Request) -> web.Response:
        body = generate_latest(metrics.CONSOLE_REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _safe_next(target: str | None) -> str:
    """Only a path of this site (no //host, no scheme): the login must not redirect elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _customer_of(alert_id: str) -> str:
    return alert_id.rsplit(":churn:", 1)[0]


#: the Console of an application built by build_console (its stop event, for who serves it)
CONSOLE = web.AppKey("console", Console)


def build_console(settings: Settings, client: aioredis.Redis, producer: AIOKafkaProducer | None) -> web.Application:
    """The aiohttp application; ``client`` decodes responses; ``producer`` writes the actions."""
    console = Console(settings, client, producer)
    app = web.Application(middlewares=[console.timed, console.access])
    app[CONSOLE] = console
    r = app.router
    r.add_get("/", console.index)
    r.add_get("/login", console.login_form)
    r.add_post("/login", console.login)
    r.add_post("/logout", console.logout)
    r.add_get("/fragments/queue", console.queue_fragment)
    r.add_get("/fragments/vips", console.vips_fragment)
    r.add_get("/fragments/population", console.population_fragment)
    r.add_get("/fragments/customer/{customer_id}", console.customer_fragment)
    r.add_get("/customers/{customer_id}", console.customer)
    r.add_post("/actions/{alert_id}/{verb}", console.act)
    r.add_get("/events", console.events)
    r.add_get("/health", console.health)
    r.add_get("/metrics", console.metrics_endpoint)
    r.add_static("/static/", HERE / "static")
    return app


async def serve_console(settings: Settings, stop: asyncio.Event, ready: Callable[[str], None] | None = None) -> None:
    """Run the console (web app, feed, population refresh) until ``stop``; ``ready`` gets its URL."""
    from streams.admin import check_group_access, console_group
    from streams.console.feed import Feed
    from streams.router.service import ensure_router_topics

    client = aioredis.from_url(
        settings.redis_url, decode_responses=True, **redis_client_kwargs(settings, REDIS_TIMEOUT_SECONDS)
    )
    await ensure_router_topics(settings)  # the topics it reads and writes, as the router creates them
    # a group the ACLs refuse: one line (GroupRefused, pulse/errors.py), not a feed that hangs
    await check_group_access(settings, console_group(settings), "PULSE_CONSOLE_GROUP_ID")
    producer = AIOKafkaProducer(**kafka_client_kwargs(settings), acks="all")
    await producer.start()
    app = build_console(settings, client, producer)
    console = app[CONSOLE]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.console_host, settings.console_port, reuse_address=True)
    await site.start()
    feed = Feed(settings, client)
    tasks = [asyncio.ensure_future(feed.run(console.stopping)), asyncio.ensure_future(console.refresh_population())]
    url = f"http://{settings.console_host}:{settings.console_port}/"
    log.info("service console on %s", url)
    if ready is not None:
        ready(url)
    try:
        await stop.wait()
    finally:
        console.stopping.set()
        tasks[1].cancel()  # a population read in progress waits for the broker: nothing to finish
        # the feed ends its batch and commits; one still joining its group waits for a broker that may be down
        # (aiokafka's start never returns then): it has recorded nothing, so it is cancelled after the grace
        _, joining = await asyncio.wait(tasks, timeout=settings.shutdown_grace_seconds)
        for task in joining:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        await close_quietly("the console's action producer", producer.stop(), settings.shutdown_grace_seconds)
        await close_quietly("the console's Redis client", client.aclose(), settings.shutdown_grace_seconds)


def run_console(settings: Settings) -> None:
    """The console's process: serve until SIGTERM/SIGINT, printing its URL once it listens."""
    import signal

    # aiokafka logs every metadata refresh of the population reads at INFO
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_console(settings, stop, lambda url: print(f"console {url}", flush=True))

    asyncio.run(main())
