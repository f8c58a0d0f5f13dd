"""The summed population (scoring.population_sums) ranks like the partitions one by one.

A worker ranks every re-scored customer against ``PopulationView.parts()``: its owned partitions' parts summed,
and the other workers' last snapshots summed. These tests drive a view through what a worker meets (customers
moving, partitions rebuilt from the table after a rebalance, partitions revoked, snapshots replacing earlier
ones, a worker's own snapshot echoed back) and check, after each step, that every percentile, ``exact`` answer,
inexact count and snapshot threshold bucket equals the one computed over ``partition_parts()``, the old way.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import snapshot as snapshots
from scoring.customer import CustomerState
from scoring.footprint import diff, footprint
from scoring.population import PopulationView
from scoring.rank import ExactIndex, RankIndex
from scoring.rfm import MemberKeys, Population, Ranking, RfmConfig, rfm_scores
from scoring.units import DAY_MS

CONFIG = RfmConfig(exact_band_share=0.01)
PARTITIONS = 5
DAY0 = 20_000 * DAY_MS


def customer(rnd: random.Random, partition: int) -> CustomerState:
    """A customer of ``partition`` with a few orders (revenues that share buckets, and some equal values)."""
    state = CustomerState()
    state.partition = partition
    o = state.orders
    o.orders = rnd.randint(1, 6)
    o.revenue_cents = rnd.choice([rnd.randint(1, 10**7), rnd.choice([500, 5000, 12_345]), -rnd.randint(0, 900)])
    o.last_purchase_ms = DAY0 + rnd.randint(0, 60) * DAY_MS
    state.last_event_ms = o.last_purchase_ms
    return state


def assert_same_ranks(view: PopulationView, rnd: random.Random) -> None:
    """Every dimension's percentiles of held and random keys, ``exact``, ``inexact`` and the threshold buckets:
    equal over the sums and over the partitions one by one."""
    parts = view.partition_parts()
    summed = view.parts()
    assert len(summed) <= 2
    for name in ("r", "f", "m", "v"):
        assert sum(getattr(p, name).total for p in summed) == sum(getattr(p, name).total for p in parts)
    assert view.exact_buckets() == snapshots.exact_buckets(parts, CONFIG)
    if not parts or not sum(p.members for p in parts):
        return
    by_sums, by_parts = Ranking(summed, CONFIG), Ranking(parts, CONFIG)
    held = [v for p in parts for index in (p.m, p.v) for vs in index.values.values() for v in vs]
    keys = [
        MemberKeys(
            (DAY0 // DAY_MS) + rnd.randint(-2, 62), rnd.randint(0, 8), m, rnd.choice([m, rnd.randint(-900, 10**7)])
        )
        for m in rnd.sample(held, min(len(held), 25)) + [rnd.randint(-900, 10**7) for _ in range(10)]
    ]
    for k in keys:
        for dimension, key in enumerate((k.r, k.f, k.m, k.v)):
            assert by_sums.percentile(dimension, key) == by_parts.percentile(dimension, key), (dimension, key)
        assert rfm_scores(k, by_sums, CONFIG) == rfm_scores(k, by_parts, CONFIG)
        for dimension, key in ((2, k.m), (3, k.v)):
            index = summed[-1].m if dimension == 2 else summed[-1].v
            assert index.exact(key) == all((p.m if dimension == 2 else p.v).exact(key) for p in parts)
    assert by_sums.inexact == by_parts.inexact


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.integers(0, 5), min_size=5, max_size=60))
def test_the_sums_rank_like_the_partitions_through_moves_rebalances_and_snapshots(seed, steps):
    rnd = random.Random(seed)
    # the truth: every partition's customers, owned by a "publisher" view that holds them all
    publisher = PopulationView(CONFIG)
    for p in range(PARTITIONS):
        publisher.partition(p)
    states: dict[bytes, CustomerState] = {}
    for n in range(rnd.randint(1, 60)):
        key, state = f"C{n}".encode(), customer(rnd, rnd.randrange(PARTITIONS))
        states[key] = state
        publisher.add_state(state.partition, key, state)
    view = PopulationView(CONFIG)  # the worker under test: owns some partitions, reads the others' snapshots
    owned = set(rnd.sample(range(PARTITIONS), rnd.randint(0, PARTITIONS)))
    view.add_states(owned, states.items())
    for p in range(PARTITIONS):
        view.apply_snapshot(publisher.snapshot(p))
    assert_same_ranks(view, rnd)
    for step in steps:
        if step <= 1:  # customers move (an order, a refund, a new customer); the owner sees it live
            for _ in range(rnd.randint(1, 8)):
                key = rnd.choice([*states, f"C{len(states)}".encode()])
                old = states.get(key)
                new = customer(rnd, old.partition if old is not None else rnd.randrange(PARTITIONS))
                states[key] = new
                for holder in (publisher, view):
                    if new.partition in holder.local:
                        if old is None:
                            holder.add_state(new.partition, key, new)
                        else:
                            holder.local[new.partition].apply(diff(footprint(old, CONFIG), footprint(new, CONFIG)))
        elif step == 2:  # partitions assigned: rebuilt from the table (the rebuild drops them first)
            gained = set(rnd.sample(range(PARTITIONS), rnd.randint(1, 2)))
            view.drop(gained)
            for p in gained:
                view.partition(p)
            view.add_states(gained, states.items())
        elif step == 3:  # partitions revoked: their last snapshot counts again
            view.drop(set(rnd.sample(range(PARTITIONS), rnd.randint(1, 2))))
        elif step == 4:  # snapshots arrive: other workers' partitions, and this worker's own echoed back
            for p in rnd.sample(range(PARTITIONS), rnd.randint(1, PARTITIONS)):
                view.apply_snapshot(publisher.snapshot(p))
        else:  # every partition revoked, then one taken back
            view.drop()
            p = rnd.randrange(PARTITIONS)
            view.partition(p)
            view.add_states({p}, states.items())
        assert_same_ranks(view, rnd)
    # the live sum is the owned parts' counts added, the published sum the others' snapshots' counts added
    for total, parts in (
        (view.sums.live, [view.local[p].population for p in view.local]),
        (view.sums.published, [r.population for p, r in view.remote.items() if p not in view.local]),
    ):
        for name in ("r", "f", "m", "v"):
            expected: dict[int, int] = {}
            for part in parts:
                for k, n in getattr(part, name).counts().items():
                    expected[k] = expected.get(k, 0) + n
            assert getattr(total, name).counts() == expected


def test_a_complete_sum_refuses_a_part_with_values_not_held_and_removing_what_was_not_added():
    k = CONFIG.keys
    live = Population.empty(CONFIG)
    snapshot_part = ExactIndex.from_snapshot(k.m_key, k.m_size, {k.m_key(500): 1})
    with pytest.raises(ValueError):
        live.m.shift(None, snapshot_part)
    part = k.m_index()
    part.add(500)
    with pytest.raises(ValueError):
        live.m.shift(part, None)
    index = RankIndex(8)
    with pytest.raises(ValueError):
        index.shift({3: 1}, {})


def test_a_decoded_snapshot_holds_counts_without_trees_and_ranks_only_through_the_sums_or_with_trees():
    """Decoding a snapshot builds no Fenwick tree (95 % of its cost): its part is only summed. Ranking it alone
    fails loudly instead of answering from an empty tree; ``with_trees`` ranks it like the publisher's part."""
    rnd = random.Random(7)
    publisher = PopulationView(CONFIG)
    for n in range(40):
        state = customer(rnd, 0)
        publisher.add_state(0, f"C{n}".encode(), state)
    reader = PopulationView(CONFIG)
    reader.apply_snapshot(publisher.snapshot(0))
    part = reader.remote[0].population
    assert not part.r.ranked and not part.f.ranked and not part.m.coarse.ranked and not part.v.coarse.ranked
    assert part.r.counts() == publisher.local[0].population.r.counts()
    with pytest.raises(IndexError):
        part.r.count_below(DAY0 // DAY_MS + 30)
    ranked, live = part.with_trees(), publisher.local[0].population
    for key in range(DAY0 // DAY_MS - 1, DAY0 // DAY_MS + 62):
        assert ranked.r.count_below(key) == live.r.count_below(key)
    assert ranked.with_trees() is ranked
    for m in [v for vs in live.m.values.values() for v in vs]:
        assert Ranking([ranked], CONFIG).percentile(2, m) == Ranking(reader.parts(), CONFIG).percentile(2, m)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 900), min_size=300, max_size=1200),  # 100,000-100,900 cents: mostly one 1 % bucket
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 3000)), max_size=8),
    st.integers(1, 3),
)
def test_replacing_a_part_patches_large_buckets_in_place_with_the_same_values_as_a_merge(values, moves, others):
    """A snapshot replacing its partition's last one moves few values of a bucket: they are patched into the sum's
    (large) bucket in place; the result is the sum built again from scratch."""
    k = CONFIG.keys
    near = [100_000 + v for v in values]

    def part(vs: list[int]) -> ExactIndex:
        index = k.m_index()
        for v in vs:
            index.add(v)
        return index

    fixed = [part(near[i::others]) for i in range(1, others)]  # the other partitions, unchanged
    before = part(near[0::others])
    changed = list(near[0::others])
    for pick, new in moves:
        if changed:
            changed[pick % len(changed)] = 100_000 + new
    after = part(changed)
    total = k.m_index()
    for p in [*fixed, before]:
        total.shift(None, p)
    total.shift(before, after)
    fresh = k.m_index()
    for p in [*fixed, after]:
        fresh.shift(None, p)
    assert {b: list(vs) for b, vs in total.values.items()} == {b: list(vs) for b, vs in fresh.values.items()}
    assert total.counts() == fresh.counts()


def test_a_dropped_partition_moved_afterwards_leaves_the_live_sum_alone():
    """A revoked partition's part, still held by a caller finishing its batch, must not move the live sum."""
    rnd = random.Random(3)
    view = PopulationView(CONFIG)
    old, new = customer(rnd, 1), customer(rnd, 1)
    view.add_state(1, b"A", old)
    held = view.local[1]
    view.drop({1})
    held.apply(diff(footprint(old, CONFIG), footprint(new, CONFIG)))
    assert not view.sums.live.members and view.sums.live.r.counts() == {}
