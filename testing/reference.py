"""Batch reference: the spec's order indicators recomputed from a whole history.

Written independently of scoring/ (Decimal arithmetic over the raw events, no
buckets, no incremental state) so that tests compare two implementations.
"""

from __future__ import annotations

import math
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


def batch_churn_codes(events: list[tuple], now_ms: int) -> set[str]:
    """The churn reason codes of one customer at ``now_ms``, from the raw event list and the spec's defaults.

    ``events``: ("order", ms, cents, refunded) | ("survey", ms, nps, csat) | ("complaint", ms, severity)
    | ("support", ms, ticket_id, kind). Plain loops over the whole history: no state, no buckets kept.
    """
    day, hour, week = 86_400_000, 3_600_000, 7 * 86_400_000
    codes: set[str] = set()
    purchases = [e for e in events if e[0] == "order" and not e[3]]
    days = sorted({e[1] // day for e in purchases})
    if purchases:
        last = max(e[1] for e in purchases)
        repeats = len(days) - 1
        gap = (days[-1] - days[0]) / repeats if repeats >= 2 else 30.0
        if now_ms - last > int(3.0 * gap * day):
            codes.add("overdue")
        if repeats >= 1:  # the spec's P(alive), CDNOW parameters, weeks
            r, alpha, a, b = 0.243, 4.414, 0.793, 2.426
            t_x, big_t = (days[-1] - days[0]) / 7, max((now_ms // day - days[0]) / 7, (days[-1] - days[0]) / 7)
            p_alive = 1 / (1 + a / (b + repeats - 1) * ((alpha + big_t) / (alpha + t_x)) ** (r + repeats))
            if p_alive < 0.3:
                codes.add("low_p_alive")
    # spend: 13 weekly buckets against the 13 before
    current = now_ms // week

    def spend(first_bucket: int, last_bucket: int) -> int:
        return sum(
            (-e[2] if e[3] else e[2]) for e in events if e[0] == "order" and first_bucket <= e[1] // week <= last_bucket
        )

    recent, prior = spend(current - 12, current), spend(current - 25, current - 13)
    if prior > 0 and recent < 0.5 * prior:
        codes.add("spend_decline")
    max_age = 180 * day
    nps = sorted(((e[1], e[2]) for e in events if e[0] == "survey" and e[2] is not None), reverse=True)
    if nps and now_ms - nps[0][0] < max_age:
        if nps[0][1] <= 6:
            codes.add("detractor")
        if len(nps) > 1 and nps[1][1] - nps[0][1] >= 3:
            codes.add("nps_drop")
    csat = max(((e[1], e[3]) for e in events if e[0] == "survey" and e[3] is not None), default=None)
    if csat and now_ms - csat[0] < max_age and csat[1] <= 2:
        codes.add("dissatisfied")
    today = now_ms // day
    recent_complaints = [e for e in events if e[0] == "complaint" and today - 30 < e[1] // day <= today]
    if len(recent_complaints) >= 2:
        codes.add("complaint_burst")
    if any(e[2] in ("high", "critical") for e in recent_complaints):
        codes.add("severe_complaint")
    tickets: dict[str, list] = defaultdict(list)
    for e in events:
        if e[0] == "support":
            tickets[e[2]].append(e)
    for rows in tickets.values():

        def at(kind: str, pick, rows=rows):
            times = [e[1] for e in rows if e[3] == kind]
            return pick(times) if times else None

        opened, responded, resolved, reopened = (
            at("opened", min),
            at("first_response", min),
            at("resolved", max),
            at("reopened", max),
        )
        is_open = opened is not None and (resolved is None or (reopened is not None and reopened > resolved))
        if is_open and responded is None and now_ms - opened > 24 * hour:
            codes.add("slow_first_response")
        if is_open and now_ms - opened > 72 * hour:
            codes.add("slow_resolution")
        if reopened is not None and (is_open or now_ms - reopened < 30 * day):
            codes.add("reopened_ticket")
    return codes


def batch_population_indicators(
    events: list[tuple[str, dict]],
    now_ms: int,
    edges_ms: tuple[int, ...],
    survey_days: int = 90,
    period_days: int = 30,
    activity_days: int = 365,
    quantiles: tuple[int, ...] = (50, 90),
) -> dict:
    """The spec's population indicators at ``now_ms`` from a raw (kind, event) list, de-duplicated by event id.

    Plain loops over the whole history, no state, no day rows: "in the last n days" at day t means the days
    (t − n, t]; tickets are matched by (customer, ticket id) over all their events; an active customer has a
    completed order within ``activity_days``; quantiles are nearest-rank over the raw durations, then rounded
    up to the first histogram edge at or above them (the last edge past it).
    """
    day = 86_400_000
    today = now_ms // day

    def in_last(d: int, n: int) -> bool:
        return today - n < d <= today

    seen: set[str] = set()
    votes = {"promoters": 0, "passives": 0, "detractors": 0, "csat_satisfied": 0, "csat_answers": 0}
    complaints = 0
    purchase_days: dict[str, set[int]] = defaultdict(set)
    tickets: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for kind, e in events:
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        at = int(datetime.fromisoformat(e["occurred_at"]).timestamp() * 1000)
        d = at // day
        if kind == "survey" and in_last(d, survey_days):
            if e.get("nps") is not None:
                votes["promoters" if e["nps"] >= 9 else "passives" if e["nps"] >= 7 else "detractors"] += 1
            if e.get("csat") is not None:
                votes["csat_answers"] += 1
                votes["csat_satisfied"] += e["csat"] >= 4
        elif kind == "complaint" and in_last(d, period_days):
            complaints += 1
        elif kind == "order" and e["status"] == "completed":
            purchase_days[e["customer_id"]].add(d)
        elif kind == "support":
            tickets[(e["customer_id"], e["ticket_id"])][e["kind"]].append(at)
    opened = resolved = 0
    durations = []
    for t in tickets.values():
        if not t["opened"]:
            continue  # never seen opened: counts nowhere
        o = min(t["opened"])
        opened += in_last(o // day, period_days)
        rs = max(t["resolved"]) if t["resolved"] else None
        ro = max(t["reopened"]) if t["reopened"] else None
        if rs is not None and (ro is None or ro <= rs) and in_last(rs // day, period_days):
            resolved += 1
        if t["first_response"]:
            fr = min(t["first_response"])
            if in_last(fr // day, period_days):
                durations.append(max(0, fr - o))
    durations.sort()
    first_response = {}
    for q in quantiles:
        if not durations:
            first_response[q] = None
            continue
        value = durations[math.ceil(q * len(durations) / 100 - 1e-9) - 1]
        first_response[q] = next((edge for edge in edges_ms if value <= edge), edges_ms[-1])
    active = start = new = lost = repeat = 0
    for days in purchase_days.values():
        is_active = any(in_last(d, activity_days) for d in days)
        was_active = any(today - period_days - activity_days < d <= today - period_days for d in days)
        active += is_active
        start += was_active
        new += in_last(min(days), period_days)
        lost += was_active and not is_active
        repeat += sum(in_last(d, activity_days) for d in days) >= 2
    n_votes = votes["promoters"] + votes["passives"] + votes["detractors"]
    return {
        **votes,
        "nps": 100 * (votes["promoters"] - votes["detractors"]) / n_votes if n_votes else None,
        "csat": votes["csat_satisfied"] / votes["csat_answers"] if votes["csat_answers"] else None,
        "complaints": complaints,
        "complaint_rate": complaints / active if active else None,
        "tickets_opened": opened,
        "tickets_resolved": resolved,
        "resolution_rate": resolved / opened if opened else None,
        "first_responses": len(durations),
        "first_response_ms": first_response,
        "active": active,
        "active_at_start": start,
        "new": new,
        "lost": lost,
        "repeat": repeat,
        "retention_rate": (active - new) / start if start else None,
        "churn_rate": (start - active) / start if start else None,
        "repurchase_rate": repeat / active if active else None,
        "net_additions": new - lost,
    }
