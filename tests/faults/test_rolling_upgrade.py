"""A rolling upgrade: the workers of the previous version are replaced one at a time while events flow, so for
a while both versions are members of one consumer group, as any deployment's rolling update does.

The previous version here is the last one whose workers told the group something different: 5dffd8f (session
23) subscribed Faust's leader-election topic, this version does not (``topic_disable_leader``, for clusters
with ACLs). Members with different subscriptions must still split the input partitions between them and hand
over each partition's state, so the result must equal one uninterrupted worker's. The old code comes from this
clone's git history (``git archive``), run in the same virtualenv; a clone without that commit (a shallow one)
skips the test and says so.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis

from pulse.simulate import generate_events
from testing.reference import uninterrupted_profiles
from testing.stack import REPO, WorkerPool, applied_events, produce, profile_diffs, wait_until
from tests.conftest import on_broker

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

#: the previous version: the last commit before the workers' group subscription changed
PREVIOUS = "5dffd8f"


@pytest.fixture
def previous_version(tmp_path: Path) -> Path:
    """The previous version's files, from git."""
    found = subprocess.run(
        ["git", "cat-file", "-e", f"{PREVIOUS}^{{commit}}"], cwd=REPO, capture_output=True, timeout=30
    )
    if found.returncode != 0:
        pytest.skip(f"commit {PREVIOUS} (the previous version) is not in this clone's history (a shallow clone?)")
    archive = subprocess.run(["git", "archive", PREVIOUS], cwd=REPO, capture_output=True, timeout=120, check=True)
    folder = tmp_path / "previous"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def test_replacing_the_previous_versions_workers_one_at_a_time_loses_nothing(devstack, namespace, previous_version):
    if not on_broker(devstack, "kafka"):
        pytest.skip("the group protocol under test is the one production runs: Apache Kafka's")
    s = namespace.settings
    events = generate_events(customers=300, days=365, seed=24, end=datetime(2026, 6, 1, tzinfo=UTC))
    expected = uninterrupted_profiles(events, s)
    client = redis.Redis.from_url(s.redis_url, decode_responses=True)
    third = len(events) // 3
    thirds = [events[:third], events[third : 2 * third], events[2 * third :]]

    def send(part: list[tuple[str, dict]]) -> None:
        for kind, topic in s.input_topics().items():
            records = [(e["customer_id"].encode(), orjson.dumps(e)) for k, e in part if k == kind]
            produce(namespace.bootstrap, topic, records)

    def profiles_written() -> int:
        return sum(1 for _ in client.scan_iter(f"{s.redis_key_prefix}profile:*", count=1000))

    small_batches = {"PULSE_BATCH_MAX_EVENTS": "50"}

    def ready(worker) -> bool:
        return "Worker ready" in worker.log.read_text(errors="replace")

    pool = WorkerPool(namespace)
    try:
        old = [pool.start(checkout=previous_version, **small_batches) for _ in range(2)]
        assert wait_until(lambda: all(ready(w) for w in old)), old[0].log_tail()
        # the old code is running: it subscribes the leader-election topic, this version does not
        assert "__assignor-__leader" in old[0].log.read_text(errors="replace"), old[0].log_tail()
        send(thirds[0])
        assert wait_until(lambda: profiles_written() >= 50), old[0].log_tail()
        old[0].stop()  # the rolling update: one old worker out, one new in, while events flow
        new = [pool.start(**small_batches)]
        assert wait_until(lambda: ready(new[0])), new[0].log_tail()
        before = applied_events(old[1])
        send(thirds[1])
        # both versions in the group, each scoring its share of the partitions
        assert wait_until(lambda: applied_events(new[0]) > 0 and applied_events(old[1]) > before), (
            new[0].digest(),
            old[1].log_tail(),
        )
        old[1].stop()
        new.append(pool.start(**small_batches))
        assert wait_until(lambda: ready(new[1])), new[1].log_tail()
        send(thirds[2])
        converged = wait_until(lambda: not profile_diffs(s, expected), timeout=150)
        remaining = profile_diffs(s, expected)
        print(f"\n[faults] rolling upgrade {PREVIOUS} -> this version: {len(events)} events, {len(remaining)} differ")
        assert converged, f"{len(remaining)} of {len(expected)} differ, e.g. {remaining[:2]}\n{new[1].digest()}"
        assert all(worker.alive() for worker in new), [worker.digest() for worker in new]
        assert applied_events(new[1]) > 0, new[1].digest()  # the last one scored its share too
        for worker in pool.workers:
            assert "Traceback" not in worker.log.read_text(errors="replace"), worker.log_tail()
    finally:
        pool.stop_all()
