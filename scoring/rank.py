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

import bisect
import math
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Protocol, cast

from scoring.units import DAY_MS


class Membership:
    """``move`` for an index whose ``add(key, delta)`` inserts or removes members: one member's key changed."""

    __slots__ = ()

    def add(self, key: int, delta: int = 1) -> None:
        raise NotImplementedError

    def move(self, old: int | None, new: int | None) -> None:
        """One member's key changed from ``old`` to ``new`` (None: not a member)."""
        if old == new:
            return
        if old is not None:
            self.add(old, -1)
        if new is not None:
            self.add(new, 1)


@dataclass(slots=True)
class RankIndex(Membership):
    """Counts of integer keys in ``[0, size)``; keys outside are clamped to the ends.

    ``ranked`` False: the counts only, no Fenwick tree (``from_counts(..., ranked=False)``): a part that is
    summed into another index and never ranked itself (another worker's snapshot, ``scoring.population_sums``).
    Building the tree was 95 % of decoding a snapshot, once a second per partition. Ranking such an index fails
    loudly (its tree is empty); :meth:`with_tree` gives a ranked copy."""

    size: int
    total: int = 0
    _tree: list[int] = field(default_factory=list, repr=False)
    _counts: dict[int, int] = field(default_factory=dict, repr=False)
    ranked: bool = True

    def __post_init__(self) -> None:
        if self.ranked and not self._tree:
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

    def exact(self, key: int) -> bool:
        """Ranks are exact at the key's resolution (the same question as :meth:`ExactIndex.exact`)."""
        return True

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
        tree, size = self._tree, self.size
        self._count(counts)
        for key, n in self._counts.items():  # (the index was empty: these are ``counts``, clamped)
            tree[key + 1] += n
        for i in range(1, size + 1):
            parent = i + (i & -i)
            if parent <= size:
                tree[parent] += tree[i]

    @classmethod
    def from_counts(cls, size: int, counts: dict[int, int], ranked: bool = True) -> RankIndex:
        """An index holding ``counts`` (``ranked`` False: without its tree, see the class)."""
        if ranked:
            index = cls(size)
            index.add_counts(counts)
            return index
        index = cls(size, ranked=False)
        index._count(counts)
        return index

    def _count(self, counts: Mapping[int, int]) -> None:
        """Add ``counts`` (clamped) to the counts and the total, not to the tree."""
        mine = self._counts
        for key, n in counts.items():
            if n < 0:
                raise ValueError(f"removing key {key} more often than it was added")
            if n:
                key = self.clamp(key)
                mine[key] = mine.get(key, 0) + n
                self.total += n

    def with_tree(self) -> RankIndex:
        """This index ranked: itself, or a copy with its tree built."""
        return self if self.ranked else RankIndex.from_counts(self.size, self._counts)

    def shift(self, before: Mapping[int, int], after: Mapping[int, int]) -> None:
        """A part summed into this index changed its counts from ``before`` to ``after`` (either may be empty: a
        part joins or leaves): only the keys whose counts differ are walked (a snapshot replacing the last one
        of its partition differs in few)."""
        for key, n in after.items():
            d = n - before.get(key, 0)
            if d:
                self.add(key, d)
        for key, n in before.items():
            if key not in after and n:
                self.add(key, -n)


class Counted(Protocol):
    """What a percentile needs of one part of the population: :class:`RankIndex` or :class:`ExactIndex`."""

    @property
    def total(self) -> int: ...

    def count_below(self, key: int) -> int: ...

    def count_equal(self, key: int) -> int: ...


#: an array of int64 values, the compact sorted storage of :class:`ExactIndex`
VALUES = "q"


@dataclass(slots=True)
class ExactIndex(Membership):
    """Counts of exact integer values (cents), ranked exactly at a coarse structure's cost for most lookups.

    Two levels: a :class:`RankIndex` over coarse buckets (``bucket(value)``, e.g. 1 % log buckets of
    revenue: a bounded domain, so its counts are a compact snapshot) and, per bucket, the bucket's values
    sorted in an int64 array (8 bytes a member, no Python object per value). ``count(< v)`` is the coarse
    count below v's bucket plus a bisection inside the bucket: O(log domain + log bucket).

    A live partition knows every bucket's values (``complete``). Another worker's partition, rebuilt from
    its snapshot, knows the values of only the buckets the snapshot carried (those near the score and VIP
    thresholds, see ``scoring.population``); in any other non-empty bucket its values count as equal to
    each other (the bucketed approximation), and :meth:`exact` says so. In general (several snapshots summed
    into one index, ``scoring.population_sums``) a bucket's members whose values are not held, its count
    less the values held, rank as tied with every value of the bucket: the same counts as each snapshot's
    summed.
    """

    bucket: Callable[[int], int]
    coarse: RankIndex
    complete: bool = True
    values: dict[int, array[int]] = field(default_factory=dict, repr=False)

    @property
    def total(self) -> int:
        return self.coarse.total

    def add(self, value: int, delta: int = 1) -> None:
        """Insert (delta > 0) or remove (delta < 0) ``delta`` copies of ``value``."""
        b = self.coarse.clamp(self.bucket(value))
        held = self.values.get(b)
        if held is None:
            if delta < 0:
                raise ValueError(f"removing value {value} more often than it was added")
            held = self.values[b] = array(VALUES)
        if delta == 1:  # one customer joins or moves: the common case, no temporary array
            held.insert(bisect.bisect_right(held, value), value)
        elif delta > 0:
            _put(held, value, delta)
        elif delta < 0:
            _take(held, value, -delta)
            if not held:
                del self.values[b]
        self.coarse.add(b, delta)

    def add_values(self, counts: Mapping[int, int]) -> None:
        """Insert ``counts[value]`` copies of each value (a rebuild): one sort per bucket, one tree pass."""
        per_bucket: dict[int, list[int]] = {}
        for value, n in counts.items():
            if n < 0:
                raise ValueError(f"removing value {value} more often than it was added")
            per_bucket.setdefault(self.coarse.clamp(self.bucket(value)), []).extend([value] * n)
        coarse: dict[int, int] = {}
        for b, new in per_bucket.items():
            if not new:
                continue
            held = self.values.get(b)
            merged = sorted(new if held is None else [*held, *new])
            self.values[b] = array(VALUES, merged)
            coarse[b] = len(new)
        self.coarse.add_counts(coarse)

    def unknown(self, b: int) -> int:
        """Members of (clamped) bucket ``b`` whose values are not held: tied with every value of the bucket."""
        if self.complete:
            return 0
        held = self.values.get(b)
        return self.coarse.count_equal(b) - (0 if held is None else len(held))

    def exact(self, value: int) -> bool:
        """Whether ranks of ``value`` are exact here (False only for a snapshot lacking that bucket's values)."""
        return self.complete or not self.unknown(self.coarse.clamp(self.bucket(value)))

    def count_below(self, key: int) -> int:
        return self.below_and_equal(key, self.coarse.clamp(self.bucket(key)))[0]

    def count_equal(self, key: int) -> int:
        return self.below_and_equal(key, self.coarse.clamp(self.bucket(key)))[1]

    def below_and_equal(self, key: int, b: int) -> tuple[int, int]:
        """``count_below(key)`` and ``count_equal(key)`` for ``key`` in (clamped) bucket ``b``, in one go."""
        below = self.coarse.count_below(b)
        held = self.values.get(b)
        if held is None:
            # a live partition: nobody in the bucket; a snapshot without the bucket's values: all tied
            return below, 0 if self.complete else self.coarse.count_equal(b)
        at = bisect.bisect_left(held, key)
        equal = bisect.bisect_right(held, key, at) - at
        return below + at, equal if self.complete else equal + self.coarse.count_equal(b) - len(held)

    def shift(self, before: ExactIndex | None, after: ExactIndex | None) -> None:
        """A part summed into this index (same buckets) changed from ``before`` to ``after`` (None: the part joins
        or leaves): its bucket counts are shifted, and the values of each bucket whose held values differ are
        replaced by the sum's less ``before``'s plus ``after``'s. A complete sum takes complete parts only."""
        empty: dict[int, array[int]] = {}
        old, new = (empty if before is None else before.values), (empty if after is None else after.values)
        if self.complete and not all(p is None or p.complete for p in (before, after)):
            raise ValueError("a complete index cannot sum a part whose values are not all held")
        none: dict[int, int] = {}
        self.coarse.shift(
            none if before is None else before.coarse._counts, none if after is None else after.coarse._counts
        )
        for b in old.keys() | new.keys():
            gone, came = old.get(b), new.get(b)
            if gone == came:
                continue
            held = self.values.get(b)
            if gone and came and held is not None:
                # a snapshot replacing the last one of its partition: few of a bucket's values moved, and a large
                # bucket (thousands of values at 1M customers) is patched in place, not merged and sorted again
                removed, added = Counter(gone), Counter(came)
                removed.subtract(came)
                added.subtract(gone)
                moves = [(v, n) for v, n in removed.items() if n > 0], [(v, n) for v, n in added.items() if n > 0]
                if sum(len(m) for m in moves) * PATCH_SHARE < len(held):
                    _patch(held, *moves)
                    continue
            merged = _sorted_sum(held, came, gone)
            if merged:
                self.values[b] = merged
            else:
                self.values.pop(b, None)

    def counts(self) -> dict[int, int]:
        """The coarse bucket counts (the snapshot's bucketed part, readable by every snapshot version)."""
        return self.coarse.counts()

    def encode_values(self, buckets: Iterable[int]) -> list[list[int]]:
        """The exact values of ``buckets`` for a snapshot: per bucket ``[bucket, first, d1, d2, …]``, the
        sorted values as differences (small numbers: the values of a 1 % bucket are close together)."""
        out = []
        for b in sorted(buckets):
            held = self.values.get(b)
            if held:
                out.append([b, held[0], *(held[i] - held[i - 1] for i in range(1, len(held)))])
        return out

    def with_tree(self) -> ExactIndex:
        """This index ranked: itself, or a copy whose coarse level has its tree (the values are shared)."""
        if self.coarse.ranked:
            return self
        return ExactIndex(self.bucket, self.coarse.with_tree(), self.complete, self.values)

    @classmethod
    def from_snapshot(
        cls,
        bucket: Callable[[int], int],
        size: int,
        counts: Mapping[int, int],
        encoded: Sequence[Sequence[int]] = (),
        ranked: bool = True,
    ) -> ExactIndex:
        """Another worker's partition: its bucket counts and the exact values of the buckets it sent (``ranked``
        False: the coarse counts without their tree, :class:`RankIndex`)."""
        index = cls(bucket, RankIndex.from_counts(size, dict(counts), ranked), complete=False)
        for row in encoded:
            b, values = int(row[0]), array(VALUES, accumulate(row[1:]))
            if len(values) != index.coarse.count_equal(b):
                raise ValueError(f"bucket {b}: {len(values)} values for a count of {index.coarse.count_equal(b)}")
            index.values[b] = values
        return index


#: :meth:`ExactIndex.shift` patches a bucket's values in place while the values moved, times this, are fewer than
#: the values held (each patch moves the array's tail once; a merge sorts the whole bucket in Python objects)
PATCH_SHARE = 16


def _put(held: array[int], value: int, n: int) -> None:
    """Insert ``n`` copies of ``value`` into sorted ``held``."""
    at = bisect.bisect_right(held, value)
    held[at:at] = array(VALUES, [value] * n)


def _take(held: array[int], value: int, n: int) -> None:
    """Remove ``n`` copies of ``value`` from sorted ``held`` (ValueError if it holds fewer)."""
    at = bisect.bisect_left(held, value)
    if at + n > len(held) or held[at + n - 1] != value:
        raise ValueError(f"removing value {value} more often than it was added")
    del held[at : at + n]


def _patch(held: array[int], removed: list[tuple[int, int]], added: list[tuple[int, int]]) -> None:
    """Remove ``n`` copies of each ``(value, n)`` of ``removed`` from sorted ``held``, insert those of ``added``."""
    for value, n in removed:
        _take(held, value, n)
    for value, n in added:
        _put(held, value, n)


def _sorted_sum(held: array[int] | None, add: array[int] | None, remove: array[int] | None) -> array[int]:
    """``held`` (sorted) plus the values of ``add`` less those of ``remove`` (multisets), sorted."""
    merged = sorted([*(held or ()), *(add or ())])
    if not remove:
        return array(VALUES, merged)
    left = Counter(remove)
    out = array(VALUES)
    for value in merged:
        if left.get(value):
            left[value] -= 1
        else:
            out.append(value)
    if +left:
        raise ValueError(f"removing values {sorted((+left).elements())[:5]} more often than they were added")
    return out


def rank_bucket(parts: Sequence[RankIndex], rank: int) -> int:
    """The key holding the ``rank``-th smallest member (0-based) of the union of ``parts`` (same size):
    a Fenwick descent over the summed trees, O(log domain · parts). Ranks past the end give the last key."""
    size = parts[0].size
    pos, seen = 0, 0
    step = 1 << (size.bit_length() - 1)
    while step:
        nxt = pos + step
        if nxt <= size:
            here = sum(p._tree[nxt] for p in parts)
            if seen + here <= rank:
                pos, seen = nxt, seen + here
        step >>= 1
    return min(pos, size - 1)


def _path(i: int) -> list[int]:
    """The Fenwick tree nodes whose sum is the count of keys below ``i`` (1-based node ``i`` and its parents).

    Memoised: a function of ``i`` alone, asked for every ranked key (days, order counts, revenue buckets: a few
    thousand distinct ones), and the loop was a sixth of a percentile's cost. Bounded all the same."""
    path = _PATHS.get(i)
    if path is not None:
        return path
    path = []
    j = i
    while j > 0:
        path.append(j)
        j -= j & -j
    if len(_PATHS) < _PATHS_MAX:
        _PATHS[i] = path
    return path


#: ``_path`` by node: the callers only read the lists
_PATHS: dict[int, list[int]] = {}
_PATHS_MAX = 1 << 14


def _below(trees: Sequence[list[int]], i: int) -> int:
    """The counts below node ``i`` summed over the parts' trees: one Fenwick path for all parts, each summed in C."""
    path = _path(i)
    below = 0
    for tree in trees:
        below += sum(map(tree.__getitem__, path))
    return below


#: a :class:`Union` builds its prefix table once lookups × parts × this reach the keys held over its parts (a
#: lookup walks about 16 tree nodes a part; a key held costs about as much as one node to add to the table)
TABLE_LOOKUP_SHARE = 16


class Union:
    """The union of same-domain parts (all :class:`RankIndex`, or all :class:`ExactIndex`), ranked with the
    Fenwick path walked once for all parts and summed in C: the same counts as each part's ``count_below``
    and ``count_equal`` summed (what :func:`percentile` computes for other parts), for less work on every
    re-scored customer. Holds the parts' live structures: valid as long as the parts are the population's, and
    after a part moved once :meth:`reset` (the prefix table below is a copy).

    Many lookups (a batch re-scores hundreds of customers, most with a revenue no other has): the keys held over
    all parts are summed once into a sorted table of keys and counts below each (``_table``), and a lookup is one
    bisection there instead of a Fenwick walk per part (~220 instructions a tree node, 16 nodes, every part;
    issue 18). Built once the lookups made would have paid for it (``TABLE_LOOKUP_SHARE``); the same counts."""

    __slots__ = (
        "_parts", "_exact", "_ranks", "_trees", "_counts", "_values", "_incomplete", "_first", "_per_part",
        "_table", "_lookups", "_items",
    )  # fmt: skip

    def __init__(self, parts: Sequence[RankIndex] | Sequence[ExactIndex]) -> None:
        self._parts = parts
        self._first = parts[0]
        self._exact = isinstance(self._first, ExactIndex)
        ranks: list[RankIndex] = (
            [cast(ExactIndex, p).coarse for p in parts] if self._exact else [cast(RankIndex, p) for p in parts]
        )
        self._ranks = ranks
        self._trees = [r._tree for r in ranks]
        self._counts = [r._counts for r in ranks]
        self._values = [p.values for p in parts] if self._exact else []  # type: ignore[union-attr]
        #: snapshot parts (ExactIndex.complete False): a bucket without values counts as all tied
        self._incomplete = [not p.complete for p in parts] if self._exact else []  # type: ignore[union-attr]
        #: (values, incomplete, bucket counts) of each part, zipped once: read per exact lookup
        self._per_part = list(zip(self._values, self._incomplete, self._counts, strict=False))
        #: (sorted keys held in any part, count of members below each key and, last, the total) once built
        self._table: tuple[list[int], list[int]] | None = None
        self._lookups = 0
        #: keys held over the parts (with repeats): what building the table costs
        self._items = sum(len(c) for c in self._counts)

    def reset(self) -> None:
        """A part moved: the prefix table (a copy) is built again when lookups pay for it."""
        self._table = None
        self._lookups = 0
        self._items = sum(len(c) for c in self._counts)

    def _prefix_table(self) -> tuple[list[int], list[int]] | None:
        """The prefix table (sorted keys held over the parts, members below each and, last, the total); None while
        the lookups made so far would not have paid for building it (each call counts as one)."""
        table = self._table
        if table is None:
            self._lookups += 1
            if self._lookups * len(self._counts) * TABLE_LOOKUP_SHARE < self._items:
                return None
            merged: dict[int, int] = {}
            get = merged.get
            for counts in self._counts:
                for key, n in counts.items():
                    merged[key] = get(key, 0) + n
            keys = sorted(merged)
            table = self._table = (keys, list(accumulate([merged[key] for key in keys], initial=0)))
        return table

    @staticmethod
    def supports(parts: Sequence[object]) -> bool:
        if not parts:
            return False
        kind = type(parts[0])
        if kind is RankIndex:
            return all(type(p) is RankIndex and p.size == parts[0].size for p in parts)  # type: ignore[attr-defined]
        if kind is ExactIndex:
            size = parts[0].coarse.size  # type: ignore[attr-defined]
            return all(type(p) is ExactIndex and p.coarse.size == size for p in parts)
        return False

    def percentile(self, key: int) -> float | None:
        total = 0
        for r in self._ranks:
            total += r.total
        if total == 0:
            return None
        first = self._first
        if not self._exact:
            k = cast(RankIndex, first).clamp(key)
            table = self._prefix_table()
            if table is not None:
                keys, cum = table
                i = bisect_left(keys, k)
                below = cum[i]
                equal = cum[i + 1] - below if i < len(keys) and keys[i] == k else 0
                return (below + 0.5 * equal) / total
            below = _below(self._trees, k)
            equal = 0
            for counts in self._counts:
                equal += counts.get(k, 0)
            return (below + 0.5 * equal) / total
        b = first.coarse.clamp(first.bucket(key))  # type: ignore[union-attr]
        table = self._prefix_table()
        below = _below(self._trees, b) if table is None else table[1][bisect_left(table[0], b)]
        equal = 0
        for values, incomplete, counts in self._per_part:
            held = values.get(b)
            if held is None:
                if incomplete:
                    equal += counts.get(b, 0)
                continue
            at = bisect_left(held, key)
            below += at
            if at < len(held) and held[at] == key:  # (most parts do not hold the value)
                equal += bisect_right(held, key, at) - at
            if incomplete:  # members of the bucket whose values are not held: tied (``ExactIndex.unknown``)
                equal += counts.get(b, 0) - len(held)
        return (below + 0.5 * equal) / total


def percentile(indexes: Sequence[Counted] | Counted, key: int) -> float | None:
    """Mid-rank percentile of ``key`` in the union of ``indexes`` (spec: p = (count(<v) + 0.5·count(=v)) / N)."""
    parts: Sequence[Counted] = indexes if isinstance(indexes, list | tuple) else [cast(Counted, indexes)]
    if Union.supports(parts):
        return Union(parts).percentile(key)  # type: ignore[arg-type]
    total = sum(p.total for p in parts)
    if total == 0:
        return None
    if isinstance(parts[0], ExactIndex):  # the value's bucket once for all parts
        first = parts[0]
        b = first.coarse.clamp(first.bucket(key))
        below = equal = 0
        for p in parts:
            x, y = p.below_and_equal(key, b)  # type: ignore[attr-defined]
            below += x
            equal += y
        return (below + 0.5 * equal) / total
    below = sum(p.count_below(key) for p in parts)
    equal = sum(p.count_equal(key) for p in parts)
    return (below + 0.5 * equal) / total


def score_1_to_5(p: float) -> int:
    """Spec: score = min(5, 1 + floor(5p))."""
    return min(5, 1 + math.floor(5 * p))


@dataclass(frozen=True, slots=True)
class RfmKeys:
    """How R, F and M values become rank keys (documented in docs/profile.md).

    * R: the day of the last purchase (days since 1970-01-01 UTC): exact at day resolution.
    * F: the order count, exact up to ``f_size - 1`` orders (more are ranked as that many).
    * M (and the VIP value): lifetime net revenue in exact cents (any integer, negative after refunds),
      held in an :class:`ExactIndex` whose coarse level buckets it on a log scale with ratio
      ``1 + m_relative_error`` (revenue ≤ 0 is one bucket). The buckets only size the structure and its
      snapshots: ranks are exact (see ``scoring.population`` for another worker's partitions).
    """

    r_size: int = 1 << 16  # days: up to the year 2149
    f_size: int = 1 << 14
    m_relative_error: float = 0.01
    #: revenues up to this many cents get distinct buckets (10^15: far above any customer)
    m_max_cents: int = 10**15

    @property
    def m_size(self) -> int:
        return 2 + int(math.log(self.m_max_cents) / math.log1p(self.m_relative_error))

    def r_key(self, last_purchase_ms: int) -> int:
        return last_purchase_ms // DAY_MS  # (scoring.rfm.rfm_keys computes it in line: change both)

    def f_key(self, orders: int) -> int:
        return orders  # (scoring.rfm.rfm_keys computes it in line: change both)

    def m_key(self, revenue_cents: int) -> int:
        """The coarse bucket of a revenue (an M key of the bucketed structure, before exact ranks)."""
        if revenue_cents <= 0:
            return 0
        return 1 + int(math.log(revenue_cents) / math.log1p(self.m_relative_error))

    def m_index(self) -> ExactIndex:
        return ExactIndex(self.m_key, RankIndex(self.m_size))

    def new_indexes(self) -> tuple[RankIndex, RankIndex, ExactIndex, ExactIndex]:
        """R, F, M and the VIP value measure (exact cents, like M)."""
        return RankIndex(self.r_size), RankIndex(self.f_size), self.m_index(), self.m_index()
