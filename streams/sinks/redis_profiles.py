"""Write-behind of customer profiles to Redis: one pipelined round trip per batch.

The table is the source of truth; Redis is a view of it. A failed write never
stops processing: the profiles stay pending (latest per customer wins) and a
background retry with capped exponential back-off writes them when Redis is
back, so Redis converges to the table.

The commands are packed by hiredis (C) into one buffer and sent on a
connection of the client's pool: redis-py's pipeline packed every argument in
Python, and with ~50 fields per profile that packing was an eighth of the
worker's CPU.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import Any

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas.profile import RenderedProfile
from streams import metrics
from streams.at_risk import index_entry, pack_update

log = logging.getLogger(__name__)


def profile_key(prefix: str, customer_id: str) -> str:
    return f"{prefix}profile:{customer_id}"


def vip_key(prefix: str) -> str:
    """Sorted set of the VIPs, scored by their value measure: ZSCORE for a lookup, ZREVRANGE for a page."""
    return f"{prefix}vips"


#: what the sink keeps of a profile until it is written: the packed HSET, the VIP score (None: not VIP) and its
#: at-risk index entry (index score, '|'-joined index keys; '' when not at risk: streams.at_risk)
Packed = tuple[bytes, float | None, tuple[str, str]]


def pack_profile(profile: RenderedProfile, key_prefix: str, vip_value: str) -> Packed:
    """The packed HSET of the profile's fields, its VIP score (its ``vip_value`` field) or None if not VIP, and
    its at-risk index entry.

    float() of the money string equals float() of the Decimal the edge model holds, which the sink used to send.
    """
    # hiredis's stub types the command as a 1-tuple: any number of arguments is what it packs
    hset = pack_command(("HSET", profile_key(key_prefix, profile.customer_id), *profile.args))  # type: ignore[arg-type]
    return hset, float(profile.value(vip_value)) if profile.vip else None, index_entry(profile)


def pack_batch(batch: Mapping[str, Packed], key_prefix: str) -> tuple[bytes, int]:
    """One buffer for a batch of ``pack_profile`` results, and how many replies it asks for.

    The VIP set gets one ZADD and one ZREM for the whole batch (a customer is in a batch once, so the order
    among them does not matter): a reply costs more to read than its command to pack, and this halves them.
    Scores are sent as redis-py sent them, repr() of the float. The at-risk index gets one script call after
    the HSETs (streams.at_risk), so it is written in the same round trip as the profiles it indexes.
    """
    parts = [hset for hset, _, _ in batch.values()]
    added = [(repr(score), cid) for cid, (_, score, _) in batch.items() if score is not None]
    removed = [cid for cid, (_, score, _) in batch.items() if score is None]
    if added:
        parts.append(pack_command(("ZADD", vip_key(key_prefix), *chain.from_iterable(added))))  # type: ignore[arg-type]
    if removed:
        parts.append(pack_command(("ZREM", vip_key(key_prefix), *removed)))  # type: ignore[arg-type]
    if batch:
        parts.append(pack_update(key_prefix, [(cid, score, keys) for cid, (_, _, (score, keys)) in batch.items()]))
    return b"".join(parts), len(parts)


class RedisProfileSink:
    """Profiles as hashes; each write also adds the customer to or removes it from the VIP sorted set and the
    at-risk index."""

    def __init__(
        self,
        url: str,
        key_prefix: str,
        retry_max_seconds: float,
        vip_value: str = "revenue",
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        # client_kwargs: password/TLS, from streams.security.redis_client_kwargs; the connections of the
        # client's pool carry them, and every write goes through that pool
        self._redis = aioredis.from_url(url, decode_responses=True, **(client_kwargs or {}))
        self._prefix = key_prefix
        self._vip_value = vip_value
        self._retry_max = retry_max_seconds
        #: customer id -> (packed HSET, VIP score or None when not VIP): pack_profile
        self._pending: dict[str, Packed] = {}
        self._failing = False
        #: called once Redis takes writes again after a failure: Redis may
        #: have restarted empty, so every profile should be written again
        self.on_recovered: Callable[[], None] | None = None
        self._retry_task: asyncio.Task | None = None
        # one write in flight at a time, so an older profile never lands after a newer one
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, profiles: Iterable[RenderedProfile]) -> None:
        pending, prefix, vip_value = self._pending, self._prefix, self._vip_value
        for profile in profiles:
            pending[profile.customer_id] = pack_profile(profile, prefix, vip_value)
        metrics.REDIS_PENDING_PROFILES.set(len(pending))

    async def flush(self) -> bool:
        """Write every pending profile; False (and keep them) if Redis failed."""
        async with self._lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> bool:
        if not self._pending:
            return True
        batch = self._pending
        self._pending = {}
        try:
            await self._write(*pack_batch(batch, self._prefix))
        except (RedisError, OSError) as exc:
            metrics.REDIS_WRITE_ERRORS.inc()
            self._failing = True
            log.warning("redis write of %d profiles failed, will retry: %s", len(batch), exc)
            # newer profiles submitted meanwhile win over the failed batch
            self._pending = {**batch, **self._pending}
            metrics.REDIS_PENDING_PROFILES.set(len(self._pending))
            self._ensure_retry()
            return False
        if self._failing:
            self._failing = False
            log.warning("redis is back: %d profiles written", len(batch))
            if self.on_recovered is not None:
                self.on_recovered()
        metrics.REDIS_BATCH_PROFILES.observe(len(batch))
        metrics.REDIS_PENDING_PROFILES.set(len(self._pending))
        return True

    async def _write(self, packed: bytes, replies: int) -> None:
        """Send ``packed`` and read its ``replies``, with the client's retry policy, as its pipeline did:
        a connection or timeout error disconnects and retries the whole write (HSET/ZADD/ZREM and the index
        script are idempotent)."""
        pool = self._redis.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.retry.call_with_retry(lambda: self._send(conn, packed, replies), lambda _: conn.disconnect())
        finally:
            await pool.release(conn)

    @staticmethod
    async def _send(conn: AbstractConnection, packed: bytes, replies: int) -> None:
        """Every reply is read before an error reply is raised, so the pooled connection stays in step.

        The socket timeout bounds the reading of all replies at once: per reply (redis-py's default) its
        timer cost four times the reading itself. ``timeout=math.inf`` is redis-py's "no timeout of its own".
        """
        await conn.send_packed_command(packed)
        error: ResponseError | None = None
        try:
            async with asyncio.timeout(conn.socket_timeout):
                for _ in range(replies):
                    try:
                        await conn.read_response(timeout=math.inf)
                    except ResponseError as exc:
                        error = error or exc
        except TimeoutError:
            # the cancelled read has disconnected; a redis TimeoutError is what the retry policy retries
            raise RedisTimeoutError(f"Timeout reading {replies} replies") from None
        if error is not None:
            raise error

    async def settle(self, timeout: float) -> int:
        """Wait (at most ``timeout`` s) for the write in flight, then drop what is still pending; returns how
        many profiles were dropped.

        For a rebalance: once this worker gives partitions up, a write of its own that lands late could
        overwrite a newer profile written by their next owner. The owners re-write every profile of their
        partitions in their first sweep round after the rebalance, so nothing dropped here stays missing.
        """
        try:
            await asyncio.wait_for(self._lock.acquire(), timeout)
        except TimeoutError:
            log.warning("redis write still in flight after %.1fs at a rebalance: it may land late", timeout)
        else:
            self._lock.release()
        dropped = len(self._pending)
        self._pending.clear()  # no await since the write finished: no other write starts in between
        metrics.REDIS_PENDING_PROFILES.set(0)
        return dropped

    async def close(self) -> None:
        await self._redis.aclose()

    def _ensure_retry(self) -> None:
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.ensure_future(self._retry_loop())

    async def _retry_loop(self) -> None:
        delay = 0.1
        while self._pending:
            await asyncio.sleep(delay)
            if await self.flush():
                return
            delay = min(delay * 2, self._retry_max)
