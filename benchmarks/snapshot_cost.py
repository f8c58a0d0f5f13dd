"""What the population snapshots cost a worker per partition: encoding its own, applying the others'.

Usage: .venv/bin/python -m benchmarks.snapshot_cost [--partitions 4,16,64] [--customers 50000,1000000]

Every ``PULSE_POPULATION_PUBLISH_SECONDS`` (1 s) a worker publishes each owned partition that changed, and every
worker applies every snapshot it reads (``PopulationView.apply_snapshot``: decode, then shift the published sum,
scoring.population_sums). With live traffic every partition changes each second, so a worker applies up to one
snapshot per partition and second. For each size: a publisher owning every partition of N customers (realistic
R/F/M keys), then rounds of 200 customer moves, each followed by a snapshot of every partition; a reader applies
the first round, then the timed ones (replacing the last snapshot of each partition, as in a worker). CPU time
(``time.process_time``), per snapshot, and per second of a worker that applies one snapshot of every partition.
"""

from __future__ import annotations

import argparse
import random
import time

from scoring import snapshot as snapshots
from scoring.footprint import FootprintDiff
from scoring.population import PopulationView
from scoring.rfm import MemberKeys, RfmConfig

#: customers moved between two rounds of snapshots (a publish interval of traffic)
MOVES_PER_ROUND = 200
ROUNDS = 5


def measure(partitions: int, customers: int, seed: int) -> tuple[float, float, float, int]:
    """(ms to encode, ms to decode, ms to apply one snapshot, bytes of one), averaged over the timed rounds."""
    config, rnd = RfmConfig(), random.Random(seed)
    publisher = PopulationView(config)
    for p in range(partitions):
        publisher.partition(p)
    keys: list[MemberKeys] = []
    for i in range(customers):
        m = int(rnd.lognormvariate(8.5, 1.2))
        keys.append(MemberKeys(20_000 + rnd.randint(0, 700), rnd.randint(1, 30), m, m))
        publisher.local[i % partitions].apply(FootprintDiff(keys=(None, keys[i])))
    rounds: list[list[bytes]] = []
    encode = 0.0
    for _ in range(ROUNDS):
        for _ in range(MOVES_PER_ROUND):
            i = rnd.randrange(customers)
            old = keys[i]
            keys[i] = MemberKeys(old.r + 1, old.f + 1, old.m + 1000, old.v + 1000)
            publisher.local[i % partitions].apply(FootprintDiff(keys=(old, keys[i])))
        started = time.process_time()
        exact = publisher.exact_buckets()
        rounds.append([publisher.snapshot(p, exact) for p in range(partitions)])
        encode += time.process_time() - started
    reader = PopulationView(config)
    for raw in rounds[0]:
        reader.apply_snapshot(raw)
    timed = (ROUNDS - 1) * partitions
    started = time.process_time()
    for raws in rounds[1:]:
        for raw in raws:
            reader.apply_snapshot(raw)
    apply_ms = (time.process_time() - started) / timed * 1e3
    started = time.process_time()
    for raws in rounds[1:]:
        for raw in raws:
            snapshots.decode(raw, config)
    decode_ms = (time.process_time() - started) / timed * 1e3
    size = sum(len(raw) for raw in rounds[-1]) // partitions
    return encode / (ROUNDS * partitions) * 1e3, decode_ms, apply_ms, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", default="4,16,64", help="partition counts, comma-separated")
    parser.add_argument("--customers", default="50000,1000000", help="population sizes, comma-separated")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"{'customers':>10} {'partitions':>10} {'bytes':>7} {'encode ms':>9} {'decode ms':>9} {'apply ms':>8} "
          f"{'apply ms/s':>10}")  # fmt: skip
    for customers in (int(c) for c in args.customers.split(",")):
        for partitions in (int(p) for p in args.partitions.split(",")):
            encode, decode, apply, size = measure(partitions, customers, args.seed)
            print(
                f"{customers:>10,} {partitions:>10} {size:>7,} {encode:>9.3f} {decode:>9.3f} {apply:>8.3f} "
                f"{apply * partitions:>10.1f}"
            )


if __name__ == "__main__":
    main()
