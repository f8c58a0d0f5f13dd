"""Realistic sample traffic: an order history for a population of customers.

Customers differ the way real ones do: purchase rates are gamma-distributed
(a few buy often, most rarely), order values log-normal, some customers stop
buying part-way (churn), a few orders are refunded and about half carry their
own cost. The history is generated deterministically from a seed and sent in
event-time order, keyed by customer id.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer


@dataclass(frozen=True)
class TrafficProfile:
    """Knobs of the population; defaults give a plausible retail mix."""

    purchase_rate_shape: float = 0.8  # gamma shape of orders per month
    purchase_rate_scale: float = 1.2  # gamma scale of orders per month
    order_value_log_mean: float = 4.0  # log-normal: median ≈ 55
    order_value_log_sigma: float = 0.6
    churn_share: float = 0.3  # customers who stop buying part-way
    refund_share: float = 0.04
    cost_share: float = 0.5  # orders that carry their own cost
    currency: str = "USD"


def customer_id(n: int) -> str:
    return f"C{n:06d}"


def generate_orders(
    customers: int, days: int, seed: int, end: datetime | None = None, profile: TrafficProfile = TrafficProfile()
) -> list[dict]:
    """An order history over ``days`` ending at ``end``, sorted by event time."""
    rng = random.Random(seed)
    end = end or datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(days=days)
    span = (end - start).total_seconds()
    events: list[dict] = []
    seq = 0
    for n in range(1, customers + 1):
        cid = customer_id(n)
        rate_per_second = rng.gammavariate(profile.purchase_rate_shape, profile.purchase_rate_scale) / (30 * 86400)
        joined = rng.uniform(0, span * 0.9)
        stops = joined + rng.uniform(0, span - joined) if rng.random() < profile.churn_share else span
        t = joined
        while t < stops:
            seq += 1
            amount = round(rng.lognormvariate(profile.order_value_log_mean, profile.order_value_log_sigma), 2)
            at = start + timedelta(seconds=t)
            order = {
                "event_id": f"ord-{seed}-{seq}",
                "customer_id": cid,
                "occurred_at": at.isoformat(timespec="milliseconds"),
                "order_id": f"O{seq:08d}",
                "amount": amount,
                "currency": profile.currency,
                "status": "completed",
            }
            if rng.random() < profile.cost_share:
                order["cost"] = round(amount * rng.uniform(0.45, 0.8), 2)
            events.append(order)
            if rng.random() < profile.refund_share:
                refund_at = at + timedelta(days=rng.uniform(1, 20))
                if refund_at < end:
                    events.append(
                        {
                            **order,
                            "event_id": f"ref-{seed}-{seq}",
                            "occurred_at": refund_at.isoformat(timespec="milliseconds"),
                            "status": "refunded",
                        }
                    )
            if rate_per_second <= 0:
                break
            t += rng.expovariate(rate_per_second)
    events.sort(key=lambda e: e["occurred_at"])
    return events


#: Share of each kind in a realistic mix (the performance issue's: orders 60 %,
#: support 25 %, surveys 10 %, complaints 5 %).
MIX = {"order": 0.60, "support": 0.25, "survey": 0.10, "complaint": 0.05}
#: Support events per ticket in the generated lifecycles (opened, response, resolved; some reopened).
TICKET_EVENTS = 3
COMPLAINT_CATEGORIES = ("billing", "delivery", "product", "service")


def generate_events(
    customers: int, days: int, seed: int, end: datetime | None = None, profile: TrafficProfile = TrafficProfile()
) -> list[tuple[str, dict]]:
    """A history of all four kinds in the :data:`MIX` proportions, sorted by event time: (kind, event)."""
    orders = generate_orders(customers, days, seed, end, profile)
    rng = random.Random(seed + 1)
    buyers = sorted({o["customer_id"] for o in orders})
    start = datetime.fromisoformat(orders[0]["occurred_at"]) if orders else datetime.now(UTC)
    stop = datetime.fromisoformat(orders[-1]["occurred_at"]) if orders else start
    span = max(1.0, (stop - start).total_seconds())
    per_order = {kind: share / MIX["order"] for kind, share in MIX.items()}

    def at(offset: float) -> str:
        return (start + timedelta(seconds=offset)).isoformat(timespec="milliseconds")

    events: list[tuple[str, dict]] = [("order", o) for o in orders]
    seq = 0
    for _ in range(int(len(orders) * per_order["survey"])):
        seq += 1
        answer: dict = {"nps": rng.choice([0, 3, 5, 6, 7, 8, 8, 9, 9, 10, 10])}
        if rng.random() < 0.6:
            answer["csat"] = rng.choice([1, 2, 3, 4, 4, 5, 5])
        events.append(
            (
                "survey",
                {
                    "event_id": f"srv-{seed}-{seq}",
                    "customer_id": rng.choice(buyers),
                    "occurred_at": at(rng.uniform(0, span)),
                    **answer,
                },
            )
        )
    for _ in range(int(len(orders) * per_order["complaint"])):
        seq += 1
        events.append(
            (
                "complaint",
                {
                    "event_id": f"cmp-{seed}-{seq}",
                    "customer_id": rng.choice(buyers),
                    "occurred_at": at(rng.uniform(0, span)),
                    "complaint_id": f"K{seq:08d}",
                    "severity": rng.choice(["low", "low", "medium", "medium", "high", "critical"]),
                    "category": rng.choice(COMPLAINT_CATEGORIES),
                },
            )
        )
    for _ in range(int(len(orders) * per_order["support"] / TICKET_EVENTS)):
        seq += 1
        cid, opened = rng.choice(buyers), rng.uniform(0, span)
        lifecycle = [
            ("opened", opened),
            ("first_response", opened + rng.expovariate(1 / 8) * 3600),
            ("resolved", opened + rng.expovariate(1 / 40) * 3600),
        ]
        if rng.random() < 0.1:
            lifecycle.append(("reopened", lifecycle[-1][1] + rng.uniform(1, 72) * 3600))
        for n, (kind, offset) in enumerate(lifecycle):
            if offset <= span:
                events.append(
                    (
                        "support",
                        {
                            "event_id": f"tkt-{seed}-{seq}-{n}",
                            "customer_id": cid,
                            "occurred_at": at(offset),
                            "ticket_id": f"T{seq:08d}",
                            "kind": kind,
                        },
                    )
                )
    events.sort(key=lambda e: e[1]["occurred_at"])
    return events


#: Hostile payloads mixed in by ``--bad``: each must end in the dead-letter topic.
BAD_PAYLOADS: list[bytes] = [
    b"{not json",
    b"[1, 2, 3]",
    b'{"event_id": "x", "customer_id": "C000001"}',
    b'{"event_id": "b1", "customer_id": "C000001", "occurred_at": "2024-01-01T00:00:00Z", "order_id": "o",'
    b' "amount": -5, "currency": "USD", "status": "completed"}',
    b'{"event_id": "b2", "customer_id": "C000001", "occurred_at": "2024-01-01T00:00:00", "order_id": "o",'
    b' "amount": 5, "currency": "USD", "status": "completed"}',
    b'{"event_id": "b3", "customer_id": "C000001", "occurred_at": "2024-01-01T00:00:00Z", "order_id": "o",'
    b' "amount": "lots", "currency": "USD", "status": "completed"}',
    b'{"event_id": "b4", "customer_id": "C000001", "occurred_at": "2024-01-01T00:00:00Z", "order_id": "o",'
    b' "amount": 5, "currency": "USD", "status": "stolen"}',
    b"\xff\xfe\x00garbage",
]


def encode(event: dict) -> tuple[bytes, bytes]:
    return event["customer_id"].encode(), orjson.dumps(event)


async def send(
    kafka: Mapping[str, Any],
    topics: dict[str, str],
    events: Iterable[tuple[str, dict]],
    rate: float = 0.0,
    bad: int = 0,
    seed: int = 0,
    progress_every: int = 0,
    deadline: float | None = None,
) -> int:
    """Produce (kind, event) pairs to their kind's topic, keyed by customer id (``rate`` events/s, 0: at once);
    returns how many were sent. ``deadline`` (``time.monotonic()``): stop sending there, with what was sent
    flushed (``pulse dev --duration`` ends within its time even when the traffic at ``rate`` would take longer)."""
    rng = random.Random(seed)
    producer = AIOKafkaProducer(**kafka, acks="all", linger_ms=5)
    sent = 0
    started = time.monotonic()
    try:
        await producer.start()  # inside the try: a broker that is down must not leak the client
        for kind, event in events:
            if deadline is not None and time.monotonic() >= deadline:
                break
            key, value = encode(event)
            await producer.send(topics[kind], key=key, value=value)
            sent += 1
            if bad and rng.random() < bad / 1000:
                await producer.send(topics["order"], key=b"C000001", value=rng.choice(BAD_PAYLOADS))
            if progress_every and sent % progress_every == 0:
                print(f"  sent {sent} events", flush=True)
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if deadline is not None:
                    ahead = min(ahead, deadline - time.monotonic())
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    return sent
