"""The customer profile served from Redis (one hash per customer)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict

from schemas.alerts import AlertReason
from scoring.churn import ChurnAssessment
from scoring.clv import ClvSignals
from scoring.customer import CustomerState, ScoringConfig, assess_customer
from scoring.orders import order_signals
from scoring.service import service_signals
from scoring.voice import voice_signals


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
    # churn warning (spec: Churn warning): the latest risk and why
    churn_risk: int
    churn_level: str
    churn_reasons: list[AlertReason]
    churn_alerts: int
    last_alert_at: AwareDatetime | None
    last_event_at: AwareDatetime | None
    events_total: int
    as_of: AwareDatetime

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
        if clv is None or risk is None:
            clv, risk = assess_customer(state, now_ms, None, config)
        sig = order_signals(state.orders, now_ms, config.orders)
        voice = voice_signals(state.voice, now_ms, config.voice)
        service = service_signals(state.service, now_ms, config.service)
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
            churn_risk=risk.score,
            churn_level=risk.level,
            churn_reasons=[AlertReason.of(r) for r in risk.reasons],
            churn_alerts=state.churn.alerts,
            last_alert_at=_at(state.churn.alert_ms),
            last_event_at=_at(state.last_event_ms),
            events_total=sum(state.events.values()),
            as_of=ms_to_datetime(now_ms),
        )

    def to_redis(self) -> dict[str, str]:
        """Flat string fields for HSET; absent values are empty strings so the hash shape is stable."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if isinstance(value, list):
                out[name] = orjson.dumps(value).decode()  # churn reasons: a JSON list
            else:
                out[name] = "" if value is None else str(value)
        return out

    @classmethod
    def from_redis(cls, fields: dict[str, str]) -> CustomerProfile:
        data: dict[str, object] = {k: (None if v == "" else v) for k, v in fields.items() if k in cls.model_fields}
        if isinstance(data.get("churn_reasons"), str):
            data["churn_reasons"] = orjson.loads(data["churn_reasons"])
        return cls.model_validate(data)
