"""Every stop of a worker is bounded by ``PULSE_STOP_TIMEOUT_SECONDS`` (``streams.worker.BoundedStopWorker``), not
only one that a signal asked for.

A worker whose table recovery crashed as the broker was killed began Faust's stop, which hung in the consumer
thread's stop; no signal had armed the deadline, so the worker stayed alive and read nothing (session 32, the
broker-restart test under load). The e2e side (a stop while the broker is down, asked by SIGTERM) is
tests/faults/test_stop_timeout.py."""

from __future__ import annotations

import asyncio
import signal

import faust
import pytest

from streams import worker as worker_module


@pytest.fixture
def hung_stop(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """Faust's stop never returns (the broker it waits on is gone); returns the deadline's firings."""
    fired: list[tuple[str, float]] = []
    monkeypatch.setattr(worker_module, "_stop_timed_out", lambda cause, seconds: fired.append((cause, seconds)))

    async def never_returns(self: faust.Worker) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(faust.Worker, "stop", never_returns)
    return fired


def stop_for(seconds: float, worker: worker_module.BoundedStopWorker) -> None:
    async def go() -> None:
        try:
            await asyncio.wait_for(worker.stop(), seconds)
        except TimeoutError:
            pass

    worker.loop.run_until_complete(go())


def a_worker(timeout: float) -> worker_module.BoundedStopWorker:
    app = faust.App("stop-deadline", broker="kafka://127.0.0.1:9")
    loop = asyncio.new_event_loop()
    return worker_module.BoundedStopWorker(app, loglevel="info", stop_timeout_seconds=timeout, loop=loop)


def test_a_stop_after_a_crash_exits_at_the_deadline_naming_the_crash(hung_stop):
    worker = a_worker(0.1)
    worker.crash_reason = RuntimeError("Unable to bootstrap")
    stop_for(0.5, worker)
    assert hung_stop == [("a crash (RuntimeError('Unable to bootstrap'))", 0.1)]


def test_the_first_cause_arms_the_deadline_once(hung_stop):
    worker = a_worker(0.2)
    worker._arm_stop_deadline(signal.SIGTERM.name)  # what _schedule_shutdown does on the signal
    stop_for(0.5, worker)  # the stop the signal starts: no second deadline
    assert hung_stop == [("SIGTERM", 0.2)]
    plain = a_worker(0.1)
    stop_for(0.4, plain)
    assert hung_stop[1:] == [("a stop", 0.1)]
