"""Percentile ranks over a population that changes one customer at a time.

RFM scores are relative to the whole population, so every purchase moves a
customer's value and may shift everyone's percentile. :class:`RankIndex`
keeps the population's values as counts in a Fenwick tree over a fixed,
bounded domain of integer keys: insert and remove are O(log domain) and so is
``count(< key)``, whatever the number of customers. Indexes over disjoint
parts of the population (partitions, workers) add up: the population's rank of
a key is the sum of the parts' counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DAY_MS = 86_400_000


@dataclass(slots=True)
class RankIndex:
    """Counts of integer keys in ``[0, size)``; keys outside are clamped to the ends."""

    size: int
    total: int = 0
    _tree: list[int] = field(default_factory=list, repr=False)
    _counts: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self._tree:
            self._tree = [0] * (self.size + 1)

    def clamp(self, key: int) -> int:
        return 0 if key < 0 else self.size - 1 if key >= self.size else key

    def add(self, key: int, delta: int = 1) -> None:
        """Insert (delta > 0) or remove (delta < 0) ``delta`` values equal to ``key``."""
        key = self.clamp(key)
        left = self._counts.get(key, 0) + delta
        if left < 0:
            raise ValueError(f"removing key {key} more often than it was added")
        if left:
            self._counts[key] = left
        else:
            self._counts.pop(key, None)
        self.total += delta
        i = key + 1
        tree = self._tree
        while i <= self.size:
            tree[i] += delta
            i += i & -i

    def move(self, old: int | None, new: int | None) -> None:
        """One member's key changed from ``old`` to ``new`` (None: not a member)."""
        if old == new:
            return
        if old is not None:
            self.add(old, -1)
        if new is not None:
            self.add(new, 1)

    def count_below(self, key: int) -> int:
        """Number of members with a key < ``key``."""
        i = self.clamp(key)
        tree = self._tree
        total = 0
        while i > 0:
            total += tree[i]
            i -= i & -i
        return total

    def count_equal(self, key: int) -> int:
        return self._counts.get(self.clamp(key), 0)

    def counts(self) -> dict[int, int]:
        """The non-zero counts: a compact, mergeable snapshot."""
        return dict(self._counts)

    def add_counts(self, counts: dict[int, int]) -> None:
        """Insert ``counts[key]`` values of each key: the same as ``add`` for each; into an empty index with
        many distinct keys, one linear pass over the tree instead of a log-domain walk per key (a rebuild)."""
        if self.total or len(counts) * self.size.bit_length() < self.size:
            # few keys (a snapshot's sparse counts, an empty partition): a log walk each is cheaper
            for key, n in counts.items():
                self.add(key, n)
            return
        tree, size, mine = self._tree, self.size, self._counts
        for key, n in counts.items():
            if n < 0:
                raise ValueError(f"removing key {key} more often than it was added")
            if n:
                key = self.clamp(key)
                mine[key] = mine.get(key, 0) + n
                tree[key + 1] += n
                self.total += n
        for i in range(1, size + 1):
            parent = i + (i & -i)
            if parent <= size:
                tree[parent] += tree[i]

    @classmethod
    def from_counts(cls, size: int, counts: dict[int, int]) -> RankIndex:
        index = cls(size)
        index.add_counts(counts)
        return index


def percentile(indexes: list[RankIndex] | RankIndex, key: int) -> float | None:
    """Mid-rank percentile of ``key`` in the union of ``indexes`` (spec: p = (count(<v) + 0.5·count(=v)) / N)."""
    parts = [indexes] if isinstance(indexes, RankIndex) else indexes
    total = sum(p.total for p in parts)
    if total == 0:
        return None
    below = sum(p.count_below(key) for p in parts)
    equal = sum(p.count_equal(key) for p in parts)
    return (below + 0.5 * equal) / total


def score_1_to_5(p: float) -> int:
    """Spec: score = min(5, 1 + floor(5p))."""
    return min(5, 1 + math.floor(5 * p))


@dataclass(frozen=True, slots=True)
class RfmKeys:
    """How R, F and M values become rank keys (all bounded domains, documented in the README).

    * R: the day of the last purchase (days since 1970-01-01 UTC): exact at day resolution.
    * F: the order count, exact up to ``f_size - 1`` orders (more are ranked as that many).
    * M: lifetime net revenue in cents on a log scale with ratio ``1 + m_relative_error``:
      two revenues within that ratio of each other rank as equal. Revenue ≤ 0 is one key.
    """

    r_size: int = 1 << 16  # days: up to the year 2149
    f_size: int = 1 << 14
    m_relative_error: float = 0.01
    #: revenues up to this many cents get distinct keys (10^15: far above any customer)
    m_max_cents: int = 10**15

    @property
    def m_size(self) -> int:
        return 2 + int(math.log(self.m_max_cents) / math.log1p(self.m_relative_error))

    def r_key(self, last_purchase_ms: int) -> int:
        return last_purchase_ms // DAY_MS

    def f_key(self, orders: int) -> int:
        return orders

    def m_key(self, revenue_cents: int) -> int:
        if revenue_cents <= 0:
            return 0
        return 1 + int(math.log(revenue_cents) / math.log1p(self.m_relative_error))

    def new_indexes(self) -> tuple[RankIndex, RankIndex, RankIndex, RankIndex]:
        """R, F, M and the VIP value measure (which uses M's log scale)."""
        return RankIndex(self.r_size), RankIndex(self.f_size), RankIndex(self.m_size), RankIndex(self.m_size)
