"""The churn story shared by the scenario test and the e2e test: a customer who buys monthly, then stops,
then complains. Event builders give the JSON the producers send."""

from __future__ import annotations

from datetime import UTC, datetime

from scoring.units import DAY_MS

#: epoch day 20006 is a multiple of 7, so weekly revenue buckets start on day 0
D0 = 20006
MONTHLY = list(range(0, 331, 30))  # 12 purchases, one every 30 days


def iso(day: int) -> str:
    return datetime.fromtimestamp((D0 + day) * DAY_MS / 1000, UTC).isoformat()


def order(day: int) -> tuple[str, dict]:
    return (
        "orders",
        {
            "event_id": f"o{day}",
            "customer_id": "C",
            "occurred_at": iso(day),
            "order_id": f"O{day}",
            "amount": "100.00",
            "currency": "USD",
            "status": "completed",
        },
    )


def complaint(day: int, severity: str) -> tuple[str, dict]:
    value = {"event_id": f"c{day}", "customer_id": "C", "occurred_at": iso(day)}
    return ("complaints", {**value, "complaint_id": f"K{day}", "severity": severity, "category": "delivery"})


def survey(day: int, **answer: int) -> tuple[str, dict]:
    return ("surveys", {"event_id": f"s{day}", "customer_id": "C", "occurred_at": iso(day), **answer})


#: day -> the customer's events beyond the monthly orders
STORY = {
    470: [complaint(470, "high")],  # already high: no alert
    472: [order(472)],  # buys again: overdue, P(alive) and spend decline clear; low
    476: [survey(476, nps=2)],  # detractor + severe complaint: medium, within the cooldown: no alert
    480: [survey(480, csat=1)],  # + dissatisfied: high, not above the last alert's level: no alert
    502: [complaint(502, "critical")],  # day 500 the first complaint left the window (medium); now high again
}


def clock(day: int) -> tuple[str, dict]:
    """Another customer's daily survey (a passive answer, no risk): moves the event-time clock."""
    return ("surveys", {"event_id": f"z{day}", "customer_id": "Z", "occurred_at": iso(day), "nps": 8})
