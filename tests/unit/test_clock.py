"""The clock (spec: Clock): per partition, the lowest watermark of the input topic-partitions that are still
behind; nothing decided on time not read yet; no clock pushed by one record; out-of-range times rejected.

Driven through the worker's own processor with the consumer's end offsets handed in as plain data, as the
agent does (``ends``: highwater per topic-partition, ``starts``: the committed offsets it started from).
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from faust.types import TP

from pulse.alerts import format_alert
from pulse.offline import score_records
from pulse_config.settings import Settings
from schemas.alerts import RetentionAlert
from schemas.events import MAX_TIME_MS, MIN_TIME_MS, EventRejected, Kind, decode_event
from scoring.customer import CustomerState
from scoring.units import DAY_MS
from streams.offsets import OffsetLedger, read_starts
from streams.processor import BatchOutcome, BatchProcessor, Incoming
from tests.churn_story import D0, MONTHLY, iso

SETTINGS = Settings(_env_file=None)
ORDERS, SURVEYS, COMPLAINTS, SUPPORT = (
    SETTINGS.topic_orders,
    SETTINGS.topic_surveys,
    SETTINGS.topic_complaints,
    SETTINGS.topic_support,
)
INPUTS = (ORDERS, SURVEYS, COMPLAINTS, SUPPORT)


def order(cid: str, at: str, n: int, status: str = "completed") -> bytes:
    return orjson.dumps(
        {
            "event_id": f"o-{cid}-{n}",
            "customer_id": cid,
            "occurred_at": at,
            "order_id": f"O-{cid}-{n}",
            "amount": "100.00",
            "currency": "USD",
            "status": status,
        }
    )


def survey(cid: str, at: str, n: int, nps: int = 9, csat: int | None = None) -> bytes:
    value = {"event_id": f"s-{cid}-{n}", "customer_id": cid, "occurred_at": at, "nps": nps}
    return orjson.dumps(value if csat is None else value | {"csat": csat})


class Worker:
    """One processor, its store and the offsets of what was "produced" to each topic-partition."""

    def __init__(self, settings: Settings = SETTINGS) -> None:
        self.processor = BatchProcessor(settings.processor())
        self.store: dict[bytes, CustomerState] = {}
        self.log: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        self.read: dict[tuple[str, int], int] = {}
        self.alerts: list[dict] = []
        self.profiles: dict[str, object] = {}

    def produce(self, topic: str, key: str, value: bytes, partition: int = 0) -> None:
        self.log.setdefault((topic, partition), []).append((key.encode(), value))

    def ends(self) -> dict[tuple[str, int], int]:
        return {(t, p): len(self.log.get((t, p), [])) for t in INPUTS for p in self.partitions()}

    def partitions(self) -> set[int]:
        return {p for _, p in self.log} | {0}

    def take(self, topic: str, n: int, partition: int = 0, wall_ms: int | None = None) -> BatchOutcome:
        """Read the next ``n`` records of one topic-partition as one batch."""
        start = self.read.get((topic, partition), 0)
        records = self.log.get((topic, partition), [])[start : start + n]
        self.read[(topic, partition)] = start + len(records)
        batch = [Incoming(topic, partition, start + i, k, v) for i, (k, v) in enumerate(records)]
        return self.run(batch, wall_ms)

    def load(self, key: bytes) -> CustomerState:
        return self.store.get(key) or CustomerState()

    def run(self, batch: list[Incoming], wall_ms: int | None = None) -> BatchOutcome:
        starts = dict.fromkeys(self.ends(), 0)
        out = self.processor.process(batch, self.load, wall_ms, self.ends(), starts)
        self.store.update(out.states)
        self.alerts += [orjson.loads(v) for _, _, v in out.alerts]
        self.profiles.update({p.customer_id: p.model() for p in out.profiles})
        return out


def monthly_buyer_and_a_busy_survey_topic(w: Worker) -> None:
    """Customer C buys monthly for a year; customer S answers a survey every day for 500 days."""
    for n, day in enumerate(MONTHLY):
        w.produce(ORDERS, "C", order("C", iso(day), n))
    for day in range(0, 500):
        w.produce(SURVEYS, "S", survey("S", iso(day), day))


def test_a_topic_read_behind_holds_the_clock_back_and_raises_no_false_overdue_alert():
    w = Worker()
    monthly_buyer_and_a_busy_survey_topic(w)
    # the surveys are read to the end first: the orders topic has nothing read yet and is behind
    w.take(SURVEYS, 500)
    assert w.processor.population.clock_of(0) is None  # held by the unread orders
    assert w.profiles == {}
    # one order read: the clock is just before the orders topic's watermark (its next record may be of the
    # same millisecond), not the surveys'
    w.take(ORDERS, 1)
    assert w.processor.population.clock_of(0) == (D0 + MONTHLY[0]) * DAY_MS - 1
    # the customers whose own events are ahead of the clock (S) are not rendered or assessed yet, nor is C,
    # whose latest order is at the watermark: it waits in the due-time index until the clock reaches it
    assert w.profiles == {}
    assert w.processor.population.partition(0).due[b"C"] == (D0 + MONTHLY[0]) * DAY_MS
    for _ in range(len(MONTHLY) - 2):
        w.take(ORDERS, 1)
    assert w.processor.population.clock_of(0) == (D0 + MONTHLY[-2]) * DAY_MS - 1
    assert w.profiles == {}
    assert w.alerts == []  # C bought every month: no overdue on a time whose orders were unread
    # caught up everywhere: the clock goes to the latest time read (day 499), where C is overdue
    w.take(ORDERS, 1)
    assert w.processor.population.clock_of(0) == (D0 + 499) * DAY_MS
    assert [a["customer_id"] for a in w.alerts] == ["C"]
    assert {r["code"] for r in w.alerts[0]["reasons"]} >= {"overdue"}
    assert w.profiles["S"].as_of == w.profiles["C"].as_of


def test_the_same_history_without_end_offsets_is_the_storm():
    """What the clock did before: the highest event time read, whatever is left unread (the e2e storm)."""
    w = Worker()
    monthly_buyer_and_a_busy_survey_topic(w)
    out = w.processor.process(
        [Incoming(SURVEYS, 0, i, k, v) for i, (k, v) in enumerate(w.log[(SURVEYS, 0)])],
        lambda k: w.store.get(k) or CustomerState(),
    )
    w.store.update(out.states)
    first = w.log[(ORDERS, 0)][0]
    out = w.processor.process([Incoming(ORDERS, 0, 0, *first)], lambda k: w.store.get(k) or CustomerState())
    # C's first order is assessed at day 499 (no overdue: one purchase; but its recency is 499 days)
    assert out.profiles[0].model().as_of.isoformat() == iso(499)


def test_a_topic_partition_with_nothing_read_holds_back_until_idle_when_its_end_is_unknown():
    w = Worker(Settings(_env_file=None, clock_partition_idle_seconds=30))
    w.produce(SURVEYS, "S", survey("S", iso(0), 0))
    wall = (D0 + 1) * DAY_MS
    ends = {(t, 0): None for t in INPUTS} | {(SURVEYS, 0): 1}
    batch = [Incoming(SURVEYS, 0, 0, b"S", w.log[(SURVEYS, 0)][0][1])]
    w.processor.process(batch, lambda k: CustomerState(), wall, ends)
    assert w.processor.population.clock_of(0) is None  # three topics not fetched yet
    w.processor.process([], lambda k: CustomerState(), wall + 29_000, ends)
    assert w.processor.population.clock_of(0) is None
    w.processor.process([], lambda k: CustomerState(), wall + 30_000, ends)
    assert w.processor.population.clock_of(0) == D0 * DAY_MS  # idle: they no longer hold it
    # known to be behind (end 5, started at 0): never idle, however long
    behind = ends | {(ORDERS, 0): 5}
    w.processor.process([], lambda k: CustomerState(), wall + 10 * DAY_MS, behind, dict.fromkeys(behind, 0))
    assert w.processor.held == {0}


def test_the_clock_never_goes_back():
    w = Worker()
    w.produce(SURVEYS, "S", survey("S", iso(10), 0))
    w.produce(SURVEYS, "S", survey("S", iso(11), 1))
    w.produce(ORDERS, "C", order("C", iso(12), 0))
    w.take(SURVEYS, 2)
    w.take(ORDERS, 1)
    assert w.processor.population.clock_of(0) == (D0 + 12) * DAY_MS
    w.produce(ORDERS, "C", order("C", iso(5), 1))  # late, and behind now: holds at its watermark (day 12)
    w.produce(ORDERS, "C", order("C", iso(6), 2))
    w.take(ORDERS, 1)
    assert w.processor.population.clock_of(0) == (D0 + 12) * DAY_MS


#: 90 days and 1 ms after 2024-10-10: over 3 × the 30-day population gap after an order on 2024-10-10
SAME_MS = "2025-01-08T00:00:00.001+00:00"
SAME_MS_MS = int(datetime.fromisoformat(SAME_MS).timestamp() * 1000)


def test_an_order_in_the_watermarks_own_millisecond_still_unread_raises_no_overdue_alert():
    """The shrunk example of ``test_clock_property`` (customer D), one record per batch: an order on 2024-10-10,
    then, in one millisecond 90 days later, the refund of an order never seen and a completed order. The refund
    moved the orders topic's watermark to that millisecond while the order of the same millisecond was unread;
    deciding at the watermark saw 90 days and 1 ms of silence and alerted overdue. The clock of a topic-partition
    still behind is just before its watermark, so D waits until the order is read."""
    w = Worker()
    w.produce(ORDERS, "D", order("D", "2024-10-10T00:00:00+00:00", 0))
    w.produce(ORDERS, "D", order("D", SAME_MS, 1, status="refunded"))
    w.produce(ORDERS, "D", order("D", SAME_MS, 2))
    w.take(ORDERS, 1)
    w.take(ORDERS, 1)  # the refund: the order of its millisecond is still unread
    assert w.processor.population.clock_of(0) == SAME_MS_MS - 1
    assert w.processor.population.partition(0).due[b"D"] == SAME_MS_MS  # D waits for the clock
    assert w.alerts == []
    w.take(ORDERS, 1)  # caught up: the clock reaches the millisecond, with both of its events read
    assert w.processor.population.clock_of(0) == SAME_MS_MS
    assert w.alerts == []
    profile = w.profiles["D"]
    assert (profile.as_of, profile.orders, profile.refunds) == (datetime.fromisoformat(SAME_MS), 2, 1)
    assert (profile.churn_reasons, profile.churn_level) == ([], "low")


def test_a_customer_waiting_for_the_clock_stays_in_the_due_time_index():
    """D's refund is at the watermark (the clock is just before it), D waits; the next batch holds only another
    customer's order, and reaches D's time: D is due and assessed then (overdue: no purchase since 2024-10-10).
    A deferral that kept D's earlier due time let the same batch's due check pop D and skip it (it was in the
    batch): D dropped out of the index, and no alert came without a new event of D's."""
    w = Worker()
    w.produce(ORDERS, "D", order("D", "2024-10-10T00:00:00+00:00", 0))
    w.produce(ORDERS, "D", order("D", SAME_MS, 1, status="refunded"))
    w.produce(ORDERS, "E", order("E", "2025-01-08T00:00:05+00:00", 0))
    w.take(ORDERS, 1)
    w.take(ORDERS, 1)
    assert w.processor.population.partition(0).due[b"D"] == SAME_MS_MS
    assert w.alerts == []
    w.take(ORDERS, 1)
    assert [(a["customer_id"], a["raised_at"]) for a in w.alerts] == [("D", "2025-01-08T00:00:05Z")]
    assert {r["code"] for r in w.alerts[0]["reasons"]} == {"overdue"}


def test_answers_in_one_millisecond_read_lowest_first_raise_no_alert_before_the_higher_one_is_read():
    """Several events in one millisecond, the batch cut between them: a detractor NPS 3 with CSAT 1, then, in the
    same millisecond, NPS 9 with CSAT 5 (at equal times the higher answer counts as the later one, in the scorer
    and in the reference). Decided at the watermark after the first record, they were detractor + dissatisfied
    (medium): an alert that the unread answer contradicts."""
    w = Worker()
    w.produce(SURVEYS, "S", survey("S", SAME_MS, 0, nps=3, csat=1))
    w.produce(SURVEYS, "S", survey("S", SAME_MS, 1, nps=9, csat=5))
    w.take(SURVEYS, 1)
    assert w.processor.population.clock_of(0) == SAME_MS_MS - 1
    assert w.alerts == [] and w.profiles == {}
    w.take(SURVEYS, 1)
    assert w.processor.population.clock_of(0) == SAME_MS_MS
    assert w.alerts == []
    assert (w.profiles["S"].nps, w.profiles["S"].csat) == (9, 5)


def test_partitions_have_their_own_clock_and_a_caught_up_one_follows_the_others():
    w = Worker()
    w.produce(SURVEYS, "S", survey("S", iso(100), 0), partition=1)
    w.produce(ORDERS, "C", order("C", iso(3), 0), partition=0)
    w.produce(ORDERS, "C", order("C", iso(50), 1), partition=0)
    w.take(SURVEYS, 1, partition=1)
    w.take(ORDERS, 1, partition=0)
    assert w.processor.population.clock_of(1) == (D0 + 100) * DAY_MS
    assert w.processor.population.clock_of(0) == (D0 + 3) * DAY_MS - 1  # partition 0's orders are behind
    w.take(ORDERS, 1, partition=0)
    assert w.processor.population.clock_of(0) == (D0 + 100) * DAY_MS  # all read: the latest time any reached


@pytest.mark.parametrize("committed", [None, 0])
def test_a_partition_kept_through_a_rebalance_before_its_first_commit_follows_the_others(committed):
    """CI on Kafka (test_population_indicators): a worker applied all of partition 0's records, then a second worker
    joined before the first commit and partition 0 stayed with the first one. After the rebalance the partition is
    rebuilt (its read positions forgotten) and the seek leaves it at the ledger's next offset (nothing more to
    read). Started "at the committed offset" (none: 0) it was known behind its end offset for good, and its clock
    and the population indicators stayed at an earlier event time. Its start is the ledger's next offset."""
    w = Worker()
    w.produce(ORDERS, "C", order("C", iso(3), 0), partition=0)
    w.produce(ORDERS, "D", order("D", iso(50), 0), partition=1)
    ledger = OffsetLedger(INPUTS)
    for topic, partition in w.ends():
        ledger.seeked(TP(topic, partition), 0)
    w.take(ORDERS, 1, partition=0)
    w.take(ORDERS, 1, partition=1)
    ledger.applied(ledger.scan([(TP(ORDERS, 0), 0), (TP(ORDERS, 1), 0)]))
    assert w.processor.population.clock_of(0) == (D0 + 50) * DAY_MS

    w.processor.rebuild({0}, w.store.items())  # the rebalance: partition 0 kept, no commit yet
    no_commit = {TP(topic, partition): committed for topic, partition in w.ends()}
    assigned = [TP(topic, partition) for topic, partition in w.ends()]
    w.produce(ORDERS, "D", order("D", iso(60), 1), partition=1)
    batch = [Incoming(ORDERS, 1, 1, b"D", w.log[(ORDERS, 1)][1][1])]
    for starts, follows in [
        (dict.fromkeys(w.ends(), 0), False),  # the committed offset alone: held for good
        (read_starts(assigned, no_commit, ledger), True),
    ]:
        w.processor.process(batch, lambda k: w.store.get(k) or CustomerState(), None, w.ends(), starts)
        assert w.processor.population.clock_of(1) == (D0 + 60) * DAY_MS
        assert (w.processor.population.clock_of(0) == (D0 + 60) * DAY_MS) is follows
        assert (w.processor.held == {0}) is not follows


def three_orders_and_a_survey() -> tuple[Worker, int, dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    """A worker idle after 30 s, three orders and one survey in partition 0: the worker, the wall clock, the end
    offsets and the start offsets."""
    w = Worker(Settings(_env_file=None, clock_partition_idle_seconds=30))
    for n in range(3):
        w.produce(ORDERS, "C", order("C", iso(n), n))
    w.produce(SURVEYS, "S", survey("S", iso(5), 0))
    ends = w.ends()
    return w, (D0 + 10) * DAY_MS, ends, dict.fromkeys(ends, 0)


def test_a_topic_partition_behind_that_reads_nothing_is_reported_stalled_and_one_reading_on_is_not():
    w, wall, ends, starts = three_orders_and_a_survey()
    s0 = [Incoming(SURVEYS, 0, 0, b"S", w.log[(SURVEYS, 0)][0][1])]
    w.processor.process(s0, lambda k: CustomerState(), wall, ends, starts)
    assert w.processor.held == {0} and w.processor.stalled() == {}  # orders[0] behind: just seen
    w.processor.process([], lambda k: CustomerState(), wall + 29_000, ends, starts)
    assert w.processor.stalled() == {}
    w.processor.process([], lambda k: CustomerState(), wall + 30_000, ends, starts)
    assert w.processor.stalled() == {(ORDERS, 0): (0, 3)}  # behind, and nothing of it read for 30 s
    o0 = [Incoming(ORDERS, 0, 0, b"C", w.log[(ORDERS, 0)][0][1])]
    w.processor.process(o0, lambda k: CustomerState(), wall + 31_000, ends, starts)
    assert w.processor.held == {0} and w.processor.stalled() == {}  # reads on: not stalled


def test_an_input_quiet_for_long_that_gets_a_record_is_not_stalled_until_it_stays_behind_unread():
    """A sparse live topic (a complaint every few minutes): caught up, then a fetch shows a new end offset while a
    batch is in flight, before the new record is read. That is not a stall (the fresh clone of fed23c8 logged one
    per input at the end of a Redis outage); it is once it stays behind unread for the idle time."""
    w, wall, ends, starts = three_orders_and_a_survey()
    batch = [Incoming(ORDERS, 0, n, b"C", w.log[(ORDERS, 0)][n][1]) for n in range(3)]
    batch += [Incoming(SURVEYS, 0, 0, b"S", w.log[(SURVEYS, 0)][0][1])]
    w.processor.process(batch, lambda k: CustomerState(), wall, ends, starts)
    assert w.processor.held == set()  # all read
    w.processor.process([], lambda k: CustomerState(), wall + 60_000, ends, starts)  # a minute of quiet
    w.produce(ORDERS, "C", order("C", iso(6), 3))
    later = w.ends()  # a fetch brought the new end offset; its record is queued for the next batch
    w.processor.process([], lambda k: CustomerState(), wall + 61_000, later, starts)
    assert w.processor.held == {0} and w.processor.stalled() == {}  # behind for a moment only
    w.processor.process([], lambda k: CustomerState(), wall + 90_000, later, starts)
    assert w.processor.stalled() == {}
    w.processor.process([], lambda k: CustomerState(), wall + 91_000, later, starts)
    assert w.processor.stalled() == {(ORDERS, 0): (3, 4)}  # behind and unread for the idle time (30 s): stalled


def test_holding_names_each_input_that_holds_a_partition_clock_with_its_position_end_and_quiet_time():
    w, wall, ends, starts = three_orders_and_a_survey()
    o0 = [Incoming(ORDERS, 0, 0, b"C", w.log[(ORDERS, 0)][0][1])]
    w.processor.process(o0, lambda k: CustomerState(), wall, ends, starts)
    holds = {h.topic: h for h in w.processor.holding()[0]}  # two of three orders and the survey unread
    assert (holds[ORDERS].position, holds[ORDERS].end, holds[ORDERS].mark_ms) == (1, 3, D0 * DAY_MS)
    assert (holds[SURVEYS].position, holds[SURVEYS].end, holds[SURVEYS].mark_ms) == (0, 1, None)
    assert holds[ORDERS].quiet_ms == 0 and holds[SURVEYS].quiet_ms == 0
    w.processor.process([], lambda k: CustomerState(), wall + 12_000, ends, starts)
    holds = {h.topic: h for h in w.processor.holding()[0]}
    assert holds[ORDERS].quiet_ms == 12_000 and holds[SURVEYS].quiet_ms == 12_000
    assert "at offset 1 of 3" in str(holds[ORDERS]) and "quiet 12 s" in str(holds[ORDERS])
    w.processor.process([], lambda k: CustomerState(), wall + 13_000, dict.fromkeys(ends, 0), starts)
    assert w.processor.holding() == {}  # caught up (empty logs): nothing holds


def test_read_starts_is_the_next_offset_to_apply_else_the_committed_offset_else_0():
    ledger = OffsetLedger([ORDERS, SURVEYS])
    kept, committed_only, new = TP(ORDERS, 0), TP(SURVEYS, 0), TP(ORDERS, 1)
    ledger.seeked(kept, 7)
    ledger.applied(ledger.scan([(kept, 7), (kept, 8)]))
    tps = [kept, committed_only, new]
    committed = {kept: 3, committed_only: 5}
    assert read_starts(tps, committed, ledger) == {(ORDERS, 0): 9, (SURVEYS, 0): 5, (ORDERS, 1): 0}
    assert read_starts(tps, committed, None) == {(ORDERS, 0): 3, (SURVEYS, 0): 5, (ORDERS, 1): 0}


NOW = datetime(2026, 6, 1, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


@pytest.mark.parametrize(
    "at",
    [
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00+14:00",
        "0001-01-01T00:00:00.001+14:00",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31T23:59:59.9999999999-00:01",
    ],
)
def test_times_outside_the_representable_range_are_invalid_time(at):
    with pytest.raises(EventRejected) as exc:
        decode_event(Kind.SURVEY, survey("X", at, 0), 65536)
    assert exc.value.reason == "invalid_time"


@pytest.mark.parametrize(
    ("at", "ms"),
    [
        ("9999-12-31T23:59:59Z", 253_402_300_799_000),
        ("9999-12-31T23:59:59+14:00", 253_402_250_399_000),
        ("0001-01-01T00:00:00Z", MIN_TIME_MS),
        ("0001-01-01T00:00:00-14:00", MIN_TIME_MS + 14 * 3_600_000),
    ],
)
def test_edge_times_inside_the_range_are_valid(at, ms):
    event = decode_event(Kind.SURVEY, survey("X", at, 0), 65536)
    assert event.occurred_ms == ms and MIN_TIME_MS <= ms <= MAX_TIME_MS


def history(w: Worker) -> None:
    """A buys every 20 days until 20 days ago, B answers a survey as often: up to the wall clock ``NOW``."""
    base = NOW_MS - 200 * DAY_MS
    for n in range(10):
        at = datetime.fromtimestamp((base + n * 20 * DAY_MS) / 1000, UTC).isoformat()
        w.produce(ORDERS, "A", order("A", at, n))
        w.produce(SURVEYS, "B", survey("B", at, n))


@pytest.mark.parametrize(
    ("at", "reason"),
    [
        ("2027-06-01T00:00:00Z", "too_early"),
        ("2026-06-02T00:00:01Z", "too_early"),  # a day and a second ahead of the wall clock
        ("9999-12-31T23:59:59Z", "too_early"),
        ("9999-12-31T23:59:59-14:00", "invalid_time"),
        ("0001-01-01T00:00:00+14:00", "invalid_time"),
    ],
)
def test_one_hostile_timestamp_moves_no_clock_and_changes_no_other_customer(at, reason):
    w = Worker()
    history(w)
    w.take(ORDERS, 10, wall_ms=NOW_MS)
    w.take(SURVEYS, 10, wall_ms=NOW_MS)
    clock, before = w.processor.population.clock_of(0), dict(w.profiles)
    alerts = list(w.alerts)
    w.produce(ORDERS, "H", order("H", at, 0))
    out = w.take(ORDERS, 1, wall_ms=NOW_MS)
    assert [(r.reason, r.kind) for r in out.rejected] == [(reason, "order")]
    assert w.processor.population.clock_of(0) == clock and w.processor.watermark_ms == clock
    assert out.profiles == [] and out.alerts == [] and w.alerts == alerts
    assert b"H" not in w.store
    # the sweep re-renders the others: the same profiles
    w.processor.population.refresh_all()
    assert {p.customer_id: p.model() for p in w.processor.sweep_whole(0, lambda k: w.store[k]).profiles} == before


def test_a_year_one_first_event_crashes_nothing():
    w = Worker()
    w.produce(ORDERS, "Y", order("Y", "0001-01-01T00:00:00Z", 0))
    w.produce(ORDERS, "Y", order("Y", "0001-01-01T00:00:00-14:00", 1))
    out = w.take(ORDERS, 2, wall_ms=NOW_MS)
    assert out.rejected == [] and w.profiles["Y"].as_of.year == 1


def test_a_watermark_at_the_first_representable_millisecond_vouches_for_no_time():
    """The clock of a topic-partition still behind is 1 ms before its watermark: never before year 1 (a time no
    profile or alert could carry), the clock waits for a later record instead."""
    w = Worker()
    w.produce(ORDERS, "Y", order("Y", "0001-01-01T00:00:00Z", 0))
    w.produce(ORDERS, "Z", order("Z", "0001-01-01T00:00:00Z", 1))
    w.produce(ORDERS, "Y", order("Y", "2024-01-01T00:00:00Z", 2))
    w.take(ORDERS, 1, wall_ms=NOW_MS)
    assert w.processor.population.clock_of(0) is None
    w.take(ORDERS, 1, wall_ms=NOW_MS)
    assert w.processor.population.clock_of(0) is None
    out = w.take(ORDERS, 1, wall_ms=NOW_MS)
    assert w.processor.population.clock_of(0) == int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert out.rejected == [] and out.time_driven_failures == [] and set(w.profiles) == {"Y", "Z"}


def test_the_idle_advance_never_goes_beyond_the_wall_clock():
    settings = Settings(_env_file=None, clock_idle_advance_seconds=60)
    w = Worker(settings)
    ahead = NOW_MS + 3_600_000  # an hour ahead of the wall clock: within the tolerance
    w.produce(ORDERS, "A", order("A", datetime.fromtimestamp(ahead / 1000, UTC).isoformat(), 0))
    w.take(ORDERS, 1, wall_ms=NOW_MS)
    ticks = settings.topic_ticks()
    for i, wall in enumerate([NOW_MS + 60_000, NOW_MS + 3_000_000, NOW_MS + 3_700_000, NOW_MS + 4_000_000]):
        w.run([Incoming(ticks, 0, i, None, b"{}")], wall)
        assert w.processor.population.clock_of(0) <= max(ahead, wall)
    # it moved only once the wall clock passed the event: then with the wall clock
    assert w.processor.population.clock_of(0) == NOW_MS + 4_000_000


def test_alerts_older_than_the_historical_age_are_marked_historical():
    def alerts(wall_ms: int) -> list[dict]:
        w = Worker()
        for n, day in enumerate(MONTHLY):
            w.produce(ORDERS, "C", order("C", iso(day), n))
        w.produce(SURVEYS, "S", survey("S", iso(500), 0))
        w.take(ORDERS, len(MONTHLY), wall_ms=wall_ms)
        w.take(SURVEYS, 1, wall_ms=wall_ms)
        return w.alerts

    live = alerts((D0 + 500) * DAY_MS + 3_600_000)
    replay = alerts((D0 + 900) * DAY_MS)
    assert [a["historical"] for a in live] == [False]
    assert [a["historical"] for a in replay] == [True]
    assert [{**a, "historical": None} for a in live] == [{**a, "historical": None} for a in replay]
    assert "[historical]" in format_alert(RetentionAlert.model_validate(replay[0]))
    assert "[historical]" not in format_alert(RetentionAlert.model_validate(live[0]))


def test_pulse_score_rejects_hostile_rows_with_a_reason():
    topics = SETTINGS.topic_orders
    rows = [
        (topics, b"A", order("A", "2024-01-01T00:00:00Z", 0)),
        (topics, b"B", order("B", "9999-12-31T23:59:59-14:00", 0)),
        (topics, b"C", order("C", "0001-01-01T00:00:00+14:00", 0)),
        (topics, b"D", order("D", "9999-12-31T23:59:59Z", 0)),
        (topics, b"E", order("E", "2999-01-01T00:00:00Z", 0)),
    ]
    result = score_records(rows, SETTINGS)
    assert sorted((r.key, r.reason) for r in result.rejected) == [
        (b"B", "invalid_time"),
        (b"C", "invalid_time"),
        (b"D", "too_early"),
        (b"E", "too_early"),
    ]
    assert set(result.profiles) == {"A"}
    # with the check off, a far-future row is scored (and makes E too late), and nothing overflows
    off = score_records(rows, Settings(_env_file=None, max_earliness_seconds=0))
    assert set(off.profiles) == {"A", "D"} and off.profiles["A"].as_of.year == 9999
    assert sorted((r.key, r.reason) for r in off.rejected)[2:] == [(b"E", "too_late")]


def test_snapshots_carry_the_clock_and_old_snapshots_still_apply():
    w = Worker()
    w.produce(ORDERS, "C", order("C", iso(3), 0))
    w.take(ORDERS, 1)
    view = w.processor.population
    data = orjson.loads(view.snapshot(0))
    assert data["clock_ms"] == view.clock_of(0) == data["watermark_ms"]
    other = BatchProcessor(SETTINGS.processor())
    data["partition"] = 1
    other.population.apply_snapshot(orjson.dumps(data))
    assert other.population.remote[1].clock_ms == data["clock_ms"]
    del data["clock_ms"]
    other.population.apply_snapshot(orjson.dumps(data))
    assert other.population.remote[1].clock_ms is None and other.population.clock() == data["watermark_ms"]
    # a worker taking over partition 0 starts from the clock its last owner published
    data["partition"], data["clock_ms"] = 0, view.clock_of(0)
    other.population.apply_snapshot(orjson.dumps(data))
    other.rebuild({0}, w.store.items())
    assert other.population.clock_of(0) == view.clock_of(0)
