"""VIP flag changes, published on the VIP topic as they happen (spec: VIP flag)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import AwareDatetime, BaseModel, ConfigDict


class VipChange(BaseModel):
    """A customer became VIP (``vip`` true) or stopped being one.

    ``change_id`` is ``{customer_id}:vip:{n}`` with n the customer's n-th flag
    change: a batch replayed after a crash recomputes the same n from the
    recovered state, so consumers can de-duplicate by id.
    """

    model_config = ConfigDict(frozen=True)

    change_id: str
    customer_id: str
    vip: bool
    #: why: "top_share" (value in the top share), "segment" (a VIP segment) or "left"
    reason: str
    value_measure: str
    value: Decimal
    value_percentile: float | None
    rfm_cell: str | None
    segment: str | None
    currency: str
    #: the scorer's event-time clock when the change was scored
    at: AwareDatetime
