"""The population part of one owned partition: its customers' footprints summed, its clocks, its due index and sweep.

A :class:`PartitionPopulation` holds what the footprints of the partition's
customers add up to (scoring.footprint): the rank indexes (scoring.rfm
``Population``), the purchase-gap sums, the tallies and the indicator day-row
sums (scoring.indicator_sums), moved by :meth:`PartitionPopulation.apply` with
one customer's ``FootprintDiff``; and, beside them, the partition's event-time
watermark and clock (spec: Clock), its customer list with the sweep cursor
(scoring.sweep) and the due-time index of its churn re-checks
(scoring.due_index). ``version`` moves with every change, so the publisher
knows when to send a snapshot (scoring.snapshot). Pure: no I/O, no Faust.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from scoring.due_index import DueIndex
from scoring.footprint import NO_CHANGE, NO_GAP, FootprintDiff, GapSums, flag_counts
from scoring.indicator_sums import IndicatorSums
from scoring.rfm import Population
from scoring.sweep import SweepCursor


@dataclass(slots=True)
class PartitionPopulation:
    """The population part of one owned partition."""

    #: the rank indexes of the partition's ranked customers
    population: Population
    #: highest event time read from the partition (any input topic)
    watermark_ms: int | None = None
    #: the partition's clock: its customers' time-driven signals are decided at this time (spec: Clock)
    clock_ms: int | None = None
    #: every customer of the partition, in order of arrival: the sweep's list
    members: list[bytes] = field(default_factory=list)
    sweep: SweepCursor = field(default_factory=SweepCursor)
    #: bumped on every change; the publisher sends a snapshot when it moved
    version: int = 0
    gaps: GapSums = NO_GAP
    #: the due-time index of the churn re-checks
    due: DueIndex = field(default_factory=DueIndex)
    #: customers per tag (scoring.footprint.tags), for the metrics and the population indicators
    tallies: Counter[str] = field(default_factory=Counter)
    #: per-day sums of the customers' indicator day rows (scoring.indicators)
    indicators: IndicatorSums = field(default_factory=IndicatorSums)
    #: the owned partitions' parts summed (``PopulationSums.live``), moved with ``population``; None: no sum
    total: Population | None = None

    def apply(self, change: FootprintDiff) -> bool:
        """One customer's footprint changed by ``change`` (scoring.footprint.diff); True if anything moved."""
        if change is NO_CHANGE:
            return False
        moved = False
        if change.keys is not None:
            self.population.move(*change.keys)
            if self.total is not None:
                self.total.move(*change.keys)
            moved = True
        d = change.gaps
        if d != NO_GAP:
            g = self.gaps
            self.gaps = (g[0] + d[0], g[1] + d[1], g[2] + d[2])
            moved = True
        if change.rows is not None and self.indicators.move(*change.rows):
            moved = True
        if change.tags is not None:
            tallies = self.tallies
            before, after = change.tags
            for tag in before:  # a plain tag counts 1, a (tag, n) pair n (scoring.footprint.tags)
                if isinstance(tag, tuple):
                    tallies[tag[0]] -= tag[1]
                else:
                    tallies[tag] -= 1
            for tag in after:
                if isinstance(tag, tuple):
                    tallies[tag[0]] += tag[1]
                else:
                    tallies[tag] += 1
            moved = True
        if moved:
            self.version += 1
        return moved

    def flag_counts(self) -> dict[str, int]:
        """The activity-flag tallies (the population indicators' share of ``tallies``)."""
        return flag_counts(self.tallies)

    def observe(self, occurred_ms: int) -> None:
        if self.watermark_ms is None or occurred_ms > self.watermark_ms:
            self.watermark_ms = occurred_ms
            self.version += 1

    def move_clock(self, to_ms: int) -> bool:
        """Move the clock forward to ``to_ms`` (never back); True if it moved."""
        if self.clock_ms is not None and to_ms <= self.clock_ms:
            return False
        self.clock_ms = to_ms
        self.version += 1
        return True

    def high_ms(self) -> int | None:
        """The latest time the partition reached: its watermark or its clock (the idle advance)."""
        return later(self.watermark_ms, self.clock_ms)


def later(a: int | None, b: int | None) -> int | None:
    """The later of two optional times."""
    return b if a is None else a if b is None else max(a, b)
