"""Write-behind of customer profiles to Redis: one pipelined round trip per batch.

The table is the source of truth; Redis is a view of it. A failed write never
stops processing: the profiles stay pending (latest per customer wins) and a
background retry with capped exponential back-off writes them when Redis is
back, so Redis converges to the table.

The commands are packed into one buffer and sent on a connection of the
client's pool: redis-py's pipeline packed every argument in Python, and with
~50 fields per profile that packing was an eighth of the worker's CPU. hiredis's
``pack_command`` (C) replaced it, and a generated packer per profile layout
(:func:`pack_hset`) and ``streams.resp.pack_texts`` replaced that in turn,
byte for byte: its ``sprintf`` per argument cost as much as rendering the
profile (issue 18).

A worker the group dropped (stalled past its session, then woken) may still
hold profiles of partitions that have a new owner, and write them before it
learns it was dropped. The writes are fenced by the changelog's ownership
epochs (streams.ownership), which grow with every owner of a partition: each
write reads the partitions' fences (``WATCH`` + ``MGET`` of
``{prefix}fence:{partition}``), leaves out the profiles of partitions whose
fence holds a newer epoch than the writer's, and writes the rest in one
``MULTI``/``EXEC`` that also raises the fences to the writer's epoch. A newer
owner that raises a fence between the read and the ``EXEC`` makes Redis abort
the transaction (``WATCH``), and the write reads the fences again.

The fences outlive the changelog whose epochs they hold. A changelog created
anew (its topic deleted and created again, or a new ``PULSE_APP_ID`` with the
same key prefix to start the app over) counts epochs from 1 again, and the old,
higher fences would refuse every profile for good. So each fence names the
changelog offset of its owner marker (``{prefix}fence-marker:{partition}``,
``count.generation@offset``): a writer that meets a newer fence asks the
changelog whether it holds that epoch's marker at that offset. It does for a
newer owner of the same changelog (the writer was dropped: left out, as
above); it does not for a fence of an earlier changelog, which the writer takes
over (``pulse_redis_fences_replaced_total``). A fence without its marker's
offset (written before this check) is trusted as before; a changelog that cannot
be read in time fails the write, which is retried.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any, cast

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas.profile import CustomerProfile, RenderedProfile, native_packer
from streams import metrics
from streams.at_risk import index_entry, pack_update
from streams.ownership import Epoch, decode_epoch, encode_epoch
from streams.resp import HEADS, pack_texts

log = logging.getLogger(__name__)


def profile_key(prefix: str, customer_id: str) -> str:
    return f"{prefix}profile:{customer_id}"


def fence_key(prefix: str, partition: int) -> str:
    """The epoch of the newest owner that wrote partition ``partition``'s profiles ("count.generation")."""
    return f"{prefix}fence:{partition}"


def fence_marker_key(prefix: str, partition: int) -> str:
    """Where the fence's owner marker is in the changelog ("count.generation@offset"); a key of its own, so the
    fence's value stays what earlier versions read."""
    return f"{prefix}fence-marker:{partition}"


def encode_fence_marker(epoch: Epoch, offset: int) -> str:
    return f"{encode_epoch(epoch).decode()}@{offset}"


def decode_fence_marker(text: str | None) -> tuple[Epoch, int] | None:
    """(epoch, offset) of a fence-marker value; None when absent or not of that form."""
    if not text:
        return None
    epoch, _, offset = text.partition("@")
    try:
        return decode_epoch(epoch.encode()), int(offset)
    except ValueError:
        return None


async def _unchecked(partition: int, epoch: Epoch, offset: int) -> bool | None:
    return True


@dataclass(frozen=True)
class ProfileFence:
    """Where a customer's profile belongs, and the epoch this worker writes that partition with (None: no owner
    marker yet; its profiles are written without a fence, as before epochs)."""

    partition_of: Callable[[str], int]
    epoch: Callable[[int], Epoch | None]
    #: the changelog offset of this worker's owner marker of a partition (None: unknown; its fence is raised
    #: without one, and a writer that meets it trusts it)
    marker_offset: Callable[[int], int | None] = lambda partition: None
    #: does changelog partition ``partition`` hold the owner marker of ``epoch`` at ``offset``? True, False (the
    #: fence is of an earlier changelog), None (could not tell in time). The default trusts every fence.
    holds_marker: Callable[[int, Epoch, int], Awaitable[bool | None]] = _unchecked


class FenceUnconfirmed(RedisError):
    """A newer fence's owner marker could not be looked up in the changelog in time: the write is retried (a
    failure, as a Redis error is), neither written over the fence nor left out."""


#: verdicts of :attr:`ProfileFence.holds_marker` kept at most (they do not change: the marker at an offset of one
#: changelog stays what it is); cleared beyond
MARKER_VERDICTS = 1024


#: how many times one write reads the fences again after a newer owner raised one under it (a rebalance of its
#: partitions each time): then the write fails, and the retry loop writes what is left later
FENCE_ATTEMPTS = 5

_MULTI = pack_texts(("MULTI",))
_EXEC = pack_texts(("EXEC",))
_UNWATCH = pack_texts(("UNWATCH",))


def vip_key(prefix: str) -> str:
    """Sorted set of the VIPs, scored by their value measure: ZSCORE for a lookup, ZREVRANGE for a page."""
    return f"{prefix}vips"


#: what the sink keeps of a profile until it is written: the packed HSET, the VIP score (None: not VIP) and its
#: at-risk index entry (index score, '|'-joined index keys; '' when not at risk: streams.at_risk)
Packed = tuple[bytes, float | None, tuple[str, str]]


#: profile fields whose values the renderer (schemas.profile.profile_args) builds from numbers and flags only:
#: ASCII by construction, so a value's length in characters is its length in bytes. Every other field (the
#: ids, names and JSON, and any field added later) has its UTF-8 length counted.
ASCII_FIELDS = frozenset(
    (
        *("revenue", "profit", "aov", "revenue_window", "expected_order_value", "clv", "clv_historical"),
        *("value_at_risk", "first_purchase_at", "last_purchase_at", "last_alert_at", "last_event_at", "as_of"),
        *("recency_days", "tenure_days", "orders_per_month", "first_response_hours_mean", "p_alive"),
        *("last_first_response_hours", "last_resolution_hours", "oldest_open_ticket_hours", "expected_purchases"),
        *("orders", "refunds", "nps", "nps_previous", "csat", "complaints_window", "complaints_total"),
        *("tickets_total", "open_tickets", "reopened_total", "sla_breaches", "churn_risk", "churn_alerts"),
        *("events_total", "vip", "csat_satisfied"),
    )
)


#: the field whose value is the one usually not ASCII (a churn reason's detail: "over 3 × their gap"): packed as
#: its own piece, so the rest stays one-byte text that joins and encodes by copying
_WIDE_FIELD = "churn_reasons"


def _hset_packer(fields: tuple[str, ...]) -> Callable[[str, tuple[str, ...]], bytes | None]:
    """A function (key, profile args) -> the HSET's RESP bytes, for profiles of exactly ``fields`` in this order.

    Generated like dataclasses' ``__init__``: f-strings whose constant parts are the command and the field
    names with their headers, so a value costs a ``len`` and a table lookup (plus ``isascii``, and for a text
    that is not, its UTF-8 length, outside ``ASCII_FIELDS``), and the command three ``encode`` calls (the text
    before ``_WIDE_FIELD``'s value, that value, the text after it). hiredis's ``pack_command`` formatted every
    header with ``sprintf`` in malloc-ed buffers: ~1,500 instructions per argument, as much as the rendering.
    It returns None when a value of ``ASCII_FIELDS`` is not ASCII after all (not the renderer's): the header
    counted characters then, and the caller packs the command with hiredis. Checked in O(1) when the text
    around the wide value is ASCII (str.isascii reads a flag); else the numbers are joined and checked. A value
    longer than the header table raises IndexError (hiredis packs it then too).
    """

    def text(var: str) -> str:
        return f"{{_H[len({var}) if {var}.isascii() else len({var}.encode())]}}{{{var}}}\\r\\n"

    names, numbers = [], []
    before = [f"*{2 + 2 * len(fields)}\\r\\n$4\\r\\nHSET\\r\\n{text('key')}"]
    after: list[str] = []
    pieces, wide = before, '""'
    for i, name in enumerate(fields):
        if not name.isidentifier() or not name.isascii():
            raise ValueError(f"profile field {name!r}: not an ASCII identifier")
        names.append(f"_, v{i}")
        pieces.append(f"${len(name)}\\r\\n{name}\\r\\n")
        if name in ASCII_FIELDS:
            pieces.append(f"{{_H[len(v{i})]}}{{v{i}}}\\r\\n")
            numbers.append(f"{{v{i}}}")
        elif name == _WIDE_FIELD:
            pieces.append(f"{{_H[len(v{i}) if v{i}.isascii() else len(v{i}.encode())]}}")
            pieces, wide = after, f"v{i}"
            pieces.append("\\r\\n")
        else:
            pieces.append(text(f"v{i}"))
    source = (
        f"def hset(key, args):\n    {', '.join(names)} = args\n"
        f'    a = f"{"".join(before)}"\n    b = f"{"".join(after)}"\n'
        f'    if (a.isascii() and b.isascii()) or f"{"".join(numbers)}".isascii():\n'
        f"        return b''.join((a.encode(), {wide}.encode(), b.encode()))\n"
        "    return None\n"
    )
    namespace: dict[str, Any] = {"_H": HEADS}
    exec(source, namespace)  # noqa: S102 - generated from the profile's own field names
    return cast(Callable[[str, tuple[str, ...]], bytes | None], namespace["hset"])


#: the profile's field names in the renderer's order, and the HSET packer of that layout
_FIELDS = tuple(CustomerProfile.model_fields)
_pack_hset = _hset_packer(_FIELDS)


def pack_hset(key: str, args: tuple[str, ...]) -> bytes:
    """``HSET key field value ...`` in RESP, byte for byte as hiredis's ``pack_command`` packs it: by the C packer
    (schemas._native, ~4x faster) when built and on, else by the generated packer when ``args`` has the profile's
    layout and its numbers are short (always, in practice), else by hiredis. tests/unit/test_redis_pack.py and
    tests/unit/test_native_profile.py hold them equal."""
    native = native_packer()
    if native is not None:
        packed = native(key, args)
        if packed is not None:
            return packed
    if args[::2] == _FIELDS:
        try:
            packed = _pack_hset(key, args)
        except IndexError:
            packed = None
        if packed is not None:
            return packed
    # hiredis's stub types the command as a 1-tuple: any number of arguments is what it packs
    return pack_command(("HSET", key, *args))  # type: ignore[arg-type]


def pack_profile(profile: RenderedProfile, key_prefix: str, vip_value: str) -> Packed:
    """The packed HSET of the profile's fields, its VIP score (its ``vip_value`` field) or None if not VIP, and
    its at-risk index entry.

    float() of the money string equals float() of the Decimal the edge model holds, which the sink used to send.
    """
    hset = pack_hset(profile_key(key_prefix, profile.customer_id), profile.args)
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
        parts.append(pack_texts(("ZADD", vip_key(key_prefix), *chain.from_iterable(added))))
    if removed:
        parts.append(pack_texts(("ZREM", vip_key(key_prefix), *removed)))
    if batch:
        parts.append(pack_update(key_prefix, [(cid, score, keys) for cid, (_, _, (score, keys)) in batch.items()]))
    return b"".join(parts), len(parts)


#: profiles per round trip. The client's socket timeout (PULSE_REDIS_TIMEOUT_SECONDS) bounds each round trip, so
#: what is pending after an outage (up to every customer of the worker) goes in round trips that each finish well
#: within it: one round trip of all of them could outlast the timeout, fail and be retried for ever (200,000 took
#: 5.6-8.8 s). 2,000 take 42-80 ms (benchmarks/redis_write.py), about what a backlog's batch writes anyway.
WRITE_CHUNK_PROFILES = 2000


def write_chunks(batch: dict[str, Packed], size: int) -> Iterator[dict[str, Packed]]:
    """``batch`` in pieces of at most ``size`` profiles, in its order (itself when it fits: the usual case)."""
    if len(batch) <= size:
        yield batch
        return
    items = iter(batch.items())
    while chunk := dict(islice(items, size)):
        yield chunk


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
        fence: ProfileFence | None = None,
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
        #: how many times :meth:`settle` dropped the pending profiles (a write in flight across one keeps its
        #: profiles dropped if it fails)
        self._settled = 0
        #: the ownership epochs the writes are fenced with (None: not fenced; tests and tools without a table)
        self._fence = fence
        #: (partition, fence epoch, marker offset) -> whether the changelog holds that owner marker there
        self._marker_verdicts: dict[tuple[int, Epoch, int], bool] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, profiles: Iterable[RenderedProfile]) -> None:
        pending, prefix, vip_value = self._pending, self._prefix, self._vip_value
        for profile in profiles:
            pending[profile.customer_id] = pack_profile(profile, prefix, vip_value)
        metrics.REDIS_PENDING_PROFILES.set(len(pending))

    def submit_packed(self, packed: Mapping[str, Packed]) -> None:
        """Profiles packed elsewhere (the render process, streams.render_process), as :meth:`submit` packs them."""
        self._pending.update(packed)
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
        settled = self._settled
        written = left_out = 0
        try:
            for chunk in write_chunks(batch, WRITE_CHUNK_PROFILES):
                if self._fence is None:
                    await self._write(*pack_batch(chunk, self._prefix))
                else:
                    left_out += await self._write_fenced(chunk, self._fence)
                written += len(chunk)
        except (RedisError, OSError) as exc:
            if written:  # the chunks written stay written: only the rest is pending again
                batch = dict(islice(batch.items(), written, None))
            metrics.REDIS_WRITE_ERRORS.inc()
            self._failing = True
            if self._settled != settled:
                # a rebalance settled while this write hung: its partitions may have a new owner, whose newer
                # profiles a retry of these would overwrite (the owners re-write theirs in their sweep rounds)
                log.warning("redis write of %d profiles failed after a rebalance settled: dropped: %s", len(batch), exc)
                metrics.REDIS_PENDING_PROFILES.set(len(self._pending))
                self._ensure_retry()
                return False
            log.warning("redis write of %d profiles failed, will retry: %s", len(batch), exc)
            # newer profiles submitted meanwhile win over the failed batch
            self._pending = {**batch, **self._pending}
            metrics.REDIS_PENDING_PROFILES.set(len(self._pending))
            self._ensure_retry()
            return False
        if self._failing:
            self._failing = False
            fenced = f" ({left_out} left out by the fences)" if left_out else ""
            log.warning("redis is back: %d profiles written%s", len(batch) - left_out, fenced)
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

    async def _write_fenced(self, chunk: dict[str, Packed], fence: ProfileFence) -> int:
        """Write ``chunk`` but the profiles of partitions a newer owner writes (the module's docstring), with the
        client's retry policy as :meth:`_write` (a retry starts again from the fences' read); returns how many
        profiles were left out."""
        partition_of, epoch_of = fence.partition_of, fence.epoch
        partitions = {cid: partition_of(cid) for cid in chunk}
        epochs = {p: epoch for p in set(partitions.values()) if (epoch := epoch_of(p)) is not None}
        if not epochs:  # no owner marker yet for any of them: nothing to fence with
            await self._write(*pack_batch(chunk, self._prefix))
            return 0
        pool = self._redis.connection_pool
        conn = await pool.get_connection()
        try:
            return await conn.retry.call_with_retry(
                lambda: self._send_fenced(conn, chunk, partitions, epochs), lambda _: conn.disconnect()
            )
        finally:
            await pool.release(conn)

    async def _send_fenced(
        self, conn: AbstractConnection, chunk: dict[str, Packed], partitions: dict[str, int], epochs: dict[int, Epoch]
    ) -> int:
        try:
            return await self._exchange_fenced(conn, chunk, partitions, epochs)
        except BaseException:
            await conn.disconnect()  # no WATCH or MULTI left on a pooled connection
            raise

    async def _exchange_fenced(
        self, conn: AbstractConnection, chunk: dict[str, Packed], partitions: dict[str, int], epochs: dict[int, Epoch]
    ) -> int:
        fence = self._fence
        assert fence is not None  # only fenced sinks write through here
        prefix = self._prefix
        order = list(epochs)
        keys = [fence_key(prefix, p) for p in order]
        marker_keys = [fence_marker_key(prefix, p) for p in order]
        read_fences = pack_texts(("WATCH", *keys)) + pack_texts(("MGET", *keys, *marker_keys))
        verdicts = self._marker_verdicts
        for _ in range(FENCE_ATTEMPTS):
            await conn.send_packed_command(read_fences)
            stored = cast(list[str | None], (await self._replies(conn, 2))[1])
            newer: dict[int, Epoch] = {}
            unchecked: list[tuple[int, Epoch, int]] = []
            replaced: dict[int, Epoch] = {}
            raise_to: list[tuple[str, ...]] = []
            for i, partition in enumerate(order):
                ours = epochs[partition]
                text, marker = stored[i], decode_fence_marker(stored[len(order) + i])
                theirs = None if text is None else decode_epoch(text.encode())
                if theirs is not None and theirs > ours:
                    if marker is None or marker[0] != theirs:  # raised by an earlier version: trusted
                        newer[partition] = theirs
                        continue
                    held = verdicts.get((partition, theirs, marker[1]))
                    if held is None:
                        unchecked.append((partition, theirs, marker[1]))
                        continue
                    if held:
                        newer[partition] = theirs
                        continue
                    replaced[partition] = theirs  # an earlier changelog's: written over below
                if theirs != ours:
                    raise_to.append(("SET", keys[i], encode_epoch(ours).decode()))
                    offset = fence.marker_offset(partition)
                    if offset is None:
                        raise_to.append(("DEL", marker_keys[i]))
                    else:
                        raise_to.append(("SET", marker_keys[i], encode_fence_marker(ours, offset)))
            if unchecked:
                await conn.send_packed_command(_UNWATCH)
                await self._replies(conn, 1)
                await self._check_markers(unchecked, fence)
                continue  # read the fences again, with the changelog's answers
            batch = chunk if not newer else {cid: v for cid, v in chunk.items() if partitions[cid] not in newer}
            if not batch:
                await conn.send_packed_command(_UNWATCH)
                await self._replies(conn, 1)
                self._fenced(len(chunk), newer, epochs)
                return len(chunk)
            body, replies = pack_batch(batch, prefix)
            parts = [_MULTI, body, *(pack_texts(command) for command in raise_to), _EXEC]
            await conn.send_packed_command(b"".join(parts))
            # MULTI's OK, a QUEUED per command, then EXEC's replies (None: a watched fence changed, nothing written)
            done = (await self._replies(conn, 2 + replies + len(raise_to)))[-1]
            if done is None:
                continue
            if error := next((r for r in cast(list[Any], done) if isinstance(r, Exception)), None):
                raise error
            if replaced:
                self._replaced(replaced, epochs)
            if newer:
                self._fenced(len(chunk) - len(batch), newer, epochs)
            return len(chunk) - len(batch)
        raise RedisError(f"the fences of partitions {order} changed under {FENCE_ATTEMPTS} writes in a row")

    async def _check_markers(self, unchecked: list[tuple[int, Epoch, int]], fence: ProfileFence) -> None:
        """Ask the changelog for the owner markers that newer fences name; raise :class:`FenceUnconfirmed` if it
        could not tell for one of them."""
        verdicts = self._marker_verdicts
        if len(verdicts) + len(unchecked) > MARKER_VERDICTS:
            verdicts.clear()
        for partition, theirs, offset in unchecked:
            held = await fence.holds_marker(partition, theirs, offset)
            if held is None:
                raise FenceUnconfirmed(
                    f"partition {partition}'s fence names owner marker {encode_fence_marker(theirs, offset)}, and "
                    "the changelog could not be read in time to check it"
                )
            verdicts[(partition, theirs, offset)] = held

    def _replaced(self, replaced: dict[int, Epoch], epochs: dict[int, Epoch]) -> None:
        metrics.REDIS_FENCES_REPLACED.inc(len(replaced))
        log.warning(
            "redis fences of partition(s) %s replaced: their owner markers (epochs %s) are not in this changelog, "
            "so they were raised for an earlier one (the changelog topic created again, or another app id with "
            "the same key prefix); this worker's epochs %s",
            sorted(replaced),
            {p: encode_epoch(e).decode() for p, e in sorted(replaced.items())},
            {p: encode_epoch(epochs[p]).decode() for p in sorted(replaced)},
        )

    def _fenced(self, count: int, newer: dict[int, Epoch], epochs: dict[int, Epoch]) -> None:
        metrics.REDIS_FENCED_PROFILES.inc(count)
        log.warning(
            "%d profile(s) of partition(s) %s not written to Redis: a newer owner writes them (fence epochs %s, this "
            "worker's %s); was this worker dropped from the group?",
            count,
            sorted(newer),
            {p: encode_epoch(e).decode() for p, e in sorted(newer.items())},
            {p: encode_epoch(epochs[p]).decode() for p in sorted(newer)},
        )

    @staticmethod
    async def _replies(conn: AbstractConnection, count: int) -> list[Any]:
        """Read ``count`` replies. Every reply is read before an error reply is raised, so the pooled connection
        stays in step.

        The socket timeout bounds the reading of all replies at once: per reply (redis-py's default) its
        timer cost four times the reading itself. ``timeout=math.inf`` is redis-py's "no timeout of its own".
        """
        out: list[Any] = []
        error: ResponseError | None = None
        try:
            async with asyncio.timeout(conn.socket_timeout):
                for _ in range(count):
                    try:
                        out.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as exc:
                        error = error or exc
                        out.append(exc)
        except TimeoutError:
            # the cancelled read has disconnected; a redis TimeoutError is what the retry policy retries
            raise RedisTimeoutError(f"Timeout reading {count} replies") from None
        if error is not None:  # (READONLY: the retry policy drops the connection, streams.security)
            raise error
        return out

    @staticmethod
    async def _send(conn: AbstractConnection, packed: bytes, replies: int) -> None:
        await conn.send_packed_command(packed)
        await RedisProfileSink._replies(conn, replies)

    async def settle(self, timeout: float) -> int:
        """Wait (at most ``timeout`` s) for the write in flight, then drop what is still pending; returns how
        many profiles were dropped.

        For a rebalance: once this worker gives partitions up, a write of its own that lands late could
        overwrite a newer profile written by their next owner. The owners re-write every profile of their
        partitions in their first sweep round after the rebalance, so nothing dropped here stays missing. A write
        still in flight after ``timeout`` may land late: the fences leave out its profiles of partitions a newer
        owner wrote meanwhile (tests/e2e/test_redis_fencing.py); if it fails, its profiles are dropped too, not
        retried (the copy it took before its await used to be put back and written by the retry loop, much later).
        """
        try:
            await asyncio.wait_for(self._lock.acquire(), timeout)
        except TimeoutError:
            log.warning("redis write still in flight after %.1fs at a rebalance: it may land late", timeout)
        else:
            self._lock.release()
        self._settled += 1  # a write still in flight does not put its profiles back if it fails
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
