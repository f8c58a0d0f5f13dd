"""Input records deleted before a worker read them: a worker down longer than the inputs' retention.

The worker was stopped after scoring a first part of the stream; meanwhile more records came and the broker
deleted the oldest of them (here DeleteRecords, what retention does when its time comes), so the group's committed
offsets point below each partition's log start. The restarted worker must go on from the log start, score
everything that is still there exactly once, and say loudly how many offsets it never read (a warning per
partition and ``pulse_input_offsets_deleted_unread_total``): nothing a worker can do brings them back, but an
operator must learn that the retention is shorter than an outage was.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from testing.reference import uninterrupted_profiles
from testing.stack import applied_events, history, profile_diffs, scraped, send_stream, wait_until
from tests.conftest import on_broker

pytestmark = pytest.mark.e2e


def delete_before(bootstrap: str, offsets: dict[tuple[str, int], int]) -> None:
    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_records(
                {TopicPartition(t, p): RecordsToDelete(before_offset=o) for (t, p), o in offsets.items()}
            )
        finally:
            await admin.close()

    asyncio.run(asyncio.wait_for(delete(), 60))


def end_offsets(bootstrap: str, topics: list[str], partitions: int) -> dict[tuple[str, int], int]:
    """Each partition's next offset (ListOffsets: exact on Kafka)."""

    async def read() -> dict[tuple[str, int], int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
            return {(tp.topic, tp.partition): o for tp, o in (await consumer.end_offsets(tps)).items()}
        finally:
            await consumer.stop()

    return asyncio.run(asyncio.wait_for(read(), 30))


def values_below(bootstrap: str, ends: dict[tuple[str, int], int]) -> set[bytes]:
    """The values of the records still on the broker below ``ends``, read from each partition's log start."""

    async def read() -> set[bytes]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for (t, p), end in ends.items() if end > 0]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            values: set[bytes] = set()
            waiting = set(tps)
            while waiting:
                for tp, records in (await consumer.getmany(*waiting, timeout_ms=500)).items():
                    end = ends[(tp.topic, tp.partition)]
                    values.update(r.value for r in records if r.offset < end)
                    if await consumer.position(tp) >= end:
                        waiting.discard(tp)
            return values
        finally:
            await consumer.stop()

    return asyncio.run(asyncio.wait_for(read(), 60))


def test_records_deleted_before_they_were_read_are_reported_and_the_rest_scored_once(namespace, start_worker, devstack):
    if not on_broker(devstack, "kafka"):
        pytest.skip("Tansu does not implement DeleteRecords, and its memory storage keeps every record")
    events, stream = history(120, seed=17)
    s = namespace.settings
    topics = s.input_topics()
    thirds = [
        stream[: len(stream) // 3],
        stream[len(stream) // 3 : 2 * len(stream) // 3],
        stream[2 * len(stream) // 3 :],
    ]
    worker = start_worker()
    send_stream(namespace.bootstrap, topics, thirds[0], 1, 0)

    assert wait_until(lambda: applied_events(worker) >= len(thirds[0])), worker.digest()
    worker.stop()
    assert worker.proc.returncode == 0, worker.digest()
    before = end_offsets(namespace.bootstrap, list(topics.values()), s.partitions)
    send_stream(namespace.bootstrap, topics, thirds[1], 1, 0)
    middle = end_offsets(namespace.bootstrap, list(topics.values()), s.partitions)
    # retention takes the older half of what came while the worker was down, in every input partition
    cut = {tp: (before.get(tp, 0) + end) // 2 for tp, end in middle.items() if end > before.get(tp, 0) + 1}
    delete_before(namespace.bootstrap, cut)
    deleted = sum(offset - before.get(tp, 0) for tp, offset in cut.items())
    # what is left of the second third: the records at or after each cut
    left = values_below(namespace.bootstrap, middle)
    send_stream(namespace.bootstrap, topics, thirds[2], 1, 0)
    second = set(r[2] for r in thirds[1])
    kept = [pair for pair, (_, _, value) in zip(events, stream, strict=True) if value not in second or value in left]
    assert len(stream) - len(kept) == deleted
    expected = uninterrupted_profiles(kept, s)

    restarted = start_worker()
    converged = wait_until(lambda: not profile_diffs(s, expected), timeout=120)
    diffs = profile_diffs(s, expected)
    metrics = scraped(restarted.metrics_port)
    reported = metrics.get("pulse_input_offsets_deleted_unread_total", 0)
    log = restarted.log.read_text(errors="replace")
    print(
        f"\n[faults] {deleted} input records deleted unread while the worker was down: reported {reported:.0f}, "
        f"{len(expected) - len(diffs)} of {len(expected)} profiles equal the reference of what was left"
    )
    assert converged, f"{restarted.digest()}\n{len(diffs)} of {len(expected)} differ, e.g. {diffs[:2]}"
    assert reported == deleted, restarted.digest()
    assert "deleted before this worker read them" in log, restarted.digest()
    assert restarted.alive(), restarted.digest()
