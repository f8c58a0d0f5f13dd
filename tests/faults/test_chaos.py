"""Issue 15's chaos scenario at CI scale: every valid event applied exactly once, whatever happens.

2,000 customers, ~22,000 records of the four kinds (out of order, late, duplicated by the producer,
mis-keyed, malformed), 3 workers on 6 partitions, 10 kill -9, a fourth worker joining and leaving
by SIGTERM (the others keep partitions through those rebalances), a Redis outage, and 3 workers frozen
(SIGSTOP) past their session for 6-10 s, then woken (``PULSE_CHAOS_FREEZES``; at full size, freezes on Tansu
found the resume of session 30). Every profile
and every changelog state is compared with the offline processor and with an independent batch
oracle; the numbers are printed. A worker may fail-stop (exit 75) and be restarted by the fleet; any other exit
of a worker not killed or stopped on purpose (a crash) fails the test. ``benchmarks/chaos.py`` runs the same
scenario at full size.

Each broker runs it with one store in the suite: Apache Kafka with RocksDB (the shipped StatefulSet's pair) and
Tansu with the memory store (``pulse dev``'s). ``PULSE_CHAOS_ALL_STORES=1`` runs both stores on each broker, as
``benchmarks/chaos.py --store`` does at full size (each of the two is ~100 s of the suite's 15 minutes).

The workers count the input as behind from 200 queued records, twice the scenario's batch
(``PULSE_BATCH_BACKLOG_FROM_EVENTS``; at the default 2,000, seed 1 deferred 70 assessments on Tansu and none on
Kafka, whose workers rarely queue that much at the scenario's ~550 records/s). A worker catching up after a kill or
a rebalance then takes backlog batches, and leaves a customer's assessment and profile to the next batch that
brings it again (``PULSE_BACKLOG_DEFER_ASSESSMENTS``, on by default). The test fails if no worker deferred one, so
the deferral is exercised under the kills, freezes and rebalances (seeds 1-3 on Kafka at 300: 22-241 deferred; at
200, seed 2: 294). ``PULSE_CHAOS_BACKLOG_FROM_EVENTS=0`` keeps the default. Catching up after a kill was not
enough on its own: a CI run on Kafka (session 35's) counted none. So the traffic has a spike (5 s of it sent at
once at mid-run, ``ChaosPlan.spike_at``), and the fleet scrapes each worker's count every second, so one killed
while frozen, or fail-stopping, keeps what it deferred before (seed 1 on Kafka, alone: 61-231 before, 141-496
with both).

``PULSE_CHAOS_SEED`` picks the seed. Alert and VIP-change ids that carry more than one content are
counted and printed, and fail the test (the checkpoint's outbox gives each id one content);
``PULSE_CHAOS_STRICT_IDS=0`` only prints them.
"""

from __future__ import annotations

import os

import pytest

from testing.chaos import ChaosPlan, run_chaos

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

SEED = int(os.environ.get("PULSE_CHAOS_SEED", "1"))
STRICT_IDS = os.environ.get("PULSE_CHAOS_STRICT_IDS", "1") == "1"
ALL_STORES = os.environ.get("PULSE_CHAOS_ALL_STORES", "0") == "1"
FREEZES = int(os.environ.get("PULSE_CHAOS_FREEZES", "3"))
BACKLOG_FROM_EVENTS = int(os.environ.get("PULSE_CHAOS_BACKLOG_FROM_EVENTS", "200"))
#: the store each broker's run uses in the suite: production's pair, and ``pulse dev``'s
SUITE_STORES = {"kafka": "rocksdb://", "tansu": "memory://"}


@pytest.fixture(autouse=True)
def suite_pair(request: pytest.FixtureRequest, devstack) -> None:
    """Skip a broker's other store (before the namespace is made) unless ``PULSE_CHAOS_ALL_STORES=1``."""
    store = request.node.callspec.params["store"]
    if not ALL_STORES and SUITE_STORES.get(devstack.broker_name, store) != store:
        pytest.skip(
            f"{devstack.broker_name} runs the chaos scenario with {SUITE_STORES[devstack.broker_name]} in the suite; "
            "PULSE_CHAOS_ALL_STORES=1 runs this pair too"
        )


@pytest.fixture
def partitions() -> int:
    """The scenario's partition count: its topics are created with it."""
    return ChaosPlan.partitions


@pytest.mark.timeout(900)
@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_chaos_every_valid_event_applied_once(namespace, start_worker, store):
    plan = ChaosPlan(seed=SEED, store=store, freezes=FREEZES, backlog_from_events=BACKLOG_FROM_EVENTS or None)
    result = run_chaos(plan, namespace, start_worker)
    print(f"\n[faults] chaos ({store}, seed {SEED}): {result.line()}")
    assert result.lost == 0 and result.doubled == 0, result.examples["counts"]
    assert result.profiles_off_offline == 0, result.examples["offline"]
    assert result.profiles_off_oracle == 0, result.examples["oracle"]
    assert result.changelog_states_off == 0, result.examples["changelog"]
    assert result.dead_lettered == result.malformed_sent
    if STRICT_IDS:
        assert result.conflicting_ids == 0
    # a worker may fail-stop (exit 75: the group dropped it, a newer owner's marker) and be restarted; never crash
    assert result.unplanned_exits == result.unplanned_fail_stops, result.examples["exits"]
    if BACKLOG_FROM_EVENTS:
        assert result.assessments_deferred > 0, "no worker deferred an assessment: the scenario missed the deferral"
