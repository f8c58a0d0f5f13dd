"""Population indicators over the real broker: a mixed history through two workers gives, in `pulse stats`
and in every worker's gauges, exactly what the batch reference computes from the raw events."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime

import orjson
import pytest

from pulse.simulate import generate_events
from streams.stats import PopulationReadTimeout, read_stats, stats_json
from testing.reference import batch_population_indicators, uninterrupted_profiles
from testing.stack import (
    CONVERGE_SECONDS,
    REPO,
    committed_offsets,
    consume,
    log_ends,
    produce,
    profile_diffs,
    wait_until,
)

pytestmark = pytest.mark.e2e

#: gauge -> field of the reference (ratios in base units)
GAUGES = {
    "pulse_population_nps": "nps",
    "pulse_population_csat_ratio": "csat",
    "pulse_population_complaint_ratio": "complaint_rate",
    "pulse_population_resolution_ratio": "resolution_rate",
    "pulse_population_repurchase_ratio": "repurchase_rate",
    "pulse_population_retention_ratio": "retention_rate",
    "pulse_population_churn_ratio": "churn_rate",
    "pulse_population_net_additions": "net_additions",
    'pulse_population_active_customers{at="end"}': "active",
    'pulse_population_active_customers{at="start"}': "active_at_start",
    "pulse_population_new_customers": "new",
    "pulse_population_lost_customers": "lost",
}


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in lines)
        if name.startswith("pulse_population_")
    }


def snapshot_history(namespace) -> str:
    """Every population snapshot on the topic, in order: who published which partition's clock when (a failure's
    evidence: the indicator time is the lowest partition clock, so one stuck partition holds it)."""
    lines = []
    for record in consume(namespace.bootstrap, namespace.settings.topic_population(), 10**6, timeout=5, quiet=1.0):
        if record.value:
            data = orjson.loads(record.value)
            lines.append(
                f"offset {record.offset} at {record.timestamp}: partition {data['partition']} watermark "
                f"{data['watermark_ms']} clock {data.get('clock_ms')} customers {data['customers']}"
            )
    return "\n".join(lines)


def test_stats_and_gauges_equal_the_batch_reference(namespace, start_worker):
    s = namespace.settings
    events = generate_events(customers=250, days=420, seed=11, end=datetime(2026, 6, 1, tzinfo=UTC))
    # five new customers in the period (the generated ones all joined earlier)
    events += [
        (
            "order",
            {
                "event_id": f"new-{n}",
                "customer_id": f"N{n}",
                "occurred_at": f"2026-05-{10 + n:02d}T12:00:00+00:00",
                "order_id": f"N{n}",
                "amount": 20,
                "currency": "USD",
                "status": "completed",
            },
        )
        for n in range(5)
    ]
    rng = random.Random(5)
    # out of order within windows of 30 events, and 40 producer duplicates a few events after the original
    arrivals = list(events)
    for start in range(0, len(arrivals), 30):
        window = arrivals[start : start + 30]
        rng.shuffle(window)
        arrivals[start : start + 30] = window
    for i in sorted(rng.sample(range(len(arrivals) - 10), 40), reverse=True):
        arrivals.insert(i + rng.randint(1, 5), arrivals[i])
    clock_ms = max(int(datetime.fromisoformat(e["occurred_at"]).timestamp() * 1000) for _, e in events)
    expected = batch_population_indicators(events, clock_ms, s.indicators().response_edges_ms)
    assert expected["active"] > 50 and expected["first_responses"] > 5 and expected["new"] == 5

    workers = [start_worker(), start_worker()]
    topics = s.input_topics()
    started = time.monotonic()
    for kind in topics:
        produce(
            namespace.bootstrap,
            topics[kind],
            [(e["customer_id"].encode(), orjson.dumps(e)) for k, e in arrivals if k == kind],
        )

    def stats_now() -> dict:
        try:
            return stats_json(asyncio.run(read_stats(s, timeout=10)))
        except PopulationReadTimeout as exc:  # a busy broker: not read to the end, no numbers
            print(f"[e2e] {exc}")
            return {}

    def matches(got: dict) -> bool:
        got_q = {int(k): v for k, v in (got.get("first_response_ms") or {}).items()}
        return (
            got.get("as_of_ms") == clock_ms
            and got_q == expected["first_response_ms"]
            and all(got.get(k) == pytest.approx(v) for k, v in expected.items() if k != "first_response_ms")
        )

    converged = wait_until(lambda: matches(stats_now()), timeout=max(60.0, CONVERGE_SECONDS), every=1.0)  # hang guard
    elapsed = time.monotonic() - started
    if not converged:
        digests = "\n".join(f"--- worker {n}: {w.digest()}" for n, w in enumerate(workers))
        logs = "\n".join(f"--- worker {n}\n{w.log_tail(120)}" for n, w in enumerate(workers))
        pytest.fail(f"{digests}\n{stats_now()}\n{expected}\nclock_ms {clock_ms}\n{snapshot_history(namespace)}\n{logs}")
    print(f"\n[e2e] {len(arrivals)} events through 2 workers: indicators converged in {elapsed:.1f}s: {expected}")

    # what the workers applied is committed, while they run: the group's lag (kafka-consumer-groups) is 0, and a
    # restart reads nothing again (the second worker joined while the first was reading: partitions kept through
    # that rebalance, some before their first commit)
    inputs = list(topics.values())
    ends = log_ends(namespace.bootstrap, inputs)
    commits: dict = {}

    def committed_to_the_end() -> bool:
        commits.update(committed_offsets(namespace.bootstrap, s.app_id, inputs, s.partitions))
        return all(commits.get(tp) == end for tp, end in ends.items())

    assert wait_until(committed_to_the_end, timeout=15, every=1.0), {
        tp: (commits.get(tp), end) for tp, end in ends.items() if commits.get(tp) != end
    }

    # the command itself, as an operator runs it
    env = {**namespace.env, "PATH": ""}
    cli = subprocess.run(
        [sys.executable, "-m", "pulse", "stats", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert matches(json.loads(cli.stdout))
    table = subprocess.run(
        [sys.executable, "-m", "pulse", "stats"], cwd=REPO, env=env, capture_output=True, timeout=60, text=True
    )
    print(table.stdout)
    assert "NPS (90 d)" in table.stdout and f"{expected['nps']:+.1f}" in table.stdout

    # every worker's gauges show the whole population's numbers
    def gauges_match(worker) -> bool:
        got = scrape(worker.metrics_port)
        for gauge, field in GAUGES.items():
            want = expected[field]
            if want is None or got.get(gauge) != pytest.approx(want):
                return False
        return got.get('pulse_population_first_response_seconds{quantile="0.9"}') == pytest.approx(
            expected["first_response_ms"][90] / 1000
        ) and got.get("pulse_population_indicator_time_seconds") == pytest.approx(clock_ms / 1000, abs=1e-3)

    assert all(wait_until(lambda w=w: gauges_match(w), timeout=15) for w in workers), [
        scrape(w.metrics_port) for w in workers
    ]

    # and the profiles are the per-customer truth of the same events
    reference = uninterrupted_profiles(events, s)
    sample = dict(sorted(reference.items())[:: max(1, len(reference) // 20)])
    assert wait_until(lambda: not profile_diffs(s, sample), timeout=20), profile_diffs(s, sample)[:3]
    assert all(w.alive() for w in workers)
