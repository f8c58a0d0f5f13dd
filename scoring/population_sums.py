"""The population's rank indexes summed: what every re-scored customer is ranked against, one walk per dimension.

A customer's R, F, M and VIP-value percentiles are against the whole population, the sum of every partition's
part (scoring.rfm ``Population``). Ranked part by part, a lookup walks one Fenwick path per part, and a batch's
prefix table merges every part's keys again once the population moved: at 64 partitions that was a third of a
live event's processor (docs/benchmarks.md, session 26). :class:`PopulationSums` keeps the sum instead, in two
parts whatever the partitions:

* ``live``: the owned partitions' parts summed, moved with every customer's move (``PartitionPopulation.apply``
  moves its part and this sum), complete like each of them;
* ``published``: the other workers' partitions as last published, summed; a snapshot replacing the last one of
  its partition shifts only the keys whose counts differ (``RankIndex.shift``), and its M and V buckets without
  values stay tied (``ExactIndex.unknown``), as in the snapshot itself.

The counts are the parts' counts added, so every percentile, ``exact`` answer and threshold bucket is the same
as ranking the parts one by one (tests/unit/test_population_sums.py checks it on random moves, rebuilds,
rebalances and snapshots). A partition is in exactly one of the two sums while the view holds it: live while
owned, published otherwise. Pure: no I/O, no Faust.
"""

from __future__ import annotations

from scoring.rank import ExactIndex, RankIndex
from scoring.rfm import Population, RfmConfig


class PopulationSums:
    """The owned partitions' parts summed (``live``) and the other workers' published parts summed
    (``published``)."""

    __slots__ = ("live", "published")

    def __init__(self, config: RfmConfig) -> None:
        self.live = Population.empty(config)
        k = config.keys
        self.published = Population(
            RankIndex(k.r_size),
            RankIndex(k.f_size),
            ExactIndex(k.m_key, RankIndex(k.m_size), complete=False),
            ExactIndex(k.m_key, RankIndex(k.m_size), complete=False),
        )

    def parts(self) -> list[Population]:
        """The non-empty sums (the live one alone while nothing is held): what to rank against."""
        held = [p for p in (self.live, self.published) if p.members]
        return held or [self.live]

    def own(self, part: Population) -> None:
        """An owned partition's part joins the live sum (a rebuilt partition's whole part at once)."""
        _shift(self.live, None, part)

    def disown(self, part: Population) -> None:
        """An owned partition's part leaves the live sum (the partition was revoked)."""
        _shift(self.live, part, None)

    def publish(self, before: Population | None, after: Population | None) -> None:
        """Another worker's partition changed from ``before`` to ``after`` in the published sum (None: it was not
        in it, or leaves it)."""
        _shift(self.published, before, after)


def _shift(total: Population, before: Population | None, after: Population | None) -> None:
    """``total`` less ``before`` plus ``after``, index by index."""
    empty: dict[int, int] = {}
    total.r.shift(empty if before is None else before.r._counts, empty if after is None else after.r._counts)
    total.f.shift(empty if before is None else before.f._counts, empty if after is None else after.f._counts)
    total.m.shift(None if before is None else before.m, None if after is None else after.m)
    total.v.shift(None if before is None else before.v, None if after is None else after.v)
