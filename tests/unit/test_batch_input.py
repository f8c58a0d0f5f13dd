"""The batch input path (streams/batch_input.py) with fakes of Faust's consumer: what reaches the checkpoint,
in which order, what a rebalance drops, and what Faust may commit."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from streams import batch_input
from streams.batch_input import BatchInput, BatchPace, BatchQueue, InputRecord

ORDERS, TICKS, CHANGELOG = "orders", "ticks", "app-customer_states-changelog"


def rec(topic: str, partition: int, offset: int) -> InputRecord:
    return InputRecord(TP(topic, partition), SimpleNamespace(offset=offset, key=b"k", value=b"v", headers=()))


def offsets(records: list[InputRecord]) -> list[tuple[str, int, int]]:
    return [(r.topic, r.partition, r.offset) for r in records]


class FakeApp:
    def __init__(self) -> None:
        self.flow_control = FlowControlEvent(initially_suspended=False)
        self.consumer_generation_id = 1
        self.monitor = SimpleNamespace(stream_inbound_time={}, track_tp_end_offset=lambda tp, offset: None)


class FakeConsumer:
    """What the tapped ``getmany`` and the commit hook read of Faust's consumer."""

    def __init__(self, app: FakeApp, fetch: dict[TP, list[Any]], active: set[TP] | None = None) -> None:
        self.app = app
        self.fetch = fetch
        self.active = active
        self.should_stop = False
        self.flow_active = True
        self._buffered_partitions: set[TP] = set()
        self._committed_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self.assigned = set(fetch) | set(active or ())
        self.seeks = 0
        self.scheduler = SimpleNamespace(iterate=lambda records: ((tp, r) for tp, rs in records.items() for r in rs))
        self.log = SimpleNamespace(dev=lambda *a: None, warning=lambda *a: None)

    async def _wait_next_records(self, timeout: float) -> tuple[dict[TP, list[Any]], set[TP] | None]:
        return self.fetch, self.active

    async def perform_seek(self) -> None:
        self.seeks += 1

    def highwater(self, tp: TP) -> int:
        return 100

    def _to_message(self, tp: TP, record: Any) -> tuple[TP, int]:
        return (tp, record.offset)

    def assignment(self) -> set[TP]:
        return self.assigned


def records(*offsets_: int) -> list[Any]:
    return [SimpleNamespace(offset=o, key=b"k", value=b"v", headers=()) for o in offsets_]


async def drain(consumer: FakeConsumer) -> list[Any]:
    return [item async for item in batch_input._getmany_tapped(consumer, 1.0)]  # type: ignore[arg-type]


def test_a_fetch_of_the_batch_topics_reaches_the_queue_as_one_batch_and_other_records_take_faust_s_path():
    async def go() -> None:
        app = FakeApp()
        fetch = {TP(ORDERS, 0): records(5, 6), TP(CHANGELOG, 0): records(40), TP(TICKS, 0): records(9)}
        consumer = FakeConsumer(app, fetch)
        app.pulse_batch_input = tap = BatchInput(app, [ORDERS, TICKS], 100)
        yielded = await drain(consumer)
        assert yielded == [(TP(CHANGELOG, 0), (TP(CHANGELOG, 0), 40))]
        assert offsets(tap.queue.take_now(100)) == [(ORDERS, 0, 5), (ORDERS, 0, 6), (TICKS, 0, 9)]

    asyncio.run(go())


def test_nothing_is_delivered_when_the_flow_stopped_and_the_consumer_seeks_back_as_faust_does():
    async def go() -> None:
        app = FakeApp()
        consumer = FakeConsumer(app, {TP(ORDERS, 0): records(5)})
        consumer.flow_active = False
        app.pulse_batch_input = tap = BatchInput(app, [ORDERS], 100)
        assert await drain(consumer) == []
        assert len(tap.queue) == 0 and consumer.seeks == 1

    asyncio.run(go())


def test_records_of_partitions_no_longer_active_are_not_delivered():
    async def go() -> None:
        app = FakeApp()
        consumer = FakeConsumer(app, {TP(ORDERS, 0): records(5), TP(ORDERS, 1): records(7)}, active={TP(ORDERS, 1)})
        app.pulse_batch_input = tap = BatchInput(app, [ORDERS], 100)
        await drain(consumer)
        assert offsets(tap.queue.take_now(100)) == [(ORDERS, 1, 7)]

    asyncio.run(go())


def test_a_fetch_held_across_a_rebalance_is_dropped_not_queued_after_it():
    async def go() -> None:
        app = FakeApp()
        app.flow_control.suspend()
        tap = BatchInput(app, [ORDERS], 100)
        delivering = asyncio.ensure_future(tap.deliver([rec(ORDERS, 0, 5)], generation_id=1))
        await asyncio.sleep(0.01)
        assert not delivering.done()  # waits for the flow, as Faust's conductor does
        app.consumer_generation_id = 2
        app.flow_control.resume()
        await delivering
        assert len(tap.queue) == 0

    asyncio.run(go())


def test_flow_control_clears_the_queue_and_a_fetcher_waiting_for_room_drops_its_records():
    async def go() -> None:
        app = FakeApp()
        tap = BatchInput(app, [ORDERS], 2)
        await tap.deliver([rec(ORDERS, 0, 1), rec(ORDERS, 0, 2)], 1)
        blocked = asyncio.ensure_future(tap.deliver([rec(ORDERS, 0, 3)], 1))
        await asyncio.sleep(0.01)
        assert not blocked.done()  # back-pressure: the queue is full
        app.flow_control.suspend()
        app.flow_control.clear()  # what Faust does when partitions are revoked
        app.flow_control.resume()
        await asyncio.wait_for(blocked, 1)  # woken, and not queued: the records before it were dropped
        assert tap.queue.take_now(10) == []
        await tap.deliver([rec(ORDERS, 0, 1)], 1)  # what the seek after the rebalance fetches again
        assert offsets(tap.queue.take_now(10)) == [(ORDERS, 0, 1)]

    asyncio.run(go())


def test_take_keeps_offset_order_splits_a_large_fetch_and_waits_only_within_its_time():
    async def go() -> None:
        queue = BatchQueue(100)
        await queue.put([rec(ORDERS, 0, o) for o in range(5)])
        await queue.put([rec(ORDERS, 0, 5)])
        assert [r.offset for r in await queue.take(3, 1.0)] == [0, 1, 2]
        assert [r.offset for r in await queue.take(10, 0.01)] == [3, 4, 5]
        later = asyncio.ensure_future(queue.take(10, 0.05))
        await asyncio.sleep(0.01)
        assert not later.done()  # nothing queued: waits for a first record
        await queue.put([rec(ORDERS, 0, 6)])
        await asyncio.sleep(0.01)
        await queue.put([rec(ORDERS, 0, 7)])
        assert [r.offset for r in await asyncio.wait_for(later, 1)] == [6, 7]

    asyncio.run(go())


def test_faust_commits_what_the_checkpoint_applied_capped_and_never_for_revoked_partitions():
    app = FakeApp()
    caps = {TP(ORDERS, 0): 7}
    tap = BatchInput(app, [ORDERS, TICKS], 100, cap=lambda tp, offset: min(offset, caps.get(tp, offset)))
    consumer = FakeConsumer(app, {TP(ORDERS, 0): [], TP(ORDERS, 1): [], TP(TICKS, 0): []})
    tap.mark_applied([rec(ORDERS, 0, 8), rec(ORDERS, 0, 9), rec(ORDERS, 1, 3), rec(TICKS, 0, 4), rec(ORDERS, 2, 1)])
    tap.mark_applied([rec(ORDERS, 1, 2)])  # read again: the applied offset does not go back
    consumer._committed_offset[TP(TICKS, 0)] = 5
    assert tap.committable(consumer) == {TP(ORDERS, 0): 7, TP(ORDERS, 1): 4}
    assert TP(ORDERS, 2) not in tap.applied  # not assigned (revoked): forgotten
    assert set(app.monitor.stream_inbound_time) >= {TP(ORDERS, 0), TP(ORDERS, 1)}  # Faust's livelock check


def test_a_rebalance_waits_for_the_batch_in_flight_and_its_offsets_count_only_once_it_is_applied():
    async def go() -> None:
        app = FakeApp()
        tap = BatchInput(app, [ORDERS], 100)
        release = asyncio.Event()
        seen: list[list[tuple[str, int, int]]] = []

        async def checkpoint(batch: list[InputRecord]) -> list[InputRecord]:
            seen.append(offsets(batch))
            await release.wait()
            return batch[1:]  # the first was not owned any more: not applied

        async def guard(work: Any) -> None:
            await work

        runner = asyncio.ensure_future(tap.run(checkpoint, 10, 0.01, guard))
        await tap.deliver([rec(ORDERS, 0, 1), rec(ORDERS, 1, 5)], 1)
        await asyncio.sleep(0.05)
        settling = asyncio.ensure_future(tap.settle())
        await asyncio.sleep(0.01)
        assert seen and not settling.done() and tap.applied == {}
        release.set()
        await asyncio.wait_for(settling, 1)
        assert tap.applied == {TP(ORDERS, 1): 6}
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(go())


def test_the_checkpoint_reads_an_input_record_as_it_reads_a_faust_message():
    r = rec(ORDERS, 3, 42)
    assert r.message is r and (r.message.tp, r.message.topic, r.message.partition, r.message.offset) == (
        TP(ORDERS, 3),
        ORDERS,
        3,
        42,
    )
    import weakref

    assert weakref.ref(r)() is r  # the table sets it as Faust's current event


def running(tap: BatchInput) -> tuple[list[int], asyncio.Future]:
    """``tap.run`` with a checkpoint that applies each batch whole, noting its size."""
    started: list[int] = []

    async def checkpoint(batch: list[InputRecord]) -> list[InputRecord]:
        started.append(len(batch))
        return batch

    async def guard(work: Any) -> None:
        await work

    return started, asyncio.ensure_future(tap.run(checkpoint, 10, 0.01, guard))


def resume_without_clearing(app: FakeApp) -> None:
    """The flow resumed by a recovery, the queue left as it was (the records were taken already)."""
    app.flow_control._suspend.clear()
    app.flow_control._resume.set()


async def stop(runner: asyncio.Future) -> None:
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner


def test_no_batch_starts_while_a_rebalance_has_the_flow_suspended():
    async def go() -> None:
        app = FakeApp()
        tap = BatchInput(app, [ORDERS], 100)
        await tap.deliver([rec(ORDERS, 0, 1)], 1)
        app.flow_control.suspend()  # the revoke, after the records were queued
        started, runner = running(tap)
        await asyncio.sleep(0.05)
        await asyncio.wait_for(tap.settle(), 1)  # nothing in flight: the revoke goes on at once
        assert started == []
        resume_without_clearing(app)
        await asyncio.sleep(0.05)
        assert started == [1] and tap.applied == {TP(ORDERS, 0): 2}
        await stop(runner)

    asyncio.run(go())


def test_no_batch_starts_before_the_recovery_claimed_the_partitions_and_a_rebalance_meanwhile_does_not_wait():
    """Faust resumes the flow before its recovery's last step, the claim (streams.tables.CustomerStateTable.claim),
    which may still apply changelog records: a batch taken before the rebalance waits for the claim, outside the
    batch in flight, so a rebalance that comes meanwhile goes on without it; and it waits for the flow again."""

    async def go() -> None:
        app = FakeApp()
        tap = BatchInput(app, [ORDERS], 100)
        tap.gate = asyncio.Event()  # cleared by the assignment
        await tap.deliver([rec(ORDERS, 0, 1)], 1)
        started, runner = running(tap)
        await asyncio.sleep(0.05)
        assert started == []  # the flow is on, the claim is not done
        await asyncio.wait_for(tap.settle(), 1)  # nothing in flight: a revoke would go on at once
        app.flow_control.suspend()  # a revoke came; its recovery claims the partitions
        tap.gate.set()
        await asyncio.sleep(0.05)
        assert started == []  # claimed, but the flow is suspended again
        resume_without_clearing(app)
        await asyncio.sleep(0.05)
        assert started == [1] and tap.applied == {TP(ORDERS, 0): 2}
        await stop(runner)

    asyncio.run(go())


def test_with_merge_a_fetch_of_several_topic_partitions_is_merged_by_timestamp_each_in_offset_order():
    """A batch cut from a large fetch covers about the same time on every topic (a partition's clock waits for
    the topic read least far), instead of one topic-partition after the other."""

    def timed(*pairs: tuple[int, int]) -> list[Any]:
        return [SimpleNamespace(offset=o, key=b"k", value=b"v", headers=(), timestamp=t) for o, t in pairs]

    async def go() -> None:
        app = FakeApp()
        surveys = "surveys"
        fetch = {
            TP(ORDERS, 0): timed((1, 100), (2, 300), (3, 250), (4, 500)),  # a producer's clock stepped back at 3
            TP(surveys, 0): timed((7, 200), (8, 400)),
            TP(ORDERS, 1): timed((5, 50)),
        }
        app.pulse_batch_input = tap = BatchInput(app, [ORDERS, surveys], 100)
        await drain(FakeConsumer(app, fetch))
        assert offsets(tap.queue.take_now(3)) == [(ORDERS, 0, 1), (ORDERS, 0, 2), (ORDERS, 0, 3)]  # not merged
        app.pulse_batch_input = tap = BatchInput(app, [ORDERS, surveys], 100, merge=True)  # PULSE_INPUT_MERGE_TOPICS
        await drain(FakeConsumer(app, fetch))
        assert offsets(tap.queue.take_now(3)) == [(ORDERS, 1, 5), (ORDERS, 0, 1), (surveys, 0, 7)]
        # offsets stay in order within a topic-partition, even where its timestamps go back
        assert offsets(tap.queue.take_now(100)) == [(ORDERS, 0, 2), (ORDERS, 0, 3), (surveys, 0, 8), (ORDERS, 0, 4)]

    asyncio.run(go())


def test_a_backlog_batch_takes_all_queued_up_to_its_cap_and_never_waits_to_fill_it():
    async def go() -> None:
        queue = BatchQueue(100)
        for start in range(0, 25, 5):  # five fetches queued: a backlog of 25, more than a live batch of 4
            await queue.put([rec(ORDERS, start % 2, o) for o in range(start, start + 5)])
        first = await asyncio.wait_for(queue.take(4, 30.0, backlog_limit=12), 1)  # no wait: within is never used
        assert [r.offset for r in first] == list(range(12))  # offset order kept, a fetch split at the cap
        assert [r.offset for r in await queue.take(4, 30.0, backlog_limit=12)] == list(range(12, 24))
        # one record left, less than a live batch: the input caught up, a live batch as today (waits within)
        assert [r.offset for r in await queue.take(4, 0.01, backlog_limit=12)] == [24]

    asyncio.run(go())


def test_a_live_input_a_few_batches_behind_keeps_live_batches_until_the_backlog_threshold():
    async def go() -> None:
        queue = BatchQueue(100)
        await queue.put([rec(ORDERS, 0, o) for o in range(11)])  # behind by less than the threshold of 12
        assert [r.offset for r in await queue.take(4, 30.0, backlog_limit=50, backlog_from=12)] == [0, 1, 2, 3]
        await queue.put([rec(ORDERS, 0, o) for o in range(11, 16)])  # 12 queued: a backlog
        taken = await asyncio.wait_for(queue.take(4, 30.0, backlog_limit=50, backlog_from=12), 1)
        assert [r.offset for r in taken] == list(range(4, 16))
        # a threshold below the live size: a backlog still needs a full live batch queued
        await queue.put([rec(ORDERS, 0, o) for o in range(16, 19)])
        assert [r.offset for r in await queue.take(4, 0.01, backlog_limit=50, backlog_from=2)] == [16, 17, 18]

    asyncio.run(go())


def test_a_live_input_keeps_batches_of_the_live_size_and_waits_within_as_before():
    async def go() -> None:
        queue = BatchQueue(100)
        await queue.put([rec(ORDERS, 0, o) for o in range(3)])  # less than a live batch of 4 queued
        later = asyncio.ensure_future(queue.take(4, 0.2, backlog_limit=50))
        await asyncio.sleep(0.01)
        assert not later.done()  # waits within for the fourth, as without a backlog limit
        await queue.put([rec(ORDERS, 0, o) for o in range(3, 10)])
        assert [r.offset for r in await asyncio.wait_for(later, 1)] == [0, 1, 2, 3]  # the live size, not more
        # a backlog limit at or below the live size changes nothing (the setting's "off")
        assert [r.offset for r in await queue.take(4, 0.01, backlog_limit=4)] == [4, 5, 6, 7]
        assert [r.offset for r in await queue.take(4, 0.01, backlog_limit=2)] == [8, 9]

    asyncio.run(go())


def test_a_live_batch_takes_what_is_queued_at_once_and_only_an_idle_input_waits_to_fill_one():
    async def go() -> None:
        queue = BatchQueue(100)
        await queue.put([rec(ORDERS, 0, o) for o in range(3)])  # came while the previous batch was scored
        # fewer than a live batch of 4 queued: taken at once, no fill wait (within is 30 s)
        taken = await asyncio.wait_for(queue.take(4, 30.0, backlog_limit=50, backlog_from=12, queued_limit=8), 1)
        assert [r.offset for r in taken] == [0, 1, 2]
        # more than a live batch, below the backlog threshold: all of it up to queued_limit, no cut at 4
        for start in (3, 6, 9):
            await queue.put([rec(ORDERS, start % 2, o) for o in range(start, start + 3)])
        taken = await asyncio.wait_for(queue.take(4, 30.0, backlog_limit=50, backlog_from=12, queued_limit=8), 1)
        assert [r.offset for r in taken] == list(range(3, 11))  # offset order kept, cut at queued_limit
        # queued_limit below the live size: a live batch of 4 still
        await queue.put([rec(ORDERS, 0, o) for o in range(12, 18)])
        taken = await asyncio.wait_for(queue.take(4, 30.0, backlog_limit=50, backlog_from=12, queued_limit=2), 1)
        assert [r.offset for r in taken] == [11, 12, 13, 14]
        # the backlog rule first: 12 or more queued -> up to backlog_limit
        await queue.put([rec(ORDERS, 0, o) for o in range(18, 27)])
        taken = await asyncio.wait_for(queue.take(4, 30.0, backlog_limit=50, backlog_from=12, queued_limit=8), 1)
        assert [r.offset for r in taken] == list(range(15, 27))
        # an idle input (nothing queued) waits for a first record, then within to fill a live batch
        later = asyncio.ensure_future(queue.take(4, 0.2, backlog_limit=50, backlog_from=12, queued_limit=8))
        await asyncio.sleep(0.01)
        assert not later.done()
        await queue.put([rec(ORDERS, 0, 27)])
        await asyncio.sleep(0.01)
        assert not later.done()  # one record: waits within for more, as before
        await queue.put([rec(ORDERS, 0, o) for o in range(28, 40)])
        assert [r.offset for r in await asyncio.wait_for(later, 1)] == [27, 28, 29, 30]  # filled to the live size

    asyncio.run(go())


def test_run_sizes_each_batch_from_the_queue_and_a_stop_waits_for_a_backlog_batch_in_flight():
    async def go() -> None:
        app = FakeApp()
        tap = BatchInput(app, [ORDERS], 1000)
        release = asyncio.Event()
        sizes: list[int] = []

        async def checkpoint(batch: list[InputRecord]) -> list[InputRecord]:
            sizes.append(len(batch))
            if len(sizes) == 1:
                await release.wait()
            return batch

        async def guard(work: Any) -> None:
            await work

        await tap.deliver([rec(ORDERS, 0, o) for o in range(30)], 1)  # a backlog before the worker starts
        runner = asyncio.ensure_future(tap.run(checkpoint, 5, 0.01, guard, backlog_limit=20, backlog_from=8))
        await asyncio.sleep(0.05)
        assert sizes == [20]
        settling = asyncio.ensure_future(tap.settle())
        await asyncio.sleep(0.01)
        assert not settling.done() and tap.applied == {}  # the revoke/stop waits for the large batch
        release.set()
        await asyncio.wait_for(settling, 1)
        assert tap.applied[TP(ORDERS, 0)] >= 20  # committable: exactly what the checkpoint applied
        await asyncio.sleep(0.05)
        assert sizes == [20, 10] and tap.applied == {TP(ORDERS, 0): 30}  # the rest: 10 queued, above 8
        await tap.deliver([rec(ORDERS, 0, 30), rec(ORDERS, 0, 31)], 1)  # live: fewer than a batch
        await asyncio.sleep(0.05)
        assert sizes == [20, 10, 2]
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(go())


def test_the_pace_bounds_a_backlog_batch_by_its_expected_time_and_takes_a_slowdown_at_once():
    """A slowdown is taken at once; a speed-up at once when measured on a batch at least as large as the one the
    pace came from (its fixed costs spread thinner), halfway when measured on a smaller one."""
    pace = BatchPace(2.0)
    # nothing measured yet: a backlog batch takes the live size, whose checkpoint is the first measurement
    assert pace.backlog_limit(500, 10_000) == 500
    pace.timed(499, 100.0, 500)  # smaller than a live batch (mostly fixed cost): not a measurement
    assert pace.backlog_limit(500, 10_000) == 500
    pace.timed(500, 0.25, 500)  # 500 µs per record: 2 s hold 4,000
    assert pace.backlog_limit(500, 10_000) == 4_000
    pace.timed(4_000, 1.2, 500)  # faster (300 µs) on a larger batch: its fixed costs spread, taken at once
    assert pace.backlog_limit(500, 10_000) == 6_666
    pace.timed(2_000, 0.2, 500)  # faster (100 µs) on a smaller batch: halfway there, 200 µs
    assert pace.backlog_limit(500, 10_000) == 10_000  # the record bound holds
    pace.timed(3_000, 3.0, 500)  # slower (1 ms): a rise is taken at once, whatever the batch
    assert pace.backlog_limit(500, 10_000) == 2_000
    pace.timed(2_000, 0.8, 500)  # faster (400 µs) on a batch smaller than 3,000: halfway, 700 µs
    assert pace.backlog_limit(500, 10_000) == 2_857
    pace.timed(3_000, 0.6, 500)  # faster (200 µs) on a batch as large as the one the pace came from: at once
    assert pace.backlog_limit(500, 10_000) == 10_000
    pace.timed(10_000, 20.0, 500)  # a loaded box: 2 ms per record, taken at once
    assert pace.backlog_limit(500, 10_000) == 1_000
    pace.timed(1_000, 100.0, 500)  # never below the live size
    assert pace.backlog_limit(500, 10_000) == 500
    # no budget, or no backlog limit above the live size: the record bounds as they are
    assert BatchPace(None).backlog_limit(500, 10_000) == 10_000
    assert pace.backlog_limit(500, None) is None and pace.backlog_limit(500, 400) == 400


def test_run_takes_a_smaller_backlog_batch_when_the_measured_pace_would_outlast_the_budget():
    async def go() -> None:
        clock = [0.0]  # the checkpoints' time, not the box's
        tap = BatchInput(FakeApp(), [ORDERS], 1000, pace=BatchPace(1.0, clock=lambda: clock[0]))
        sizes: list[int] = []

        async def checkpoint(batch: list[InputRecord]) -> list[InputRecord]:
            sizes.append(len(batch))
            clock[0] += len(batch) * 0.1  # 100 ms per record: 1 s holds 10
            return batch

        async def guard(work: Any) -> None:
            await work

        await tap.deliver([rec(ORDERS, 0, o) for o in range(100)], 1)  # a backlog before the worker starts
        runner = asyncio.ensure_future(tap.run(checkpoint, 5, 0.01, guard, backlog_limit=50, backlog_from=8))
        for _ in range(100):
            if sum(sizes) >= 100:
                break
            await asyncio.sleep(0)
        runner.cancel()
        # the live size first (nothing measured), then what 1 s holds (10), never the record bound of 50
        assert sizes[:3] == [5, 10, 10] and max(sizes) == 10, sizes
        assert tap.applied == {TP(ORDERS, 0): sum(sizes)}

    asyncio.run(go())


def test_describe_says_where_a_silent_input_stands_and_what_the_batch_loop_awaits():
    async def go() -> None:
        app = FakeApp()
        tap = BatchInput(app, [ORDERS], 100)
        consumer = FakeConsumer(app, {TP(ORDERS, 0): [], TP(ORDERS, 1): []}, active={TP(ORDERS, 0)})
        consumer._active_partitions = {TP(ORDERS, 0)}  # type: ignore[attr-defined]
        consumer._paused_partitions = {TP(ORDERS, 1)}  # type: ignore[attr-defined]

        async def checkpoint(batch: list[InputRecord]) -> list[InputRecord]:
            return batch

        async def guard(work: Any) -> None:
            await work

        runner = asyncio.ensure_future(tap.run(checkpoint, 10, 0.01, guard))
        await tap.deliver([rec(ORDERS, 0, 1)], 1)
        await asyncio.sleep(0.05)
        assert tap.last_batch_at is not None
        app.flow_control.suspend()
        text = tap.describe(consumer)  # type: ignore[arg-type]
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert "flow suspended" in text and "0 records queued" in text
        assert "2 partitions of its topics assigned, not active: ['orders[1]']" in text
        assert "paused: [" in text and "batch loop awaits: BatchInput.run" in text and "take" in text

    asyncio.run(go())


def test_silent_for_counts_from_the_last_batch_and_not_while_one_is_in_flight():
    async def go() -> None:
        app = FakeApp()
        clock = [100.0]
        tap = BatchInput(app, [ORDERS], 100, pace=BatchPace(None, clock=lambda: clock[0]))
        release = asyncio.Event()

        async def checkpoint(batch: list[InputRecord]) -> list[InputRecord]:
            await release.wait()
            return batch

        async def guard(work: Any) -> None:
            await work

        runner = asyncio.ensure_future(tap.run(checkpoint, 10, 0.01, guard))
        await asyncio.sleep(0.01)
        assert tap.silent_for() is None  # no batch yet
        await tap.deliver([rec(ORDERS, 0, 1)], 1)
        await asyncio.sleep(0.05)
        clock[0] = 160.0
        assert tap.silent_for() is None  # a long checkpoint is not a silent input
        release.set()
        await asyncio.sleep(0.01)
        clock[0] = 175.0
        assert tap.silent_for() == 15.0  # since the batch ended
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(go())


class FakePositions:
    """The aiokafka consumer's subscription as ``fetch_positions`` reads it: tp -> position after the fetches."""

    def __init__(self, positions: dict[TP, int]) -> None:
        self.positions = positions
        assignment = SimpleNamespace(
            tps=set(positions),
            state_value=lambda tp: (
                SimpleNamespace(has_valid_position=True, position=self.positions[tp]) if tp in self.positions else None
            ),
        )
        subscription = SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))
        self._thread = SimpleNamespace(_ensure_consumer=lambda: SimpleNamespace(_subscription=subscription))


def test_a_log_that_ends_in_transaction_markers_is_caught_up_once_its_last_record_is_read():
    """An upstream producer with transactions ends every partition it wrote with a marker: the highwater is one
    past the last record, forever. The fetches read past it; the readable end is after the last record
    delivered, so the partition holds no clock once that record is applied (until session 23 it held it for
    good while the input was quiet)."""

    async def go() -> None:
        app = FakeApp()
        o0, o1 = TP(ORDERS, 0), TP(ORDERS, 1)
        consumer = FakeConsumer(app, {o0: records(5, 6)}, active={o0, o1})
        positions = FakePositions({o0: 8, o1: 3})  # o0: a marker at 7; o1: nothing read since its start, 3
        consumer._thread = positions._thread  # type: ignore[attr-defined]
        app.pulse_batch_input = tap = BatchInput(app, [ORDERS], 100)
        await drain(consumer)
        assert tap.readable_end(o0, 8, start=5) == 7  # after record 6, not the highwater 8
        assert tap.readable_end(o0, 12, start=5) == 12  # more records written than fetched: the highwater
        assert tap.readable_end(o1, 3, start=0) == 0  # everything from its start to 3 holds no record read
        assert tap.readable_end(o1, 9, start=0) == 9
        # a fetch of markers alone (an aborted transaction's end): the last record is still 6
        consumer.fetch = {}
        positions.positions[o0] = 11
        await drain(consumer)
        assert tap.readable_end(o0, 11, start=5) == 7
        # another generation: the fetches of the last one say nothing
        app.consumer_generation_id = 2
        assert tap.readable_end(o0, 11, start=5) == 11
        await drain(consumer)
        assert tap.readable_end(o0, 11, start=9) == 9  # nothing delivered in generation 2: where it started

    asyncio.run(go())


def test_fetch_positions_reads_a_real_aiokafka_consumer():
    """``fetch_positions`` reads aiokafka's subscription state, not a public API: against the installed aiokafka,
    so an upgrade that moves it fails here instead of silently holding clocks again."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def go() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # never started: no broker needed
        try:
            tp, other = TopicPartition(ORDERS, 3), TopicPartition(TICKS, 3)
            consumer.assign([tp, other])
            consumer._subscription.subscription.assignment.state_value(tp).seek(41)
            faust_consumer = SimpleNamespace(_thread=SimpleNamespace(_ensure_consumer=lambda: consumer))
            assert batch_input.fetch_positions(faust_consumer, frozenset({ORDERS}), None) == {tp: 41}
            assert batch_input.fetch_positions(faust_consumer, frozenset({ORDERS}), {TP(ORDERS, 3)}) == {tp: 41}
            assert batch_input.fetch_positions(faust_consumer, frozenset({TICKS}), None) == {}  # no position yet
        finally:
            await consumer.stop()

    asyncio.run(go())
