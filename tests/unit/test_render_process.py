"""The render process (streams.render_process): the same bytes as rendering on the worker's thread, in order,
bounded, settled on a revoke, failures counted, and a dead child seen.

The contract tests talk to a fake child over a real socket pair (the test answers each request when it wants);
the byte-for-byte tests and the lifecycle tests spawn the real child.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Any

import msgspec
import pytest

from pulse_config.settings import Settings
from streams import metrics
from streams.codec import encode_state
from streams.render_process import RenderProcess, RenderProcessDied, frame, read_frame, render_batch
from streams.sinks.redis_profiles import pack_profile
from tests.unit.test_checkpoint import (
    HISTORY_WALL_CLOCK,
    Broker,
    ProfileSink,
    checkpoint_on,
    history_events,
    order,
    run,
)

SETTINGS = Settings(_env_file=None)
CONFIG = SETTINGS.processor().scoring


def renderer(max_batches: int = 2) -> tuple[RenderProcess, list[dict], list[str]]:
    """A RenderProcess whose answers and death are recorded."""
    answers: list[dict] = []
    deaths: list[str] = []
    proc = RenderProcess(
        CONFIG,
        SETTINGS.base_currency,
        SETTINGS.redis_key_prefix,
        SETTINGS.vip_value,
        max_batches,
        SETTINGS.gc_thresholds,
        answers.append,
        deaths.append,
    )
    return proc, answers, deaths


class FakeChild:
    """The other end of the socket: reads requests, answers when told (with made-up packed profiles)."""

    def __init__(self, proc: RenderProcess) -> None:
        mine, theirs = socket.socketpair()
        proc.attach(mine)
        self.sock = theirs
        self.requests: list[tuple[int, list]] = []
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(sock=self.sock)

    async def receive(self) -> tuple[int, list]:
        assert self.reader is not None
        seq, items = msgspec.msgpack.decode(await read_frame(self.reader))
        self.requests.append((seq, items))
        return seq, items

    async def answer(self, seq: int, items: list, failures: list | None = None) -> None:
        assert self.writer is not None
        packed = [(cid, f"HSET {cid} {at}".encode(), None, "", "") for cid, _, at, _, _ in items]
        self.writer.writelines(frame(msgspec.msgpack.encode((seq, packed, failures or [], 0.001))))
        await self.writer.drain()


def item(cid: str, at: int) -> tuple:
    return (cid, b"state", at, {"x": 0}, {"score": 0})


async def until(condition: Any, rounds: int = 1000) -> None:
    """Let the loop run until ``condition()`` (bounded in loop rounds, not time)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def test_answers_reach_the_sink_in_request_order():
    """A customer's newer profile is never overwritten by an older one: answers are handed on in request order."""
    proc, answers, _ = renderer(max_batches=3)
    child = FakeChild(proc)

    async def scenario() -> None:
        await child.open()
        for at in (1, 2, 3):
            await proc.submit([item("A", at), item(f"B{at}", at)])
        for _ in range(3):
            seq, items = await child.receive()
            await child.answer(seq, items)
        await until(lambda: len(answers) == 3)

    run(scenario())
    assert [a["A"][0] for a in answers] == [b"HSET A 1", b"HSET A 2", b"HSET A 3"]
    assert [seq for seq, _ in child.requests] == [1, 2, 3]
    assert proc.in_flight == 0


def test_a_slow_child_back_pressures_the_checkpoint():
    """At most max_batches are handed over unanswered; the next submit waits for an answer."""
    proc, answers, _ = renderer(max_batches=2)
    child = FakeChild(proc)

    async def scenario() -> None:
        await child.open()
        await proc.submit([item("A", 1)])
        await proc.submit([item("A", 2)])
        third = asyncio.ensure_future(proc.submit([item("A", 3)]))
        await child.receive()
        await child.receive()
        for _ in range(20):
            await asyncio.sleep(0)
        assert not third.done() and proc.in_flight == 2  # waiting for room
        seq, items = child.requests[0]
        await child.answer(seq, items)
        await asyncio.wait_for(third, 30)
        assert (await child.receive())[0] == 3
        assert proc.in_flight == 2

    run(scenario())
    assert len(answers) == 1


def test_settle_waits_for_the_renders_in_flight_and_drops_what_comes_after():
    proc, answers, _ = renderer(max_batches=3)
    child = FakeChild(proc)

    async def scenario() -> None:
        await child.open()
        await proc.submit([item("A", 1)])
        await proc.submit([item("B", 1)])
        first, second = await child.receive(), await child.receive()

        async def answer_first_soon() -> None:
            await asyncio.sleep(0.05)
            await child.answer(*first)

        answering = asyncio.ensure_future(answer_first_soon())
        late = await proc.settle(0.5)  # the first is answered within it, the second never
        await answering
        assert late == 1 and [list(a) for a in answers] == [["A"]]
        await child.answer(*second)  # after the settle: dropped
        await proc.submit([item("C", 2)])
        await child.answer(*await child.receive())
        await until(lambda: len(answers) == 2)
        assert await proc.settle(0.5) == 0

    run(scenario())
    assert [list(a) for a in answers] == [["A"], ["C"]]


def test_a_render_failure_is_counted_and_logged_and_the_rest_written(caplog: pytest.LogCaptureFixture):
    proc, answers, _ = renderer()
    child = FakeChild(proc)
    before = metrics.PROCESSING_ERRORS.labels("render")._value.get()

    async def scenario() -> None:
        await child.open()
        await proc.submit([item("A", 1), item("B", 1)])
        seq, items = await child.receive()
        await child.answer(seq, items[1:], failures=[("A", "ValueError: bad")])
        await until(lambda: len(answers) == 1)

    run(scenario())
    assert list(answers[0]) == ["B"]
    assert metrics.PROCESSING_ERRORS.labels("render")._value.get() == before + 1
    assert "rendering the profile of A raised" in caplog.text


def test_render_batch_skips_only_the_customer_whose_profile_raises():
    clv, risk = assessed()
    items = [["A", b"\xc1not a state", 0, clv, risk], ["B", encode_state(load_state()), DAY_MS_AT, clv, risk]]
    packed, failures = render_batch(items, CONFIG, SETTINGS.base_currency, "pulse:", SETTINGS.vip_value)
    assert [p[0] for p in packed] == ["B"]
    assert [f[0] for f in failures] == ["A"]


def test_a_closed_child_is_seen_and_a_waiting_submit_fails():
    proc, _, deaths = renderer(max_batches=1)
    child = FakeChild(proc)

    async def scenario() -> None:
        await child.open()
        await proc.submit([item("A", 1)])
        waiting = asyncio.ensure_future(proc.submit([item("A", 2)]))
        await child.receive()
        assert child.writer is not None
        child.writer.close()
        await until(lambda: bool(deaths))
        with pytest.raises(RenderProcessDied):
            await asyncio.wait_for(waiting, 30)
        with pytest.raises(RenderProcessDied):
            await proc.submit([item("A", 3)])

    run(scenario())
    assert "exited" in deaths[0]


# --- the real child ---------------------------------------------------------------------------------------------
DAY_MS_AT = 1_750_000_000_000


def load_state() -> Any:
    """A scored state of one customer (through the processor, as the worker builds it)."""
    broker = Broker()
    checkpoint = checkpoint_on(broker)
    run(checkpoint([order(0, "A", 0, 50), order(1, "A", 3, 80)]))
    return checkpoint.load(b"A")


def assessed() -> tuple[dict, dict]:
    from scoring.customer import assess_customer

    clv, risk = assess_customer(load_state(), DAY_MS_AT, None, CONFIG)
    return msgspec.to_builtins(clv), msgspec.to_builtins(risk)


class PackedSink(ProfileSink):
    """Every batch's packed profiles, by batch number: what Redis is sent."""

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker)
        self.packed: list[dict] = []

    def submit(self, profiles) -> None:
        super().submit(profiles)
        if profiles:
            self.packed.append(
                {p.customer_id: pack_profile(p, SETTINGS.redis_key_prefix, SETTINGS.vip_value) for p in profiles}
            )


def history(elsewhere: bool, seed: int = 6) -> tuple[list[dict], RenderProcess | None]:
    """The packed profiles of a random history in batches, rendered here or by a real render process."""
    import random

    broker = Broker()
    sink = PackedSink(broker)
    checkpoint = checkpoint_on(broker, sink=sink, owned=frozenset({0, 1}), wall_clock=HISTORY_WALL_CLOCK)
    proc = None
    if elsewhere:
        proc, answers, deaths = renderer()
        proc.on_packed = sink.packed.append
        checkpoint.processor.render_elsewhere = True
        checkpoint.renderer = proc
        proc.start()
    rng = random.Random(seed)
    records, position = history_events(seed), 0
    try:
        while position < len(records):
            size = rng.randint(20, 200)
            run(checkpoint(records[position : position + size]))
            position += size
        if proc is not None:
            assert run(proc.settle(120)) == 0 and not deaths
    finally:
        if proc is not None:
            proc.close()
    return sink.packed, proc


def test_the_render_process_sends_redis_the_same_bytes_in_the_same_batches():
    """Byte for byte: every batch's HSETs, VIP scores and at-risk entries, rendered from the table's bytes in
    the child, equal those rendered from the states on the worker's thread."""
    here, _ = history(elsewhere=False)
    there, proc = history(elsewhere=True)
    profiles = [packed for batch in here for packed in batch.values()]
    # what the history covers: hundreds of profiles, VIPs among them, and customers in the at-risk index
    assert len(profiles) > 400 and any(p[1] is not None for p in profiles) and any(p[2][0] for p in profiles)
    assert there == here
    assert proc is not None and proc.process is not None and proc.process.exitcode == 0  # closed, not killed


def test_a_killed_child_is_the_worker_s_exit():
    proc, _, deaths = renderer()
    clv, risk = assessed()
    raw = encode_state(load_state())
    proc.start()
    assert proc.process is not None and proc.process.pid is not None
    try:

        async def scenario() -> None:
            await proc.submit([("A", raw, DAY_MS_AT, clv, risk)])
            await until(lambda: proc.in_flight == 0, rounds=60_000)  # the child's imports, on a busy box
            os.kill(proc.process.pid, signal.SIGKILL)
            await until(lambda: bool(deaths), rounds=60_000)

        run(scenario())
    finally:
        proc.close()
    assert "exit code -9" in deaths[0]


def test_the_child_ignores_a_group_s_sigterm_and_leaves_when_the_worker_closes_it():
    """A supervisor's SIGTERM to the process group stops the worker, whose exit closes the socket; the child
    must not die first (the worker would take that for a crash)."""
    proc, answers, deaths = renderer()
    clv, risk = assessed()
    raw = encode_state(load_state())
    proc.start()
    assert proc.process is not None and proc.process.pid is not None
    try:

        async def scenario() -> None:
            await proc.submit([("A", raw, DAY_MS_AT, clv, risk)])
            await until(lambda: proc.in_flight == 0, rounds=60_000)
            os.kill(proc.process.pid, signal.SIGTERM)
            await proc.submit([("A", raw, DAY_MS_AT + 1, clv, risk)])
            await until(lambda: proc.in_flight == 0, rounds=60_000)

        run(scenario())
    finally:
        proc.close()
    assert len(answers) == 2 and not deaths
    assert proc.process.exitcode == 0
