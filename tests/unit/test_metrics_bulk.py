"""streams.metrics.observe_many: the histogram a per-value ``observe`` gives."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from streams.metrics import observe_many

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)


def samples(histogram: Histogram) -> dict[str, float]:
    return {f"{s.name}{s.labels}": s.value for m in histogram.collect() for s in m.samples if "created" not in s.name}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_observe_many_gives_the_buckets_count_and_sum_of_observing_each(seed: int) -> None:
    rng = random.Random(seed)
    # every bucket, the bounds themselves (le is inclusive), zero, and beyond the last bound
    values = [rng.choice([0.0, *BUCKETS, 1e6, rng.uniform(0, 10), rng.uniform(0, 1e5)]) for _ in range(2000)]
    one, bulk = (Histogram("h", "h", buckets=BUCKETS, registry=CollectorRegistry()) for _ in range(2))
    for value in values:
        one.observe(value)
    observe_many(bulk, values[:700])
    observe_many(bulk, [])
    observe_many(bulk, values[700:])
    expected, got = samples(one), samples(bulk)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name
