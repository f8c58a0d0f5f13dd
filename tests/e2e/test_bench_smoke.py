"""`python -m benchmarks` (= `pulse bench`) at a tiny size: every phase runs and reports sane numbers.

No timing assertions: the numbers of a 2,000-event run on a shared CI box say nothing; the real run
is in docs/benchmarks.md. This only keeps the harness working as the worker changes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from testing.stack import REPO

pytestmark = pytest.mark.e2e

SMOKE = [
    "--events",
    "2000",
    "--workers",
    "1",
    "--latency-seconds",
    "3",
    "--cost-sizes",
    "2000,4000",
    "--cost-events",
    "1500",
    "--template-customers",
    "200",
    "--recovery",
    "1000",
    "--recovery-events",
    "300",
    "--json",
]


def positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_bench_smoke(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", *SMOKE, "--log-dir", str(tmp_path / "bench")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout)

    assert r["events"] == 2000
    assert set(r["mix"]) == {"order", "support", "survey", "complaint"}
    for phase in ("raw", "naive", "faust", "full"):
        assert positive(r[phase]["events_per_second"]), (phase, r[phase])
        assert positive(r[phase]["seconds"]), (phase, r[phase])
    assert positive(r["full"]["peak_rss_mib"][0])
    assert [s["workers"] for s in r["scaling"]] == [1]

    lat = r["latency"]
    assert positive(lat["rate_achieved"]) and lat["tracers"] > 0 and lat["alert_tracers"] > 0
    # every tracer reached Redis and every alerting tracer's alert arrived (within the drain bound)
    assert lat["redis_seen"] == lat["tracers"], lat
    assert lat["alerts_seen"] == lat["alert_tracers"], lat
    for key in ("redis_p50_ms", "redis_p99_ms", "alert_p50_ms", "alert_p99_ms"):
        assert positive(lat[key]), (key, lat)
    assert lat["redis_p50_ms"] <= lat["redis_p99_ms"] and lat["alert_p50_ms"] <= lat["alert_p99_ms"]
    assert lat["alert_p99_ms_by_window"] and all(positive(v) for v in lat["alert_p99_ms_by_window"]), lat

    state = r["state"]
    assert state["customers"] == r["customers"]
    assert 0 < state["p50_bytes"] <= state["p99_bytes"] <= state["max_bytes"]
    assert positive(state["mean_bytes"])

    assert [c["customers"] for c in r["cost"]] == [2000, 4000]
    for c in r["cost"]:
        assert positive(c["cpu_us_per_event"]) and c["events"] > 0, c

    rec = r["recovery"]
    assert rec["customers"] == 1000
    assert rec["table_customers"] >= 1000
    assert positive(rec["first_event_seconds"])
    assert rec["scored_events"] == 300 and positive(rec["scored_events_per_second"]), rec

    expected = {
        "full_events_per_second",
        "full_over_raw",
        "full_over_naive",
        "alert_p99_ms",
        "state_bytes_per_customer",
        "recovery_seconds",
        "cost_growth_2000_to_4000",
    }
    assert set(r["verdicts"]) == expected
    for name, v in r["verdicts"].items():
        assert positive(v["value"]) and positive(v["target"]), (name, v)
        assert v["verdict"] == "met" or v["verdict"].startswith("missed by"), (name, v)
