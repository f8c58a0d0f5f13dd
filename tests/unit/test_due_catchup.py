"""A backlog's catch-up (issue 18): the batch in which the partition clocks catch up finds every customer due at
once. Past the batch's time budget its due checks stop once they took ``PULSE_CHURN_DUE_TIME_RATIO`` times what
its records took (at least ``PULSE_CHURN_DUE_PER_LIVE_BATCH`` per partition), so that batch does not outlast the
budget several times; the rest are checked in the next batches, earliest due first, with the decisions one batch
checking them all makes. A batch within its budget never stops early.

A fake timer that moves one second per state loaded makes the time the work: the records' loads are their time,
each due check's load is its own.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from pulse_config.settings import Settings
from scoring.customer import CustomerState
from scoring.units import DAY_MS
from streams.processor import BatchOutcome, BatchProcessor
from tests.churn_story import MONTHLY, iso
from tests.unit.test_clock import ORDERS, SURVEYS, Worker, order
from tests.unit.test_due_live import BUYERS, buyer, live_ms, overdue, survey_at

#: the least due checks a batch makes per partition (PULSE_CHURN_DUE_PER_LIVE_BATCH)
FLOOR = 2
#: a batch's budget in fake seconds (state loads): PULSE_BATCH_BACKLOG_REBALANCE_SHARE x the rebalance timeout
BUDGET = 4.0
#: new customers per survey batch: each is one second of the batch's records
SURVEYS_PER_BATCH = 10


class TimedWorker(Worker):
    """The test worker with a fake wall clock that one state load moves by a second."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.seconds = 0.0

    def timer(self) -> float:
        return self.seconds

    def load(self, key: bytes) -> CustomerState:
        self.seconds += 1.0
        return super().load(key)


def settings(ratio: float, budget: float = BUDGET) -> Settings:
    return Settings(
        _env_file=None,
        churn_due_per_live_batch=FLOOR,
        churn_due_time_ratio=ratio,
        broker_rebalance_timeout=budget * 4,
        batch_backlog_rebalance_share=0.25,
    )


def replayed(ratio: float, budget: float = BUDGET, timed: bool = True) -> TimedWorker:
    """The buyers' year read as a replay, then the fake clock handed in (as from the catch-up on)."""
    w = TimedWorker(settings(ratio, budget))
    assert w.processor.timer is None  # (built without one: the replayed year is not timed)
    orders = sorted(((day + i, buyer(i), n) for i in range(BUYERS) for n, day in enumerate(MONTHLY)))
    for day, cid, n in orders:
        w.produce(ORDERS, cid, order(cid, iso(day), n))
    while w.read.get((ORDERS, 0), 0) < len(orders):
        w.take(ORDERS, 100)
    assert overdue(w) == []
    if timed:
        w.processor.timer = w.timer
    return w


def catch_up(w: TimedWorker, batches: int) -> list[BatchOutcome]:
    """Batches of surveys of new customers 200 days after the year, read two days later by wall time (history:
    not live), each moving the clock a second."""
    outs = []
    for b in range(batches):
        for n in range(SURVEYS_PER_BATCH):
            cid = f"N{b:02d}{n:02d}"
            w.produce(SURVEYS, cid, survey_at(cid, live_ms(b + n / 100), 0))
        outs.append(w.take(SURVEYS, SURVEYS_PER_BATCH, wall_ms=live_ms(0) + 2 * DAY_MS))
    return outs


def test_past_its_budget_a_batch_checks_due_customers_for_as_long_as_its_records_took_then_the_next_batches_go_on():
    w = replayed(1.0)
    due = dict(w.processor.population.partition(0).due)
    assert sorted(due) == [buyer(i).encode() for i in range(BUYERS)]
    outs = catch_up(w, BUYERS // SURVEYS_PER_BATCH + 2)
    checked = [out.due_checked for out in outs]
    # the records took 10 s, past the 4 s budget: 10 s of checks, each batch, until none is due
    assert checked[: BUYERS // SURVEYS_PER_BATCH - 1] == [SURVEYS_PER_BATCH] * (BUYERS // SURVEYS_PER_BATCH - 1)
    assert sum(checked) == BUYERS
    cut = [out.due_cut for out in outs]
    assert cut[0] == 1 and cut[-1] == 0 and sum(cut) == BUYERS // SURVEYS_PER_BATCH - 1
    # earliest due first, each alerted when checked
    assert overdue(w) == [key.decode() for key in sorted(due, key=lambda k: (due[k], k))]


def test_the_same_customers_are_decided_as_by_one_unbounded_batch_at_most_its_few_seconds_later():
    bounded, unbounded = replayed(1.0), replayed(1.0, timed=False)
    outs = catch_up(unbounded, BUYERS // SURVEYS_PER_BATCH + 2)
    assert outs[0].due_checked == BUYERS and outs[0].due_cut == 0  # (no timer: all in the first batch)
    catch_up(bounded, BUYERS // SURVEYS_PER_BATCH + 2)
    assert sorted(overdue(bounded)) == sorted(overdue(unbounded)) == [buyer(i) for i in range(BUYERS)]
    assert bounded.store.keys() == unbounded.store.keys()
    for key, state in unbounded.store.items():
        assert bounded.store[key].churn.level == state.churn.level, key
        assert bounded.store[key].churn.alerts == state.churn.alerts, key
        # decided at the clock of the batch that checked it: at most the catch-up's few seconds later
        late = bounded.store[key].churn.alert_ms - state.churn.alert_ms if state.churn.alert_ms else 0
        assert 0 <= late <= (BUYERS // SURVEYS_PER_BATCH + 2) * 1000, key


def test_a_batch_within_its_budget_checks_every_due_customer():
    w = replayed(0.0, budget=1000.0)
    assert catch_up(w, 1)[0].due_checked == BUYERS


def test_past_its_budget_a_batch_makes_at_least_the_floor_of_checks_per_partition():
    w = replayed(0.01)  # records past the budget already, and a hundredth of their time: less than one check
    outs = catch_up(w, BUYERS // FLOOR + 1)
    assert [out.due_checked for out in outs[: BUYERS // FLOOR]] == [FLOOR] * (BUYERS // FLOOR)
    assert sum(out.due_checked for out in outs) == BUYERS


def test_without_a_timer_or_a_budget_the_engine_keeps_the_count_bound_alone():
    w = replayed(1.0, timed=False)  # the offline engine and the tests' processors have no wall clock
    assert catch_up(w, 1)[0].due_checked == BUYERS
    unbudgeted = Settings(_env_file=None, batch_backlog_rebalance_share=0).processor()
    assert unbudgeted.batch_budget_seconds is None
    assert BatchProcessor(unbudgeted, None, time.perf_counter).timer is None


def test_a_live_partitions_customers_waiting_for_the_clock_are_bounded_the_same_way():
    """The bench's backlog: recent events, so live partitions, whose customers wait for the clock until every
    topic of the partition is read, then fall due together (sessions 37-38)."""
    w = TimedWorker(settings(1.0))
    w.processor.timer = w.timer
    start = live_ms(0)

    def at(seconds: float) -> str:
        return datetime.fromtimestamp((start + int(seconds * 1000)) / 1000, UTC).isoformat()

    # the orders topic holds the clock: one order read at 1 s, one unread behind it at 100 s
    w.produce(ORDERS, "Y", order("Y", at(1), 1))
    w.produce(ORDERS, "Y", order("Y", at(100), 2))
    w.take(ORDERS, 1, wall_ms=start + 1050)
    # 30 customers' surveys at 2-31 s: ahead of the clock, they wait
    for n in range(30):
        w.produce(SURVEYS, f"W{n:02d}", survey_at(f"W{n:02d}", start + (2 + n) * 1000, 0))
    w.take(SURVEYS, 30, wall_ms=start + 32_000)
    waiting = w.processor.population.partition(0).due
    assert len(waiting) == 31 and w.processor.live(0)  # (Y's first order too: the clock is 1 ms before it)
    # the order at 100 s is read: the clock passes them all; its record took 1 s, the checks fill the 4 s budget
    w.seconds = 0.0
    out = w.take(ORDERS, 1, wall_ms=start + 100_050)
    per_batch = int(BUDGET) - 1
    assert out.due_checked == per_batch and out.due_cut == 1
    # the others in the next batches (a survey of another customer each: 1 s, the budget's rest), in order
    checked = []
    for n in range(20):
        w.produce(SURVEYS, f"Z{n:02d}", survey_at(f"Z{n:02d}", start + 99_000 + n, 0))
        w.seconds = 0.0
        checked.append(w.take(SURVEYS, 1, wall_ms=start + 100_100 + n).due_checked)
    assert checked[:9] == [per_batch] * 9 and sum(checked) == 30 - per_batch
    assert [a["customer_id"] for a in w.alerts if a["customer_id"].startswith("W")] == sorted(
        a["customer_id"] for a in w.alerts if a["customer_id"].startswith("W")
    )
