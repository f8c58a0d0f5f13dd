"""The customer population as one worker sees it, and RFM/VIP refresh of one customer.

RFM scores rank a customer against *all* customers, but a worker owns only
some partitions. :class:`PopulationView` holds:

* for each owned partition, a ``PartitionPopulation`` (scoring.partition): the
  sums of its customers' footprints (rank indexes, gap sums, tallies,
  indicator day-row sums; scoring.footprint), kept exact by applying each
  customer's ``diff(old, new)`` on every change, the partition's event-time
  watermark and clock, its members with the sweep cursor (scoring.sweep) and
  its due-time index (scoring.due_index);
* for every other partition, the latest snapshot its owner published
  (``snapshot`` / ``apply_snapshot``, scoring.snapshot: the wire format, with
  a version field, and how M and V are ranked exactly across workers).

Scores are computed against the union. Each owned partition also has a clock
(spec: Clock): the event time its customers' time-driven signals are decided
at, moved by ``streams.processor`` from the watermarks of the partition's input
topic-partitions, never backwards. ``clock()`` is the highest time any
partition reached (its watermark or clock): what a partition with nothing left
to read moves to, so every worker ends on the same "now".

Pure: no I/O, no Faust. The worker ships snapshots over Kafka; the offline
scorer uses one view with a single partition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from scoring import snapshot as snapshots
from scoring.customer import CustomerState
from scoring.footprint import (
    NO_GAP,
    NOTHING,
    FootprintDiff,
    Tags,
    diff,
    footprint,
    member_keys,
    save_counts,
    tag_weights,
)
from scoring.frozen import Value
from scoring.indicator_sums import IndicatorValues, indicator_values
from scoring.indicators import ACTIVE, ACTIVE_AT_START, FLAG_TAGS, TAG_PREFIX, IndicatorConfig
from scoring.partition import PartitionPopulation, later
from scoring.population_sums import PopulationSums
from scoring.rfm import Population, Ranking, RfmConfig, RfmScores, rfm_scores, vip_flag
from scoring.snapshot import RemotePart
from scoring.sweep import SweepSlice


class PopulationView:
    def __init__(self, config: RfmConfig, indicators: IndicatorConfig | None = None, refresh_min_ms: int = 0) -> None:
        self.config = config
        #: least event time between two rounds that re-render every profile (0: whenever the clock moved)
        self.refresh_min_ms = refresh_min_ms
        self.indicator_config = indicators or IndicatorConfig()
        self.local: dict[int, PartitionPopulation] = {}
        self.remote: dict[int, RemotePart] = {}
        #: every partition's rank indexes summed: owned ones live, the others as published
        self.sums = PopulationSums(config)

    # --- owned partitions -------------------------------------------------
    def partition(self, partition: int) -> PartitionPopulation:
        part = self.local.get(partition)
        if part is None:
            part = self.local[partition] = PartitionPopulation(Population.empty(self.config), total=self.sums.live)
            published = self.remote.get(partition)
            if published is not None:  # owned now: its live part counts instead
                self.sums.publish(published.population, None)
        return part

    def drop(self, partitions: set[int] | None = None) -> None:
        """Forget owned partitions (all by default): after a rebalance they are rebuilt from the table."""
        for p in list(self.local) if partitions is None else partitions:
            part = self.local.pop(p, None)
            if part is None:
                continue
            self.sums.disown(part.population)
            part.total = None  # (a caller still holding the dropped part moves it alone, not the live sum)
            published = self.remote.get(p)
            if published is not None:  # not owned any more: its last snapshot counts again
                self.sums.publish(None, published.population)

    def add_state(self, partition: int, key: bytes, state: CustomerState) -> None:
        """Count an existing customer (rebuilding a partition from the table): its whole footprint."""
        part = self.partition(partition)
        part.members.append(key)
        part.apply(diff(NOTHING, footprint(state, self.config)))
        part.due.schedule(key, state.churn.next_check_ms)
        if state.last_event_ms is not None:
            part.observe(state.last_event_ms)
        part.version += 1

    def add_states(self, partitions: set[int], states: Iterable[tuple[bytes, CustomerState]]) -> int:
        """Count the existing customers of ``partitions`` among ``states`` (others are skipped): the same as
        ``add_state`` for each, with each rank index filled from counts in one pass and the due-time heap
        made once. A rebuild after a rebalance counts every owned customer: a million at 1M customers."""
        #: per partition: R, F, M and V key counts, tag sets counted, gap sums
        acc: dict[int, tuple[Counter[int], Counter[int], Counter[int], Counter[int], Counter[Tags], list[int]]] = {}
        n = 0
        for key, state in states:
            partition = state.partition
            if partition not in partitions:
                continue
            part = self.partition(partition)
            a = acc.get(partition)
            if a is None:
                a = acc[partition] = (Counter(), Counter(), Counter(), Counter(), Counter(), [0, 0, 0])
            part.members.append(key)
            own = footprint(state, self.config)
            keys = own.keys
            if keys is not None:
                a[0][keys.r] += 1
                a[1][keys.f] += 1
                a[2][keys.m] += 1
                a[3][keys.v] += 1
            a[4][own.tags] += 1  # customers share a handful of tag sets
            gaps = own.gaps
            if gaps != NO_GAP:
                a[5][0] += gaps[0]
                a[5][1] += gaps[1]
                a[5][2] += gaps[2]
            part.indicators.add_rows(own.rows.voice, own.rows.tickets)
            if state.churn.next_check_ms is not None:
                part.due[key] = state.churn.next_check_ms
            if state.last_event_ms is not None:
                part.observe(state.last_event_ms)
            n += 1
        for partition, (r, f, m, v, tag_sets, gap_totals) in acc.items():
            part = self.local[partition]
            for pop in (part.population, self.sums.live):  # the part, and the owned parts' sum with it
                pop.r.add_counts(r)
                pop.f.add_counts(f)
                pop.m.add_values(m)
                pop.v.add_values(v)
            for tag_set, count in tag_sets.items():
                for tag, k in tag_weights(tag_set).items():
                    part.tallies[tag] += k * count
            part.apply(FootprintDiff(gaps=(gap_totals[0], gap_totals[1], gap_totals[2])))
            part.due.reheap()
            part.version += 1
        return n

    # --- the whole population ---------------------------------------------
    def parts(self) -> list[Population]:
        """The population to rank against, summed (scoring.population_sums): owned partitions live, every other
        one as last published; the same counts as :meth:`partition_parts`, in at most two parts."""
        return self.sums.parts()

    def partition_parts(self) -> list[Population]:
        """Each partition's part, ranked on its own: owned partitions live, every other one as last published
        (decoded without trees: built here, for tests and benchmarks that rank the partitions one by one)."""
        return [p.population for p in self.local.values()] + [
            r.population.with_trees() for n, r in self.remote.items() if n not in self.local
        ]

    def clock(self) -> int | None:
        """The highest time any partition reached (watermark or clock): population-wide "now" (indicators), and
        where the clock of a partition with nothing left to read goes (see ``streams.processor``)."""
        marks = [p.high_ms() for p in self.local.values()] + [
            later(r.watermark_ms, r.clock_ms) for n, r in self.remote.items() if n not in self.local
        ]
        present = [m for m in marks if m is not None]
        return max(present) if present else None

    def clock_of(self, partition: int) -> int | None:
        """The clock of an owned partition: its customers' "now" (spec: Clock)."""
        part = self.local.get(partition)
        return None if part is None else part.clock_ms

    def customers(self) -> int:
        return sum(p.members for p in self.parts())

    def gap_days(self, min_customers: int) -> float | None:
        """Mean days between repeat purchase days over the whole population (None: too few repeat customers)."""
        sums = [p.gaps for p in self.local.values()] + [r.gaps for n, r in self.remote.items() if n not in self.local]
        days, periods, customers = (sum(col) for col in zip(NO_GAP, *sums, strict=True))
        return days / periods if customers >= min_customers and periods else None

    def period_churn_rate(self, min_customers: int) -> float | None:
        """The population's churn rate (S − E) / S over the indicators' period, from the activity-flag tallies
        (the same as ``indicators().churn_rate``, without the day rows); None while fewer than
        ``min_customers`` were active at the period's start."""
        # the two tallies it needs, read directly: computed once per batch (``BatchProcessor._population_stands``),
        # copying every partition's flag tallies cost as much as a small live batch's scoring
        start_tag, end_tag = TAG_PREFIX + FLAG_TAGS[ACTIVE_AT_START], TAG_PREFIX + FLAG_TAGS[ACTIVE]
        start = end = 0
        for part in self.local.values():
            start += part.tallies.get(start_tag, 0)
            end += part.tallies.get(end_tag, 0)
        for n, r in self.remote.items():
            if n not in self.local:
                start += r.flags.get(start_tag, 0)
                end += r.flags.get(end_tag, 0)
        return (start - end) / start if start and start >= min_customers else None

    def owned_customers(self) -> int:
        return sum(len(p.members) for p in self.local.values())

    def tallies(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for part in self.local.values():
            total.update(part.tallies)
        return total

    def save_counts(self) -> dict[str, int]:
        """The save-rate tallies of every partition (owned ones live, the others as last published)."""
        total: Counter[str] = Counter()
        for part in self.local.values():
            total.update(save_counts(part.tallies))
        for n, r in self.remote.items():
            if n not in self.local:
                total.update(r.saves)
        return {tag: n for tag, n in total.items() if n}

    def indicator_time(self) -> int | None:
        """Spec (Clock): population indicators are decided on the low watermark over all partitions: the lowest
        clock of any partition (owned ones live, the others as last published; the watermark of a snapshot from
        a worker too old to publish its clock), None while no partition has one. A partition clock already lets
        caught-up topic-partitions go (it follows the highest time once nothing of it is left to read), so only
        a partition still reading behind the others holds this back: in a backlog the highest time is months
        ahead of the slowest partition, whose events of those months are not read yet, and windows ending there
        would count only the fast partitions' customers."""
        times = [p.clock_ms for p in self.local.values()] + [
            r.watermark_ms if r.clock_ms is None else r.clock_ms for n, r in self.remote.items() if n not in self.local
        ]
        present = [t for t in times if t is not None]
        return min(present) if present else None

    def indicators(self, now_ms: int | None = None) -> IndicatorValues | None:
        """The population indicators over every partition (owned ones live) at ``now_ms`` (default: the
        indicator time, :meth:`indicator_time`)."""
        now = self.indicator_time() if now_ms is None else now_ms
        if now is None:
            return None
        sums = [p.indicators for p in self.local.values()]
        flags: Counter[str] = Counter()
        for part in self.local.values():
            flags.update(part.flag_counts())
        for n, r in self.remote.items():
            if n not in self.local:
                sums.append(r.indicators)
                flags.update(r.flags)
        return indicator_values(sums, flags, now, self.indicator_config)

    # --- snapshots --------------------------------------------------------
    def exact_buckets(self) -> dict[str, set[int]]:
        """The M and V buckets a snapshot carries exact values of, in this view (scoring.snapshot)."""
        return snapshots.exact_buckets(self.parts(), self.config)

    def snapshot(self, partition: int, exact: dict[str, set[int]] | None = None) -> bytes:
        """The published state of an owned partition (``exact``: ``exact_buckets()``, computed once for a
        round of snapshots)."""
        exact = self.exact_buckets() if exact is None else exact
        return snapshots.encode(partition, self.local[partition], exact, self.indicator_config, self.indicator_time())

    def apply_snapshot(self, raw: bytes) -> int | None:
        """Take another worker's snapshot; returns its partition (None: a later format, skipped)."""
        decoded = snapshots.decode(raw, self.config)
        if decoded is None:
            return None
        partition, part = decoded
        before = self.remote.get(partition)
        self.remote[partition] = part
        if partition not in self.local:
            self.sums.publish(None if before is None else before.population, part.population)
        return partition

    # --- sweep ------------------------------------------------------------
    def refresh_all(self) -> None:
        """Restart every owned partition's sweep with a round that re-renders every profile.

        For when the profile store may have lost data (Redis restarted empty).
        A worker that just started does this anyway: its first round has no
        previous round to compare the clock with.
        """
        for part in self.local.values():
            part.sweep.restart()

    def sweep_slice(self, partition: int, limit: int | None, now_ms: int, inputs: object = None) -> SweepSlice:
        """The next ``limit`` customers of an owned partition (all of them if None), round-robin, and whether
        this round re-renders every profile (scoring.sweep.SweepCursor.next_slice: when the clock or ``inputs``
        moved, at most once per ``refresh_min_ms`` of event time while the clock moves)."""
        part = self.partition(partition)
        return part.sweep.next_slice(part.members, limit, now_ms, inputs, self.refresh_min_ms)


class Rescored(Value, frozen=True):
    scores: RfmScores | None
    #: the stored scores, segment or VIP flag changed (the state must be written)
    changed: bool
    vip_changed: bool


def rescore(state: CustomerState, parts: list[Population] | Ranking, config: RfmConfig) -> Rescored:
    """Refresh the RFM cell, segment and VIP flag stored in ``state`` against the population (``parts``, or a
    :class:`Ranking` of them that the caller re-uses while the population stands still)."""
    keys = member_keys(state, config)
    scores = None if keys is None else rfm_scores(keys, parts, config)
    cell = None if scores is None else scores.cell
    segment = None if scores is None else scores.segment
    vip = vip_flag(state.vip, scores, config)
    vip_changed = vip != state.vip
    changed = vip_changed or cell != state.rfm_cell or segment != state.segment
    if changed:
        state.rfm_cell, state.segment, state.vip = cell, segment, vip
        if vip_changed:
            state.vip_changes += 1
    return Rescored(scores, changed, vip_changed)
