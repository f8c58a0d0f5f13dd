"""Shared fixtures: a real broker and redis-server on loopback, and worker subprocesses.

Every wait is bounded in time; every test gets its own topics, consumer group
and Redis key prefix, so tests share one broker without seeing each other.
Every test that uses the broker runs on each broker of ``PULSE_TEST_BROKERS``
(default ``tansu,kafka``: the embedded Tansu and Apache Kafka); the test id
names it, e.g. ``test_restart[kafka]``. Pytest groups the tests by broker, so
one broker runs at a time and the first is stopped before the second starts;
scripts/test.sh runs the brokers' halves side by side instead, each in its own
pytest-xdist process (``pytest_xdist_make_scheduler`` below).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pulse.devstack import BROKERS, KAFKA_VERSION, DevStack, free_port, kafka_available, stop_process
from pulse.settings import Settings
from streams.admin import ensure_topics

REPO = Path(__file__).resolve().parent.parent
#: Longest time a test waits for the system to reach an expected state.
CONVERGE_SECONDS = float(os.environ.get("PULSE_TEST_CONVERGE_SECONDS", "90"))


def wait_until(predicate: Callable[[], bool], timeout: float = CONVERGE_SECONDS, every: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


#: The brokers the e2e and faults tests run on; narrow it for a local run, e.g. PULSE_TEST_BROKERS=tansu.
TEST_BROKERS = [b.strip() for b in os.environ.get("PULSE_TEST_BROKERS", ",".join(BROKERS)).split(",") if b.strip()]
if unknown := set(TEST_BROKERS) - set(BROKERS):
    raise pytest.UsageError(f"PULSE_TEST_BROKERS: unknown broker(s) {sorted(unknown)}; known: {', '.join(BROKERS)}")


def pytest_report_header(config: pytest.Config) -> str:
    """Which brokers the e2e and faults tests run on, at the top of every run's output (CI logs)."""
    kafka = f"Apache Kafka {KAFKA_VERSION}: {kafka_available() or 'ready'}" if "kafka" in TEST_BROKERS else ""
    return f"brokers: {', '.join(TEST_BROKERS)} (PULSE_TEST_BROKERS)" + (f"; {kafka}" if kafka else "")


def broker_of(nodeid: str) -> str | None:
    """The broker among a test id's parameters (``test_x[kafka-rocksdb://]`` -> ``kafka``), else None."""
    return next((p for p in nodeid.partition("[")[2].rstrip("]").split("-") if p in BROKERS), None)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadgroup`` (scripts/test.sh): each broker's e2e tests in one xdist worker, its faults tests in
    another, the other tests by file.

    Session fixtures live per xdist worker process, so each of those groups starts its broker once, on
    a worker that needs it, and the groups (which mostly wait on workers, brokers and convergence) run
    side by side; a file's tests stay together so a module fixture (the installed wheel, the deploy
    topology) is built once. The broker groups are handed out first, the longest path of the run.
    The groups come from the test ids here, not from ``xdist_group`` marks: pytest-xdist 3.8 groups
    those by rewriting node ids, which pytest 9.2 ignores (pytest-dev/pytest-xdist#1386).
    """
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class BrokerGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            broker = broker_of(nodeid)
            path = nodeid.split("::")[0]
            return f"broker-{broker}-{Path(path).parent.name}" if broker else path

        def _assign_work_unit(self, node: object) -> None:
            for scope in [scope for scope in self.workqueue if scope.startswith("broker-")][::-1]:
                self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return BrokerGroups(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each broker test's broker on its report, for the summary below."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and (broker := callspec.params.get("devstack")):
            item.user_properties.append(("broker", broker))


#: broker -> outcome -> tests, and the xdist workers that ran them (for the summary below)
_BROKER_RUNS: dict[str, dict[str, int]] = {}
_BROKER_WORKERS: dict[str, set[str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    broker = dict(report.user_properties).get("broker")
    if broker is None or (report.when != "call" and report.outcome == "passed"):
        return  # one count per test: its call, or the setup that skipped or failed it
    outcome = "error" if report.when != "call" and report.outcome == "failed" else report.outcome
    outcomes = _BROKER_RUNS.setdefault(broker, {})
    outcomes[outcome] = outcomes.get(outcome, 0) + 1
    node = getattr(report, "node", None)  # the xdist worker, on the controller
    _BROKER_WORKERS.setdefault(broker, set()).add(node.gateway.id if node is not None else "main")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Which broker the e2e and faults tests ran on, how they ended, and in which process (CI logs)."""
    for broker, outcomes in _BROKER_RUNS.items():
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
        terminalreporter.write_line(f"broker {broker}: {counts} (on {', '.join(sorted(_BROKER_WORKERS[broker]))})")


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


@dataclass
class Namespace:
    """One test's private slice of the shared broker and Redis."""

    env: dict[str, str]
    settings: Settings
    log_dir: Path

    @property
    def bootstrap(self) -> str:
        return self.settings.broker_bootstrap()


@pytest.fixture
def partitions() -> int:
    """Partitions of a test's topics; a test module that needs another count overrides this fixture."""
    return 4


@pytest.fixture
def namespace(devstack: DevStack, tmp_path: Path, partitions: int) -> Namespace:
    return make_namespace(devstack.env(), tmp_path, partitions)


def make_namespace(stack_env: dict[str, str], tmp_path: Path, partitions: int = 4) -> Namespace:
    """Private topics, group and key prefix on a shared broker and Redis (also used outside pytest)."""
    tag = uuid.uuid4().hex[:8]
    env = {
        **stack_env,
        "PULSE_ENV_FILE": "",
        "PULSE_APP_ID": f"pulse-test-{tag}",
        "PULSE_TOPIC_ORDERS": f"orders-{tag}",
        "PULSE_TOPIC_SURVEYS": f"surveys-{tag}",
        "PULSE_TOPIC_COMPLAINTS": f"complaints-{tag}",
        "PULSE_TOPIC_SUPPORT": f"support-{tag}",
        "PULSE_TOPIC_DEAD_LETTERS": f"dlq-{tag}",
        "PULSE_TOPIC_RETENTION_ALERTS": f"alerts-{tag}",
        "PULSE_TOPIC_VIP_CHANGES": f"vips-{tag}",
        "PULSE_REDIS_KEY_PREFIX": f"t{tag}:",
        "PULSE_PARTITIONS": str(partitions),
        # nested and not yet there, as on a fresh checkout
        "PULSE_DATA_DIR": str(tmp_path / "state" / "data"),
        # the tests wait for convergence: every tick sweeps up to PULSE_SWEEP_CUSTOMERS_PER_TICK
        "PULSE_SWEEP_ROUND_SECONDS": "0",
        "PULSE_BROKER_REBALANCE_TIMEOUT": "3",
        "PULSE_BROKER_SESSION_TIMEOUT": "6",
        "PULSE_BROKER_HEARTBEAT_INTERVAL": "0.5",
    }
    settings = Settings(
        _env_file=None, **{k[len("PULSE_") :].lower(): v for k, v in env.items() if k != "PULSE_ENV_FILE"}
    )
    # The topics exist before the test produces, as `pulse worker` / `pulse dev` create them: tests
    # produce before or while the worker starts, and the brokers auto-create differently (Tansu with
    # 4 partitions; Apache Kafka not at all here, as in deploy/compose.yaml).
    asyncio.run(asyncio.wait_for(ensure_topics(settings), CONVERGE_SECONDS))
    return Namespace(env, settings, tmp_path)


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path
    metrics_port: int

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> None:
        stop_process(self.proc, timeout)


class WorkerPool:
    """Worker subprocesses of one namespace, each logging to its own file; ``stop_all`` ends them."""

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self.workers: list[Worker] = []

    def start(self, **extra_env: str) -> Worker:
        port = free_port()
        log = self.namespace.log_dir / f"worker-{len(self.workers)}.log"
        # the HTTP API is off unless a test asks for it: several workers on one host would share its port
        env = {**os.environ, **self.namespace.env, "PULSE_METRICS_PORT": str(port), "PULSE_API_PORT": "0", **extra_env}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pulse", "worker", "--loglevel", "info"],
            cwd=REPO,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        worker = Worker(proc, log, port)
        self.workers.append(worker)
        return worker

    def stop_all(self, timeout: float = 30) -> None:
        """SIGTERM to every running worker at once, then SIGKILL whichever has not exited within ``timeout``.

        Their shutdowns (leave the group, commit, flush) overlap instead of adding up.
        """
        running = [worker for worker in self.workers if worker.alive()]
        for worker in running:
            worker.proc.terminate()
        deadline = time.monotonic() + timeout
        for worker in running:
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(10)


@pytest.fixture
def start_worker(namespace: Namespace) -> Iterator[Callable[..., Worker]]:
    pool = WorkerPool(namespace)
    yield pool.start
    pool.stop_all()


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in records:
                await producer.send(topic, key=key, value=value)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(go())


def consume(bootstrap: str, topic: str, expected: int, timeout: float = CONVERGE_SECONDS, quiet: float = 0.0) -> list:
    """Read a topic from the start until ``expected`` records arrived or ``timeout``, without a group.

    With ``quiet``, go on reading until no record came for that many seconds (to get all of them).
    """

    async def go() -> list:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                partitions = consumer.partitions_for_topic(topic)
                if partitions:
                    break
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.2)
            from aiokafka import TopicPartition

            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            records: list = []
            last_new = time.monotonic()
            while time.monotonic() < deadline:
                if len(records) >= expected and time.monotonic() - last_new >= quiet:
                    break
                batch = await consumer.getmany(timeout_ms=250)
                for msgs in batch.values():
                    records.extend(msgs)
                    last_new = time.monotonic()
            return records
        finally:
            await consumer.stop()

    return asyncio.run(go())


def profile_diffs(settings: Settings, expected: dict[str, dict]) -> list[tuple[str, dict, dict | None]]:
    """(customer, expected, got) for every Redis profile whose fields differ from ``expected``.

    ``expected`` maps customer ids to {profile field: value}; only those fields are compared.
    """
    import redis

    from schemas.profile import CustomerProfile
    from streams.sinks.redis_profiles import profile_key

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    with client.pipeline(transaction=False) as pipe:
        for cid in expected:
            pipe.hgetall(profile_key(settings.redis_key_prefix, cid))
        hashes = pipe.execute()
    diffs = []
    for (cid, exp), fields in zip(expected.items(), hashes, strict=False):
        got = {k: getattr(CustomerProfile.from_redis(fields), k) for k in exp} if fields else None
        if got != exp:
            diffs.append((cid, exp, got))
    return diffs


def get_json(url: str, token: str | None = None, scheme: str = "Bearer") -> tuple[int, dict]:
    """GET ``url`` from a worker's HTTP API: (status, JSON body); (0, {}) when nothing answers within 5 s."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"{scheme} {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except OSError:
        return 0, {}
