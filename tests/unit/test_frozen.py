"""``scoring.frozen.Value``: the scorers' value objects keep what a frozen slotted dataclass gave them."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import msgspec
import pytest

from scoring import churn, clv, customer, indicators, orders, population, rfm, tickets, voice
from scoring.frozen import Value


@dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)


class Fast(Value, frozen=True):
    a: int
    b: str = "b"
    c: list[int] = []


def test_same_signature_defaults_equality_hash_and_frozenness():
    assert list(inspect.signature(Fast).parameters) == list(inspect.signature(Plain).parameters)
    for args, kwargs in (((1,), {}), ((1, "x"), {}), ((1,), {"c": [2]}), ((), {"a": 3, "b": "y", "c": [4]})):
        plain, fast = Plain(*args, **kwargs), Fast(*args, **kwargs)
        assert (plain.a, plain.b, plain.c) == (fast.a, fast.b, fast.c)
        assert repr(plain).replace("Plain", "Fast") == repr(fast)
    assert Fast(1) == Fast(1) and Fast(1) != Fast(2)
    assert Fast(1).c is not Fast(1).c  # a fresh default per instance
    assert hash(Fast(1, "x", ())) == hash(Fast(1, "x", ()))  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        Fast(1).a = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Fast()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Fast(1, "x", [], 4)  # type: ignore[call-arg]
    assert not hasattr(Fast(1), "__dict__")  # slots


VALUE_CLASSES = (
    churn.ChurnReason, churn.ChurnAssessment, churn.ChurnInputs, churn.AlertDecision, clv.ClvSignals,
    customer.EventFacts, indicators.Contribution, orders.OrderFact, orders.OrderSignals, population.Rescored,
    rfm.MemberKeys, rfm.RfmScores, tickets.TicketFact, tickets.ServiceSignals, tickets.ServiceRisk,
    voice.SurveyFact, voice.ComplaintFact, voice.VoiceSignals,
)  # fmt: skip


def test_the_scorers_value_classes_keep_their_fields_in_order():
    for cls in VALUE_CLASSES:
        names = [f.name for f in msgspec.structs.fields(cls)]
        assert issubclass(cls, Value), cls
        assert list(inspect.signature(cls).parameters) == names, cls
