"""Cost of the churn warning: one assessment (CLV + all signals), and the due-time index at growing populations.

Usage: .venv/bin/python benchmarks/churn_cost.py [SIZES...]   (default 10000 100000 1000000)

1. µs per ``assess_customer`` on realistic customers (a year of orders, some
   surveys, complaints and tickets), split by how many orders they have: the
   BG/NBD series is slowest right after a first purchase.
2. For each size N: N customers filed in one partition's due-time index with
   their real next-check times, then the clock walks forward a day at a time
   over 90 days, popping what is due. Prints the customers due per day and µs
   per popped customer: the cost follows the customers due, not N.
"""

from __future__ import annotations

import random
import sys
import time
import tracemalloc

from pulse.simulate import generate_events
from pulse_config.settings import Settings
from scoring.customer import CustomerState, ScoringConfig, apply_event, assess_customer
from scoring.due_index import DueIndex
from scoring.units import DAY_MS
from streams.processor import BatchProcessor

ASSESSMENTS = 20_000
WALK_DAYS = 90


def sample_states(customers: int) -> tuple[list[CustomerState], int]:
    """Customers built by the worker's own decoding and scorers from the traffic generator's history."""
    processor = BatchProcessor(Settings(_env_file=None).processor())
    states: dict[str, CustomerState] = {}
    now = 0
    for i, (kind, event) in enumerate(generate_events(customers, 365, seed=5)):
        scored = processor._to_scored(_decode(kind, event), i)
        state = states.setdefault(event["customer_id"], CustomerState())
        apply_event(state, scored, processor.config)
        now = max(now, scored.occurred_ms)
    return list(states.values()), now


def _decode(kind: str, event: dict):
    import orjson

    from schemas.events import Kind, decode_event

    return decode_event(Kind(kind), orjson.dumps(event), 1 << 20)


def bench_assess(states: list[CustomerState], now: int, config: ScoringConfig) -> None:
    rnd = random.Random(3)
    by_group: dict[str, list[float]] = {}
    for _ in range(ASSESSMENTS):
        state = rnd.choice(states)
        group = "0 orders" if not state.orders.orders else "1 order" if state.orders.orders == 1 else "2+ orders"
        at = now + rnd.randrange(90) * DAY_MS
        started = time.perf_counter()
        assess_customer(state, at, 30.0, config)
        by_group.setdefault(group, []).append(time.perf_counter() - started)
    everything = [t for ts in by_group.values() for t in ts]
    print(f"assess_customer: {sum(everything) / len(everything) * 1e6:.1f} µs mean over {len(everything)} calls")
    for group, ts in sorted(by_group.items()):
        ts.sort()
        mean, p99 = sum(ts) / len(ts) * 1e6, ts[len(ts) * 99 // 100] * 1e6
        print(f"  {group:<10} n={len(ts):>6}  mean {mean:6.1f} µs  p99 {p99:6.1f} µs")


def bench_due(n: int, states: list[CustomerState], now: int, config: ScoringConfig) -> None:
    rnd = random.Random(n)
    due = DueIndex()
    tracemalloc.start()
    for i in range(n):
        state = rnd.choice(states)
        # each customer's real next check, shifted so the population is spread over a year of histories
        shift = rnd.randrange(-180, 1) * DAY_MS
        nxt = assess_customer(state, now, 30.0, config)[1].next_change_ms
        due.schedule(i.to_bytes(4, "big"), None if nxt is None else nxt + shift)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    filed = len(due)
    popped = 0
    started = time.perf_counter()
    for day in range(1, WALK_DAYS + 1):
        popped += len(due.pop_due(now + day * DAY_MS, 1 << 30))
    elapsed = time.perf_counter() - started
    print(
        f"{n:>10} filed {filed:>9}  due per day {popped / WALK_DAYS:>9.0f}  "
        f"µs per popped {elapsed / max(1, popped) * 1e6:5.2f}  index peak {peak / 2**20:7.1f} MiB"
    )


def main(sizes: list[int]) -> None:
    config = Settings(_env_file=None).scoring()
    states, now = sample_states(3000)
    bench_assess(states, now, config)
    print(f"\ndue-time index, the clock walking {WALK_DAYS} days (pop only; each popped customer is then assessed)")
    for n in sizes:
        bench_due(n, states, now, config)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10_000, 100_000, 1_000_000])
