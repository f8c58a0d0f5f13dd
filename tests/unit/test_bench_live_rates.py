"""``pulse bench --live-rates``: the report's rows and the highest rate that held the alert p99 target.

The runs themselves are exercised by tests/e2e/test_bench_smoke.py (two rates on one worker, none of their
events de-duplicated); here the report's arithmetic on fixed numbers."""

from __future__ import annotations

from benchmarks import harness


def run(rate: float, p99: float | None, main_cpu: float = 10.0, events: int = 20_000) -> dict:
    return {
        "rate_target": rate,
        "rate_achieved": rate - 0.4,
        "seconds": 20.0,
        "events": events,
        "alert_p50_ms": 40.0,
        "alert_p99_ms": p99,
        "alert_p99_steady_ms": p99,
        "redis_p99_ms": 150.0,
        "cpu_seconds": {"box_busy_share": 0.76},
        "worker": {"batches": 700, "events_per_batch": 28.6, "thread_cpu_seconds": {"main": main_cpu}},
    }


def test_the_highest_rate_is_the_last_of_an_unbroken_run_of_rates_within_the_target():
    runs = [run(2000, 138.0), run(500, 88.0), run(3000, 558.0), run(4000, 240.0), run(1000, 131.0)]
    # 4,000 came in under the target after 3,000 missed it: that worker was already past its limit
    assert harness._highest_rate_within(runs, 250.0) == 1999.6
    assert harness._highest_rate_within([run(500, 300.0), run(1000, 100.0)], 250.0) is None
    # a run with no alert seen does not count as held
    assert harness._highest_rate_within([run(500, 90.0), run(1000, None)], 250.0) == 499.6


def test_a_row_gives_the_main_threads_cpu_per_event_and_share_of_a_core():
    row = harness._live_row(run(1000, 131.0, main_cpu=11.4, events=20_000))
    assert row.split()[0] == "1,000"
    assert "570 (0.57)" in row  # 11.4 s / 20,000 events; 11.4 s / 20 s
    assert "700 x 28.6" in row and "76%" in row


def test_the_report_lists_the_runs_and_the_rate_that_held():
    r = {
        "machine": {"cpus": 2, "cpu": "x", "memory_gib": 24, "python": "3.11", "platform": "linux"},
        "brokers": ["kafka"],
        "broker": "kafka",
        "live_rates": [run(500, 88.0), run(2000, 138.0), run(3000, 558.0)],
        "verdicts": {},
        "bench_seconds": 100,
        "log_dir": "/tmp/x",
    }
    text = harness.report(r)
    assert "live rates (kafka)" in text
    assert "alert p99 <= 250 ms up to 2,000 events/s (of these rates)" in text
    assert text.count(" (0.") == 3  # a row per run
