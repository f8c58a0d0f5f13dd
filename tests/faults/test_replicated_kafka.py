"""A lost node of a replicated Kafka cluster, as production runs it: three nodes, replication factor 3,
``min.insync.replicas`` 2.

The other fault tests run on one node, where a broker restart is a whole-cluster outage. A production cluster
loses one node at a time (a crash, a kernel upgrade, a rolling restart): the partitions it led elect new
leaders among the in-sync replicas, the group coordinator may move, and the clients must follow the metadata
to the new leaders while producers, the workers' changelog sends and their offset commits go on with two
of three replicas. Here two workers score a stream while one node, the group's coordinator, is killed
(SIGKILL) and stays down for the rest of the stream, then comes back on its storage. Every profile must equal
the uninterrupted reference, and a worker may only stop as a fail-stop (status 75), restarted by its
supervisor.

Apache Kafka only (Tansu is a single process). Three JVMs on the test box: ~10-40 s to start.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from pulse.devstack import KafkaBroker, _random_cluster_id, free_port
from testing.chaos import Fleet
from testing.reference import uninterrupted_profiles
from testing.stack import (
    CONVERGE_SECONDS,
    TEST_KAFKA_JVM_OPTIONS,
    WorkerPool,
    history,
    make_namespace,
    profile_diffs,
    send_stream,
    wait_until,
)

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


def test_a_lost_node_of_three_loses_nothing(cluster, own_kafka_redis, tmp_path):
    bootstrap = ",".join(node.bootstrap for node in cluster)
    env = {
        "PULSE_BROKER_URL": f"kafka://{bootstrap}",
        "PULSE_REDIS_URL": own_kafka_redis.url,
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
    s = namespace.settings
    events, stream = history(300, seed=12)
    expected = uninterrupted_profiles(events, s)
    pool = WorkerPool(namespace)
    fleet = Fleet(pool.start, {"PULSE_BATCH_MAX_EVENTS": "50"}, namespace.log_dir)
    try:
        for slot in ("a", "b"):
            fleet.start(slot)
        chunks = 30
        sender = threading.Thread(
            target=send_stream, args=(namespace.bootstrap, s.input_topics(), stream, chunks, 0.3), daemon=True
        )
        sender.start()

        assert wait_until(lambda: fleet.applied() >= len(stream) // 4), fleet.digests()
        # the node the workers' group is coordinated by (it leads some of their partitions too): its loss moves
        # the coordinator, the group rebalances, and the commits in flight go to the new one
        lost = cluster[coordinator_of(bootstrap, s.app_id) - 1]
        lost.kill()
        killed_at = time.monotonic()
        sender.join(CONVERGE_SECONDS)
        assert not sender.is_alive(), "the producers stopped with a node of three down"
        time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - killed_at)))
        down_seconds = time.monotonic() - killed_at
        lost.restart(kill=False)  # back on its storage: it catches up as a follower

        settled = wait_until(fleet.profiles_match(s, expected), timeout=180)
        diffs = profile_diffs(s, expected)
        print(
            f"\n[faults] a node of {NODES} lost for {down_seconds:.0f} s: events {len(stream)}, worker exits "
            f"{fleet.unplanned}, differing profiles {len(diffs)}"
        )
        assert settled, f"{len(diffs)} of {len(expected)} differ, e.g. {diffs[:2]}\n{fleet.digests()}"
        assert all(rc == 75 for _, rc in fleet.unplanned), (fleet.unplanned, fleet.digests())
        assert all(worker.alive() for worker in fleet.slots.values()), fleet.digests()
    finally:
        pool.stop_all()
