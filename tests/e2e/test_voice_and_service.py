"""Surveys, complaints and support tickets over the real broker reach the Redis profiles exactly."""

from __future__ import annotations

import orjson
import pytest
import redis

from schemas.profile import CustomerProfile
from streams.sinks.redis_profiles import profile_key
from testing.stack import consume, produce, wait_until

pytestmark = pytest.mark.e2e


def ev(eid: str, cid: str, at: str, **fields) -> tuple[bytes, bytes]:
    return cid.encode(), orjson.dumps({"event_id": eid, "customer_id": cid, "occurred_at": at, **fields})


def test_mixed_event_kinds_build_exact_profiles(namespace, start_worker):
    s = namespace.settings
    surveys = [
        ev("s1", "A", "2026-03-01T10:00:00Z", nps=10, csat=5),
        ev("s2", "A", "2026-03-05T10:00:00Z", nps=6),  # latest NPS: detractor, previous 10
        ev("s3", "A", "2026-03-03T10:00:00Z", csat=2),  # latest CSAT: 2 (not satisfied)
        ev("s4", "B", "2026-03-02T10:00:00Z", nps=8),
        ev("s2", "A", "2026-03-05T10:00:00Z", nps=6),  # duplicate event id: counts once
    ]
    complaints = [
        ev("c1", "A", "2026-02-01T09:00:00Z", complaint_id="K1", severity="critical", category="billing"),
        ev("c2", "A", "2026-02-20T09:00:00Z", complaint_id="K2", severity="low", category="delivery"),
        ev("c3", "A", "2026-03-04T09:00:00Z", complaint_id="K3", severity="medium", category="delivery"),
    ]
    tickets = [
        ev("t1", "B", "2026-03-01T00:00:00Z", ticket_id="T1", kind="opened"),
        ev("t2", "B", "2026-03-01T03:00:00Z", ticket_id="T1", kind="first_response"),
        ev("t3", "B", "2026-03-01T12:00:00Z", ticket_id="T1", kind="resolved"),
        ev("t5", "B", "2026-03-02T06:00:00Z", ticket_id="T2", kind="first_response"),  # before its "opened"
        ev("t4", "B", "2026-03-02T00:00:00Z", ticket_id="T2", kind="opened"),
        ev("t6", "B", "2026-03-06T00:00:00Z", ticket_id="T1", kind="reopened"),
    ]
    bad = [
        (
            s.topic_surveys,
            b"A",
            orjson.dumps({"event_id": "x", "customer_id": "A", "occurred_at": "2026-03-01T00:00:00Z", "nps": 11}),
            "out_of_range",
        ),
        (
            s.topic_complaints,
            b"A",
            orjson.dumps(
                {
                    "event_id": "y",
                    "customer_id": "A",
                    "occurred_at": "2026-03-01T00:00:00Z",
                    "complaint_id": "K",
                    "severity": "apocalyptic",
                    "category": "x",
                }
            ),
            "unknown_value",
        ),
        (
            s.topic_support,
            b"B",
            orjson.dumps(
                {"event_id": "z", "customer_id": "B", "occurred_at": "2026-03-01T00:00:00Z", "ticket_id": "T"}
            ),
            "missing_field",
        ),
    ]
    worker = start_worker()
    produce(namespace.bootstrap, s.topic_surveys, surveys)
    produce(namespace.bootstrap, s.topic_complaints, complaints)
    produce(namespace.bootstrap, s.topic_support, tickets)
    for topic, key, value, _ in bad:
        produce(namespace.bootstrap, topic, [(key, value)])

    client = redis.Redis.from_url(s.redis_url, decode_responses=True)
    # the clock (as_of) is the latest event time: 2026-03-06T00:00Z
    expected = {
        "A": {
            "nps": 6,
            "nps_category": "detractor",
            "nps_previous": 10,
            "csat": 2,
            "csat_satisfied": False,
            # 30-day window ending 2026-03-06: K2 (02-20) and K3 (03-04); K1 (02-01) has aged out
            "complaints_window": 2,
            "complaint_worst_severity": "medium",
            "complaints_total": 3,
            "tickets_total": 0,
            "events_total": 6,
        },
        "B": {
            "nps": 8,
            "nps_category": "passive",
            "nps_previous": None,
            "csat": None,
            "csat_satisfied": None,
            "tickets_total": 2,
            "open_tickets": 2,
            "reopened_total": 1,
            # at 03-06 00:00 both are unresolved past the 72 h SLA, counted from their opening:
            # T2 (opened 03-02, 96 h) and T1 (opened 03-01, resolved, reopened 03-06: 120 h)
            "sla_breaches": 2,
            "first_response_hours_mean": 4.5,
            "last_first_response_hours": 6.0,
            "oldest_open_ticket_hours": 120.0,
            "events_total": 7,
        },
    }

    def got() -> dict[str, dict]:
        out = {}
        for cid, exp in expected.items():
            fields = client.hgetall(profile_key(s.redis_key_prefix, cid))
            if fields:
                profile = CustomerProfile.from_redis(fields)
                out[cid] = {k: getattr(profile, k) for k in exp}
        return out

    def as_of_is_final() -> bool:
        return all(
            client.hget(profile_key(s.redis_key_prefix, cid), "as_of") == "2026-03-06T00:00:00Z" for cid in expected
        )

    converged = wait_until(lambda: got() == expected and as_of_is_final())
    assert converged, f"{got()}\n{worker.log_tail()}"

    letters = consume(namespace.bootstrap, s.topic_dead_letters, expected=len(bad))
    assert sorted(orjson.loads(m.value)["reason"] for m in letters) == sorted(r for *_, r in bad)
    assert worker.alive()
