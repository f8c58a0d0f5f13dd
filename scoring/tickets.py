"""Support tickets per customer (spec: Service): response and resolution times, reopenings, SLA breaches.

Each ticket keeps the times of its events, combined so that arrival order does
not matter: ``opened`` and ``first_response`` are the earliest seen,
``resolved`` and ``reopened`` the latest, plus the number of reopenings. That
makes a response that arrives before its ``opened`` event (or a ticket never
seen opened) harmless: it is recorded, and its durations are known once both
ends are. A ticket is open when it was opened and not resolved, or reopened
after its last resolution. Resolution time runs from the opening (spec), so a
ticket reopened more than the resolution SLA after it was opened breaches at once.

Bounded: at most ``max_tickets`` records per customer. Past that, the closed
ticket resolved longest ago is folded into running totals and forgotten (an
event for it arriving later starts a new record); if none is closed, the
oldest is folded.

Population indicators (scoring.indicators): each ticket *marks* days — its
opening, its resolution once it is closed, and its first-response time (a
histogram bucket) on the day of the response — and only once its opening is
known: a response or resolution of a ticket never seen opened counts when
the ``opened`` event arrives, never before (it cannot be matched to an
opening in the period). The marks are kept as day rows in
``ticket_days``, pruned to the population period, separately from the ticket
records, so folding a record does not remove its marks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from scoring.frozen import Value
from scoring.indicators import DEFAULT_RESPONSE_EDGES_MS, RESPONSE_SLOT, response_bucket, ticket_row_add
from scoring.indicators import OPENED as MARK_OPENED
from scoring.indicators import RESOLVED as MARK_RESOLVED
from scoring.state import State
from scoring.units import DAY_MS

HOUR_MS = 3_600_000
OPENED, FIRST_RESPONSE, RESOLVED, REOPENED = "opened", "first_response", "resolved", "reopened"
# ticket record layout: [opened, first_response, resolved, reopened, reopens]
# (Final literals, so that the type checker narrows ``t[_O] is not None`` like a variable)
_O: Final = 0
_FR: Final = 1
_RS: Final = 2
_RO: Final = 3
_N: Final = 4


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    first_response_sla_hours: float = 24.0
    resolution_sla_hours: float = 72.0
    max_tickets: int = 32
    #: days of ticket marks kept for the population indicators (their period, spec: 30)
    population_window_days: int = 30
    #: first-response histogram edges of the population indicators
    response_edges_ms: tuple[int, ...] = DEFAULT_RESPONSE_EDGES_MS


class TicketFact(Value, frozen=True):
    occurred_ms: int
    ticket_id: str
    kind: str


class Folded(State):
    """Totals of tickets no longer kept individually."""

    tickets: int = 0
    reopens: int = 0
    breaches: int = 0
    first_response_ms_sum: int = 0
    first_responses: int = 0


class ServiceState(State):
    tickets: dict[str, list[int | None]] = {}
    folded: Folded = msgspec.field(default_factory=Folded)
    #: the population indicators' share: day -> [opened, resolved, bucket, count, …] (scoring.indicators)
    ticket_days: dict[int, list[int]] = {}
    #: newest day ever marked: rows before it minus the window are pruned (it never moves back)
    ticket_days_newest: int | None = None


def _earliest(a: int | None, b: int) -> int:
    return b if a is None or b < a else a


def _latest(a: int | None, b: int) -> int:
    return b if a is None or b > a else a


def is_open(t: list[int | None]) -> bool:
    if t[_O] is None:
        return False
    return t[_RS] is None or (t[_RO] is not None and t[_RO] > t[_RS])


def ticket_marks(t: list[int | None], config: ServiceConfig) -> tuple[tuple[int, int], ...]:
    """(day, slot) the ticket counts under in the population indicators (see the module docstring)."""
    opened = t[_O]
    if opened is None:
        return ()
    marks = [(opened // DAY_MS, MARK_OPENED)]
    if t[_RS] is not None and not is_open(t):
        marks.append((t[_RS] // DAY_MS, MARK_RESOLVED))
    if t[_FR] is not None:
        bucket = response_bucket(t[_FR] - opened, config.response_edges_ms)
        marks.append((t[_FR] // DAY_MS, RESPONSE_SLOT + bucket))
    return tuple(marks)


def _move_marks(
    state: ServiceState, before: tuple[tuple[int, int], ...], after: tuple[tuple[int, int], ...], config: ServiceConfig
) -> None:
    """Copy-on-write update of ``ticket_days``; days before the newest day minus the window are not kept.

    Exact for every kept day: the newest day only grows, so a day skipped once stays outside for good.
    """
    known = [d for d, _ in after] + ([] if state.ticket_days_newest is None else [state.ticket_days_newest])
    if not known:
        return
    newest = state.ticket_days_newest = max(known)
    floor = newest - config.population_window_days
    days = state.ticket_days
    for marks, delta in ((before, -1), (after, 1)):
        for day, slot in marks:
            if day > floor:
                row = ticket_row_add(days.get(day), slot, delta)
                if row is None:
                    days.pop(day, None)
                else:
                    days[day] = row
    for gone in [d for d in days if d <= floor]:
        del days[gone]


def apply_ticket_event(state: ServiceState, fact: TicketFact, config: ServiceConfig) -> ServiceState:
    t = state.tickets.get(fact.ticket_id)
    if t is None:
        t = state.tickets[fact.ticket_id] = [None, None, None, None, 0]
    before = ticket_marks(t, config)
    at = fact.occurred_ms
    if fact.kind == OPENED:
        t[_O] = _earliest(t[_O], at)
    elif fact.kind == FIRST_RESPONSE:
        t[_FR] = _earliest(t[_FR], at)
    elif fact.kind == RESOLVED:
        t[_RS] = _latest(t[_RS], at)
    elif fact.kind == REOPENED:
        t[_RO] = _latest(t[_RO], at)
        t[_N] = (t[_N] or 0) + 1
    else:
        raise ValueError(f"unknown ticket event kind {fact.kind!r}")
    after = ticket_marks(t, config)
    if after != before:
        _move_marks(state, before, after, config)
    if len(state.tickets) > config.max_tickets:
        _fold_one(state, config)
    return state


def _fold_one(state: ServiceState, config: ServiceConfig) -> None:
    closed = [(t[_RS], tid) for tid, t in state.tickets.items() if t[_RS] is not None and not is_open(t)]
    if closed:
        _, victim = min(closed)
    else:
        victim = min(state.tickets, key=lambda tid: (state.tickets[tid][_O] or 0, tid))
    t = state.tickets.pop(victim)
    f = state.folded
    f.tickets += 1
    f.reopens += t[_N] or 0
    # a folded ticket is judged as of its last known time
    last = max(x for x in t[:4] if x is not None)
    f.breaches += int(_breached(t, last, config))
    if t[_O] is not None and t[_FR] is not None:
        f.first_response_ms_sum += max(0, t[_FR] - t[_O])
        f.first_responses += 1


def _breached(t: list[int | None], now_ms: int, config: ServiceConfig) -> bool:
    """First response or resolution later than its SLA, or still missing past it at ``now_ms``."""
    opened = t[_O]
    if opened is None:
        return False
    fr_sla = config.first_response_sla_hours * HOUR_MS
    rs_sla = config.resolution_sla_hours * HOUR_MS
    responded = t[_FR] if t[_FR] is not None else now_ms
    if responded - opened > fr_sla:
        return True
    if is_open(t):
        return now_ms - opened > rs_sla
    return t[_RS] is not None and t[_RS] - opened > rs_sla


def _hours_between(t: list[int | None], start: int, end: int) -> float | None:
    """Hours from mark ``start`` to mark ``end`` of a ticket record (0 if out of order; None if either is missing)."""
    a, b = t[start], t[end]
    if a is None or b is None:
        return None
    d = b - a
    return (d if d > 0 else 0) / HOUR_MS  # max(0, d), without the builtin call


class ServiceSignals(Value, frozen=True):
    tickets_total: int
    open_tickets: int
    reopened_total: int
    sla_breaches: int
    first_response_hours_mean: float | None
    last_first_response_hours: float | None
    last_resolution_hours: float | None
    oldest_open_ticket_hours: float | None


#: ``ServiceSignals``' fields in their order, as ``service_fields`` gives them
ServiceFields = tuple[int, int, int, int, float | None, float | None, float | None, float | None]


def service_signals(state: ServiceState, now_ms: int, config: ServiceConfig) -> ServiceSignals:
    return ServiceSignals(*service_fields(state, now_ms, config))


def service_fields(state: ServiceState, now_ms: int, config: ServiceConfig) -> ServiceFields:
    """``service_signals``' fields as a plain tuple: the profile's renderer (schemas.profile) formats them
    straight away, so it builds no value object (a keyword-called Struct) for a customer with tickets."""
    f = state.folded
    if not state.tickets:  # what the general case below gives without tickets (most customers)
        n = f.first_responses
        mean = f.first_response_ms_sum / n / HOUR_MS if n else None
        return (f.tickets, 0, f.reopens, f.breaches, mean, None, None, None)
    # one pass over the tickets (it was eight list passes and two keyed max() calls per profile); ``is_open``,
    # ``_breached`` and ``max(0, x)`` written out in it (three calls per ticket fewer, the same comparisons)
    fr_sla = config.first_response_sla_hours * HOUR_MS
    rs_sla = config.resolution_sla_hours * HOUR_MS
    responded = response_ms = reopens = breaches = open_count = 0
    oldest_age: int | None = None
    # ties on time are broken by ticket id, so the result does not depend on arrival order
    opened_key: tuple[int, str] | None = None
    resolved_key: tuple[int, str] | None = None
    last_opened = last_resolved = None
    for tid, t in state.tickets.items():
        opened, first_response = t[_O], t[_FR]
        if opened is not None and first_response is not None:
            waited = first_response - opened
            response_ms += waited if waited > 0 else 0
            responded += 1
        reopens += t[_N] or 0
        if opened is None:
            continue  # not open, not breached (``_breached``)
        resolved_at, reopened_at = t[_RS], t[_RO]
        open_now = resolved_at is None or (reopened_at is not None and reopened_at > resolved_at)  # is_open
        if (first_response if first_response is not None else now_ms) - opened > fr_sla:
            breaches += 1
        elif open_now:
            if now_ms - opened > rs_sla:
                breaches += 1
        elif resolved_at is not None and resolved_at - opened > rs_sla:
            breaches += 1
        key = (opened, tid)
        if opened_key is None or key > opened_key:
            opened_key, last_opened = key, t
        if open_now:
            open_count += 1
            age = now_ms - opened
            if oldest_age is None or age > oldest_age:
                oldest_age = age
        elif resolved_at is not None:
            key = (resolved_at, tid)
            if resolved_key is None or key > resolved_key:
                resolved_key, last_resolved = key, t
    n_resp = responded + f.first_responses
    return (
        len(state.tickets) + f.tickets,
        open_count,
        reopens + f.reopens,
        breaches + f.breaches,
        None if not n_resp else (response_ms + f.first_response_ms_sum) / n_resp / HOUR_MS,
        None if last_opened is None else _hours_between(last_opened, _O, _FR),
        None if last_resolved is None else _hours_between(last_resolved, _O, _RS),
        None if oldest_age is None else (oldest_age if oldest_age > 0 else 0) / HOUR_MS,
    )


class ServiceRisk(Value, frozen=True):
    """What the churn warning reads from the tickets (spec: Churn warning, slow service)."""

    #: longest time an open ticket has waited for its first response, when past the SLA
    waiting_first_response_hours: float | None
    #: age of the oldest open ticket, when past the resolution SLA
    unresolved_hours: float | None
    #: tickets open again after a reopening, or reopened within the reopened window
    reopened: int
    #: earliest later event time at which one of the above changes with no new event
    next_change_ms: int | None


def service_risk(state: ServiceState, now_ms: int, config: ServiceConfig, reopened_window_ms: int) -> ServiceRisk:
    if not state.tickets:
        return _NO_RISK
    fr_sla = int(config.first_response_sla_hours * HOUR_MS)
    rs_sla = int(config.resolution_sla_hours * HOUR_MS)
    waits: list[int] = []
    unresolved: list[int] = []
    reopened = 0
    changes: list[int] = []
    for t in state.tickets.values():
        open_now = is_open(t)
        opened, reopened_at = t[_O], t[_RO]
        if open_now and opened is not None:  # an open ticket always has its opening
            age = now_ms - opened
            # a breach starts 1 ms after the SLA ("longer than")
            if t[_FR] is None and age > fr_sla:
                waits.append(age)
            elif t[_FR] is None:
                changes.append(opened + fr_sla + 1)
            if age > rs_sla:
                unresolved.append(age)
            else:
                changes.append(opened + rs_sla + 1)
        if reopened_at is not None and (open_now or now_ms - reopened_at < reopened_window_ms):
            reopened += 1
            if not open_now:
                changes.append(reopened_at + reopened_window_ms)
    future = [c for c in changes if c > now_ms]
    return ServiceRisk(
        waiting_first_response_hours=max(waits) / HOUR_MS if waits else None,
        unresolved_hours=max(unresolved) / HOUR_MS if unresolved else None,
        reopened=reopened,
        next_change_ms=min(future) if future else None,
    )


#: service_risk of a customer without tickets
_NO_RISK = ServiceRisk(None, None, 0, None)
