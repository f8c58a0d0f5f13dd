"""The customer profile served from Redis (one hash per customer)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from scoring.customer import CustomerState
from scoring.orders import OrderScoringConfig, order_signals


def cents_to_money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


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
    last_event_at: AwareDatetime | None
    events_total: int
    as_of: AwareDatetime

    @classmethod
    def from_state(
        cls, customer_id: str, state: CustomerState, now_ms: int, config: OrderScoringConfig, currency: str
    ) -> CustomerProfile:
        sig = order_signals(state.orders, now_ms, config)
        return cls(
            customer_id=customer_id,
            currency=currency,
            revenue=cents_to_money(sig.revenue_cents),
            profit=cents_to_money(sig.profit_cents),
            orders=sig.orders,
            refunds=sig.refunds,
            aov=None if sig.aov_cents is None else cents_to_money(sig.aov_cents),
            revenue_window=cents_to_money(sig.window_revenue_cents),
            first_purchase_at=None if sig.first_purchase_ms is None else ms_to_datetime(sig.first_purchase_ms),
            last_purchase_at=None if sig.last_purchase_ms is None else ms_to_datetime(sig.last_purchase_ms),
            recency_days=None if sig.recency_days is None else round(sig.recency_days, 4),
            tenure_days=None if sig.tenure_days is None else round(sig.tenure_days, 4),
            orders_per_month=None if sig.orders_per_month is None else round(sig.orders_per_month, 4),
            last_event_at=None if state.last_event_ms is None else ms_to_datetime(state.last_event_ms),
            events_total=sum(state.events.values()),
            as_of=ms_to_datetime(now_ms),
        )

    def to_redis(self) -> dict[str, str]:
        """Flat string fields for HSET; absent values are empty strings so the hash shape is stable."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            out[name] = "" if value is None else str(value)
        return out

    @classmethod
    def from_redis(cls, fields: dict[str, str]) -> CustomerProfile:
        return cls.model_validate({k: (None if v == "" else v) for k, v in fields.items() if k in cls.model_fields})
