"""Compact, fast encoding of :class:`CustomerState` for the changelog-backed table."""

from __future__ import annotations

import orjson

from scoring.churn import ChurnState
from scoring.clv import PurchaseDays
from scoring.customer import CustomerState
from scoring.orders import OrderState
from scoring.service import Folded, ServiceState
from scoring.voice import VoiceState


def encode_state(state: CustomerState) -> bytes:
    # orjson serialises dataclasses natively; int dict keys need OPT_NON_STR_KEYS.
    return orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS)


def decode_state(raw: bytes | None) -> CustomerState:
    if not raw:
        return CustomerState()
    data = orjson.loads(raw)
    orders = data["orders"]
    orders["revenue_buckets"] = {int(k): v for k, v in orders["revenue_buckets"].items()}
    data["orders"] = OrderState(**orders)
    voice = data["voice"]
    voice["complaint_days"] = {int(k): v for k, v in voice["complaint_days"].items()}
    # states written before the population indicators existed start their day rows empty
    voice["answer_days"] = {int(k): v for k, v in voice.get("answer_days", {}).items()}
    data["voice"] = VoiceState(**voice)
    service = data["service"]
    data["service"] = ServiceState(
        tickets=service["tickets"],
        folded=Folded(**service["folded"]),
        ticket_days={int(k): v for k, v in service.get("ticket_days", {}).items()},
        ticket_days_newest=service.get("ticket_days_newest"),
    )
    # states written before CLV and churn existed start them empty
    data["purchases"] = PurchaseDays(**data.get("purchases", {}))
    data["churn"] = ChurnState(**data.get("churn", {}))
    return CustomerState(**data)
