"""Population indicators over a set of customers (spec: Population indicators): partition sums and the numbers.

A partition's :class:`IndicatorSums` are the per-day sums of its customers'
day rows (scoring.indicators), kept exact by before/after deltas of each
customer's rows (:meth:`IndicatorSums.move`, driven by the footprint diffs of
scoring.footprint) and rebuilt from the table after a rebalance. A rolling
window at the clock is then a sum over the last N day rows: time passing needs
no per-customer work. Partition sums add up across partitions and workers (the
population snapshots carry them, scoring.snapshot), and
:func:`indicator_values` turns the merged sums and the activity-flag tallies
into the spec's numbers at the clock. Pure: no I/O, no Faust.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scoring.indicators import (
    COMPLAINTS,
    CSAT_ANSWERS,
    CSAT_SATISFIED,
    DETRACTORS,
    FLAG_TAGS,
    LOST_TAG,
    OPENED,
    PASSIVES,
    PROMOTERS,
    RESOLVED,
    TAG_PREFIX,
    TICKET_HEAD,
    VOICE_COLUMNS,
    Contribution,
    IndicatorConfig,
)
from scoring.units import DAY_MS

PERCENT = 100


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

    def to_json(self, from_day: int | None) -> dict[str, Any]:
        """Sparse form for the population snapshot: only days from ``from_day`` (None: every day) and rows that
        are not zero."""
        if from_day is None:
            from_day = min((d for rows in (self.voice, self.tickets, self.responses) for d in rows), default=0)
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
