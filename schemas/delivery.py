"""Records of the delivery dead-letter topic: an alert the router gave up delivering to one destination."""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict


class DeliveryDeadLetter(BaseModel):
    """One (event, destination) that was not delivered, and why; the event itself is in ``payload``."""

    model_config = ConfigDict(frozen=True)

    #: the alert id (or VIP change id); empty for a record that was not a readable event
    event_id: str
    event: str
    #: the destination's name in the router configuration; empty for an unreadable record
    destination: str
    destination_kind: str
    #: permanent_error (the receiver refused: retrying would not help), retries_exhausted, invalid_event
    reason: str
    detail: str
    attempts: int
    first_attempt_at: AwareDatetime | None
    dead_lettered_at: AwareDatetime
    source_topic: str
    partition: int
    offset: int
    #: the event as read (JSON object), or the raw text of an unreadable record
    payload: Any
