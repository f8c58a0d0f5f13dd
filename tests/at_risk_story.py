"""Customers who drift into churn risk, shared by the at-risk API test and the console's browser test.

Five monthly buyers and a late starter; all but C stop after day 330, so they
are overdue (medium) from day 421 and past P(alive) 0.3 (high) from day 467;
B, the biggest spender, files a critical complaint on day 460; D buys again on
day 472 (back to low). Z's daily survey moves the event-time clock.
"""

from __future__ import annotations

import orjson

from testing.stack import Namespace, produce
from tests.churn_story import clock, iso

#: customer -> (monthly amount, first and last monthly purchase day)
BUYERS = {
    "A": ("100.00", 0, 330),
    "B": ("300.00", 0, 330),
    "C": ("50.00", 0, 450),
    "D": ("100.00", 0, 330),
    "E": ("80.00", 0, 330),
    "F": ("60.00", 240, 330),
}
CUSTOMERS = [*BUYERS, "Z"]
#: worker settings: a top fifth is VIP (B); with the default top 5 % none of these few customers would be
VIP_ENV = {"PULSE_VIP_ENTER_SHARE": "0.2", "PULSE_VIP_LEAVE_SHARE": "0.3"}


def order(cid: str, day: int, amount: str) -> tuple[str, dict]:
    return (
        "orders",
        {
            "event_id": f"o{cid}{day}",
            "customer_id": cid,
            "occurred_at": iso(day),
            "order_id": f"O{cid}{day}",
            "amount": amount,
            "currency": "USD",
            "status": "completed",
        },
    )


def complaint(cid: str, day: int, severity: str) -> tuple[str, dict]:
    value = {"event_id": f"c{cid}{day}", "customer_id": cid, "occurred_at": iso(day)}
    return ("complaints", {**value, "complaint_id": f"K{cid}{day}", "severity": severity, "category": "delivery"})


#: day -> events beyond the monthly orders: B complains, D buys again (back to low)
EXTRA = {460: [complaint("B", 460, "critical")], 472: [order("D", 472, "100.00")]}


def events(days: range) -> list[tuple[str, dict]]:
    out = []
    for d in days:
        out += [order(c, d, amt) for c, (amt, first, last) in BUYERS.items() if first <= d <= last and d % 30 == 0]
        out += EXTRA.get(d, []) + [clock(d)]
    return out


def send(namespace: Namespace, days: range) -> None:
    """Produce the story's events of ``days`` to the namespace's topics."""
    settings = namespace.settings
    batch = events(days)
    topics = {
        "orders": settings.topic_orders,
        "complaints": settings.topic_complaints,
        "surveys": settings.topic_surveys,
    }
    for kind, topic in topics.items():
        records = [(v["customer_id"].encode(), orjson.dumps(v)) for t, v in batch if t == kind]
        if records:
            produce(namespace.bootstrap, topic, records)
