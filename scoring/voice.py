"""Voice of the customer per customer: NPS, CSAT and complaints (spec: Loyalty and satisfaction, Service).

"Latest" always means latest in event time, so a late answer that arrives
after a newer one does not replace it (equal times: the higher answer). State is bounded: two NPS answers, one
CSAT answer, and complaint counts in day buckets pruned to the window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from scoring.frozen import Value
from scoring.indicators import (
    COMPLAINTS,
    CSAT_ANSWERS,
    CSAT_SATISFIED,
    DETRACTORS,
    PASSIVES,
    PROMOTERS,
    VOICE_COLUMNS,
    add_voice_row,
)
from scoring.state import State
from scoring.units import DAY_MS

PROMOTER = "promoter"
PASSIVE = "passive"
DETRACTOR = "detractor"
#: Complaint severities, mildest first (the index is the rank).
SEVERITIES = ("low", "medium", "high", "critical")


@dataclass(frozen=True, slots=True)
class VoiceConfig:
    complaint_window_days: int = 30
    #: CSAT answers at or above this count as satisfied (spec: 4–5 of 1–5).
    csat_satisfied_min: int = 4
    #: NPS categories (spec: 9–10 promoters, 7–8 passives, 0–6 detractors).
    nps_promoter_min: int = 9
    nps_passive_min: int = 7
    #: days of answer/complaint rows kept for the population indicators (max of their windows, spec: 90)
    population_window_days: int = 90


def nps_category(score: int, config: VoiceConfig) -> str:
    if score >= config.nps_promoter_min:
        return PROMOTER
    if score >= config.nps_passive_min:
        return PASSIVE
    return DETRACTOR


class SurveyFact(Value, frozen=True):
    occurred_ms: int
    nps: int | None
    csat: int | None


class ComplaintFact(Value, frozen=True):
    occurred_ms: int
    severity: str


class VoiceState(State):
    #: the two latest NPS answers by event time, newest first: [[ms, score], …]
    nps: list[list[int]] = []
    #: the latest CSAT answer: [ms, score]
    csat: list[int] | None = None
    #: day -> [count, worst severity rank], pruned to the complaint window
    complaint_days: dict[int, list[int]] = {}
    complaints_total: int = 0
    #: the population indicators' share of this customer: day -> [promoters, passives, detractors,
    #: satisfied CSAT answers, CSAT answers, complaints] (scoring.indicators), pruned to their window
    answer_days: dict[int, list[int]] = {}


_CATEGORY_COLUMN = {PROMOTER: PROMOTERS, PASSIVE: PASSIVES, DETRACTOR: DETRACTORS}


def apply_survey(state: VoiceState, fact: SurveyFact, config: VoiceConfig = VoiceConfig()) -> VoiceState:
    if fact.nps is not None:
        # Newest first by (time, answer): at equal times the higher answer
        # counts as the later one, so arrival order never matters.
        answers = sorted([*state.nps, [fact.occurred_ms, fact.nps]], reverse=True)
        state.nps = answers[:2]
    if fact.csat is not None and (state.csat is None or [fact.occurred_ms, fact.csat] > state.csat):
        state.csat = [fact.occurred_ms, fact.csat]
    # every answer counts in the population's NPS/CSAT (spec: "over the answers in a rolling window")
    row = [0] * VOICE_COLUMNS
    if fact.nps is not None:
        row[_CATEGORY_COLUMN[nps_category(fact.nps, config)]] = 1
    if fact.csat is not None:
        row[CSAT_ANSWERS] = 1
        row[CSAT_SATISFIED] = int(fact.csat >= config.csat_satisfied_min)
    add_voice_row(state.answer_days, fact.occurred_ms // DAY_MS, row, config.population_window_days)
    return state


def apply_complaint(state: VoiceState, fact: ComplaintFact, config: VoiceConfig) -> VoiceState:
    state.complaints_total += 1
    day = fact.occurred_ms // DAY_MS
    rank = SEVERITIES.index(fact.severity)
    bucket = state.complaint_days.setdefault(day, [0, rank])
    bucket[0] += 1
    bucket[1] = max(bucket[1], rank)
    newest = max(state.complaint_days)
    for old in [d for d in state.complaint_days if d <= newest - config.complaint_window_days]:
        del state.complaint_days[old]
    row = [0] * VOICE_COLUMNS
    row[COMPLAINTS] = 1
    add_voice_row(state.answer_days, day, row, config.population_window_days)
    return state


class VoiceSignals(Value, frozen=True):
    nps: int | None
    nps_category: str | None
    nps_previous: int | None
    csat: int | None
    csat_satisfied: bool | None
    complaints_window: int
    complaint_worst_severity: str | None
    complaints_total: int


def complaints_in_window(days: Mapping[int, list[int]], now_ms: int, window_days: int) -> tuple[int, int | None]:
    """Complaints in the window of the last ``window_days`` days (day resolution: the day of ``now_ms`` and the
    days before it) and the worst severity among them (an index of ``SEVERITIES``; None: none). One definition
    for the signals and the profile's renderer, which calls it without building the other signals."""
    today = now_ms // DAY_MS
    oldest = today - window_days
    count, worst = 0, None
    for day, (complaints, severity) in days.items():
        if oldest < day <= today:
            count += complaints
            if worst is None or severity > worst:
                worst = severity
    return count, worst


def voice_signals(state: VoiceState, now_ms: int, config: VoiceConfig) -> VoiceSignals:
    """Indicators at event time ``now_ms``; the complaint window is the last ``complaint_window_days`` days
    (day resolution: the day of ``now_ms`` and the days before it)."""
    latest = state.nps[0][1] if state.nps else None
    days = state.complaint_days  # most customers have none
    count, worst = complaints_in_window(days, now_ms, config.complaint_window_days) if days else (0, None)
    return VoiceSignals(
        nps=latest,
        nps_category=None if latest is None else nps_category(latest, config),
        nps_previous=state.nps[1][1] if len(state.nps) > 1 else None,
        csat=None if state.csat is None else state.csat[1],
        csat_satisfied=None if state.csat is None else state.csat[1] >= config.csat_satisfied_min,
        complaints_window=count,
        complaint_worst_severity=None if worst is None else SEVERITIES[worst],
        complaints_total=state.complaints_total,
    )
