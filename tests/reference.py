"""Batch reference: the spec's order indicators recomputed from a whole history.

Written independently of scoring/ (Decimal arithmetic over the raw events, no
buckets, no incremental state) so that tests compare two implementations.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

CENT = Decimal("0.01")


def _cents(x: Decimal) -> Decimal:
    return x.quantize(CENT, rounding=ROUND_HALF_EVEN)


def batch_order_profiles(orders: list[dict], margin: Decimal = Decimal("0.30")) -> dict[str, dict]:
    """customer_id -> revenue, profit, orders, refunds, aov, first/last purchase (de-duplicated by event_id)."""
    seen: set[str] = set()
    by_customer: dict[str, list[dict]] = defaultdict(list)
    for order in orders:
        if order["event_id"] in seen:
            continue
        seen.add(order["event_id"])
        by_customer[order["customer_id"]].append(order)
    out = {}
    for cid, rows in by_customer.items():
        revenue = cost = Decimal(0)
        completed = [r for r in rows if r["status"] == "completed"]
        for r in rows:
            amount = _cents(Decimal(str(r["amount"])))
            c = _cents(Decimal(str(r["cost"]))) if r.get("cost") is not None else _cents(amount * (1 - margin))
            sign = 1 if r["status"] == "completed" else -1
            revenue += sign * amount
            cost += sign * c
        times = [datetime.fromisoformat(r["occurred_at"]) for r in completed]
        out[cid] = {
            "revenue": revenue,
            "profit": revenue - cost,
            "orders": len(completed),
            "refunds": len(rows) - len(completed),
            "aov": _cents(revenue / len(completed)) if completed else None,
            "first_purchase_at": min(times) if times else None,
            "last_purchase_at": max(times) if times else None,
        }
    return out


#: Profile fields that depend only on the events, not on the clock at the time
#: the profile was written (batching decides that), so two runs must agree.
STATE_FIELDS = (
    "revenue",
    "profit",
    "orders",
    "refunds",
    "aov",
    "first_purchase_at",
    "last_purchase_at",
    "nps",
    "nps_category",
    "nps_previous",
    "csat",
    "csat_satisfied",
    "complaints_total",
    "tickets_total",
    "open_tickets",
    "reopened_total",
    "first_response_hours_mean",
    "last_first_response_hours",
    "last_resolution_hours",
    "last_event_at",
    "events_total",
    # relative to the whole population: right only once the sweep went round
    # the final population (the VIP flag has hysteresis, so it is left out)
    "rfm_cell",
    "segment",
)


def offline_run(records: list[tuple[str, bytes | None, bytes | None]], settings):
    """One uninterrupted worker over raw (topic, key, value) records, no broker: (profiles, dead letters).

    profiles: customer_id -> CustomerProfile, after the final sweep (see ``pulse.offline``).
    """
    from pulse.offline import score_records

    result = score_records(records, settings)
    return result.profiles, result.rejected


def uninterrupted_profiles(events: list[tuple[str, dict]], settings) -> dict[str, dict]:
    """What one uninterrupted worker ends with over (kind, event) pairs: customer_id -> :data:`STATE_FIELDS`."""
    import orjson

    topics = settings.input_topics()
    records = [(topics[k], e["customer_id"].encode(), orjson.dumps(e)) for k, e in events]
    profiles, _ = offline_run(records, settings)
    return {cid: {f: getattr(p, f) for f in STATE_FIELDS} for cid, p in profiles.items()}
