"""The profile sink's hand-packed write against a real redis-server: what lands, and what counts as a failure.

The sink sends one hiredis-packed buffer on a pooled connection instead of
redis-py's pipeline; these pin down that the hashes and the VIP set come out
as before, that an error reply for one command keeps the batch pending (as the
pipeline's raise-on-error did) and that the client's password reaches the
pooled connection.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from msgspec.structs import replace
from redis.asyncio import Connection

from pulse.devstack import Server, free_port, redis_binary, start_redis, stop_process, wait_port
from pulse_config.settings import Settings
from schemas.profile import CustomerProfile, RenderedProfile, render_profile
from scoring.customer import assess_customer
from streams import metrics
from streams.at_risk import UPDATE_SCRIPT, index_score, index_suffixes
from streams.partitioning import partitioner
from streams.security import redis_client_kwargs
from streams.sinks import redis_profiles
from streams.sinks.redis_profiles import (
    ProfileFence,
    RedisProfileSink,
    fence_key,
    fence_marker_key,
    pack_batch,
    pack_hset,
    pack_profile,
    profile_key,
    vip_key,
)
from testing.tcp_proxy import SwitchingProxy
from testing.templates import template_states

pytestmark = pytest.mark.e2e

SETTINGS = Settings(_env_file=None)
CONFIG = SETTINGS.scoring()
TEMPLATES = template_states(200, 7)
PASSWORD = "sink-test-password"
#: the project's retry policy (streams.security.redis_client_kwargs, what the worker gives the sink): fail at once
#: instead of redis-py's own retries, and a connection that answered READONLY is dropped
NO_RETRY = {k: v for k, v in redis_client_kwargs(Settings(_env_file=None)).items() if k in ("retry", "retry_on_error")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_redis(tmp_path_factory.mktemp("sink-redis"))
    yield srv
    srv.stop()


@pytest.fixture
def prefix() -> str:
    return f"sink{uuid.uuid4().hex[:8]}:"


def url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def rendered(n: int, vip: bool | None = None) -> list[RenderedProfile]:
    """Realistic profiles (templates at their clock); ``vip`` forces the flag, else the template's."""
    out = []
    for i in range(n):
        state = TEMPLATES.states[i % len(TEMPLATES.states)]
        if vip is not None:
            state = replace(state, vip=vip)
        clv, risk = assess_customer(state, TEMPLATES.clock_ms, 30.0, CONFIG)
        out.append(render_profile(f"C{i:05d}", state, TEMPLATES.clock_ms, CONFIG, "USD", clv, risk))
    return out


def flat(fields: dict[str, str]) -> tuple[str, ...]:
    return tuple(x for kv in fields.items() for x in kv)


async def closed(sink: RedisProfileSink) -> None:
    """The sink's retry loop (started by a failed write) cancelled, its client closed."""
    if sink._retry_task is not None:
        sink._retry_task.cancel()
    await sink.close()


def errors() -> float:
    return metrics.REDIS_WRITE_ERRORS._value.get()


def test_the_packed_write_is_the_bytes_redis_py_would_send():
    """Same commands and arguments as redis-py's hset(mapping=...), zadd(mapping) and zrem(*members), and the
    scores as the old sink sent them (float of the edge model's Decimal)."""
    conn = Connection()
    profiles = rendered(30, vip=True)[:12] + rendered(30, vip=False)[12:]
    batch = {p.customer_id: pack_profile(p, "p:", "revenue") for p in profiles}
    commands = [
        ("HSET", profile_key("p:", p.customer_id), *[x for kv in p.fields.items() for x in kv]) for p in profiles
    ]
    added = [x for p in profiles if p.vip for x in (float(p.model().revenue), p.customer_id)]
    commands.append(("ZADD", vip_key("p:"), *added))
    commands.append(("ZREM", vip_key("p:"), *[p.customer_id for p in profiles if not p.vip]))
    # the at-risk index: priority and value at risk as one score (streams.at_risk.index_score); "0" and no keys
    # for a customer not at risk
    index = [
        x
        for p in profiles
        for x in (
            (p.customer_id, str(index_score(p.model().churn_level, p.model().value_at_risk)), index_suffixes(p))
            if p.model().churn_level in ("medium", "high")
            else (p.customer_id, "0", "")
        )
    ]
    assert "0" in index[1::3] and len(set(index[1::3])) > 2  # customers not at risk and several at risk
    commands.append(("EVAL", UPDATE_SCRIPT, "0", "p:", *index))
    assert pack_batch(batch, "p:") == (b"".join(conn.pack_commands(commands)), len(commands))
    # a batch without VIPs (or without non-VIPs) sends no empty ZADD (ZREM): Redis would reply an error
    assert pack_batch(dict(list(batch.items())[12:]), "p:")[1] == 18 + 1 + 1


#: the worker's partitioner over 4 partitions, by customer id (what the worker's ProfileFence places profiles by)
PARTITION_OF = partitioner(4)


def fence_at(epochs: dict[int, tuple[int, int]]) -> ProfileFence:
    """A worker's fence: its epoch per partition (a partition not in ``epochs`` has none)."""
    return ProfileFence(lambda cid: PARTITION_OF(cid.encode()), epochs.get)


#: every partition at one epoch, as a worker that owns them all writes
ALL_OWNED = fence_at(dict.fromkeys(range(4), (1, 0)))


@pytest.mark.parametrize("fence", [None, ALL_OWNED], ids=["unfenced", "fenced"])
async def test_profiles_land_with_exactly_their_fields_and_the_vip_set(
    server: Server, prefix: str, fence: ProfileFence | None
):
    sink = RedisProfileSink(url(server.port), prefix, 1.0, "profit", fence=fence)
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        profiles = rendered(300)
        vips = {p.customer_id for p in profiles if p.vip}
        assert vips and len(vips) < len(profiles)
        sink.submit(profiles)
        assert sink.pending == len(profiles)
        assert await sink.flush()
        assert sink.pending == 0
        pipe = client.pipeline()
        for p in profiles:
            pipe.hgetall(profile_key(prefix, p.customer_id))
        for p, got in zip(profiles, pipe.execute(), strict=True):
            assert got == p.fields
            assert CustomerProfile.from_redis(got) == p.model()
        members = dict(client.zrange(vip_key(prefix), 0, -1, withscores=True))
        assert members == {p.customer_id: float(p.fields["profit"]) for p in profiles if p.vip}

        # the latest profile per customer wins; leaving VIP removes it from the set
        first = next(p for p in profiles if p.vip)
        older = RenderedProfile(first.customer_id, True, flat({**first.fields, "orders": "1"}))
        newer = RenderedProfile(first.customer_id, False, flat({**first.fields, "vip": "False", "orders": "2"}))
        sink.submit([older])
        sink.submit([newer])
        assert sink.pending == 1 and await sink.flush()
        assert client.hget(profile_key(prefix, first.customer_id), "orders") == "2"
        assert client.zscore(vip_key(prefix), first.customer_id) is None
    finally:
        await sink.close()
        client.close()


@pytest.mark.parametrize("fence", [None, ALL_OWNED], ids=["unfenced", "fenced"])
async def test_an_error_reply_is_a_failure_and_the_profiles_stay_pending(
    server: Server, prefix: str, fence: ProfileFence | None
):
    sink = RedisProfileSink(url(server.port), prefix, 0.2, fence=fence)
    recovered: list[bool] = []
    sink.on_recovered = lambda: recovered.append(True)
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        good, bad = rendered(2)
        client.set(profile_key(prefix, bad.customer_id), "not a hash")  # HSET replies WRONGTYPE
        before = errors()
        sink.submit([good, bad])
        assert await sink.flush() is False
        assert errors() == before + 1
        assert sink.pending == 2  # the whole batch, as the pipeline's raise-on-error kept it
        # every reply was read: the pooled connection is still in step for the next command
        assert client.hgetall(profile_key(prefix, good.customer_id)) == good.fields
        client.delete(profile_key(prefix, bad.customer_id))
        deadline = time.monotonic() + 10
        while not recovered and time.monotonic() < deadline:  # the sink's own retry writes them
            await asyncio.sleep(0.05)
        assert sink.pending == 0 and recovered == [True]
        assert client.hgetall(profile_key(prefix, bad.customer_id)) == bad.fields
        # and the connection the sink reused answers correctly afterwards
        sink.submit([good])
        assert await sink.flush()
    finally:
        await sink.close()
        client.close()


def fenced_count() -> float:
    return metrics.REDIS_FENCED_PROFILES._value.get()


def stored(client: redis.Redis, prefix: str, profiles: list[RenderedProfile]) -> dict[str, dict[str, str]]:
    pipe = client.pipeline()
    for p in profiles:
        pipe.hgetall(profile_key(prefix, p.customer_id))
    return {p.customer_id: got for p, got in zip(profiles, pipe.execute(), strict=True)}


def with_orders(profiles: list[RenderedProfile], orders: str, vip: bool) -> list[RenderedProfile]:
    """The same customers with another ``orders`` field and VIP flag (a later profile of theirs)."""
    return [
        RenderedProfile(p.customer_id, vip, flat({**p.fields, "orders": orders, "vip": str(vip)})) for p in profiles
    ]


async def test_a_newer_owners_fence_keeps_a_dropped_workers_profiles_out(server: Server, prefix: str):
    """A worker the group dropped (its epochs 3.5), woken after partition 0 got a new owner (epoch 4.6) that wrote
    there: its profiles of partition 0 are left out (counted, logged, not retried), its other partitions' land, and
    the VIP set keeps the new owner's view. Redis without fences (new, or restarted empty) takes any epoch."""
    client = redis.Redis(port=server.port, decode_responses=True)
    dropped = RedisProfileSink(url(server.port), prefix, 0.2, fence=fence_at(dict.fromkeys(range(4), (3, 5))))
    owner = RedisProfileSink(url(server.port), prefix, 0.2, fence=fence_at({0: (4, 6)}))
    try:
        profiles = rendered(40)
        moved = [p for p in profiles if PARTITION_OF(p.customer_id.encode()) == 0]
        assert 0 < len(moved) < len(profiles)
        dropped.submit(profiles)
        assert await dropped.flush()
        assert client.mget([fence_key(prefix, p) for p in range(4)]) == ["3.5"] * 4

        owner.submit(with_orders(moved, "2", vip=False))
        assert await owner.flush()
        assert client.get(fence_key(prefix, 0)) == "4.6"

        before = fenced_count()
        dropped.submit(with_orders(profiles, "3", vip=True))
        assert await dropped.flush()
        assert dropped.pending == 0 and fenced_count() == before + len(moved)
        got = stored(client, prefix, profiles)
        assert {cid for cid, fields in got.items() if fields["orders"] == "2"} == {p.customer_id for p in moved}
        assert all(fields["orders"] == "3" for cid, fields in got.items() if cid not in {p.customer_id for p in moved})
        assert all(client.zscore(vip_key(prefix), p.customer_id) is None for p in moved)
        assert client.mget([fence_key(prefix, p) for p in range(4)]) == ["4.6", "3.5", "3.5", "3.5"]
    finally:
        await dropped.close()
        await owner.close()
        client.close()


def replaced_count() -> float:
    return metrics.REDIS_FENCES_REPLACED._value.get()


class Changelog:
    """What a worker's changelog answers about the owner markers Redis fences name (``CustomerStateTable.
    holds_marker``): ``markers`` holds (partition, epoch, offset) of the markers it has; ``readable`` False is a
    changelog that cannot be read in time. Records each question."""

    def __init__(self, markers: set[tuple[int, tuple[int, int], int]], readable: bool = True) -> None:
        self.markers, self.readable = markers, readable
        self.asked: list[tuple[int, tuple[int, int], int]] = []

    async def holds_marker(self, partition: int, epoch: tuple[int, int], offset: int) -> bool | None:
        self.asked.append((partition, epoch, offset))
        if not self.readable:
            return None
        return (partition, epoch, offset) in self.markers


def fence_with(epoch: tuple[int, int], offset: int, changelog: Changelog) -> ProfileFence:
    """A worker owning all 4 partitions at ``epoch``, its owner markers at changelog offset ``offset``."""
    return ProfileFence(
        lambda cid: PARTITION_OF(cid.encode()), lambda p: epoch, lambda p: offset + p, changelog.holds_marker
    )


async def test_the_fences_of_an_earlier_changelog_are_taken_over(server: Server, prefix: str):
    """The app started over on a new changelog (its topic created again, or a new app id) with the same Redis:
    the new owners count epochs from 1 again, under fences of 5.9. Those fences name owner markers the new
    changelog lacks, so the new owners write over them (counted, asked once per fence). Without the check every
    profile would be left out for good (docs/operations.md gave a manual step until session 34)."""
    client = redis.Redis(port=server.port, decode_responses=True)
    earlier = RedisProfileSink(url(server.port), prefix, 0.2, fence=fence_with((5, 9), 7000, Changelog(set())))
    new_changelog = Changelog({(p, (1, 1), 12 + p) for p in range(4)})
    now = RedisProfileSink(url(server.port), prefix, 0.2, fence=fence_with((1, 1), 12, new_changelog))
    try:
        profiles = rendered(40)
        earlier.submit(profiles)
        assert await earlier.flush()
        assert client.mget([fence_marker_key(prefix, p) for p in range(4)]) == [f"5.9@{7000 + p}" for p in range(4)]

        before, fenced_before = replaced_count(), fenced_count()
        now.submit(with_orders(profiles, "new", vip=False))
        assert await now.flush()
        assert now.pending == 0 and fenced_count() == fenced_before
        assert all(f["orders"] == "new" for f in stored(client, prefix, profiles).values())
        assert replaced_count() == before + 4
        assert sorted(new_changelog.asked) == [(p, (5, 9), 7000 + p) for p in range(4)]
        assert client.mget([fence_key(prefix, p) for p in range(4)]) == ["1.1"] * 4
        assert client.mget([fence_marker_key(prefix, p) for p in range(4)]) == [f"1.1@{12 + p}" for p in range(4)]

        # a newer owner on the new changelog (its marker there) still keeps this worker out of partition 0
        client.mset({fence_key(prefix, 0): "2.3", fence_marker_key(prefix, 0): "2.3@40"})
        new_changelog.markers.add((0, (2, 3), 40))
        moved = [p for p in profiles if PARTITION_OF(p.customer_id.encode()) == 0]
        now.submit(with_orders(profiles, "again", vip=False))
        assert await now.flush()
        assert fenced_count() == fenced_before + len(moved) and replaced_count() == before + 4
        got = stored(client, prefix, profiles)
        assert {cid for cid, f in got.items() if f["orders"] == "new"} == {p.customer_id for p in moved}
        # the changelog's answer is kept: the next write does not ask again
        asked = len(new_changelog.asked)
        now.submit(with_orders(moved, "once more", vip=False))
        assert await now.flush()
        assert len(new_changelog.asked) == asked and client.get(fence_key(prefix, 0)) == "2.3"
    finally:
        await earlier.close()
        await now.close()
        client.close()


async def test_a_fence_the_changelog_cannot_check_fails_the_write_until_it_can(server: Server, prefix: str):
    """A newer fence whose marker cannot be looked up in time (the broker down) is neither written over nor
    trusted: the write fails, its profiles stay pending, and the retry writes them once the changelog answers.
    A fence raised without its marker's offset (an earlier version's) is trusted without asking."""
    client = redis.Redis(port=server.port, decode_responses=True)
    changelog = Changelog(set(), readable=False)
    sink = RedisProfileSink(url(server.port), prefix, 0.2, fence=fence_with((1, 1), 12, changelog))
    try:
        profiles = rendered(40)
        client.mset({fence_key(prefix, p): "5.9" for p in range(4)})
        client.set(fence_marker_key(prefix, 0), "5.9@7000")  # partitions 1-3: no marker named
        before, fenced_before = errors(), fenced_count()
        sink.submit(profiles)
        assert await sink.flush() is False
        assert errors() == before + 1 and sink.pending == len(profiles)
        assert changelog.asked == [(0, (5, 9), 7000)]
        changelog.readable = True  # and it has no such marker: the fence is of an earlier changelog
        deadline = time.monotonic() + 10
        while sink._failing and time.monotonic() < deadline:  # the sink's own retry (pending is 0 while in flight)
            await asyncio.sleep(0.05)
        assert sink.pending == 0
        in_partition_0 = {p.customer_id for p in profiles if PARTITION_OF(p.customer_id.encode()) == 0}
        got = stored(client, prefix, profiles)
        assert {cid for cid, f in got.items() if f} == in_partition_0
        assert fenced_count() == fenced_before + len(profiles) - len(in_partition_0)
        assert client.mget([fence_key(prefix, p) for p in range(4)]) == ["1.1", "5.9", "5.9", "5.9"]
        assert {asked[0] for asked in changelog.asked} == {0}
    finally:
        await closed(sink)
        client.close()


async def test_a_fence_raised_between_the_read_and_the_write_aborts_the_write(
    server: Server, prefix: str, monkeypatch: pytest.MonkeyPatch
):
    """The new owner raises partition 0's fence and writes after the dropped worker read the fences but before
    its transaction ran: Redis aborts that transaction (WATCH), and the write reads the fences again and leaves
    partition 0 out. Without the WATCH, the dropped worker's older profiles would land over the owner's."""
    client = redis.Redis(port=server.port, decode_responses=True)
    dropped = RedisProfileSink(url(server.port), prefix, 0.2, fence=fence_at(dict.fromkeys(range(4), (3, 5))))
    try:
        profiles = rendered(40)
        moved = [p for p in profiles if PARTITION_OF(p.customer_id.encode()) == 0]
        dropped.submit(profiles)
        assert await dropped.flush()
        reads: list[str] = []
        decode = redis_profiles.decode_epoch

        def owner_writes_after_the_read(raw: bytes) -> redis_profiles.Epoch:
            reads.append(raw.decode())
            if len(reads) == 1:  # the first fence the dropped worker read: the owner takes partition 0 now
                client.set(fence_key(prefix, 0), "4.6")
                for p in moved:
                    client.hset(profile_key(prefix, p.customer_id), "orders", "owner's")
            return decode(raw)

        monkeypatch.setattr(redis_profiles, "decode_epoch", owner_writes_after_the_read)
        before = fenced_count()
        dropped.submit(with_orders(profiles, "3", vip=True))
        assert await dropped.flush()
        assert len(reads) == 8, "the fences were read twice"
        assert fenced_count() == before + len(moved)
        got = stored(client, prefix, profiles)
        assert {cid for cid, f in got.items() if f["orders"] == "owner's"} == {p.customer_id for p in moved}
        assert sum(f["orders"] == "3" for f in got.values()) == len(profiles) - len(moved)
    finally:
        await dropped.close()
        client.close()


async def test_redis_down_is_a_failure_not_an_exception(prefix: str):
    sink = RedisProfileSink(url(free_port()), prefix, 0.2, client_kwargs=NO_RETRY)
    try:
        before = errors()
        sink.submit(rendered(3))
        assert await sink.flush() is False
        assert errors() >= before + 1 and sink.pending == 3
    finally:
        sink._retry_task.cancel()
        await sink.close()


async def test_the_client_password_reaches_the_pooled_connection(tmp_path: Path, prefix: str):
    port = free_port()
    cmd = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*cmd, "--requirepass", PASSWORD, "--dir", str(tmp_path)],
        stdout=(tmp_path / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc, "redis-server with a password", tmp_path / "redis.log")
        [profile] = rendered(1)
        with_password = RedisProfileSink(url(port), prefix, 0.2, client_kwargs={"password": PASSWORD, **NO_RETRY})
        without = RedisProfileSink(url(port), prefix, 0.2, client_kwargs=NO_RETRY)
        try:
            with_password.submit([profile])
            assert await with_password.flush()
            without.submit([profile])
            assert await without.flush() is False and without.pending == 1
        finally:
            if without._retry_task is not None:
                without._retry_task.cancel()
            await with_password.close()
            await without.close()
        client = redis.Redis(port=port, password=PASSWORD, decode_responses=True)
        assert client.hgetall(profile_key(prefix, profile.customer_id)) == profile.fields
        client.close()
    finally:
        stop_process(proc)


async def test_a_redis_that_stops_answering_times_out_and_the_retry_writes_later(tmp_path: Path, prefix: str):
    """The socket timeout bounds the reading of the whole batch's replies (the sink reads them under one timer)."""
    srv = start_redis(tmp_path)
    sink = RedisProfileSink(url(srv.port), prefix, 0.2, client_kwargs={"socket_timeout": 0.5, **NO_RETRY})
    recovered: list[bool] = []
    sink.on_recovered = lambda: recovered.append(True)
    try:
        first, second = rendered(2)
        sink.submit([first])
        assert await sink.flush()  # connected
        srv.proc.send_signal(signal.SIGSTOP)
        sink.submit([second])
        started = time.monotonic()
        assert await sink.flush() is False
        assert time.monotonic() - started < 3 and sink.pending == 1
        srv.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while not recovered and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert recovered and sink.pending == 0
        client = redis.Redis(port=srv.port, decode_responses=True)
        assert client.hgetall(profile_key(prefix, second.customer_id)) == second.fields
        client.close()
    finally:
        srv.proc.send_signal(signal.SIGCONT)
        await sink.close()
        srv.stop()


async def test_a_rebalance_waits_for_the_write_in_flight_and_drops_the_rest(server: Server, prefix: str):
    """``settle`` (awaited when partitions are revoked): the write already sent lands before it returns; what is
    still pending is dropped, so no late write of this worker can overwrite the next owner's newer profile."""
    sink = RedisProfileSink(url(server.port), prefix, 1.0)
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        sent, late = rendered(400)[:200], rendered(400)[200:]
        sink.submit(sent)
        in_flight = asyncio.ensure_future(sink.flush())
        await asyncio.sleep(0)  # the flush takes the lock and the pending batch
        sink.submit(late)
        assert await sink.settle(timeout=10.0) == len(late)
        assert in_flight.done() and in_flight.result()
        assert sink.pending == 0
        assert all(client.exists(profile_key(prefix, p.customer_id)) for p in sent)
        assert not any(client.exists(profile_key(prefix, p.customer_id)) for p in late)
        assert await sink.flush()  # nothing left to write
        assert not any(client.exists(profile_key(prefix, p.customer_id)) for p in late)
    finally:
        await sink.close()
        client.close()


async def test_many_pending_profiles_go_in_round_trips_of_at_most_the_chunk(server: Server, prefix: str, monkeypatch):
    """What is pending after an outage (up to every customer) is written ``WRITE_CHUNK_PROFILES`` at a time, each
    round trip under the socket timeout: the hashes, the VIP set and the at-risk index come out as one write."""
    monkeypatch.setattr("streams.sinks.redis_profiles.WRITE_CHUNK_PROFILES", 7)
    sink = RedisProfileSink(url(server.port), prefix, 0.2)
    sizes: list[int] = []
    write = sink._write

    async def counted(packed: bytes, replies: int) -> None:
        sizes.append(packed.count(b"$4\r\nHSET\r\n"))
        await write(packed, replies)

    sink._write = counted  # type: ignore[method-assign]
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        profiles = rendered(30, vip=True)[:15] + rendered(30, vip=False)[15:]
        sink.submit(profiles)
        assert await sink.flush() and sink.pending == 0
        assert sizes == [7, 7, 7, 7, 2]
        for p in profiles:
            assert client.hgetall(profile_key(prefix, p.customer_id)) == p.fields
        assert set(client.zrange(vip_key(prefix), 0, -1)) == {p.customer_id for p in profiles[:15]}
    finally:
        await sink.close()
        client.close()


async def test_a_write_failing_midway_keeps_only_the_unwritten_profiles_pending(
    server: Server, prefix: str, monkeypatch
):
    """The chunks written before a failure stay written; the rest is pending again, and newer profiles of the same
    customers submitted meanwhile win over it."""
    monkeypatch.setattr("streams.sinks.redis_profiles.WRITE_CHUNK_PROFILES", 5)
    sink = RedisProfileSink(url(server.port), prefix, 30.0)  # the retry loop waits: the test flushes by hand
    write, calls = sink._write, [0]

    async def second_fails(packed: bytes, replies: int) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise redis.ConnectionError("the test's cut")
        await write(packed, replies)

    sink._write = second_fails  # type: ignore[method-assign]
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        profiles = rendered(12)
        sink.submit(profiles)
        assert await sink.flush() is False
        assert sink.pending == 7
        landed = [client.exists(profile_key(prefix, p.customer_id)) for p in profiles]
        assert landed == [1] * 5 + [0] * 7
        assert await sink.flush() and sink.pending == 0
        for p in profiles:
            assert client.hgetall(profile_key(prefix, p.customer_id)) == p.fields
    finally:
        await closed(sink)
        client.close()


async def test_more_pending_profiles_than_one_round_trip_can_carry_in_time_still_land(
    server: Server, prefix: str, monkeypatch
):
    """After an outage the profiles pending can be every customer of the worker. Sent in one round trip, 200,000 of
    them took Redis 5.6-8.8 s (benchmarks.redis_write): past redis-py's default 5-s timeout, so the write failed and
    was retried, whole, for ever. Here scaled down, with a wide margin on both sides for a loaded box: 40,000
    profiles against a 0.5-s timeout, which one round trip of all of them outlasts (~1 s unloaded), in round trips
    of 500 (~12 ms each unloaded; the worker's 2,000 take 42-80 ms against its 5 s)."""
    monkeypatch.setattr("streams.sinks.redis_profiles.WRITE_CHUNK_PROFILES", 500)
    sink = RedisProfileSink(url(server.port), prefix, 0.2, client_kwargs={"socket_timeout": 0.5, **NO_RETRY})
    client = redis.Redis(port=server.port, decode_responses=True)
    models = rendered(200)
    packed = {}
    for i in range(40_000):
        model = models[i % len(models)]
        _, score, entry = pack_profile(model, prefix, "revenue")
        cid = f"P{i:06d}"
        packed[cid] = (pack_hset(profile_key(prefix, cid), model.args), score, entry)
    try:
        sink.submit_packed(packed)
        assert await sink.flush(), "a write timed out"
        assert sink.pending == 0
        assert sum(1 for _ in client.scan_iter(f"{prefix}profile:*", count=5000)) == len(packed)
    finally:
        await closed(sink)
        client.close()


async def test_a_failover_behind_the_same_address_reaches_the_new_primary(tmp_path: Path, prefix: str):
    """A managed Redis fails over by pointing the same address (a DNS name, a Service, a virtual IP) at the promoted
    replica: new connections reach it, the open one stays with the old primary, now a replica that answers every
    write with READONLY. The writer must take that as a failed write *and* drop the connection, so that its retry
    connects anew and reaches the new primary. Before (session 26) it kept the pooled connection: every retry met
    READONLY again, for as long as that connection lived."""
    old, new = start_redis(tmp_path), start_redis(tmp_path)
    to_old = redis.Redis(port=old.port, decode_responses=True)
    to_new = redis.Redis(port=new.port, decode_responses=True)
    for client in (to_old, to_new):  # a replica's full sync at once, not after Redis's default 5 s
        client.config_set("repl-diskless-sync-delay", 0)
    to_new.replicaof("127.0.0.1", old.port)
    deadline = time.monotonic() + 20
    while to_new.info("replication").get("master_link_status") != "up" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    proxy = SwitchingProxy(old.port)
    sink = RedisProfileSink(url(proxy.port), prefix, 0.2, client_kwargs={"socket_timeout": 2.0, **NO_RETRY})
    try:
        first, second = rendered(2)
        sink.submit([first])
        assert await sink.flush()  # through the proxy, to the old primary
        to_new.replicaof("NO", "ONE")  # the failover: the replica promoted, the address moved to it
        to_old.replicaof("127.0.0.1", new.port)  # the old primary demoted: read-only
        proxy.switch(new.port)
        failed_before = errors()
        sink.submit([second])
        assert await sink.flush() is False  # READONLY on the connection still open to the old primary
        assert errors() == failed_before + 1
        key = profile_key(prefix, second.customer_id)
        deadline = time.monotonic() + 10
        while not to_new.exists(key) and time.monotonic() < deadline:  # the retry loop (0.2-s back-off) writes it
            await asyncio.sleep(0.05)
        assert sink.pending == 0, "still pending: the retries went to the old primary"
        assert to_new.hgetall(profile_key(prefix, second.customer_id)) == second.fields
    finally:
        await closed(sink)
        proxy.close()
        to_old.close()
        to_new.close()
        old.stop()
        new.stop()
