"""The customer population as one worker sees it, and RFM/VIP refresh of one customer.

RFM scores rank a customer against *all* customers, but a worker owns only
some partitions. :class:`PopulationView` holds:

* for each owned partition, a :class:`PartitionPopulation`: live rank indexes
  kept exact by ``move(old_keys, new_keys)`` on every applied event, the
  partition's event-time watermark, and the partition's customer keys with a
  sweep cursor;
* for every other partition, the latest snapshot its owner published
  (``snapshot`` / ``apply_snapshot``; the counts add up across partitions).

Scores are computed against the union. Each owned partition also has a clock
(spec: Clock): the event time its customers' time-driven signals are decided
at, moved by ``streams.processor`` from the watermarks of the partition's input
topic-partitions, never backwards. ``clock()`` is the highest time any
partition reached (its watermark or clock): what a partition with nothing left
to read moves to, so every worker ends on the same "now".

M and the VIP value are ranked exactly, at cent resolution (spec: the mid-rank
percentile). A live partition holds every member's exact value. A snapshot
carries the coarse bucket counts of M and V and, for the buckets within
``RfmConfig.exact_band_share`` of the population (in rank) of a score or VIP
threshold as the publisher sees the population, the exact values: the only
buckets where a customer's score or flag depends on the order *inside* a
bucket. Elsewhere the bucketed rank decides the same score. Once every worker
sees the same population (traffic stopped, snapshots exchanged), each worker's
threshold buckets are the publishers' ones: scores are exact; while traffic
moves the thresholds by more than the band between two snapshots, a lookup
may fall back to the bucket (``Ranking.inexact`` counts those).

Snapshot format (``SNAPSHOT_VERSION``): version 1 had no ``version`` field;
version 2 adds ``version`` and ``values`` (exact M/V values) and keeps every
version-1 field with its meaning, so a version-1 reader reads a version-2
snapshot at bucket resolution, a version-2 reader ranks a version-1 snapshot
at bucket resolution, and a snapshot of a later version than the reader knows
is skipped (the previous one of that partition stays).

Pure: no I/O, no Faust. The worker ships snapshots over Kafka; the offline
scorer uses one view with a single partition.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from scoring.customer import CustomerState, EventFacts, indicator_contribution
from scoring.episodes import SAVE_TAGS, state_tallies
from scoring.frozen import fast_init
from scoring.indicators import (
    ACTIVE,
    ACTIVE_AT_START,
    EMPTY,
    FLAG_TAGS,
    TAG_PREFIX,
    Contribution,
    IndicatorConfig,
    IndicatorSums,
    IndicatorValues,
    flag_tags,
    indicator_values,
)
from scoring.rank import rank_bucket
from scoring.rfm import MemberKeys, Population, Ranking, RfmConfig, RfmScores, rfm_keys, rfm_scores, vip_flag
from scoring.units import DAY_MS

#: the population snapshot format this code writes and the highest it reads (see the module docstring)
SNAPSHOT_VERSION = 2

#: (sum of t_x days, sum of repeat purchase days x, customers with x ≥ 1): the purchase gaps
#: of the population, additive over partitions (spec: Churn warning, "a population gap")
GapSums = tuple[int, int, int]
NO_GAP: GapSums = (0, 0, 0)
#: what ``tags`` gives: a plain tag counts 1, a ``(tag, n)`` pair counts n
Tags = tuple[str | tuple[str, int], ...]


def gap_sums(state: CustomerState) -> GapSums:
    p = state.purchases
    if p.periods < 2 or p.first_day is None or p.last_day is None:
        return NO_GAP
    return (p.last_day - p.first_day, p.periods - 1, 1)


def tags(state: CustomerState) -> Tags:
    """What the per-partition tallies count a customer under (metrics: segments, VIPs, risk levels; and the
    population indicators' activity flags, shipped in the snapshots). A plain tag counts 1; a ``(tag, n)`` pair
    counts n: the alert episodes' save-rate tallies (scoring.episodes), whose revenue recovered is a sum."""
    # the plain tags are a function of four small-domain values, computed twice per re-scored customer: memoised
    of = (state.churn.level, state.activity, state.segment, state.vip)
    found = _TAGS.get(of)
    if found is None:
        found = _tags(*of)
        if len(_TAGS) < _TAGS_MAX:
            _TAGS[of] = found
    if state.episodes is not None:
        return (*found, *sorted(state_tallies(state.episodes).items()))
    return found


#: the plain tags by (risk level, activity flags, segment, VIP): a few hundred combinations; bounded all the same
_TAGS: dict[tuple[str, int, str | None, bool], tuple[str, ...]] = {}
_TAGS_MAX = 4096


def _tags(level: str, activity: int, segment: str | None, vip: bool) -> tuple[str, ...]:
    out = [f"risk:{level}", *flag_tags(activity)]
    if segment is not None:
        out.append(f"segment:{segment}")
    if vip:
        out.append("vip")
    return tuple(out)


def _weights(tagged: Tags) -> Counter[str]:
    """The counts a tag tuple of ``tags`` adds to the tallies."""
    out: Counter[str] = Counter()
    for tag in tagged:
        if isinstance(tag, tuple):
            out[tag[0]] += tag[1]
        else:
            out[tag] += 1
    return out


def save_counts(tallies: Counter[str] | dict[str, int]) -> dict[str, int]:
    """The save-rate share of the tallies (scoring.episodes), shipped in the snapshots for ``pulse stats``."""
    return {tag: n for tag, n in tallies.items() if n and tag.partition(":")[0] in SAVE_TAGS}


def moves(event: EventFacts) -> tuple[bool, bool]:
    """What applying ``event`` can move: (the RFM keys and purchase gaps, the indicator day rows). Only an
    order touches the orders and purchase days the keys and gaps are made of, and an order touches neither
    the survey answers nor the ticket days the rows are made of (scoring.customer.apply_event)."""
    order = event.order is not None
    return order, not order


def member_keys(state: CustomerState, config: RfmConfig) -> MemberKeys | None:
    """The keys ``state`` is counted under (None: no purchase, not in the population)."""
    o = state.orders
    return rfm_keys(
        config, o.last_purchase_ms, o.orders, o.revenue_cents, o.revenue_cents - o.cost_cents, state.clv_cents
    )


#: stale due-heap entries tolerated before the heap is rebuilt from the index
_HEAP_SLACK = 1024


@dataclass(slots=True)
class PartitionPopulation:
    """The population part of one owned partition."""

    population: Population
    #: highest event time read from the partition (any input topic)
    watermark_ms: int | None = None
    #: the partition's clock: its customers' time-driven signals are decided at this time (spec: Clock)
    clock_ms: int | None = None
    #: every customer of the partition, in order of arrival: the sweep's list
    members: list[bytes] = field(default_factory=list)
    cursor: int = 0
    #: clock when the running sweep round started, and when the previous one did
    round_clock_ms: int | None = None
    previous_round_clock_ms: int | None = None
    #: clock of the last round that re-rendered every profile, and whether the running one does
    refreshed_clock_ms: int | None = None
    #: the population inputs of the profiles (see ``PopulationView.sweep_slice``) that round rendered with
    refreshed_inputs: object = None
    round_refresh: bool = False
    #: bumped on every change; the publisher sends a snapshot when it moved
    version: int = 0
    gaps: GapSums = NO_GAP
    #: the due-time index of the churn sweep: key -> event time of its next check,
    #: and a heap of (time, key) with stale entries skipped when popped
    due: dict[bytes, int] = field(default_factory=dict)
    due_heap: list[tuple[int, bytes]] = field(default_factory=list)
    #: customers per tag (see ``tags``), for the metrics and the population indicators
    tallies: Counter[str] = field(default_factory=Counter)
    #: per-day sums of the customers' indicator day rows (scoring.indicators)
    indicators: IndicatorSums = field(default_factory=IndicatorSums)

    def add_gaps(self, before: GapSums, after: GapSums) -> None:
        if before != after:
            g = self.gaps
            self.gaps = (g[0] - before[0] + after[0], g[1] - before[1] + after[1], g[2] - before[2] + after[2])
            self.version += 1

    def retag(self, before: Tags, after: Tags) -> None:
        if before != after:
            self.tallies.subtract(_weights(before))
            self.tallies.update(_weights(after))
            self.version += 1

    def move_indicators(self, before: Contribution, after: Contribution) -> None:
        if self.indicators.move(before, after):
            self.version += 1

    def flag_counts(self) -> dict[str, int]:
        """The activity-flag tallies (the population indicators' share of ``tallies``)."""
        return {tag: n for tag, n in self.tallies.items() if tag.startswith(TAG_PREFIX) and n}

    def schedule(self, key: bytes, due_ms: int | None) -> None:
        if due_ms is None:
            self.due.pop(key, None)
            return
        if self.due.get(key) == due_ms:
            return
        self.due[key] = due_ms
        heapq.heappush(self.due_heap, (due_ms, key))
        if len(self.due_heap) > 2 * len(self.due) + _HEAP_SLACK:
            self.due_heap = [(t, k) for k, t in self.due.items()]
            heapq.heapify(self.due_heap)

    def pop_due(self, now_ms: int, limit: int) -> list[bytes]:
        """Customers whose next check is at or before ``now_ms``, earliest first, at most ``limit``."""
        out: list[bytes] = []
        heap = self.due_heap
        while heap and heap[0][0] <= now_ms and len(out) < limit:
            due_ms, key = heapq.heappop(heap)
            if self.due.get(key) == due_ms:
                del self.due[key]
                out.append(key)
        return out

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
        return _later(self.watermark_ms, self.clock_ms)


def _later(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass(slots=True)
class RemotePart:
    """Another worker's partition, as of its last snapshot."""

    population: Population
    watermark_ms: int | None
    customers: int
    gaps: GapSums = NO_GAP
    indicators: IndicatorSums = field(default_factory=IndicatorSums)
    flags: dict[str, int] = field(default_factory=dict)
    #: the partition's clock (None in snapshots of older workers)
    clock_ms: int | None = None
    #: the save-rate tallies of its customers' alert episodes (``save_counts``; empty from older workers)
    saves: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SweepSlice:
    keys: list[bytes]
    #: re-render every profile of this round (the clock moved: see ``PopulationView.sweep_slice``)
    refresh_all: bool


class PopulationView:
    def __init__(self, config: RfmConfig, indicators: IndicatorConfig | None = None, refresh_min_ms: int = 0) -> None:
        self.config = config
        #: least event time between two rounds that re-render every profile (0: whenever the clock moved)
        self.refresh_min_ms = refresh_min_ms
        self.indicator_config = indicators or IndicatorConfig()
        self.local: dict[int, PartitionPopulation] = {}
        self.remote: dict[int, RemotePart] = {}
        self._parts: list[Population] | None = None

    # --- owned partitions -------------------------------------------------
    def partition(self, partition: int) -> PartitionPopulation:
        part = self.local.get(partition)
        if part is None:
            part = self.local[partition] = PartitionPopulation(Population.empty(self.config))
            self._parts = None
        return part

    def drop(self, partitions: set[int] | None = None) -> None:
        """Forget owned partitions (all by default): after a rebalance they are rebuilt from the table."""
        for p in list(self.local) if partitions is None else partitions:
            self.local.pop(p, None)
        self._parts = None

    def add_state(self, partition: int, key: bytes, state: CustomerState) -> None:
        """Count an existing customer (rebuilding a partition from the table)."""
        part = self.partition(partition)
        part.members.append(key)
        part.population.move(None, member_keys(state, self.config))
        part.add_gaps(NO_GAP, gap_sums(state))
        part.retag((), tags(state))
        part.move_indicators(EMPTY, indicator_contribution(state))
        part.schedule(key, state.churn.next_check_ms)
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
            keys = member_keys(state, self.config)
            if keys is not None:
                a[0][keys.r] += 1
                a[1][keys.f] += 1
                a[2][keys.m] += 1
                a[3][keys.v] += 1
            a[4][tags(state)] += 1  # customers share a handful of tag sets
            gaps = gap_sums(state)
            if gaps != NO_GAP:
                a[5][0] += gaps[0]
                a[5][1] += gaps[1]
                a[5][2] += gaps[2]
            part.indicators.add_rows(state.voice.answer_days, state.service.ticket_days)
            if state.churn.next_check_ms is not None:
                part.due[key] = state.churn.next_check_ms
            if state.last_event_ms is not None:
                part.observe(state.last_event_ms)
            n += 1
        for partition, (r, f, m, v, tag_sets, gap_totals) in acc.items():
            part = self.local[partition]
            pop = part.population
            pop.r.add_counts(r)
            pop.f.add_counts(f)
            pop.m.add_values(m)
            pop.v.add_values(v)
            for tag_set, count in tag_sets.items():
                for tag, n in _weights(tag_set).items():
                    part.tallies[tag] += n * count
            part.add_gaps(NO_GAP, (gap_totals[0], gap_totals[1], gap_totals[2]))
            part.due_heap = [(t, k) for k, t in part.due.items()]
            heapq.heapify(part.due_heap)
            part.version += 1
        return n

    def applied(
        self,
        partition: int,
        key: bytes,
        before: MemberKeys | None,
        state: CustomerState,
        new_customer: bool,
        gaps_before: GapSums = NO_GAP,
        contribution_before: Contribution = EMPTY,
        keys: bool = True,
        rows: bool = True,
    ) -> None:
        """An event changed ``state`` (whose keys were ``before``, gap sums ``gaps_before`` and indicator
        day rows ``contribution_before``). ``keys``/``rows`` False: the event cannot have moved the RFM keys
        and purchase gaps / the indicator day rows (see :func:`moves`), which are then not looked at."""
        part = self.partition(partition)
        if new_customer:
            part.members.append(key)
        if rows:
            part.move_indicators(contribution_before, indicator_contribution(state))
        if not keys:
            return
        part.add_gaps(gaps_before, gap_sums(state))
        after = member_keys(state, self.config)
        if after != before:
            part.population.move(before, after)
            part.version += 1

    def revalued(self, partition: int, before: MemberKeys | None, state: CustomerState) -> bool:
        """The customer's keys changed without an event (its CLV as the VIP value moved with the clock);
        True if they did."""
        after = member_keys(state, self.config)
        if after == before:
            return False
        part = self.partition(partition)
        part.population.move(before, after)
        part.version += 1
        return True

    # --- the whole population ---------------------------------------------
    def parts(self) -> list[Population]:
        """Owned partitions live, every other one as last published."""
        if self._parts is None:
            self._parts = [p.population for p in self.local.values()] + [
                r.population for n, r in self.remote.items() if n not in self.local
            ]
        return self._parts

    def clock(self) -> int | None:
        """The highest time any partition reached (watermark or clock): population-wide "now" (indicators), and
        where the clock of a partition with nothing left to read goes (see ``streams.processor``)."""
        marks = [p.high_ms() for p in self.local.values()] + [
            _later(r.watermark_ms, r.clock_ms) for n, r in self.remote.items() if n not in self.local
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
        flags: Counter[str] = Counter()
        for part in self.local.values():
            flags.update(part.flag_counts())
        for n, r in self.remote.items():
            if n not in self.local:
                flags.update(r.flags)
        start = flags.get(TAG_PREFIX + FLAG_TAGS[ACTIVE_AT_START], 0)
        end = flags.get(TAG_PREFIX + FLAG_TAGS[ACTIVE], 0)
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

    def indicators(self, now_ms: int | None = None) -> IndicatorValues | None:
        """The population indicators over every partition (owned ones live) at ``now_ms`` (default: the clock)."""
        now = self.clock() if now_ms is None else now_ms
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
        """The M and V buckets a snapshot carries exact values of: those holding a rank within
        ``exact_band_share`` of the population of a score (M) or VIP (V) threshold, in this view."""
        parts = self.parts()
        out: dict[str, set[int]] = {"m": set(), "v": set()}
        if not parts:
            return out
        for name, thresholds in (("m", self.config.m_thresholds()), ("v", self.config.v_thresholds())):
            coarse = [getattr(p, name).coarse for p in parts]
            n = sum(c.total for c in coarse)
            if not n:
                continue
            band = math.ceil(self.config.exact_band_share * n)
            for t in thresholds:
                lo = rank_bucket(coarse, max(0, math.floor(t * n) - band - 1))
                hi = rank_bucket(coarse, min(n - 1, math.ceil(t * n) + band))
                out[name].update(range(lo, hi + 1))
        return out

    def snapshot(self, partition: int, exact: dict[str, set[int]] | None = None) -> bytes:
        """The published state of an owned partition (``exact``: ``exact_buckets()``, computed once for a
        round of snapshots)."""
        part = self.local[partition]
        counts = part.population.counts()
        exact = self.exact_buckets() if exact is None else exact
        indicators = None
        if part.watermark_ms is not None:
            # days before the horizon are outside every window at this or any later clock
            from_day = part.watermark_ms // DAY_MS - self.indicator_config.horizon_days
            part.indicators.prune(from_day)
            indicators = part.indicators.to_json(from_day)
        pop = part.population
        return orjson.dumps(
            {
                "version": SNAPSHOT_VERSION,
                "partition": partition,
                "watermark_ms": part.high_ms(),
                "clock_ms": part.clock_ms,
                "customers": len(part.members),
                "gaps": list(part.gaps),
                "indicators": indicators,
                "flags": part.flag_counts(),
                "saves": save_counts(part.tallies),
                **{name: [x for kv in sorted(c.items()) for x in kv] for name, c in counts.items()},
                "values": {"m": pop.m.encode_values(exact["m"]), "v": pop.v.encode_values(exact["v"])},
            }
        )

    def apply_snapshot(self, raw: bytes) -> int | None:
        """Take another worker's snapshot; returns its partition (None: a later format, skipped)."""
        data = orjson.loads(raw)
        if int(data.get("version", 1)) > SNAPSHOT_VERSION:
            return None
        counts = {name: dict(zip(data[name][::2], data[name][1::2], strict=True)) for name in ("r", "f", "m", "v")}
        partition = int(data["partition"])
        self.remote[partition] = RemotePart(
            Population.from_snapshot(self.config, counts, data.get("values")),
            data["watermark_ms"],
            int(data["customers"]),
            tuple(data.get("gaps", NO_GAP)),
            IndicatorSums.from_json(data.get("indicators") or {}),
            dict(data.get("flags") or {}),
            data.get("clock_ms"),
            dict(data.get("saves") or {}),
        )
        self._parts = None
        return partition

    # --- sweep ------------------------------------------------------------
    def refresh_all(self) -> None:
        """Restart every owned partition's sweep with a round that re-renders every profile.

        For when the profile store may have lost data (Redis restarted empty).
        A worker that just started does this anyway: its first round has no
        previous round to compare the clock with.
        """
        for part in self.local.values():
            part.cursor = 0
            part.round_clock_ms = part.previous_round_clock_ms = part.refreshed_clock_ms = None
            part.refreshed_inputs = None

    def sweep_slice(self, partition: int, limit: int | None, now_ms: int, inputs: object = None) -> SweepSlice:
        """The next ``limit`` customers of an owned partition (all of them if None), round-robin.

        A round re-renders every profile when the clock or ``inputs`` (what every profile is measured
        against besides the clock and its own state: the population's purchase gap) changed since the last
        such round, and either ``refresh_min_ms`` of event time passed since then or the clock stood still
        for a whole round (traffic stopped: profiles must end as of the final clock and the final
        population). So live traffic, whose clock moves with every batch, re-renders the whole population at
        most once per ``refresh_min_ms``; once the clock stops, a population that still moves (a partition
        read behind the others, another worker's late snapshot) brings one more round each time it moved,
        until a round ran with the final one.
        """
        part = self.partition(partition)
        if part.cursor == 0:
            part.previous_round_clock_ms, part.round_clock_ms = part.round_clock_ms, now_ms
            last = part.refreshed_clock_ms
            settled = now_ms == part.previous_round_clock_ms
            moved = now_ms != last or inputs != part.refreshed_inputs
            part.round_refresh = moved and (last is None or now_ms - last >= self.refresh_min_ms or settled)
            if part.round_refresh:
                part.refreshed_clock_ms = now_ms
                part.refreshed_inputs = inputs
        end = len(part.members) if limit is None else part.cursor + limit
        keys = part.members[part.cursor : end]
        part.cursor = 0 if end >= len(part.members) else end
        return SweepSlice(keys, part.round_refresh)


@fast_init
@dataclass(frozen=True, slots=True)
class Rescored:
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
