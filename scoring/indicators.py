"""Population indicators, one customer's share (spec: Population indicators; Loyalty and satisfaction; Service).

The table of customer states is the only durable state of a worker, so every
population number is a sum over *customers' contributions*, each a pure
function of one customer's state (and, for the activity flags, of the clock).
This module holds that per-customer share; the sums over a partition and the
spec's numbers made from them are in :mod:`scoring.indicator_sums`.

* **day rows** kept in the customer's state, pruned to the windows:
  ``VoiceState.answer_days`` (day -> promoters, passives, detractors,
  satisfied CSAT answers, CSAT answers, complaints) and
  ``ServiceState.ticket_days`` (day -> tickets opened, tickets resolved, and
  first-response durations as (histogram bucket, count) pairs). A customer's
  rows as they are now are its :class:`Contribution` (part of its footprint,
  :mod:`scoring.footprint`), which a partition's sums follow by before/after
  deltas.
* **activity flags** (active now, active at the period's start, new in the
  period, repeat buyer), which change with time alone: each customer's flags
  are stored in its state as evaluated at some clock, counted per partition
  like the RFM segments, and :func:`activity` also returns the next event
  time at which one flips, so the due-time index re-evaluates the customer then.

Pure: no I/O, no Faust.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from scoring.clv import PurchaseDays
from scoring.frozen import Value
from scoring.units import DAY_MS

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


class Contribution(Value, frozen=True):
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


def _active_at_start(p: PurchaseDays, start_offset: int, length: int, today: int) -> tuple[bool, int | None]:
    """Whether ``today`` lies in one of ``_intervals(p, start_offset, length)``, and the day that changes: the end of
    that merged interval, else the start of the next one (None: none). The same answer as
    ``_first_interval_ending_after`` (tests/unit/test_indicators.py), found without walking the days before it.

    Why: it was most of ``activity``'s cost, on every assessment. When every purchase day is remembered (sorted,
    distinct, the first day first), ``today`` is in an interval iff a day lies in (today − offset − length,
    today − offset]: one bisection; the interval then ends where the chain of days less than ``length`` apart
    that follows the latest such day ends (a customer's last ``start_offset`` days of purchases: a few), and
    otherwise the next interval starts with the first later day (it cannot be merged with an earlier one: that
    would cover ``today``). Otherwise the general merge."""
    days = p.recent_days
    if not days or days[0] != p.first_day or p.periods != len(days):
        span = next(((s, e) for s, e in _intervals(p, start_offset, length) if e > today), None)
        if span is None:
            return False, None
        return (True, span[1]) if span[0] <= today else (False, span[0])
    j = bisect.bisect_right(days, today - start_offset)  # days[:j] entered an interval by today
    if j and days[j - 1] > today - start_offset - length:
        last = len(days) - 1
        k = j - 1
        while k < last and days[k + 1] - days[k] <= length:
            k += 1
        return True, days[k] + start_offset + length
    if j < len(days):
        return False, days[j] + start_offset
    return False, None


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
    at_start, change = _active_at_start(p, period, a, today)
    if at_start:
        flags |= ACTIVE_AT_START
    if change is not None:
        flips.append(change)
    nxt = None  # the earliest later flip (a loop, not a list of the later ones: every assessment asks)
    for d in flips:
        if d > today and (nxt is None or d < nxt):
            nxt = d
    return flags, None if nxt is None else nxt * DAY_MS
