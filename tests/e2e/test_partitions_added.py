"""Partitions added to input topics while a worker runs (``kafka-topics --alter --partitions``).

States are partitioned like the inputs (murmur2 % PULSE_PARTITIONS), so a topic that gained partitions no longer
fits the state: records go to partitions no worker may read, and Faust's assignor, which groups topics by
partition count, would hand an input partition to another worker than its state. What is tested is what an
operator sees and can do: the running worker stops once its metadata shows the new partitions, before it scores
anything against the wrong state; a worker started then refuses with one line that says why (exit 78, no
traceback); and the documented way on (docs/operations.md, "Partitions added to an input topic"), every topic at
the new count and the inputs scored again under a new application id, ends with every profile equal to an
uninterrupted run.

Apache Kafka only: Tansu does not implement CreatePartitions (aiokafka: IncompatibleBrokerVersion), so there a
topic cannot gain partitions.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from streams.startup import EXIT_CONFIG
from testing.chaos import Fleet
from testing.reference import uninterrupted_profiles
from testing.stack import (
    Namespace,
    WorkerPool,
    applied_events,
    history,
    profile_diffs,
    send_stream,
    settings_from_env,
    wait_until,
)
from tests.conftest import on_broker

pytestmark = pytest.mark.e2e

#: the input topics' partitions before and after the operator's change
BEFORE, AFTER = 4, 6
#: the worker re-reads the cluster's metadata this often here (its default is Kafka's 300 s)
METADATA_SECONDS = "2"
#: a running worker notices the new partitions at its next metadata read, then the group rebalances
NOTICE_SECONDS = 90


def add_partitions(bootstrap: str, topics: list[str], count: int) -> None:
    async def alter() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({topic: NewPartitions(count) for topic in topics})
        finally:
            await admin.close()

    asyncio.run(asyncio.wait_for(alter(), 60))


def test_a_worker_stops_when_input_topics_gain_partitions_and_the_documented_way_on_loses_nothing(
    namespace, start_worker, devstack, tmp_path
):
    if not on_broker(devstack, "kafka"):
        pytest.skip("Tansu does not implement CreatePartitions: a topic there cannot gain partitions")
    events, stream = history(150, seed=13)
    s = namespace.settings
    topics = s.input_topics()
    halves = [stream[: len(stream) // 2], stream[len(stream) // 2 :]]
    worker = start_worker(PULSE_BROKER_METADATA_MAX_AGE_SECONDS=METADATA_SECONDS)
    send_stream(namespace.bootstrap, topics, halves[0], 1, 0)

    assert wait_until(lambda: applied_events(worker) >= len(halves[0])), worker.digest()

    # the operator adds partitions to two input topics; producers then spread records over all of them
    add_partitions(namespace.bootstrap, [topics["order"], topics["survey"]], AFTER)
    send_stream(namespace.bootstrap, topics, halves[1], 1, 0)
    assert wait_until(lambda: not worker.alive(), timeout=NOTICE_SECONDS), worker.digest()
    log = worker.log.read_text(errors="replace")
    assert worker.proc.returncode == 75, worker.digest()
    assert "an input topic gained partitions" in log and "Partitions added to an input topic" in log

    # a worker started now refuses, in one line
    refused = start_worker()
    assert wait_until(lambda: not refused.alive(), timeout=120), refused.digest()
    said = refused.log.read_text(errors="replace")
    assert refused.proc.returncode == EXIT_CONFIG, said[-2000:]
    assert any(
        f"refusing to start: topic {topic} has {AFTER} partitions, PULSE_PARTITIONS is {BEFORE}" in said
        for topic in (topics["order"], topics["survey"])
    ), said[-2000:]
    assert "Traceback" not in said, said[-2000:]

    # the documented way on: every input topic (and retention-actions) at the new count, a new application id
    # with PULSE_PARTITIONS at it; its workers score the inputs again from their beginning
    add_partitions(namespace.bootstrap, [topics["complaint"], topics["support"], s.topic_retention_actions], AFTER)
    app_id = s.app_id + "-moved"
    moved_env = {
        **namespace.env,
        "PULSE_PARTITIONS": str(AFTER),
        "PULSE_APP_ID": app_id,
        "PULSE_DATA_DIR": str(tmp_path / "moved" / "data"),
    }
    (tmp_path / "moved").mkdir()
    moved = Namespace(moved_env, settings_from_env(moved_env), tmp_path / "moved")
    moved_settings = moved.settings
    expected = uninterrupted_profiles(events, moved_settings)
    pool = WorkerPool(moved)
    # supervised as a deployment would: a worker the group drops in the rescore's rebalances (a busy box: the
    # fresh clone of 46adeac, one of two, `member_id was not recognized`) fail-stops with 75 and is restarted
    fleet = Fleet(pool.start, {}, tmp_path / "moved")
    try:
        for slot in ("a", "b"):
            fleet.start(slot)

        converged = wait_until(fleet.profiles_match(moved_settings, expected), timeout=180)
        diffs = profile_diffs(moved_settings, expected)
        workers = list(fleet.slots.values())
        print(
            f"\n[faults] {topics['order']} and {topics['survey']} went from {BEFORE} to {AFTER} partitions: the "
            f"worker stopped ({worker.proc.returncode}), a new one refused ({refused.proc.returncode}); rescored at "
            f"{AFTER} partitions: {len(expected) - len(diffs)} of {len(expected)} profiles equal the reference"
        )
        assert converged, f"{len(diffs)} of {len(expected)} differ, e.g. {diffs[:2]}\n{workers[0].digest()}"
        assert all(rc == 75 for _, rc in fleet.unplanned), fleet.unplanned
        assert all(w.alive() for w in workers), workers[0].digest()
    finally:
        pool.stop_all()
