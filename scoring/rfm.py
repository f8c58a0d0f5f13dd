"""RFM scores, segments and the VIP flag (spec: RFM, VIP flag).

The population is the customers with at least one purchase. Each member is
counted in a :class:`~scoring.rank.RankIndex` under its R and F keys and in an
:class:`~scoring.rank.ExactIndex` under its revenue (M) and VIP value in exact
cents; a customer's scores are its percentiles against the whole population
(the sum of all partitions' indexes), turned into 1–5 by the spec's convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import floor

from scoring.frozen import Value
from scoring.rank import ExactIndex, RankIndex, RfmKeys, Union, percentile
from scoring.units import DAY_MS


@dataclass(frozen=True, slots=True)
class SegmentRule:
    """A named RFM segment: inclusive score ranges for R, F and M."""

    name: str
    r: tuple[int, int] = (1, 5)
    f: tuple[int, int] = (1, 5)
    m: tuple[int, int] = (1, 5)

    def matches(self, r: int, f: int, m: int) -> bool:
        return self.r[0] <= r <= self.r[1] and self.f[0] <= f <= self.f[1] and self.m[0] <= m <= self.m[1]


HIGH_VALUE = "high_value"

#: The spec's three segments first (first match wins), then the usual named
#: RFM segments; anything else is "others".
DEFAULT_SEGMENTS: tuple[SegmentRule, ...] = (
    SegmentRule(HIGH_VALUE, r=(5, 5), f=(5, 5), m=(5, 5)),
    SegmentRule("potential", r=(4, 5), f=(3, 4), m=(3, 4)),
    SegmentRule("churn_risk", r=(1, 2), f=(1, 2), m=(3, 5)),
    SegmentRule("loyal", r=(3, 5), f=(4, 5), m=(1, 5)),
    SegmentRule("new", r=(4, 5), f=(1, 1), m=(1, 5)),
    SegmentRule("promising", r=(4, 5), f=(2, 2), m=(1, 5)),
    SegmentRule("needs_attention", r=(3, 3), f=(2, 3), m=(1, 5)),
    SegmentRule("about_to_sleep", r=(3, 3), f=(1, 1), m=(1, 5)),
    SegmentRule("at_risk", r=(1, 2), f=(3, 5), m=(1, 5)),
    SegmentRule("hibernating", r=(2, 2), f=(1, 2), m=(1, 2)),
    SegmentRule("lost", r=(1, 1), f=(1, 2), m=(1, 2)),
)
OTHERS = "others"


#: Value measures the VIP rule can rank by (spec: VIP flag).
VALUE_MEASURES = ("revenue", "profit", "clv")


@dataclass(frozen=True, slots=True)
class RfmConfig:
    keys: RfmKeys = field(default_factory=RfmKeys)
    segments: tuple[SegmentRule, ...] = DEFAULT_SEGMENTS
    #: VIP: enter when the value percentile reaches the top ``vip_enter_share``,
    #: leave only below the top ``vip_leave_share`` (hysteresis), or while in
    #: one of ``vip_segments``.
    vip_enter_share: float = 0.05
    vip_leave_share: float = 0.08
    vip_segments: frozenset[str] = frozenset({HIGH_VALUE})
    #: what "top X %" ranks: lifetime revenue, lifetime profit or predictive CLV (cents, exact like M); CLV is
    #: the one the customer's state holds as of its last assessment (``CustomerState.clv_cents``)
    vip_value: str = "revenue"
    #: a snapshot carries the exact values of the M and V buckets within this share of the population
    #: (in rank) of a score or VIP threshold; its other buckets are counts only (see ``scoring.population``)
    exact_band_share: float = 0.002

    def m_thresholds(self) -> tuple[float, ...]:
        """Percentiles where the M score changes (spec: score = min(5, 1 + floor(5p)))."""
        return tuple(k / 5 for k in range(1, 5))

    def v_thresholds(self) -> tuple[float, ...]:
        """Percentiles where the VIP flag changes (enter and leave)."""
        return tuple(sorted({1 - self.vip_leave_share, 1 - self.vip_enter_share}))


class MemberKeys(Value, frozen=True):
    """The rank keys one member is counted under: R (day), F (orders), M and the VIP value measure V (cents)."""

    r: int
    f: int
    m: int
    v: int


def rfm_keys(
    config: RfmConfig,
    last_purchase_ms: int | None,
    orders: int,
    revenue_cents: int,
    profit_cents: int | None = None,
    clv_cents: int | None = None,
) -> MemberKeys | None:
    """The keys a customer is counted under; None when not in the population (no purchase). A CLV not
    assessed yet counts as 0 (the worker assesses every customer it scores before ranking it)."""
    if orders < 1 or last_purchase_ms is None:
        return None
    measure = config.vip_value
    if measure == "revenue":
        v = revenue_cents
    elif measure == "clv":
        v = clv_cents or 0
    else:
        v = revenue_cents if profit_cents is None else profit_cents
    # RfmKeys.r_key and f_key in line (the day of the last purchase, the order count): asked two or three
    # times per scored event
    return MemberKeys(last_purchase_ms // DAY_MS, orders, revenue_cents, v)


@dataclass(slots=True)
class Population:
    """One part (a partition) of the population: its R, F, M and value indexes."""

    r: RankIndex
    f: RankIndex
    m: ExactIndex
    v: ExactIndex

    @classmethod
    def empty(cls, config: RfmConfig) -> Population:
        return cls(*config.keys.new_indexes())

    @property
    def members(self) -> int:
        return self.r.total

    def move(self, old: MemberKeys | None, new: MemberKeys | None) -> None:
        """A customer's keys changed (None: not a member); O(log domain)."""
        if old == new:
            return
        self.r.move(None if old is None else old.r, None if new is None else new.r)
        self.f.move(None if old is None else old.f, None if new is None else new.f)
        self.m.move(None if old is None else old.m, None if new is None else new.m)
        self.v.move(None if old is None else old.v, None if new is None else new.v)

    def counts(self) -> dict[str, dict[int, int]]:
        """Sparse counts of every index (M and V: per coarse bucket): the bucketed part of a snapshot."""
        return {"r": self.r.counts(), "f": self.f.counts(), "m": self.m.counts(), "v": self.v.counts()}

    @classmethod
    def from_snapshot(
        cls,
        config: RfmConfig,
        counts: dict[str, dict[int, int]],
        values: dict[str, list[list[int]]] | None = None,
        ranked: bool = True,
    ) -> Population:
        """Another worker's partition: the counts and the exact values of the M and V buckets it sent (``ranked``
        False: without the Fenwick trees, for a part only summed, ``scoring.rank.RankIndex``)."""
        k, values = config.keys, values or {}
        return cls(
            RankIndex.from_counts(k.r_size, counts["r"], ranked),
            RankIndex.from_counts(k.f_size, counts["f"], ranked),
            ExactIndex.from_snapshot(k.m_key, k.m_size, counts["m"], values.get("m", ()), ranked),
            ExactIndex.from_snapshot(k.m_key, k.m_size, counts["v"], values.get("v", ()), ranked),
        )

    def with_trees(self) -> Population:
        """This part ranked: itself, or a copy with its trees built (a snapshot decoded unranked)."""
        if self.r.ranked and self.f.ranked and self.m.coarse.ranked and self.v.coarse.ranked:
            return self
        return Population(self.r.with_tree(), self.f.with_tree(), self.m.with_tree(), self.v.with_tree())


class RfmScores(Value, frozen=True):
    r: int
    f: int
    m: int
    segment: str
    #: percentile of the VIP value measure (``RfmConfig.vip_value``)
    value_percentile: float

    @property
    def cell(self) -> str:
        return f"{self.r}{self.f}{self.m}"


#: id(rules) -> (rules, (r, f, m) -> segment): the rule tables seen (one per configuration), kept alive with their
#: memo so an id is not reused; each memo holds at most the 125 score combinations (bounded all the same)
_SEGMENTS: dict[int, tuple[tuple[SegmentRule, ...], dict[tuple[int, int, int], str]]] = {}
_SEGMENT_TABLES_MAX = 64
_SEGMENT_MEMO_MAX = 1024


def segment_for(r: int, f: int, m: int, rules: Sequence[SegmentRule]) -> str:
    """The first rule that matches, else ``OTHERS``; memoised per (immutable) rule tuple, because every re-scored
    customer asks and the answer is one of 125 score combinations."""
    if type(rules) is not tuple:
        return _first_match(r, f, m, rules)
    entry = _SEGMENTS.get(id(rules))
    if entry is None or entry[0] is not rules:
        if len(_SEGMENTS) >= _SEGMENT_TABLES_MAX:
            _SEGMENTS.clear()
        entry = _SEGMENTS[id(rules)] = (rules, {})
    memo = entry[1]
    name = memo.get((r, f, m))
    if name is None:
        name = _first_match(r, f, m, rules)
        if len(memo) < _SEGMENT_MEMO_MAX:
            memo[(r, f, m)] = name
    return name


def _first_match(r: int, f: int, m: int, rules: Sequence[SegmentRule]) -> str:
    for rule in rules:
        if rule.matches(r, f, m):
            return rule.name
    return OTHERS


_MISSING = object()


class Ranking:
    """Percentiles against the union of ``parts`` as they are now, each key's computed once.

    A batch re-scores hundreds of customers (and a sweep thousands) against one
    unchanged population, and many share a key (the same purchase day, order
    count or revenue bucket). Valid only while no part moves: build a new one
    after applying events or snapshots.
    """

    __slots__ = ("_indexes", "_memo", "_thresholds", "inexact", "_unions", "_complete")

    def __init__(self, parts: Sequence[Population], config: RfmConfig | None = None) -> None:
        self._indexes = (
            [p.r for p in parts],
            [p.f for p in parts],
            [p.m for p in parts],
            [p.v for p in parts],
        )
        #: each dimension's parts ranked together (None: parts of mixed kinds or domains, ranked one by one)
        self._unions = tuple(Union(i) if Union.supports(i) else None for i in self._indexes)
        #: M and V: every part knows every bucket's values (live partitions), so no lookup can be inexact
        self._complete = tuple(all(getattr(p, "complete", True) for p in i) for i in self._indexes)
        config = config or RfmConfig()
        m_memo: dict[int, float | None] = {}
        # VIP value = revenue: every member's V key is its M key (rfm_keys), so live parts hold the same values
        # in both indexes and V's percentiles are M's; not for snapshot parts, whose exact buckets differ
        same = config.vip_value == "revenue" and self._complete[2] and self._complete[3]
        self._memo: tuple[dict[int, float | None], ...] = ({}, {}, m_memo, m_memo if same else {})
        self._thresholds = ((), (), config.m_thresholds(), config.v_thresholds())
        #: M and V lookups whose score or VIP flag the bucketed rank may get wrong: a snapshot lacked the
        #: exact values of the value's bucket, and that bucket holds a threshold's rank
        self.inexact = 0

    def percentile(self, dimension: int, key: int) -> float | None:
        """``dimension``: 0 R, 1 F, 2 M, 3 the VIP value measure."""
        memo = self._memo[dimension]
        p = memo.get(key, _MISSING)
        if p is not _MISSING:
            return p  # type: ignore[return-value]
        indexes = self._indexes[dimension]
        union = self._unions[dimension]
        memo[key] = p = percentile(indexes, key) if union is None else union.percentile(key)
        if dimension >= 2 and not self._complete[dimension] and not all(index.exact(key) for index in indexes):
            self.inexact += self._straddles(dimension, key)
        return p

    def forget(self, dimension: int) -> None:
        """A member's key of ``dimension`` moved: its memoised percentiles (and its union's prefix table) are stale."""
        self._memo[dimension].clear()
        union = self._unions[dimension]
        if union is not None:
            union.reset()

    def _straddles(self, dimension: int, key: int) -> bool:
        """Whether a threshold's rank lies inside ``key``'s bucket (over all parts): only then can the order
        inside the bucket change the score or flag."""
        coarse = [index.coarse for index in self._indexes[dimension]]  # type: ignore[union-attr]
        b = coarse[0].clamp(self._indexes[dimension][0].bucket(key))  # type: ignore[union-attr]
        below = sum(c.count_below(b) for c in coarse)
        inside = sum(c.count_equal(b) for c in coarse)
        n = sum(c.total for c in coarse)
        return any(below <= t * n <= below + inside for t in self._thresholds[dimension])


def rfm_scores(keys: MemberKeys, parts: Sequence[Population] | Ranking, config: RfmConfig) -> RfmScores:
    """Scores of a member against the union of ``parts`` (which must include it)."""
    ranking = parts if isinstance(parts, Ranking) else Ranking(parts, config)
    # the memoised percentiles read in line (most keys of a batch were ranked for another customer already)
    memo_r, memo_f, memo_m, memo_v = ranking._memo
    p_r = memo_r.get(keys.r, _MISSING)
    if p_r is _MISSING:
        p_r = ranking.percentile(0, keys.r)
    p_f = memo_f.get(keys.f, _MISSING)
    if p_f is _MISSING:
        p_f = ranking.percentile(1, keys.f)
    p_m = memo_m.get(keys.m, _MISSING)
    if p_m is _MISSING:
        p_m = ranking.percentile(2, keys.m)
    p_v = memo_v.get(keys.v, _MISSING)
    if p_v is _MISSING:
        p_v = ranking.percentile(3, keys.v)
    if p_r is None or p_f is None or p_m is None or p_v is None:
        raise ValueError("scoring a customer against an empty population")
    # score_1_to_5 in line
    r, f, m = min(5, 1 + floor(5 * p_r)), min(5, 1 + floor(5 * p_f)), min(5, 1 + floor(5 * p_m))  # type: ignore[operator]
    return RfmScores(r, f, m, segment_for(r, f, m, config.segments), p_v)  # type: ignore[arg-type]


def vip_flag(was_vip: bool, scores: RfmScores | None, config: RfmConfig) -> bool:
    """Spec: top X % by value (enter at ``vip_enter_share``, leave below ``vip_leave_share``), or a VIP segment."""
    if scores is None:
        return False
    if scores.segment in config.vip_segments:
        return True
    share = config.vip_leave_share if was_vip else config.vip_enter_share
    return scores.value_percentile >= 1 - share
