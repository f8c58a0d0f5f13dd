"""Shared fixtures: a real broker and redis-server on loopback, and worker subprocesses.

Every wait is bounded in time; every test gets its own topics, consumer group
and Redis key prefix, so tests share one broker without seeing each other.
Every test that uses the broker runs on each broker of ``PULSE_TEST_BROKERS``
(default ``tansu,kafka``: the embedded Tansu and Apache Kafka); the test id
names it, e.g. ``test_restart[kafka]``. Pytest groups the tests by broker, so
one broker runs at a time and the first is stopped before the second starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pulse.devstack import BROKERS, KAFKA_VERSION, DevStack, kafka_available
from testing.stack import Namespace, Worker, WorkerPool, make_namespace

#: The brokers the e2e and faults tests run on; narrow it for a local run, e.g. PULSE_TEST_BROKERS=tansu.
TEST_BROKERS = [b.strip() for b in os.environ.get("PULSE_TEST_BROKERS", ",".join(BROKERS)).split(",") if b.strip()]
if unknown := set(TEST_BROKERS) - set(BROKERS):
    raise pytest.UsageError(f"PULSE_TEST_BROKERS: unknown broker(s) {sorted(unknown)}; known: {', '.join(BROKERS)}")


def pytest_report_header(config: pytest.Config) -> str:
    """Which brokers the e2e and faults tests run on, at the top of every run's output (CI logs)."""
    kafka = f"Apache Kafka {KAFKA_VERSION}: {kafka_available() or 'ready'}" if "kafka" in TEST_BROKERS else ""
    return f"brokers: {', '.join(TEST_BROKERS)} (PULSE_TEST_BROKERS)" + (f"; {kafka}" if kafka else "")


@pytest.fixture(scope="session", params=TEST_BROKERS)
def devstack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    broker = request.param
    if broker == "kafka" and (reason := kafka_available()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true runs the tests on Apache Kafka too, but it cannot start here: {reason}")
        pytest.skip(f"Apache Kafka: {reason}")
    stack = DevStack.start(tmp_path_factory.mktemp(f"devstack-{broker}"), broker=broker)
    yield stack
    stack.close()


def on_broker(devstack: DevStack, *names: str) -> bool:
    """True when the test runs on one of ``names`` ("tansu", "kafka")."""
    return devstack.broker_name in names


@pytest.fixture
def partitions() -> int:
    """Partitions of a test's topics; a test module that needs another count overrides this fixture."""
    return 4


@pytest.fixture
def namespace(devstack: DevStack, tmp_path: Path, partitions: int) -> Namespace:
    return make_namespace(devstack.env(), tmp_path, partitions)


@pytest.fixture
def start_worker(namespace: Namespace) -> Iterator[Callable[..., Worker]]:
    pool = WorkerPool(namespace)
    yield pool.start
    pool.stop_all()
