"""``scoring.rank.percentile`` walks the parts' trees together: the same counts as each part's own
``count_below`` and ``count_equal`` summed (live parts, snapshots with and without a bucket's values)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.rank import ExactIndex, RankIndex, RfmKeys, percentile


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
    parts = []
    for vs in values:
        index = RankIndex(256)
        for v in vs:
            index.add(v)
        parts.append(index)
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
    k = RfmKeys()
    parts = []
    for i, vs in enumerate(values):
        index = k.m_index()
        for v in vs:
            index.add(v)
        if snapshot[i]:  # another worker's partition: the values of every other bucket only
            counts = index.counts()
            index = ExactIndex.from_snapshot(k.m_key, k.m_size, counts, index.encode_values(sorted(counts)[::2]))
        parts.append(index)
    for key in keys + [v for vs in values for v in vs[:3]]:
        assert percentile(parts, key) == naive(parts, key)
