"""streams/faust_fixes.py with fakes of Faust: the flow is resumed (and the stream queues cleared) only once (issue
15); the consumer thread fetches for a copy of the active set (a pause while a fetch is in flight must not drop its
records after aiokafka moved past them); while no partition is active the loop waits the batch input's idle time;
a stopping worker's commit ends and a rebalance during its stop leaves its consumer alone (session 25's stop hang).

The recovery re-orderings of the same module are exercised against real brokers by
tests/e2e/test_restart_recovery.py and tests/faults/test_retained_partitions.py."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from mode.utils.queues import FlowControlEvent

from streams import batch_input, faust_fixes
from streams.batch_input import BatchInput, InputRecord

ORDERS = "orders"


class FakeFlowControl:
    def __init__(self, active: bool) -> None:
        self.active = active
        self.resumed = 0

    def is_active(self) -> bool:
        return self.active

    def resume(self) -> None:  # clears every stream queue in mode's FlowControlEvent
        self.resumed += 1
        self.active = True


def test_flow_is_resumed_only_when_suspended():
    """A second resume would clear the stream queues of records fetched since the first."""
    running, suspended = FakeFlowControl(True), FakeFlowControl(False)
    faust_fixes._resume_flow_control(SimpleNamespace(flow_control=running))
    faust_fixes._resume_flow_control(SimpleNamespace(flow_control=suspended))
    assert running.resumed == 0 and suspended.resumed == 1


class LoopApp:
    def __init__(self) -> None:
        self.flow_control = FlowControlEvent(initially_suspended=False)
        self.consumer_generation_id = 1
        self.client_only = False
        self.monitor = SimpleNamespace(stream_inbound_time={}, track_tp_end_offset=lambda tp, offset: None)


class LoopConsumer:
    """What ``_wait_next_records_snapshot`` and the tapped ``getmany`` read of Faust's consumer.

    ``pause_during_fetch``: partitions paused (removed from the live active set, as ``Consumer.pause_partitions``
    does) while the fetch is in the consumer thread, e.g. by a rebalance or a table's recovery. The fetch then
    answers as aiokafka's ``getmany(*partitions)`` does: for the partitions it was handed, all of them if none."""

    def __init__(self, app: LoopApp, active: set[TP], log: dict[TP, list[int]], pause_during_fetch: set[TP]) -> None:
        self.app = app
        self.active = active
        self.log = log
        self.pause_during_fetch = pause_during_fetch
        self.flow_active = True
        self.should_stop = False
        self.not_waiting_next_records = asyncio.Event()
        self._buffered_partitions: set[TP] = set()
        self.handed: list[set[TP] | None] = []
        self.slept: list[float] = []

    def _get_active_partitions(self) -> set[TP]:
        return self.active  # the live set, as Faust's

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> dict[TP, list[Any]]:
        self.handed.append(active_partitions)
        self.active.difference_update(self.pause_during_fetch)
        await asyncio.sleep(0)  # the consumer thread runs the fetch now
        wanted = active_partitions or set(self.log)
        return {
            tp: [SimpleNamespace(offset=o, key=b"k", value=b"v", headers=(), timestamp=o) for o in offsets]
            for tp, offsets in self.log.items()
            if tp in wanted
        }

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def highwater(self, tp: TP) -> int:
        return 100


def test_a_pause_while_a_fetch_is_in_flight_drops_none_of_its_records():
    """The regression session 12 reverted (add4f10): a copy of ``_wait_next_records`` handed the consumer thread
    the live active set; a partition paused meanwhile had its fetched records dropped by the tapped ``getmany``
    (not in the set any more) after the consumer moved past them, and the next batch skipped those offsets."""

    async def go() -> None:
        app = LoopApp()
        tp = TP(ORDERS, 0)
        consumer = LoopConsumer(app, {tp}, {tp: [95, 96, 97, 98, 99]}, pause_during_fetch={tp})
        consumer._wait_next_records = faust_fixes._wait_next_records_snapshot.__get__(consumer)  # type: ignore[attr-defined]
        app.pulse_batch_input = tap = BatchInput(app, [ORDERS], 100)  # type: ignore[attr-defined]
        assert [item async for item in batch_input._getmany_tapped(consumer, 1.0)] == []  # type: ignore[arg-type]
        assert consumer.handed == [{tp}] and consumer.handed[0] is not consumer.active  # a copy, still whole
        assert [r.offset for r in tap.queue.take_now(100)] == [95, 96, 97, 98, 99]

    asyncio.run(go())


def test_with_no_partition_active_the_loop_waits_the_batch_input_s_idle_time_else_upstream_s_second():
    async def go() -> None:
        app = LoopApp()
        consumer = LoopConsumer(app, set(), {}, pause_during_fetch=set())
        assert await faust_fixes._wait_next_records_snapshot(consumer, 1.0) == ({}, set())  # type: ignore[arg-type]
        assert consumer.slept == [faust_fixes.UPSTREAM_IDLE_SECONDS] and consumer.handed == []
        app.pulse_batch_input = tap = BatchInput(app, [ORDERS], 100)  # type: ignore[attr-defined]
        assert tap.idle_seconds == faust_fixes.UPSTREAM_IDLE_SECONDS  # until the input runs
        tap.idle_seconds = 0.05
        await faust_fixes._wait_next_records_snapshot(consumer, 1.0)  # type: ignore[arg-type]
        assert consumer.slept[-1] == 0.05 and consumer.handed == []
        tp = TP(ORDERS, 0)
        consumer.active.add(tp)  # resumed: fetched, no wait
        records, active = await faust_fixes._wait_next_records_snapshot(consumer, 1.0)  # type: ignore[arg-type]
        assert active == {tp} and len(consumer.slept) == 2 and consumer.handed == [{tp}]

    asyncio.run(go())


def test_run_sets_the_idle_wait_to_the_batch_fill_time():
    async def go() -> None:
        tap = BatchInput(LoopApp(), [ORDERS], 100)

        async def checkpoint(batch: list[InputRecord]) -> list[InputRecord]:
            return batch

        async def guard(work: Any) -> None:
            await work

        runner = asyncio.ensure_future(tap.run(checkpoint, 10, 0.02, guard))
        await asyncio.sleep(0)
        assert tap.idle_seconds == 0.02
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    asyncio.run(go())


def test_a_seek_runs_on_the_consumer_thread_not_the_caller_s():
    """aiokafka's ``seek`` drops the partition's fetched records; run from the main thread it raced the consumer
    thread's ``fetched_records`` (``KeyError``, the Fetcher crashed, the worker exited: a fresh clone's Kafka
    replay, session 18). The fix hands it to the consumer thread as Faust's other seeks are."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from faust.transport.consumer import ThreadDelegateConsumer

    faust_fixes.apply()
    assert ThreadDelegateConsumer._seek is faust_fixes._seek_on_consumer_thread

    consumer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="consumer")
    seeks: list[tuple[TP, int, str]] = []

    class FakeThread:
        def seek(self, partition: TP, offset: int) -> None:
            seeks.append((partition, offset, threading.current_thread().name))

        async def call_thread(self, fun: Any, *args: Any) -> Any:
            # mode's ServiceThread awaits ``fun`` on the thread's own event loop
            return await asyncio.wrap_future(consumer_thread.submit(lambda: asyncio.run(fun(*args))))

    consumer = SimpleNamespace(_thread=FakeThread())
    try:
        asyncio.run(faust_fixes._seek_on_consumer_thread(consumer, TP(ORDERS, 2), 17))  # type: ignore[arg-type]
    finally:
        consumer_thread.shutdown()
    [(partition, offset, where)] = seeks
    assert (partition, offset) == (TP(ORDERS, 2), 17) and where.startswith("consumer")


def closed_coordinator_commit(patched: bool) -> Any:
    """A real aiokafka group coordinator that has been closed (as a stopping worker's is) and lost its group
    coordinator, asked to commit: the stop's last commit in the hang of session 25."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from aiokafka.consumer.subscription_state import SubscriptionState
    from aiokafka.structs import OffsetAndMetadata, TopicPartition

    async def go() -> Any:
        client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9")  # never started: no connection is made
        coordinator = GroupCoordinator(client, SubscriptionState(), group_id="g", enable_auto_commit=False)
        await coordinator.close()
        assert coordinator.coordinator_id is None
        commit = faust_fixes._commit_offsets_unless_closing if patched else faust_fixes._UPSTREAM_COMMIT_OFFSETS
        tp = TopicPartition("orders", 0)
        try:
            await asyncio.wait_for(commit(coordinator, None, {tp: OffsetAndMetadata(5, "")}), timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test reads
            return exc
        return None

    return asyncio.run(go())


def test_a_closing_coordinator_s_commit_gives_up_instead_of_retrying_forever():
    """Upstream retries the commit every 100 ms for ever (the closed coordinator never looks a coordinator up
    again), so a worker whose stop commits after a rebalance closed its consumer never exits; patched, the commit
    fails at once with the error Faust's commit reads as "already rebalanced" (a failed commit, not a crash)."""
    from aiokafka.errors import CommitFailedError

    assert isinstance(closed_coordinator_commit(patched=False), asyncio.TimeoutError)
    given_up = closed_coordinator_commit(patched=True)
    assert isinstance(given_up, CommitFailedError)
    assert "already rebalanced" in str(given_up)  # faust.transport.drivers.aiokafka ... _commit: returns False


def test_a_rebalance_reaching_a_stopping_worker_does_not_close_its_consumer_from_the_app_s_loop():
    """Upstream's ``consumer.close()`` there closes the consumer thread's client and coordinator from the app's
    event loop, under the stop's own commit; the patched handler leaves them to the consumer thread's stop."""
    from faust.app.base import App

    faust_fixes.apply()

    class Untouchable:
        def close(self) -> None:
            raise AssertionError("the consumer was closed from the rebalance callback")

    logged: list[str] = []
    app = SimpleNamespace(consumer=Untouchable(), log=SimpleNamespace(info=lambda msg, *a: logged.append(msg)))
    App._on_rebalance_when_stopped(app)  # type: ignore[arg-type]
    assert logged and "rebalance while stopping" in logged[0]


def test_a_running_coordinator_s_commit_retries_a_lost_coordinator_as_upstream_does():
    """Not closing, a coordinator lost between the lookup and the send is retried (looked up again), not given up."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from aiokafka.consumer.subscription_state import SubscriptionState
    from aiokafka.errors import GroupCoordinatorNotAvailableError
    from aiokafka.structs import OffsetAndMetadata, TopicPartition

    async def go() -> tuple[int, int]:
        client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9")
        coordinator = GroupCoordinator(client, SubscriptionState(), group_id="g", enable_auto_commit=False)
        lookups, sends = [0], [0]

        async def lookup() -> None:  # finds the coordinator, which the heartbeat marks dead before the send
            lookups[0] += 1
            coordinator.coordinator_id = None if lookups[0] == 1 else 1

        async def send(assignment: Any, offsets: Any) -> None:
            sends[0] += 1
            if coordinator.coordinator_id is None:
                raise GroupCoordinatorNotAvailableError()

        coordinator.ensure_coordinator_known = lookup  # type: ignore[method-assign]
        coordinator._do_commit_offsets = send  # type: ignore[method-assign]
        coordinator._retry_backoff_ms = 1
        tp = TopicPartition("orders", 0)
        await asyncio.wait_for(
            faust_fixes._commit_offsets_unless_closing(coordinator, None, {tp: OffsetAndMetadata(5, "")}), 2
        )
        await coordinator.close()
        return lookups[0], sends[0]

    assert asyncio.run(go()) == (2, 2)
