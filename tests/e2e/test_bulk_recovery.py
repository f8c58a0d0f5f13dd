"""Table recovery with the bulk changelog read gives the table Faust's own recovery gives, record for record.

A changelog with overwrites, tombstones, re-created keys and end markers is
recovered into RocksDB twice, once with ``PULSE_RECOVERY_BULK_READ`` on and
once with it off (Faust's per-record recovery); both stores must hold the
latest value of every key (none for deleted keys) and the offset of the last
record. A second round of records is then recovered on top of the same files,
where each path reads only what came after the persisted offset.
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from scoring.customer import CustomerState
from streams.codec import encode_state
from streams.ownership import META_KEY, epoch_headers
from streams.tables import END_MARKER_KEY
from testing.stack import wait_until

pytestmark = [pytest.mark.e2e]

PARTITIONS = 4
#: keys per partition; each partition's keys are its own (as the worker's partitioner keeps them)
KEYS = 150
#: the worker's log line of an owner marker it wrote: partition, offset
MARKER_LINE = re.compile(r"changelog partition (\d+): owner marker at offset (\d+)")


def state(partition: int, version: int) -> bytes:
    return encode_state(CustomerState(partition=partition, last_event_ms=version, events={"order": version}))


def round_records(rng: random.Random, version: int) -> list[tuple[int, bytes, bytes | None]]:
    """(partition, key, value) in send order: puts, overwrites, deletes, and re-puts after a delete."""
    records: list[tuple[int, bytes, bytes | None]] = []
    for p in range(PARTITIONS):
        keys = [f"C{p}-{i:04d}".encode() for i in range(KEYS)]
        for key in keys:
            records.append((p, key, state(p, version)))
        for key in rng.sample(keys, KEYS // 3):
            records.append((p, key, state(p, version + 1)))
        deleted = rng.sample(keys, KEYS // 5)
        for key in deleted:
            records.append((p, key, None))
        for key in deleted[: len(deleted) // 2]:
            records.append((p, key, state(p, version + 2)))
    rng.shuffle(records)  # partitions interleaved; the order within each partition is what counts
    return records


async def write_changelog(
    bootstrap: str, topic: str, records: list[tuple[int, bytes, bytes | None]], epoch: tuple[int, int]
) -> None:
    """``records`` and an end marker per partition, as an owner of ``epoch`` writes them: above the owner markers the
    workers that recovered the rounds before wrote (records of an older epoch after those are skipped)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            await admin.create_topics([NewTopic(topic, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        headers = epoch_headers(epoch)
        await asyncio.gather(
            *[await producer.send(topic, v, key=k, partition=p, headers=headers) for p, k, v in records]
        )
        # what each checkpoint ends with: one tombstone per partition, alone in its batch
        await asyncio.gather(
            *[
                await producer.send(topic, None, key=END_MARKER_KEY, partition=p, headers=headers)
                for p in range(PARTITIONS)
            ]
        )
    finally:
        await producer.stop()


def expected_table(records: list[tuple[int, bytes, bytes | None]]) -> dict[int, dict[bytes, bytes]]:
    table: dict[int, dict[bytes, bytes]] = {p: {} for p in range(PARTITIONS)}
    for p, key, value in records:
        if value is None:
            table[p].pop(key, None)
        else:
            table[p][key] = value
    return table


def read_store(data_dir: Path) -> tuple[dict[int, dict[bytes, bytes]], dict[int, int]]:
    """Every partition's keys and values, and the persisted offsets, of a stopped worker's RocksDB files."""
    from faust.stores.rocksdb import Store
    from rocksdict import Options, Rdict

    tables: dict[int, dict[bytes, bytes]] = {}
    offsets: dict[int, int] = {}
    for p in range(PARTITIONS):
        (path,) = data_dir.glob(f"**/customer_states-{p}.db")
        db = Rdict(str(path), options=Options(raw_mode=True))
        try:
            items = dict(db.items())
        finally:
            db.close()
        offsets[p] = int(items.pop(Store.offset_key))
        items.pop(META_KEY, None)  # the partition's ownership view, stored with the offset (streams.ownership)
        tables[p] = items
    return tables, offsets


def test_bulk_read_recovers_the_table_faust_recovers(namespace, start_worker, tmp_path):
    settings = namespace.settings
    topic = f"{settings.app_id}-customer_states-changelog"
    rng = random.Random(7)
    # no sweep ticks: nothing but the recovery writes to the stores
    env = {"PULSE_STORE": "rocksdb://", "PULSE_SWEEP_TICK_SECONDS": "3600", "PULSE_RECOVERY_FETCH_BYTES": "65536"}
    dirs = {True: tmp_path / "bulk", False: tmp_path / "faust"}

    def recover(bulk: bool) -> str:
        worker = start_worker(**env, PULSE_DATA_DIR=str(dirs[bulk]), PULSE_RECOVERY_BULK_READ=str(bulk).lower())
        try:
            assert wait_until(lambda: "Worker ready" in worker.log.read_text()), worker.log_tail()
            assert worker.alive(), worker.log_tail()
        finally:
            worker.stop()
        return worker.log.read_text()

    written: list[tuple[int, bytes, bytes | None]] = []
    persisted = {bulk: dict.fromkeys(range(PARTITIONS), -1) for bulk in (True, False)}
    for version in (1, 10):
        records = round_records(rng, version)
        asyncio.run(write_changelog(namespace.bootstrap, topic, records, (100 * version, 0)))
        written += records
        expected = expected_table(written)
        for bulk in (True, False):
            log = recover(bulk)
            # each worker writes its owner marker once it has recovered a partition: the recovery read through
            # the record before it (this round's end marker, or the marker of the worker before)
            markers = {int(p): int(o) for p, o in MARKER_LINE.findall(log)}
            assert sorted(markers) == list(range(PARTITIONS)), log[-3000:]
            last_offsets = {p: markers[p] - 1 for p in range(PARTITIONS)}
            # the bulk read reads only what came after the offsets it persisted the round before
            if bulk:
                read = sum(last_offsets[p] - persisted[bulk][p] for p in range(PARTITIONS))
                assert f"bulk changelog read: {read} records" in log, log[-3000:]
            else:
                assert "bulk changelog read" not in log
            tables, offsets = read_store(dirs[bulk])
            # Faust's own recovery may go on to read the marker itself once it is written (stored as no state)
            assert all(offsets[p] in (last_offsets[p], markers[p]) for p in range(PARTITIONS)), (offsets, markers)
            persisted[bulk] = offsets
            for p in range(PARTITIONS):
                assert tables[p] == expected[p], f"partition {p}, bulk={bulk}"
