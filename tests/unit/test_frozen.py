"""``scoring.frozen.fast_init`` builds the same objects as the dataclass's own ``__init__``."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import pytest

from scoring import churn, clv, customer, indicators, orders, population, rfm, tickets, voice
from scoring.frozen import fast_init


@dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)


@fast_init
@dataclass(frozen=True, slots=True)
class Fast:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)


def test_same_signature_defaults_equality_hash_and_frozenness():
    for args, kwargs in (((1,), {}), ((1, "x"), {}), ((1,), {"c": [2]}), ((), {"a": 3, "b": "y", "c": [4]})):
        plain, fast = Plain(*args, **kwargs), Fast(*args, **kwargs)
        assert dataclasses.astuple(plain) == dataclasses.astuple(fast)
        assert repr(plain).replace("Plain", "Fast") == repr(fast)
    assert Fast(1) == Fast(1) and Fast(1) != Fast(2)
    assert Fast(1).c is not Fast(1).c  # a fresh default per instance
    assert hash(Fast(1, "x", ())) == hash(Fast(1, "x", ()))  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Fast(1).a = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Fast()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Fast(1, "x", [], 4)  # type: ignore[call-arg]


def test_only_frozen_slotted_dataclasses():
    @dataclass(slots=True)
    class Mutable:
        a: int

    with pytest.raises(TypeError):
        fast_init(Mutable)


def test_the_scorers_value_classes_keep_their_fields_in_order():
    for cls in (
        churn.ChurnReason, churn.ChurnAssessment, churn.ChurnInputs, churn.AlertDecision, clv.ClvSignals,
        customer.EventFacts, indicators.Contribution, orders.OrderFact, orders.OrderSignals, population.Rescored,
        rfm.MemberKeys, rfm.RfmScores, tickets.TicketFact, tickets.ServiceSignals, tickets.ServiceRisk,
        voice.SurveyFact, voice.ComplaintFact, voice.VoiceSignals,
    ):  # fmt: skip
        names = [f.name for f in dataclasses.fields(cls)]
        assert list(inspect.signature(cls).parameters) == names, cls
        assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
