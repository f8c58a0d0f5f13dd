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

import ast
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pulse.devstack import BROKERS, KAFKA_VERSION, DevStack, kafka_available, start_redis
from testing.stack import STOP_SECONDS, TEST_KAFKA_JVM_OPTIONS, Namespace, Worker, WorkerPool, make_namespace

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


@functools.cache
def _faults_marks(path: Path) -> tuple[bool, frozenset[str]]:
    """Whether the test module at ``path`` is marked ``faults`` as a whole (its ``pytestmark``), and the names of
    its test functions marked ``faults`` one by one (``@pytest.mark.faults``): read from its source, since the
    xdist scheduler sees test ids, not the collected items (their marks live in the xdist workers)."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return False, frozenset()

    def names_faults(node: ast.AST) -> bool:
        return any(isinstance(n, ast.Attribute) and n.attr == "faults" for n in ast.walk(node))

    module = any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
        and names_faults(node.value)
        for node in tree.body
    )
    functions = frozenset(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(map(names_faults, node.decorator_list))
    )
    return module, functions


def marked_faults(path: Path, nodeid: str) -> bool:
    """A test id's test is marked ``faults`` (by its module or its function): it runs in its broker's faults lane."""
    module, functions = _faults_marks(path)
    return module or nodeid.split("::")[-1].partition("[")[0] in functions


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadgroup`` (scripts/test.sh): each broker's tests marked ``faults`` (tests/faults, and the e2e
    modules and tests of kills and outages) in one xdist worker, its other e2e tests in another, the other
    tests by file. The longest lane is the suite's wall time, and the two lanes of a broker now take about as
    long (session 17: Tansu 690 / 690 s, Kafka 602 / 667 s, the suite 11:56; when the lanes were the two folders,
    Tansu's e2e lane took 821 s of a 14:03 suite, its faults lane 464 s).

    The modules that start Kafka brokers of their own (``own_kafka_redis``) are files, not in a Kafka lane, and
    the e2e and faults files are handed out before the quick ones: in session 26 the Kafka lanes, with those
    modules (~300 s), were the longest (748 and 779 s of a 13:27 suite, the others 615-732 s). Back to back in
    session 27 the lanes came out even (809-820 s against 615-808 s) but the suite no shorter (14:12 against
    13:56: the box is busy throughout, and each test takes longer beside those JVMs); new tests now spread over
    every lane instead of lengthening one.

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

    root = config.rootpath

    class BrokerGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            broker = broker_of(nodeid)
            path = nodeid.split("::")[0]
            if broker is None:
                return path
            lane = "faults" if marked_faults(root / path, nodeid) else Path(path).parent.name
            return f"broker-{broker}-{lane}"

        def _assign_work_unit(self, node: object) -> None:
            # the longest first: the broker groups, then the e2e and faults files (a Kafka cluster of their own,
            # the deploy topology, the installed wheel: 40-180 s each), then the rest (seconds each), which fill
            # the lanes' ends. xdist's own order (most tests first) handed the long files out last (session 27)
            slow = [scope for scope in self.workqueue if scope.startswith(("tests/e2e/", "tests/faults/"))]
            for scope in [*[scope for scope in self.workqueue if scope.startswith("broker-")], *slow][::-1]:
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
    stack = DevStack.start(
        tmp_path_factory.mktemp(f"devstack-{broker}"), broker=broker, kafka_jvm_options=TEST_KAFKA_JVM_OPTIONS
    )
    yield stack
    stack.close()


@dataclass(frozen=True)
class OwnKafkaRedis:
    """The redis-server of the tests that start Apache Kafka brokers of their own."""

    url: str


@pytest.fixture(scope="session")
def own_kafka_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnKafkaRedis]:
    """For the modules that start Kafka brokers of their own (SASL and ACLs, a replicated cluster): a skip unless
    Kafka is among ``PULSE_TEST_BROKERS`` (under CI=true, a Kafka that cannot start fails, as in ``devstack``),
    and a redis-server. They use no shared broker, so their ids name none and the scheduler runs them as files
    beside the broker lanes; inside the Kafka lanes they made those the suite's longest (session 27)."""
    if "kafka" not in TEST_BROKERS:
        pytest.skip("Apache Kafka is not among PULSE_TEST_BROKERS")
    if (reason := kafka_available()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true runs the tests on Apache Kafka too, but it cannot start here: {reason}")
        pytest.skip(f"Apache Kafka: {reason}")
    server = start_redis(tmp_path_factory.mktemp("own-kafka-redis"))
    try:
        yield OwnKafkaRedis(f"redis://127.0.0.1:{server.port}/0")
    finally:
        server.stop()


def on_broker(devstack: DevStack, *names: str) -> bool:
    """True when the test runs on one of ``names`` ("tansu", "kafka")."""
    return devstack.broker_name in names


def first_broker_only(devstack: DevStack, subject: str) -> None:
    """Skip on every broker but the first of the run: for a test whose ``subject`` is not the broker."""
    if devstack.broker_name != TEST_BROKERS[0]:
        pytest.skip(f"the subject is {subject}, not the broker: one broker is enough")


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
    killed = pool.stop_all()
    # a worker that outlived its stop timeout exited by itself (status 75), before or after the test's kill
    if hung := killed + [w for w in pool.workers if w not in killed and w.stop_timed_out()]:
        tails = "\n\n".join(f"{worker.log}:\n{worker.log_tail(25)}" for worker in hung)
        pytest.fail(
            f"{len(hung)} worker(s) did not finish their stop (killed after {STOP_SECONDS:.0f} s, or timed out):"
            f"\n{tails}"
        )
