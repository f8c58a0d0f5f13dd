"""The churn story shared by the scenario test and the e2e test: a customer who buys monthly, then stops,
then complains. Event builders give the JSON the producers send."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from pulse_config.settings import Settings
from scoring.customer import CustomerState
from scoring.units import DAY_MS
from streams.codec import decode_state, encode_state
from streams.processor import BatchOutcome, BatchProcessor, Incoming

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


class Feed:
    """The story fed to a :class:`BatchProcessor` (default settings, partition 0): one batch per day of event
    time, each closed by the :func:`clock` customer's survey; alerts kept with their day."""

    #: keep each state as the changelog would give it back (encoded, decoded), not the processor's object
    through_codec = False

    def __init__(self) -> None:
        self.processor = BatchProcessor(Settings(_env_file=None).processor())
        self.store: dict[bytes, CustomerState] = {}
        self.offsets: dict[str, int] = {}
        self.alerts: list[tuple[int, dict]] = []
        self.outcomes: list[BatchOutcome] = []

    def record(self, topic: str, value: dict) -> Incoming:
        self.offsets[topic] = self.offsets.get(topic, -1) + 1
        return Incoming(topic, 0, self.offsets[topic], value["customer_id"].encode(), orjson.dumps(value))

    def batch(self, day: int, *events: tuple[str, dict]) -> list[Incoming]:
        return [self.record(topic, value) for topic, value in (*events, clock(day))]

    def run(self, day: int, records: list[Incoming], ends: dict | None = None) -> BatchOutcome:
        out = self.processor.process(records, lambda key: self.store.get(key) or CustomerState(), ends=ends)
        if self.through_codec:
            self.store.update({k: decode_state(encode_state(v)) for k, v in out.states.items()})
        else:
            self.store.update(out.states)
        self.alerts += [(day, orjson.loads(value)) for _, _, value in out.alerts]
        self.outcomes.append(out)
        return out

    def day(self, day: int, *events: tuple[str, dict]) -> BatchOutcome:
        return self.run(day, self.batch(day, *events))
