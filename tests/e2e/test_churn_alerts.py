"""Churn alerts on the retention topic, end to end: the real broker, Redis and a worker subprocess.

The story of tests/churn_story.py (buys monthly, stops, comes back, complains)
is produced in phases, each waited for, as it would unfold in live traffic:
the alerts, their ids, levels and kinds must be exactly those of the scenario
test, the suppressed ones (cooldown) must not appear, the profile in Redis
carries the latest risk and reasons, and `pulse alerts` prints them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from schemas.profile import CustomerProfile
from streams.sinks.redis_profiles import profile_key
from testing.stack import REPO, consume, produce, wait_until
from tests.churn_story import MONTHLY, STORY, clock, iso, order

pytestmark = pytest.mark.e2e


def test_alerts_reach_the_retention_topic_exactly_once_each(namespace, start_worker):
    settings = namespace.settings
    topics = {
        "orders": settings.topic_orders,
        "surveys": settings.topic_surveys,
        "complaints": settings.topic_complaints,
    }
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    worker = start_worker()

    def send(days: range) -> None:
        events = [e for d in days for e in ([order(d)] if d in MONTHLY else []) + STORY.get(d, []) + [clock(d)]]
        for logical, topic in topics.items():
            records = [(v["customer_id"].encode(), orjson.dumps(v)) for t, v in events if t == logical]
            if records:
                produce(namespace.bootstrap, topic, records)

    def alerts(n: int) -> list[dict]:
        return [orjson.loads(m.value) for m in consume(namespace.bootstrap, settings.topic_retention_alerts, n)]

    def profile() -> CustomerProfile | None:
        fields = client.hgetall(profile_key(settings.redis_key_prefix, "C"))
        return CustomerProfile.from_redis(fields) if fields else None

    def at(day: int, level: str) -> bool:
        p = profile()
        return p is not None and p.as_of.isoformat() == iso(day) and p.churn_level == level

    # Each phase is waited for: within one phase, the customer's events and the clock's may be
    # processed in any order, so a phase never lets the clock run past what the story needs.
    send(range(0, 331))  # twelve monthly purchases
    assert wait_until(lambda: at(330, "low") and profile().orders == len(MONTHLY)), (profile(), worker.log_tail())
    send(range(331, 422))  # overdue from day 421
    first = alerts(1)
    assert [(a["alert_id"], a["kind"], a["level"]) for a in first] == [("C:churn:1", "entered", "medium")], (
        worker.log_tail()
    )
    assert first[0]["raised_at"].startswith(iso(421)[:10])
    send(range(422, 468))  # P(alive) below 0.3 from day 467
    assert [(a["alert_id"], a["kind"], a["level"]) for a in alerts(2)][1] == ("C:churn:2", "escalated", "high")
    send(range(468, 473))  # a complaint, then a purchase: back to low
    assert wait_until(lambda: at(472, "low")), (profile(), worker.log_tail())
    send(range(473, 481))  # detractor, dissatisfied: up again to high, but within the cooldown
    assert wait_until(lambda: at(480, "high")), (profile(), worker.log_tail())
    send(range(481, 501))  # the first complaint leaves the 30-day window
    assert wait_until(lambda: at(500, "medium")), (profile(), worker.log_tail())
    send(range(501, 503))  # a critical complaint 35 days after the last alert
    got = alerts(3)
    assert [(a["alert_id"], a["kind"], a["level"]) for a in got] == [
        ("C:churn:1", "entered", "medium"),
        ("C:churn:2", "escalated", "high"),
        ("C:churn:3", "entered", "high"),
    ]
    assert {r["code"] for r in got[2]["reasons"]} == {"detractor", "dissatisfied", "severe_complaint"}
    # nothing else arrives (the suppressed alerts stay suppressed)
    assert len(consume(namespace.bootstrap, settings.topic_retention_alerts, 3, timeout=8, quiet=3)) == 3

    assert wait_until(lambda: at(502, "high"))
    latest = profile()
    assert latest.churn_alerts == 3 and latest.churn_risk == 75
    assert {r.code for r in latest.churn_reasons} == {"detractor", "dissatisfied", "severe_complaint"}
    assert latest.p_alive is not None and latest.clv is not None and latest.clv_historical is not None

    # `pulse alerts` prints them for a person
    env = {**os.environ, **namespace.env}
    shown = subprocess.run(
        [sys.executable, "-m", "pulse", "alerts"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    for alert_id in ("C:churn:1", "C:churn:2", "C:churn:3"):
        assert alert_id in shown.stdout
    assert "severe_complaint" in shown.stdout and "->" in shown.stdout and "3 alert(s)" in shown.stderr

    text = urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("pulse_retention_alerts_total", (("level", "medium"),))] == 1
    assert samples[("pulse_retention_alerts_total", (("level", "high"),))] == 2
    assert samples[("pulse_retention_alert_reasons_total", (("reason", "overdue"),))] == 2
    assert samples[("pulse_churn_risk_customers", (("level", "high"),))] == 1
    assert worker.alive()
