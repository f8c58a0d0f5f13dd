"""Start-up order does not matter: a worker started before its broker and Redis waits for them, then scores.

The worker starts against a broker port and a Redis port where nothing listens yet. It logs one line per try
naming the URL (no traceback), its /health answers and /ready says what it waits for; then a Tansu broker comes
up on that port, then a redis-server, and the worker creates its topics and scores exact profiles.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime

import orjson
import pytest

from pulse.devstack import free_port, start_redis, start_tansu
from pulse.simulate import generate_orders
from testing.reference import batch_order_profiles
from testing.stack import produce, profile_diffs, wait_until

pytestmark = pytest.mark.e2e

END = datetime(2026, 6, 30, tzinfo=UTC)
START_SECONDS = 60


def ready(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except OSError:
        return 0, {}


def test_worker_started_before_the_broker_and_redis_waits_then_scores(namespace, start_worker, tmp_path):
    broker_port, redis_port, api_port = free_port(), free_port(), free_port()
    broker_url, redis_url = f"kafka://127.0.0.1:{broker_port}", f"redis://127.0.0.1:{redis_port}/0"
    settings = namespace.settings.model_copy(update={"broker_url": broker_url, "redis_url": redis_url})
    worker = start_worker(
        PULSE_BROKER_URL=broker_url,
        PULSE_REDIS_URL=redis_url,
        PULSE_API_PORT=str(api_port),
        PULSE_STARTUP_RETRY_MAX_SECONDS="1",
    )

    def log() -> str:
        return worker.log.read_text(errors="replace")

    assert wait_until(lambda: log().count(f"waiting for the broker at {broker_url}") >= 3), worker.log_tail()
    assert worker.alive(), worker.log_tail()
    assert wait_until(lambda: ready(api_port) == (503, {"status": "not_ready", "reason": "waiting for the broker"}))

    servers = [start_tansu(tmp_path, broker_port)]
    try:
        assert wait_until(lambda: log().count(f"waiting for Redis at {redis_url}") >= 2), worker.log_tail()
        assert wait_until(lambda: ready(api_port)[1].get("reason") == "waiting for redis")
        servers.append(start_redis(tmp_path, redis_port))

        orders = generate_orders(customers=30, days=100, seed=2, end=END)
        assert wait_until(lambda: ready(api_port)[0] == 200, timeout=START_SECONDS * 2), worker.log_tail()
        produce(
            settings.broker_bootstrap(),
            settings.topic_orders,
            [(o["customer_id"].encode(), orjson.dumps(o)) for o in orders],
        )
        expected = batch_order_profiles(orders)
        converged = wait_until(lambda: not profile_diffs(settings, expected))
        assert converged, worker.log_tail()
        assert worker.alive(), worker.log_tail()
        text = log()
        assert "Traceback" not in text, text[-3000:]
        assert f"the broker at {broker_url} is up" in text and f"Redis at {redis_url} is up" in text
    finally:
        worker.stop()
        for server in reversed(servers):
            server.stop()


def test_a_bounded_wait_exits_with_status_69(namespace, start_worker):
    broker_url = f"kafka://127.0.0.1:{free_port()}"
    worker = start_worker(
        PULSE_BROKER_URL=broker_url, PULSE_STARTUP_WAIT_SECONDS="3", PULSE_STARTUP_RETRY_MAX_SECONDS="1"
    )
    assert wait_until(lambda: not worker.alive(), timeout=START_SECONDS), worker.log_tail()
    assert worker.proc.returncode == 69, worker.log_tail()
    text = worker.log.read_text(errors="replace")
    assert f"the broker at {broker_url} still unavailable" in text and "Traceback" not in text
