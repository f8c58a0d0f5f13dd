"""Ownership epochs and input positions in the changelog (streams.ownership, issue 15), in both recovery paths of
the real table (memory and RocksDB stores, no broker), the rewind decision, and the fail-stop after a missed
generation. The broker-side story (a late write on a real changelog, a commit moved ahead) is
tests/e2e/test_changelog_fencing.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import RecordMetadata
from faust.types import TP

from pulse_config.settings import Settings
from streams import metrics, offsets
from streams.ownership import (
    END_MARKER_KEY,
    META_KEY,
    OwnWrites,
    PartitionView,
    epoch_headers,
    latest_states,
    owner_marker,
    stale_keys,
)
from streams.tables import ChangelogUnread, ForeignOwner
from tests.unit.test_checkpoint import Broker, Table, checkpoint_on, order, run

CHANGELOG = "pulse-customer_states-changelog"
SETTINGS = Settings(_env_file=None)


def rec(offset: int, key: bytes, value: bytes | None, epoch: tuple[int, int] | None, positions=None, partition=0):
    headers = None if epoch is None else epoch_headers(epoch, positions)
    return SimpleNamespace(partition=partition, offset=offset, key=key, value=value, headers=headers)


def marker(offset: int, epoch: tuple[int, int], partition: int = 0) -> SimpleNamespace:
    key, value = owner_marker(epoch, epoch[1], "w", offset - 1)
    return rec(offset, key, value, epoch, partition=partition)


def zombie_history() -> list[SimpleNamespace]:
    """Owner 1 writes A; owner 2 takes over (marker) and writes A and B; owner 1's late batch lands after."""
    return [
        rec(0, b"A", b"a0", None),  # before epochs: epoch 0
        marker(1, (1, 5)),
        rec(2, b"A", b"a1", (1, 5)),
        rec(3, END_MARKER_KEY, None, (1, 5), {"orders": 10}),
        marker(4, (2, 7)),
        rec(5, b"A", b"a2", (2, 7)),
        rec(6, END_MARKER_KEY, None, (2, 7), {"orders": 12}),
        rec(7, b"A", b"a1-late", (1, 5)),  # the dropped worker's late write
        rec(8, b"C", b"c-late", (1, 5)),
        rec(9, END_MARKER_KEY, None, (1, 5), {"orders": 15}),
    ]


def test_records_below_the_latest_owner_epoch_are_skipped_and_markers_never_stored():
    view = PartitionView()
    kept = {r.key: r.value for r in zombie_history() if view.accept(r.key, r.value, r.headers)}
    assert kept == {b"A": b"a2"}
    assert view.epoch == (2, 7) and view.positions == {"orders": 12} and view.skipped == 3
    assert latest_states(zombie_history()) == {b"A": b"a2"}


def test_a_record_raises_the_epoch_when_its_marker_was_compacted_away_and_ties_go_to_the_later_generation():
    view = PartitionView()
    assert view.accept(b"A", b"x", epoch_headers((3, 9)))  # its marker is gone (compaction): the record vouches
    assert not view.accept(b"A", b"old", epoch_headers((2, 8)))
    # two workers recovered the same epoch; the later generation's marker wins, the earlier one's writes are stale
    view = PartitionView()
    m = marker(0, (4, 10))
    view.accept(m.key, m.value, m.headers)
    m = marker(1, (4, 11))
    view.accept(m.key, m.value, m.headers)
    assert not view.accept(b"A", b"from-gen-10", epoch_headers((4, 10)))
    assert view.accept(b"A", b"from-gen-11", epoch_headers((4, 11)))


def test_rewind_when_the_committed_offset_is_ahead_of_the_changelog_position():
    orders0, orders1, surveys0 = TP("orders", 0), TP("orders", 1), TP("surveys", 0)
    positions = {0: {"orders": 100, "surveys": 7}, 1: {}}
    committed = {orders0: 150, orders1: 40, surveys0: 7}
    assert offsets.rewinds(committed, lambda p: positions[p]) == {orders0: (150, 100)}
    # nothing committed, or a changelog without positions: nothing to compare
    assert offsets.rewinds({orders0: None, orders1: 40}, lambda p: positions[p]) == {}


# --- the real table, no broker -----------------------------------------------------------------------------


def state_table(tmp_path, store: str):
    from streams.app import create_app

    s = Settings(_env_file=None, store=store, data_dir=str(tmp_path / "data"), app_id="pulse")
    return create_app(s, s.processor()).customer_states


def faust_events(records: list[SimpleNamespace]) -> list[SimpleNamespace]:
    out = []
    for r in records:
        message = SimpleNamespace(
            tp=TP(CHANGELOG, r.partition),
            partition=r.partition,
            offset=r.offset,
            key=r.key,
            value=r.value,
            headers=r.headers,
        )
        out.append(SimpleNamespace(message=message, key=r.key, value=r.value))
    return out


def stored(table) -> dict[bytes, bytes]:
    """Partition 0's keys as the store holds them (RocksDB: its database, whatever is assigned)."""
    store = table.data
    if hasattr(store, "_db_for_partition") and hasattr(store, "offset_key"):
        db = store._db_for_partition(0)
        return {bytes(k): bytes(v) for k, v in db.items() if k not in (store.offset_key, META_KEY)}
    return dict(store.items())


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
@pytest.mark.parametrize("path", ["bulk", "faust"])
def test_both_recovery_paths_skip_a_late_write_of_a_dropped_worker(tmp_path, store: str, path: str):
    table = state_table(tmp_path, store)
    tp = TP(CHANGELOG, 0)
    before = metrics.CHANGELOG_STALE_RECORDS_SKIPPED._value.get()
    table.begin_restore(tp, -1)
    history = zombie_history()
    if path == "bulk":
        table.restore_records(tp, history[:6])
        table.restore_records(tp, history[6:])
    else:
        table.apply_changelog_batch(faust_events(history))
    assert stored(table) == {b"A": b"a2"}
    assert metrics.CHANGELOG_STALE_RECORDS_SKIPPED._value.get() - before == 3
    assert table.changelog_positions(0) == {"orders": 12}


def test_faust_path_without_bulk_writes_filters_too(tmp_path):
    """A table with a changelog callback goes through Faust's store code: the same records are skipped."""
    table = state_table(tmp_path, "memory://")
    table._on_changelog_event = lambda event: None
    assert not table.can_restore_in_bulk()
    tp = TP(CHANGELOG, 0)
    table.begin_restore(tp, -1)
    table.apply_changelog_batch(faust_events(zombie_history()))
    assert dict(table.data.items()) == {b"A": b"a2"}


def test_rocksdb_recovery_from_the_persisted_offset_starts_from_the_persisted_epoch(tmp_path):
    tp = TP(CHANGELOG, 0)
    history = zombie_history()
    first = state_table(tmp_path, "rocksdb://")
    first.begin_restore(tp, -1)
    first.restore_records(tp, history[:7])  # up to owner 2's end marker
    persisted = first.data.persisted_offset(tp)
    assert persisted == 6
    first.data._dbs[0].close()

    # a restart: the store starts at offset 6 with the epoch it had there; the late writes after it are skipped
    second = state_table(tmp_path, "rocksdb://")
    start = second.data.persisted_offset(tp)
    second.begin_restore(tp, start)
    assert second.views[0].epoch == (2, 7) and second.changelog_positions(0) == {"orders": 12}
    second.restore_records(tp, history[7:])
    assert stored(second) == {b"A": b"a2"}


def test_rocksdb_persists_the_writers_epoch_and_positions_with_its_own_offsets(tmp_path):
    tp = TP(CHANGELOG, 0)
    table = state_table(tmp_path, "rocksdb://")
    table.begin_restore(tp, -1)
    table.writer_epoch[0] = (3, 9)
    table.sent_positions[0] = {"orders": 40}
    table.persisted([SimpleNamespace(topic_partition=tp, offset=41), SimpleNamespace(topic_partition=tp, offset=44)])
    assert table.data.persisted_offset(tp) == 44
    table.begin_restore(tp, 44)
    assert table.views[0].epoch == (3, 9) and table.views[0].positions == {"orders": 40}
    # a dropped worker forgets it: the next start reads the partition from the beginning
    table.forget_persisted()
    assert table.data.persisted_offset(tp) is None


class FakeBatch:
    """aiokafka's BatchBuilder as the table uses it: records appended, never full."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes, Any]] = []

    def append(self, *, key, value, timestamp, headers):
        self.records.append((key, value, headers))
        return self


class FakeProducer:
    """Faust's producer (``send``) and the aiokafka producer under it (``create_batch``/``send_batch``: a batch's
    records take consecutive offsets, its future resolves to the first record's metadata)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes | None, int, Any]] = []

    def _ensure_producer(self) -> FakeProducer:
        return self

    async def send(self, topic, key, value, partition, timestamp, headers):
        self.sent.append((key, value, partition, headers))
        future = asyncio.get_running_loop().create_future()
        future.set_result(RecordMetadata(topic, partition, TP(topic, partition), len(self.sent) - 1, -1, 0, 0))
        return future

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic, *, partition):
        offsets = [(await self.send(topic, k, v, partition, None, h)).result().offset for k, v, h in batch.records]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))  # a batch is contiguous in the log
        future = asyncio.get_running_loop().create_future()
        future.set_result(RecordMetadata(topic, partition, TP(topic, partition), offsets[0], -1, 0, 0))
        return future


def test_a_writer_marks_its_epoch_before_its_first_state_and_carries_it_on_every_record(tmp_path):
    table = state_table(tmp_path, "memory://")
    producer = FakeProducer()
    table.app._producer = producer
    table.app.consumer_generation_id = 7
    tp = TP(CHANGELOG, 1)
    table.begin_restore(tp, -1)
    table.restore_records(tp, [marker(0, (4, 6), partition=1), rec(1, b"A", b"a", (4, 6), partition=1)])
    fence_calls = []
    table.fence = lambda: fence_calls.append(1)

    class Event:  # weak-referenceable, as Faust's events are
        message = SimpleNamespace(partition=1)

    event = Event()

    async def write() -> None:
        await table.write_states([(b"B", b"b", event), (b"C", b"c", event)])
        await table.send_end_markers({1}, {1: {"orders": 9}})

    run(write())
    keys = [key for key, *_ in producer.sent]
    assert keys[0].startswith(b"\x00pulse-owner:") and keys[1:] == [b"B", b"C", END_MARKER_KEY]
    assert all(dict(headers)["pulse-epoch"] == b"5.7" for *_, headers in producer.sent)
    assert len(fence_calls) >= 4  # the marker (before and after its ack), each record, the end marker
    # a recovery of this log keeps the new writer's records and the positions
    view = PartitionView()
    kept = [k for k, v, _, h in producer.sent if view.accept(k, v, h)]
    assert kept == [b"B", b"C"] and view.positions == {"orders": 9} and table.changelog_positions(1) == {"orders": 9}
    # after the next rebalance the first write marks a new epoch
    run(table.on_rebalance(set(), set(), set(), 8))
    assert table.writer_epoch == {}


def later_generation_table(tmp_path, confirmed: bool | None):
    """A worker assigned partition 2 in generation 7 whose recovery read the owner marker (7, 8) of generation 8;
    ``confirmed``: what the coordinator answers (None: no coordinator to ask)."""
    table = state_table(tmp_path, "memory://")
    producer = table.app._producer = FakeProducer()
    table.app.consumer_generation_id = 7
    asked: list[int] = []

    async def confirm(generation: int) -> bool:
        asked.append(generation)
        return bool(confirmed)

    table.confirm_generation = None if confirmed is None else confirm
    tp = TP(CHANGELOG, 2)
    table.begin_restore(tp, -1)
    table.restore_records(tp, [marker(0, (6, 6), partition=2), marker(1, (7, 8), partition=2)])
    return table, producer, asked


@pytest.mark.parametrize("coordinator", ["says no", "absent"])
def test_a_stale_assignment_that_read_a_later_generations_marker_does_not_write_over_it(tmp_path, coordinator):
    """A worker frozen after its JoinGroup wakes to the late SyncGroup answer of generation 7, while the group is in
    generation 8 and that generation's owner has written its marker (7, 8). Its recovery reads that marker; taking
    count + 1 would give (8, 7), which outranks the rightful owner (counts compare first), so recovery would skip
    the owner's records (a frozen-worker run on Kafka: 5 ids with two contents, session 31). Unless the coordinator
    confirms generation 7, it writes nothing: no marker, no state, and the write is counted."""
    table, producer, asked = later_generation_table(tmp_path, None if coordinator == "absent" else False)
    refused = metrics.GENERATION_LOST_WRITES._value.get()
    with pytest.raises(offsets.GenerationLost, match="later generation"):
        run(table.epoch_for(2))
    assert producer.sent == [] and table.writer_epoch == {}
    assert asked == ([] if coordinator == "absent" else [7])
    assert metrics.GENERATION_LOST_WRITES._value.get() == refused + 1


def test_a_later_generations_marker_after_the_generations_were_numbered_anew_does_not_stop_the_owner(tmp_path):
    """The group's generations start again at 1 when its offsets expire after it stood empty (or it is deleted), so
    the changelog holds markers of higher generations than any current member's. The coordinator confirms the
    worker's generation, and the worker takes the next epoch: its count outranks every older marker."""
    table, producer, asked = later_generation_table(tmp_path, True)
    assert run(table.epoch_for(2)) == (8, 7) and asked == [7]
    assert [key for key, *_ in producer.sent] == [owner_marker((8, 7), 7, "w", None)[0]]
    # a marker of the worker's own or an earlier generation asks nobody
    table2, _, asked2 = later_generation_table(tmp_path / "2", False)
    table2.app.consumer_generation_id = 8
    assert run(table2.epoch_for(2)) == (8, 8) and asked2 == []


# --- the checkpoint: positions in the end markers -------------------------------------------------------------


def test_end_markers_carry_the_input_positions_and_are_sent_whenever_positions_move():
    """With PULSE_CHANGELOG_END_MARKERS off (no marker per touched partition), a marker still goes out whenever
    the input positions of a partition moved, and only then."""
    settings = Settings(_env_file=None, changelog_end_markers=False)
    broker = Broker()
    table = Table(broker)
    ledger = {0: {settings.topic_orders: 3, settings.topic_surveys: 11}}
    checkpoint = checkpoint_on(broker, settings, table, applied_positions=lambda p: ledger[p])
    run(checkpoint([order(3, "A", 0, 50), order(4, "B", 0, 60)]))
    assert ("markers", [0]) in broker.log
    assert table.positions[0] == {settings.topic_orders: 5, settings.topic_surveys: 11}
    ledger[0][settings.topic_orders] = 5  # what the agent's ledger does once the batch is durable
    broker.log.clear()
    # the same records read again: the positions do not move, no marker
    run(checkpoint([order(3, "A", 0, 50), order(4, "B", 0, 60)]))
    assert "markers" not in [step for step, _ in broker.log]
    # the next record moves them
    broker.log.clear()
    run(checkpoint([order(5, "C", 1, 70)]))
    assert ("markers", [0]) in broker.log and table.positions[0][settings.topic_orders] == 6


# --- a missed generation: fail-stop -----------------------------------------------------------------------------


def test_an_assignment_after_a_missed_generation_fail_stops(monkeypatch):
    guard = offsets.OffsetGuard(["orders"], read_back=None, start_offsets=None)  # type: ignore[arg-type]
    stops: list[tuple[int | None, int | None]] = []
    guard.on_missed_generation = lambda last, now: stops.append((last, now))
    consumer = SimpleNamespace(app=SimpleNamespace(pulse_offset_guard=guard))

    async def upstream(self, assigned, generation_id=0):
        return None

    monkeypatch.setitem(offsets._upstream, "on_partitions_assigned", upstream)
    assigned = {TP("orders", 0)}
    run(offsets._on_partitions_assigned_retaining(consumer, assigned, 4))
    run(offsets._on_partitions_assigned_retaining(consumer, assigned, 5))
    assert stops == []
    run(offsets._on_partitions_assigned_retaining(consumer, assigned, 7))  # 6 happened without this worker
    assert stops == [(5, 7)]


def test_the_rewind_compares_only_right_after_a_recovery(tmp_path):
    """A seek before the recovery has read a kept partition's tail (Faust's fetcher seeks while the flow is
    stopped) must not compare with the older view: test_retained_partitions saw false rewinds of that kind."""
    table = state_table(tmp_path, "memory://")
    tp = TP(CHANGELOG, 2)
    table.begin_restore(tp, -1)
    table.restore_records(tp, [rec(0, END_MARKER_KEY, None, (1, 1), {"orders": 50}, partition=2)])
    assert table.recovered_positions() == {}  # the recovery has not completed
    run(table.on_recovery_completed({tp}, set()))
    assert table.recovered_positions() == {2: {"orders": 50}}
    assert table.recovered_positions() == {}  # once per recovery


def test_a_skipped_generation_number_with_the_same_member_id_goes_on(monkeypatch):
    """Tansu skips generation numbers for a member it never dropped (full-size chaos: 9 needless fail-stops);
    a dropped member comes back with a new member id (aiokafka resets it), and only that stops the worker."""
    guard = offsets.OffsetGuard(["orders"], read_back=None, start_offsets=None)  # type: ignore[arg-type]
    stops: list[tuple[int | None, int | None]] = []
    guard.on_missed_generation = lambda last, now: stops.append((last, now))
    coordinator = SimpleNamespace(member_id="worker-a-1")
    thread = SimpleNamespace(_ensure_consumer=lambda: SimpleNamespace(_coordinator=coordinator))
    consumer = SimpleNamespace(app=SimpleNamespace(pulse_offset_guard=guard), _thread=thread)

    async def upstream(self, assigned, generation_id=0):
        return None

    monkeypatch.setitem(offsets._upstream, "on_partitions_assigned", upstream)
    assigned = {TP("orders", 0)}
    run(offsets._on_partitions_assigned_retaining(consumer, assigned, 4))
    run(offsets._on_partitions_assigned_retaining(consumer, assigned, 7))  # same member: numbers skipped
    assert stops == []
    coordinator.member_id = "worker-a-2"  # dropped and joined again
    run(offsets._on_partitions_assigned_retaining(consumer, assigned, 9))
    assert stops == [(7, 9)]


# --- compaction: the owner makes its own record a customer's newest again ------------------------------------------


def test_own_writes_find_the_offsets_another_writer_took_between_acknowledgements():
    own = OwnWrites()
    own.acked(0, 3)  # before any marker of ours: not tracked
    own.marker(0, 10)
    for offset in (11, 12, 15, 14, 16):  # 13-14 foreign; 14 again: a retried send acknowledged twice
        own.acked(0, offset)
    own.marker(1, 0)
    own.acked(1, 1)
    assert own.take() == {0: [(13, 14)]}
    assert own.take() == {}
    own.acked(0, 20)
    assert own.take() == {0: [(17, 19)]}
    own.forget()
    own.acked(0, 30)
    assert own.take() == {}


def test_stale_keys_are_the_customers_of_older_epochs_and_a_newer_owner_is_reported():
    records = [
        rec(13, b"A", b"a-late", (1, 5)),
        rec(14, END_MARKER_KEY, None, (1, 5)),  # reserved: no customer
        rec(15, b"B", b"b", (2, 7)),  # our own epoch: a duplicate of a retried send
        rec(16, b"C", b"c-old", None),  # written before epochs: epoch 0
    ]
    assert stale_keys(records, (2, 7)) == ({b"A", b"C"}, None)
    assert stale_keys([*records, marker(17, (3, 8))], (2, 7))[1] == (3, 8)
    assert stale_keys([rec(18, b"D", b"d", (3, 9))], (2, 7))[1] == (3, 9)


class GapProducer(FakeProducer):
    """Acknowledges at the next offset, except that another writer's records took ``foreign`` offsets first."""

    def __init__(self, foreign: dict[int, SimpleNamespace]) -> None:
        super().__init__()
        self.foreign = foreign
        self.offset = 0

    async def send(self, topic, key, value, partition, timestamp, headers):
        while self.offset in self.foreign:
            self.offset += 1
        self.sent.append((key, value, partition, headers))
        future = asyncio.get_running_loop().create_future()
        future.set_result(RecordMetadata(topic, partition, TP(topic, partition), self.offset, -1, 0, 0))
        self.offset += 1
        return future

    async def send_batch(self, batch: FakeBatch, topic, *, partition):
        # a record batch lands whole: another writer's records come before or after it, never inside
        while any(o in self.foreign for o in range(self.offset, self.offset + len(batch.records))):
            self.offset += 1
        return await super().send_batch(batch, topic, partition=partition)


class Event:  # weak-referenceable, as Faust's events are
    message = SimpleNamespace(partition=0)


def repairing_table(tmp_path, store: str, foreign: dict[int, SimpleNamespace]):
    table = state_table(tmp_path, store)
    producer = GapProducer(foreign)
    table.app._producer = producer
    table.app.consumer_generation_id = 7
    table.begin_restore(TP(CHANGELOG, 0), -1)
    read = []

    async def read_back(topic, partition, ranges):
        read.append((partition, list(ranges)))
        return [foreign[o] for first, last in ranges for o in range(first, last + 1) if o in foreign]

    table._read_back = read_back
    return table, producer, read


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_a_late_write_between_the_owners_writes_is_overwritten_by_the_owners_state(tmp_path, store: str):
    """Offsets 0: the owner's marker; 1-2: A and B; 3: the dropped worker's late A; 4: the owner's C."""
    late = rec(3, b"A", b"a-late", (0, 3))
    table, producer, read = repairing_table(tmp_path, store, {3: late})
    before = metrics.CHANGELOG_STATES_REWRITTEN._value.get()

    async def go() -> int:
        written = await table.write_states([(b"A", b"a1", Event()), (b"B", b"b1", Event())])
        await asyncio.gather(*written)
        assert await table.repair({0}) == 0  # nothing foreign yet: no read-back
        written = await table.write_states([(b"C", b"c1", Event())])
        await asyncio.gather(*written)
        return await table.repair({0})

    assert run(go()) == 1
    assert read == [(0, [(3, 3)])]
    key, value, partition, headers = producer.sent[-1]
    assert (key, value, partition) == (b"A", b"a1", 0) and dict(headers)["pulse-epoch"] == b"1.7"
    assert metrics.CHANGELOG_STATES_REWRITTEN._value.get() - before == 1
    # the log as compaction would leave it (the newest record per key) recovers the owner's states
    log_records = [
        rec(o, k, v, tuple(int(x) for x in dict(h)["pulse-epoch"].decode().split(".")))
        for o, (k, v, _, h) in zip([0, 1, 2, 4, 5], producer.sent, strict=True)
    ]
    compacted = {r.key: r for r in sorted([*log_records, late], key=lambda r: r.offset)}
    assert latest_states(sorted(compacted.values(), key=lambda r: r.offset)) == {b"A": b"a1", b"B": b"b1", b"C": b"c1"}


def test_a_record_batch_of_the_owners_is_not_read_back(tmp_path):
    """One write of several states is one record batch per partition: its offsets are all the owner's, so a
    repair reads nothing back (it read the batch's inner offsets back as somebody else's before)."""
    table, producer, read = repairing_table(tmp_path, "memory://", {})

    async def go() -> int:
        written = await table.write_states([(k, k.lower(), Event()) for k in (b"A", b"B", b"C", b"D", b"E")])
        table.persisted(await asyncio.gather(*written))
        return await table.repair({0})

    assert run(go()) == 0
    assert read == []
    assert table.own_writes.next_offset == {0: 6}  # the owner marker at 0, the batch at 1-5


def test_a_newer_owner_between_the_writes_fail_stops_and_forgets_the_persisted_offsets(tmp_path):
    table, producer, _ = repairing_table(tmp_path, "rocksdb://", {2: marker(2, (2, 8))})
    tp = TP(CHANGELOG, 0)

    async def go() -> None:
        written = await table.write_states([(b"A", b"a1", Event()), (b"B", b"b1", Event())])
        table.persisted(await asyncio.gather(*written))
        await table.repair({0})

    assert table.data.persisted_offset(tp) is None
    with pytest.raises(ForeignOwner):
        run(go())
    assert table.data.persisted_offset(tp) is None


def test_a_recovery_that_skipped_a_customers_newest_record_leaves_it_to_be_written_again(tmp_path):
    table, producer, read = repairing_table(tmp_path, "memory://", {})
    tp = TP(CHANGELOG, 0)
    table.begin_restore(tp, -1)
    table.restore_records(tp, zombie_history())  # A's and C's newest records are late writes of epoch (1, 5)
    assert table.repair_keys == {0: {b"A", b"C"}}
    assert run(table.repair(set())) == 0  # not owned: nothing written
    assert run(table.repair({0})) == 1  # C's only record was stale: the owner knows no C
    assert read == []
    assert [(k, v) for k, v, *_ in producer.sent][1:] == [(b"A", b"a2")]
    assert dict(producer.sent[1][3])["pulse-epoch"] == b"3.7"
    # a later record of the owner's epoch for the key clears it
    table.restore_records(tp, [rec(20, b"D", b"d-late", (1, 5)), rec(21, b"D", b"d", (3, 7))])
    assert table.repair_keys == {0: set()}


def recovered_table(tmp_path, store: str, foreign: dict[int, SimpleNamespace]):
    """A worker of generation 7 whose recovery read offsets 0-3 of partition 0 (owner (1, 5): its marker, A, its
    end marker); another writer's records took the ``foreign`` offsets after that, before this worker's marker."""
    table, producer, read = repairing_table(tmp_path, store, foreign)
    producer.offset = 4
    table.restore_records(
        TP(CHANGELOG, 0),
        [
            marker(0, (1, 5)),
            rec(1, b"A", b"a1", (1, 5)),
            rec(2, b"B", b"b1", (1, 5)),
            rec(3, END_MARKER_KEY, None, (1, 5), {"orders": 10}),
        ],
    )
    return table, producer, read


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_the_owner_marker_is_written_at_the_recovery_and_nothing_read_back_when_nothing_came_between(
    tmp_path, store: str
):
    table, producer, read = recovered_table(tmp_path, store, {})
    assert run(table.claim({0})) == 0
    assert read == [] and table.writer_epoch == {0: (2, 7)} and table.marker_offsets == {0: 4}
    assert producer.sent[0][0].startswith(b"\x00pulse-owner:")
    assert stored(table) == {b"A": b"a1", b"B": b"b1"}


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_records_between_the_recovery_and_the_owner_marker_are_applied_before_the_input_is_read(tmp_path, store: str):
    """A worker the group dropped, woken from a stall, wrote its batch (A and C, and the end marker with its input
    positions) after the new owner's recovery read the partition, before that owner's marker: every later
    recovery applies them, so the owner holds them too, and its seek compares the positions they moved."""
    late = {
        4: rec(4, b"A", b"a2", (1, 5)),
        5: rec(5, b"C", b"c2", (1, 5)),
        6: rec(6, END_MARKER_KEY, None, (1, 5), {"orders": 14}),
    }
    table, producer, read = recovered_table(tmp_path, store, late)
    before = metrics.CHANGELOG_RECORDS_AFTER_RECOVERY._value.get()
    assert run(table.claim({0})) == 3
    assert read == [(0, [(4, 6)])] and table.marker_offsets == {0: 7}
    assert stored(table) == {b"A": b"a2", b"B": b"b1", b"C": b"c2"}
    assert table.changelog_positions(0) == {"orders": 14}
    assert metrics.CHANGELOG_RECORDS_AFTER_RECOVERY._value.get() - before == 3
    # what the owner holds is what a recovery of the whole log keeps
    log_records = [marker(0, (1, 5)), rec(1, b"A", b"a1", (1, 5)), rec(2, b"B", b"b1", (1, 5))]
    log_records += [rec(3, END_MARKER_KEY, None, (1, 5), {"orders": 10}), *late.values(), marker(7, (2, 7))]
    assert latest_states(log_records) == stored(table)
    if store == "rocksdb://":  # a restart from the persisted offset starts from the view that includes them
        assert PartitionView.from_bytes(table.data._db_for_partition(0).get(META_KEY)).positions == {"orders": 14}


def test_a_newer_owners_marker_between_the_recovery_and_the_owner_marker_fail_stops(tmp_path):
    table, producer, read = recovered_table(tmp_path, "rocksdb://", {4: marker(4, (2, 8))})
    tp = TP(CHANGELOG, 0)
    assert table.data.persisted_offset(tp) == 3
    with pytest.raises(ForeignOwner, match="after this worker's recovery"):
        run(table.claim({0}))
    assert table.data.persisted_offset(tp) is None  # the restart recovers the partition whole


def test_records_between_the_recovery_and_the_owner_marker_that_cannot_be_read_fail_stop(tmp_path):
    table, producer, read = recovered_table(tmp_path, "memory://", {4: rec(4, b"A", b"a2", (1, 5))})

    async def nothing(topic, partition, ranges):
        read.append((partition, list(ranges)))
        return []

    table._read_back = nothing
    with pytest.raises(ChangelogUnread, match="4-4"):
        run(table.claim({0}))
    assert stored(table) == {b"A": b"a1", b"B": b"b1"}


def test_the_claim_opens_the_tables_gate_unless_a_newer_assignment_came_meanwhile(tmp_path):
    """No batch starts until the recovery's claim is done (streams.batch_input waits for ``claimed``); a claim that
    finishes after the next assignment leaves the gate to that assignment's own claim."""
    table, producer, read = recovered_table(tmp_path, "memory://", {})
    assert not table.claimed.is_set()
    run(table.claim({0}))
    assert table.claimed.is_set()
    run(table.on_rebalance(set(), set(), set(), 8))
    assert not table.claimed.is_set()
    table.recovered_through[0] = producer.offset - 1  # its recovery read through the marker

    send = producer.send

    async def slow_send(*args: Any) -> Any:
        await asyncio.sleep(0.01)  # the marker's round trip
        return await send(*args)

    producer.send = slow_send

    async def claim_overtaken() -> None:
        claiming = asyncio.ensure_future(table.claim({0}))
        await asyncio.sleep(0)
        await table.on_rebalance(set(), set(), set(), 9)  # while the claim awaits its marker's ack
        await claiming

    run(claim_overtaken())
    assert not table.claimed.is_set()
    run(table.claim(set()))  # an assignment without partitions of the table opens it too
    assert table.claimed.is_set()
