"""The clock end to end (spec: Clock): the real broker, Redis and worker subprocesses.

* A year of history of all four kinds waits on the topics (a backlog, a replay after downtime), then two
  workers start: topics and partitions are read at different speeds, yet no overdue alert may say "no
  purchase for N days" while an order of that customer inside those N days is on the orders topic.
* Hostile timestamps: each is dead-lettered with its reason, the worker stays up, no other customer's
  profile changes and no alert is raised.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis

from pulse.offline import score_records
from pulse.simulate import generate_events, send
from schemas.profile import CustomerProfile
from scoring.units import DAY_MS
from streams.admin import ensure_topics
from streams.security import kafka_client_kwargs
from streams.sinks.redis_profiles import profile_key
from testing.stack import consume, produce, profile_diffs, wait_until

pytestmark = pytest.mark.e2e


def topics_of(settings) -> dict[str, str]:
    return {
        "order": settings.topic_orders,
        "survey": settings.topic_surveys,
        "complaint": settings.topic_complaints,
        "support": settings.topic_support,
    }


def profiles(settings, customers) -> dict[str, dict]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    with client.pipeline(transaction=False) as pipe:
        for cid in customers:
            pipe.hgetall(profile_key(settings.redis_key_prefix, cid))
        return dict(zip(customers, pipe.execute(), strict=True))


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def contradicted_overdue(alerts: list[dict], orders: list[dict]) -> list[tuple[str, str, float, str]]:
    """Overdue alerts ("no purchase for N days" at raised_at) with a completed order of that customer on the
    orders topic inside (raised_at - N days, raised_at]: (alert id, raised_at, N, the order's time)."""
    bought = defaultdict(list)
    for o in orders:
        if o.get("status") == "completed":
            bought[o["customer_id"]].append(ms(o["occurred_at"]))
    wrong = []
    for alert in alerts:
        raised = ms(alert["raised_at"])
        for reason in alert["reasons"]:
            if reason["code"] != "overdue":
                continue
            silent = float(reason["observed"])
            # observed is rounded to 0.01 day: only orders clearly inside the silence count
            since = raised - int((silent - 0.02) * DAY_MS)
            inside = [t for t in bought[alert["customer_id"]] if since < t <= raised]
            if inside:
                at = datetime.fromtimestamp(max(inside) / 1000, UTC).isoformat()
                wrong.append((alert["alert_id"], alert["raised_at"], silent, at))
    return wrong


#: a lateness bound far below the year replayed: a partition's topics are read at different speeds (one topic
#: months ahead of another of the same partition), and none of those events is late in its own log
REPLAY_LATENESS = {"PULSE_MAX_LATENESS_DAYS": "20"}


def test_a_replayed_year_raises_no_overdue_alert_that_an_order_on_the_topic_contradicts(namespace, start_worker):
    """Also: with a lateness bound far below the year, no valid event of the replay is dead-lettered too_late
    (measured against its partition's highest watermark over all topics, 20 days, it dead-lettered events of the
    topics read behind the others), and every profile field but the alert history equals the offline score's."""
    settings = namespace.settings.model_copy(update={"max_lateness_days": 20.0})
    topics = topics_of(settings)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    events = generate_events(customers=400, days=365, seed=23, end=end)
    asyncio.run(ensure_topics(settings))
    # the whole year waits on the topics before any worker reads: a replay, a restart after downtime
    asyncio.run(send(kafka_client_kwargs(settings), topics, events))
    expected = score_records([(topics[k], e["customer_id"].encode(), orjson.dumps(e)) for k, e in events], settings)
    want = {cid: (p.orders, p.as_of) for cid, p in expected.profiles.items()}

    workers = [start_worker(**REPLAY_LATENESS), start_worker(**REPLAY_LATENESS)]

    def settled() -> bool:
        got = profiles(settings, list(want))
        return all(
            fields and (CustomerProfile.from_redis(fields).orders, CustomerProfile.from_redis(fields).as_of) == w
            for fields, w in ((got[c], want[c]) for c in want)
        )

    dead = lambda: consume(namespace.bootstrap, settings.topic_dead_letters, 1, timeout=2)  # noqa: E731
    assert wait_until(settled), ([orjson.loads(r.value)["detail"] for r in dead()[:3]], [w.log_tail() for w in workers])
    alerts = [orjson.loads(m.value) for m in consume(namespace.bootstrap, settings.topic_retention_alerts, 1, quiet=8)]
    assert [orjson.loads(r.value)["reason"] for r in dead()] == []  # every event of the replay is valid
    # and every profile equals the offline score's, field for field, but for the alert history: which
    # historical alerts a replay raises depends on the clocks its batches assess at, and the VIP flag's
    # hysteresis on the order the customers were ranked in (tests/e2e/test_rfm_replay.py compares it without)
    history_fields = {"churn_alerts", "last_alert_at", "episode", "vip"}
    fields = [f for f in CustomerProfile.model_fields if f not in history_fields]
    offline = {cid: {f: getattr(p, f) for f in fields} for cid, p in expected.profiles.items()}
    assert wait_until(lambda: not profile_diffs(settings, offline), timeout=60)
    n_orders = sum(1 for k, _ in events if k == "order")
    orders = [orjson.loads(m.value) for m in consume(namespace.bootstrap, settings.topic_orders, n_orders)]
    assert len(orders) == n_orders
    overdue = [a for a in alerts if any(r["code"] == "overdue" for r in a["reasons"])]
    wrong = contradicted_overdue(alerts, orders)
    print(
        f"\nreplay of a year, 2 workers: {len(alerts)} alerts for {len({a['customer_id'] for a in alerts})} of "
        f"{len(want)} customers; {len(overdue)} overdue, {len(wrong)} contradicted by an order on the topic"
    )
    assert wrong == [], wrong[:10]
    # raised at times far older than the wall clock: marked historical, the latest day's not
    wall, limit, margin = time.time() * 1000, settings.historical_alert_seconds * 1000, 600_000
    for alert in alerts:
        age = wall - ms(alert["raised_at"])
        assert alert["historical"] if age > limit + margin else (age > limit - margin or not alert["historical"])
    assert all(w.alive() for w in workers)


def order(cid: str, at: str, n: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"{cid}-{n}-{zlib.crc32(at.encode())}",
            "customer_id": cid,
            "occurred_at": at,
            "order_id": f"O-{cid}-{n}",
            "amount": "40.00",
            "currency": "USD",
            "status": "completed",
        }
    )


HOSTILE = [
    ("9999-12-31T23:59:59-14:00", "invalid_time"),
    ("0001-01-01T00:00:00+14:00", "invalid_time"),
    ("9999-12-31T23:59:59Z", "too_early"),
    ("2099-01-01T00:00:00Z", "too_early"),
]


def history(now: datetime, customers: int) -> list[tuple[bytes, bytes]]:
    """Orders every 15 days over 200 days, the last a day ago."""
    out = []
    for c in range(customers):
        cid = f"K{c:03d}"
        for n in range(0, 200, 15 + c % 7):
            out.append((cid.encode(), order(cid, (now - timedelta(days=201 - n)).isoformat(), n)))
    return out


@pytest.mark.parametrize("idle_advance", ["0", "1"])
def test_hostile_timestamps_are_dead_lettered_and_change_no_other_customer(namespace, start_worker, idle_advance):
    settings = namespace.settings
    now = datetime.now(UTC).replace(microsecond=0)
    worker = start_worker(PULSE_CLOCK_IDLE_ADVANCE_SECONDS=idle_advance)
    asyncio.run(ensure_topics(settings))
    # year 1 at +14:00 as the very first event of every partition (its UTC time is year 0)
    firsts = [(f"F{i}".encode(), order(f"F{i}", "0001-01-01T00:00:00+14:00", 0)) for i in range(8)]
    produce(namespace.bootstrap, settings.topic_orders, firsts)
    records = history(now, 40)
    produce(namespace.bootstrap, settings.topic_orders, records)
    customers = sorted({k.decode() for k, _ in records})
    assert wait_until(lambda: all(profiles(settings, customers).values())), worker.log_tail()
    dead = consume(namespace.bootstrap, settings.topic_dead_letters, len(firsts))
    assert sorted(orjson.loads(m.value)["reason"] for m in dead) == ["invalid_time"] * len(firsts)

    def stable() -> dict[str, dict]:
        # the sweep has gone round at the final clock: two reads a few seconds apart agree
        first = profiles(settings, customers)
        time.sleep(3)
        return first if first == profiles(settings, customers) else {}

    before: dict[str, dict] = {}
    if idle_advance == "0":
        assert wait_until(lambda: bool(before.update(stable()) or before)), worker.log_tail()
    alerts_before = len(consume(namespace.bootstrap, settings.topic_retention_alerts, 0, timeout=10, quiet=3))

    # the hostile records, each for a customer of its own and one for an existing customer
    hostile = [(f"H{i}".encode(), order(f"H{i}", at, 0)) for i, (at, _) in enumerate(HOSTILE)]
    hostile += [(b"K000", order("K000", at, 99)) for at, _ in HOSTILE]
    produce(namespace.bootstrap, settings.topic_orders, hostile)
    dead = consume(namespace.bootstrap, settings.topic_dead_letters, len(firsts) + len(hostile), quiet=3)
    # the dead-letter topic has several partitions: a reader gets them interleaved, so compare the multiset
    reasons = sorted(orjson.loads(m.value)["reason"] for m in dead)
    assert reasons == sorted(["invalid_time"] * len(firsts) + [r for _, r in HOSTILE * 2]), worker.log_tail()
    assert worker.alive(), worker.log_tail()
    time.sleep(5)  # several sweep ticks and idle advances later
    assert worker.alive(), worker.log_tail()
    got = profiles(settings, customers + [f"H{i}" for i in range(len(HOSTILE))])
    assert not any(got[f"H{i}"] for i in range(len(HOSTILE)))
    wall = datetime.now(UTC)
    for cid in customers:
        p = CustomerProfile.from_redis(got[cid])
        assert p.as_of <= wall, (cid, p.as_of)  # no clock beyond the wall clock
    if idle_advance == "0":
        assert {c: got[c] for c in customers} == before
    alerts_after = consume(namespace.bootstrap, settings.topic_retention_alerts, 0, timeout=10, quiet=3)
    assert len(alerts_after) == alerts_before
