"""What a service team did about a retention alert: events of the retention-actions topic (issue 19, the loop back).

Shaped like the other input events (``event_id``, ``customer_id``,
``occurred_at`` with an offset, keyed by the customer id on a topic with the
inputs' partition count), so that the scoring worker can consume them like
orders and surveys: an acknowledged or resolved alert closes the customer's
episode, and a resolution's outcome feeds the outcome metrics. The router's
API writes them (``streams/router/api.py``).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from schemas.events import Id

#: the alert ids the scorer raises: {customer_id}:churn:{n}
ALERT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}:churn:[1-9][0-9]{0,9}$"


class ActionKind(StrEnum):
    ACKNOWLEDGED = "acknowledged"
    ASSIGNED = "assigned"
    RESOLVED = "resolved"
    #: written by the router (not the API) once a destination's receiver acknowledged the alert: how the worker
    #: learns where an episode was delivered (the save rate by destination)
    DELIVERED = "delivered"


class Outcome(StrEnum):
    CONTACTED = "contacted"
    OFFER_MADE = "offer_made"
    WON_BACK = "won_back"
    LOST = "lost"
    NO_ACTION = "no_action"


class RetentionAction(BaseModel):
    """One step of an alert's follow-up: acknowledged, assigned (to a person or team) or resolved with an outcome."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: Id
    customer_id: Id
    occurred_at: AwareDatetime
    alert_id: str = Field(pattern=ALERT_ID_PATTERN)
    action: ActionKind
    #: who did it (a user name, a team, a system); free text
    actor: str = Field("", max_length=128)
    #: assigned: the person or team now responsible
    assignee: str | None = Field(None, min_length=1, max_length=128)
    #: resolved: what came of it
    outcome: Outcome | None = None
    note: str = Field("", max_length=2000)
    #: delivered: the destination's name in the router configuration
    destination: str | None = Field(None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _fields_of_the_action(self) -> RetentionAction:
        if not self.alert_id.startswith(self.customer_id + ":churn:"):
            raise ValueError(f"alert {self.alert_id} is not customer {self.customer_id}'s")
        if self.action is ActionKind.ASSIGNED and self.assignee is None:
            raise ValueError("assigned needs an assignee")
        if self.action is ActionKind.RESOLVED and self.outcome is None:
            raise ValueError(f"resolved needs an outcome: one of {', '.join(o.value for o in Outcome)}")
        if self.action is not ActionKind.ASSIGNED and self.assignee is not None:
            raise ValueError("assignee belongs to assigned")
        if self.action is not ActionKind.RESOLVED and self.outcome is not None:
            raise ValueError("outcome belongs to resolved")
        if (self.action is ActionKind.DELIVERED) != (self.destination is not None):
            raise ValueError("destination belongs to delivered, and delivered needs one")
        return self


def customer_of(alert_id: str) -> str:
    """The customer id inside an alert id ``{customer_id}:churn:{n}`` (customer ids may contain ':')."""
    return alert_id.rsplit(":churn:", 1)[0]
