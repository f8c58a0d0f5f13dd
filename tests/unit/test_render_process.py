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
from streams.codec import decode_state, encode_state
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
    tick,
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


# --- a profile the render process cannot render quarantines its customer ------------------------------------------
class Wired:
    """A checkpoint scoring partition 0 with a fake child rendering its profiles, wired as the worker wires them
    (``Checkpoint.render_answered``); the sweep goes round at every tick."""

    def __init__(self, child: bool = True) -> None:
        settings = Settings(_env_file=None, sweep_round_seconds=0)
        self.owned = {0}
        self.checkpoint = checkpoint_on(Broker(), settings=settings)
        self.checkpoint.owned_partitions = lambda: set(self.owned)
        self.processor = self.checkpoint.processor
        self.processor.render_elsewhere = True
        self.proc, self.answers, _ = renderer(max_batches=4)
        self.proc.on_answered = self.checkpoint.render_answered
        self.checkpoint.renderer = self.proc
        if child:
            self.child = FakeChild(self.proc)
            run(self.child.open())

    def batch(self, *events: Any) -> tuple[int, list]:
        """Score and commit one batch; returns the request the child received for it."""
        run(self.checkpoint(list(events)))
        return run(self.child.receive())

    def answer(self, request: tuple[int, list], failing: str | None = None) -> None:
        """The child answers ``request``, ``failing`` rendering one customer's profile."""
        seq, items = request
        ok = [i for i in items if i[0] != failing]
        failures = [] if failing is None else [(failing, "ValueError: cannot render")]

        async def answered() -> None:
            await self.child.answer(seq, ok, failures)
            await until(lambda: self.proc._answered >= seq)

        run(answered())

    @staticmethod
    def customers(request: tuple[int, list]) -> list[str]:
        return sorted(i[0] for i in request[1])

    def close(self) -> None:
        self.proc.close()
        run(asyncio.sleep(0))  # the reader's cancellation


@pytest.fixture
def w() -> Any:
    """A wired checkpoint with its fake child (closed after the test)."""
    wired = Wired()
    yield wired
    wired.close()


def errors(stage: str) -> float:
    return metrics.PROCESSING_ERRORS.labels(stage)._value.get()


def test_a_time_driven_profile_the_child_cannot_render_quarantines_its_customer_until_its_next_event(
    w: Wired,
    caplog: pytest.LogCaptureFixture,
):
    """As in-process (tests/unit/test_isolation.py): unscheduled, left out of sweeps and due checks, reported as a
    time-driven failure, and its next event lifts it."""
    w.answer(w.batch(order(0, "A", 0, 50), order(1, "B", 0, 60)))
    time_driven, render = errors("time_driven"), errors("render")
    # the clock moves (B's event) and a tick sweeps the partition: A's profile is re-rendered, and fails there
    request = w.batch(order(2, "B", 10, 70), tick(0))
    assert w.customers(request) == ["A", "B"]
    assert b"A" not in w.processor.quarantined
    w.answer(request, failing="A")
    assert b"A" in w.processor.quarantined and b"A" not in w.processor.population.partition(0).due
    assert errors("time_driven") == time_driven + 1 and errors("render") == render
    assert "re-scoring b'A' raised, skipped until its next event: ValueError: cannot render" in caplog.text
    assert [list(a) for a in w.answers[-1:]] == [["B"]]
    # quarantined: the next sweep round (the clock moved again) leaves A out
    request = w.batch(order(3, "B", 20, 70), tick(0))
    assert w.customers(request) == ["B"]
    w.answer(request)
    # A's next event lifts the quarantine: rendered again, and written
    request = w.batch(order(4, "A", 30, 10))
    assert b"A" not in w.processor.quarantined and "A" in w.customers(request)
    w.answer(request)
    assert "A" in w.answers[-1]
    assert not w.processor._rendering and not w.processor._events_since  # nothing kept once answered


def test_a_failure_answered_after_the_customer_s_next_event_does_not_quarantine_it(
    w: Wired, caplog: pytest.LogCaptureFixture
):
    """The answer comes after later batches: an event of the customer processed meanwhile would have lifted the
    quarantine in-process, and its own rendering decides."""
    w.answer(w.batch(order(0, "A", 0, 50), order(1, "B", 0, 60)))
    swept = w.batch(order(2, "B", 10, 70), tick(0))  # A rendered by the sweep: not answered yet
    other = w.batch(order(3, "B", 11, 70))  # a batch without A
    event = w.batch(order(4, "A", 12, 10))  # A's next event
    time_driven = errors("time_driven")
    w.answer(swept, failing="A")
    assert b"A" not in w.processor.quarantined
    assert errors("time_driven") == time_driven + 1  # reported all the same
    assert "not skipped (a later batch had a record of it" in caplog.text
    w.answer(other)
    w.answer(event)
    assert list(w.answers[-1]) == ["A"]
    # and the same failure answered before that event quarantines A (the event then lifts it)
    swept = w.batch(order(5, "B", 20, 70), tick(0))
    w.answer(swept, failing="A")
    assert b"A" in w.processor.quarantined
    assert not w.processor._rendering and not w.processor._events_since


def test_a_failure_of_a_partition_given_away_or_rebuilt_since_is_ignored(w: Wired, caplog: pytest.LogCaptureFixture):
    w.answer(w.batch(order(0, "A", 0, 50), order(1, "B", 0, 60)))
    # given away: the next batch's population no longer holds the partition when the answer comes
    swept = w.batch(order(2, "B", 10, 70), tick(0))
    w.owned = set()
    w.checkpoint.ensure_population()
    w.answer(swept, failing="A")
    assert b"A" not in w.processor.quarantined
    # given away and back (an eager rebalance): the answer belongs to the dropped view
    w.owned = {0}
    w.checkpoint.ensure_population()
    swept = w.batch(order(3, "B", 20, 70), tick(0))
    w.owned = set()
    w.checkpoint.ensure_population()
    w.owned = {0}
    w.checkpoint.ensure_population()
    w.answer(swept, failing="A")
    assert b"A" not in w.processor.quarantined
    # an answer a revoke's settle dropped
    swept = w.batch(order(4, "B", 30, 70), tick(0))
    assert run(w.proc.settle(0.01)) == 1
    w.answer(swept, failing="A")
    assert b"A" not in w.processor.quarantined
    assert caplog.text.count("not skipped (its partition was given away or rebuilt since") == 3
    assert not w.processor._rendering and not w.processor._events_since


def test_an_event_customer_s_profile_the_child_cannot_render_keeps_its_event_and_quarantines_it(
    w: Wired,
    caplog: pytest.LogCaptureFixture,
):
    """In-process the event would be retried and dead-lettered; here it is applied and committed when the child
    answers: it stays applied, Redis keeps the profile last written, and the customer is quarantined."""
    w.answer(w.batch(order(0, "A", 0, 50), order(1, "B", 0, 60)))
    render = errors("render")
    request = w.batch(order(2, "A", 10, 70))
    w.answer(request, failing="A")
    assert b"A" in w.processor.quarantined
    assert errors("render") == render + 1
    assert "stays applied" in caplog.text
    assert decode_state(w.checkpoint.table.get(b"A")).orders.orders == 2
    assert not any("A" in a for a in w.answers[1:])  # the profile written from the first batch stays
    request = w.batch(order(3, "B", 20, 70), tick(0))
    assert w.customers(request) == ["B"]
    w.answer(request)


def test_a_profile_the_real_child_cannot_render_quarantines_its_customer():
    """The real child: A's state bytes handed over are not a state (decoding them raises in the child only)."""
    w = Wired(child=False)
    proc, answers, deaths = w.proc, w.answers, []
    proc.on_death = deaths.append  # type: ignore[method-assign]
    inputs = w.checkpoint._render_inputs

    def broken_for_a(outcome: Any) -> list:
        return [(cid, b"\xc1not a state" if cid == "A" else raw, *rest) for cid, raw, *rest in inputs(outcome)]

    w.checkpoint._render_inputs = broken_for_a  # type: ignore[method-assign]
    proc.start()
    try:
        run(w.checkpoint([order(0, "A", 0, 50), order(1, "B", 0, 60)]))
        run(until(lambda: proc.in_flight == 0, rounds=60_000))  # the child's imports, on a busy box
        assert [list(a) for a in answers] == [["B"]] and b"A" in w.processor.quarantined
        run(w.checkpoint([order(2, "B", 10, 70), tick(0)]))
        run(until(lambda: proc.in_flight == 0, rounds=60_000))
        assert [list(a) for a in answers] == [["B"], ["B"]] and not deaths
    finally:
        proc.close()
