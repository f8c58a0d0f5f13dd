"""No poison pill, any producer: the processor's containment of failing records and misplaced ones.

Fakes are fine here (the table is a dict of encoded states, the commit appends to it); the e2e tests
(tests/e2e/test_poison_and_partitioner.py) run the same paths in a real worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest

import streams.processor as processor_module
from pulse_config.settings import Settings
from scoring.customer import CustomerState
from streams.codec import decode_state, encode_state
from streams.isolation import process_contained
from streams.partitioning import ORIGIN_HEADER, murmur2_partition, origin_header, origin_keyed, origin_of, partitioner
from streams.processor import BatchOutcome, BatchProcessor, Incoming

PARTITIONS = 4


def order(eid: str, cid: str, amount: float, day: int = 1) -> bytes:
    return orjson.dumps(
        {
            "event_id": eid,
            "customer_id": cid,
            "occurred_at": f"2025-05-{day:02d}T00:00:00Z",
            "order_id": "O" + eid,
            "amount": amount,
            "currency": "USD",
            "status": "completed",
        }
    )


class Table:
    """The table as the worker has it: encoded states (each load decodes a fresh copy) and what was produced."""

    def __init__(self, processor: BatchProcessor) -> None:
        self.processor = processor
        self.data: dict[bytes, bytes] = {}
        self.rejected: list[dict] = []
        self.rerouted: list[tuple[str, bytes, bytes]] = []
        self.commits = 0

    def load(self, key: bytes) -> CustomerState:
        raw = self.data.get(key)
        return CustomerState() if raw is None else decode_state(raw)

    def states(self) -> dict[bytes, CustomerState]:
        return {k: decode_state(v) for k, v in self.data.items()}

    def rebuild(self, partitions: set[int]) -> None:
        self.processor.rebuild(partitions, self.states().items())

    async def commit(self, outcome: BatchOutcome, indexes: Sequence[int]) -> None:
        self.commits += 1
        self.rejected += [orjson.loads(r.record) for r in outcome.rejected]
        self.rerouted += outcome.rerouted
        self.data.update({k: encode_state(s) for k, s in outcome.states.items()})

    def run(self, batch: list[Incoming], retries: int = 2, failures: list | None = None) -> int:
        def on_failure(record: Incoming, exc: BaseException, final: bool) -> None:
            if failures is not None:
                failures.append((record.offset, final))

        return asyncio.run(
            process_contained(self.processor, batch, self.load, None, self.rebuild, self.commit, retries, on_failure)
        )


def placed_batch(orders: list[tuple[str, str, float]]) -> list[Incoming]:
    """Order records (event id, customer, amount), each in its customer's murmur2 partition, offsets per partition."""
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    batch = []
    for eid, cid, amount in orders:
        p = murmur2_partition(cid.encode(), PARTITIONS)
        batch.append(Incoming("orders", p, offsets[p], cid.encode(), order(eid, cid, amount)))
        offsets[p] += 1
    return batch


ORDERS = [(f"e{i}", f"C{i % 7:03d}", 10.0 + i) for i in range(40)]


def assert_population_is_the_tables(table: Table) -> None:
    """The in-memory population equals one rebuilt from the table: no count of a failed try is left in it."""
    fresh = BatchProcessor(table.processor.options)
    owned = set(table.processor.population.local)
    fresh.rebuild(owned, table.states().items())
    for p in owned:
        a, b = table.processor.population.local[p], fresh.population.local[p]
        assert sorted(a.members) == sorted(b.members) and +a.tallies == +b.tallies and a.due == b.due
        for index in ("r", "f", "m", "v"):
            x, y = getattr(a.population, index), getattr(b.population, index)
            assert (x.total, x.counts()) == (y.total, y.counts()), (p, index)
            # exact indexes (M, VIP value) also hold each member's exact value
            assert {k: list(v) for k, v in getattr(x, "values", {}).items() if len(v)} == {
                k: list(v) for k, v in getattr(y, "values", {}).items() if len(v)
            }, (p, index)


@pytest.mark.parametrize("bad", ["e3", "e39"])
def test_a_record_that_raises_is_dead_lettered_and_every_other_one_applied_once(bad):
    settings = Settings(_env_file=None, test_fail_event_ids=[bad])
    table = Table(BatchProcessor(settings.processor(), partitioner(PARTITIONS)))
    batch = placed_batch(ORDERS)
    failures: list = []
    assert table.run(batch, retries=2, failures=failures) == 1

    [letter] = table.rejected
    poison = next(r for r in batch if orjson.loads(r.value)["event_id"] == bad)
    assert letter["reason"] == "processing_error"
    assert "InjectedFailure" in letter["detail"] and bad in letter["detail"]
    assert (letter["partition"], letter["offset"]) == (poison.partition, poison.offset)
    # the first try of the whole batch, then the record alone 1 + 2 times (the last one final)
    assert failures == [(poison.offset, False), (poison.offset, False), (poison.offset, True)]

    reference = Table(BatchProcessor(Settings(_env_file=None).processor(), partitioner(PARTITIONS)))
    reference.run([r for r in batch if r is not poison])
    got, want = table.states(), reference.states()
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].orders.revenue_cents == want[key].orders.revenue_cents
        assert got[key].orders.orders == want[key].orders.orders
        assert got[key].partition == want[key].partition
    assert_population_is_the_tables(table)

    # the partition moves on: the next batch is scored normally
    nxt = [Incoming("orders", poison.partition, 1000, poison.key, order("later", poison.key.decode(), 5.0, day=2))]
    assert table.run(nxt) == 0
    assert table.states()[poison.key].orders.orders == want[poison.key].orders.orders + 1


def test_a_record_read_again_that_raises_every_time_gets_no_second_dead_letter():
    """Below the changelog's input position (``BatchProcessor.decided``: read again after an offsets reset) the
    record had its dead letter when first read, or was applied: raising again, it is reported (the failures),
    counted a duplicate, and dead-lettered no more. Its neighbours above the position are applied."""
    settings = Settings(_env_file=None, test_fail_event_ids=["e39"])
    processor = BatchProcessor(settings.processor(), partitioner(PARTITIONS))
    batch = placed_batch(ORDERS)
    poison = next(r for r in batch if orjson.loads(r.value)["event_id"] == "e39")
    processor.decided = {("orders", poison.partition): poison.offset + 1}
    table = Table(processor)
    failures: list = []
    assert table.run(batch, retries=2, failures=failures) == 1
    assert failures[-1] == (poison.offset, True)
    assert table.rejected == []


def test_a_failing_scorer_is_contained_to_its_record(monkeypatch):
    """An injected failing scorer (apply_event raising for one event) instead of the settings' fault injection."""
    real = processor_module.apply_event

    def flaky(state, event, config, origin=None, origin_keyed=False):
        if event.event_id == "e10":
            raise ZeroDivisionError("scorer bug")
        return real(state, event, config, origin, origin_keyed)

    monkeypatch.setattr(processor_module, "apply_event", flaky)
    table = Table(BatchProcessor(Settings(_env_file=None).processor(), partitioner(PARTITIONS)))
    assert table.run(placed_batch(ORDERS), retries=0) == 1
    assert [(r["reason"], r["detail"]) for r in table.rejected] == [
        ("processing_error", "ZeroDivisionError: scorer bug")
    ]
    assert sum(s.orders.orders for s in table.states().values()) == len(ORDERS) - 1
    assert_population_is_the_tables(table)


def test_a_batch_without_failure_is_one_commit():
    table = Table(BatchProcessor(Settings(_env_file=None).processor(), partitioner(PARTITIONS)))
    assert table.run(placed_batch(ORDERS)) == 0
    assert table.commits == 1 and not table.rejected


def test_time_driven_failure_skips_only_that_customer_until_its_next_event(monkeypatch):
    settings = Settings(_env_file=None, sweep_round_seconds=0)
    processor = BatchProcessor(settings.processor())
    table = Table(processor)
    ticks = settings.topic_ticks()
    assert (
        table.run(
            [
                Incoming("orders", 0, 0, b"A", order("a1", "A", 7.77)),
                Incoming("orders", 0, 1, b"B", order("b1", "B", 20)),
            ]
        )
        == 0
    )

    real = processor_module.assess_customer

    def failing_for_a(state, now, gap_days, config, *rest):
        if state.orders.revenue_cents == 777:
            raise KeyError("bad state")
        return real(state, now, gap_days, config, *rest)

    monkeypatch.setattr(processor_module, "assess_customer", failing_for_a)
    # the clock moves (B's event) and a tick sweeps the partition: A's re-scoring raises, B's event is scored
    batch = [Incoming("orders", 0, 2, b"B", order("b2", "B", 5, day=9)), Incoming(ticks, 0, 0, None, b"{}")]
    out = processor.process(batch, table.load)
    assert [(p, k) for p, k, _ in out.time_driven_failures] == [(0, b"A")]
    assert "KeyError" in out.time_driven_failures[0][2]
    assert b"A" in processor.quarantined and b"A" not in out.states and b"A" not in out.assessed
    assert b"A" not in processor.population.partition(0).due
    assert [p.customer_id for p in out.profiles] == ["B"]
    asyncio.run(table.commit(out, range(len(batch))))
    # quarantined: the next sweep leaves A out (no second failure)
    out = processor.process([Incoming(ticks, 0, 1, None, b"{}")], table.load)
    assert not out.time_driven_failures and b"A" not in out.states
    # A's next event (with a scorer that works again) is scored and ends the quarantine
    monkeypatch.setattr(processor_module, "assess_customer", real)
    out = processor.process([Incoming("orders", 0, 3, b"A", order("a2", "A", 1, day=10))], table.load)
    assert out.states[b"A"].orders.orders == 2 and b"A" not in processor.quarantined


def test_a_record_outside_its_customers_partition_is_rerouted_not_applied():
    """librdkafka's default partitioner (CRC32) puts a correctly keyed record elsewhere: for a known customer it
    would break the rank counts of the partition it is not in, for a new one split its state."""
    table = Table(BatchProcessor(Settings(_env_file=None).processor(), partitioner(PARTITIONS)))
    key = b"C004078"
    right = murmur2_partition(key, PARTITIONS)
    wrong = (right + 1) % PARTITIONS
    assert table.run([Incoming("orders", right, 0, key, order("1", "C004078", 10))]) == 0
    misplaced = [
        Incoming("orders", wrong, 0, key, order("2", "C004078", 20)),  # known customer
        Incoming("orders", wrong, 1, b"NEW1", order("3", "NEW1", 30))
        if murmur2_partition(b"NEW1", PARTITIONS) != wrong
        else Incoming("orders", (wrong + 1) % PARTITIONS, 1, b"NEW1", order("3", "NEW1", 30)),
    ]
    out = table.processor.process(misplaced, table.load)
    assert out.counts == {("order", "rerouted"): 2} and not out.states and not out.rejected
    assert [(t, k) for t, k, _ in out.rerouted] == [("orders", key), ("orders", b"NEW1")]
    assert sum(out.misplaced.values()) == 2
    # re-published, they arrive in the right partition and are applied there once
    asyncio.run(table.commit(out, [0, 1]))
    back = [Incoming(t, murmur2_partition(k, PARTITIONS), 10 + i, k, v) for i, (t, k, v) in enumerate(table.rerouted)]
    assert table.run(back) == 0
    states = table.states()
    assert states[key].orders.orders == 2 and states[key].partition == right
    assert states[b"NEW1"].partition == murmur2_partition(b"NEW1", PARTITIONS)


def test_a_record_re_published_again_by_a_replay_is_applied_once_however_late():
    """A mis-keyed record is re-published before its wrong partition's offset is committed; a replay (a crash
    or rebalance before that commit) publishes it again at a new offset of the right partition. Its copies'
    own offsets differ, and the ring of recent event ids (``PULSE_DEDUP_EVENT_IDS``, 32) forgets it after
    that many of the customer's events: in the CI-scale chaos run a support event of a customer with 51
    events was applied twice. The origin each copy carries drops it, however late (and a copy older than the
    lateness bound is a duplicate, not a dead letter)."""
    settings = Settings(_env_file=None, max_lateness_days=5)
    table = Table(BatchProcessor(settings.processor(), partitioner(PARTITIONS)))
    key = b"C001730"
    right = murmur2_partition(key, PARTITIONS)
    wrong = (right + 1) % PARTITIONS
    other = next(k for k in (f"C{i:06d}".encode() for i in range(100)) if murmur2_partition(k, PARTITIONS) == wrong)
    mis_keyed = Incoming("orders", wrong, 7, other, order("late", "C001730", 12.5))
    offsets = iter(range(100, 1000))

    def republished() -> Incoming:
        """The wrong partition's worker reads the record (again) and re-publishes it: the copy as read back."""
        out = table.processor.process([mis_keyed], table.load)
        assert out.rerouted_origins == [(wrong, 7)]
        (topic, k, value), origin = out.rerouted[0], out.rerouted_origins[0]
        return Incoming(topic, right, next(offsets), k, value, origin_of(origin_header(origin)))

    first = republished()
    assert table.run([first]) == 0
    n = settings.dedup_event_ids + 8  # more of the customer's events than the ring of recent ids holds
    later = [Incoming("orders", right, next(offsets), key, order(f"o{i}", "C001730", 1.0, day=20)) for i in range(n)]
    table.run(later)  # its topic-partition's watermark is now 19 days past the re-published event
    assert table.run([republished()]) == 0  # a replay of the wrong partition published it again
    assert table.run([first]) == 0  # and the first copy redelivered (its own offset drops it)
    state = table.states()[key]
    assert state.orders.orders == n + 1 and state.events["order"] == n + 1 and table.rejected == []
    assert state.source_offsets[f"order@{wrong}"] == 7
    # a copy of a copy keeps the first origin
    again = table.processor.process([Incoming("orders", wrong, 99, other, mis_keyed.value, (wrong, 7))], table.load)
    assert again.rerouted_origins == [(wrong, 7)]


def test_a_copy_made_at_the_old_partition_count_is_dropped_after_its_original_at_the_new_one():
    """An input topic gained partitions (4 -> 6): a worker at 4 re-published a record the producer had put in its
    customer's partition at 6 (keyed by the customer: misplaced at 4). Scored again at 6, the original is read
    directly and the copy comes later, past the ring of recent ids: the copy carries that its first copy was
    keyed (``pulse-origin-keyed``), so the direct offset drops it. A mis-keyed record's copy does not carry it,
    so a copy of one that sits in its customer's partition is still applied (the chaos run of 2b44186 lost such
    events when the rule did not ask)."""
    old, new = 4, 6
    key = next(
        k
        for k in (f"C{i:06d}".encode() for i in range(1000))
        if murmur2_partition(k, new) < old and murmur2_partition(k, old) != murmur2_partition(k, new)
    )
    at_new = murmur2_partition(key, new)
    cid = key.decode()
    # the worker at 4 partitions reads it in partition at_new, where it does not belong at 4: re-published, keyed
    out = BatchProcessor(Settings(_env_file=None).processor(), partitioner(old)).process(
        [Incoming("orders", at_new, 5, key, order("o0", cid, 10.0))], lambda k: None
    )
    assert out.rerouted_origins == [(at_new, 5)] and out.rerouted_keyed == [True]
    copy_headers = origin_header(out.rerouted_origins[0], out.rerouted_keyed[0])
    # scored again at 6 partitions: the original directly, many events, then the copy (moved by the old count's
    # partitioner to partition murmur2 % 4, and from there to at_new again, with its first origin)
    settings = Settings(_env_file=None)
    table = Table(BatchProcessor(settings.processor(), partitioner(new)))
    assert table.run([Incoming("orders", at_new, 5, key, order("o0", cid, 10.0))]) == 0
    n = settings.dedup_event_ids + 8
    table.run([Incoming("orders", at_new, 6 + i, key, order(f"o{i + 1}", cid, 1.0, day=20)) for i in range(n)])
    copy = Incoming(
        "orders", at_new, 900, key, order("o0", cid, 10.0), origin_of(copy_headers), origin_keyed(copy_headers)
    )
    assert table.run([copy]) == 0
    assert table.states()[key].orders.orders == n + 1
    # a mis-keyed record's copy in the same spot: its first copy was never applied directly, so it is applied
    # (at offset 4 of the customer's own partition: the direct reads have passed it)
    mis_keyed = Incoming("orders", at_new, 4, b"SOMEONE-ELSE", order("m1", cid, 3.0, day=20))
    out = table.processor.process([mis_keyed], table.load)
    assert out.rerouted_keyed == [False]
    headers = origin_header(out.rerouted_origins[0], out.rerouted_keyed[0])
    table.run([Incoming("orders", at_new, 901, key, mis_keyed.value, origin_of(headers), origin_keyed(headers))])
    assert table.states()[key].orders.orders == n + 2


def test_a_misplaced_record_is_late_or_not_in_the_log_it_was_produced_to():
    """Another producer's partitioner put a customer's history on the wrong partition, and a replay reads that
    partition years behind the right one: the copy re-published to the right partition lands at the end of a
    log read to years later. Decided there, it was dead-lettered too_late (at the default 730 days, a backfill
    of over two years by a CRC32 producer would lose every misplaced record older than the right partition's
    newest minus two years); now it is decided in the log it was produced to, before it is re-published, and
    the copy is never late."""
    settings = Settings(_env_file=None, max_lateness_days=30)
    table = Table(BatchProcessor(settings.processor(), partitioner(PARTITIONS)))
    key = b"C001730"
    right = murmur2_partition(key, PARTITIONS)
    wrong = (right + 1) % PARTITIONS
    ids = [f"C{i:06d}" for i in range(200)]
    native = {p: next(c for c in ids if murmur2_partition(c.encode(), PARTITIONS) == p) for p in (right, wrong)}

    def at(eid: str, cid: str, when: str) -> bytes:
        return orjson.dumps({**orjson.loads(order(eid, cid, 10.0)), "occurred_at": when})

    offsets = {right: iter(range(100)), wrong: iter(range(100))}

    def rec(partition: int, cid: str, eid: str, when: str) -> Incoming:
        return Incoming("orders", partition, next(offsets[partition]), cid.encode(), at(eid, cid, when))

    # the right partition's log read to 2027; the wrong one's to 2024, where the misplaced record is in order
    assert table.run([rec(right, native[right], "r1", "2027-01-01T00:00:00Z")]) == 0
    misplaced = rec(wrong, "C001730", "m1", "2024-01-02T00:00:00Z")
    assert table.run([rec(wrong, native[wrong], "w1", "2024-01-01T00:00:00Z"), misplaced]) == 0
    assert table.rejected == [] and [k for _, k, _ in table.rerouted] == [key]
    # its copy, read back on the right partition (3 years behind that log's newest): applied
    (topic, k, value) = table.rerouted[0]
    copy = Incoming(topic, right, next(offsets[right]), k, value, origin_of(origin_header((wrong, misplaced.offset))))
    assert table.run([copy]) == 0
    assert table.rejected == [] and table.states()[key].orders.orders == 1
    # out of order by a year in its own log: dead-lettered there, not re-published
    assert table.run([rec(wrong, "C001730", "m2", "2023-01-01T00:00:00Z")]) == 0
    assert [(r["reason"], r["partition"]) for r in table.rejected] == [("too_late", wrong)]
    assert len(table.rerouted) == 1


def test_origin_header_round_trip_and_unreadable_headers():
    assert origin_of(origin_header((3, 4484))) == (3, 4484)
    assert origin_of({ORIGIN_HEADER: b"5:12", "other": b"x"}) == (5, 12)
    assert origin_of(None) is None and origin_of([]) is None and origin_of([("other", b"1:2")]) is None
    assert origin_of([(ORIGIN_HEADER, b"garbage")]) is None and origin_of([(ORIGIN_HEADER, b"")]) is None


def test_without_the_check_a_misplaced_known_customer_breaks_the_rank_counts():
    """What the check prevents (the failure reported with confluent-kafka's default settings)."""
    processor = BatchProcessor(Settings(_env_file=None).processor())
    table = Table(processor)
    key = b"C004078"
    right = murmur2_partition(key, PARTITIONS)
    wrong = (right + 1) % PARTITIONS
    table.run([Incoming("orders", right, 0, key, order("1", "C004078", 10))])
    with pytest.raises(ValueError, match="more often than it was added"):
        processor.process([Incoming("orders", wrong, 1, key, order("2", "C004078", 20))], table.load)


def test_murmur2_partition_matches_the_java_client():
    # values of org.apache.kafka.common.utils.Utils.murmur2 (as used by the Java DefaultPartitioner)
    from aiokafka.partitioner import DefaultPartitioner

    for cid in (b"C000001", b"C004078", b"x", b"customer-with-a-long-id-0123456789"):
        for n in (1, 4, 6, 12):
            assert murmur2_partition(cid, n) == DefaultPartitioner()(cid, list(range(n)), list(range(n)))
