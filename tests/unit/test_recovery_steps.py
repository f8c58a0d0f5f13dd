"""A step of the table recovery that outlives its timeout fail-stops the worker, with the chain of awaits it
was suspended in, instead of ending the recovery loop for good (``streams.tables.BulkRecovery._wait``).

Upstream's ``Recovery._wait`` reads mode's ``wait_first`` timeout as "the service stopped", and
``_restart_recovery`` then leaves its loop: every later rebalance finds no recovery, the flow stays suspended and
the worker reads nothing more, alive and silent (session 27). These tests run the real ``_wait`` methods on a
real mode service."""

from __future__ import annotations

import asyncio

import pytest
from faust.tables.recovery import RebalanceAgain, Recovery, ServiceStopped
from mode import Service

from streams.tables import BulkRecovery


class Steps(Service):
    """What ``_wait`` uses of a recovery: a mode service with the rebalance signal."""

    def __init__(self) -> None:
        super().__init__()
        self.signal_recovery_start = asyncio.Event()
        self.timeouts: list[str] = []
        self.errors: list[BaseException | None] = []

    def on_step_failed(self, why: str, error: BaseException | None = None) -> None:
        self.timeouts.append(why)
        self.errors.append(error)

    ours = BulkRecovery._wait
    upstream = Recovery._wait


async def a_broker_request_that_never_answers() -> None:
    await asyncio.Event().wait()


async def answered(after: float, value: object = None) -> object:
    await asyncio.sleep(after)
    return value


def test_upstream_reads_a_timed_out_step_as_the_service_stopped():
    """The premise: nothing stopped, yet upstream raises ServiceStopped, which ends ``_restart_recovery``."""

    async def run() -> None:
        steps = Steps()
        with pytest.raises(ServiceStopped):
            await steps.upstream(a_broker_request_that_never_answers(), timeout=0.05)
        assert not steps.should_stop

    asyncio.run(run())


def test_a_step_that_outlives_its_timeout_fail_stops_naming_where_it_waits():
    async def run() -> list[str]:
        steps = Steps()
        with pytest.raises(ServiceStopped):  # reached only because the test's fail-stop returns
            await steps.ours(a_broker_request_that_never_answers(), timeout=0.05)
        return steps.timeouts

    [why] = asyncio.run(run())
    assert why.startswith("a recovery step outlived broker_request_timeout (0.05 s): ")
    assert "a_broker_request_that_never_answers" in why


def test_a_step_that_answers_in_time_returns_and_a_new_rebalance_still_interrupts():
    async def run() -> Steps:
        steps = Steps()
        await steps.ours(answered(0.01), timeout=5)
        waiting = asyncio.ensure_future(steps.ours(a_broker_request_that_never_answers(), timeout=5))
        await asyncio.sleep(0.05)
        steps.signal_recovery_start.set()
        with pytest.raises(RebalanceAgain):
            await waiting
        steps.signal_recovery_start.clear()  # as _restart_recovery does when it starts the next recovery
        await steps.ours(answered(0.05), timeout=None)  # no timeout: waits as long as it takes
        return steps

    assert asyncio.run(run()).timeouts == []


def test_a_step_that_fails_fail_stops_and_the_recovery_s_own_signals_pass():
    """A step's error used to crash the recovery service, and Faust then stopped the whole worker, a stop that
    waits on the broker: a seek after recovery whose read-back could not bootstrap (the broker killed at that
    instant) left a worker alive and reading nothing (session 32). It fail-stops instead, with the error; another
    rebalance or a stop raised inside a step (a nested ``_wait``) still reach Faust's recovery loop."""
    from aiokafka.errors import IllegalStateError, KafkaConnectionError

    async def raising(error: BaseException) -> None:
        await asyncio.sleep(0)
        raise error

    async def run() -> Steps:
        steps = Steps()
        bootstrap = KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")
        with pytest.raises(ServiceStopped):  # reached only because the test's fail-stop returns
            await steps.ours(raising(bootstrap), timeout=5)
        assert steps.errors == [bootstrap]
        for signal in (RebalanceAgain(), ServiceStopped(), IllegalStateError("no longer assigned")):
            with pytest.raises(type(signal)):
                await steps.ours(raising(signal), timeout=5)
        with pytest.raises(asyncio.CancelledError):
            await steps.ours(raising(asyncio.CancelledError()), timeout=5)
        return steps

    [why] = asyncio.run(run()).timeouts
    assert why.startswith("a recovery step failed: KafkaConnectionError") and "Unable to bootstrap" in why


def test_a_step_is_cancelled_when_a_rebalance_interrupts_it():
    async def run() -> asyncio.Task:
        steps = Steps()
        step = asyncio.ensure_future(a_broker_request_that_never_answers())
        waiting = asyncio.ensure_future(steps.ours(step, timeout=5))
        await asyncio.sleep(0.02)
        steps.signal_recovery_start.set()
        with pytest.raises(RebalanceAgain):
            await waiting
        await asyncio.sleep(0)
        return step

    assert asyncio.run(run()).cancelled()
