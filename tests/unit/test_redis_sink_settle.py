"""The Redis write-behind at a rebalance (streams/sinks/redis_profiles.py ``settle``), with the write replaced by a
fake that hangs and then fails: what a hung write took before the rebalance is not written after it."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from streams.sinks import redis_profiles
from streams.sinks.redis_profiles import RedisProfileSink


@pytest.fixture(autouse=True)
def plain_packing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pending entry's bytes as they are: what is written is what the test submitted."""
    monkeypatch.setattr(redis_profiles, "pack_batch", lambda batch, _: (b"|".join(v[0] for v in batch.values()), 1))


def sink_with_a_hanging_write() -> tuple[RedisProfileSink, asyncio.Event, list[bytes]]:
    """A sink (no Redis behind it) whose first write waits for the event, then fails; later writes succeed."""
    sink = RedisProfileSink("redis://127.0.0.1:9/0", "t:", retry_max_seconds=0.05)
    release = asyncio.Event()
    written: list[bytes] = []

    async def write(packed: bytes, replies: int) -> None:
        if not release.is_set():
            await release.wait()
            raise RedisConnectionError("connection lost")
        written.append(packed)

    sink._write = write  # type: ignore[method-assign]
    return sink, release, written


async def write_hung_on(
    profiles: dict[str, bytes],
) -> tuple[RedisProfileSink, asyncio.Event, list[bytes], asyncio.Future[bool]]:
    """``profiles`` submitted and taken by a write that hangs until the event is set (then it fails)."""
    sink, release, written = sink_with_a_hanging_write()
    sink.submit_packed({cid: (packed, None, None) for cid, packed in profiles.items()})  # type: ignore[misc]
    flushing = asyncio.ensure_future(sink.flush())
    await asyncio.sleep(0.01)
    return sink, release, written, flushing


async def retried(written: list[bytes]) -> None:
    """Wait (at most a second) for the retry loop's first successful write."""
    for _ in range(100):
        if written:
            return
        await asyncio.sleep(0.01)


def test_a_write_that_fails_after_a_rebalance_settled_is_dropped_not_retried():
    async def go() -> None:
        sink, release, written, flushing = await write_hung_on({"C1": b"C1"})
        assert sink.pending == 0  # taken by the write in flight
        assert await sink.settle(0.05) == 0  # the write still hangs: settle gives up waiting
        sink.submit_packed({"C2": (b"C2", None, None)})  # type: ignore[dict-item]  # a kept one
        release.set()
        assert await flushing is False
        assert sink.pending == 1  # C2 only: C1 (its partition may have a new owner) is not put back
        await retried(written)
        assert written and b"C1" not in b"".join(written) and b"C2" in b"".join(written)

    asyncio.run(go())


def test_a_failed_write_without_a_rebalance_is_retried_with_newer_profiles_winning():
    async def go() -> None:
        sink, release, written, flushing = await write_hung_on({"C1": b"old C1"})
        sink.submit_packed({"C1": (b"new C1", None, None)})  # type: ignore[dict-item]
        release.set()
        assert await flushing is False
        await retried(written)
        assert written and b"new C1" in written[0] and b"old C1" not in written[0]

    asyncio.run(go())
