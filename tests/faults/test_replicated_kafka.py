"""A lost node of a replicated Kafka cluster, as production runs it: three nodes, replication factor 3,
``min.insync.replicas`` 2.

The other fault tests run on one node, where a broker restart is a whole-cluster outage. A production cluster
loses one node at a time (a crash, a kernel upgrade, a rolling restart): the partitions it led elect new
leaders among the in-sync replicas, the group coordinator may move, and the clients must follow the metadata
to the new leaders while producers, the workers' changelog sends and their offset commits go on with two
of three replicas. Here two workers score a stream while one node, the group's coordinator, is killed
(SIGKILL) and stays down for the rest of the stream, then comes back on its storage. Every profile must equal
the uninterrupted reference, a worker may only stop as a fail-stop (status 75), restarted by its
supervisor, and a router delivers every alert the workers raised to its webhook exactly once. The same holds
through a rolling restart of every node, as an upgrade of the cluster does it.

Apache Kafka only (Tansu is a single process). Three JVMs on the test box: ~10-40 s to start.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from pulse.devstack import KafkaBroker, _random_cluster_id, free_port, stop_process
from testing.chaos import Fleet
from testing.reference import uninterrupted_profiles
from testing.stack import (
    CONVERGE_SECONDS,
    TEST_KAFKA_JVM_OPTIONS,
    Namespace,
    WorkerPool,
    consume,
    history,
    make_namespace,
    profile_diffs,
    send_stream,
    start_pulse,
    wait_until,
)
from tests.router_receivers import Receivers

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

NODES = 3
#: acks=all succeeds with this many in-sync replicas: one node of three may be lost
MIN_INSYNC = 2
#: how long the killed node stays down at least (longer than the group's session timeout, 6 s in tests)
DOWN_SECONDS = 12.0
#: tries to create the test's topics on the fresh cluster, a second apart
TOPIC_TRIES = 30


@pytest.fixture(scope="module")
def cluster(own_kafka_redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[KafkaBroker]]:
    """Three combined broker/controller nodes of one KRaft cluster."""
    ports = [(free_port(), free_port()) for _ in range(NODES)]
    voters = ",".join(f"{n + 1}@127.0.0.1:{controller}" for n, (_, controller) in enumerate(ports))
    cluster_id = _random_cluster_id()
    replicated = {
        "controller.quorum.voters": voters,
        "offsets.topic.replication.factor": str(NODES),
        "transaction.state.log.replication.factor": str(NODES),
        "transaction.state.log.min.isr": str(MIN_INSYNC),
        "share.coordinator.state.topic.replication.factor": str(NODES),
        "share.coordinator.state.topic.min.isr": str(MIN_INSYNC),
        "default.replication.factor": str(NODES),
        "min.insync.replicas": str(MIN_INSYNC),
        # a restarted node catches up and takes its partitions' leadership back, as in production
        "auto.leader.rebalance.enable": "true",
        "leader.imbalance.check.interval.seconds": "5",
    }
    nodes: list[KafkaBroker] = []
    try:
        # all launched before any is awaited (a quorum needs two), from this thread (a node dies with its thread)
        for n, (port, controller) in enumerate(ports):
            props = {
                **replicated,
                "node.id": str(n + 1),
                "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
                "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            }
            home = tmp_path_factory.mktemp(f"kafka-node-{n + 1}")
            nodes.append(
                KafkaBroker.start(
                    home,
                    props,
                    port=port,
                    controller_port=controller,
                    jvm_options=TEST_KAFKA_JVM_OPTIONS,
                    cluster_id=cluster_id,
                    wait=False,
                )
            )
        for node in nodes:
            node.wait_ready()
        yield nodes
    finally:
        # killed, not stopped: the storage is deleted next, and a graceful stop of the last nodes waits out
        # KAFKA_STOP_TIMEOUT_SECONDS for a controller quorum that the first stops took away (38 s per suite run)
        for node in nodes:
            node.kill()
            node.remove_data()


def coordinator_of(bootstrap: str, group: str) -> int:
    """The node id of ``group``'s coordinator."""

    async def ask() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return await admin.find_coordinator(group)
        finally:
            await admin.close()

    return asyncio.run(asyncio.wait_for(ask(), 30))


def under_replicated(bootstrap: str, topics: list[str]) -> int | None:
    """Partitions of ``topics`` (and of the group offsets) with fewer in-sync replicas than ``NODES`` (None: the
    cluster did not answer, e.g. while a node restarts)."""

    async def ask() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics([*topics, "__consumer_offsets"])
            return sum(1 for t in described for p in t["partitions"] if len(p["isr"]) < NODES)
        finally:
            await admin.close()

    try:
        return asyncio.run(asyncio.wait_for(ask(), 30))
    except (KafkaError, OSError, TimeoutError):
        return None


#: the signing secret of the router's webhook
WEBHOOK_SECRET = "cluster-secret"


def start_router(namespace: Namespace, receivers: Receivers) -> subprocess.Popen:
    """``pulse router`` delivering every alert to the receivers' signed webhook (the history's alerts too: the
    router holds back alerts raised on an event-time clock long past), once it says it is ready."""
    config = namespace.log_dir / "router.toml"
    config.write_text(
        f'''[router]
deliver_historical = true
default_route = ["webhook"]

[[destinations]]
name = "webhook"
kind = "webhook"
url = "{receivers.url("webhook")}"
secret = "{WEBHOOK_SECRET}"
'''
    )
    log = namespace.log_dir / "router.log"
    env = {
        **os.environ,
        **namespace.env,
        "PULSE_TOPIC_DELIVERY_DEAD_LETTERS": namespace.settings.topic_retention_alerts + "-deliveries-dlq",
        "PULSE_TOPIC_RETENTION_ACTIONS": namespace.settings.topic_retention_alerts + "-actions",
        "PULSE_ROUTER_CONFIG_FILE": str(config),
        "PULSE_ROUTER_METRICS_PORT": str(free_port()),
        "PULSE_ROUTER_RETRY_INITIAL_SECONDS": "0.5",
        "PULSE_ROUTER_RETRY_MAX_SECONDS": "2",
    }
    proc = start_pulse(["router", "--loglevel", "info"], env, log)
    assert wait_until(lambda: "pulse router: ready" in log.read_text(errors="replace") or proc.poll() is not None)
    assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
    return proc


@dataclass
class Scoring:
    """A scoring run on the cluster (:func:`scoring`)."""

    bootstrap: str
    namespace: Namespace
    expected: dict
    fleet: Fleet
    stream: list
    #: the endpoints of the router that delivers the workers' alerts (:func:`start_router`)
    receivers: Receivers

    def send(self, chunks: int, pause: float) -> threading.Thread:
        """Send the stream in ``chunks``, ``pause`` seconds apart, from a thread."""
        sender = threading.Thread(
            target=send_stream,
            args=(self.namespace.bootstrap, self.namespace.settings.input_topics(), self.stream, chunks, pause),
            daemon=True,
        )
        sender.start()
        return sender

    def settled(self, what: str) -> None:
        """Every profile equals the uninterrupted run's (within 180 s), and a worker stopped only as a fail-stop."""
        s, fleet = self.namespace.settings, self.fleet
        settled = wait_until(fleet.profiles_match(s, self.expected), timeout=180)
        diffs = profile_diffs(s, self.expected)
        print(
            f"\n[faults] {what}: events {len(self.stream)}, worker exits {fleet.unplanned}, differing profiles "
            f"{len(diffs)}"
        )
        assert settled, f"{len(diffs)} of {len(self.expected)} differ, e.g. {diffs[:2]}\n{fleet.digests()}"
        assert all(rc == 75 for _, rc in fleet.unplanned), (fleet.unplanned, fleet.digests())
        assert all(worker.alive() for worker in fleet.slots.values()), fleet.digests()
        self.delivered_once()

    def delivered_once(self) -> None:
        """Every alert the workers raised (a replayed batch may send one again: the same id) reached the router's
        webhook exactly once."""
        records = consume(self.bootstrap, self.namespace.settings.topic_retention_alerts, 1, quiet=3)
        raised = {orjson.loads(r.value)["alert_id"] for r in records}
        delivered = wait_until(lambda: set(self.receivers.snapshot()["webhook"].ack_counts()) >= raised)
        time.sleep(3)  # a second delivery would come within the router's retry delay
        acked = self.receivers.snapshot()["webhook"].ack_counts()
        print(f"[faults] the router through it: {len(raised)} alerts raised, {sum(acked.values())} deliveries")
        log = self.namespace.log_dir / "router.log"
        assert raised and delivered, (len(raised), len(acked), log.read_text(errors="replace")[-3000:])
        assert acked == Counter(dict.fromkeys(raised, 1))


@contextmanager
def scoring(cluster: list[KafkaBroker], redis_url: str, tmp_path, seed: int) -> Iterator[Scoring]:
    """Two workers scoring a generated history's stream that a thread sends in chunks, and a router delivering
    their alerts to a webhook: the namespace on the cluster (its topics replicated on every node), the
    history's uninterrupted profiles, the fleet, the stream and the receivers; all stopped at the end."""
    bootstrap = ",".join(node.bootstrap for node in cluster)
    env = {
        "PULSE_BROKER_URL": f"kafka://{bootstrap}",
        "PULSE_REDIS_URL": redis_url,
        "PULSE_REPLICATION_FACTOR": str(NODES),
    }
    namespace = None
    for _ in range(TOPIC_TRIES):  # the nodes answer before the cluster has settled: as a worker's start-up, retry
        try:
            namespace = make_namespace(env, tmp_path)
            break
        except KafkaError:
            time.sleep(1.0)
    assert namespace is not None, "the cluster did not create the topics"
    events, stream = history(300, seed=seed)
    pool = WorkerPool(namespace)
    fleet = Fleet(pool.start, {"PULSE_BATCH_MAX_EVENTS": "50"}, namespace.log_dir)
    receivers = Receivers(free_port(), {"webhook": WEBHOOK_SECRET})
    receivers.start()
    router = None
    try:
        for slot in ("a", "b"):
            fleet.start(slot)
        router = start_router(namespace, receivers)
        expected = uninterrupted_profiles(events, namespace.settings)
        yield Scoring(bootstrap, namespace, expected, fleet, stream, receivers)
    finally:
        pool.stop_all()
        if router is not None:
            stop_process(router, 30)
        receivers.close()


def test_a_lost_node_of_three_loses_nothing(cluster, own_kafka_redis, tmp_path):
    with scoring(cluster, own_kafka_redis.url, tmp_path, seed=12) as run:
        sender = run.send(chunks=30, pause=0.3)
        assert wait_until(lambda: run.fleet.applied() >= len(run.stream) // 4), run.fleet.digests()
        # the node the workers' group is coordinated by (it leads some of their partitions too): its loss moves
        # the coordinator, the group rebalances, and the commits in flight go to the new one
        lost = cluster[coordinator_of(run.bootstrap, run.namespace.settings.app_id) - 1]
        lost.kill()
        killed_at = time.monotonic()
        sender.join(CONVERGE_SECONDS)
        assert not sender.is_alive(), "the producers stopped with a node of three down"
        time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - killed_at)))
        down_seconds = time.monotonic() - killed_at
        lost.restart(kill=False)  # back on its storage: it catches up as a follower
        run.settled(f"a node of {NODES} lost for {down_seconds:.0f} s")


def test_a_rolling_restart_of_every_node_loses_nothing(cluster, own_kafka_redis, tmp_path):
    """What an upgrade of the cluster does: each node in turn stops (a controlled shutdown moves its leaderships
    away first), starts again, and catches up, before the next one goes; the stream goes on throughout, and the
    group's coordinator moves at least once."""
    with scoring(cluster, own_kafka_redis.url, tmp_path, seed=13) as run:
        s = run.namespace.settings
        topics = [*s.input_topics().values(), s.topic_state_changelog(), s.topic_retention_alerts]
        sender = run.send(chunks=60, pause=0.5)
        assert wait_until(lambda: run.fleet.applied() >= len(run.stream) // 10), run.fleet.digests()
        for node in cluster:
            node.restart(kill=False)
            # as an operator does: the next node goes only when every partition is fully replicated again
            assert wait_until(lambda: under_replicated(run.bootstrap, topics) == 0, timeout=60), node.log
        sender.join(CONVERGE_SECONDS)
        assert not sender.is_alive(), "the producers stopped during the rolling restart"
        run.settled(f"a rolling restart of {NODES} nodes")
