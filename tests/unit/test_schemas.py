import orjson
import pytest

from schemas.events import (
    ComplaintEvent,
    EventRejected,
    Kind,
    OrderEvent,
    RejectReason,
    SupportEvent,
    SurveyEvent,
    TicketEventKind,
    decode_event,
)

LIMIT = 65536
BASE = {"event_id": "e-1", "customer_id": "C000001", "occurred_at": "2025-03-01T10:00:00+08:00"}
ORDER = {**BASE, "order_id": "O1", "amount": 120.5, "currency": "USD", "status": "completed"}


def dec(kind: Kind, obj: object) -> object:
    return decode_event(kind, orjson.dumps(obj), LIMIT)


def reject(kind: Kind, payload: bytes | object) -> EventRejected:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    with pytest.raises(EventRejected) as info:
        decode_event(kind, raw, LIMIT)
    return info.value


def test_valid_events_of_each_kind():
    order = dec(Kind.ORDER, {**ORDER, "cost": "80.10"})
    assert isinstance(order, OrderEvent) and str(order.amount) == "120.5" and str(order.cost) == "80.10"
    assert order.occurred_ms == 1740794400000  # 02:00 UTC
    survey = dec(Kind.SURVEY, {**BASE, "nps": 9})
    assert isinstance(survey, SurveyEvent) and survey.nps == 9 and survey.csat is None
    assert dec(Kind.SURVEY, {**BASE, "csat": 1}).csat == 1
    complaint = dec(Kind.COMPLAINT, {**BASE, "complaint_id": "K1", "severity": "critical", "category": "billing"})
    assert isinstance(complaint, ComplaintEvent) and complaint.severity == "critical"
    ticket = dec(Kind.SUPPORT, {**BASE, "ticket_id": "T1", "kind": "first_response"})
    assert isinstance(ticket, SupportEvent) and ticket.kind is TicketEventKind.FIRST_RESPONSE


def test_unknown_extra_fields_are_ignored():
    assert dec(Kind.ORDER, {**ORDER, "channel": "web"}).order_id == "O1"


@pytest.mark.parametrize(
    ("kind", "payload", "reason", "where"),
    [
        (Kind.ORDER, b"{not json", RejectReason.MALFORMED_JSON, "JSON"),
        (Kind.ORDER, b"\xff\xfe\x00", RejectReason.MALFORMED_JSON, "UTF-8"),
        (Kind.ORDER, b"[1, 2]", RejectReason.NOT_AN_OBJECT, "object"),
        (Kind.ORDER, b"null", RejectReason.NOT_AN_OBJECT, "object"),
        (Kind.ORDER, {k: v for k, v in ORDER.items() if k != "amount"}, RejectReason.MISSING_FIELD, "amount"),
        (Kind.ORDER, {**ORDER, "amount": -0.01}, RejectReason.OUT_OF_RANGE, "amount"),
        (Kind.ORDER, {**ORDER, "amount": "NaN"}, RejectReason.OUT_OF_RANGE, "amount"),
        (Kind.ORDER, {**ORDER, "amount": 1e12}, RejectReason.OUT_OF_RANGE, "amount"),
        (Kind.ORDER, {**ORDER, "amount": "lots"}, RejectReason.WRONG_TYPE, "amount"),
        (Kind.ORDER, {**ORDER, "amount": True}, RejectReason.WRONG_TYPE, "amount"),
        (Kind.ORDER, {**ORDER, "cost": -1}, RejectReason.OUT_OF_RANGE, "cost"),
        (Kind.ORDER, {**ORDER, "status": "stolen"}, RejectReason.UNKNOWN_VALUE, "status"),
        (Kind.ORDER, {**ORDER, "currency": "usd"}, RejectReason.INVALID_VALUE, "currency"),
        (Kind.ORDER, {**ORDER, "occurred_at": "2025-03-01T10:00:00"}, RejectReason.INVALID_TIME, "occurred_at"),
        (Kind.ORDER, {**ORDER, "occurred_at": "2025-03-01T10:00:00+25:00"}, RejectReason.INVALID_TIME, "occurred_at"),
        (Kind.ORDER, {**ORDER, "occurred_at": 1740794400}, RejectReason.WRONG_TYPE, "occurred_at"),
        (Kind.ORDER, {**ORDER, "customer_id": ""}, RejectReason.INVALID_VALUE, "customer_id"),
        (Kind.ORDER, {**ORDER, "customer_id": "x" * 300}, RejectReason.INVALID_VALUE, "customer_id"),
        (Kind.ORDER, {**ORDER, "customer_id": 42}, RejectReason.WRONG_TYPE, "customer_id"),
        (Kind.SURVEY, {**BASE, "nps": 11}, RejectReason.OUT_OF_RANGE, "nps"),
        (Kind.SURVEY, {**BASE, "nps": "9"}, RejectReason.WRONG_TYPE, "nps"),
        (Kind.SURVEY, {**BASE, "nps": 9.0}, RejectReason.WRONG_TYPE, "nps"),
        (Kind.SURVEY, {**BASE, "csat": 0}, RejectReason.OUT_OF_RANGE, "csat"),
        (Kind.SURVEY, {**BASE, "csat": 6}, RejectReason.OUT_OF_RANGE, "csat"),
        (Kind.SURVEY, dict(BASE), RejectReason.INVALID_VALUE, "nps or csat"),
        (
            Kind.COMPLAINT,
            {**BASE, "complaint_id": "K", "severity": "apocalyptic", "category": "x"},
            RejectReason.UNKNOWN_VALUE,
            "severity",
        ),
        (Kind.SUPPORT, {**BASE, "ticket_id": "T", "kind": "closed"}, RejectReason.UNKNOWN_VALUE, "kind"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(kind, payload, reason, where):
    exc = reject(kind, payload)
    assert exc.reason is reason, exc.detail
    assert where in exc.detail


def test_huge_payload_is_rejected_before_parsing():
    exc = reject(Kind.ORDER, b"{" + b" " * LIMIT + b"}")
    assert exc.reason is RejectReason.PAYLOAD_TOO_LARGE and str(LIMIT) in exc.detail
