"""Retention alerts published for service teams (spec: Churn warning)."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from scoring.churn import ChurnReason


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class AlertReason(BaseModel):
    """One churn signal: what was observed against which threshold."""

    model_config = ConfigDict(frozen=True)

    code: str
    #: int first, so counts and scores stay ints in JSON
    observed: int | float | str
    threshold: int | float | str
    detail: str = ""

    @classmethod
    def of(cls, reason: ChurnReason) -> AlertReason:
        return cls(code=reason.code, observed=reason.observed, threshold=reason.threshold, detail=reason.detail)


class RetentionAlert(BaseModel):
    """A churn warning, with the value context that lets a team work the most valuable customers first.

    ``alert_id`` is ``{customer_id}:churn:{n}``, the customer's n-th alert,
    counted in its state: a batch replayed after a crash raises the same n,
    so consumers de-duplicate by id.
    """

    model_config = ConfigDict(frozen=True)

    alert_id: str
    customer_id: str
    #: the scorer's event-time clock when the alert was raised
    raised_at: AwareDatetime
    #: "entered" (reached medium/high, or still there after the cooldown) or "escalated"
    kind: str
    level: RiskLevel
    previous_level: RiskLevel
    risk_score: int = Field(ge=0, le=100)
    reasons: list[AlertReason]
    vip: bool
    #: VIP alerts come first
    priority: bool
    segment: str | None = None
    rfm_cell: str | None = None
    currency: str
    revenue: Decimal
    #: net revenue of the rolling revenue window (default 365 days)
    revenue_window: Decimal
    #: predictive CLV (BG/NBD × Gamma-Gamma × margin over the horizon)
    clv: Decimal | None = None
    clv_historical: Decimal | None = None
    p_alive: float | None = None
    #: the yearly profit that leaves with the customer: revenue_window × the customer's margin
    value_at_risk: Decimal
    suggested_action: str
    #: raised at an event time older than the wall clock by more than PULSE_HISTORICAL_ALERT_SECONDS (a replay,
    #: a backfill, a catch-up after downtime): true of its time, not for acting now; delivery may skip it
    historical: bool = False
