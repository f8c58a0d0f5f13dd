"""A Redis shared with other applications, as many production Redis servers are: customer-pulse gets an ACL user
that may touch only the keys and Pub/Sub channels under its ``PULSE_REDIS_KEY_PREFIX`` and may not run the
``@dangerous`` commands (KEYS, FLUSHALL, CONFIG, DEBUG, ...), which managed Redis services commonly withhold.

Every Redis client of the app must live with that: the worker's profile writes and sweeps, its HTTP API (the
at-risk page is a Lua script), the console's feed, pages, live channel and population trends, and the router's
delivery records. A key or
channel outside the prefix, or a withheld command, would fail with NOPERM only on such a server; until session 24
no test ran one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from pulse.devstack import free_port, redis_binary, stop_process, wait_port
from pulse.simulate import generate_events
from streams.security import redis_client_kwargs
from testing.reference import uninterrupted_profiles
from testing.stack import get_json, produce, profile_diffs, scraped, start_pulse, wait_until
from tests.conftest import first_broker_only
from tests.e2e.test_secured_kafka import make_certificates
from tests.router_fixtures import start_file_router

pytestmark = pytest.mark.e2e

#: the TLS Redis's admin password (a throwaway server per test)
ADMIN_PASSWORD = "admin-of-the-test"


def restricted_url(admin_url: str, prefix: str, client_kwargs: dict[str, Any]) -> str:
    """A Redis user limited to ``prefix``'s keys and channels, without @dangerous commands: its URL (the admin
    URL's scheme, host and port)."""
    user, password = f"pulse-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = redis.Redis.from_url(admin_url, **client_kwargs)
    admin.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", f"~{prefix}*", f"&{prefix}*", "+@all", "-@dangerous"
    )
    admin.close()
    scheme, rest = admin_url.split("://", 1)
    host_port = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{user}:{password}@{host_port}/0"


def start_tls_redis(folder: Path) -> tuple[subprocess.Popen, str, Path]:
    """A redis-server that speaks TLS only (as managed services require: ElastiCache's in-transit encryption,
    Azure's port 6380), with a certificate for 127.0.0.1 signed by a CA of the test's own: (process, its admin URL,
    the CA file). The admin user needs a password: managed services have one."""
    ca, _ = make_certificates(folder)
    port = free_port()
    proc = subprocess.Popen(
        [redis_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        + ["no", "--tls-cert-file", str(folder / "s.pem"), "--tls-key-file", str(folder / "s.key")]
        + ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--requirepass", ADMIN_PASSWORD]
        + ["--dir", str(folder)],
        stdout=(folder / "redis-tls.log").open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    wait_port(port, proc, "redis-server (TLS)", folder / "redis-tls.log")
    return proc, f"rediss://:{ADMIN_PASSWORD}@127.0.0.1:{port}/0", ca


#: ``plain`` runs the same over a plain connection (what every other e2e test uses); the suite runs ``tls``, which
#: covers the ACL user too
TRANSPORTS = ["tls", "plain"] if os.environ.get("PULSE_REDIS_ALL_TRANSPORTS") == "1" else ["tls"]


def answered(url: str, seconds: float = 30.0) -> tuple[int, dict]:
    """GET ``url`` from the API until it answers other than 503 (Redis slower than the API's bound) or
    ``seconds`` pass: the last (status, body)."""
    last: list[tuple[int, dict]] = []

    def done() -> bool:
        last[:] = [get_json(url)]
        return last[0][0] not in (0, 503)

    wait_until(done, timeout=seconds)
    return last[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_worker_api_and_console_run_with_a_redis_user_limited_to_their_prefix(
    devstack, namespace, start_worker, tmp_path, transport
):
    """``tls``: the same against a Redis that speaks only TLS, checked against ``PULSE_REDIS_SSL_CA_CERTS`` (until
    session 26 only unit tests had seen a rediss:// URL)."""
    first_broker_only(devstack, "Redis")
    s = namespace.settings
    tls_redis = None
    if transport == "tls":
        tls_redis, admin_url, ca = start_tls_redis(tmp_path)
        namespace.env["PULSE_REDIS_SSL_CA_CERTS"] = str(ca)
        s = s.model_copy(update={"redis_url": admin_url, "redis_ssl_ca_certs": str(ca)})
    url = restricted_url(s.redis_url, s.redis_key_prefix, redis_client_kwargs(s, sync=True))
    s = s.model_copy(update={"redis_url": url})
    restricted = redis.Redis.from_url(url, **redis_client_kwargs(s, sync=True))
    with pytest.raises(redis.exceptions.NoPermissionError):  # the user really is limited
        restricted.set("someone-elses-key", 1)
    if transport == "tls":
        plain = url.replace("rediss://", "redis://")
        with pytest.raises(redis.exceptions.ConnectionError):  # and the server really speaks only TLS
            redis.Redis.from_url(plain, socket_timeout=2).ping()
    namespace.env["PULSE_REDIS_URL"] = url
    api_port = free_port()
    worker = start_worker(PULSE_API_PORT=str(api_port))
    console_port, console_log = free_port(), namespace.log_dir / "console.log"
    env = {**os.environ, **namespace.env, "PULSE_CONSOLE_PORT": str(console_port), "PULSE_CONSOLE_STATS_SECONDS": "2"}
    env["PULSE_CONSOLE_TREND_SECONDS"] = "2"
    console = start_pulse(["console"], env, console_log)
    # deliver_historical: the alerts of a replayed year are marked historical
    router, router_log, deliveries = start_file_router(namespace, namespace.log_dir, deliver_historical=True)
    try:
        events = generate_events(customers=200, days=365, seed=24, end=datetime(2026, 6, 1, tzinfo=UTC))
        for kind, topic in s.input_topics().items():
            records = [(e["customer_id"].encode(), orjson.dumps(e)) for k, e in events if k == kind]
            produce(namespace.bootstrap, topic, records)
        expected = uninterrupted_profiles(events, s)
        converged = wait_until(lambda: not profile_diffs(s, expected))
        assert converged, f"{len(profile_diffs(s, expected))} profiles differ\n{worker.digest()}"
        api = f"http://127.0.0.1:{api_port}"
        customer = next(iter(expected))
        # each read within the API's 1-s Redis bound: on the suite's loaded box a TLS handshake can take longer,
        # and the API then answers 503 at once (as documented); the subject here is the user and the transport
        assert answered(f"{api}/customers/{customer}")[0] == 200
        assert answered(f"{api}/vips")[0] == 200
        # the CLI's read of a profile, with the same settings (its client takes the CA file too)
        shown = subprocess.run(
            [sys.executable, "-m", "pulse", "profile", customer],
            env={**os.environ, **namespace.env},
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert shown.returncode == 0 and customer in shown.stdout, shown.stderr
        status, page = answered(f"{api}/at-risk")
        assert status == 200 and page["total"] > 0 and page["customers"], page  # a Lua script over the prefix
        base = f"http://127.0.0.1:{console_port}"

        def console_read_alerts() -> bool:
            try:
                found = scraped(console_port)
            except OSError:
                return False
            return found.get("pulse_console_events_total", 0) > 0

        assert wait_until(console_read_alerts), console_log.read_text(errors="replace")[-3000:]
        for path in ("/", "/fragments/queue", "/fragments/population", f"/customers/{customer}"):
            with urllib.request.urlopen(base + path, timeout=10) as response:  # an error status raises
                assert response.status == 200 and b"NOPERM" not in response.read(), path
        # the router delivered the worker's alerts and noted each delivery under the prefix
        assert wait_until(lambda: deliveries.exists() and deliveries.stat().st_size > 0), router_log.read_text()[-3000:]
        assert any(restricted.scan_iter(f"{s.redis_key_prefix}router:delivered:*", count=1000))
        for log in (worker.log, console_log, router_log):
            text = log.read_text(errors="replace")
            assert "NOPERM" not in text and "NoPermission" not in text and "Traceback" not in text, text[-3000:]
        assert worker.alive() and console.poll() is None and router.poll() is None
    finally:
        stop_process(console, 30)
        stop_process(router, 30)
        if tls_redis is not None:
            stop_process(tls_redis, 10)
