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

    def on_step_timeout(self, why: str) -> None:
        self.timeouts.append(why)

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
        with pytest.raises(RuntimeError, match="the broker said no"):
            await steps.ours(refused(), timeout=5)
        await steps.ours(answered(0.05), timeout=None)  # no timeout: waits as long as it takes
        return steps

    async def refused() -> None:
        raise RuntimeError("the broker said no")

    assert asyncio.run(run()).timeouts == []


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
