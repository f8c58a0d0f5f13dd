"""One test's private slice of a shared dev stack (broker and Redis) and its worker subprocesses.

Used by the tests' fixtures (tests/conftest.py) and by benchmarks/chaos.py outside pytest. Every wait is
bounded in time (``CONVERGE_SECONDS``, ``PULSE_TEST_CONVERGE_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from prometheus_client.parser import text_string_to_metric_families

from pulse.devstack import KAFKA_JVM_OPTIONS, free_port, stop_process
from pulse.simulate import generate_events
from pulse_config.settings import Settings
from streams.admin import ensure_topics
from streams.worker import STOP_TIMED_OUT

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


#: The JVM options of the tests' Kafka brokers: the development broker's, with only the C1 compiler. A test broker
#: lives minutes on 2 cores it shares with the workers; C2 compiling took 10 of its 22 s of CPU over three e2e
#: files (test_clock, test_alerts_filters, test_population_indicators), C1 alone 6.8 s in all, the files 8 s faster
#: (docs/benchmarks.md, session 25). The bench and ``pulse dev`` keep the default, as a production broker runs.
TEST_KAFKA_JVM_OPTIONS = (*KAFKA_JVM_OPTIONS, "-XX:TieredStopAtLevel=1")

#: how long a test gives a worker to exit after SIGTERM before it kills it and says so (a stop takes ~1.5 s
#: here; a hang there is a bug users meet as a pod killed at the end of its grace period)
STOP_SECONDS = 30.0

#: a local broker with local workers: short group joins (tests, ``pulse bench``; ``pulse dev`` does the same)
LOCAL_GROUP_TIMING = {
    "PULSE_BROKER_REBALANCE_TIMEOUT": "3",
    "PULSE_BROKER_SESSION_TIMEOUT": "6",
    "PULSE_BROKER_HEARTBEAT_INTERVAL": "0.5",
}


def input_topics_env(tag: str) -> dict[str, str]:
    """The four input topics of a namespace: ``orders-{tag}`` and so on."""
    return {
        "PULSE_TOPIC_ORDERS": f"orders-{tag}",
        "PULSE_TOPIC_SURVEYS": f"surveys-{tag}",
        "PULSE_TOPIC_COMPLAINTS": f"complaints-{tag}",
        "PULSE_TOPIC_SUPPORT": f"support-{tag}",
    }


def settings_from_env(env: dict[str, str]) -> Settings:
    """The ``Settings`` a worker started with ``env`` (its ``PULSE_*`` variables) reads, without a .env file."""
    return Settings(_env_file=None, **{k[len("PULSE_") :].lower(): v for k, v in env.items() if k != "PULSE_ENV_FILE"})


@dataclass
class Namespace:
    """One test's private slice of the shared broker and Redis."""

    env: dict[str, str]
    settings: Settings
    log_dir: Path

    @property
    def bootstrap(self) -> str:
        return self.settings.broker_bootstrap()


def make_namespace(stack_env: dict[str, str], tmp_path: Path, partitions: int = 4, create: bool = True) -> Namespace:
    """Private topics, group and key prefix on a shared broker and Redis (also used outside pytest); ``create``:
    create its topics now (else the test does, e.g. with ``pulse topics``)."""
    tag = uuid.uuid4().hex[:8]
    env = {
        **stack_env,
        "PULSE_ENV_FILE": "",
        "PULSE_APP_ID": f"pulse-test-{tag}",
        **input_topics_env(tag),
        "PULSE_TOPIC_DEAD_LETTERS": f"dlq-{tag}",
        "PULSE_TOPIC_RETENTION_ALERTS": f"alerts-{tag}",
        "PULSE_TOPIC_VIP_CHANGES": f"vips-{tag}",
        "PULSE_TOPIC_RETENTION_ACTIONS": f"actions-{tag}",
        "PULSE_REDIS_KEY_PREFIX": f"t{tag}:",
        "PULSE_PARTITIONS": str(partitions),
        # nested and not yet there, as on a fresh checkout
        "PULSE_DATA_DIR": str(tmp_path / "state" / "data"),
        # the tests wait for convergence: every tick sweeps up to PULSE_SWEEP_CUSTOMERS_PER_TICK
        "PULSE_SWEEP_ROUND_SECONDS": "0",
        **LOCAL_GROUP_TIMING,
    }
    settings = settings_from_env(env)
    if not create:
        return Namespace(env, settings, tmp_path)
    # The topics exist before the test produces, as `pulse worker` / `pulse dev` create them: tests
    # produce before or while the worker starts, and the brokers auto-create differently (Tansu with
    # 4 partitions; Apache Kafka not at all here, as in deploy/compose.yaml).
    asyncio.run(asyncio.wait_for(ensure_topics(settings), CONVERGE_SECONDS))
    return Namespace(env, settings, tmp_path)


#: info lines of a worker's log that say where its group membership and table recovery stand (``Worker.digest``)
GROUP_STEP_MARKERS = (
    "Joined group",
    "Discovered coordinator",
    "generation id",
    "Recovery]: ",
    "Revoking previously",
)


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

    def stop_timed_out(self) -> bool:
        """Its stop outlasted ``PULSE_STOP_TIMEOUT_SECONDS`` and it exited anyway (streams.worker): a stop that hung."""
        return STOP_TIMED_OUT in self.log.read_text(errors="replace")

    def digest(self, first: int = 8, last: int = 22, width: int = 400, group_lines: int = 8) -> str:
        """What a failure message should start with (CI keeps the start of a long one): alive or its exit status;
        the clock gauges, batch count and CPU seconds, scraped twice 2 s apart (do batches still run? does it
        spin?); its warning and error lines (each once: the ``first`` and the ``last``, cut at ``width``), skipping
        the start-up tables that fill a log tail; and, if it runs, the main thread's stack (SIGQUIT:
        streams.worker). The last lines say what a stuck worker still does; a CI log once showed only the first
        30 of 86, all from before the fault (session 27)."""
        status = "running" if self.alive() else f"exited {self.proc.returncode}"
        # twice, two seconds apart: do batches still run (checkpoint count), does it spin (CPU seconds)?
        first_scrape = self._scrape()
        time.sleep(2.0)
        gauges = f"{first_scrape}\n  2 s later: {self._scrape()}"
        dump: list[str] = []
        before = None
        if self.alive():
            # the main thread's stack (streams.worker registers faulthandler on SIGQUIT): a loop blocked in a call
            before = len(self.log.read_text(errors="replace").splitlines())
            self.proc.send_signal(signal.SIGQUIT)
            time.sleep(1.0)
        log_lines = self.log.read_text(errors="replace").splitlines()
        if before is not None:
            dump = [line[:width] for line in log_lines[before:]]
            main = next((i for i, line in enumerate(dump) if line.startswith("Current thread")), len(dump))
            dump = [line for line in dump[main:] if line.startswith(("Current thread", "  File"))][:25]
        seen: set[str] = set()
        picked = []
        for line in log_lines:
            if " [WARNING] " in line or " [ERROR] " in line or " [CRITICAL] " in line:
                # one line per kind: the same warning for another partition or offset is not news
                text = re.sub(r"\d+", "#", line.split("] ", 3)[-1][:width])
                if text not in seen:
                    seen.add(text)
                    picked.append(line[:width])
        if len(picked) > first + last:
            picked = [*picked[:first], f"... {len(picked) - first - last} more", *picked[-last:]]
        # where its group membership and table recovery stand (info lines): which step a worker that stopped
        # reading is in
        steps = [
            line[:width]
            for line in log_lines
            if " [INFO] " in line and any(marker in line for marker in GROUP_STEP_MARKERS)
        ][-group_lines:]
        return "\n".join(
            [f"{status}; {gauges}", *picked, "group and recovery:", *steps, *(["main thread:", *dump] if dump else [])]
        )

    def checkpoints(self) -> float:
        """Checkpoints run so far (-1: the metrics were not read): orders a fleet's digests, least progress first."""
        return checkpoints_in(self._scrape())

    def _scrape(self) -> str:
        wanted = (
            "pulse_clock_",
            "pulse_checkpoint_seconds_count",
            "pulse_batch_events_count",
            "process_cpu_seconds_total",
        )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=3) as response:
                scraped = response.read().decode(errors="replace").splitlines()
        except OSError as exc:
            return f"metrics not read: {exc}"
        return ", ".join(line for line in scraped if line.startswith(wanted))


def checkpoints_in(scrape: str) -> float:
    """``pulse_checkpoint_seconds_count`` in a :meth:`Worker._scrape` line (samples joined by ", "); -1 if absent."""
    match = re.search(r"pulse_checkpoint_seconds_count ([^,\s]+)", scrape)
    return float(match.group(1)) if match else -1.0


def start_process(
    argv: list[str], env: dict[str, str], log: Path, append: bool = False, checkout: Path = REPO
) -> subprocess.Popen:
    """``argv`` in this checkout (or another: ``python -m`` imports the code of its working folder first), its
    output in ``log`` (appended to when ``append``: a restarted process keeps one log), no stdin."""
    return subprocess.Popen(
        argv,
        cwd=checkout,
        env=env,
        stdout=log.open("ab" if append else "wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def start_pulse(
    command: list[str], env: dict[str, str], log: Path, append: bool = False, checkout: Path = REPO
) -> subprocess.Popen:
    """``python -m pulse COMMAND`` of this checkout (``start_process``): how tests and benchmarks run workers,
    routers and consoles."""
    return start_process([sys.executable, "-m", "pulse", *command], env, log, append, checkout)


class WorkerPool:
    """Worker subprocesses of one namespace, each logging to its own file; ``stop_all`` ends them."""

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self.workers: list[Worker] = []

    def start(self, checkout: Path = REPO, **extra_env: str) -> Worker:
        """A worker of this checkout (or of another version's, e.g. a previous release for an upgrade test)."""
        port = free_port()
        log = self.namespace.log_dir / f"worker-{len(self.workers)}.log"
        # the HTTP API is off unless a test asks for it: several workers on one host would share its port
        env = {**os.environ, **self.namespace.env, "PULSE_METRICS_PORT": str(port), "PULSE_API_PORT": "0", **extra_env}
        proc = start_pulse(["worker", "--loglevel", "info"], env, log, checkout=checkout)
        worker = Worker(proc, log, port)
        self.workers.append(worker)
        return worker

    def stop_all(self, timeout: float = STOP_SECONDS) -> list[Worker]:
        """SIGTERM to every running worker at once, then SIGKILL whichever has not exited within ``timeout``; returns
        those (a worker should stop well within it: ~1.5 s here, its checkpoint's grace at most).

        Their shutdowns (leave the group, commit, flush) overlap instead of adding up.
        """
        running = [worker for worker in self.workers if worker.alive()]
        for worker in running:
            worker.proc.terminate()
        deadline = time.monotonic() + timeout
        killed = []
        for worker in running:
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(10)
                killed.append(worker)
        return killed


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


def log_ends(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """Each partition's next offset, read from its records (Tansu's ListOffsets(latest) stops at the last record
    batch's base offset + 1)."""
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        for r in consume(bootstrap, topic, 1, quiet=2):
            ends[(topic, r.partition)] = max(ends.get((topic, r.partition), 0), r.offset + 1)
    return ends


def committed_offsets(
    bootstrap: str, group_id: str, topics: list[str], partitions: int
) -> dict[tuple[str, int], int | None]:
    """The group's committed offset of each partition of ``topics`` (None: none), read while its workers run: an
    OffsetFetch from a consumer with the group's id that assigns itself the partitions and joins nothing, so the
    group does not rebalance (what ``kafka-consumer-groups --describe`` reads for the lag)."""

    async def read() -> dict[tuple[str, int], int | None]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
            consumer.assign(tps)
            return {(tp.topic, tp.partition): await consumer.committed(tp) for tp in tps}
        finally:
            await consumer.stop()

    return asyncio.run(asyncio.wait_for(read(), 30))


class FaustProtocol(RoundRobinPartitionAssignor):
    """Round robin under the protocol name of Faust's assignor: Tansu keeps the group's protocol after its
    members left and refuses a member with another one (InconsistentGroupProtocol)."""

    name = "faust"


@contextlib.asynccontextmanager
async def group_member(
    bootstrap: str, group_id: str, topics: list[str], partitions: int
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer in a worker's group (no worker running) once it holds every partition of ``topics``: to read or
    move the group's committed offsets (Tansu refuses commits from outside a group that has a generation)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        partition_assignment_strategy=(FaustProtocol,),
    )
    await consumer.start()
    try:
        consumer.subscribe(topics)
        deadline = time.monotonic() + CONVERGE_SECONDS
        while len(consumer.assignment()) < len(topics) * partitions and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=500, max_records=1)
        yield consumer
    finally:
        await consumer.stop()


def move_group_offsets(
    namespace: Namespace, target: Callable[[TopicPartition], int | None]
) -> dict[tuple[str, int], tuple[int | None, int | None]]:
    """With no worker running, as a member of its group: commit ``target(tp)`` on each input partition (None:
    leave it), what ``kafka-consumer-groups --reset-offsets`` does (or offsets moved by anyone); (topic,
    partition) -> (committed before, committed after). ``target=lambda tp: None`` only reads them."""
    settings = namespace.settings
    inputs = list(settings.input_topics().values())

    async def move() -> dict[tuple[str, int], tuple[int | None, int | None]]:
        async with group_member(namespace.bootstrap, settings.app_id, inputs, settings.partitions) as consumer:
            tps = sorted(consumer.assignment())
            before = {tp: await consumer.committed(tp) for tp in tps}
            moves = {tp: offset for tp in tps if (offset := target(tp)) is not None}
            if moves:
                await consumer.commit(moves)
            return {(tp.topic, tp.partition): (before[tp], await consumer.committed(tp)) for tp in tps}

    return asyncio.run(move())


def event_records(events: list[tuple[str, dict]]) -> list[tuple[str, bytes, bytes]]:
    """Generated ``events`` ((kind, event), pulse.simulate) as a producer sends them: (kind, key, value), keyed
    by customer id, in order."""
    return [(kind, e["customer_id"].encode(), orjson.dumps(e)) for kind, e in events]


def send_events(namespace: Namespace, events: list[tuple[str, dict]]) -> None:
    """Produce generated ``events`` to the namespace's input topics, keyed by customer id, at once."""
    send_stream(namespace.bootstrap, namespace.settings.input_topics(), event_records(events), chunks=1, pause=0.0)


def profile_diffs(settings: Settings, expected: dict[str, dict]) -> list[tuple[str, dict, dict | None]]:
    """(customer, expected, got) for every Redis profile whose fields differ from ``expected``.

    ``expected`` maps customer ids to {profile field: value}; only those fields are compared.
    """
    import redis

    from schemas.profile import CustomerProfile
    from streams.security import redis_client_kwargs
    from streams.sinks.redis_profiles import profile_key

    # the settings' password and CA file: a rediss:// Redis checks the client against its CA (tests/e2e, TLS)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, **redis_client_kwargs(settings, sync=True))
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


# --- traffic and metrics of the fault and field-condition tests ---------------------------------------------------


def send_stream(bootstrap: str, topics: dict[str, str], stream: list, chunks: int, pause: float) -> None:
    """Produce ``stream`` ((kind, key, value) records) in ``chunks`` parts, ``pause`` seconds apart: traffic that
    goes on while a test kills, restarts or rebalances things."""
    size = -(-len(stream) // chunks)
    for start in range(0, len(stream), size):
        part = stream[start : start + size]
        for kind, topic in topics.items():
            records = [(key, value) for k, key, value in part if k == kind]
            if records:
                produce(bootstrap, topic, records)
        time.sleep(pause)


def metric_sum(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of sample ``name`` of a worker's /metrics over the samples whose labels include ``labels``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items())
    )


def scraped(port: int) -> dict[str, float]:
    """Sum of every sample per sample name (labels summed away)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


#: the generated histories of the fault tests end here (fixed, so a seed always makes the same records)
HISTORY_END = datetime(2026, 6, 1, tzinfo=UTC)


def nothing_stays_pending(worker: Worker) -> bool:
    """The worker's pending profiles drain to 0 (within 30 s). Not one scrape: after Redis is back, each sweep tick
    re-renders a share of the profiles and submits them before its flush, so a scrape in between sees some (a fresh
    clone's run of session 26 met 36 there, after every profile had converged)."""
    return wait_until(lambda: scraped(worker.metrics_port)["pulse_redis_pending_profiles"] == 0, timeout=30)


def history(
    customers: int, seed: int, days: int = 365
) -> tuple[list[tuple[str, dict]], list[tuple[str, bytes, bytes]]]:
    """A generated history of all four kinds, and its records as a producer sends them: (kind, key, value)."""
    events = generate_events(customers=customers, days=days, seed=seed, end=HISTORY_END)
    return events, event_records(events)


def applied_events(worker: Worker) -> float:
    """A worker's ``pulse_events_total`` (0 until its metrics server is up)."""
    try:
        return scraped(worker.metrics_port).get("pulse_events_total", 0)
    except OSError:  # its metrics server is not up yet
        return 0
