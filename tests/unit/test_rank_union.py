"""``scoring.rank.percentile`` walks the parts' trees together: the same counts as each part's own
``count_below`` and ``count_equal`` summed (live parts, snapshots with and without a bucket's values)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.rank import ExactIndex, RankIndex, RfmKeys, Union, percentile


def rank_indexes(values: list[list[int]]) -> list[RankIndex]:
    """One RankIndex per list, holding its values (a partition's part of a population)."""
    parts = []
    for vs in values:
        index = RankIndex(256)
        for v in vs:
            index.add(v)
        parts.append(index)
    return parts


def exact_indexes(values: list[list[int]], snapshot: list[bool]) -> list[ExactIndex]:
    """One exact M index per list; where ``snapshot`` says so, as another worker's partition is held: rebuilt from
    a snapshot that keeps the values of every other bucket only."""
    k = RfmKeys()
    parts = []
    for i, vs in enumerate(values):
        index = k.m_index()
        for v in vs:
            index.add(v)
        if snapshot[i]:
            counts = index.counts()
            index = ExactIndex.from_snapshot(k.m_key, k.m_size, counts, index.encode_values(sorted(counts)[::2]))
        parts.append(index)
    return parts


def naive(parts, key: int) -> float | None:
    total = sum(p.total for p in parts)
    if not total:
        return None
    if isinstance(parts[0], ExactIndex):
        b = parts[0].coarse.clamp(parts[0].bucket(key))
        pairs = [p.below_and_equal(key, b) for p in parts]
        return (sum(x for x, _ in pairs) + 0.5 * sum(y for _, y in pairs)) / total
    return (sum(p.count_below(key) for p in parts) + 0.5 * sum(p.count_equal(key) for p in parts)) / total


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.integers(-5, 300), max_size=40), min_size=1, max_size=4),
    st.lists(st.integers(-10, 320), min_size=1, max_size=30),
)
def test_rank_index_union_equals_the_sum_of_parts(values, keys):
    parts = rank_indexes(values)
    for key in keys:
        assert percentile(parts, key) == naive(parts, key)
        assert percentile(parts[0], key) == naive(parts[:1], key)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.integers(-1000, 10**9), max_size=40), min_size=1, max_size=4),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.lists(st.integers(-1000, 10**9), min_size=1, max_size=30),
)
def test_exact_index_union_equals_the_sum_of_parts(values, snapshot, keys):
    parts = exact_indexes(values, snapshot)
    for key in keys + [v for vs in values for v in vs[:3]]:
        assert percentile(parts, key) == naive(parts, key)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(19_000, 19_400), st.integers(1, 30), st.integers(-500, 10**7), st.integers(0, 10**6)),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from(["revenue", "profit"]),
    st.booleans(),
)
def test_ranking_percentiles_equal_each_index_ranked_alone(members, vip_value, snapshot):
    from scoring.rfm import Population, Ranking, RfmConfig, rfm_keys

    config = RfmConfig(vip_value=vip_value)
    parts = [Population.empty(config) for _ in range(3)]
    keys = []
    for i, (day, orders, revenue, cost) in enumerate(members):
        k = rfm_keys(config, day * 86_400_000, orders, revenue, revenue - cost)
        parts[i % 3].move(None, k)
        keys.append(k)
    if snapshot:  # another worker's partition, with the exact values of some buckets only
        counts = parts[0].counts()
        values = {"m": parts[0].m.encode_values(sorted(counts["m"])[::2]), "v": parts[0].v.encode_values([])}
        parts[0] = Population.from_snapshot(config, counts, values)
    ranking = Ranking(parts, config)
    for k in keys:
        assert ranking.percentile(2, k.m) == percentile([p.m for p in parts], k.m)
        assert ranking.percentile(3, k.v) == percentile([p.v for p in parts], k.v)
        assert ranking.percentile(3, k.m) == percentile([p.v for p in parts], k.m)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.integers(-5, 300), max_size=40), min_size=1, max_size=4),
    st.lists(st.lists(st.integers(-1000, 10**9), max_size=40), min_size=1, max_size=4),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.lists(st.integers(-1000, 10**9), min_size=1, max_size=60),
    st.lists(st.tuples(st.integers(0, 3), st.integers(-1000, 10**9)), max_size=6),
)
def test_a_union_asked_often_ranks_from_its_prefix_table_the_same(ranked, values, snapshot, keys, moves):
    # enough lookups build the table (a batch re-scoring hundreds of customers); after a part moved, reset()
    # makes the union count from the parts again
    r_parts = rank_indexes(ranked)
    m_parts = exact_indexes(values, snapshot)
    r_union, m_union = Union(r_parts), Union(m_parts)
    asked = keys * 3 + [v for vs in values for v in vs]
    for key in asked:
        assert r_union.percentile(key % 320 - 10) == naive(r_parts, key % 320 - 10)
        assert m_union.percentile(key) == naive(m_parts, key)
    if any(p.total for p in r_parts) and len(asked) * len(r_parts) * 16 >= r_union._items:
        assert r_union._table is not None  # the lookups paid for it: built
    for part, value in moves:
        if part < len(m_parts) and m_parts[part].complete:
            m_parts[part].add(value)
            m_union.reset()
            for key in keys:
                assert m_union.percentile(key) == naive(m_parts, key)
