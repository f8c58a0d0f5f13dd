"""Warm-up of a live worker (issue 18): when the clock jumps after a pause, the customers that fell due meanwhile
are checked a bounded number per batch (``PULSE_CHURN_DUE_PER_LIVE_BATCH``), earliest due first, and a fresh
event whose decision waited for the clock comes before them; none is lost, and a replay or an offline run keeps
the one large bound (``PULSE_CHURN_DUE_PER_BATCH``).

Driven through the worker's processor with end offsets handed in, as the agent does (``tests/unit/test_clock.py``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import orjson

from pulse.offline import score_records
from pulse_config.settings import Settings
from scoring.due_index import DueIndex
from scoring.units import DAY_MS
from streams.processor import BatchOutcome
from tests.churn_story import D0, MONTHLY, iso
from tests.unit.test_clock import ORDERS, SURVEYS, Worker, order

#: customers who bought monthly for a year, each starting a day after the one before (spread due times)
BUYERS = 60
LIVE_LIMIT = 8
#: the day live traffic starts: every buyer is long overdue by then
LIVE_DAY = MONTHLY[-1] + BUYERS + 200


def buyer(i: int) -> str:
    return f"B{i:03d}"


def settings(live_limit: int = LIVE_LIMIT) -> Settings:
    return Settings(_env_file=None, churn_due_per_live_batch=live_limit)


def live_ms(seconds: float) -> int:
    return (D0 + LIVE_DAY) * DAY_MS + int(seconds * 1000)


def survey_at(cid: str, ms: int, n: int, nps: int = 9) -> bytes:
    when = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return orjson.dumps({"event_id": f"s-{cid}-{n}", "customer_id": cid, "occurred_at": when, "nps": nps})


def replayed_year(live_limit: int = LIVE_LIMIT) -> Worker:
    """The buyers' year read as a replay (no wall clock: not live), up to its last order."""
    w = Worker(settings(live_limit))
    orders = sorted(
        ((day + i, buyer(i), n) for i in range(BUYERS) for n, day in enumerate(MONTHLY)), key=lambda o: o[0]
    )
    for day, cid, n in orders:
        w.produce(ORDERS, cid, order(cid, iso(day), n))
    while w.read.get((ORDERS, 0), 0) < len(orders):
        w.take(ORDERS, 100)
    return w


def live_survey(w: Worker, cid: str, n: int, seconds: float, nps: int = 9) -> BatchOutcome:
    """One survey occurring ``seconds`` into the live day, read 50 ms later by wall time."""
    w.produce(SURVEYS, cid, survey_at(cid, live_ms(seconds), n, nps))
    return w.take(SURVEYS, 1, wall_ms=live_ms(seconds) + 50)


def overdue(w: Worker) -> list[str]:
    """Customers with an overdue alert, in the order raised."""
    return [a["customer_id"] for a in w.alerts if any(r["code"] == "overdue" for r in a["reasons"])]


def test_the_due_index_pops_waiting_customers_first_and_bounds_only_the_time_driven_checks():
    due = DueIndex()
    for i in range(10):
        due.schedule(b"old%d" % i, 100 + i)
    due.schedule(b"fresh", 500, waiting=True)
    assert due.pop_due(400, 100, 3) == [b"old0", b"old1", b"old2"]  # the waiting one is not due yet
    due.schedule(b"fresh2", 450, waiting=True)
    # waiting ones first, earliest first, not counted against the checks' bound; then 2 checks
    assert due.pop_due(600, 100, 2) == [b"fresh2", b"fresh", b"old3", b"old4"]
    # the overall limit still holds, waiting ones included
    due.schedule(b"fresh3", 600, waiting=True)
    assert due.pop_due(600, 2, 5) == [b"fresh3", b"old5"]
    # a rebuilt heap keeps who is waiting
    due.schedule(b"fresh4", 700, waiting=True)
    due.reheap()
    assert due.pop_due(700, 100, 1) == [b"fresh4", b"old6"]
    assert due.pop_due(700, 100) == [b"old7", b"old8", b"old9"]
    assert due == {}


def test_after_a_clock_jump_a_live_partition_checks_its_due_customers_a_bounded_number_per_batch_earliest_first():
    w = replayed_year()
    assert overdue(w) == []  # they bought monthly up to their last order
    due = dict(w.processor.population.partition(0).due)
    assert sorted(due) == [buyer(i).encode() for i in range(BUYERS)]
    # live traffic: a survey of an unknown customer moves the clock ~200 days: every buyer fell due meanwhile
    batches = [live_survey(w, "X", n, 0.1 * n) for n in range(math.ceil(BUYERS / LIVE_LIMIT) + 2)]
    checked = [b.due_checked for b in batches]
    # every buyer is checked, LIVE_LIMIT per batch, in ceil(BUYERS / LIVE_LIMIT) batches
    assert sum(checked) == BUYERS and max(checked) == LIVE_LIMIT
    assert len([c for c in checked if c]) == math.ceil(BUYERS / LIVE_LIMIT)
    # earliest due first (then by key), each alerted when checked
    assert overdue(w) == [key.decode() for key in sorted(due, key=lambda k: (due[k], k))]
    assert len(set(due.values())) > math.ceil(BUYERS / LIVE_LIMIT)  # (the order is not the keys' alone)


def test_the_same_customers_are_alerted_as_with_no_live_bound():
    bounded, unbounded = replayed_year(), replayed_year(live_limit=10**6)
    for w in (bounded, unbounded):
        for n in range(math.ceil(BUYERS / LIVE_LIMIT) + 1):
            live_survey(w, "X", n, 0.1 * n)
    assert sorted(overdue(bounded)) == sorted(overdue(unbounded)) == [buyer(i) for i in range(BUYERS)]
    assert bounded.store.keys() == unbounded.store.keys()
    for key, state in unbounded.store.items():
        assert bounded.store[key].churn.level == state.churn.level, key
        assert bounded.store[key].churn.alerts == state.churn.alerts, key
    # unbounded: all in the first live batch
    first = {a["raised_at"] for a in unbounded.alerts if a["customer_id"] != "X"}
    assert len(first) == 1


def test_a_fresh_event_waiting_for_the_clock_is_decided_before_the_time_driven_backlog():
    w = replayed_year()
    # the orders topic holds the clock back: one order read at 10 s, one more unread behind it at 20 s
    w.produce(ORDERS, "Y", order("Y", datetime.fromtimestamp(live_ms(10) / 1000, UTC).isoformat(), 1))
    w.produce(ORDERS, "Y", order("Y", datetime.fromtimestamp(live_ms(20) / 1000, UTC).isoformat(), 2))
    w.take(ORDERS, 1, wall_ms=live_ms(10) + 50)
    # a detractor (NPS 0, CSAT 1: medium risk) at 15 s: ahead of the clock (10 s less 1 ms), so it waits
    w.produce(SURVEYS, "T", orjson.dumps(orjson.loads(survey_at("T", live_ms(15), 0, nps=0)) | {"csat": 1}))
    w.take(SURVEYS, 1, wall_ms=live_ms(15) + 50)
    assert "T" not in [a["customer_id"] for a in w.alerts]
    assert w.processor.population.partition(0).due[b"T"] == live_ms(15)
    backlog = len([k for k, t in w.processor.population.partition(0).due.items() if t < live_ms(10)])
    assert backlog > LIVE_LIMIT  # the buyers still due, checked LIVE_LIMIT per batch
    # the order at 20 s is read: the clock passes T's survey, and T is decided in this batch, ahead of the backlog
    out = w.take(ORDERS, 1, wall_ms=live_ms(20) + 50)
    assert [a.customer_id for _, a, _ in out.alerts if a.customer_id == "T"] == ["T"]
    assert out.due_checked == 1 + LIVE_LIMIT


def test_a_replay_and_an_offline_run_keep_the_one_large_bound():
    # a replay: the clock is history (more than PULSE_HISTORICAL_ALERT_SECONDS behind the wall clock)
    w = replayed_year()
    w.produce(SURVEYS, "X", survey_at("X", live_ms(0), 0))
    out = w.take(SURVEYS, 1, wall_ms=live_ms(0) + 2 * DAY_MS)
    assert out.due_checked == BUYERS
    # offline (no end offsets), even at a wall clock right after the events: the same as with no live bound
    records = [
        (ORDERS, buyer(i).encode(), order(buyer(i), iso(day + i), n))
        for i in range(BUYERS)
        for n, day in enumerate(MONTHLY)
    ]
    records.sort(key=lambda r: orjson.loads(r[2])["occurred_at"])
    records.append((SURVEYS, b"X", survey_at("X", live_ms(0), 0)))
    bounded, unbounded = (
        score_records(records, settings(limit), final_sweep=False, wall_ms=live_ms(0) + 50) for limit in (1, 10**6)
    )
    assert bounded.states == unbounded.states
    assert all(bounded.states[buyer(i).encode()].churn.alerts >= 1 for i in range(BUYERS))
