"""RFM scores, segments and the VIP flag (spec: RFM, VIP flag).

The population is the customers with at least one purchase. Each member is
counted in three :class:`~scoring.rank.RankIndex` under its R, F and M keys;
a customer's scores are its percentiles against the whole population (the sum
of all partitions' indexes), turned into 1–5 by the spec's convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from scoring.rank import RankIndex, RfmKeys, percentile, score_1_to_5


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


@dataclass(frozen=True, slots=True)
class RfmKeyTriple:
    r: int
    f: int
    m: int


def rfm_keys(config: RfmConfig, last_purchase_ms: int | None, orders: int, revenue_cents: int) -> RfmKeyTriple | None:
    """The keys a customer is counted under; None when not in the population (no purchase)."""
    if orders < 1 or last_purchase_ms is None:
        return None
    k = config.keys
    return RfmKeyTriple(k.r_key(last_purchase_ms), k.f_key(orders), k.m_key(revenue_cents))


@dataclass(slots=True)
class Population:
    """One part (a partition) of the population: its R, F and M indexes."""

    r: RankIndex
    f: RankIndex
    m: RankIndex

    @classmethod
    def empty(cls, config: RfmConfig) -> Population:
        return cls(*config.keys.new_indexes())

    def move(self, old: RfmKeyTriple | None, new: RfmKeyTriple | None) -> None:
        """A customer's keys changed (None: not a member); O(log domain)."""
        if old == new:
            return
        self.r.move(old and old.r, new and new.r)
        self.f.move(old and old.f, new and new.f)
        self.m.move(old and old.m, new and new.m)


@dataclass(frozen=True, slots=True)
class RfmScores:
    r: int
    f: int
    m: int
    segment: str
    #: percentile of the value measure (M: lifetime revenue), for the VIP rule
    value_percentile: float

    @property
    def cell(self) -> str:
        return f"{self.r}{self.f}{self.m}"


def segment_for(r: int, f: int, m: int, rules: Sequence[SegmentRule]) -> str:
    for rule in rules:
        if rule.matches(r, f, m):
            return rule.name
    return OTHERS


def rfm_scores(keys: RfmKeyTriple, parts: Sequence[Population], config: RfmConfig) -> RfmScores:
    """Scores of a member against the union of ``parts`` (which must include it)."""
    p_r = percentile([p.r for p in parts], keys.r)
    p_f = percentile([p.f for p in parts], keys.f)
    p_m = percentile([p.m for p in parts], keys.m)
    if p_r is None or p_f is None or p_m is None:
        raise ValueError("scoring a customer against an empty population")
    r, f, m = score_1_to_5(p_r), score_1_to_5(p_f), score_1_to_5(p_m)
    return RfmScores(r, f, m, segment_for(r, f, m, config.segments), p_m)


def vip_flag(was_vip: bool, scores: RfmScores | None, config: RfmConfig) -> bool:
    """Spec: top X % by value (enter at ``vip_enter_share``, leave below ``vip_leave_share``), or a VIP segment."""
    if scores is None:
        return False
    if scores.segment in config.vip_segments:
        return True
    share = config.vip_leave_share if was_vip else config.vip_enter_share
    return scores.value_percentile >= 1 - share
