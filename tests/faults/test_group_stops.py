"""Routers and consoles stopped together while their groups rebalance (a scale-in, a node drain, a rollout).

The workers' stop under a rebalance hung 1 round in 6 before session 25 (Faust's rebalance handling during a stop,
``streams.faust_fixes``). The router and the console read through aiokafka's own group consumer, not Faust's, so
that path did not cover them: here two routers and two consoles are stopped at once just as a third router joins
their group, with alerts being delivered. Each must exit on its own with status 0 and no traceback, well within a
stop's bound, and a router started afterwards delivers every alert (at least once: a router stopped between a
delivery and its record may repeat it, as documented).

Apache Kafka only: the subject is aiokafka's group protocol against the broker users run (Tansu's joins add a
fixed 3-s pause and nothing else to this).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import orjson
import pytest

from pulse.devstack import free_port, stop_process
from testing.stack import STOP_SECONDS, get_json, produce, start_pulse, wait_until
from tests.conftest import on_broker
from tests.router_fixtures import alert_dict, start_file_router

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

ALERTS = 200
DELIVERED = re.compile(r"churn risk: (C\d{5})")


def delivered(folders: list[Path]) -> set[str]:
    found: set[str] = set()
    for folder in folders:
        path = folder / "deliveries.log"
        if path.exists():
            found.update(DELIVERED.findall(path.read_text(errors="replace")))
    return found


def test_routers_and_consoles_stopped_together_during_a_rebalance_exit_cleanly(devstack, namespace, tmp_path):
    if not on_broker(devstack, "kafka"):
        pytest.skip("aiokafka's group protocol against Apache Kafka; Tansu adds only its fixed join pause")
    running: list[tuple[str, object, Path]] = []
    folders: list[Path] = []

    def router(name: str) -> None:
        folder = tmp_path / name
        folder.mkdir()
        folders.append(folder)
        proc, log, _ = start_file_router(namespace, folder)
        running.append((name, proc, log))

    try:
        router("router-1")
        router("router-2")
        for i in (1, 2):
            port, log = free_port(), tmp_path / f"console-{i}.log"
            env = {**os.environ, **namespace.env, "PULSE_CONSOLE_PORT": str(port), "PULSE_API_TOKEN": "t0ken-stops"}
            running.append((f"console-{i}", start_pulse(["console"], env, log), log))
            assert wait_until(lambda p=port: get_json(f"http://127.0.0.1:{p}/health")[0] == 200, timeout=60)
        assert wait_until(
            lambda: all("router: assigned" in log.read_text(errors="replace") for n, _, log in running[:2]), timeout=60
        )
        alerts = [alert_dict(i) for i in range(ALERTS)]
        records = [(a["customer_id"].encode(), orjson.dumps(a)) for a in alerts]
        produce(namespace.bootstrap, namespace.settings.topic_retention_alerts, records)
        assert wait_until(lambda: delivered(folders), timeout=60)  # delivering
        router("router-3")  # its join: the group rebalances
        late_log = running[-1][2]
        assert wait_until(lambda: "pulse router: ready" in late_log.read_text(errors="replace"), timeout=60)

        asked = time.monotonic()
        for _, proc, _ in running:
            proc.terminate()  # type: ignore[attr-defined]
        outcomes = []
        for name, proc, log in running:
            try:
                status = proc.wait(STOP_SECONDS)  # type: ignore[attr-defined]
            except Exception:
                status = "still running"
            took = round(time.monotonic() - asked, 1)
            outcomes.append((name, status, took, "Traceback" in log.read_text(errors="replace")))
        print(f"\n[faults] stopped together during a rebalance (name, status, seconds, traceback): {outcomes}")
        assert all(status == 0 and not traceback for _, status, _, traceback in outcomes), outcomes

        router("router-after")
        ids = {a["customer_id"] for a in alerts}
        assert wait_until(lambda: delivered(folders) >= ids, timeout=60), sorted(ids - delivered(folders))[:5]
    finally:
        for _, proc, _ in running:
            stop_process(proc, 10)  # type: ignore[arg-type]
