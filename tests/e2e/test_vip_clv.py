"""PULSE_VIP_VALUE=clv through a real worker, broker and Redis: the VIPs are the top share by predictive CLV.

CLV moves with the clock, so the worker re-values each customer it scores (events, due checks, the sweep)
before ranking it; once traffic stopped and the sweep went round at the final clock, the VIP flags in the
profiles, the Redis VIP sorted set (scored by CLV) and the last VIP change per customer on the VIP topic
all agree with the spec's percentile of the CLVs the profiles show.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import redis

from pulse.simulate import generate_orders
from schemas.profile import CustomerProfile
from streams.sinks.redis_profiles import profile_key, vip_key
from testing.stack import consume, wait_until
from tests.e2e.test_rfm_replay import pulse

pytestmark = pytest.mark.e2e

CLV_VIP = {
    "PULSE_VIP_VALUE": "clv",
    "PULSE_VIP_ENTER_SHARE": "0.05",
    "PULSE_VIP_LEAVE_SHARE": "0.05",  # no hysteresis: the flags are a function of the final population
    "PULSE_VIP_SEGMENTS": "[]",  # top share only
}


def top_share(values: dict[str, Decimal], share: float) -> set[str]:
    """The spec's mid-rank percentile p(v) = (count(< v) + 0.5·count(= v)) / N, p ≥ 1 − share."""
    ordered = sorted(values.values())
    n = len(ordered)
    out = set()
    for cid, v in values.items():
        below = sum(1 for x in ordered if x < v)
        equal = sum(1 for x in ordered if x == v)
        if (below + 0.5 * equal) / n >= 1 - share:
            out.add(cid)
    return out


def test_vips_by_clv_through_a_worker_and_redis(namespace, start_worker, tmp_path: Path):
    s = namespace.settings
    env = {**namespace.env, **CLV_VIP}
    orders = generate_orders(120, days=365, seed=21, end=datetime(2026, 6, 1, tzinfo=UTC))
    history = tmp_path / "history.csv"
    with history.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", "occurred_at", "amount", "order_id", "status"])
        for o in orders:
            writer.writerow([o["customer_id"], o["occurred_at"], f"{o['amount']:.2f}", o["order_id"], o["status"]])
    customers = sorted({o["customer_id"] for o in orders})

    worker = start_worker(**CLV_VIP)
    replayed = pulse(["replay", str(history)], env)
    assert replayed.returncode == 0, replayed.stderr

    client = redis.Redis.from_url(s.redis_url, decode_responses=True)

    def profiles() -> dict[str, CustomerProfile]:
        with client.pipeline(transaction=False) as pipe:
            for cid in customers:
                pipe.hgetall(profile_key(s.redis_key_prefix, cid))
            hashes = pipe.execute()
        return {cid: CustomerProfile.from_redis(h) for cid, h in zip(customers, hashes, strict=True) if h}

    def agree() -> bool:
        got = profiles()
        if len(got) < len(customers) or len({p.as_of for p in got.values()}) != 1:
            return False  # not every profile is as of the final clock yet
        buyers = {cid: p.clv for cid, p in got.items() if p.orders and p.clv is not None}
        top = top_share(buyers, 0.05)
        in_redis = dict(client.zrange(vip_key(s.redis_key_prefix), 0, -1, withscores=True))
        return (
            {cid for cid, p in got.items() if p.vip} == top
            and set(in_redis) == top
            and all(abs(in_redis[c] - float(buyers[c])) < 0.005 for c in top)
        )

    converged = wait_until(agree, timeout=240)
    assert converged, worker.log_tail()
    assert worker.alive()
    final = profiles()
    top = {cid for cid, p in final.items() if p.vip}
    assert len(top) >= 4
    # revenue would pick other customers: the ranking really is by CLV
    revenue_top = top_share({cid: p.revenue for cid, p in final.items() if p.orders}, 0.05)
    assert revenue_top != top

    changes = [orjson.loads(r.value) for r in consume(namespace.bootstrap, s.topic_vip_changes, len(top), quiet=3)]
    assert changes and all(c["value_measure"] == "clv" for c in changes)
    last = {c["customer_id"]: c["vip"] for c in changes}
    assert {cid for cid, vip in last.items() if vip} == top
