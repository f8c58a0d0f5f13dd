"""Cost of one RFM population update + one customer's scoring, at growing population sizes.

Usage: .venv/bin/python benchmarks/rfm_update_cost.py [SIZES...]   (default 10000 100000 1000000)

For each size N: N members with realistic keys in 4 partitions, then timed
random moves (a customer's R, F and M keys change, as after an order) each
followed by scoring that customer against all partitions. Prints µs per
update+score; flat across N is the requirement.
"""

from __future__ import annotations

import random
import sys
import time
import tracemalloc

from scoring.rfm import Population, RfmConfig, rfm_keys, rfm_scores
from scoring.units import DAY_MS

PARTITIONS = 4
MOVES = 100_000
DAY0 = 20_000  # days since 1970: 2024-10-04


def random_keys(rnd: random.Random, config: RfmConfig):
    orders = 1 + int(rnd.expovariate(1 / 4))
    revenue = int(rnd.lognormvariate(8.5, 1.2))
    last = (DAY0 + rnd.randrange(730)) * DAY_MS
    return rfm_keys(config, last, orders, revenue)


def run(n: int, rnd: random.Random) -> tuple[float, float]:
    config = RfmConfig()
    tracemalloc.start()
    parts = [Population.empty(config) for _ in range(PARTITIONS)]
    members = []
    for i in range(n):
        keys = random_keys(rnd, config)
        parts[i % PARTITIONS].move(None, keys)
        members.append(keys)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    started = time.perf_counter()
    for _ in range(MOVES):
        i = rnd.randrange(n)
        new = random_keys(rnd, config)
        parts[i % PARTITIONS].move(members[i], new)
        members[i] = new
        rfm_scores(new, parts, config)
    return (time.perf_counter() - started) / MOVES * 1e6, peak / 2**20


def main(sizes: list[int]) -> None:
    rnd = random.Random(1)
    print(f"{'customers':>10} {'µs per update+score':>20} {'peak MiB (incl. key list)':>26}")
    for n in sizes:
        micros, mib = run(n, rnd)
        print(f"{n:>10} {micros:>20.1f} {mib:>26.1f}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10_000, 100_000, 1_000_000])
