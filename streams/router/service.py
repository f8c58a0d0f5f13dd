"""``pulse router``: deliver retention alerts (and VIP changes) to the places service teams work.

Its own process and consumer group (``{app_id}-router``), a plain aiokafka
consumer rather than a Faust agent, because the router has nothing Faust is
for: no table, no changelog, no co-partitioning. What it needs is control of
the commit: an offset is committed only once *every* destination of the
alert at that offset (and of every alert before it in the partition) has
acknowledged it or been dead-lettered, while deliveries run concurrently
and finish out of order (a slow destination must not hold up a fast one,
and a digest waits a few seconds on purpose). Faust acknowledges an event
when the agent's iteration moves on, which is the wrong moment here; with a
plain consumer the commit is an explicit call (:class:`OffsetTracker`).

Guarantees:

* at least once per (alert, destination): each destination worker retries a
  failed message with capped exponential back-off (``RetryPolicy``) until the
  receiver acknowledges; after ``PULSE_ROUTER_MAX_ATTEMPTS`` attempts or
  ``PULSE_ROUTER_MAX_RETRY_SECONDS``, or at once for a permanent refusal
  (HTTP 400/401/403/404…), the alert goes to the delivery dead-letter topic
  with the reason; the offset is committed only after that;
* never twice once acknowledged: after the receiver's 2xx (and, for chat
  robots, error code 0) the router writes ``(alert id, destination)`` to Redis
  (SET NX with ``PULSE_ROUTER_DEDUP_TTL_SECONDS``), and checks it before every
  send, so an alert read again after a crash or a rebalance is not sent again.
  The one window left is a crash between the receiver's acknowledgement and
  that write: then the alert is sent again (the generic webhook carries the
  alert id as ``Idempotency-Key`` so a receiver can drop it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
import yarl
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from redis.exceptions import RedisError

from pulse_config.settings import Settings
from schemas.actions import ActionKind, RetentionAction
from schemas.alerts import RetentionAlert
from schemas.delivery import DeliveryDeadLetter
from schemas.vip import VipChange
from streams import metrics
from streams.admin import check_group_access, create_missing, router_topics
from streams.closing import close_quietly
from streams.log_limits import limit_repeated_lines
from streams.router.api import build_actions_api
from streams.router.config import RouterConfig, resolved
from streams.router.messages import (
    Envelope,
    HttpRequest,
    Verdict,
    chat_request,
    email_message,
    file_text,
    judge_http,
    webhook_request,
)
from streams.router.rules import OffsetTracker, RateLimiter, RetryPolicy, destinations_for
from streams.security import kafka_client_kwargs, redis_client_kwargs

log = logging.getLogger("pulse.router")

#: one fetch waits at most this long, so the loop commits and notices a stop request in time
POLL_MS = 250
#: records per fetch
FETCH_RECORDS = 500
#: the share of the rebalance timeout a leaving partition's deliveries may take (the rest: rejoining)
REVOKE_WAIT_SHARE = 0.8
#: sleeps for one message's rate-limit wait at most: the first sleeps the whole wait, a second what an early
#: wake-up cut short (a bound, not a count the limit needs)
RATE_WAITS_MAX = 5


def dedup_key(prefix: str, destination: str, event_id: str) -> str:
    """Redis key saying the receiver acknowledged ``event_id`` at ``destination``."""
    return f"{prefix}router:delivered:{destination}:{event_id}"


def read_envelope(record: Any, settings: Settings) -> Envelope:
    """Decode one record of the alert or VIP topic; ValueError (with a readable message) if it is not one."""
    if not record.value:
        raise ValueError("empty record")
    raw = orjson.loads(record.value)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    if record.topic == settings.topic_vip_changes:
        vip = VipChange.model_validate(raw)
        return Envelope("vip_change", vip.change_id, vip, raw, record.topic, record.partition, record.offset)
    alert = RetentionAlert.model_validate(raw)
    # `historical` is set by scorers that know it (a replay, a backfill); an alert without it is live
    historical = raw.get("historical") is True
    return Envelope(
        "retention_alert", alert.alert_id, alert, raw, record.topic, record.partition, record.offset, historical
    )


@dataclass(eq=False)
class Job:
    """One event read from a partition, and the destinations still to finish."""

    env: Envelope
    remaining: set[str]
    finished: Callable[[Job], None]
    #: its partition went to another router in a rebalance: that one delivers it now, this one stops trying
    handed_over: bool = False

    def finish(self, destination: str) -> None:
        self.remaining.discard(destination)
        if not self.remaining:
            self.finished(self)


@dataclass(eq=False)
class Delivery:
    job: Job
    destination: str

    @property
    def env(self) -> Envelope:
        return self.job.env


class Transport:
    """Sends one message (one event, or a digest of several) to one destination; returns the verdict."""

    def __init__(self, dest: Any, settings: Settings, http: aiohttp.ClientSession) -> None:
        self.dest = dest
        self.settings = settings
        self.http = http

    async def send(self, envs: list[Envelope]) -> Verdict:
        kind = self.dest.kind
        if kind == "webhook":
            return await self._post(webhook_request(self.dest, envs[0]))
        if kind == "email":
            return await asyncio.to_thread(self._smtp, envs)
        if kind == "file":
            return await asyncio.to_thread(self._append, envs)
        return await self._post(chat_request(self.dest, envs, time.time_ns() // 1_000_000))

    async def _post(self, req: HttpRequest) -> Verdict:
        url = yarl.URL(req.url, encoded=True) if req.encoded else req.url
        timeout = aiohttp.ClientTimeout(total=self.settings.router_http_timeout_seconds)
        try:
            async with self.http.post(url, data=req.body, headers=req.headers, timeout=timeout) as resp:
                body = await resp.read()
                return judge_http(self.dest.kind, resp.status, body, resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Verdict(False, False, f"{type(exc).__name__}: {exc}")

    def _smtp(self, envs: list[Envelope]) -> Verdict:
        d = self.dest
        timeout = self.settings.router_smtp_timeout_seconds
        try:
            context = ssl.create_default_context(cafile=d.ca_file or None)
            if d.security == "tls":
                client: smtplib.SMTP = smtplib.SMTP_SSL(d.host, d.port, timeout=timeout, context=context)
            else:
                client = smtplib.SMTP(d.host, d.port, timeout=timeout)
            with client:
                if d.security == "starttls":
                    client.starttls(context=context)
                if d.username:
                    client.login(d.username, d.password or "")
                refused = client.send_message(email_message(d, envs))
            if refused:
                return Verdict(False, False, f"recipients refused: {sorted(refused)}")
            return Verdict(True)
        except smtplib.SMTPAuthenticationError as exc:
            return Verdict(False, True, f"SMTP login refused: {exc.smtp_code}")
        except (smtplib.SMTPException, OSError) as exc:
            return Verdict(False, False, f"{type(exc).__name__}: {exc}")

    def _append(self, envs: list[Envelope]) -> Verdict:
        try:
            path = Path(self.dest.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as out:
                out.write(file_text(self.dest, envs))
            return Verdict(True)
        except OSError as exc:
            return Verdict(False, False, f"{type(exc).__name__}: {exc}")


class DestinationWorker:
    """One destination's queue: quiet grouping, rate limit, retries, dedup, dead letters."""

    def __init__(self, router: Router, dest: Any, transport: Transport) -> None:
        self.router = router
        self.dest = dest
        self.name: str = dest.name
        self.transport = transport
        rate, self.group_seconds, self.group_max = resolved(dest, router.settings)
        self.limiter = RateLimiter(rate)
        s = router.settings
        self.policy = RetryPolicy(
            s.router_retry_initial_seconds,
            s.router_retry_max_seconds,
            s.router_max_attempts,
            s.router_max_retry_seconds,
        )
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()

    def count(self, outcome: str, n: int = 1) -> None:
        metrics.ROUTER_DELIVERIES.labels(self.name, outcome).inc(n)

    async def run(self) -> None:
        while True:
            await self.deliver(await self.next_batch())

    async def next_batch(self) -> list[Delivery]:
        """The next message's alerts: the first waiting one, plus those arriving within the grouping window."""
        batch = [await self.queue.get()]
        if self.group_seconds > 0:
            deadline = time.monotonic() + self.group_seconds
            while len(batch) < self.group_max:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
        return batch

    def _unique(self, fresh: list[Delivery]) -> list[Envelope]:
        """The events to send once each (an id read twice goes once)."""
        unique: dict[str, Envelope] = {}
        for d in fresh:
            unique.setdefault(d.env.id, d.env)
        return list(unique.values())

    def _keep_owned(self, batch: list[Delivery]) -> list[Delivery]:
        """Drop deliveries whose partition was handed over (they finish here; the new owner sends them)."""
        for d in batch:
            if d.job.handed_over:
                d.job.finish(self.name)
        return [d for d in batch if not d.job.handed_over]

    async def deliver(self, batch: list[Delivery]) -> None:
        batch = self._keep_owned(batch)
        if not batch:
            return
        fresh = await self.router.not_delivered(self.name, batch)
        kept = {id(d) for d in fresh}
        for d in batch:
            if id(d) not in kept:
                self.count("duplicate")
                d.job.finish(self.name)
        if not fresh:
            return
        # the scorer re-raises the same alert id when it replays a batch after a crash: both records may land in
        # one digest; the alert goes once, and the repeat finishes with it
        envs = self._unique(fresh)
        if len(envs) < len(fresh):
            self.count("duplicate", len(fresh) - len(envs))
        first = time.monotonic()
        first_at = datetime.now(UTC)
        attempt = 0
        while True:
            # the sleep runs on the loop's clock, the window on the limiter's (time.monotonic()): asked again after
            # each sleep, the window holds even if a sleep ends early (CI saw a second message 7 ms early)
            for _ in range(RATE_WAITS_MAX):
                wait = self.limiter.delay(time.monotonic())
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            self.limiter.record(time.monotonic())
            attempt += 1
            try:
                verdict = await self.transport.send(envs)
            except Exception as exc:  # noqa: BLE001 - a bug in one destination must not stop the others
                log.exception("destination %s: sending failed", self.name)
                verdict = Verdict(False, False, f"{type(exc).__name__}: {exc}")
            if verdict.delivered:
                # before the mark: a crash in between re-sends (as before) and writes the record again, which the
                # worker drops (same event id) or applies idempotently (a destination set)
                await self.router.record_delivered(self.name, envs)
                await self.router.mark_delivered(self.name, envs)
                now = time.time()
                for env in envs:
                    metrics.ROUTER_RAISED_TO_DELIVERED_SECONDS.labels(self.name).observe(
                        max(0.0, now - env.raised_at.timestamp())
                    )
                for d in fresh:
                    d.job.finish(self.name)
                self.count("sent", len(envs))
                log.info("destination %s: delivered %s", self.name, ", ".join(e.id for e in envs))
                return
            self.count("failed", len(envs))
            delay = None if verdict.permanent else self.policy.next_delay(attempt, time.monotonic() - first)
            if delay is not None and verdict.retry_after:
                # Slack and others say how long to back off when rate limited; honoured up to our cap
                delay = max(delay, min(verdict.retry_after, self.policy.max_seconds))
            if delay is None:
                reason = "permanent_error" if verdict.permanent else "retries_exhausted"
                log.warning(
                    "destination %s: giving up after %d attempts (%s): %s", self.name, attempt, reason, verdict.detail
                )
                for env in envs:
                    await self.router.dead_letter(env, self.dest, reason, verdict.detail, attempt, first_at)
                for d in fresh:
                    d.job.finish(self.name)
                self.count("dead_lettered", len(envs))
                return
            self.count("retried", len(envs))
            log.info(
                "destination %s: attempt %d failed (%s); retry in %.1fs", self.name, attempt, verdict.detail, delay
            )
            await asyncio.sleep(delay)
            fresh = self._keep_owned(fresh)
            if not fresh:
                return
            envs = self._unique(fresh)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.router.hand_over(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("router: assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


@dataclass
class Router:
    settings: Settings
    config: RouterConfig
    trackers: dict[TopicPartition, OffsetTracker] = field(default_factory=dict)
    open_jobs: dict[TopicPartition, set[Job]] = field(default_factory=dict)
    workers: dict[str, DestinationWorker] = field(default_factory=dict)
    inflight: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await ensure_router_topics(s)
        await check_group_access(s, s.router_group_id(), "PULSE_ROUTER_GROUP")  # GroupRefused: one line
        self.redis = aioredis.Redis.from_url(s.redis_url, **redis_client_kwargs(s))
        self.producer = AIOKafkaProducer(**kafka_client_kwargs(s), acks="all")
        self.consumer = AIOKafkaConsumer(
            **kafka_client_kwargs(s),
            group_id=s.router_group_id(),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.consumer_fetch_max_wait_ms,
            session_timeout_ms=int(s.broker_session_timeout * 1000),
            heartbeat_interval_ms=int(s.broker_heartbeat_interval * 1000),
            rebalance_timeout_ms=int(s.broker_rebalance_timeout * 1000),
        )
        self.http = aiohttp.ClientSession()
        tasks: list[asyncio.Task[None]] = []
        api: web.AppRunner | None = None
        await self.producer.start()
        await self.consumer.start()
        try:
            if s.router_api_port:
                api = web.AppRunner(build_actions_api(s, self.producer))
                await api.setup()
                await web.TCPSite(api, s.api_host, s.router_api_port).start()
                log.info("router: actions API on http://%s:%d/alerts/{id}/...", s.api_host, s.router_api_port)
            for dest in self.config.destinations:
                worker = DestinationWorker(self, dest, Transport(dest, s, self.http))
                self.workers[dest.name] = worker
                tasks.append(asyncio.create_task(worker.run(), name=f"router-{dest.name}"))
            topics = [s.topic_retention_alerts]
            if any("vip_change" in r.events for r in self.config.routes):
                topics.append(s.topic_vip_changes)
            self.consumer.subscribe(topics, listener=_Rebalance(self))
            log.info(
                "router: group %s reading %s; destinations %s",
                s.router_group_id(),
                ", ".join(topics),
                ", ".join(f"{d.name} ({d.kind})" for d in self.config.destinations),
            )
            print(f"pulse router: ready, reading {', '.join(topics)}", flush=True)
            last_commit = time.monotonic()
            paused = False
            while not stop.is_set():
                crashed = next((t for t in tasks if t.done()), None)
                if crashed is not None:
                    # a destination that stopped would hold back every commit: exit, the supervisor restarts us
                    raise RuntimeError(f"destination worker {crashed.get_name()} stopped") from crashed.exception()
                if self.inflight >= s.router_max_inflight and not paused:
                    self.consumer.pause(*self.consumer.assignment())
                    paused = True
                elif paused and self.inflight < s.router_max_inflight // 2:
                    self.consumer.resume(*self.consumer.assignment())
                    paused = False
                batches = await self.consumer.getmany(timeout_ms=POLL_MS, max_records=FETCH_RECORDS)
                for tp, records in batches.items():
                    for record in records:
                        await self.handle(tp, record)
                if time.monotonic() - last_commit >= s.router_commit_seconds:
                    await self.commit()
                    last_commit = time.monotonic()
            await self.drain(s.shutdown_grace_seconds)
            await self.commit()
        finally:
            if api is not None:
                await api.cleanup()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # nothing will finish now: leaving the group must not wait for these deliveries
            self.open_jobs.clear()
            grace = s.shutdown_grace_seconds
            await close_quietly("the alert consumer", self.consumer.stop(), grace)
            await close_quietly("the dead-letter producer", self.producer.stop(), grace)
            await close_quietly("the HTTP client", self.http.close(), grace)
            await close_quietly("the Redis client", self.redis.aclose(), grace)

    async def drain(self, timeout: float) -> None:
        """On stop: let deliveries in progress finish (bounded), so their offsets commit."""
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def handle(self, tp: TopicPartition, record: Any) -> None:
        if tp not in self.consumer.assignment():
            return  # revoked while this fetch was being handled: its next owner reads it
        tracker = self.trackers.setdefault(tp, OffsetTracker())
        tracker.add(record.offset)
        event = "vip_change" if tp.topic == self.settings.topic_vip_changes else "retention_alert"
        try:
            env = read_envelope(record, self.settings)
        except (ValueError, ValidationError) as exc:
            detail = (
                str(exc.errors()[0]["loc"]) + ": " + exc.errors()[0]["msg"]
                if isinstance(exc, ValidationError)
                else str(exc)
            )
            metrics.ROUTER_EVENTS.labels(event, "invalid").inc()
            await self.dead_letter_record(record, event, detail)
            tracker.done(record.offset)
            return
        if env.historical and not self.config.router.deliver_historical:
            metrics.ROUTER_EVENTS.labels(event, "historical").inc()
            tracker.done(record.offset)
            return
        destinations = destinations_for(self.config, env.routable())
        if not destinations:
            metrics.ROUTER_EVENTS.labels(event, "unrouted").inc()
            tracker.done(record.offset)
            return
        metrics.ROUTER_EVENTS.labels(event, "routed").inc()
        self.inflight += 1
        metrics.ROUTER_INFLIGHT.set(self.inflight)

        def finished(job: Job, tp: TopicPartition = tp, tracker: OffsetTracker = tracker) -> None:
            self.inflight -= 1
            metrics.ROUTER_INFLIGHT.set(self.inflight)
            self.open_jobs.get(tp, set()).discard(job)
            # a revoked partition's tracker is gone: its next owner reads from the committed offset
            if self.trackers.get(tp) is tracker:
                tracker.done(job.env.offset)

        job = Job(env, set(destinations), finished)
        self.open_jobs.setdefault(tp, set()).add(job)
        for name in destinations:
            self.workers[name].queue.put_nowait(Delivery(job, name))

    async def hand_over(self, revoked: list[TopicPartition]) -> None:
        """Partitions are leaving: finish what is in flight (bounded), commit, stop trying the rest.

        The group waits for this before the next owner starts reading, so an
        alert is not sent by two routers at once; what is still unfinished
        after ``PULSE_ROUTER_REVOKE_WAIT_SECONDS`` (a destination that is down)
        is left to the next owner, which reads it again from the commit.
        """
        # past the group's rebalance timeout the coordinator drops this member and gives the partitions away anyway
        wait = min(self.settings.router_revoke_wait_seconds, REVOKE_WAIT_SHARE * self.settings.broker_rebalance_timeout)
        deadline = time.monotonic() + wait
        while any(self.open_jobs.get(tp) for tp in revoked) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.commit(revoked, drop=True)
        for tp in revoked:
            for job in self.open_jobs.pop(tp, set()):
                job.handed_over = True

    async def commit(self, partitions: list[TopicPartition] | None = None, drop: bool = False) -> None:
        offsets = {}
        for tp in partitions if partitions is not None else list(self.trackers):
            tracker = self.trackers.get(tp)
            if tracker is None:
                continue
            offset = tracker.committable()
            if offset is not None:
                offsets[tp] = (offset, tracker)
            if drop:
                del self.trackers[tp]
        if not offsets:
            return
        try:
            await self.consumer.commit({tp: off for tp, (off, _) in offsets.items()})
        except KafkaError as exc:
            # the next commit carries the same or later offsets; a lost one only means re-reading (dedup)
            log.warning("router: commit failed (%s); will retry", exc)
            return
        for off, tracker in offsets.values():
            tracker.committed(off)

    async def _redis(self, op: Callable[[], Any]) -> Any:
        """Run a Redis operation until it succeeds: an outage delays deliveries, it must not lose their record."""
        delay = self.settings.router_retry_initial_seconds
        while True:
            try:
                return await op()
            except (RedisError, OSError) as exc:
                # (READONLY, a failover behind the address: the client's retry policy dropped the connection and
                # the next attempt connects to the promoted primary, streams.security.redis_client_kwargs)
                log.warning("router: redis unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.redis_retry_max_seconds)

    async def not_delivered(self, destination: str, batch: list[Delivery]) -> list[Delivery]:
        prefix = self.settings.redis_key_prefix

        async def check() -> list[int]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for d in batch:
                    pipe.exists(dedup_key(prefix, destination, d.env.id))
                return await pipe.execute()

        found = await self._redis(check)
        return [d for d, seen in zip(batch, found, strict=True) if not seen]

    async def mark_delivered(self, destination: str, envs: list[Envelope]) -> None:
        """After the receiver's acknowledgement: remember (event, destination), so it is never sent again."""
        prefix, ttl = self.settings.redis_key_prefix, self.settings.router_dedup_ttl_seconds
        stamp = datetime.now(UTC).isoformat()

        async def write() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for env in envs:
                    pipe.set(dedup_key(prefix, destination, env.id), stamp, nx=True, ex=ttl)
                await pipe.execute()

        await self._redis(write)

    async def record_delivered(self, destination: str, envs: list[Envelope]) -> None:
        """Tell the scoring worker where each alert went (issue 19: the save rate by destination): a ``delivered``
        retention action per alert (``delivered_action``), keyed by its customer, on the topic the worker reads
        the team's actions from."""
        for env in envs:
            action = delivered_action(env, destination)
            if action is not None:
                value = action.model_dump_json().encode()
                await self._produce(action.customer_id.encode(), value, self.settings.topic_retention_actions)

    async def _produce(self, key: bytes | None, value: bytes, topic: str | None = None) -> None:
        delay = self.settings.router_retry_initial_seconds
        topic = topic or self.settings.topic_delivery_dead_letters
        while True:
            try:
                await self.producer.send_and_wait(topic, value, key=key)
                return
            except KafkaError as exc:
                log.warning("router: record for %s not written (%s); retrying in %.1fs", topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.router_retry_max_seconds)

    async def dead_letter(
        self, env: Envelope, dest: Any, reason: str, detail: str, attempts: int, first_at: datetime
    ) -> None:
        record = DeliveryDeadLetter(
            event_id=env.id,
            event=env.event,
            destination=dest.name,
            destination_kind=dest.kind,
            reason=reason,
            detail=detail,
            attempts=attempts,
            first_attempt_at=first_at,
            dead_lettered_at=datetime.now(UTC),
            source_topic=env.topic,
            partition=env.partition,
            offset=env.offset,
            payload=env.raw,
        )
        await self._produce(env.id.encode(), record.model_dump_json().encode())

    async def dead_letter_record(self, record: Any, event: str, detail: str) -> None:
        record_out = DeliveryDeadLetter(
            event_id="",
            event=event,
            destination="",
            destination_kind="",
            reason="invalid_event",
            detail=detail,
            attempts=0,
            first_attempt_at=None,
            dead_lettered_at=datetime.now(UTC),
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            payload=(record.value or b"")[: self.settings.dead_letter_payload_bytes].decode(errors="replace"),
        )
        await self._produce(record.key, record_out.model_dump_json().encode())


def delivered_action(env: Envelope, destination: str) -> RetentionAction | None:
    """The ``delivered`` record of an alert a destination's receiver acknowledged (None for a VIP change).

    Its time is the alert's ``raised_at``, not the wall clock: delivery is not a step of the team but a fact
    about the alert, so it joins the episode as soon as the worker's clock is at the alert (also for a
    historical alert delivered on purpose). The event id is stable per (alert, destination): written again after
    a crash, the worker drops it."""
    if not isinstance(env.model, RetentionAlert):
        return None
    digest = hashlib.sha256(f"{env.id}\n{destination}".encode()).hexdigest()[:32]
    return RetentionAction(
        event_id=f"delivered-{digest}",
        customer_id=env.model.customer_id,
        occurred_at=env.model.raised_at,
        alert_id=env.id,
        action=ActionKind.DELIVERED,
        actor="router",
        destination=destination,
    )


async def ensure_router_topics(settings: Settings) -> None:
    """Create the topics the router reads and writes when missing (idempotent, like the worker's)."""
    topics = [NewTopic(t, settings.partitions, settings.replication_factor) for t in router_topics(settings)]
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings), request_timeout_ms=15000)
    await admin.start()
    try:
        await create_missing(admin, settings, topics)  # TopicsRefused: one line, as the worker's (pulse/errors.py)
    finally:
        await admin.close()


def run_router(settings: Settings, config: RouterConfig) -> None:
    """The router's process: metrics endpoint, then the consumer loop until SIGTERM/SIGINT."""
    limit_repeated_lines(
        settings.log_repeat_window_seconds,
        on_suppressed=lambda name: metrics.ROUTER_LOG_RECORDS_SUPPRESSED.labels(logger=name).inc(),
    )
    if settings.router_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.router_metrics_port, addr=settings.metrics_host, registry=metrics.ROUTER_REGISTRY)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Router(settings, config).run(stop)

    asyncio.run(main())
