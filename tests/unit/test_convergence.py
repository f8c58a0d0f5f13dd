"""Once traffic stops and a sweep round has run, every churn and CLV field of every profile equals the offline
recomputation (pulse/offline.py), with two workers that exchange only population snapshots and a partition
read far behind the other (issue 14: profiles kept a stale population purchase gap).
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

import orjson

from pulse.offline import score_records
from pulse.simulate import generate_events
from pulse_config.settings import Settings
from schemas.profile import RenderedProfile
from scoring.customer import CustomerState
from streams.processor import BatchOutcome, BatchProcessor, Incoming

SETTINGS = Settings(
    _env_file=None,
    # a whole partition per sweep tick: each tick is a round
    sweep_round_seconds=0,
    sweep_customers_per_tick=100_000,
    vip_leave_share=0.05,
)
#: what the churn warning and CLV put in a profile, and the purchase gap the overdue signal used
CHURN_AND_CLV_FIELDS = (
    "churn_risk",
    "churn_level",
    "churn_reasons",
    "p_alive",
    "expected_purchases",
    "expected_order_value",
    "clv",
    "clv_historical",
    "recency_days",
    "as_of",
)


class Worker:
    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.processor = BatchProcessor(SETTINGS.processor())
        self.processor.population.partition(partition)
        self.store: dict[bytes, CustomerState] = {}
        self.tick_offset = 0

    def run(self, records: list[Incoming], written: dict[str, RenderedProfile]) -> BatchOutcome:
        """One batch, with a sweep tick of the worker's partition in it."""
        self.tick_offset += 1
        tick = Incoming(SETTINGS.topic_ticks(), self.partition, self.tick_offset, None, b"")
        out = self.processor.process([*records, tick], lambda k: self.store.get(k) or CustomerState())
        self.store.update(out.states)
        written.update({p.customer_id: p for p in out.profiles})
        return out

    def publish_to(self, other: Worker) -> None:
        other.processor.population.apply_snapshot(self.processor.population.snapshot(self.partition))


def test_profiles_converge_to_the_offline_recomputation_when_a_partition_is_read_behind():
    events = generate_events(customers=160, days=365, seed=3, end=datetime(2026, 6, 1, tzinfo=UTC))
    topics = SETTINGS.input_topics()
    raw = [(topics[kind], e["customer_id"].encode(), orjson.dumps(e)) for kind, e in events]
    expected = {cid: p.to_redis() for cid, p in score_records(raw, SETTINGS).profiles.items()}

    by_partition: dict[int, list[Incoming]] = {0: [], 1: []}
    offsets: dict[tuple[str, int], int] = {}
    for topic, key, value in raw:
        p = zlib.crc32(key) % 2
        offsets[(topic, p)] = offsets.get((topic, p), -1) + 1
        by_partition[p].append(Incoming(topic, p, offsets[(topic, p)], key, value))
    fast, slow = Worker(0), Worker(1)
    written: dict[str, RenderedProfile] = {}

    def exchange() -> None:
        fast.publish_to(slow)
        slow.publish_to(fast)

    # partition 0 is read to its end (the clock reaches the end of the history) while partition 1 is at a
    # third; the fast worker's sweep goes round and settles at the final clock
    third = len(by_partition[1]) // 3
    for start in range(0, len(by_partition[0]), 100):
        fast.run(by_partition[0][start : start + 100], written)
        if start // 100 < third // 100:
            slow.run(by_partition[1][start : start + 100], written)
        exchange()
    slow_done = (len(by_partition[0]) // 100 + 1) * 100 if third > len(by_partition[0]) else (third // 100) * 100
    for _ in range(3):
        fast.run([], written)
        slow.run([], written)
        exchange()
    # partition 1 catches up: the population (and its purchase gap) moves, the clock hardly
    for start in range(slow_done, len(by_partition[1]), 100):
        slow.run(by_partition[1][start : start + 100], written)
        exchange()
    # traffic stopped: snapshots travel, sweep rounds run
    for _ in range(3):
        exchange()
        fast.run([], written)
        slow.run([], written)

    gaps = {w.processor.population.gap_days(SETTINGS.churn_population_gap_min_customers) for w in (fast, slow)}
    assert len(gaps) == 1
    assert set(written) == set(expected)
    differing = {}
    for cid, exp in expected.items():
        got = written[cid].model().to_redis()
        diff = {f: (exp[f], got[f]) for f in CHURN_AND_CLV_FIELDS if exp[f] != got[f]}
        if diff:
            differing[cid] = diff
    assert not differing, (len(differing), list(differing.items())[:3])
    # the history exercises what matters: customers measured against the population's gap, and at risk
    uses_population_gap = [
        cid for cid, p in expected.items() if "population" in p["churn_reasons"] and "overdue" in p["churn_reasons"]
    ]
    assert uses_population_gap
    assert any(p["churn_level"] != "low" for p in expected.values())
