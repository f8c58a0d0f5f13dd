"""Churn warning (spec: Churn warning): signals with reasons, a risk score and level, and when to alert.

``assess`` is ``state, now -> signals``: every signal is a function of the
customer's bounded state and the event-time clock, so a time-driven signal
(overdue, low P(alive), an unanswered ticket) appears by time passing alone.
It also returns ``next_change_ms``, the earliest later clock at which any
signal can switch on or off without a new event; the worker's due-time index
re-checks the customer then, instead of scanning everyone on every tick.

``update`` turns an assessment into the stored level and decides on an alert:
one when a customer's level rises to medium or high, but within the cooldown
of the last alert only if it goes above that alert's level (escalation), so
one customer cannot flood the team.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from scoring.clv import ClvSignals, PurchaseDays, p_alive_below_at
from scoring.frozen import Value
from scoring.memo import ConfigMemo
from scoring.orders import OrderState
from scoring.state import State
from scoring.tickets import ServiceState, service_risk
from scoring.units import DAY_MS
from scoring.voice import SEVERITIES, VoiceState

if TYPE_CHECKING:  # scoring.customer imports this module: the config is only read, never built, here
    from scoring.customer import ScoringConfig

LOW, MEDIUM, HIGH = "low", "medium", "high"
LEVELS = (LOW, MEDIUM, HIGH)
_RANK = {level: i for i, level in enumerate(LEVELS)}

# Signals (each has a weight) and their reason codes.
OVERDUE = "overdue"
LOW_P_ALIVE = "low_p_alive"
SPEND_DECLINE = "spend_decline"
DETRACTOR = "detractor"
NPS_DROP = "nps_drop"
DISSATISFIED = "dissatisfied"
COMPLAINTS = "complaints"
COMPLAINT_BURST = "complaint_burst"
SEVERE_COMPLAINT = "severe_complaint"
SLOW_SERVICE = "slow_service"
SLOW_FIRST_RESPONSE = "slow_first_response"
SLOW_RESOLUTION = "slow_resolution"
REOPENED_TICKET = "reopened_ticket"

#: reason code -> the signal whose weight it carries (a signal counts once)
SIGNAL_OF_REASON: Mapping[str, str] = MappingProxyType(
    {
        OVERDUE: OVERDUE,
        LOW_P_ALIVE: LOW_P_ALIVE,
        SPEND_DECLINE: SPEND_DECLINE,
        DETRACTOR: DETRACTOR,
        NPS_DROP: DETRACTOR,
        DISSATISFIED: DISSATISFIED,
        COMPLAINT_BURST: COMPLAINTS,
        SEVERE_COMPLAINT: COMPLAINTS,
        SLOW_FIRST_RESPONSE: SLOW_SERVICE,
        SLOW_RESOLUTION: SLOW_SERVICE,
        REOPENED_TICKET: SLOW_SERVICE,
    }
)
SIGNALS = (OVERDUE, LOW_P_ALIVE, SPEND_DECLINE, DETRACTOR, DISSATISFIED, COMPLAINTS, SLOW_SERVICE)

#: Default weights: silence is the strongest sign (overdue alone is medium),
#: a complaint or a detractor answer on top of it makes it high.
DEFAULT_WEIGHTS: Mapping[str, int] = MappingProxyType(
    {
        OVERDUE: 40,
        LOW_P_ALIVE: 30,
        SPEND_DECLINE: 20,
        DETRACTOR: 25,
        DISSATISFIED: 20,
        COMPLAINTS: 30,
        SLOW_SERVICE: 15,
    }
)
MAX_SCORE = 100


@dataclass(frozen=True, slots=True)
class ChurnConfig:
    #: overdue: no purchase for more than this many times the usual gap
    overdue_gap_multiple: float = 3.0
    #: the customer's own mean gap needs this many repeat purchase days; else the population's
    overdue_min_repeat_purchases: int = 2
    #: population gap when fewer than ``population_gap_min_customers`` repeat customers are known
    default_gap_days: float = 30.0
    population_gap_min_customers: int = 30
    p_alive_threshold: float = 0.3
    spend_window_days: int = 90
    spend_decline_ratio: float = 0.5
    nps_drop_points: int = 3
    csat_dissatisfied_max: int = 2
    complaint_burst_count: int = 2
    #: complaints of this severity or worse are severe on their own
    severe_complaint_severity: str = "high"
    #: a survey answer older than this no longer signals
    survey_max_age_days: int = 180
    reopened_window_days: int = 30
    weights: Mapping[str, int] = field(default_factory=lambda: DEFAULT_WEIGHTS)
    medium_min_score: int = 40
    high_min_score: int = 70
    alert_cooldown_days: float = 14.0

    @property
    def cooldown_ms(self) -> int:
        return int(self.alert_cooldown_days * DAY_MS)

    def level(self, score: int) -> str:
        if score >= self.high_min_score:
            return HIGH
        return MEDIUM if score >= self.medium_min_score else LOW


class ChurnReason(Value, frozen=True):
    """One churn signal that fired: its code (``SIGNALS``), what was observed against which threshold, and a
    sentence for people (not a dead-letter reason: those are ``schemas.events.RejectReason``)."""

    code: str
    observed: float | str
    threshold: float | str
    detail: str


class ChurnAssessment(Value, frozen=True):
    score: int
    level: str
    reasons: tuple[ChurnReason, ...]
    #: earliest later event time at which a signal may switch on or off with no new event
    next_change_ms: int | None


class ChurnState(State):
    """What must persist between assessments: the level (to see it change) and the alert history."""

    level: str = LOW
    score: int = 0
    #: when the due-time index must look at this customer again (event time)
    next_check_ms: int | None = None
    #: alerts raised so far; the n-th alert's id is "{customer}:churn:{n}", stable under replay
    alerts: int = 0
    alert_level: str | None = None
    alert_ms: int | None = None


class ChurnInputs(Value, frozen=True):
    """The parts of a customer's state the signals read."""

    orders: OrderState
    purchases: PurchaseDays
    voice: VoiceState
    service: ServiceState
    clv: ClvSignals


def _days(ms: int) -> float:
    return round(ms / DAY_MS, 2)


def _round2(value: float) -> tuple[float, str]:
    """``round(value, 2)`` and its ``str``, for a reason's observed value and its detail: ".2f" rounds the exact
    binary value as ``round`` does (the same digits, read back as the same float), and below 1e11 that string
    without its trailing zeros is the shortest repr of the rounded float, so one digit conversion serves both
    (``round`` then ``str`` were two: ~8.1k instructions, this ~5.6k)."""
    if -1e11 < value < 1e11:
        text = f"{value:.2f}"
        rounded = float(text)
        text = text.rstrip("0")
        return rounded, text + "0" if text[-1] == "." else text
    rounded = round(value, 2)
    return rounded, str(rounded)


def _overdue(
    i: ChurnInputs, now_ms: int, population_gap_days: float | None, c: ChurnConfig
) -> tuple[ChurnReason | None, int | None]:
    last = i.orders.last_purchase_ms
    p = i.purchases
    if last is None or p.first_day is None or p.last_day is None:
        return None, None
    repeats = p.periods - 1
    if repeats >= c.overdue_min_repeat_purchases:
        gap, whose = (p.last_day - p.first_day) / repeats, "their"
    else:
        gap, whose = (population_gap_days or c.default_gap_days), "the population's"
    limit_ms = int(c.overdue_gap_multiple * gap * DAY_MS)
    silent_ms = now_ms - last
    if silent_ms > limit_ms:
        silent, shown = _round2(silent_ms / DAY_MS)  # _days(silent_ms) and its str
        detail = f"no purchase for {shown} days, over {c.overdue_gap_multiple:g} × {whose} {gap:.1f}-day gap"
        return ChurnReason(OVERDUE, silent, _days(limit_ms), detail), None
    return None, last + limit_ms + 1


def _low_p_alive(i: ChurnInputs, c: ChurnConfig) -> ChurnReason | None:
    if i.clv.x < 1 or i.clv.p_alive is None or i.clv.p_alive >= c.p_alive_threshold:
        return None
    detail = f"P(alive) {i.clv.p_alive:.3f} after {i.clv.x} repeat purchases (BG/NBD)"
    return ChurnReason(LOW_P_ALIVE, round(i.clv.p_alive, 4), c.p_alive_threshold, detail)


def _p_alive_drop_ms(i: ChurnInputs, ctx: ScoringConfig) -> int | None:
    """The first day on which P(alive) is below the threshold if no purchase comes (T counts whole days)."""
    first = i.purchases.first_day
    if i.clv.x < 1 or first is None:
        return None
    # days from the first purchase day to the drop: a function of (x, t_x) alone, memoised per configuration (a
    # customer re-assessed without a new purchase day asks the same, and x and t_x take few values)
    memo = P_ALIVE_DROP_MEMO.of(ctx)
    key = (i.clv.x, i.clv.t_x)
    days = memo.get(key, _UNKNOWN)
    if days is _UNKNOWN:
        params = ctx.clv.params
        crossing = p_alive_below_at(params.bgnbd, i.clv.x, i.clv.t_x, ctx.churn.p_alive_threshold)
        days = None if crossing is None else math.floor(crossing * params.time_unit_days) + 1
        P_ALIVE_DROP_MEMO.put(memo, key, days)
    if days is None:
        return None
    return (first + days) * DAY_MS  # type: ignore[operator]


#: per configuration, (x, t_x) -> whole days from the first purchase day to P(alive)'s drop (None: never)
P_ALIVE_DROP_MEMO: ConfigMemo[tuple[int, float], int | None] = ConfigMemo(1 << 16)
_UNKNOWN = object()


def _spend_decline(i: ChurnInputs, now_ms: int, ctx: ScoringConfig) -> tuple[ChurnReason | None, int | None]:
    """Spend of the last window below ratio × the window before, at the revenue buckets' resolution.

    Also finds the first later bucket boundary where the answer flips if no
    order comes (buckets only leave the windows), so the due index can wait for it.
    """
    c = ctx.churn
    width = ctx.orders.bucket_ms
    n = -(-c.spend_window_days // ctx.orders.revenue_bucket_days)
    cur = now_ms // width
    base = cur - 2 * n + 1  # the oldest bucket either window can hold, now or later
    # the buckets of base..cur by position from base (a list of 2n), the windows' sums, and the steps at which a
    # bucket moves: one pass over the customer's few buckets (the sorted (step, change) tuples this replaced
    # were a third of an assessment's churn signals, issue 18)
    spend: list[int] | None = None
    steps: set[int] = set()
    prior = recent = 0
    for b, v in i.orders.revenue_buckets.items():
        if v and base <= b <= cur:
            j = b - base
            if spend is None:
                spend = [0] * (2 * n)
            spend[j] = v
            steps.add(j + 1)  # the step it leaves the earlier window at
            if j < n:
                prior += v
            else:
                recent += v
                steps.add(j - n + 1)  # the step it moves from the later window to the earlier one at
    if spend is None:
        return None, None  # nothing in either window, now or later: no decline, no flip
    ratio = c.spend_decline_ratio
    # the windows ending at cur + step hold positions [step, n + step) (earlier) and [n + step, 2n) (later): at
    # step s the bucket at position s - 1 leaves the earlier window and the one at n + s - 1 moves from the later
    # window to it. The sums are followed through the steps at which a bucket moves, in order: the answer can
    # change only there (after the last, both windows are empty: no decline)
    now_decline = prior > 0 and recent < ratio * prior
    flip = None
    p, r = prior, recent
    for step in sorted(steps):
        p -= spend[step - 1]
        if step <= n:
            v = spend[n + step - 1]
            p += v
            r -= v
        if (p > 0 and r < ratio * p) != now_decline:
            flip = (cur + step) * width
            break
    if not now_decline:
        return None, flip
    days = n * ctx.orders.revenue_bucket_days
    detail = f"spent {recent / 100:.2f} in the last {days} days, {prior / 100:.2f} in the {days} before"
    return ChurnReason(SPEND_DECLINE, recent / 100, round(c.spend_decline_ratio * prior / 100, 2), detail), flip


def _voice(i: ChurnInputs, now_ms: int, ctx: ScoringConfig) -> tuple[list[ChurnReason], list[int]]:
    c, v = ctx.churn, ctx.voice
    reasons: list[ChurnReason] = []
    changes: list[int] = []
    max_age = c.survey_max_age_days * DAY_MS
    # an answer's age limit is a change only for an answer that signals
    if i.voice.nps and now_ms - i.voice.nps[0][0] < max_age:
        at, score = i.voice.nps[0]
        signalled = len(reasons)
        if score < v.nps_passive_min:
            reasons.append(
                ChurnReason(DETRACTOR, score, v.nps_passive_min - 1, f"latest NPS answer {score} (detractor)")
            )
        if len(i.voice.nps) > 1 and i.voice.nps[1][1] - score >= c.nps_drop_points:
            previous = i.voice.nps[1][1]
            detail = f"NPS fell from {previous} to {score}"
            reasons.append(ChurnReason(NPS_DROP, previous - score, c.nps_drop_points, detail))
        if len(reasons) > signalled:
            changes.append(at + max_age)
    if i.voice.csat is not None and now_ms - i.voice.csat[0] < max_age:
        at, score = i.voice.csat
        if score <= c.csat_dissatisfied_max:
            reasons.append(
                ChurnReason(DISSATISFIED, score, c.csat_dissatisfied_max, f"latest CSAT answer {score} of 5")
            )
            changes.append(at + max_age)
    # complaints: the same day window as the profile's complaints_window
    today = now_ms // DAY_MS
    window = v.complaint_window_days
    complaint_days = i.voice.complaint_days  # most customers have none: no generator then
    days = sorted(d for d in complaint_days if today - window < d <= today) if complaint_days else []
    if days:
        counts = i.voice.complaint_days
        count = sum(counts[d][0] for d in days)
        worst = max(counts[d][1] for d in days)
        if count >= c.complaint_burst_count:
            detail = f"{count} complaints in {window} days"
            reasons.append(ChurnReason(COMPLAINT_BURST, count, c.complaint_burst_count, detail))
            # the burst ends on the day enough of the oldest complaints left the window
            left = count
            for d in days:
                left -= counts[d][0]
                if left < c.complaint_burst_count:
                    changes.append((d + window) * DAY_MS)
                    break
        severe = SEVERITIES.index(c.severe_complaint_severity)
        if worst >= severe:
            detail = f"a {SEVERITIES[worst]} complaint in the last {window} days"
            reasons.append(ChurnReason(SEVERE_COMPLAINT, SEVERITIES[worst], c.severe_complaint_severity, detail))
            changes.append((max(d for d in days if counts[d][1] >= severe) + window) * DAY_MS)
    return reasons, changes


def _service(i: ChurnInputs, now_ms: int, ctx: ScoringConfig) -> tuple[list[ChurnReason], int | None]:
    c, s = ctx.churn, ctx.service
    risk = service_risk(i.service, now_ms, s, c.reopened_window_days * DAY_MS)
    reasons = []
    if risk.waiting_first_response_hours is not None:
        h, shown = _round2(risk.waiting_first_response_hours)
        detail = f"a ticket has waited {shown} h for a first response"
        reasons.append(ChurnReason(SLOW_FIRST_RESPONSE, h, s.first_response_sla_hours, detail))
    if risk.unresolved_hours is not None:
        h, shown = _round2(risk.unresolved_hours)
        reasons.append(ChurnReason(SLOW_RESOLUTION, h, s.resolution_sla_hours, f"a ticket has been open {shown} h"))
    if risk.reopened:
        detail = f"{risk.reopened} ticket(s) reopened in the last {c.reopened_window_days} days or open again"
        reasons.append(ChurnReason(REOPENED_TICKET, risk.reopened, 0, detail))
    return reasons, risk.next_change_ms


def assess(inputs: ChurnInputs, now_ms: int, population_gap_days: float | None, ctx: ScoringConfig) -> ChurnAssessment:
    """All churn signals of one customer at event time ``now_ms``, combined into a score and level."""
    c = ctx.churn
    reasons: list[ChurnReason] = []
    changes: list[int] = []
    overdue, change = _overdue(inputs, now_ms, population_gap_days, c)
    if overdue is not None:
        reasons.append(overdue)
    if change is not None:
        changes.append(change)
    clv = inputs.clv
    if clv.x < 1 or clv.p_alive is None or clv.p_alive >= c.p_alive_threshold:
        change = _p_alive_drop_ms(inputs, ctx)  # not low: when it will be
        if change is not None:
            changes.append(change)
    else:
        reasons.append(_low_p_alive(inputs, c))  # type: ignore[arg-type]  # low: a reason (never None here)
    decline, change = _spend_decline(inputs, now_ms, ctx)
    if decline is not None:
        reasons.append(decline)
    if change is not None:
        changes.append(change)
    # a customer without survey answers or complaints, or without tickets, has no such signal and no change
    # of one: the calls are skipped (most customers)
    voice = inputs.voice
    if voice.nps or voice.csat is not None or voice.complaint_days:
        voiced, voice_changes = _voice(inputs, now_ms, ctx)
        reasons += voiced
        changes += voice_changes
    if inputs.service.tickets:
        service, change = _service(inputs, now_ms, ctx)
        reasons += service
        if change is not None:
            changes.append(change)
    if reasons:  # most customers have none: no set, no generator
        signals = {SIGNAL_OF_REASON[r.code] for r in reasons}
        score = min(MAX_SCORE, sum([c.weights.get(s, 0) for s in signals]))
    else:
        score = 0
    nxt = None  # the earliest later change (a loop, not a list of the later ones: every assessment asks)
    for t in changes:
        if t > now_ms and (nxt is None or t < nxt):
            nxt = t
    return ChurnAssessment(score, c.level(score), tuple(reasons), nxt)


class AlertDecision(Value, frozen=True):
    #: "entered" (first alert, or after the cooldown), "escalated", or None: no alert
    kind: str | None
    previous_level: str


def update(state: ChurnState, assessment: ChurnAssessment, now_ms: int, config: ChurnConfig) -> AlertDecision:
    """Store the new level and decide on an alert (mutates ``state``).

    An alert when the level rises to medium or high (from low, or medium to
    high), unless it is within the cooldown of the last alert and not above
    that alert's level. So: entering alerts, escalating alerts at once,
    falling back and re-entering alerts again only after the cooldown, and a
    customer who stays at one level is not alerted again.
    """
    previous = state.level
    state.level, state.score = assessment.level, assessment.score
    state.next_check_ms = assessment.next_change_ms
    kind = None
    if _RANK[assessment.level] > _RANK[previous] and assessment.level != LOW:
        if state.alert_ms is not None and _RANK[assessment.level] > _RANK[state.alert_level or LOW]:
            kind = "escalated"
        elif state.alert_ms is None or now_ms - state.alert_ms >= config.cooldown_ms:
            kind = "entered"
    if kind is not None:
        state.alerts += 1
        state.alert_level, state.alert_ms = assessment.level, now_ms
    return AlertDecision(kind, previous)


def suggested_action(vip: bool, reasons: tuple[ChurnReason, ...]) -> str:
    """What the team should do (spec: VIP: exclusive offer or personal service; others: win-back offer)."""
    codes = {r.code for r in reasons}
    service_first = codes & {COMPLAINT_BURST, SEVERE_COMPLAINT, SLOW_FIRST_RESPONSE, SLOW_RESOLUTION, REOPENED_TICKET}
    fix = "resolve the open complaint or ticket first, then " if service_first else ""
    if vip:
        return fix + "personal service: a call from the account manager with an exclusive offer"
    return fix + "win-back offer or personalised recommendation"
