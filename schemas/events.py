"""Input events (spec: Input events), validated strictly at the edge.

Strict mode means no silent coercion: ``"5"`` is not an NPS answer, a naive
timestamp is not an event time, ``NaN`` is not an amount. Anything that fails
becomes a :class:`EventRejected` with a reason code from a small fixed set, so
the dead-letter topic and the ``..._dead_letters_total`` counter can say why.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar

import pydantic
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic_core import PydanticCustomError

#: Ids (customer, order, ticket …): printable, no spaces, bounded. The same
#: pattern decides what the HTTP API rejects as a malformed id.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
#: Amounts above this (in the order's currency) are rejected as absurd: no
#: single order of a CRM customer comes near it, and it keeps cents in int64.
MAX_AMOUNT = Decimal("1000000000")
Money = Annotated[Decimal, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False, decimal_places=4)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
#: The representable event times, in Unix milliseconds: what a UTC ``datetime`` holds (years 1 to 9999).
#: A time outside (``9999-12-31T23:59:59-14:00`` is year 10000 in UTC) is ``invalid_time`` at the edge, so
#: no later conversion (to UTC, to milliseconds and back for ``as_of`` or ``raised_at``) can overflow.
MIN_TIME_MS = -62_135_596_800_000
MAX_TIME_MS = 253_402_300_799_999


def time_ms(at: datetime) -> int:
    """Unix milliseconds of an aware time (the scorers' event time)."""
    return int(at.timestamp() * 1000)


def representable(at: datetime) -> bool:
    """``at`` converts to UTC and to milliseconds and back without leaving years 1 to 9999."""
    try:
        at.astimezone(UTC)
        ms = time_ms(at)
        if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
            return False
        datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return False
    return True


class Kind(StrEnum):
    ORDER = "order"
    SURVEY = "survey"
    COMPLAINT = "complaint"
    SUPPORT = "support"


class OrderStatus(StrEnum):
    COMPLETED = "completed"
    REFUNDED = "refunded"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class TicketEventKind(StrEnum):
    OPENED = "opened"
    FIRST_RESPONSE = "first_response"
    RESOLVED = "resolved"
    REOPENED = "reopened"


class _Event(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    KIND: ClassVar[Kind]

    event_id: Id
    customer_id: Id
    occurred_at: AwareDatetime

    @field_validator("occurred_at")
    @classmethod
    def _representable(cls, value: datetime) -> datetime:
        if not representable(value):
            raise PydanticCustomError("invalid_time", "outside the representable range (UTC years 1 to 9999)")
        return value

    @property
    def occurred_ms(self) -> int:
        return time_ms(self.occurred_at)


class OrderEvent(_Event):
    KIND: ClassVar[Kind] = Kind.ORDER
    order_id: Id
    amount: Money
    cost: Money | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    status: OrderStatus


class SurveyEvent(_Event):
    KIND: ClassVar[Kind] = Kind.SURVEY
    nps: Annotated[int, Field(ge=0, le=10)] | None = None
    csat: Annotated[int, Field(ge=1, le=5)] | None = None

    @model_validator(mode="after")
    def _one_answer(self) -> SurveyEvent:
        if self.nps is None and self.csat is None:
            raise ValueError("a survey needs nps or csat")
        return self


class ComplaintEvent(_Event):
    KIND: ClassVar[Kind] = Kind.COMPLAINT
    complaint_id: Id
    severity: Severity
    category: Text


class SupportEvent(_Event):
    KIND: ClassVar[Kind] = Kind.SUPPORT
    ticket_id: Id
    kind: TicketEventKind


CustomerEvent = OrderEvent | SurveyEvent | ComplaintEvent | SupportEvent

EVENT_MODELS: dict[Kind, type[_Event]] = {
    Kind.ORDER: OrderEvent,
    Kind.SURVEY: SurveyEvent,
    Kind.COMPLAINT: ComplaintEvent,
    Kind.SUPPORT: SupportEvent,
}


class RejectReason(StrEnum):
    """Why an event was dead-lettered; a bounded set, used as a metric label."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_VALUE = "unknown_value"
    INVALID_TIME = "invalid_time"
    INVALID_VALUE = "invalid_value"
    UNSUPPORTED_CURRENCY = "unsupported_currency"
    #: older than its topic-partition's watermark minus PULSE_MAX_LATENESS_DAYS
    TOO_LATE = "too_late"
    #: ahead of the wall clock by more than PULSE_MAX_EARLINESS_SECONDS
    TOO_EARLY = "too_early"
    #: valid, but scoring it raised (a bug or a state it breaks) on every bounded retry: quarantined so its
    #: partition moves on (the detail carries the exception)
    PROCESSING_ERROR = "processing_error"


class EventRejected(Exception):
    """An event that cannot be scored, with a reason code and a readable detail."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_ERROR_REASONS: dict[str, RejectReason] = {
    "missing": RejectReason.MISSING_FIELD,
    "literal_error": RejectReason.UNKNOWN_VALUE,
    "enum": RejectReason.UNKNOWN_VALUE,
    "timezone_aware": RejectReason.INVALID_TIME,
    "datetime_parsing": RejectReason.INVALID_TIME,
    "datetime_from_date_parsing": RejectReason.INVALID_TIME,
    "invalid_time": RejectReason.INVALID_TIME,
    "finite_number": RejectReason.OUT_OF_RANGE,
    "greater_than": RejectReason.OUT_OF_RANGE,
    "greater_than_equal": RejectReason.OUT_OF_RANGE,
    "less_than": RejectReason.OUT_OF_RANGE,
    "less_than_equal": RejectReason.OUT_OF_RANGE,
    "decimal_max_places": RejectReason.OUT_OF_RANGE,
    "json_invalid": RejectReason.MALFORMED_JSON,
    "model_type": RejectReason.NOT_AN_OBJECT,
    "model_attributes_type": RejectReason.NOT_AN_OBJECT,
}


def _reason_for(error: Mapping[str, Any]) -> RejectReason:
    kind = error["type"]
    if kind in _ERROR_REASONS:
        return _ERROR_REASONS[kind]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return RejectReason.WRONG_TYPE
    return RejectReason.INVALID_VALUE


def decode_event(kind: Kind, payload: bytes, max_bytes: int) -> CustomerEvent:
    """Validate one raw payload of the given kind, or raise :class:`EventRejected`."""
    return decode_as(EVENT_MODELS[kind], payload, max_bytes)  # type: ignore[return-value]


def decode_as(model: type[BaseModel], payload: bytes, max_bytes: int) -> BaseModel:
    """Validate one raw payload as ``model`` (an input event, a retention action), or raise
    :class:`EventRejected` with the reason code of the first error."""
    if len(payload) > max_bytes:
        raise EventRejected(RejectReason.PAYLOAD_TOO_LARGE, f"{len(payload)} bytes > limit {max_bytes}")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventRejected(RejectReason.MALFORMED_JSON, f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return model.model_validate_json(payload)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"]) or "event"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise EventRejected(_reason_for(first), f"{where}: {first['msg']}{more}") from None
