"""Input logs in the changelog (streams.ownership.InputLog): an input topic deleted and created again.

Each state drops a record at or below the last offset it applied per input. A topic deleted and created again
starts at offset 0, so its records would be dropped as redeliveries (tests/e2e/test_input_replaced.py: 37 of 80
orders, before). The end markers name the last record decided per input log; a worker taking the partition reads
it back, and a log found replaced is read from its start with its offsets counted above the old log's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

import orjson
import pytest
from faust.types import TP

from pulse_config.settings import Settings
from scoring.customer import CustomerState
from streams.codec import decode_state
from streams.offsets import REPLACED, SAME, UNKNOWN, OffsetGuard
from streams.ownership import (
    END_MARKER_KEY,
    REPLACED_LOG_MARGIN,
    InputLog,
    PartitionView,
    epoch_headers,
    record_crc,
    replacing,
)
from streams.processor import BatchProcessor, Incoming
from tests.unit.test_checkpoint import SETTINGS, Broker, Table, checkpoint_on, order, run
from tests.unit.test_offsets import SeekingConsumer
from tests.unit.test_processor import order as order_payload

ORDERS = SETTINGS.topic_orders


def in_new_log(offset: int, customer: str, day: int, amount: int) -> SimpleNamespace:
    """An order at ``offset`` of the new log (an event id of its own: the old log had that offset too)."""
    event = order(offset, customer, day, amount)
    value = orjson.loads(event.message.value)
    value["event_id"] = f"new-{customer}-{offset}"
    event.message.value = orjson.dumps(value)
    return event


def test_end_markers_name_each_input_log_and_recovery_and_rocksdb_keep_it():
    logs = {ORDERS: InputLog(41, 1234, 7)}
    view = PartitionView()
    view.accept(END_MARKER_KEY, None, epoch_headers((1, 1), {ORDERS: 42}, logs))
    assert view.positions == {ORDERS: 42} and view.logs == logs
    assert PartitionView.from_bytes(view.to_bytes()) == view
    # a marker written before input logs existed names none (and an older view reads as before)
    view.accept(END_MARKER_KEY, None, epoch_headers((1, 1), {ORDERS: 50}))
    assert view.logs == {}
    assert PartitionView.from_bytes(b'{"epoch":[1,1],"positions":{"orders":3}}').logs == {}


def test_a_replacing_log_counts_above_everything_the_old_one_reached_and_the_same_for_every_worker():
    old = InputLog(last=99, crc=5, base=3)
    new = replacing(old, position=100)
    assert new == InputLog(None, None, 3 + 100 + REPLACED_LOG_MARGIN)
    assert replacing(old, position=100) == new  # a crash before the next end marker: the next worker agrees
    # the position may be past the last record (markers, records of another topic), or behind it (none yet)
    assert replacing(old, position=120).base == 3 + 120 + REPLACED_LOG_MARGIN
    assert replacing(old, position=0).base == 3 + 100 + REPLACED_LOG_MARGIN
    assert replacing(new, position=5).base == new.base + 5 + REPLACED_LOG_MARGIN


def test_the_checkpoint_names_the_last_record_of_each_log_and_a_re_read_keeps_the_higher_one():
    broker = Broker()
    checkpoint = checkpoint_on(broker)
    table = checkpoint.table
    events = [order(0, "A", 0, 50), order(1, "B", 0, 60), order(2, "A", 1, 70)]
    run(checkpoint(events))
    last = events[-1].message
    assert table.logs[0][ORDERS] == InputLog(2, record_crc(last.key, last.value), 0)
    run(checkpoint([order(0, "A", 0, 50)]))  # read again (an offsets reset)
    assert table.logs[0][ORDERS].last == 2


def test_a_replaced_log_is_read_with_its_base_and_named_by_the_next_end_marker():
    """Orders of a new log at offsets 0.. count above what the states applied of the old log (offset 2)."""
    broker = Broker()
    first = checkpoint_on(broker)
    run(first([order(0, "A", 0, 50), order(1, "B", 0, 60), order(2, "A", 1, 70)]))
    old = first.table.logs[0][ORDERS]

    table = Table(broker, first.table.data)
    table.positions, table.logs = dict(first.table.positions), dict(first.table.logs)
    new = replacing(old, 3)
    second = checkpoint_on(broker, table=table, replaced_logs=lambda: {(ORDERS, 0): (0, new)})
    run(second([in_new_log(0, "A", 5, 80), in_new_log(1, "C", 5, 90)]))
    a = decode_state(table.data[b"A"])
    assert a.orders.orders == 3 and a.source_offsets["order"] == new.base + 0
    assert decode_state(table.data[b"C"]).orders.orders == 1
    assert table.positions[0][ORDERS] == 2  # the new log's
    assert table.logs[0][ORDERS].base == new.base and table.logs[0][ORDERS].last == 1
    # without the replacement both were dropped as redeliveries of offsets 0 and 1
    stale = Table(broker, first.table.data)
    stale.positions, stale.logs = dict(first.table.positions), dict(first.table.logs)
    run(checkpoint_on(broker, table=stale)([in_new_log(0, "A", 5, 80)]))
    assert decode_state(stale.data[b"A"]).orders.orders == 2


def test_copies_and_actions_carry_and_store_offsets_with_the_base():
    processor = BatchProcessor(Settings(_env_file=None).processor())
    processor.bases = {("orders", 0): 1000}
    store: dict[bytes, CustomerState] = {}
    out = processor.process(
        [
            Incoming("orders", 0, 3, b"A", order_payload("1", "A", 5)),
            Incoming("orders", 0, 4, b"x", order_payload("2", "B", 5)),
        ],
        lambda key: store.get(key, CustomerState()),
    )
    assert out.states[b"A"].source_offsets["order"] == 1003
    assert out.rerouted_origins == [(0, 1004)]


class Checks:
    """check_records over fixed verdicts, recording what it was asked."""

    def __init__(self, verdicts: dict[TP, str]) -> None:
        self.verdicts = verdicts
        self.asked: dict[TP, tuple[int, int]] = {}

    async def __call__(self, items):
        self.asked = dict(items)
        return {tp: self.verdicts[tp] for tp in items}


def test_the_guard_notes_only_logs_found_replaced_with_the_new_start_and_base():
    orders = [TP(ORDERS, p) for p in range(3)]
    checks = Checks({orders[0]: REPLACED, orders[1]: SAME, orders[2]: UNKNOWN})

    async def log_start(tp: TP) -> int:
        return 0

    guard = OffsetGuard([ORDERS], None, None, log_start, checks)  # type: ignore[arg-type]
    named = {p: {ORDERS: InputLog(10 + p, 7, 0)} for p in range(3)}
    guard.changelog_logs = lambda p: named.get(p, {})
    recovered = {0: {ORDERS: 11}, 1: {ORDERS: 12}, 2: {ORDERS: 13}}
    found = asyncio.run(guard.verify_logs([*orders, TP(ORDERS, 3)], recovered))
    assert checks.asked == {orders[p]: (10 + p, 7) for p in range(3)}  # partition 3 was not recovered
    assert found == {orders[0]: (0, replacing(InputLog(10, 7, 0), 11))}
    assert guard.take_replaced() == {(ORDERS, 0): found[orders[0]]}
    assert guard.take_replaced() == {}


def test_a_partition_read_again_below_the_next_offset_is_checked_once_until_its_next_seek():
    """A consumer whose fetch went out of range (its log replaced under it, Kafka) goes back to the log's start
    with no rebalance: the first batch that reads below the next offset to apply has the log checked; found
    replaced, the ledger starts the new log at its start. A partition read at or above it is not checked."""
    tp, other = TP(ORDERS, 0), TP(ORDERS, 1)
    checks = Checks({tp: REPLACED, other: SAME})

    async def log_start(tp: TP) -> int:
        return 0

    guard = OffsetGuard([ORDERS], None, None, log_start, checks)  # type: ignore[arg-type]
    guard.changelog_logs = lambda p: {ORDERS: InputLog(40 + p, 9, 0)}
    guard.table_positions = lambda p: {ORDERS: 41 + p}
    guard.ledger.expected.update({tp: 41, other: 42})
    asyncio.run(guard._verify_reread([(tp, 0), (tp, 1), (other, 42)]))
    assert checks.asked == {tp: (40, 9)}
    assert guard.ledger.expected[tp] == 0
    assert guard.take_replaced() == {(ORDERS, 0): (0, replacing(InputLog(40, 9, 0), 41))}
    checks.asked = {}
    asyncio.run(guard._verify_reread([(tp, 0), (other, 3)]))  # tp: checked already; other: read again now
    assert checks.asked == {other: (41, 9)}
    assert guard.take_replaced() == {}


class ResumingConsumer(SeekingConsumer):
    """The consumer as Faust's ``on_recovery_completed`` drives it: resume partitions, then the flow."""

    def __init__(self, guard: OffsetGuard, committed: dict[TP, int | None], positions: dict[TP, int]) -> None:
        super().__init__(guard, committed, positions)
        self.flow_active = False
        #: called in the middle of the upstream seek (a revocation arriving then)
        self.during_seek: Callable[[], None] = lambda: None
        #: per start of the fetcher, whether it saw a resume seek
        self.fetcher_sees_resume: list[bool] = []

    async def upstream_perform_seek(self) -> None:
        await super().upstream_perform_seek()
        self.during_seek()

    def resume_partitions(self, tps: set[TP]) -> None:
        pass

    def resume_flow(self) -> None:
        self.flow_active = True

    async def seek(self, tp: TP, offset: int) -> None:
        from streams import offsets

        await offsets._seek_noted(self, tp, offset)  # type: ignore[arg-type]


def resuming_recovery(consumer: ResumingConsumer, monkeypatch: pytest.MonkeyPatch):
    """A BulkRecovery with what Faust's ``on_recovery_completed`` (streams.faust_fixes) uses, and no service; the
    consumer seeks through the offset guard's ``perform_seek`` over its own upstream."""
    from streams import faust_fixes, offsets
    from streams.tables import BulkRecovery

    faust_fixes.apply()
    monkeypatch.setitem(offsets._upstream, "perform_seek", lambda self: self.upstream_perform_seek())
    monkeypatch.setitem(offsets._upstream, "seek", lambda self, tp, offset: self.upstream_seek(tp, offset))
    consumer.perform_seek = lambda: offsets._perform_seek_noted(consumer)  # type: ignore[method-assign]
    recovery = BulkRecovery.__new__(BulkRecovery)

    async def nothing(*_: object) -> None:
        return None

    async def wait(coro, timeout=None):  # Recovery._wait without its rebalance signal
        return await asyncio.ensure_future(coro)

    async def start_fetcher() -> None:
        # Faust starts its fetcher here, during the resume: the fetch loop's task must not see a resume seek
        consumer.fetcher_sees_resume.append(recovery.seeking_to_resume())

    quiet = SimpleNamespace(info=lambda *a: None, dev=lambda *a: None, warning=lambda *a: None)
    flow = SimpleNamespace(is_active=lambda: consumer.flow_active, resume=lambda: None)
    consumer.app.__dict__.update(
        consumer=consumer,
        consumer_generation_id=7,
        on_rebalance_complete=SimpleNamespace(send=nothing),
        conf=SimpleNamespace(broker_request_timeout=10.0),
        flow_control=flow,
        _fetcher=SimpleNamespace(maybe_start=start_fetcher),
        assignor=SimpleNamespace(assigned_standbys=lambda: set()),
        on_rebalance_end=lambda: None,
        tables=SimpleNamespace(_recovery=recovery),
    )
    tables = SimpleNamespace(values=lambda: [], on_actives_ready=lambda: None, on_standbys_ready=lambda: None)
    recovery.__dict__.update(
        app=consumer.app,
        log=quiet,
        tables=tables,
        _wait=wait,
        _set_recovery_ended=lambda: None,
        _is_changelog_tp=lambda tp: False,
        completed=SimpleNamespace(set=lambda: None),
        actives_for_table={},
        standbys_for_table={},
    )
    return recovery


def test_a_revocation_during_the_resume_seek_keeps_the_flow_stopped_for_the_next_recovery(monkeypatch):
    """Faust's ``on_recovery_completed`` (the path of apps with tables) checks the generation, awaits the seek,
    then resumes the flow: a revocation during the seek (the input logs are read back there) must not let it
    resume in the middle of a rebalance. A Kafka chaos run (session 29) scored a batch of the next generation's
    partitions before their recovery. Session 29's guard was set only around ``_resume_streams``, which this
    path does not take: this test drives the real method and failed with it. A revocation after the assignment and
    before the resume began let the flow resume too (a Tansu chaos run with frozen workers, session 30: the flow
    stayed on through the next assignment's recovery, 182 ids with two contents)."""
    from faust.tables.recovery import RebalanceAgain

    guard = OffsetGuard([ORDERS], None, None)  # type: ignore[arg-type]
    consumer = ResumingConsumer(guard, {TP(ORDERS, 0): 5}, {TP(ORDERS, 0): 9})
    recovery = resuming_recovery(consumer, monkeypatch)
    recovery.revocations, recovery.resumed_at = 0, None

    def revoke() -> None:  # BulkRecovery.on_partitions_revoked, without Faust's part
        recovery.revocations += 1

    consumer.during_seek = revoke
    with pytest.raises(RebalanceAgain):
        asyncio.run(recovery.on_recovery_completed(7))
    assert not consumer.flow_active
    assert not recovery.resumed_since_revoked()

    consumer.during_seek = lambda: None
    recovery.note_assigned()  # the next assignment, and a revocation before its resume began
    revoke()
    with pytest.raises(RebalanceAgain):
        asyncio.run(recovery.on_recovery_completed(7))
    assert not consumer.flow_active

    recovery.note_assigned()  # the next recovery
    asyncio.run(recovery.on_recovery_completed(7))
    assert consumer.flow_active
    assert recovery.resumed_since_revoked()
    # the fetcher started by the resume seeks as the fetch loop: a chaos run (session 30) whose fetcher
    # inherited the resume's mark raised RebalanceAgain in the fetch loop's seeks
    assert consumer.fetcher_sees_resume == [False]


def test_the_fetch_loop_s_seek_neither_reads_logs_back_nor_undoes_the_resume_seek(monkeypatch):
    """Faust's fetch loop seeks to the committed offsets when a fetch returns while the flow is stopped. It
    comes at the start of a rebalance, when the assignment changes under it (the fresh clone of session 29 logged
    ``IllegalStateError: No current assignment`` there): it must not take the recovered positions the resume seek
    compares with (it did, session 29), and once the resume seek rewound a partition it must not move it forward
    to the committed offset again."""
    from streams import offsets

    tp = TP(ORDERS, 0)
    guard = OffsetGuard([ORDERS], None, None)  # type: ignore[arg-type]
    recovered = {0: {ORDERS: 3}}
    taken: list[dict] = []

    def changelog_positions() -> dict:
        out = dict(recovered)
        taken.append(out)
        recovered.clear()
        return out

    guard.changelog_positions = changelog_positions
    consumer = ResumingConsumer(guard, {tp: 5}, {tp: 9})
    recovery = resuming_recovery(consumer, monkeypatch)
    recovery.revocations, recovery.resumed_at = 1, None
    recovery.note_assigned()

    asyncio.run(offsets._perform_seek_noted(consumer))  # the fetch loop's, before the recovery ended
    assert consumer.positions[tp] == 5 and taken == []  # back to the committed offset; positions left alone
    asyncio.run(recovery.on_recovery_completed(7))
    assert taken == [{0: {ORDERS: 3}}]
    assert consumer.positions[tp] == 3  # rewound to the changelog's position
    asyncio.run(offsets._perform_seek_noted(consumer))  # a late fetch-loop seek
    assert consumer.positions[tp] == 3
    recovery.revocations += 1  # the next rebalance: the fetch loop's seek applies again
    asyncio.run(offsets._perform_seek_noted(consumer))
    assert consumer.positions[tp] == 5
