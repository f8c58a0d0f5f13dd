"""The offset ledger and gap guard (streams/offsets.py) with fakes for the broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams import metrics
from streams.offsets import (
    Gap,
    GenerationLost,
    LogRead,
    OffsetGapError,
    OffsetGuard,
    OffsetLedger,
    ReadOffsets,
    check_generation,
    generation_confirmed,
    generation_lost,
)

O5 = TP("orders", 5)
O0 = TP("orders", 0)
TICK = TP("ticks", 5)


def ledger(**expected: int) -> OffsetLedger:
    led = OffsetLedger(["orders", "surveys"])
    for name, offset in expected.items():
        led.seeked(TP("orders", int(name[1:])), offset)
    led.provisional.clear()  # as if something had been applied since
    return led


def test_contiguous_batch_has_no_gap_and_moves_expected_only_when_applied():
    led = ledger(p5=3469)
    scan = led.scan([(O5, o) for o in range(3469, 3484)])
    assert scan.gaps == [] and scan.next_expected == {O5: 3484}
    assert led.expected[O5] == 3469  # not yet applied
    assert not led.may_ack(O5, 3469) and led.cap(O5, 3490) == 3469
    led.applied(scan)
    assert led.expected[O5] == 3484
    assert led.may_ack(O5, 3483) and not led.may_ack(O5, 3484)
    assert led.cap(O5, 3485) == 3484 and led.cap(O5, 3480) == 3480


def test_the_issue_15_case_is_a_gap():
    """Batch 3469..3483 applied; the next batch starts at 3485: offset 3484 was skipped."""
    led = ledger(p5=3469)
    led.applied(led.scan([(O5, o) for o in range(3469, 3484)]))
    scan = led.scan([(O5, o) for o in range(3485, 3500)])
    assert scan.gaps == [Gap(O5, 3484, 3484)]
    assert str(scan.gaps[0]) == "orders[5] offsets 3484..3484"


def test_gaps_inside_a_batch_and_per_partition():
    led = ledger(p5=10, p0=0)
    scan = led.scan([(O5, 10), (O0, 0), (O5, 11), (O5, 14), (O0, 1), (O5, 15), (O5, 20), (O0, 2)])
    assert scan.gaps == [Gap(O5, 12, 13), Gap(O5, 16, 19)]
    assert scan.next_expected == {O5: 21, O0: 3}


def test_records_read_again_are_no_gap():
    """After a rebalance the worker re-reads from its committed offset, and may still hold older records."""
    led = ledger(p5=100)
    led.applied(led.scan([(O5, o) for o in range(100, 120)]))
    scan = led.scan([(O5, o) for o in [*range(100, 120), *range(105, 125)]])
    assert scan.gaps == [] and scan.next_expected == {O5: 125}


def test_untracked_topics_are_left_to_faust():
    led = ledger(p5=0)
    assert led.scan([(TICK, 7), (TICK, 99)]).gaps == []
    assert led.may_ack(TICK, 99) and led.cap(TICK, 99) == 99


def test_unknown_partitions_may_not_ack_or_commit():
    led = ledger()
    assert not led.may_ack(O5, 0) and led.cap(O5, 10) is None
    assert led.unknown([O5, TICK]) == {O5}


def test_a_new_assignment_keeps_only_retained_partitions():
    led = ledger(p5=50, p0=7)
    led.retain({O5, TICK})
    assert led.expected == {O5: 50}
    # a seek to the committed offset does not move a retained partition (a committed offset past what
    # was applied must show up as a gap) ...
    led.seeked(O5, 60)
    assert led.expected[O5] == 50
    assert led.scan([(O5, 60)]).gaps == [Gap(O5, 50, 59)]
    # ... but starts a new one, and an explicit seek moves any
    led.seeked(O0, 9)
    led.seeked(O5, 60, explicit=True)
    assert led.expected == {O5: 60, O0: 9}


class FakeBroker:
    """Offsets that hold records per partition; everything else is a marker or compacted away.

    A read-back returns what one fetch would: ``fetch_span`` offsets from the gap's first (at least through the
    gap), at most up to ``end`` (the log's end)."""

    def __init__(
        self, records: dict[TP, set[int]], committed: dict[TP, int], fetch_span: int = 1, end: int = 10**9
    ) -> None:
        self.records = records
        self.committed = committed
        self.fetch_span = fetch_span
        self.end = end
        self.read_backs: list[tuple[TP, int, int]] = []

    async def read_back(self, tp: TP, first: int, last: int) -> LogRead:
        self.read_backs.append((tp, first, last))
        through = min(max(last, first + self.fetch_span - 1), self.end)
        return LogRead(first, through, sorted(o for o in self.records.get(tp, set()) if first <= o <= through))

    async def start_offsets(self, tps: set[TP]) -> dict[TP, int]:
        return {tp: self.committed[tp] for tp in tps}


def test_guard_stops_a_gap_that_holds_records(caplog):
    broker = FakeBroker({O5: set(range(0, 4000))}, {O5: 3469})
    guard = OffsetGuard(["orders"], broker.read_back, broker.start_offsets)
    scan = asyncio.run(guard.check([(O5, o) for o in range(3469, 3484)]))  # starts from the committed offset
    guard.ledger.applied(scan)
    with pytest.raises(OffsetGapError, match=r"orders\[5\] offsets 3484..3484"):
        asyncio.run(guard.check([(O5, o) for o in range(3485, 3490)]))
    assert guard.ledger.expected[O5] == 3484  # nothing moved: the worker exits and re-reads from here
    assert "orders[5] offsets 3484..3484" in caplog.text and "hold 1 records" in caplog.text


def test_guard_lets_the_broker_explain_a_gap():
    """Transaction markers (or compaction) leave offsets without records: not a loss."""
    broker = FakeBroker({O5: {10, 11, 13, 14}}, {O5: 10})
    guard = OffsetGuard(["orders"], broker.read_back, broker.start_offsets)
    scan = asyncio.run(guard.check([(O5, 10), (O5, 11), (O5, 13), (O5, 14)]))
    assert scan.gaps == [Gap(O5, 12, 12)] and scan.next_expected == {O5: 15}
    assert broker.read_backs == [(O5, 12, 12)]


def test_one_read_back_explains_the_markers_of_a_transactional_producer_that_follow():
    """An upstream producer with transactions leaves a marker after each: one gap per transaction. A read-back
    fetches past its gap; the next gaps it covers are explained without another round trip (until session 23,
    one round trip each, ~190 ms: a worker fell behind a transactional upstream of a few transactions a second)."""
    records = {o for o in range(0, 1000) if o % 3 != 2}  # two records, then the transaction's commit marker
    broker = FakeBroker({O5: records}, {O5: 0}, fetch_span=500)
    guard = OffsetGuard(["orders"], broker.read_back, broker.start_offsets)
    explained = metrics.INPUT_GAPS_EXPLAINED
    before = {how: explained.labels(how)._value.get() for how in ("read_back", "read_ahead")}
    delivered = sorted(records)
    for i in range(0, len(delivered), 50):
        guard.ledger.applied(asyncio.run(guard.check([(O5, o) for o in delivered[i : i + 50]])))
    assert guard.ledger.expected[O5] == 1000
    # 333 markers below 999: a read-back at 2, at 503 (the first gap past 2 + 500), ...
    assert broker.read_backs == [(O5, 2, 2), (O5, 503, 503)]
    gained = {how: explained.labels(how)._value.get() - before[how] for how in before}
    assert gained == {"read_back": 2, "read_ahead": 331}


def test_a_record_the_last_read_saw_in_a_gap_is_read_again_before_the_batch_stops():
    """Compaction may have removed it since: only a fresh read stops a batch."""
    broker = FakeBroker({O5: set(range(0, 100)) - {40, 60}}, {O5: 0}, fetch_span=100)
    guard = OffsetGuard(["orders"], broker.read_back, broker.start_offsets)
    guard.ledger.applied(asyncio.run(guard.check([(O5, o) for o in range(0, 40)] + [(O5, 41)])))
    assert broker.read_backs == [(O5, 40, 40)]
    broker.records[O5] -= {50}  # compacted away since the read-back
    guard.ledger.applied(asyncio.run(guard.check([(O5, o) for o in range(42, 50)] + [(O5, 51)])))
    assert broker.read_backs == [(O5, 40, 40), (O5, 50, 50)]
    with pytest.raises(OffsetGapError, match=r"orders\[5\] offsets 52..52"):  # 52 holds a record, fresh or not
        asyncio.run(guard.check([(O5, 53)]))
    assert broker.read_backs[-1] == (O5, 52, 52)


def test_a_read_that_did_not_get_past_its_gap_covers_no_later_gap():
    broker = FakeBroker({O5: {0, 1, 3, 4, 6, 7}}, {O5: 0}, fetch_span=50, end=4)  # the log ended at 4 then
    guard = OffsetGuard(["orders"], broker.read_back, broker.start_offsets)
    guard.ledger.applied(asyncio.run(guard.check([(O5, 0), (O5, 1), (O5, 3), (O5, 4)])))
    broker.end = 100
    guard.ledger.applied(asyncio.run(guard.check([(O5, 6), (O5, 7)])))
    assert broker.read_backs == [(O5, 2, 2), (O5, 5, 5)]


def test_a_gap_below_the_log_start_is_reported_as_deleted_unread(caplog):
    """Retention took offsets 20..29 before the worker read them; 30..31 are transaction markers."""
    broker = FakeBroker({O5: {32, 33}}, {O5: 20})

    async def log_start(tp: TP) -> int:
        return 30

    guard = OffsetGuard(["orders"], broker.read_back, broker.start_offsets, log_start)
    deleted = metrics.INPUT_OFFSETS_DELETED_UNREAD.labels("orders")
    skipped = metrics.INPUT_OFFSETS_SKIPPED.labels("orders")
    before = (deleted._value.get(), skipped._value.get())
    with caplog.at_level("INFO"):
        scan = asyncio.run(guard.check([(O5, 32), (O5, 33)]))
    assert scan.gaps == [Gap(O5, 20, 31)] and scan.next_expected == {O5: 34}
    assert (deleted._value.get() - before[0], skipped._value.get() - before[1]) == (10, 2)
    assert "input offsets 20..29 of orders[5] were deleted before this worker read them" in caplog.text


def test_faust_never_sees_a_read_offset_of_an_input_partition():
    """So its fetch loop neither drops a record as already read nor counts a jump as acknowledged."""
    offsets = ReadOffsets(frozenset({"orders"}), {O5: 3470, TICK: 12})
    offsets[O5] = 3490
    assert offsets[O5] is None and offsets[O0] is None
    assert offsets[TICK] == 12 and offsets[TP("ticks", 1)] is None
    offsets.update({O5: 3469})
    offsets.pop(O5)


def fake_event(tp: TP, offset: int) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(tp=tp, topic=tp.topic, partition=tp.partition, offset=offset))


def test_events_of_partitions_owned_by_another_worker_now_are_dropped():
    broker = FakeBroker({}, {})
    guard = OffsetGuard(["orders"], broker.read_back, broker.start_offsets)
    gone = [fake_event(O0, o) for o in range(10, 15)]
    kept = [fake_event(O5, o) for o in range(8, 12)] + [fake_event(TICK, 3)]
    assert guard.owned([*gone, *kept], {O5, TICK}) == kept
    assert guard.owned(kept, {O5, TICK}) == kept


def test_a_later_seek_moves_a_partition_nothing_was_applied_to_yet():
    """Faust seeks more than once per rebalance; the last seek before the first batch counts."""
    led = ledger()
    led.seeked(O5, 0)
    led.seeked(O5, 448)
    assert led.expected[O5] == 448
    led.applied(led.scan([(O5, 448), (O5, 449)]))
    led.seeked(O5, 300)  # a kept partition: a seek to its committed offset does not move it back
    assert led.expected[O5] == 450


def test_a_partition_kept_through_a_missed_generation_starts_again_at_its_committed_offset():
    """Stalled past the rebalance timeout, a worker misses generation 6: another one owned orders[5]
    then, applied 3484..3489 and committed 3490. Back in generation 7 with orders[5], this worker's
    old account (3484) is stale; the committed offset is the truth, and no false gap stops it."""
    led = ledger(p5=3469, p0=7)
    assert led.retain({O5, O0}, generation=5) == set()
    led.applied(led.scan([(O5, o) for o in range(3469, 3484)]))
    assert led.retain({O5}, generation=7) == {O5}
    assert led.expected == {} and led.unknown([O5]) == {O5}
    led.seeked(O5, 3490)  # the recovery's seek to the committed offset starts it
    assert led.scan([(O5, o) for o in range(3490, 3495)]).gaps == []
    # consecutive generations (and the same one told twice) keep what the worker applied
    led.applied(led.scan([(O5, o) for o in range(3490, 3495)]))
    assert led.retain({O5}, generation=8) == set() and led.retain({O5}, generation=8) == set()
    assert led.expected == {O5: 3495}
    assert led.scan([(O5, 3497)]).gaps == [Gap(O5, 3495, 3496)]


def test_guard_after_a_missed_generation_reads_on_from_the_committed_offset():
    broker = FakeBroker({O5: set(range(0, 4000))}, {O5: 3469})
    guard = OffsetGuard(["orders"], broker.read_back, broker.start_offsets)
    guard.ledger.retain({O5}, generation=3)
    guard.ledger.applied(asyncio.run(guard.check([(O5, o) for o in range(3469, 3484)])))
    broker.committed[O5] = 3490  # the other worker's commit in generation 4
    guard.ledger.retain({O5}, generation=5)
    scan = asyncio.run(guard.check([(O5, o) for o in range(3490, 3495)]))  # no seek seen: asks the broker
    assert scan.gaps == [] and broker.read_backs == []


def fake_app(assigned: int, coordinator: int) -> SimpleNamespace:
    coord = SimpleNamespace(generation=coordinator)
    thread = SimpleNamespace(_ensure_consumer=lambda: SimpleNamespace(_coordinator=coord))
    return SimpleNamespace(consumer_generation_id=assigned, consumer=SimpleNamespace(_thread=thread))


def test_a_worker_the_group_dropped_writes_no_state():
    """aiokafka resets its generation to -1 when the coordinator no longer knows the member, and holds the new
    one after joining again: in both cases another worker may own the partitions and have read their
    changelog, so a state written now would land after its writes (a zombie write)."""
    assert not generation_lost(7, 7)
    assert generation_lost(7, -1) and generation_lost(7, 9)
    assert not generation_lost(None, -1)  # nothing assigned yet: nothing to fence
    check_generation(fake_app(7, 7))
    with pytest.raises(GenerationLost, match="group generation -1, partitions assigned in 7"):
        check_generation(fake_app(7, -1))
    check_generation(SimpleNamespace(consumer_generation_id=7))  # no consumer yet: not checked
    check_generation(fake_app(0, -1))  # Faust's 0: no assignment yet (an app without the offset guard)


def heartbeat_app(answer: Any, session_ms: int = 6000) -> tuple[SimpleNamespace, list[tuple[str, int, str]]]:
    """An app whose coordinator answers every heartbeat with ``answer`` (an error class, an exception to raise, or
    "hang"), through a consumer thread as Faust's (``call_thread``); returns it and the heartbeats sent."""
    import aiokafka.errors as kafka_errors

    sent: list[tuple[str, int, str]] = []

    async def send_req(request: Any) -> Any:
        sent.append((request._group, request._generation_id, request._member_id))
        if answer == "hang":
            await asyncio.sleep(3600)
        if isinstance(answer, BaseException):
            raise answer
        return SimpleNamespace(error_code=answer.errno if answer is not kafka_errors.NoError else 0)

    coord = SimpleNamespace(group_id="pulse", member_id="m-1", _session_timeout_ms=session_ms, _send_req=send_req)

    async def call_thread(fun: Any, *args: Any) -> Any:
        return await fun(*args)

    thread = SimpleNamespace(_ensure_consumer=lambda: SimpleNamespace(_coordinator=coord), call_thread=call_thread)
    return SimpleNamespace(consumer=SimpleNamespace(_thread=thread)), sent


def test_a_generation_is_confirmed_only_by_the_coordinator_answering_a_heartbeat_in_it():
    """The check behind a marker of a later generation (CustomerStateTable.epoch_for): a heartbeat in the worker's
    generation. "No error", or "rebalancing" (answered only to a member of the current generation), confirms; an
    unknown member, an illegal generation, a coordinator that cannot be reached or does not answer within the
    session timeout, and an app without a consumer do not."""
    import aiokafka.errors as kafka_errors

    for answer, confirmed in [
        (kafka_errors.NoError, True),
        (kafka_errors.RebalanceInProgressError, True),
        (kafka_errors.UnknownMemberIdError, False),
        (kafka_errors.IllegalGenerationError, False),
        (kafka_errors.NotCoordinatorForGroupError, False),
        (kafka_errors.KafkaConnectionError("closed"), False),
        ("hang", False),
    ]:
        app, sent = heartbeat_app(answer, session_ms=50)
        assert asyncio.run(generation_confirmed(app, 7)) is confirmed, answer
        assert sent == [("pulse", 7, "m-1")]
    assert asyncio.run(generation_confirmed(SimpleNamespace(), 7)) is False


def test_tansu_s_generation_0_is_fenced_like_any_other():
    """Tansu numbers its first generation 0, which Faust's ``consumer_generation_id`` also holds before any
    assignment. A worker frozen past its session in generation 0 (session 30) was not fenced, and its ledger
    did not see the generation it missed (0, then 2): woken, it took the committed offsets its successor had
    moved for an input gap. The ledger's generation (None before the first assignment) tells them apart."""
    guard = OffsetGuard(["orders"], lambda *a: _never(), lambda tps: _never())
    app = fake_app(0, 0)
    app.pulse_offset_guard = guard
    check_generation(app)  # no assignment yet
    guard.ledger.retain({O5}, generation=0, member="m1")
    guard.ledger.seeked(O5, 0)
    check_generation(app)
    app.consumer._thread._ensure_consumer()._coordinator.generation = -1  # "unknown member": reset
    with pytest.raises(GenerationLost, match="group generation -1, partitions assigned in 0"):
        check_generation(app)
    guard.ledger.applied(guard.ledger.scan([(O5, o) for o in range(0, 33)]))
    assert guard.ledger.retain({O5}, generation=2, member="m2") == {O5}  # missed 1: starts at the commit
    assert guard.ledger.missed


def test_the_assignment_hook_passes_generation_0_on(monkeypatch):
    """Faust hands the coordinator's generation to ``on_partitions_assigned``; the hook gave the ledger None for
    Tansu's 0, so the next assignment (2) looked like a first one and nothing was missed."""
    from streams import offsets

    async def upstream(self, assigned, generation_id=0):
        return None

    monkeypatch.setitem(offsets._upstream, "on_partitions_assigned", upstream)
    guard = OffsetGuard(["orders"], lambda *a: _never(), lambda tps: _never())
    consumer = SimpleNamespace(app=SimpleNamespace(pulse_offset_guard=guard))
    asyncio.run(offsets._on_partitions_assigned_retaining(consumer, {O5}, 0))  # type: ignore[arg-type]
    assert guard.ledger.generation == 0
    asyncio.run(offsets._on_partitions_assigned_retaining(consumer, {O5}, 2))  # type: ignore[arg-type]
    assert guard.ledger.missed


class SeekingConsumer:
    """Faust's consumer as the rebalance's seek sees it: a fetch position per partition, the group's committed
    offsets, and aiokafka's ``seek_to_committed`` rule (only a committed offset above 0 moves the position)."""

    def __init__(self, guard: OffsetGuard, committed: dict[TP, int | None], positions: dict[TP, int]) -> None:
        self.app = SimpleNamespace(pulse_offset_guard=guard)
        self.committed = committed
        self.positions = dict(positions)
        self._read_offset = ReadOffsets(guard.ledger.topics, {})

    def assignment(self) -> set[TP]:
        return set(self.positions)

    async def upstream_perform_seek(self) -> None:
        # faust-streaming 0.15.3 Consumer.perform_seek over aiokafka 0.14's seek_to_committed
        for tp in self.assignment():
            offset = self.committed.get(tp)
            if offset and offset > 0:
                self.positions[tp] = offset
            self._read_offset[tp] = offset if offset is not None and offset >= 0 else None

    async def upstream_seek(self, tp: TP, offset: int) -> None:
        self.positions[tp] = offset
        self._read_offset[tp] = offset if offset else None


def rebalance_seek(consumer: SeekingConsumer, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams import offsets

    monkeypatch.setitem(offsets._upstream, "perform_seek", lambda self: self.upstream_perform_seek())
    monkeypatch.setitem(offsets._upstream, "seek", lambda self, tp, offset: self.upstream_seek(tp, offset))
    asyncio.run(offsets._perform_seek_noted(consumer))  # type: ignore[arg-type]


def test_a_kept_partition_without_a_commit_is_read_again_from_its_next_offset_after_a_rebalance(monkeypatch):
    """The two-worker Kafka stall: a worker fetched orders[2] to its end (591) into its queue and applied up to
    120 before a second worker joined; the rebalance cleared the queue; nothing was committed for orders[2] yet,
    so aiokafka's seek to the committed offsets left the position at 591 and records 120..590 never came again
    (no later record either, so no gap was ever seen). The seek must go back to the ledger's next offset."""
    guard = OffsetGuard(["orders", "surveys"], lambda *a: _never(), lambda tps: _never())
    o2, s2, t2 = TP("orders", 2), TP("surveys", 2), TP("ticks", 2)
    guard.ledger.seeked(o2, 0)
    guard.ledger.applied(guard.ledger.scan([(o2, o) for o in range(120)]))
    guard.ledger.seeked(s2, 0)
    guard.ledger.applied(guard.ledger.scan([(s2, o) for o in range(40)]))
    consumer = SeekingConsumer(guard, {o2: None, s2: 40, t2: None}, {o2: 591, s2: 119, t2: 77})

    rebalance_seek(consumer, monkeypatch)

    assert consumer.positions[o2] == 120  # the records cleared from the queue are fetched again
    assert consumer.positions[s2] == 40  # committed: aiokafka's own seek
    assert consumer.positions[t2] == 77  # not an input the ledger tracks: left to Faust
    assert guard.ledger.expected[o2] == 120 and guard.ledger.expected[s2] == 40


def test_a_partition_committed_at_0_or_unknown_to_the_ledger_is_read_from_the_log_start(monkeypatch):
    """A committed 0 does not move aiokafka's position either; a partition the ledger does not know (new to the
    worker, or forgotten after a missed generation) starts at the log's start and its first batch asks the broker
    where to begin (OffsetGuard.check), as without a position."""
    guard = OffsetGuard(["orders"], lambda *a: _never(), lambda tps: _never())
    o0, o1 = TP("orders", 0), TP("orders", 1)
    consumer = SeekingConsumer(guard, {o0: 0, o1: None}, {o0: 300, o1: 250})

    rebalance_seek(consumer, monkeypatch)

    assert consumer.positions == {o0: 0, o1: 0}
    assert guard.ledger.expected[o0] == 0 and guard.ledger.unknown([o1]) == {o1}


async def _never() -> Any:
    raise AssertionError("the seek asks the broker nothing")
