"""Cost of exact M (and VIP value) ranks against the 1 % log-bucket index they replace, back to back.

Usage: .venv/bin/python benchmarks/exact_m_cost.py [SIZES...]   (default 10000 100000 1000000)

For each size N: N members with realistic R/F/M keys (revenue log-normal, median about 49.00) in
4 partitions, filled once with the bucketed structure (``RankIndex`` over ``RfmKeys.m_key`` for M and V,
as before issue 14) and once with the exact one (``ExactIndex``, cents). Then, for each:

Times are CPU time of this process (``time.process_time``): the box is shared, and wall time would
measure the other processes. Both structures run back to back in the same process.

* update + score: µs for one customer's R, F, M, V moves followed by scoring that customer (R, F, M
  percentiles and the VIP value percentile) against all 4 partitions;
* memory: traced peak MiB while filling the 4 partitions (the population structures only);
* exactness: a second worker owning partitions 0 and 1 and reading 2 and 3 from their snapshots scores
  a sample of members; their M scores and VIP-by-value decisions are compared with the exact
  percentile over all N values (sorted list, bisection): "off" must be 0;
* snapshot: bytes of one partition's population snapshot (what a worker publishes every
  ``PULSE_POPULATION_PUBLISH_SECONDS`` while the partition changes), ms to encode it, and ms for a
  reader to rebuild the partition from it (``PopulationView.apply_snapshot``). Bucketed: the counts
  only (the version-1 content); exact: the counts plus the exact values of the buckets near the score
  and VIP thresholds (``PULSE_RFM_EXACT_BAND_SHARE``); "all values" shows what shipping every exact
  value would cost instead.
"""

from __future__ import annotations

import bisect
import copy
import random
import sys
import time
import tracemalloc

import orjson

from scoring.footprint import FootprintDiff
from scoring.population import PopulationView
from scoring.rank import RankIndex
from scoring.rfm import MemberKeys, Population, Ranking, RfmConfig, rfm_keys, rfm_scores
from scoring.units import DAY_MS

PARTITIONS = 4
MOVES = 50_000
SNAPSHOT_REPEATS = 5
SAMPLE = 20_000
DAY0 = 20_000  # days since 1970: 2024-10-04


def random_keys(rnd: random.Random, config: RfmConfig) -> MemberKeys:
    orders = 1 + int(rnd.expovariate(1 / 4))
    revenue = int(rnd.lognormvariate(8.5, 1.2))
    last = (DAY0 + rnd.randrange(730)) * DAY_MS
    keys = rfm_keys(config, last, orders, revenue)
    assert keys is not None
    return keys


def bucketed(keys: MemberKeys, config: RfmConfig) -> MemberKeys:
    """The keys the bucketed index used: M and V as 1 % log buckets."""
    m = config.keys.m_key(keys.m)
    return MemberKeys(keys.r, keys.f, m, config.keys.m_key(keys.v))


def bucketed_population(config: RfmConfig) -> Population:
    k = config.keys
    return Population(RankIndex(k.r_size), RankIndex(k.f_size), RankIndex(k.m_size), RankIndex(k.m_size))  # type: ignore[arg-type]


def move(view: PopulationView, partition: int, old: MemberKeys | None, new: MemberKeys | None, exact: bool) -> None:
    """One member's keys moved in ``partition``: through the part (and so the view's sums) for exact indexes; a
    bucketed population is ranked part by part (``partition_parts``) and moved directly."""
    if exact:
        view.local[partition].apply(FootprintDiff(keys=(old, new)))
    else:
        view.local[partition].population.move(old, new)


def fill(members: list[MemberKeys], config: RfmConfig, exact: bool) -> tuple[PopulationView, float]:
    view = PopulationView(config)
    tracemalloc.start()
    for p in range(PARTITIONS):
        part = view.partition(p)
        if not exact:
            part.population = bucketed_population(config)
    for i, keys in enumerate(members):
        move(view, i % PARTITIONS, None, keys if exact else bucketed(keys, config), exact)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return view, peak / 2**20


def update_cost(
    view: PopulationView, members: list[MemberKeys], config: RfmConfig, exact: bool, seed: int
) -> tuple[float, list[MemberKeys]]:
    """µs per move + score, and the members' keys after the moves."""
    rnd = random.Random(seed)
    members = list(members)
    parts = view.parts() if exact else view.partition_parts()
    convert = (lambda k: k) if exact else (lambda k: bucketed(k, config))
    started = time.process_time()
    for _ in range(MOVES):
        i = rnd.randrange(len(members))
        new = random_keys(rnd, config)
        move(view, i % PARTITIONS, convert(members[i]), convert(new), exact)
        members[i] = new
        rfm_scores(convert(new), parts, config)
    return (time.process_time() - started) / MOVES * 1e6, members


def bucketed_snapshot_cost(view: PopulationView, config: RfmConfig) -> tuple[int, float, float]:
    """The version-1 snapshot (as ``PopulationView.snapshot`` wrote it before issue 14: counts only) and
    its reader (``Population.from_counts`` over four ``RankIndex``)."""
    part = view.local[0]
    started = time.process_time()
    for _ in range(SNAPSHOT_REPEATS):
        counts = part.population.counts()
        raw = orjson.dumps(
            {
                "partition": 0,
                "watermark_ms": part.watermark_ms,
                "customers": len(part.members),
                "gaps": list(part.gaps),
                "indicators": None,
                "flags": part.flag_counts(),
                **{name: [x for kv in sorted(c.items()) for x in kv] for name, c in counts.items()},
            }
        )
    encode_ms = (time.process_time() - started) / SNAPSHOT_REPEATS * 1e3
    k = config.keys
    started = time.process_time()
    for _ in range(SNAPSHOT_REPEATS):
        data = orjson.loads(raw)
        got = {name: dict(zip(data[name][::2], data[name][1::2], strict=True)) for name in ("r", "f", "m", "v")}
        for name, size in (("r", k.r_size), ("f", k.f_size), ("m", k.m_size), ("v", k.m_size)):
            RankIndex.from_counts(size, got[name])
    apply_ms = (time.process_time() - started) / SNAPSHOT_REPEATS * 1e3
    return len(raw), encode_ms, apply_ms


def snapshot_cost(view: PopulationView, config: RfmConfig, every_value: bool = False) -> tuple[int, float, float]:
    exact = view.exact_buckets()
    if every_value:
        every = set(range(config.keys.m_size))
        exact = {"m": every, "v": every}
    started = time.process_time()
    for _ in range(SNAPSHOT_REPEATS):
        exact_now = view.exact_buckets() if not every_value else exact
        raw = view.snapshot(0, exact_now)
    encode_ms = (time.process_time() - started) / SNAPSHOT_REPEATS * 1e3
    reader = PopulationView(config)
    started = time.process_time()
    for _ in range(SNAPSHOT_REPEATS):
        reader.apply_snapshot(raw)
    apply_ms = (time.process_time() - started) / SNAPSHOT_REPEATS * 1e3
    return len(raw), encode_ms, apply_ms


def exactness(
    view: PopulationView, members: list[MemberKeys], config: RfmConfig, seed: int, drift: int = 0
) -> tuple[int, int, int]:
    """(members checked, M scores or VIP decisions off, inexact lookups) for a worker that owns partitions
    0 and 1 and reads 2 and 3 from their snapshots. ``drift``: that many changes after the snapshots were
    taken, before it scores (about half of them moves of its own customers, half new customers): the
    population a publish interval of traffic later; "off" is then against the exact ranks over what the
    reader holds (its live partitions and the snapshots' partitions as of the snapshot)."""
    reader = PopulationView(config)
    for p in (0, 1):  # the reader's own partitions: copies of the view's, counted into its sums
        part = reader.local[p] = copy.deepcopy(view.local[p])
        part.total = reader.sums.live
        reader.sums.own(part.population)
    exact = view.exact_buckets()
    for p in (2, 3):
        reader.apply_snapshot(view.snapshot(p, exact))
    rnd = random.Random(seed)
    members = list(members)
    for _ in range(drift):
        i = rnd.randrange(len(members))
        if i % PARTITIONS < 2:
            new = random_keys(rnd, config)
            move(reader, i % PARTITIONS, members[i], new, exact=True)
            members[i] = new
        if len(members) % PARTITIONS < 2:  # a new customer of the reader's partitions
            joined = random_keys(rnd, config)
            move(reader, len(members) % PARTITIONS, None, joined, exact=True)
            members.append(joined)
    ranking = Ranking(reader.parts(), config)
    values = sorted(k.m for k in members)
    n = len(values)
    off = 0
    sample = rnd.sample(members, min(SAMPLE, n))
    for keys in sample:
        below = bisect.bisect_left(values, keys.m)
        p = (below + 0.5 * (bisect.bisect_right(values, keys.m) - below)) / n
        got = rfm_scores(keys, ranking, config)
        vip_ok = all((got.value_percentile >= 1 - s) == (p >= 1 - s) for s in (0.05, 0.08))
        off += got.m != min(5, 1 + int(5 * p // 1)) or not vip_ok
    return len(sample), off, ranking.inexact


def main(sizes: list[int]) -> None:
    config = RfmConfig()
    print(f"{PARTITIONS} partitions, {MOVES:,} moves; snapshot = one partition (N/{PARTITIONS} customers)")
    print(
        f"{'customers':>10} {'structure':>10} {'µs update+score':>16} {'peak MiB':>9} "
        f"{'snapshot B':>11} {'encode ms':>10} {'apply ms':>9}"
    )
    for n in sizes:
        rnd = random.Random(n)
        members = [random_keys(rnd, config) for _ in range(n)]
        for name, exact in (("bucketed", False), ("exact", True)):
            view, mib = fill(members, config, exact)
            micros, moved = update_cost(view, members, config, exact, seed=n + 1)
            size, encode_ms, apply_ms = snapshot_cost(view, config) if exact else bucketed_snapshot_cost(view, config)
            print(f"{n:>10} {name:>10} {micros:>16.1f} {mib:>9.1f} {size:>11,} {encode_ms:>10.2f} {apply_ms:>9.2f}")
            if exact:
                # the moves changed the members: score the current ones
                checked, off, inexact = exactness(view, moved, config, seed=n + 2)
                print(
                    f"{'':>10} {'':>10} exactness via snapshots: {checked:,} members checked, {off} off, "
                    f"{inexact} inexact lookups"
                )
                drift = n // 100
                checked, off, inexact = exactness(view, moved, config, seed=n + 3, drift=drift)
                print(
                    f"{'':>10} {'':>10} then {drift:,} moves and joins (1 %) before the next snapshot: "
                    f"{checked:,} checked, {off} off, {inexact} inexact lookups"
                )
                size, encode_ms, apply_ms = snapshot_cost(view, config, every_value=True)
                print(f"{n:>10} {'all values':>10} {'':>16} {'':>9} {size:>11,} {encode_ms:>10.2f} {apply_ms:>9.2f}")
            del view


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10_000, 100_000, 1_000_000])
