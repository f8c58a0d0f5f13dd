"""Write-behind of customer profiles to Redis: one pipelined round trip per batch.

The table is the source of truth; Redis is a view of it. A failed write never
stops processing: the profiles stay pending (latest per customer wins) and a
background retry with capped exponential back-off writes them when Redis is
back, so Redis converges to the table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.profile import CustomerProfile
from streams import metrics

log = logging.getLogger(__name__)


def profile_key(prefix: str, customer_id: str) -> str:
    return f"{prefix}profile:{customer_id}"


def vip_key(prefix: str) -> str:
    """Sorted set of the VIPs, scored by their value measure: ZSCORE for a lookup, ZREVRANGE for a page."""
    return f"{prefix}vips"


class RedisProfileSink:
    """Profiles as hashes; each write also adds the customer to or removes it from the VIP sorted set."""

    def __init__(
        self,
        url: str,
        key_prefix: str,
        retry_max_seconds: float,
        vip_value: str = "revenue",
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        # client_kwargs: password/TLS, from streams.security.redis_client_kwargs
        self._redis = aioredis.from_url(url, decode_responses=True, **(client_kwargs or {}))
        self._prefix = key_prefix
        self._vip_key = vip_key(key_prefix)
        self._vip_value = vip_value
        self._retry_max = retry_max_seconds
        #: customer id -> (profile fields, VIP score or None when not VIP)
        self._pending: dict[str, tuple[dict[str, str], float | None]] = {}
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

    def submit(self, profiles: list[CustomerProfile]) -> None:
        for profile in profiles:
            score = float(getattr(profile, self._vip_value)) if profile.vip else None
            self._pending[profile.customer_id] = (profile.to_redis(), score)
        metrics.REDIS_PENDING_PROFILES.set(len(self._pending))

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
            async with self._redis.pipeline(transaction=False) as pipe:
                for cid, (fields, vip_score) in batch.items():
                    pipe.hset(profile_key(self._prefix, cid), mapping=fields)
                    if vip_score is None:
                        pipe.zrem(self._vip_key, cid)
                    else:
                        pipe.zadd(self._vip_key, {cid: vip_score})
                await pipe.execute()
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
