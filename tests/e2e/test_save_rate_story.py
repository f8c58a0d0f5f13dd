"""The loop back, end to end (issue 19): alert → webhook receiver → acknowledged through the router's API → the
customer buys again → the save rate in the worker's metrics and in `pulse stats`; the acknowledged episode is
not alerted again.

The real broker and redis-server, a worker and `pulse router` as subprocesses, a local webhook receiver that
checks the signature. The story is the churn story of tests/churn_story.py (as tests/e2e/test_churn_alerts.py
produces it, phase by phase) with two more events: an order on day 540 and a critical complaint on day 600
(the churn warning alone re-alerts that day: tests/unit/test_episodes.py). It is moved in time by whole weeks
so that its day 502, the third alert, falls in the week before now: the acknowledgement, made now through the
API, has a time inside the story, and only that alert is recent enough to be delivered (the earlier two are
historical). The events after day 502 lie in the future, so the worker runs with the too-early check off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from pulse.devstack import free_port
from schemas.profile import CustomerProfile
from scoring.units import DAY_MS
from streams.sinks.redis_profiles import profile_key
from testing.stack import REPO, consume, produce, wait_until
from tests.churn_story import D0, MONTHLY, STORY, clock, complaint, order
from tests.e2e.test_router import _post, receivers, start_router, webhook_only  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

EXTRA = {540: [order(540)], 600: [complaint(600, "critical")]}
#: whole weeks (the weekly revenue buckets stay aligned) that put the story's day 502 within the last 7 days
SHIFT_DAYS = 7 * ((int(time.time() * 1000) // DAY_MS - D0 - 502) // 7)


def shifted(value: dict) -> dict:
    at = datetime.fromisoformat(value["occurred_at"]) + timedelta(days=SHIFT_DAYS)
    return {**value, "occurred_at": at.isoformat()}


def story_day(day: int) -> str:
    """The ISO date of the story's day ``day`` as shifted."""
    return (datetime.fromisoformat(clock(day)[1]["occurred_at"]) + timedelta(days=SHIFT_DAYS)).date().isoformat()


def samples(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_alert_webhook_acknowledge_buy_again_save_rate(namespace, start_worker, start_router, receivers):  # noqa: F811
    settings = namespace.settings
    topics = {
        "orders": settings.topic_orders,
        "surveys": settings.topic_surveys,
        "complaints": settings.topic_complaints,
    }
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    worker = start_worker(
        PULSE_MAX_EARLINESS_SECONDS="0",
        # alerts older than 8 days are historical (not delivered): only the third one is recent
        PULSE_HISTORICAL_ALERT_SECONDS=str(8 * 86400),
    )
    api_port = free_port()
    router = start_router(
        webhook_only(receivers),
        PULSE_ROUTER_API_PORT=str(api_port),
        PULSE_TOPIC_RETENTION_ACTIONS=settings.topic_retention_actions,
    )

    def send(days: range) -> None:
        events = [
            e
            for d in days
            for e in ([order(d)] if d in MONTHLY else []) + STORY.get(d, []) + EXTRA.get(d, []) + [clock(d)]
        ]
        for logical, topic in topics.items():
            records = [(v["customer_id"].encode(), orjson.dumps(shifted(v))) for t, v in events if t == logical]
            if records:
                produce(namespace.bootstrap, topic, records)

    def alerts(n: int, **kw: float) -> list[dict]:
        return [orjson.loads(m.value) for m in consume(namespace.bootstrap, settings.topic_retention_alerts, n, **kw)]

    def profile() -> CustomerProfile | None:
        fields = client.hgetall(profile_key(settings.redis_key_prefix, "C"))
        return CustomerProfile.from_redis(fields) if fields else None

    def at(day: int, level: str) -> bool:
        p = profile()
        return p is not None and p.as_of.date().isoformat() == story_day(day) and p.churn_level == level

    # the phases of tests/e2e/test_churn_alerts.py: each waited for, so the clock never runs past the story
    for days, day, level in (
        (range(0, 331), 330, "low"),
        (range(331, 422), 421, "medium"),
        (range(422, 468), 467, "high"),
        (range(468, 473), 472, "low"),
        (range(473, 481), 480, "high"),
        (range(481, 501), 500, "medium"),
        (range(501, 503), 502, "high"),
    ):
        send(days)
        assert wait_until(lambda day=day, level=level: at(day, level)), (profile(), worker.log_tail())
    raised = alerts(3)
    assert [a["alert_id"] for a in raised] == ["C:churn:1", "C:churn:2", "C:churn:3"]
    assert [a["historical"] for a in raised] == [True, True, False]

    # the router delivers the recent one to the webhook, signed; the receiver acknowledges it
    assert wait_until(lambda: receivers.snapshot()["webhook"].ack_counts() == {"C:churn:3": 1}), router.tail()
    assert not receivers.snapshot()["webhook"].problems
    # a person acknowledges it through the router's API
    status, ack = _post(f"http://127.0.0.1:{api_port}/alerts/C:churn:3/acknowledge", {"actor": "ana"})
    assert status == 202, ack

    # the customer buys again on day 540; the episode shows the acknowledgement, the delivery and the save
    send(range(503, 541))
    assert wait_until(lambda: at(540, "medium")), (profile(), worker.log_tail())

    def episode_is(**want: object) -> bool:
        p = profile()
        e = p.episode if p is not None else None
        return e is not None and all(getattr(e, k) == v for k, v in want.items())

    assert wait_until(lambda: episode_is(alert_id="C:churn:3", status="acknowledged", destinations=["webhook"])), (
        profile(),
        worker.log_tail(),
    )
    assert profile().episode.saved_at.date().isoformat() == story_day(540)

    # day 600: high again after the cooldown; the acknowledged episode is not alerted again
    send(range(541, 621))
    assert wait_until(lambda: at(620, "high") and episode_is(settled=True)), (profile(), worker.log_tail())
    assert len(alerts(3, timeout=8, quiet=3)) == 3, "the acknowledged episode was alerted again"
    assert profile().episode.latest_alert_id == "C:churn:3" and str(profile().episode.recovered) == "100.00"

    m = samples(worker.metrics_port)
    assert m[("pulse_retention_alerts_suppressed_total", ())] == 1
    saved = (("action", "acknowledged"), ("level", "high"), ("result", "saved"))
    assert m[("pulse_alert_episodes", saved)] == 1
    assert m[("pulse_alert_episode_deliveries", (("destination", "webhook"), ("result", "saved")))] == 1
    assert m[("pulse_save_recovered_revenue", (("action", "acknowledged"), ("level", "high")))] == 100.0
    assert m[("pulse_save_recovered_revenue_by_destination", (("destination", "webhook"),))] == 100.0
    # episodes 1 and 2 (historical, delivered nowhere) were saved by the order of day 472
    assert m[("pulse_alert_episode_deliveries", (("destination", "none"), ("result", "saved")))] == 2

    env = {**os.environ, **namespace.env}

    def stats() -> dict:
        shown = subprocess.run(
            [sys.executable, "-m", "pulse", "stats", "--json"], cwd=REPO, env=env, capture_output=True, timeout=60
        )
        return orjson.loads(shown.stdout) if shown.returncode == 0 else {}

    def stats_show_it() -> bool:
        rate = stats().get("save_rate", {})
        return rate.get("destination", {}).get("webhook", {}).get("saved") == 1

    assert wait_until(stats_show_it), stats()
    rate = stats()["save_rate"]
    assert rate["action"]["acknowledged"] == {
        "episodes": 1,
        "saved": 1,
        "not_saved": 0,
        "pending": 0,
        "save_rate": 1.0,
        "recovered": "100.00",
    }
    assert rate["all"]["all"]["save_rate"] == 1.0 and rate["all"]["all"]["recovered"] == "300.00"
    text = subprocess.run(
        [sys.executable, "-m", "pulse", "stats"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    ).stdout
    assert "save rate (purchase within 60 d of an alert" in text and "destination webhook" in text
    assert worker.alive() and router.proc.poll() is None
