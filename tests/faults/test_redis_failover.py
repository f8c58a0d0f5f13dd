"""A Redis failover behind one address, as managed Redis services do it, mid-stream.

A primary endpoint's DNS name, a Kubernetes Service in front of an operator's primary or a virtual IP is moved to
the promoted replica: new connections reach the new primary, connections already open stay with the old one,
which is now a replica answering every write with READONLY. ``testing.tcp_proxy.SwitchingProxy`` plays that
address; two real redis-servers play the primary and its replica, and the failover is theirs (REPLICAOF).

Before session 26, the worker's profile writer and the router kept their pooled connections: every retry met
READONLY again, for as long as the connection lived, so no profile and no delivery record reached the new primary
(the router's deliveries stalled behind their record). Session 26 dropped the connection on READONLY in those two;
the console's feed and its actions still kept theirs (its queue stopped taking alerts until restarted). Since
session 28 every Redis client the project makes drops a connection that answered READONLY
(``streams.security.redis_client_kwargs``), and the next attempt connects anew. The subject is Redis, so it runs
on the first broker only.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis

from pulse.devstack import Server, free_port, start_redis, stop_process
from pulse.simulate import generate_events
from streams.console.cases import alerts_key, case_key
from streams.router.service import dedup_key
from testing.chaos import scored_events
from testing.reference import uninterrupted_profiles
from testing.stack import (
    event_records,
    nothing_stays_pending,
    produce,
    profile_diffs,
    scraped,
    send_stream,
    start_pulse,
    wait_until,
)
from testing.tcp_proxy import SwitchingProxy
from tests.conftest import first_broker_only
from tests.router_fixtures import alert_dict, start_file_router

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

#: seconds a replica may take to report its link to the primary up (a full sync of a small dataset: well under 1 s)
LINK_SECONDS = 20.0


class Failover:
    """A primary, its replica and the address (a proxy) that leads to the primary until :meth:`fail_over`."""

    def __init__(self, folder: Path) -> None:
        self.old: Server = start_redis(folder)
        self.new: Server = start_redis(folder)
        self.to_old = redis.Redis(port=self.old.port, decode_responses=True)
        self.to_new = redis.Redis(port=self.new.port, decode_responses=True)
        for client in (self.to_old, self.to_new):  # a replica's full sync at once, not after Redis's default 5 s
            client.config_set("repl-diskless-sync-delay", 0)
        self.to_new.replicaof("127.0.0.1", self.old.port)
        assert wait_until(lambda: self.to_new.info("replication").get("master_link_status") == "up", LINK_SECONDS)
        self.proxy = SwitchingProxy(self.old.port)
        self.url = f"redis://127.0.0.1:{self.proxy.port}/0"

    def fail_over(self) -> None:
        """The replica promoted, the address moved to it, the old primary demoted to its replica."""
        self.to_new.replicaof("NO", "ONE")
        self.proxy.switch(self.new.port)
        self.to_old.replicaof("127.0.0.1", self.new.port)

    def close(self) -> None:
        self.proxy.close()
        for client in (self.to_old, self.to_new):
            client.close()
        for server in (self.old, self.new):
            server.stop()


@pytest.fixture
def failover(devstack, tmp_path) -> Iterator[Failover]:
    first_broker_only(devstack, "a Redis failover")
    pair = Failover(tmp_path)
    try:
        yield pair
    finally:
        pair.close()


def test_the_worker_writes_its_profiles_to_the_new_primary_after_a_failover(failover, namespace, start_worker):
    events = generate_events(customers=120, days=365, seed=8, end=datetime(2026, 6, 1, tzinfo=UTC))
    s = namespace.settings.model_copy(update={"redis_url": failover.url})
    on_new = s.model_copy(update={"redis_url": f"redis://127.0.0.1:{failover.new.port}/0"})
    expected = uninterrupted_profiles(events, s)
    stream = event_records(events)
    halves = [stream[: len(stream) // 2], stream[len(stream) // 2 :]]
    worker = start_worker(PULSE_REDIS_URL=failover.url, PULSE_BATCH_MAX_EVENTS="50", PULSE_REDIS_RETRY_MAX_SECONDS="2")
    send_stream(namespace.bootstrap, s.input_topics(), halves[0], 1, 0)
    assert wait_until(lambda: scored_events(failover.to_old, s.redis_key_prefix) >= len(halves[0])), worker.log_tail()

    failover.fail_over()
    before = scraped(worker.metrics_port)
    send_stream(namespace.bootstrap, s.input_topics(), halves[1], 1, 0)
    converged = wait_until(lambda: not profile_diffs(on_new, expected), timeout=90)
    diffs = profile_diffs(on_new, expected)
    after = scraped(worker.metrics_port)
    print(
        f"\n[faults] redis failover behind one address: {len(stream)} events, write errors "
        f"{int(after.get('pulse_redis_write_errors_total', 0) - before.get('pulse_redis_write_errors_total', 0))}, "
        f"{len(diffs)} of {len(expected)} profiles differing on the new primary"
    )
    assert converged, f"{len(diffs)} differ, e.g. {diffs[:1]}\n{worker.log_tail()}"
    assert scored_events(failover.to_new, s.redis_key_prefix) == len(stream)
    # every write went through, the at-risk index's script with the profiles (nothing left to retry)
    assert nothing_stays_pending(worker), worker.log_tail()
    assert worker.alive()


def across_failover(
    failover: Failover,
    log: Path,
    send: Callable[[list[dict]], None],
    recorded: Callable[[redis.Redis, list[dict]], bool],
    first: list[dict],
    second: list[dict],
) -> tuple[bool, float, str]:
    """``first`` sent and recorded on the old primary, the failover, then ``second`` sent: whether it was recorded on
    the new primary within 60 s, how long that took, and the process's log."""
    send(first)
    assert wait_until(lambda: recorded(failover.to_old, first), timeout=60), log.read_text()[-3000:]
    failover.fail_over()
    time.sleep(0.5)  # the demoted primary starts its sync from the new one
    sent = time.monotonic()
    send(second)
    landed = wait_until(lambda: recorded(failover.to_new, second), timeout=60)
    return landed, time.monotonic() - sent, log.read_text(errors="replace")


def test_the_router_records_its_deliveries_on_the_new_primary_after_a_failover(failover, namespace, tmp_path):
    routed = replace(namespace, env={**namespace.env, "PULSE_REDIS_URL": failover.url})
    proc, log, deliveries = start_file_router(routed, tmp_path)
    prefix, topic = namespace.settings.redis_key_prefix, namespace.settings.topic_retention_alerts

    def send(alerts: list[dict]) -> None:
        produce(namespace.bootstrap, topic, [(a["customer_id"].encode(), orjson.dumps(a)) for a in alerts])

    def recorded(client: redis.Redis, alerts: list[dict]) -> bool:
        return all(client.exists(dedup_key(prefix, "log", a["alert_id"])) for a in alerts)

    try:
        first, second = [alert_dict(i) for i in range(20)], [alert_dict(i) for i in range(20, 40)]
        landed, _, text = across_failover(failover, log, send, recorded, first, second)
        print(f"\n[faults] router across a redis failover: READONLY met {text.count('read only replica')} times")
        assert landed, text[-3000:]
        assert all(a["customer_id"] in deliveries.read_text() for a in second)
        assert proc.poll() is None
    finally:
        stop_process(proc, 10)


def test_the_console_records_alerts_and_actions_on_the_new_primary_after_a_failover(failover, namespace):
    """The console's feed records each alert in the case store, and an action taken on its page moves the case:
    both writes, through the console's one Redis client, must reach the new primary after a failover."""
    s = namespace.settings
    prefix, topic = s.redis_key_prefix, s.topic_retention_alerts
    port, log = free_port(), namespace.log_dir / "console.log"
    env = {**os.environ, **namespace.env, "PULSE_REDIS_URL": failover.url, "PULSE_CONSOLE_PORT": str(port)}
    console = start_pulse(["console"], env, log)

    def send(alerts: list[dict]) -> None:
        produce(namespace.bootstrap, topic, [(a["customer_id"].encode(), orjson.dumps(a)) for a in alerts])

    def recorded(client: redis.Redis, alerts: list[dict]) -> bool:
        return all(client.hexists(alerts_key(prefix, a["customer_id"]), a["alert_id"]) for a in alerts)

    try:
        first, second = [alert_dict(i) for i in range(10)], [alert_dict(i) for i in range(10, 20)]
        landed, took, text = across_failover(failover, log, send, recorded, first, second)
        # (a READONLY inside the case store's watched transaction is a WatchError to it: retried at once, unlogged)
        print(
            f"\n[faults] console across a redis failover: {len(second)} alerts recorded on the new primary "
            f"{took:.1f} s after they were sent; READONLY logged {text.count('read only replica')} times"
        )
        assert landed, text[-3000:]
        # an action on the page: its case moves on the new primary (the answer shows the case, read back)
        alert = second[0]
        form = urllib.parse.urlencode({"note": "called back"}).encode()
        url = f"http://127.0.0.1:{port}/actions/{alert['alert_id']}/acknowledge"
        with urllib.request.urlopen(urllib.request.Request(url, data=form), timeout=30) as response:
            page = response.read().decode()
        assert response.status == 200 and "not recorded" not in page, page[-2000:]
        assert failover.to_new.hget(case_key(prefix, alert["customer_id"]), "status") == "acknowledged"
        assert console.poll() is None
    finally:
        stop_process(console, 30)
