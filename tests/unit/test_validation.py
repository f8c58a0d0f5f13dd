"""The msgspec fast path of ``streams.validation`` decides every payload as the pydantic models do: the same
scored event, or the same rejection (reason and detail)."""

from __future__ import annotations

import random
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.simulate import generate_events
from schemas.events import EventRejected, Kind, decode_event
from scoring.orders import to_cents
from streams import validation
from streams.validation import EventReader
from tests.fuzz_payloads import BAD_TIMES, HOSTILE_VALUES, VALID, hostile

RATES = {"USD": Decimal(1), "EUR": Decimal("1.0825"), "JPY": Decimal("0.0067")}
LIMIT = 4096
reader = EventReader(RATES, LIMIT)


def slow(kind: Kind, payload: bytes, offset: int | None = 3):
    """What the processor did before: the pydantic model, then its facts."""
    try:
        event = decode_event(kind, payload, LIMIT)
        return event.customer_id, reader.to_scored(event, offset)
    except EventRejected as exc:
        return exc.reason, exc.detail


def fast(kind: Kind, payload: bytes, offset: int | None = 3):
    try:
        return reader.read(kind, payload, offset)
    except EventRejected as exc:
        return exc.reason, exc.detail


def test_generated_traffic_takes_the_fast_path_and_scores_the_same(monkeypatch):
    events = generate_events(60, 60, seed=5)
    payloads = [(Kind(kind), orjson.dumps(event)) for kind, event in events]
    assert {kind for kind, _ in payloads} == set(Kind)
    expected = [slow(kind, p) for kind, p in payloads]

    def refuse(*args, **kwargs):
        raise AssertionError("the slow path was taken")

    monkeypatch.setattr("streams.validation.decode_event", refuse)
    assert [fast(kind, p) for kind, p in payloads] == expected


EDGE_TIMES = [
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00.5Z",
    "2026-01-01T00:00:00.123456+05:30",
    "2026-01-01T00:00:00.1234567Z",
    "2026-01-01T00:00:00.123456789Z",
    "2026-01-01 00:00:00Z",
    "2026-01-01t00:00:00z",
    "2026-01-01T00:00Z",
    "2026-01-01T00:00:60Z",
    "2026-01-01T24:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T00:00:00+0100",
    "2026-01-01T00:00:00-23:59",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00+05:75",
    "2026-01-01T00:00:0\u0661Z",  # an Arabic-Indic digit: the pattern's \d matches it, fromisoformat refuses it
    "2026-01-01T00:00:00.\u0665Z",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-14:00",
    "0000-01-01T00:00:00Z",
    "1700000000",
    "2026-01-01T00:00:00Z\n",
    *BAD_TIMES,
]
EDGE_AMOUNTS = [
    0,
    -0.0,
    0.0001,
    0.00001,
    1e-4,
    19.99,
    19.999999999999999999,
    100,
    1e2,
    0.30000000000000004,
    1000000000,
    1000000000.0,
    1000000000.0001,
    1000000001,
    -1,
    "19.99",
    "1e2",
    True,
    None,
    12345678.1234,
    12345678.12345,
    2**63,
]
EDGE_IDS = ["a", "A1._:@/-", "-a", "a b", "a\n", "a" * 128, "a" * 129, "é", "", "a\u0000"]


def cases() -> list[tuple[Kind, bytes]]:
    out = []
    for kind, fields in VALID.items():
        base = {"event_id": "e-1", "customer_id": "C1", "occurred_at": "2026-01-01T00:00:00Z", **fields}
        for at in EDGE_TIMES:
            out.append((Kind(kind), orjson.dumps({**base, "occurred_at": at})))
        for name in base:
            for value in (*HOSTILE_VALUES, *EDGE_IDS):
                out.append((Kind(kind), orjson.dumps({**base, name: value})))
            out.append((Kind(kind), orjson.dumps({k: v for k, v in base.items() if k != name})))
        out.append((Kind(kind), orjson.dumps(base) + b" "))
        out.append((Kind(kind), orjson.dumps(base)[:-1] + b',"extra":"\xff"}'))
        out.append((Kind(kind), orjson.dumps(base)[:-1] + b',"extra":[1,{"a":null}]}'))
    order = {"event_id": "e-1", "customer_id": "C1", "occurred_at": "2026-01-01T00:00:00Z", **VALID["order"]}
    for amount in EDGE_AMOUNTS:
        for currency in ("USD", "EUR", "JPY"):
            out.append((Kind.ORDER, orjson.dumps({**order, "currency": currency, "amount": amount})))
            out.append((Kind.ORDER, orjson.dumps({**order, "currency": currency, "cost": amount})))
    for raw in (b"19.999999999999999999", b"1E-4", b"1e-5", b"1.50000", b"-0", b"0.1e1", b"1e9", b"1e10"):
        out.append((Kind.ORDER, orjson.dumps(order)[:-1] + b',"amount":' + raw + b"}"))
    for currency in ("EUR", "JPY", "GBP", "usd", "USDX"):
        out.append((Kind.ORDER, orjson.dumps({**order, "currency": currency})))
    out.append((Kind.ORDER, orjson.dumps({**order, "status": "refunded"})))
    survey = {"event_id": "e-1", "customer_id": "C1", "occurred_at": "2026-01-01T00:00:00Z"}
    for nps in (None, 0, 10, 11, -1, 5.0, True, "5"):
        for csat in (None, 1, 5, 0, 6):
            answer = {k: v for k, v in (("nps", nps), ("csat", csat)) if v is not None}
            out.append((Kind.SURVEY, orjson.dumps({**survey, **answer})))
    out.append(
        (Kind.SURVEY, b'{"event_id":"e","customer_id":"C","occurred_at":"2026-01-01T00:00:00Z","nps":20,"nps":3}')
    )
    out.append(
        (Kind.SURVEY, b'{"event_id":"e","customer_id":"C","occurred_at":"2026-01-01T00:00:00Z","nps":3,"nps":20}')
    )
    complaint = {**survey, "complaint_id": "K", "severity": "low"}
    for category in ("x", "x" * 200, "x" * 201, "🙂" * 200, "🙂" * 201, "é"):
        out.append((Kind.COMPLAINT, orjson.dumps({**complaint, "category": category})))
    out.append((Kind.COMPLAINT, orjson.dumps(complaint)[:-1] + b',"category":"\\ud800"}'))
    for kind in ("opened", "first_response", "resolved", "reopened", "closed"):
        out.append((Kind.SUPPORT, orjson.dumps({**survey, "ticket_id": "T", "kind": kind})))
    return out


@pytest.mark.parametrize("kind,payload", cases())
def test_edge_payloads_are_decided_as_pydantic_decides(kind, payload):
    assert fast(kind, payload) == slow(kind, payload)


def test_hostile_payloads_are_rejected_with_pydantics_reason_and_detail():
    rng = random.Random(18)
    for n in range(2000):
        kind = rng.choice(list(VALID))
        _, value = hostile(kind, rng, n, LIMIT)
        payload = value or b""
        assert fast(Kind(kind), payload) == slow(Kind(kind), payload), payload


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(list(Kind)),
    st.dictionaries(
        st.sampled_from(
            ["event_id", "customer_id", "occurred_at", "order_id", "amount", "cost", "currency", "status", "nps"]
            + ["csat", "complaint_id", "severity", "category", "ticket_id", "kind"]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**63), 2**63),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=12),
            st.sampled_from(["C1", "2026-01-01T00:00:00Z", "USD", "completed", "low", "opened", "x"]),
        ),
    ),
)
def test_arbitrary_objects_are_decided_as_pydantic_decides(kind, obj):
    base = {"event_id": "e-1", "customer_id": "C1", "occurred_at": "2026-01-01T00:00:00Z", **VALID[kind.value]}
    payload = orjson.dumps({**base, **obj})
    assert fast(kind, payload) == slow(kind, payload)


def test_a_kind_without_a_fast_decoder_is_left_to_the_models(monkeypatch):
    payload = orjson.dumps({"event_id": "e-1", "customer_id": "C1", "occurred_at": "2026-01-01T00:00:00Z", "nps": 3})
    monkeypatch.delitem(validation._DECODERS, Kind.SURVEY)
    assert fast(Kind.SURVEY, payload) == slow(Kind.SURVEY, payload)


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.integers(0, 10**11).map(lambda c: c / 100), st.floats(0, 1e9), st.integers(0, 10**12).map(lambda c: c / 1000)
    )
)
def test_base_currency_cents_are_decimals_rounded_half_to_even(value):
    """The cents of an amount with at most two decimals are value × 100 rounded; with more, its digits rounded half
    to even: both as ``to_cents`` of pydantic's Decimal (the shortest round-trip digits) gives them."""
    try:
        cents = validation._base_cents(value)
    except validation._Slow:
        return
    assert cents == to_cents(Decimal(repr(value)))
