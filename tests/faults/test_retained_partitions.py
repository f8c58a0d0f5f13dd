"""Events keep flowing while a third worker joins and leaves (SIGTERM) again and again: two workers keep
some of their partitions through every revoke/re-assign cycle. Every valid event must be applied once.

This is the cheapest reproduction of issue 15's lost events: no crash at all, only rebalances (before
the fix: 9 of 11,683 events lost in 5 cycles). A worker that stops on an input offset gap (exit 75, the
defence of streams/offsets.py) is restarted, as compose and Kubernetes do; the gaps are printed.
``PULSE_FAULT_CYCLES`` (default 5, the count that showed the loss; 8 before the suite had to fit
CI's 15 minutes) sets how often the third worker joins and leaves.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

import pytest
import redis

from pulse.simulate import generate_events
from testing.chaos import Fleet, applied_per_customer, compare_counts, send_steadily
from testing.stack import CONVERGE_SECONDS, event_records, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

CYCLES = int(os.environ.get("PULSE_FAULT_CYCLES", "5"))
UP_SECONDS = DOWN_SECONDS = 4.0


@pytest.fixture
def partitions() -> int:
    """The scenario's partition count: its topics are created with it."""
    return 6


@pytest.mark.timeout(900)
def test_retained_partitions_through_rebalances_lose_nothing(namespace, start_worker):
    s = namespace.settings
    events = generate_events(customers=1000, days=365, seed=15, end=datetime(2026, 6, 1, tzinfo=UTC))
    records = event_records(events)
    fleet = Fleet(start_worker, {"PULSE_PARTITIONS": "6", "PULSE_BATCH_MAX_EVENTS": "40"}, namespace.log_dir)
    fleet.start("0")
    fleet.start("1")
    for w in list(fleet.slots.values()):
        assert wait_until(lambda w=w: "Worker ready" in w.log.read_text(), timeout=120), w.log_tail()
    sender = threading.Thread(
        target=send_steadily, args=(namespace.bootstrap, s.input_topics(), records, CYCLES * 14.0), daemon=True
    )
    sender.start()
    cycles = 0
    deadline = time.monotonic() + CYCLES * 14.0 + CONVERGE_SECONDS
    while sender.is_alive() and cycles < CYCLES and time.monotonic() < deadline:
        fleet.start("extra")
        extra = fleet.slots["extra"]
        wait_until(lambda w=extra: "Worker ready" in w.log.read_text() or not w.alive(), timeout=60)
        for _ in range(int(UP_SECONDS * 2)):
            fleet.supervise()
            time.sleep(0.5)
        fleet.leave("extra")
        cycles += 1
        for _ in range(int(DOWN_SECONDS * 2)):
            fleet.supervise()
            time.sleep(0.5)
    sender.join(timeout=CONVERGE_SECONDS + CYCLES * 14.0)
    assert not sender.is_alive()

    client = redis.Redis.from_url(s.redis_url, decode_responses=True)
    expected: dict[str, int] = {}
    for _, e in events:
        expected[e["customer_id"]] = expected.get(e["customer_id"], 0) + 1

    def settled() -> bool:
        fleet.supervise()
        return compare_counts(expected, applied_per_customer(client, s.redis_key_prefix)).settled

    wait_until(settled, 180)
    counts = compare_counts(expected, applied_per_customer(client, s.redis_key_prefix))
    logs = [p.read_text(errors="replace") for p in namespace.log_dir.glob("worker-*.log")]
    gaps = sum(text.count("input offset gap:") for text in logs)
    print(
        f"\n[faults] retained partitions, {cycles} join/leave cycles of a third worker: "
        f"events produced {len(records)}, applied {counts.applied}, lost {counts.lost}, doubled {counts.doubled}; "
        f"input offset gaps stopped {gaps}, worker exits {fleet.unplanned}"
    )
    assert counts.lost == 0 and counts.doubled == 0, counts.examples
    # the only exits are the gap check's fail-stops (75), each restarted
    assert all(rc == 75 for _, rc in fleet.unplanned), fleet.unplanned
