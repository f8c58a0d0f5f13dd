"""The customer profile served from Redis (one hash per customer).

Two ways to the same hash: ``CustomerProfile`` is the validated edge model
(what the API and ``pulse profile`` read back with ``from_redis``), and
``render_profile`` renders the identical strings without pydantic, because the
worker renders a profile for every re-scored customer, and building and dumping
the model cost more than computing the signals it shows. ``render_profile`` takes
the C renderer (schemas/_native.c) where it is built, and this module's Python
renderer, its reference, for whatever the C one leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from operator import attrgetter
from types import ModuleType

import msgspec
import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict

from schemas.alerts import AlertReason
from scoring.churn import ChurnAssessment, ChurnReason
from scoring.clv import ClvSignals, value_at_risk_cents
from scoring.customer import CustomerState, ScoringConfig, assess_customer
from scoring.episodes import EpisodeState
from scoring.orders import MONTH_MS, OrderSignals, _average_cents, order_signals, window_revenue_cents
from scoring.tickets import HOUR_MS, ServiceSignals, ServiceState, service_fields, service_signals
from scoring.units import DAY_MS
from scoring.voice import (
    DETRACTOR,
    PASSIVE,
    PROMOTER,
    SEVERITIES,
    VoiceSignals,
    complaints_in_window,
    nps_category,
    voice_signals,
)

_native: ModuleType | None
try:  # the C renderer and packer (setup.py builds it when a C compiler is there; optional)
    from schemas import _native as _built
except ImportError:  # pragma: no cover - an install without a C compiler renders in Python
    _native = None
else:
    _native = _built


def cents_to_money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


def _round(value: float | None) -> float | None:
    """Profiles carry days and hours to 4 decimals."""
    return None if value is None else round(value, 4)


def money_or_none(cents: int | None) -> Decimal | None:
    return None if cents is None else cents_to_money(cents)


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else ms_to_datetime(ms)


def profile_signals(
    state: CustomerState,
    now_ms: int,
    config: ScoringConfig,
    clv: ClvSignals | None,
    risk: ChurnAssessment | None,
) -> tuple[ClvSignals, ChurnAssessment, OrderSignals, VoiceSignals, ServiceSignals]:
    """Everything a profile shows, as ``state, now -> signals``: both renderings (the pydantic edge model and
    the worker's fast path) take it from here, so they cannot drift apart."""
    if clv is None or risk is None:
        clv, risk = assess_customer(state, now_ms, None, config)
    return (
        clv,
        risk,
        order_signals(state.orders, now_ms, config.orders),
        voice_signals(state.voice, now_ms, config.voice),
        service_signals(state.service, now_ms, config.service),
    )


def _value_at_risk_cents(state: CustomerState, sig: OrderSignals, config: ScoringConfig) -> int:
    o = state.orders
    return value_at_risk_cents(
        o.revenue_cents, o.cost_cents, sig.window_revenue_cents, config.orders.default_gross_margin
    )


def _buckets(state: CustomerState, config: ScoringConfig) -> list[tuple[int, int]]:
    width = config.orders.bucket_ms
    return [(bucket * width, cents) for bucket, cents in sorted(state.orders.revenue_buckets.items())]


class AlertEpisode(BaseModel):
    """The customer's latest alert episode (scoring.episodes): what the alert led to. Open while the customer
    is at risk (``closed_at`` empty); the save window says whether the customer bought again after it."""

    model_config = ConfigDict(frozen=True)

    #: the alert that opened it, and the latest one raised in it (a reminder while nobody acted)
    alert_id: str
    latest_alert_id: str
    raised_at: AwareDatetime
    level: str
    #: open, acknowledged, assigned, resolved
    status: str
    owner: str | None
    #: resolved: contacted, offer_made, won_back, lost, no_action
    outcome: str | None
    #: the customer recovered (level low) or a higher-level episode took over
    closed_at: AwareDatetime | None
    #: the first purchase within PULSE_SAVE_WINDOW_DAYS after the alert, and the window's revenue
    saved_at: AwareDatetime | None
    recovered: Decimal
    #: the router destinations it was delivered to
    destinations: list[str]
    #: the save window is over
    settled: bool

    @classmethod
    def latest(cls, customer_id: str, state: EpisodeState | None) -> AlertEpisode | None:
        if state is None or not state.episodes:
            return None
        e = state.episodes[-1]
        return cls(
            alert_id=f"{customer_id}:churn:{e.first_alert}",
            latest_alert_id=f"{customer_id}:churn:{e.last_alert}",
            raised_at=ms_to_datetime(e.raised_ms),
            level=e.level,
            status=e.status,
            owner=e.owner,
            outcome=e.outcome,
            closed_at=_at(e.closed_ms),
            saved_at=_at(e.purchased_ms),
            recovered=cents_to_money(e.recovered_cents),
            destinations=list(e.destinations),
            settled=e.settled,
        )


class CustomerProfile(BaseModel):
    """Latest scores of one customer, as of the scorer's event-time clock ``as_of``."""

    model_config = ConfigDict(frozen=True)

    customer_id: str
    currency: str
    revenue: Decimal
    profit: Decimal
    orders: int
    refunds: int
    aov: Decimal | None
    revenue_window: Decimal
    first_purchase_at: AwareDatetime | None
    last_purchase_at: AwareDatetime | None
    recency_days: float | None
    tenure_days: float | None
    orders_per_month: float | None
    # RFM against the whole population (spec: RFM, VIP flag)
    r_score: int | None
    f_score: int | None
    m_score: int | None
    rfm_cell: str | None
    segment: str | None
    vip: bool
    # voice of the customer (spec: Loyalty and satisfaction)
    nps: int | None
    nps_category: str | None
    nps_previous: int | None
    csat: int | None
    csat_satisfied: bool | None
    complaints_window: int
    complaint_worst_severity: str | None
    complaints_total: int
    # service (spec: Service)
    tickets_total: int
    open_tickets: int
    reopened_total: int
    sla_breaches: int
    first_response_hours_mean: float | None
    last_first_response_hours: float | None
    last_resolution_hours: float | None
    oldest_open_ticket_hours: float | None
    # lifetime value (spec: Lifetime value)
    p_alive: float | None
    expected_purchases: float | None
    expected_order_value: Decimal | None
    clv: Decimal | None
    clv_historical: Decimal | None
    #: the yearly profit that leaves with the customer if it churns (as the alerts' value_at_risk): the at-risk
    #: queue's sort key
    value_at_risk: Decimal
    #: net revenue by time bucket of the rolling window, [[bucket start (epoch ms), cents], ...] oldest first: the
    #: console charts spend by month from it (the buckets are ``revenue_bucket_days`` wide)
    revenue_buckets: list[tuple[int, int]]
    # churn warning (spec: Churn warning): the latest risk and why
    churn_risk: int
    churn_level: str
    churn_reasons: list[AlertReason]
    churn_alerts: int
    last_alert_at: AwareDatetime | None
    last_event_at: AwareDatetime | None
    events_total: int
    as_of: AwareDatetime
    #: the latest alert episode (issue 19), None if never alerted
    episode: AlertEpisode | None = None

    @classmethod
    def from_state(
        cls,
        customer_id: str,
        state: CustomerState,
        now_ms: int,
        config: ScoringConfig,
        currency: str,
        clv: ClvSignals | None = None,
        risk: ChurnAssessment | None = None,
    ) -> CustomerProfile:
        """``clv``/``risk``: as the worker assessed them (with the population's purchase gap); else assessed here."""
        clv, risk, sig, voice, service = profile_signals(state, now_ms, config, clv, risk)
        return cls(
            customer_id=customer_id,
            currency=currency,
            revenue=cents_to_money(sig.revenue_cents),
            profit=cents_to_money(sig.profit_cents),
            orders=sig.orders,
            refunds=sig.refunds,
            aov=money_or_none(sig.aov_cents),
            revenue_window=cents_to_money(sig.window_revenue_cents),
            first_purchase_at=_at(sig.first_purchase_ms),
            last_purchase_at=_at(sig.last_purchase_ms),
            recency_days=_round(sig.recency_days),
            tenure_days=_round(sig.tenure_days),
            orders_per_month=_round(sig.orders_per_month),
            r_score=None if state.rfm_cell is None else int(state.rfm_cell[0]),
            f_score=None if state.rfm_cell is None else int(state.rfm_cell[1]),
            m_score=None if state.rfm_cell is None else int(state.rfm_cell[2]),
            rfm_cell=state.rfm_cell,
            segment=state.segment,
            vip=state.vip,
            nps=voice.nps,
            nps_category=voice.nps_category,
            nps_previous=voice.nps_previous,
            csat=voice.csat,
            csat_satisfied=voice.csat_satisfied,
            complaints_window=voice.complaints_window,
            complaint_worst_severity=voice.complaint_worst_severity,
            complaints_total=voice.complaints_total,
            tickets_total=service.tickets_total,
            open_tickets=service.open_tickets,
            reopened_total=service.reopened_total,
            sla_breaches=service.sla_breaches,
            first_response_hours_mean=_round(service.first_response_hours_mean),
            last_first_response_hours=_round(service.last_first_response_hours),
            last_resolution_hours=_round(service.last_resolution_hours),
            oldest_open_ticket_hours=_round(service.oldest_open_ticket_hours),
            p_alive=_round(clv.p_alive),
            expected_purchases=_round(clv.expected_purchases),
            expected_order_value=money_or_none(clv.expected_order_value_cents),
            clv=money_or_none(clv.clv_predictive_cents),
            clv_historical=money_or_none(clv.clv_historical_cents),
            value_at_risk=cents_to_money(_value_at_risk_cents(state, sig, config)),
            revenue_buckets=_buckets(state, config),
            churn_risk=risk.score,
            churn_level=risk.level,
            churn_reasons=[AlertReason.of(r) for r in risk.reasons],
            churn_alerts=state.churn.alerts,
            last_alert_at=_at(state.churn.alert_ms),
            last_event_at=_at(state.last_event_ms),
            events_total=sum(state.events.values()),
            as_of=ms_to_datetime(now_ms),
            episode=AlertEpisode.latest(customer_id, state.episodes),
        )

    def to_redis(self) -> dict[str, str]:
        """Flat string fields for HSET; absent values are empty strings so the hash shape is stable."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if isinstance(value, list | dict):
                # churn reasons, revenue buckets: a JSON list; the episode: an object
                out[name] = orjson.dumps(value).decode()
            else:
                out[name] = "" if value is None else str(value)
        return out

    @classmethod
    def from_redis(cls, fields: dict[str, str]) -> CustomerProfile:
        data: dict[str, object] = {k: (None if v == "" else v) for k, v in fields.items() if k in cls.model_fields}
        for name in ("churn_reasons", "revenue_buckets", "episode"):
            value = data.get(name)
            if isinstance(value, str):
                data[name] = orjson.loads(value)
        # a hash written before these fields existed (the worker rewrites it at its next change or sweep)
        data.setdefault("revenue_buckets", [])
        data.setdefault("value_at_risk", "0")
        return cls.model_validate(data)


#: below this the integer rendering equals the float-based ``ms_to_datetime`` to the microsecond (2100-01-01)
_FAST_ISO_MS = 4_102_444_800_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
#: day number -> "YYYY-MM-DD"; bounded by _FAST_ISO_MS (at most ~47,500 days)
_DAYS: dict[int, str] = {}
_HOUR_MINUTES = [f"T{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
_SECONDS = [f"{s:02d}" for s in range(60)]
_MILLIS = ["Z"] + [f".{ms:03d}000Z" for ms in range(1, 1000)]


def _iso(ms: int) -> str:
    """AwareDatetime as pydantic dumps it in mode="json" ("Z", microseconds only when not 0), from integer
    arithmetic and small tables: a datetime plus isoformat() was the largest part of rendering a profile."""
    if 0 <= ms < _FAST_ISO_MS:
        day = ms // 86_400_000
        text = _DAYS.get(day)
        if text is None:
            text = _DAYS[day] = date.fromordinal(_EPOCH_ORDINAL + day).isoformat()
        rest = ms - day * 86_400_000  # (divmod builds a tuple: more instructions than the two operations)
        minute = rest // 60_000
        rest -= minute * 60_000
        return f"{text}{_HOUR_MINUTES[minute]}{_SECONDS[rest // 1000]}{_MILLIS[rest % 1000]}"
    text = ms_to_datetime(ms).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


#: (ms, text) of the last ``as_of`` rendered: a batch renders its partition's profiles at one clock
_LAST_AS_OF: tuple[int, str] = (-1, "")


def _as_of(ms: int) -> str:
    """``_iso(ms)``, remembered for the next profile (one tuple, read and replaced whole)."""
    global _LAST_AS_OF
    last = _LAST_AS_OF
    if last[0] == ms:
        return last[1]
    text = _iso(ms)
    _LAST_AS_OF = (ms, text)
    return text


#: below this many cents "%d.%02d" equals str(Decimal(cents).scaleb(-2)) (which rounds past 28 digits)
_FAST_CENTS = 10**18


def _money(cents: int | None) -> str:
    if cents is None:
        return ""
    if 0 <= cents < _FAST_CENTS:
        # the fastest spelling under callgrind (issue 18): 1,900 instructions against "%d.%02d" % divmod's 3,000
        return f"{cents // 100}.{_CENTS[cents % 100]}"
    if -_FAST_CENTS < cents < 0:
        return f"-{-cents // 100}.{_CENTS[-cents % 100]}"
    return str(cents_to_money(cents))


#: the two digits of the cents
_CENTS = tuple(f"{c:02d}" for c in range(100))


def _float(value: float | None) -> str:
    """str(round(value, 4)) as pydantic keeps it (an int as a float: "3.0").

    ".4f" rounds the exact binary value as round() does, and below 1e11 the 4-decimal string without its
    trailing zeros is the shortest repr of the rounded float, so it prints the same at half the cost.
    """
    if value is None:
        return ""
    if -1e11 < value < 1e11:
        text = f"{value:.4f}".rstrip("0")
        return text + "0" if text[-1] == "." else text
    return str(float(round(value, 4)))  # huge, inf, nan


def _reason(reason: ChurnReason) -> dict[str, object]:
    """AlertReason as model_dump(mode="json") gives it; pydantic only for a value its int|float|str union would
    convert (a bool or a foreign numeric type), which the scorers do not produce."""
    observed, threshold = reason.observed, reason.threshold
    if type(observed) in _PLAIN and type(threshold) in _PLAIN:
        return {"code": reason.code, "observed": observed, "threshold": threshold, "detail": reason.detail}
    return AlertReason.of(reason).model_dump(mode="json")


_PLAIN = frozenset((int, float, str))


def _episode(customer_id: str, state: EpisodeState | None) -> str:
    """``AlertEpisode.latest(...)`` as ``to_redis`` writes it (JSON of its model_dump), without pydantic."""
    if state is None or not state.episodes:
        return ""
    e = state.episodes[-1]
    return orjson.dumps(
        {
            "alert_id": f"{customer_id}:churn:{e.first_alert}",
            "latest_alert_id": f"{customer_id}:churn:{e.last_alert}",
            "raised_at": _iso(e.raised_ms),
            "level": e.level,
            "status": e.status,
            "owner": e.owner,
            "outcome": e.outcome,
            "closed_at": None if e.closed_ms is None else _iso(e.closed_ms),
            "saved_at": None if e.purchased_ms is None else _iso(e.purchased_ms),
            "recovered": _money(e.recovered_cents),
            "destinations": list(e.destinations),
            "settled": e.settled,
        }
    ).decode()


def _pairs(args: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(args[::2], args[1::2], strict=True))


def profile_args(
    customer_id: str,
    state: CustomerState,
    now_ms: int,
    config: ScoringConfig,
    currency: str,
    clv: ClvSignals | None = None,
    risk: ChurnAssessment | None = None,
) -> tuple[str, ...]:
    """The profile's HSET arguments (:func:`_render`)."""
    if clv is None or risk is None:
        clv, risk = assess_customer(state, now_ms, None, config)
    return _render(customer_id, state, now_ms, config, currency, clv, risk)[0]


#: str(n) of the small counts most profile fields hold: a table lookup is a fifth of str()'s instructions
_N_INTS = 1024
_INTS = tuple(str(n) for n in range(_N_INTS))

#: (config, its bucket width in ms, window in buckets, complaint window in days) of the last config rendered with
_CONSTANTS: tuple[ScoringConfig | None, int, int, int] = (None, 0, 0, 0)


def _constants(config: ScoringConfig) -> tuple[int, int, int]:
    """The config values a rendering reads that are properties (computed at each read), remembered for the
    config object they were read from (one tuple, read and replaced whole)."""
    global _CONSTANTS
    last = _CONSTANTS
    if last[0] is not config:
        orders = config.orders
        last = _CONSTANTS = (config, orders.bucket_ms, orders.window_buckets, config.voice.complaint_window_days)
    return last[1], last[2], last[3]


def _render(
    customer_id: str,
    state: CustomerState,
    now_ms: int,
    config: ScoringConfig,
    currency: str,
    clv: ClvSignals,
    risk: ChurnAssessment,
) -> tuple[tuple[str, ...], int]:
    """The profile's HSET arguments and value at risk: by the C renderer (schemas._native) when it is built and
    on, for the values inside its ranges; else, and as its reference, by :func:`_render_python`."""
    native = _NATIVE_RENDER
    if native is not None:
        rendered = native(customer_id, state, now_ms, _native_context(config), currency, clv, risk)
        if rendered is not None:
            return rendered
    return _render_python(customer_id, state, now_ms, config, currency, clv, risk)


def _render_python(
    customer_id: str,
    state: CustomerState,
    now_ms: int,
    config: ScoringConfig,
    currency: str,
    clv: ClvSignals,
    risk: ChurnAssessment,
) -> tuple[tuple[str, ...], int]:
    """The profile's HSET arguments, field, value, field, value, ...: exactly the keys, order and strings of
    ``CustomerProfile.from_state(...).to_redis()``, flat, so the sink packs them without flattening a dict.

    The order, voice and service fields are read off the state here rather than from the scorers' signal
    objects (``profile_signals``, the edge model's path): building those three frozen value objects (keyword
    calls take CPython's slow generic call path) to read a few fields each was ~9 % of a rendering (issue 18).
    A customer with ticket records or complaint days (a minority) still goes through the scorers' functions.

    tests/unit/test_profile_fields.py holds the two equal over scored histories; a new profile field must be
    added to both. Also returns the value at risk in cents (the at-risk index's sort key, streams.at_risk)."""
    o = state.orders
    first, last, orders = o.first_purchase_ms, o.last_purchase_ms, o.orders
    if last is not None and first is not None:  # as scoring.orders.order_signals
        # max(0, x) as a comparison: a builtin call was ~700 instructions (the same value: ints and floats here)
        tenure_ms = now_ms - first if now_ms > first else 0
        recency = _float((now_ms - last if now_ms > last else 0) / DAY_MS)
        tenure = _float(tenure_ms / DAY_MS)
        months = tenure_ms / MONTH_MS
        per_month = _float(orders / (months if months > 1.0 else 1.0))
    else:
        recency = tenure = per_month = ""
    bucket_ms, window_buckets, complaint_days_window = _constants(config)
    buckets = o.revenue_buckets
    if buckets:
        # the buckets sorted once serve the window's bounds and the JSON (scoring.orders.window_revenue_cents took
        # min() and max() of them, and two config properties, per call)
        items = sorted(buckets.items())
        current = now_ms // bucket_ms
        if current - window_buckets < items[0][0] and items[-1][0] <= current:
            window = sum(buckets.values())
        else:
            window = window_revenue_cents(o, now_ms, config.orders)
        buckets_json = orjson.dumps([(bucket * bucket_ms, cents) for bucket, cents in items]).decode()
    else:
        window, buckets_json = 0, "[]"
    voice = state.voice
    nps = voice.nps
    days = voice.complaint_days
    if days:  # complaints in the window, without the other voice signals
        count, worst = complaints_in_window(days, now_ms, complaint_days_window)
        complaints_window, worst_severity = str(count), "" if worst is None else SEVERITIES[worst]
    else:
        complaints_window, worst_severity = "0", ""
    csat = voice.csat
    service = state.service
    if service.tickets:
        tickets = _ticket_texts(service, now_ms, config)
    else:  # as scoring.tickets.service_signals without ticket records (most customers)
        f = service.folded
        n = f.first_responses
        mean = _float(f.first_response_ms_sum / n / HOUR_MS) if n else ""
        n_tickets, reopens, breaches = f.tickets, f.reopens, f.breaches
        tickets = (
            _INTS[n_tickets] if 0 <= n_tickets < _N_INTS else str(n_tickets),
            "0",
            _INTS[reopens] if 0 <= reopens < _N_INTS else str(reopens),
            _INTS[breaches] if 0 <= breaches < _N_INTS else str(breaches),
            mean,
            "",
            "",
            "",
        )
    cell = state.rfm_cell
    reasons = risk.reasons
    alert_ms, last_event_ms = state.churn.alert_ms, state.last_event_ms
    at_risk = value_at_risk_cents(o.revenue_cents, o.cost_cents, window, config.orders.default_gross_margin)
    # a field and its value a line, in the edge model's order
    # fmt: off
    return (
        "customer_id", customer_id,
        "currency", currency,
        "revenue", _money(o.revenue_cents),
        "profit", _money(o.revenue_cents - o.cost_cents),
        "orders", _INTS[orders] if 0 <= orders < _N_INTS else str(orders),
        "refunds", _INTS[refunds] if 0 <= (refunds := o.refunds) < _N_INTS else str(refunds),
        "aov", _money(_average_cents(o.revenue_cents, orders)) if orders else "",
        "revenue_window", _money(window),
        "first_purchase_at", "" if first is None else _iso(first),
        "last_purchase_at", "" if last is None else _iso(last),
        "recency_days", recency,
        "tenure_days", tenure,
        "orders_per_month", per_month,
        # the scorer builds the cell from int scores: its characters are ASCII digits, str(int(c)) == c
        "r_score", "" if cell is None else cell[0],
        "f_score", "" if cell is None else cell[1],
        "m_score", "" if cell is None else cell[2],
        "rfm_cell", "" if cell is None else cell,
        "segment", "" if state.segment is None else str(state.segment),
        "vip", "True" if state.vip else "False",
        "nps", str(nps[0][1]) if nps else "",
        "nps_category", nps_category(nps[0][1], config.voice) if nps else "",
        "nps_previous", str(nps[1][1]) if len(nps) > 1 else "",
        "csat", "" if csat is None else str(csat[1]),
        "csat_satisfied", "" if csat is None else ("True" if csat[1] >= config.voice.csat_satisfied_min else "False"),
        "complaints_window", complaints_window,
        "complaint_worst_severity", worst_severity,
        "complaints_total", _INTS[total] if 0 <= (total := voice.complaints_total) < _N_INTS else str(total),
        "tickets_total", tickets[0],
        "open_tickets", tickets[1],
        "reopened_total", tickets[2],
        "sla_breaches", tickets[3],
        "first_response_hours_mean", tickets[4],
        "last_first_response_hours", tickets[5],
        "last_resolution_hours", tickets[6],
        "oldest_open_ticket_hours", tickets[7],
        "p_alive", _float(clv.p_alive),
        "expected_purchases", _float(clv.expected_purchases),
        "expected_order_value", _money(clv.expected_order_value_cents),
        "clv", _money(clv.clv_predictive_cents),
        "clv_historical", _money(clv.clv_historical_cents),
        "value_at_risk", _money(at_risk),
        "revenue_buckets", buckets_json,
        "churn_risk", _INTS[score] if 0 <= (score := risk.score) < _N_INTS else str(score),
        "churn_level", str(risk.level),
        "churn_reasons", _reasons_json(reasons) if reasons else "[]",
        "churn_alerts", _INTS[alerts] if 0 <= (alerts := state.churn.alerts) < _N_INTS else str(alerts),
        "last_alert_at", "" if alert_ms is None else _iso(alert_ms),
        "last_event_at", "" if last_event_ms is None else _iso(last_event_ms),
        "events_total", _INTS[events] if 0 <= (events := sum(state.events.values())) < _N_INTS else str(events),
        "as_of", _as_of(now_ms),
        "episode", _episode(customer_id, state.episodes),
    ), at_risk
    # fmt: on


def _ticket_texts(service: ServiceState, now_ms: int, config: ScoringConfig) -> tuple[str, ...]:
    """The eight ticket fields of a customer with ticket records: service_signals' fields as a tuple (no
    ServiceSignals built to read its fields back). The C renderer calls service_fields and formats the same."""
    n_tickets, n_open, reopens, breaches, mean_h, first_h, resolution_h, oldest_h = service_fields(
        service, now_ms, config.service
    )
    return (
        str(n_tickets),
        str(n_open),
        str(reopens),
        str(breaches),
        _float(mean_h),
        _float(first_h),
        _float(resolution_h),
        _float(oldest_h),
    )


def _reasons_json(reasons: tuple[ChurnReason, ...]) -> str:
    return orjson.dumps([_reason(r) for r in reasons]).decode()


#: (config, the C renderer's context for it) of the last config rendered with
_NATIVE_CONTEXT: tuple[ScoringConfig | None, tuple[object, ...]] = (None, ())


def _native_context(config: ScoringConfig) -> tuple[object, ...]:
    """What the C renderer reads of ``config``, and the Python functions it calls for what it leaves to Python
    (ticket records: the scorer's service_fields; churn reasons, and an episode whose texts JSON escapes: their
    JSON), remembered for the config object (one tuple, read and replaced whole)."""
    global _NATIVE_CONTEXT
    last = _NATIVE_CONTEXT
    if last[0] is not config:
        orders, voice = config.orders, config.voice
        context = (
            orders.bucket_ms,
            orders.window_buckets,
            voice.complaint_window_days,
            voice.csat_satisfied_min,
            voice.nps_promoter_min,
            voice.nps_passive_min,
            float(orders.default_gross_margin),
            PROMOTER,
            PASSIVE,
            DETRACTOR,
            SEVERITIES,
            lambda service, now_ms: service_fields(service, now_ms, config.service),
            _reasons_json,
            _episode,
        )
        last = _NATIVE_CONTEXT = (config, context)
    return last[1]


#: the C renderer and HSET packer (schemas._native), None when not built or turned off (:func:`use_native`)
_NATIVE_RENDER: Callable[..., tuple[tuple[str, ...], int] | None] | None = None
_NATIVE_PACK: Callable[[str, tuple[str, ...]], bytes | None] | None = None


def native_available() -> bool:
    """Whether the C renderer and packer (schemas._native) were built with this install."""
    return _native is not None


def use_native(on: bool) -> bool:
    """Render profiles and pack their HSETs in C (on, when built) or in Python; returns whether C is in use. The
    worker calls it with ``PULSE_NATIVE_PROFILES``; C is on from import when built."""
    global _NATIVE_RENDER, _NATIVE_PACK
    native = _native if on else None
    _NATIVE_RENDER = None if native is None else native.render
    _NATIVE_PACK = None if native is None else native.pack_hset
    return native is not None


def native_in_use() -> bool:
    """Whether profiles are rendered and packed in C now (:func:`use_native`)."""
    return _NATIVE_RENDER is not None


def native_packer() -> Callable[[str, tuple[str, ...]], bytes | None] | None:
    """The C HSET packer when in use (streams.sinks.redis_profiles.pack_hset), else None."""
    return _NATIVE_PACK


class RenderedProfile(msgspec.Struct, gc=False):
    """A re-scored customer as the worker hands it to the Redis sink: the hash's HSET arguments plus the VIP flag
    the sink keys the VIP set on, so nothing downstream parses the strings back.

    A msgspec Struct rather than a dataclass: built once per rendered customer, its ``__init__`` runs in C, and
    holding only strings and numbers it needs no GC tracking (``gc=False``)."""

    customer_id: str
    vip: bool
    #: field, value, field, value, ... (profile_args)
    args: tuple[str, ...]
    #: what the at-risk index (streams.at_risk) reads, as rendered, so it parses nothing back: the churn reasons'
    #: codes and the value at risk in cents (None: not known, e.g. a profile built from its fields)
    reason_codes: tuple[str, ...] | None = None
    value_at_risk_cents: int | None = None

    @property
    def fields(self) -> dict[str, str]:
        return _pairs(self.args)

    def value(self, name: str) -> str:
        return self.args[_VALUE_AT[name]]

    def model(self) -> CustomerProfile:
        """The edge model of these fields, as a reader of Redis gets it."""
        return CustomerProfile.from_redis(self.fields)


_CODE = attrgetter("code")

#: field name -> index of its value in profile_args
_VALUE_AT = {name: 2 * i + 1 for i, name in enumerate(CustomerProfile.model_fields)}


def render_profile(
    customer_id: str,
    state: CustomerState,
    now_ms: int,
    config: ScoringConfig,
    currency: str,
    clv: ClvSignals | None = None,
    risk: ChurnAssessment | None = None,
) -> RenderedProfile:
    if clv is None or risk is None:
        clv, risk = assess_customer(state, now_ms, None, config)
    args, at_risk = _render(customer_id, state, now_ms, config, currency, clv, risk)
    codes = tuple(map(_CODE, risk.reasons)) if risk.reasons else ()
    return RenderedProfile(customer_id, bool(state.vip), args, codes, at_risk)


if _native is not None and tuple(_native.FIELDS) != tuple(CustomerProfile.model_fields):  # pragma: no cover
    # a field added to the edge model and not to schemas/_native.c: the C renderer would write another layout
    _native = None
use_native(True)
