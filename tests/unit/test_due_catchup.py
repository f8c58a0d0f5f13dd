"""A backlog's catch-up (issue 18): the batch in which a replay's clock jumps finds every customer due at once.
Its due checks are bounded by time, a share of what the batch's records took (``PULSE_CHURN_DUE_CATCHUP_TIME_
RATIO``), so that batch does not outlast the batch budget; the rest are checked in the next batches, earliest due
first, with the same decisions as one batch checking them all.

A fake timer that moves one second per state loaded makes the time the work: the records' loads are their time,
each due check's load is its own.
"""

from __future__ import annotations

import orjson

from pulse_config.settings import Settings
from scoring.customer import CustomerState
from scoring.due_index import DueIndex
from scoring.units import DAY_MS
from streams.processor import BatchOutcome, Incoming
from tests.churn_story import MONTHLY, iso
from tests.unit.test_clock import ORDERS, SURVEYS, Worker, order
from tests.unit.test_due_live import BUYERS, buyer, live_ms, overdue, survey_at

#: the least due checks a catch-up batch makes (PULSE_CHURN_DUE_PER_LIVE_BATCH)
FLOOR = 2
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
        return self.store.get(key) or CustomerState()

    def run(self, batch: list[Incoming], wall_ms: int | None = None) -> BatchOutcome:
        starts = dict.fromkeys(self.ends(), 0)
        out = self.processor.process(batch, self.load, wall_ms, self.ends(), starts)
        self.store.update(out.states)
        self.alerts += [orjson.loads(v) for _, _, v in out.alerts]
        return out


def replayed(ratio: float, timed: bool = True) -> TimedWorker:
    """The buyers' year read as a replay, then the fake clock switched on (as from the catch-up on)."""
    s = Settings(_env_file=None, churn_due_per_live_batch=FLOOR, churn_due_catchup_time_ratio=ratio)
    w = TimedWorker(s)
    orders = sorted(((day + i, buyer(i), n) for i in range(BUYERS) for n, day in enumerate(MONTHLY)))
    for day, cid, n in orders:
        w.produce(ORDERS, cid, order(cid, iso(day), n))
    while w.read.get((ORDERS, 0), 0) < len(orders):
        w.take(ORDERS, 100)
    assert overdue(w) == []
    if timed:
        w.processor.timer = w.timer if ratio > 0 else None
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


def test_a_catch_up_checks_its_due_customers_in_the_time_its_records_took_then_the_rest_in_the_next_batches():
    w = replayed(1.0)
    due = dict(w.processor.population.partition(0).due)
    assert sorted(due) == [buyer(i).encode() for i in range(BUYERS)]
    outs = catch_up(w, BUYERS // SURVEYS_PER_BATCH + 2)
    checked = [out.due_checked for out in outs]
    # as many checks as the records' loads (one second each), each batch, until none is due
    assert checked[: BUYERS // SURVEYS_PER_BATCH - 1] == [SURVEYS_PER_BATCH] * (BUYERS // SURVEYS_PER_BATCH - 1)
    assert sum(checked) == BUYERS
    cut = [out.due_cut for out in outs]
    assert cut[0] == 1 and cut[-1] == 0 and sum(cut) == BUYERS // SURVEYS_PER_BATCH - 1
    # earliest due first, each alerted when checked
    assert overdue(w) == [key.decode() for key in sorted(due, key=lambda k: (due[k], k))]


def test_the_same_customers_are_decided_as_by_one_unbounded_batch_at_most_its_few_seconds_later():
    bounded, unbounded = replayed(1.0), replayed(0.0)
    assert unbounded.processor.timer is None
    outs = catch_up(unbounded, BUYERS // SURVEYS_PER_BATCH + 2)
    assert outs[0].due_checked == BUYERS and outs[0].due_cut == 0  # (no bound: all in the first batch)
    catch_up(bounded, BUYERS // SURVEYS_PER_BATCH + 2)
    assert sorted(overdue(bounded)) == sorted(overdue(unbounded)) == [buyer(i) for i in range(BUYERS)]
    assert bounded.store.keys() == unbounded.store.keys()
    for key, state in unbounded.store.items():
        assert bounded.store[key].churn.level == state.churn.level, key
        assert bounded.store[key].churn.alerts == state.churn.alerts, key
        # decided at the clock of the batch that checked it: at most the catch-up's few seconds later
        late = bounded.store[key].churn.alert_ms - state.churn.alert_ms if state.churn.alert_ms else 0
        assert 0 <= late <= (BUYERS // SURVEYS_PER_BATCH + 2) * 1000, key


def test_a_catch_up_makes_at_least_the_floor_of_checks_per_batch_however_short_its_records():
    w = replayed(0.01)  # a hundredth of the records' time: less than one check
    outs = catch_up(w, BUYERS // FLOOR + 1)
    assert [out.due_checked for out in outs[: BUYERS // FLOOR]] == [FLOOR] * (BUYERS // FLOOR)
    assert sum(out.due_checked for out in outs) == BUYERS


def test_without_a_timer_the_engine_keeps_the_count_bound_alone():
    w = replayed(1.0, timed=False)  # the offline engine and the tests' processors have no wall clock
    assert w.processor.timer is None
    assert catch_up(w, 1)[0].due_checked == BUYERS


def test_taking_due_customers_one_at_a_time_leaves_the_untaken_scheduled_in_order():
    due = DueIndex()
    for i in range(6):
        due.schedule(b"old%d" % i, 100 + i)
    due.schedule(b"fresh", 300, waiting=True)
    taken = due.take_due(400, 100)
    assert [next(taken), next(taken)] == [b"fresh", b"old0"]
    taken.close()  # (a catch-up out of time)
    assert due.has_due(400) and not due.has_due(99)
    assert due.pop_due(400, 100) == [b"old%d" % i for i in range(1, 6)]
    assert not due.has_due(400) and due == {}
    # stale heap entries (rescheduled later) are not due
    due.schedule(b"a", 100)
    due.schedule(b"a", 900)
    assert not due.has_due(400) and due.has_due(900)
