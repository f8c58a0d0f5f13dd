"""RFM: the incremental, partitioned rank indexes give exactly the batch (pandas) scores."""

import itertools
import random

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.rank import RankIndex, percentile, score_1_to_5
from scoring.rfm import (
    DEFAULT_SEGMENTS,
    HIGH_VALUE,
    OTHERS,
    MemberKeys,
    Population,
    Ranking,
    RfmConfig,
    RfmScores,
    SegmentRule,
    rfm_keys,
    rfm_scores,
    segment_for,
    vip_flag,
)
from scoring.units import DAY_MS

CONFIG = RfmConfig()


def test_percentile_and_score_follow_the_spec_convention():
    index = RankIndex(100)
    for v in [10, 20, 20, 30, 40]:
        index.add(v)
    # p(20) = (1 + 0.5 * 2) / 5 = 0.4 -> 1 + floor(2.0) = 3
    assert percentile(index, 20) == 0.4 and score_1_to_5(0.4) == 3
    assert percentile(index, 40) == 0.9 and score_1_to_5(0.9) == 5
    assert percentile(index, 10) == 0.1 and score_1_to_5(0.1) == 1
    assert score_1_to_5(1.0) == 5  # min(5, …)
    index.add(20, -2)
    assert percentile(index, 30) == (1 + 0.5) / 3
    with pytest.raises(ValueError):
        index.add(20, -1)


def test_keys_outside_the_domain_are_clamped_and_ranked_at_the_ends():
    index = RankIndex(8)
    index.add(-5)
    index.add(100)
    assert index.count_below(7) == 1 and index.count_equal(7) == 1 and index.count_equal(0) == 1


def test_m_keys_are_within_one_percent():
    keys = CONFIG.keys
    assert keys.m_key(0) == keys.m_key(-500) == 0
    for cents in [1, 99, 10_000, 123_456, 10**9, 10**12]:
        key = keys.m_key(cents)
        assert keys.m_key(int(cents * 1.0099)) - key in (0, 1)  # within 1 %: same or next key
        assert keys.m_key(int(cents * 1.0202) + 1) > key  # over 2 % apart: never tied


def test_segments_spec_rules_and_others():
    assert segment_for(5, 5, 5, DEFAULT_SEGMENTS) == HIGH_VALUE
    assert segment_for(4, 3, 4, DEFAULT_SEGMENTS) == "potential"
    assert segment_for(1, 2, 5, DEFAULT_SEGMENTS) == "churn_risk"
    assert segment_for(1, 1, 1, DEFAULT_SEGMENTS) == "lost"
    assert segment_for(3, 4, 1, ()) == OTHERS


def test_vip_hysteresis_enter_top_5_leave_below_top_8():
    def at(p: float, segment: str = "loyal") -> RfmScores:
        return RfmScores(4, 4, 4, segment, p)

    assert not vip_flag(False, at(0.94), CONFIG)
    assert vip_flag(False, at(0.95), CONFIG)
    assert vip_flag(True, at(0.93), CONFIG)  # still within the top 8 %
    assert not vip_flag(True, at(0.91), CONFIG)
    assert vip_flag(False, at(0.10, HIGH_VALUE), CONFIG)
    assert not vip_flag(True, None, CONFIG)


def batch_scores(customers: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, int, int]]:
    """pandas over final (last_purchase_ms, orders, revenue_cents): day, order count, exact cents."""
    keys = CONFIG.keys
    df = pd.DataFrame(
        [(c, keys.r_key(t), keys.f_key(o), m) for c, (t, o, m) in customers.items() if o >= 1],
        columns=["customer", "r", "f", "m"],
    )
    n = len(df)
    out = {}
    scored = {
        col: ((df[col].rank(method="average") - 0.5) / n).map(lambda p: min(5, 1 + int(5 * p // 1)))
        for col in ("r", "f", "m")
    }
    for i, c in enumerate(df["customer"]):
        out[c] = (int(scored["r"].iloc[i]), int(scored["f"].iloc[i]), int(scored["m"].iloc[i]))
    return out


updates = st.lists(
    st.tuples(
        st.integers(0, 30),  # customer
        st.integers(0, 400),  # day of the order
        # revenue change in cents (refunds negative); small changes make cent-level near-ties
        st.one_of(st.integers(-5_000, 200_000), st.integers(-3, 3)),
    ),
    min_size=1,
    max_size=150,
)


@settings(max_examples=150, deadline=None)
@given(updates, st.integers(1, 4))
def test_incremental_partitioned_rfm_equals_batch(rows, n_parts):
    parts = [Population.empty(CONFIG) for _ in range(n_parts)]
    state: dict[str, tuple[int, int, int]] = {}  # last_purchase_ms, orders, revenue
    placed: dict[str, object] = {}
    for c, day, cents in rows:
        cid = f"C{c}"
        last, orders, revenue = state.get(cid, (0, 0, 0))
        refund = cents < 0
        new = (last if refund else max(last, day * DAY_MS + 1), orders + (0 if refund else 1), revenue + cents)
        state[cid] = new
        old_keys = placed.get(cid)
        new_keys = rfm_keys(CONFIG, new[0] if new[1] else None, new[1], new[2])
        parts[c % n_parts].move(old_keys, new_keys)
        placed[cid] = new_keys

    expected = batch_scores(state)
    for cid, keys in placed.items():
        if keys is None:
            assert cid not in expected
            continue
        got = rfm_scores(keys, parts, CONFIG)
        assert (got.r, got.f, got.m) == expected[cid], cid


def test_partitions_merge_by_adding_counts():
    rnd = random.Random(3)
    whole = RankIndex(1000)
    parts = [RankIndex(1000) for _ in range(3)]
    for i in range(2000):
        key = rnd.randrange(1000)
        whole.add(key)
        parts[i % 3].add(key)
    merged = RankIndex.from_counts(1000, {})
    for part in parts:
        for key, n in part.counts().items():
            merged.add(key, n)
    for key in range(0, 1000, 37):
        assert percentile(parts, key) == percentile(whole, key) == percentile(merged, key)


@given(st.integers(1, 300), st.dictionaries(st.integers(-5, 320), st.integers(0, 50), max_size=120))
def test_an_index_filled_from_counts_equals_one_add_per_key(size, counts):
    """``RankIndex.add_counts`` builds the tree in one linear pass when the keys are many (a rebuild), by log
    walks when they are few: both must give the tree, counts and totals of adding each key."""
    one_by_one = RankIndex(size)
    for key, n in counts.items():
        one_by_one.add(key, n)
    bulk = RankIndex.from_counts(size, counts)
    assert (bulk.total, bulk._tree, bulk._counts) == (one_by_one.total, one_by_one._tree, one_by_one._counts)
    for key in range(-1, size + 2):
        assert bulk.count_below(key) == one_by_one.count_below(key)


# cent values with ties and cent-level near-ties: a few bases, each ± a few cents, plus anything
cents = st.one_of(
    st.sampled_from([-250, 0, 1, 999, 1_000, 1_001, 4_999, 5_000, 5_001, 123_456, 123_457]),
    st.integers(-2, 2).map(lambda d: 77_777 + d),
    st.integers(-(10**6), 10**12),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(cents, min_size=1, max_size=200),
    st.lists(st.tuples(st.integers(0, 10**6), cents), max_size=60),
    st.integers(1, 4),
)
def test_exact_index_percentiles_equal_pandas_average_rank(values, moves, n_parts):
    """``ExactIndex`` parts (live, and rebuilt from a snapshot carrying every bucket) give the spec's
    percentile of every member, as pandas ``rank(method="average")`` computes it, after random moves."""
    keys = CONFIG.keys
    parts = [keys.m_index() for _ in range(n_parts)]
    members = list(values)
    for i, v in enumerate(members):
        parts[i % n_parts].add(v)
    for pick, new in moves:
        i = pick % len(members)
        parts[i % n_parts].move(members[i], new)
        members[i] = new
    copies = [type(p).from_snapshot(keys.m_key, keys.m_size, p.counts(), p.encode_values(p.counts())) for p in parts]
    expected = (pd.Series(members).rank(method="average") - 0.5) / len(members)
    for v, p in zip(members, expected, strict=True):
        assert percentile(parts, v) == pytest.approx(p, abs=1e-12)
        assert percentile(copies, v) == percentile(parts, v)
        assert all(c.exact(v) for c in copies)
    # removing more often than added is refused, as by the bucketed index
    with pytest.raises(ValueError):
        parts[0].add(10**13 + 1, -1)


@settings(max_examples=100, deadline=None)
@given(st.lists(cents, min_size=1, max_size=300), st.integers(1, 3), st.sampled_from([0.0, 0.002, 0.05]))
def test_snapshots_with_exact_values_near_the_thresholds_score_like_batch(values, n_parts, band):
    """Another worker's partitions arrive as snapshots with exact values only near the score and VIP
    thresholds: the M score and the VIP-by-value decision of every member still equal pandas'."""
    from scoring.footprint import FootprintDiff
    from scoring.population import PopulationView

    config = RfmConfig(exact_band_share=band, vip_enter_share=0.05, vip_leave_share=0.08)
    owner, reader = PopulationView(config), PopulationView(config)
    for i, v in enumerate(values):
        owner.partition(i % n_parts).apply(FootprintDiff(keys=(None, MemberKeys(20_000, 1, v, v))))
    for p in owner.local:
        reader.apply_snapshot(owner.snapshot(p))
    ranking = Ranking(reader.parts(), config)
    expected = (pd.Series(values).rank(method="average") - 0.5) / len(values)
    for v, p in zip(values, expected, strict=True):
        got = rfm_scores(MemberKeys(20_000, 1, v, v), ranking, config)
        assert got.m == min(5, 1 + int(5 * p // 1)), v
        for share in (config.vip_enter_share, config.vip_leave_share):
            assert (got.value_percentile >= 1 - share) == (p >= 1 - share), v
    assert ranking.inexact == 0


def test_the_memoised_segment_is_the_first_matching_rule_for_every_score_combination():
    custom = (SegmentRule("top", r=(4, 5), f=(4, 5), m=(4, 5)), SegmentRule("any_low_r", r=(1, 2)))
    for rules in (DEFAULT_SEGMENTS, custom, list(custom), ()):
        for _ in range(2):  # the second round answers from the memo
            for r, f, m in itertools.product(range(1, 6), repeat=3):
                first = next((rule.name for rule in rules if rule.matches(r, f, m)), OTHERS)
                assert segment_for(r, f, m, rules) == first
