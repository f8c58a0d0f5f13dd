"""Retention alerts published for service teams (spec: Churn warning)."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class AlertReason(BaseModel):
    """One churn signal: what was observed against which threshold."""

    model_config = ConfigDict(frozen=True)

    code: str
    observed: float | str
    threshold: float | str
    detail: str = ""


class RetentionAlert(BaseModel):
    """A churn warning, with the value context that lets a team work the most valuable customers first."""

    model_config = ConfigDict(frozen=True)

    alert_id: str
    customer_id: str
    raised_at: AwareDatetime
    level: RiskLevel
    risk_score: int = Field(ge=0, le=100)
    reasons: list[AlertReason]
    vip: bool
    priority: bool
    segment: str | None = None
    revenue: Decimal
    clv: Decimal | None = None
    value_at_risk: Decimal | None = None
    suggested_action: str
