"""A worker asked to stop while its broker is down exits within ``PULSE_STOP_TIMEOUT_SECONDS``, saying why; the
router and the console exit at once and cleanly.

Its stop waits on the broker (the producer's flush, the last offset commit, LeaveGroup), which Faust and aiokafka
retry for ever: before the bound, such a worker was still stopping a minute later, until its orchestrator killed
it (four workers of a chaos run whose broker was gone, session 25). The subject is the worker's stop, so it runs
once, against a private Tansu (0.2 s to start) that the test kills.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from pulse.devstack import Server, free_port, start_tansu, stop_process
from streams.worker import EXIT_STOP_TIMEOUT, STOP_TIMED_OUT
from testing.stack import Namespace, WorkerPool, get_json, make_namespace, start_pulse, wait_until
from tests.conftest import first_broker_only
from tests.router_fixtures import start_file_router

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

GRACE_SECONDS = 2.0
STOP_TIMEOUT_SECONDS = 6.0


@pytest.fixture
def private_broker(devstack, tmp_path) -> Iterator[tuple[Server, Namespace]]:
    """A Tansu of the test's own, which it may kill, and a namespace on it (the shared Redis): (broker, namespace).
    The subject is the processes' stop, not the broker: it runs once, on the first broker's run."""
    first_broker_only(devstack, "the processes' stop, against a private Tansu")
    broker = start_tansu(tmp_path)
    try:
        env = {"PULSE_BROKER_URL": f"kafka://127.0.0.1:{broker.port}", "PULSE_REDIS_URL": devstack.redis_url}
        yield broker, make_namespace(env, tmp_path)
    finally:
        broker.stop()


def test_a_worker_stopped_while_its_broker_is_down_exits_within_the_stop_timeout(private_broker):
    broker, namespace = private_broker
    pool = WorkerPool(namespace)
    try:
        worker = pool.start(
            PULSE_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS), PULSE_STOP_TIMEOUT_SECONDS=str(STOP_TIMEOUT_SECONDS)
        )
        assert wait_until(lambda: "Worker ready" in worker.log.read_text(errors="replace"), timeout=60), (
            worker.log_tail()
        )
        broker.kill()
        time.sleep(1.0)  # the worker notices: its fetches and heartbeats fail
        asked = time.monotonic()
        worker.proc.terminate()
        status = worker.proc.wait(STOP_TIMEOUT_SECONDS + 20)
        took = time.monotonic() - asked
        text = worker.log.read_text(errors="replace")
        print(f"\n[faults] stop with the broker down: exit {status} after {took:.1f} s")
        assert status == EXIT_STOP_TIMEOUT, worker.log_tail()
        assert STOP_TIMEOUT_SECONDS - 0.5 <= took <= STOP_TIMEOUT_SECONDS + 10, took
        assert f"{STOP_TIMED_OUT} 6 s after SIGTERM (PULSE_STOP_TIMEOUT_SECONDS)" in text, worker.log_tail()
    finally:
        pool.stop_all(10)


def test_the_router_and_the_console_stopped_while_the_broker_is_down_exit_cleanly(private_broker, tmp_path):
    """Their stops end at once and with status 0: before, ``pulse router`` ended with aiokafka's ``CancelledError``
    (its consumer's close, with the broker gone), a traceback and status 1."""
    broker, namespace = private_broker
    router, router_log, _ = start_file_router(namespace, tmp_path)
    console_port, console_log = free_port(), tmp_path / "console.log"
    console_env = {**os.environ, **namespace.env, "PULSE_CONSOLE_PORT": str(console_port)}
    console = start_pulse(["console"], {**console_env, "PULSE_API_TOKEN": "t0ken-for-the-test"}, console_log)
    try:
        # both serving: the router subscribed (its metrics up), the console answering
        assert wait_until(lambda: "router: assigned" in router_log.read_text(errors="replace"), timeout=60), (
            router_log.read_text(errors="replace")[-2000:]
        )
        assert wait_until(lambda: get_json(f"http://127.0.0.1:{console_port}/health")[0] == 200, timeout=60)
        broker.kill()
        time.sleep(1.0)
        for name, proc, log in (("router", router, router_log), ("console", console, console_log)):
            asked = time.monotonic()
            proc.terminate()
            status = proc.wait(30)
            text = log.read_text(errors="replace")
            took = time.monotonic() - asked
            print(f"\n[faults] {name} stopped with the broker down: exit {status} after {took:.1f} s")
            assert status == 0, text[-3000:]
            assert "Traceback" not in text, text[-3000:]
    finally:
        stop_process(router, 10)
        stop_process(console, 10)
