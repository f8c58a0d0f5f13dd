"""Raw input record → :class:`EventFacts`, with a msgspec fast path in front of the pydantic models.

Why: validating with the pydantic models (``schemas.events.decode_event``) and converting the model to the
scorer's facts was about a tenth of the processor's CPU per event (issue 18). msgspec decodes and checks the
same JSON into small structs in a few µs, with no model objects.

The pydantic models stay the definition of what is valid and of every rejection's reason and detail: the
fast path only *accepts*. It takes the conservative subset of valid events that it can check exactly
(canonical RFC 3339 times, plain JSON numbers with at most 4 decimals, ASCII ids by the same pattern …), and
anything else — every invalid event and the rare valid one outside that subset — goes through
``decode_event`` as before. So an event is scored with the same facts, or dead-lettered with the same reason
and detail, whichever path took it (tests/unit/test_validation.py compares the two on valid, edge and fuzzed
payloads).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

from schemas.events import (
    ID_PATTERN,
    ComplaintEvent,
    CustomerEvent,
    EventRejected,
    Kind,
    OrderEvent,
    OrderStatus,
    RejectReason,
    SupportEvent,
    SurveyEvent,
    decode_event,
    time_ms,
)
from scoring.customer import EventFacts
from scoring.orders import OrderFact, to_cents
from scoring.tickets import TicketFact
from scoring.voice import ComplaintFact, SurveyFact

#: an id as ``ID_PATTERN`` (unanchored here); Python's ``$`` also matches before a final newline, pydantic's (Rust)
#: regex does not: the patterns below end with ``\Z``
_ID = ID_PATTERN.removeprefix("^").removesuffix("$")
#: what both the fast path and pydantic read the same way: RFC 3339 with "T", seconds, at most 6 decimals,
#: "Z" or a ±hh:mm offset (pydantic also takes a space, lower case, no seconds, 9 decimals …: those go there); the
#: offset's minutes below 60: ``fromisoformat`` reads "+05:75" as +06:15, pydantic rejects it (invalid_time)
_TIME_TEXT = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:[0-5]\d)"
_TIME = re.compile(_TIME_TEXT + r"\Z")
#: per kind, its ids (and an order's currency) and its time joined by newlines, checked in one match: one regex
#: call instead of one per field (a pattern per field was a fifth of the fast path). None of the parts can hold a
#: newline, so the joined text matches exactly when every part matches its own pattern
_FIELDS = {
    Kind.ORDER: re.compile(rf"{_ID}\n{_ID}\n{_ID}\n[A-Z]{{3}}\n{_TIME_TEXT}\Z"),
    Kind.SURVEY: re.compile(rf"{_ID}\n{_ID}\n{_TIME_TEXT}\Z"),
    Kind.COMPLAINT: re.compile(rf"{_ID}\n{_ID}\n{_ID}\n{_TIME_TEXT}\Z"),
    Kind.SUPPORT: re.compile(rf"{_ID}\n{_ID}\n{_ID}\n{_TIME_TEXT}\Z"),
}
_MAX_AMOUNT = 1_000_000_000


class _Base(msgspec.Struct, gc=False):
    # the ids' and the time's patterns are checked together afterwards (``_FIELDS``)
    event_id: str
    customer_id: str
    occurred_at: str


class _Order(_Base, gc=False):
    order_id: str
    amount: int | float
    currency: str
    status: Literal["completed", "refunded"]
    cost: int | float | None = None


class _Survey(_Base, gc=False):
    nps: Annotated[int, msgspec.Meta(ge=0, le=10)] | None = None
    csat: Annotated[int, msgspec.Meta(ge=1, le=5)] | None = None


class _Complaint(_Base, gc=False):
    complaint_id: str
    severity: Literal["low", "medium", "high", "critical"]
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class _Support(_Base, gc=False):
    ticket_id: str
    kind: Literal["opened", "first_response", "resolved", "reopened"]


_DECODERS: dict[Kind, msgspec.json.Decoder[Any]] = {
    Kind.ORDER: msgspec.json.Decoder(_Order),
    Kind.SURVEY: msgspec.json.Decoder(_Survey),
    Kind.COMPLAINT: msgspec.json.Decoder(_Complaint),
    Kind.SUPPORT: msgspec.json.Decoder(_Support),
}


class _Slow(Exception):
    """The fast path cannot decide this payload: pydantic does."""


def _occurred_ms(text: str) -> int:
    """Milliseconds of a canonical time, exactly as ``time_ms`` of pydantic's datetime; years 2–9998 only
    (so the UTC conversion cannot leave the representable range, which pydantic's validator checks)."""
    if _TIME.match(text) is None:
        raise _Slow
    return _canonical_ms(text)


def _canonical_ms(text: str) -> int:
    """``_occurred_ms`` of a text that matched ``_TIME`` already."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise _Slow from None
    if not 1 < at.year < 9999:
        raise _Slow
    return time_ms(at)


def _money(value: int | float | None) -> Decimal | None:
    """The Decimal pydantic makes of a JSON number that passes its Money checks (the same value; pydantic
    formats a float by its shortest round-trip digits too), or _Slow for anything it might judge otherwise."""
    if value is None:
        return None
    if type(value) is int:
        if 0 <= value <= _MAX_AMOUNT:
            return Decimal(value)
        raise _Slow
    if not 0 <= value <= _MAX_AMOUNT:  # NaN fails this too
        raise _Slow
    amount = Decimal(repr(value))
    if amount.as_tuple().exponent < -4:  # type: ignore[operator]
        raise _Slow
    return amount


def _base_cents(value: int | float) -> int:
    """``to_cents(_money(value), 1)`` without Decimal arithmetic: the base currency's amounts (most orders)
    are converted from the number's shortest round-trip digits, rounded half to even as ``to_cents`` does."""
    if type(value) is int:
        if 0 <= value <= _MAX_AMOUNT:
            return value * 100
        raise _Slow
    if not 0 <= value <= _MAX_AMOUNT:
        raise _Slow
    text = repr(value)
    if (text[-2] == "." or text[-3] == ".") and text[0] != "-":
        # at most two decimals (most amounts): value × 100 is within far less than ½ of the cents (below 2**53 / 100),
        # so round() gives them exactly, without parsing the digits (int() of a str: ~2,000 instructions, issue 18)
        return round(value * 100)
    whole, dot, frac = text.partition(".")
    if not dot or len(frac) > 4 or not whole.isdigit() or not frac.isdigit():  # 1e-05, -0.0 …: Decimal's
        return to_cents(_money(value))  # type: ignore[arg-type]
    cents = int(whole) * 100 + int(frac[:2].ljust(2, "0"))
    rest = frac[2:].ljust(2, "0")
    if rest > "50" or (rest == "50" and cents % 2):
        cents += 1
    return cents


def _utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class EventReader:
    """Validates one raw payload of a kind into the scorer's :class:`EventFacts` and its customer id."""

    def __init__(self, rates: Mapping[str, Decimal], max_bytes: int) -> None:
        self.rates = rates
        self.max_bytes = max_bytes

    def read(self, kind: Kind, payload: bytes, offset: int | None) -> tuple[str, EventFacts]:
        """The customer id and scored event, or :class:`EventRejected` (reason and detail as ``decode_event``)."""
        if len(payload) <= self.max_bytes and (payload.isascii() or _utf8(payload)):
            try:
                return self._fast(kind, payload, offset)
            except (_Slow, msgspec.ValidationError, msgspec.DecodeError):
                pass
        event = decode_event(kind, payload, self.max_bytes)
        return event.customer_id, self.to_scored(event, offset)

    def _fast(self, kind: Kind, payload: bytes, offset: int | None) -> tuple[str, EventFacts]:
        decoder = _DECODERS.get(kind)
        if decoder is None:
            raise _Slow  # a kind without a fast path: the pydantic model decides
        e = decoder.decode(payload)
        if kind is Kind.ORDER:
            fields = f"{e.event_id}\n{e.customer_id}\n{e.order_id}\n{e.currency}\n{e.occurred_at}"
        elif kind is Kind.SURVEY:
            fields = f"{e.event_id}\n{e.customer_id}\n{e.occurred_at}"
        elif kind is Kind.COMPLAINT:
            fields = f"{e.event_id}\n{e.customer_id}\n{e.complaint_id}\n{e.occurred_at}"
        else:
            fields = f"{e.event_id}\n{e.customer_id}\n{e.ticket_id}\n{e.occurred_at}"
        if _FIELDS[kind].match(fields) is None:
            raise _Slow
        at = _canonical_ms(e.occurred_at)
        if kind is Kind.ORDER:
            rate = self.rates.get(e.currency)
            if rate is None:
                raise _Slow  # rejected: pydantic has validated it first, as before
            if rate == 1:
                amount_cents = _base_cents(e.amount)
                cost_cents = None if e.cost is None else _base_cents(e.cost)
            else:
                amount_cents = to_cents(_money(e.amount), rate)  # type: ignore[arg-type]
                cost = _money(e.cost)
                cost_cents = None if cost is None else to_cents(cost, rate)
            fact = OrderFact(at, amount_cents, cost_cents, e.status == "refunded")
            return e.customer_id, EventFacts("order", e.event_id, at, offset, fact)
        if kind is Kind.SURVEY:
            if e.nps is None and e.csat is None:
                raise _Slow
            return e.customer_id, EventFacts("survey", e.event_id, at, offset, None, SurveyFact(at, e.nps, e.csat))
        if kind is Kind.COMPLAINT:
            try:
                e.category.encode()  # a lone surrogate: pydantic's to judge
            except UnicodeEncodeError:
                raise _Slow from None
            return e.customer_id, EventFacts(
                "complaint", e.event_id, at, offset, None, None, ComplaintFact(at, e.severity)
            )
        if kind is Kind.SUPPORT:
            return e.customer_id, EventFacts(
                "support", e.event_id, at, offset, None, None, None, TicketFact(at, e.ticket_id, e.kind)
            )
        raise _Slow

    def to_scored(self, event: CustomerEvent, offset: int | None) -> EventFacts:
        """A validated pydantic event as the scorer sees it (the slow path)."""
        at = event.occurred_ms
        facts: dict[str, Any] = {}
        if isinstance(event, OrderEvent):
            rate = self.rates.get(event.currency)
            if rate is None:
                raise EventRejected(
                    RejectReason.UNSUPPORTED_CURRENCY, f"currency: no rate for {event.currency} (see PULSE_FX_RATES)"
                )
            facts["order"] = OrderFact(
                occurred_ms=at,
                amount_cents=to_cents(event.amount, rate),
                cost_cents=None if event.cost is None else to_cents(event.cost, rate),
                refunded=event.status is OrderStatus.REFUNDED,
            )
        elif isinstance(event, SurveyEvent):
            facts["survey"] = SurveyFact(at, event.nps, event.csat)
        elif isinstance(event, ComplaintEvent):
            facts["complaint"] = ComplaintFact(at, event.severity.value)
        elif isinstance(event, SupportEvent):
            facts["ticket"] = TicketFact(at, event.ticket_id, event.kind.value)
        return EventFacts(kind=event.KIND.value, event_id=event.event_id, occurred_ms=at, offset=offset, **facts)
