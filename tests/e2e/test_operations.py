"""Operations against a running worker: the HTTP API (auth, profile, VIP pages, probes) and /metrics.

One worker with the API on a free port and a bearer token; 40 customers with
one order each, sent biggest spender first, so the VIP set is the top two or
three (top 5 % to enter, 8 % to leave: a partition scored before the others
may make its own top a VIP, and hysteresis keeps it while it stays in the top
8 %) and always contains the biggest spender.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from pulse.devstack import free_port
from streams.sinks.redis_profiles import vip_key
from testing.stack import CONVERGE_SECONDS, get_json, produce, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "test-token-0123456789"
CUSTOMERS = 40
MAX_PAGE = 10
#: the API and the worker start within this (a hang guard: the suite runs 5 groups side by side on 2 cores)
START_SECONDS = max(60.0, CONVERGE_SECONDS)
START = datetime(2026, 3, 1, tzinfo=UTC)


def orders() -> list[dict]:
    """One order per customer; C040 spends most. Sent in descending amount order."""
    out = []
    for i in range(CUSTOMERS, 0, -1):
        out.append(
            {
                "event_id": f"e-{i}",
                "customer_id": f"C{i:03d}",
                "occurred_at": (START + timedelta(minutes=i)).isoformat(),
                "order_id": f"O-{i}",
                "amount": 100 * i,
                "currency": "USD",
                "status": "completed",
            }
        )
    return out


class Api:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, token: str | None = TOKEN, scheme: str = "Bearer") -> tuple[int, dict]:
        return get_json(self.base + path, token, scheme)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_http_api_and_metrics_of_a_running_worker(namespace, start_worker):
    settings = namespace.settings
    api_port = free_port()
    worker = start_worker(
        PULSE_API_PORT=str(api_port),
        PULSE_API_TOKEN=TOKEN,
        PULSE_API_MAX_PAGE_SIZE=str(MAX_PAGE),
        PULSE_LAG_POLL_SECONDS="0.5",
    )
    api = Api(api_port)

    # liveness answers early, without a token; readiness once the app runs
    assert wait_until(lambda: api.get("/health", token=None)[0] == 200, timeout=START_SECONDS), worker.log_tail()
    assert wait_until(lambda: api.get("/ready", token=None)[0] == 200, timeout=START_SECONDS), (
        api.get("/ready", token=None),
        worker.log_tail(),
    )
    assert api.get("/ready", token=None)[1] == {"status": "ready"}

    sent = orders()
    produce(namespace.bootstrap, settings.topic_orders, [(o["customer_id"].encode(), orjson.dumps(o)) for o in sent])

    # the profile, with every field of the model
    assert wait_until(lambda: api.get("/customers/C040")[0] == 200), worker.log_tail()
    status, profile = api.get("/customers/C007")
    assert status == 200, profile
    assert profile["customer_id"] == "C007" and float(profile["revenue"]) == 700 and profile["orders"] == 1
    assert {"rfm_cell", "segment", "vip"} <= set(profile)

    # authentication: every endpoint but the probes
    for path in ("/customers/C007", "/vips"):
        assert api.get(path, token=None)[0] == 401
        assert api.get(path, token="wrong")[0] == 401
        assert api.get(path, token=TOKEN, scheme="Basic")[0] == 401
    assert api.get("/health", token=None)[0] == 200

    # unknown, malformed and percent-encoded ids
    status, body = api.get("/customers/C999")
    assert status == 404 and body["error"] == "unknown_customer"
    for bad in ("%20bad%20id", "x" * 129, "-leading-dash", "a%00b"):
        status, body = api.get(f"/customers/{bad}")
        assert status == 400 and body["error"] == "malformed_id", (bad, status, body)
    assert api.get("/customers/C%2F1")[0] == 404  # valid id with a slash: unknown, not malformed

    # VIP pages: biggest spender first, every VIP once, the same as the sorted set
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    def vips_settled() -> bool:
        return (
            api.get("/customers/C040")[1].get("vip") is True
            and 2 <= client.zcard(vip_key(settings.redis_key_prefix)) <= 3
        )

    assert wait_until(vips_settled), (client.zrevrange(vip_key(settings.redis_key_prefix), 0, -1), worker.log_tail())
    pages, offset = [], 0
    for _ in range(CUSTOMERS):  # bounded walk
        status, page = api.get(f"/vips?offset={offset}&limit=1")
        assert status == 200, page
        pages.append(page)
        if page["next_offset"] is None:
            break
        offset = page["next_offset"]
    walked = [(v["customer_id"], v["value"]) for page in pages for v in page["vips"]]
    expected = client.zrevrange(vip_key(settings.redis_key_prefix), 0, -1, withscores=True)
    assert walked == [(cid, score) for cid, score in expected]
    assert walked[0] == ("C040", 4000.0) and walked[1][0] == "C039"
    assert {page["total"] for page in pages} == {len(expected)}
    status, page = api.get("/vips")
    assert status == 200 and page["limit"] == MAX_PAGE and page["next_offset"] is None and page["value"] == "revenue"
    for bad in ("limit=0", f"limit={MAX_PAGE + 1}", "limit=x", "offset=-1", "offset=1.5"):
        status, body = api.get(f"/vips?{bad}")
        assert status == 400 and body["error"] == "bad_paging", (bad, status, body)

    # metrics of the same worker: every order scored once, lag per input partition down to 0
    samples = scrape(worker.metrics_port)
    assert samples[("pulse_events_total", (("kind", "order"), ("outcome", "scored")))] == CUSTOMERS

    def lag_of_orders() -> dict[str, float]:
        return {
            dict(labels)["partition"]: value
            for (name, labels), value in scrape(worker.metrics_port).items()
            if name == "pulse_consumer_lag_records" and dict(labels)["topic"] == settings.topic_orders
        }

    expected_partitions = {str(p) for p in range(settings.partitions)}
    assert wait_until(lambda: lag_of_orders().keys() == expected_partitions and not any(lag_of_orders().values())), (
        lag_of_orders(),
        worker.log_tail(),
    )
    lag_topics = {
        dict(labels)["topic"] for (name, labels) in scrape(worker.metrics_port) if name == "pulse_consumer_lag_records"
    }
    assert lag_topics == set(settings.input_topics().values())
    assert worker.alive(), worker.log_tail()
