"""Population indicators (spec: Population indicators; Loyalty and satisfaction; Service), from bounded state.

The table of customer states is the only durable state of a worker, so every
population number here is a sum over *customers' contributions*, each a pure
function of one customer's state (and, for the activity flags, of the clock):

* **day rows** kept in the customer's state, pruned to the windows:
  ``VoiceState.answer_days`` (day -> promoters, passives, detractors,
  satisfied CSAT answers, CSAT answers, complaints) and
  ``ServiceState.ticket_days`` (day -> tickets opened, tickets resolved, and
  first-response durations as (histogram bucket, count) pairs). A partition's
  sums are per-day sums of its customers' rows, kept exact by before/after
  deltas (:meth:`IndicatorSums.move`) and rebuilt from the table after a
  rebalance. A rolling window at the clock is then a sum over the last N day
  rows: time passing needs no per-customer work.
* **activity flags** (active now, active at the period's start, new in the
  period, repeat buyer), which change with time alone: each customer's flags
  are stored in its state as evaluated at some clock, counted per partition
  like the RFM segments, and :func:`activity` also returns the next event
  time at which one flips, so the due-time index re-evaluates the customer then.

Partition sums add up across partitions and workers (the population
snapshots carry them), and :func:`indicator_values` turns the merged sums
into the spec's numbers at the clock. Pure: no I/O, no Faust.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from scoring.clv import PurchaseDays
from scoring.frozen import fast_init
from scoring.units import DAY_MS

PERCENT = 100

# --- per-day rows ---------------------------------------------------------

#: columns of a voice day row
PROMOTERS, PASSIVES, DETRACTORS, CSAT_SATISFIED, CSAT_ANSWERS, COMPLAINTS = range(6)
VOICE_COLUMNS = 6
#: a ticket day row is [opened, resolved, bucket, count, bucket, count, …] (response pairs sorted by bucket)
OPENED, RESOLVED = 0, 1
TICKET_HEAD = 2
#: a ticket mark's slot: OPENED, RESOLVED, or RESPONSE_SLOT + histogram bucket of a first response
RESPONSE_SLOT = 2


@lru_cache(maxsize=16)
def response_edges_ms(min_seconds: float, buckets_per_doubling: int, buckets: int) -> tuple[int, ...]:
    """Upper edges (ms) of the first-response histogram: log-spaced, ``buckets_per_doubling`` per doubling
    from ``min_seconds``. Bucket i holds durations in (edge[i−1], edge[i]]; bucket 0 holds [0, edge[0]];
    bucket ``buckets`` holds everything longer than the last edge."""
    base = min_seconds * 1000
    return tuple(round(base * 2 ** (i / buckets_per_doubling)) for i in range(buckets))


#: default histogram: 1 minute, 4 buckets per doubling (edges about 19 % apart), 64 edges (up to ~38 days)
DEFAULT_RESPONSE_MIN_SECONDS = 60.0
DEFAULT_RESPONSE_BUCKETS_PER_DOUBLING = 4
DEFAULT_RESPONSE_BUCKETS = 64
DEFAULT_RESPONSE_EDGES_MS = response_edges_ms(
    DEFAULT_RESPONSE_MIN_SECONDS, DEFAULT_RESPONSE_BUCKETS_PER_DOUBLING, DEFAULT_RESPONSE_BUCKETS
)


def response_bucket(duration_ms: int, edges: Sequence[int]) -> int:
    return bisect.bisect_left(edges, max(0, duration_ms))


def add_voice_row(days: dict[int, list[int]], day: int, row: Sequence[int], window_days: int) -> None:
    """Count ``row`` on ``day`` in a customer's voice rows, pruned to ``window_days`` before the newest day.

    Rows are replaced, never mutated (copy-on-write), so a shallow copy of the
    dict is a snapshot of the contribution (see :func:`contribution`). Voice
    rows only grow, so the newest day never moves back and pruning is exact:
    the clock is at or after every event time, so a pruned day is outside the
    window at every later clock.
    """
    newest = max(days, default=day)
    if day <= newest - window_days:
        return
    old = days.get(day)
    days[day] = list(row) if old is None else [a + b for a, b in zip(old, row, strict=True)]
    if day > newest:
        for gone in [d for d in days if d <= day - window_days]:
            del days[gone]


def ticket_row_add(row: list[int] | None, slot: int, delta: int) -> list[int] | None:
    """A new ticket row with ``delta`` added at ``slot`` (None: the row is all zero)."""
    out = [0, 0] if row is None else list(row)
    if slot < RESPONSE_SLOT:
        out[slot] += delta
    else:
        bucket = slot - RESPONSE_SLOT
        pairs = dict(zip(out[TICKET_HEAD::2], out[TICKET_HEAD + 1 :: 2], strict=True))
        n = pairs.get(bucket, 0) + delta
        if n:
            pairs[bucket] = n
        else:
            pairs.pop(bucket, None)
        out = out[:TICKET_HEAD] + [x for b in sorted(pairs) for x in (b, pairs[b])]
    return out if any(out) else None


# --- one customer's contribution -----------------------------------------


@fast_init
@dataclass(frozen=True, slots=True)
class Contribution:
    """A customer's day rows as they were (shallow copies: the rows themselves are never mutated)."""

    voice: Mapping[int, list[int]]
    tickets: Mapping[int, list[int]]


EMPTY = Contribution({}, {})


def contribution(voice_days: dict[int, list[int]], ticket_days: dict[int, list[int]]) -> Contribution:
    return Contribution(dict(voice_days), dict(ticket_days))


# --- activity flags ----------------------------------------------------------

ACTIVE, ACTIVE_AT_START, NEW, REPEAT = 1, 2, 4, 8
#: tag names the per-partition tallies count flags under ("lost": active at the start, not now)
FLAG_TAGS = {ACTIVE: "active", ACTIVE_AT_START: "start", NEW: "new", REPEAT: "repeat"}
LOST_TAG = "lost"
TAG_PREFIX = "ind:"


def flag_tags(flags: int) -> tuple[str, ...]:
    out = [TAG_PREFIX + name for bit, name in FLAG_TAGS.items() if flags & bit]
    if flags & ACTIVE_AT_START and not flags & ACTIVE:
        out.append(TAG_PREFIX + LOST_TAG)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class IndicatorConfig:
    #: NPS and CSAT over the answers of this many days (spec: 90)
    survey_window_days: int = 90
    #: the period of the rates: retention, churn, new and lost customers, complaints, tickets (spec: 30)
    period_days: int = 30
    #: active customer = a purchase within this many days (spec: 365)
    activity_days: int = 365
    response_edges_ms: tuple[int, ...] = DEFAULT_RESPONSE_EDGES_MS
    #: first-response quantiles reported, in percent
    quantiles: tuple[int, ...] = (50, 90)

    @property
    def voice_window_days(self) -> int:
        """Days of voice rows a customer keeps: NPS/CSAT need the survey window, complaints the period."""
        return max(self.survey_window_days, self.period_days)

    @property
    def horizon_days(self) -> int:
        """Day rows older than the clock's day minus this are outside every window."""
        return max(self.survey_window_days, self.period_days)


def _intervals(p: PurchaseDays, start_offset: int, length: int) -> list[tuple[int, int]]:
    """Merged day intervals [s, e) of clocks at which a purchase lies in (day − start_offset − length,
    day − start_offset]. Purchase days beyond the remembered ones (a customer with more distinct days
    than ``PurchaseDays`` keeps) lie somewhere between the first day and the oldest remembered one: that
    whole range is assumed to hold purchases (an approximation that default settings never reach for
    the period start, see docs/indicators.md, Approximations)."""
    if p.first_day is None:
        return []
    known = sorted(set(p.recent_days) | {p.first_day})
    raw = [(d + start_offset, d + start_offset + length) for d in known]
    oldest_recent = p.recent_days[0] if p.recent_days else p.first_day
    if p.periods > len(known) and oldest_recent - p.first_day > 1:
        raw.append((p.first_day + 1 + start_offset, oldest_recent - 1 + start_offset + length))
    raw.sort()
    merged: list[tuple[int, int]] = []
    for s, e in raw:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _first_interval_ending_after(p: PurchaseDays, start_offset: int, length: int, today: int) -> tuple[int, int] | None:
    """The first of ``_intervals(p, start_offset, length)`` that ends after ``today`` (None: none does).

    Why not ``_intervals`` itself: it was most of ``activity``'s cost, on every assessment. When every purchase
    day is remembered (no approximated range), the known days are ``recent_days`` as kept (sorted, distinct,
    the first day first), and their intervals all have one length: one pass merges them, and stops at the
    first that ends after ``today``. Otherwise the general merge."""
    days = p.recent_days
    if not days or days[0] != p.first_day or p.periods != len(days):
        return next(((s, e) for s, e in _intervals(p, start_offset, length) if e > today), None)
    start = end = None
    for d in days:
        s = d + start_offset
        if end is not None and s <= end:
            end = s + length  # sorted days, equal lengths: the later interval ends last
            continue
        if end is not None and end > today:
            break
        start, end = s, s + length
    if start is None or end is None or end <= today:
        return None
    return start, end


def activity(p: PurchaseDays, now_ms: int, config: IndicatorConfig) -> tuple[int, int | None]:
    """The customer's activity flags at event time ``now_ms`` and the next event time one flips (None: never
    without a new purchase). Day resolution: "within A days" at day t means a purchase day in (t − A, t].

    * ACTIVE: a purchase within ``activity_days`` (the spec's E counts these);
    * ACTIVE_AT_START: the same at the period's start, day t − ``period_days`` (S);
    * NEW: the first purchase within the period (N);
    * REPEAT: two or more distinct purchase days within ``activity_days`` (repurchase rate).
    """
    if p.first_day is None or p.last_day is None:
        return 0, None
    today = now_ms // DAY_MS
    a, period = config.activity_days, config.period_days
    flags = 0
    flips: list[int] = []
    if today - a < p.last_day:
        flags |= ACTIVE
        flips.append(p.last_day + a)
    if today - period < p.first_day:
        flags |= NEW
        flips.append(p.first_day + period)
    recent = p.recent_days
    if len(recent) >= 2 and today - a < recent[-2]:
        flags |= REPEAT
        flips.append(recent[-2] + a)
    span = _first_interval_ending_after(p, period, a, today)
    if span is not None:
        s, e = span
        if s <= today:
            flags |= ACTIVE_AT_START
            flips.append(e)
        else:
            flips.append(s)
    future = [d for d in flips if d > today]
    return flags, min(future) * DAY_MS if future else None


# --- partition sums ------------------------------------------------------------


@dataclass(slots=True)
class IndicatorSums:
    """Per-day sums of the day rows of a set of customers (one partition)."""

    voice: dict[int, list[int]] = field(default_factory=dict)
    #: day -> [opened, resolved]
    tickets: dict[int, list[int]] = field(default_factory=dict)
    #: day -> histogram bucket -> first responses
    responses: dict[int, dict[int, int]] = field(default_factory=dict)

    def _voice(self, day: int, row: Sequence[int], sign: int) -> None:
        old = self.voice.get(day)
        self.voice[day] = (
            [sign * x for x in row] if old is None else [a + sign * b for a, b in zip(old, row, strict=True)]
        )

    def _tickets(self, day: int, row: Sequence[int], sign: int) -> None:
        head = self.tickets.setdefault(day, [0, 0])
        head[OPENED] += sign * row[OPENED]
        head[RESOLVED] += sign * row[RESOLVED]
        if len(row) > TICKET_HEAD:
            hist = self.responses.setdefault(day, {})
            for bucket, n in zip(row[TICKET_HEAD::2], row[TICKET_HEAD + 1 :: 2], strict=True):
                hist[bucket] = hist.get(bucket, 0) + sign * n

    def add_rows(self, voice_days: Mapping[int, list[int]], ticket_days: Mapping[int, list[int]]) -> None:
        """Count one more customer's day rows (``move`` from nothing, without comparing)."""
        for day, row in voice_days.items():
            self._voice(day, row, 1)
        for day, row in ticket_days.items():
            self._tickets(day, row, 1)

    def move(self, before: Contribution, after: Contribution) -> bool:
        """One customer's rows went from ``before`` to ``after``; True if anything changed."""
        changed = False
        for rows_before, rows_after, add in (
            (before.voice, after.voice, self._voice),
            (before.tickets, after.tickets, self._tickets),
        ):
            if rows_before == rows_after:
                continue  # the usual case (an order, or rows of the other kind): compared in C, by identity first
            # rows are compared by identity: the scorers replace a row when it changes, never mutate it
            for day in rows_before.keys() | rows_after.keys():
                old, new = rows_before.get(day), rows_after.get(day)
                if old is new:
                    continue
                changed = True
                if old is not None:
                    add(day, old, -1)
                if new is not None:
                    add(day, new, 1)
        return changed

    def prune(self, before_day: int) -> None:
        """Forget days before ``before_day`` (outside every window at any later clock)."""
        for rows in (self.voice, self.tickets, self.responses):
            for day in [d for d in rows if d < before_day]:
                del rows[day]

    def to_json(self, from_day: int) -> dict[str, Any]:
        """Sparse form for the population snapshot: only days from ``from_day`` and rows that are not zero."""
        return {
            "v": [[d, *row] for d, row in sorted(self.voice.items()) if d >= from_day and any(row)],
            "t": [[d, *row] for d, row in sorted(self.tickets.items()) if d >= from_day and any(row)],
            "r": [
                [d, *(x for b, n in sorted(hist.items()) if n for x in (b, n))]
                for d, hist in sorted(self.responses.items())
                if d >= from_day and any(hist.values())
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IndicatorSums:
        return cls(
            voice={int(r[0]): list(r[1:]) for r in data.get("v", [])},
            tickets={int(r[0]): list(r[1:]) for r in data.get("t", [])},
            responses={int(r[0]): dict(zip(r[1::2], r[2::2], strict=True)) for r in data.get("r", [])},
        )


# --- the indicators ----------------------------------------------------------------


def nps(promoters: int, passives: int, detractors: int) -> float | None:
    """% promoters − % detractors, −100…100 (spec: 60/20/20 → 40); None without answers."""
    n = promoters + passives + detractors
    return None if not n else PERCENT * (promoters - detractors) / n


def ratio(part: int, whole: int) -> float | None:
    return None if not whole else part / whole


def retention_rate(start: int, end: int, new: int) -> float | None:
    """(E − N) / S (spec: S 1000, E 900, N 200 → 0.70)."""
    return None if not start else (end - new) / start


def churn_rate(start: int, end: int) -> float | None:
    """(S − E) / S (spec: S 1000, E 900 → 0.10); net of new customers, so it can be negative."""
    return None if not start else (start - end) / start


def quantile_edge(hist: Mapping[int, int], percent: int, edges: Sequence[int]) -> int | None:
    """The upper edge (ms) of the histogram bucket holding the nearest-rank ``percent`` quantile
    (the ⌈percent·n/100⌉-th smallest duration): the true value rounded up to the bucket resolution.
    Durations past the last edge report the last edge (a lower bound)."""
    n = sum(hist.values())
    if n <= 0:
        return None
    rank = -(-percent * n // PERCENT)
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return edges[min(bucket, len(edges) - 1)]
    return edges[-1]


@dataclass(frozen=True, slots=True)
class IndicatorValues:
    """Every population indicator at ``as_of_ms``, with the counts they come from."""

    as_of_ms: int
    promoters: int
    passives: int
    detractors: int
    nps: float | None
    csat_satisfied: int
    csat_answers: int
    csat: float | None
    complaints: int
    complaint_rate: float | None
    tickets_opened: int
    tickets_resolved: int
    resolution_rate: float | None
    first_responses: int
    #: percent -> ms (bucket upper edge)
    first_response_ms: dict[int, int | None]
    active: int
    active_at_start: int
    new: int
    lost: int
    repeat: int
    retention_rate: float | None
    churn_rate: float | None
    repurchase_rate: float | None
    net_additions: int

    def to_json(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["first_response_ms"] = {str(k): v for k, v in self.first_response_ms.items()}
        return out


def indicator_values(
    parts: Iterable[IndicatorSums], flags: Mapping[str, int], now_ms: int, config: IndicatorConfig
) -> IndicatorValues:
    """The spec's population indicators at event time ``now_ms`` from partition sums and flag tallies.

    Windows end with the day of ``now_ms``: NPS/CSAT over ``survey_window_days`` days, complaints,
    tickets and first responses over ``period_days`` days (day resolution).
    """
    today = now_ms // DAY_MS
    survey_from, period_from = today - config.survey_window_days, today - config.period_days
    voice = [0] * VOICE_COLUMNS
    opened = resolved = 0
    hist: Counter[int] = Counter()
    for part in parts:
        for day, row in part.voice.items():
            if survey_from < day <= today:
                for i in (PROMOTERS, PASSIVES, DETRACTORS, CSAT_SATISFIED, CSAT_ANSWERS):
                    voice[i] += row[i]
            if period_from < day <= today:
                voice[COMPLAINTS] += row[COMPLAINTS]
        for day, row in part.tickets.items():
            if period_from < day <= today:
                opened += row[OPENED]
                resolved += row[RESOLVED]
        for day, buckets in part.responses.items():
            if period_from < day <= today:
                hist.update(buckets)
    hist = Counter({b: n for b, n in hist.items() if n > 0})
    count = {name: flags.get(TAG_PREFIX + name, 0) for name in (*FLAG_TAGS.values(), LOST_TAG)}
    start, end, new = count["start"], count["active"], count["new"]
    return IndicatorValues(
        as_of_ms=now_ms,
        promoters=voice[PROMOTERS],
        passives=voice[PASSIVES],
        detractors=voice[DETRACTORS],
        nps=nps(voice[PROMOTERS], voice[PASSIVES], voice[DETRACTORS]),
        csat_satisfied=voice[CSAT_SATISFIED],
        csat_answers=voice[CSAT_ANSWERS],
        csat=ratio(voice[CSAT_SATISFIED], voice[CSAT_ANSWERS]),
        complaints=voice[COMPLAINTS],
        complaint_rate=ratio(voice[COMPLAINTS], end),
        tickets_opened=opened,
        tickets_resolved=resolved,
        resolution_rate=ratio(resolved, opened),
        first_responses=sum(hist.values()),
        first_response_ms={q: quantile_edge(hist, q, config.response_edges_ms) for q in config.quantiles},
        active=end,
        active_at_start=start,
        new=new,
        lost=count[LOST_TAG],
        repeat=count["repeat"],
        retention_rate=retention_rate(start, end, new),
        churn_rate=churn_rate(start, end),
        repurchase_rate=ratio(count["repeat"], end),
        net_additions=new - count[LOST_TAG],
    )
