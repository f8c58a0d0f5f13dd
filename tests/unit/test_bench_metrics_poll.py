"""``pulse bench``'s metrics polls ask for the one metric they wait on.

A full scrape of a worker renders every metric family under its GIL: ~6-8 ms of the worker's CPU for its ~400
samples, against ~1-2 ms for one metric (docs/benchmarks.md, session 18). Polled every 0.2 s through a backlog,
the full scrape took 2-4 % of the worker being measured. Here: the filter reaches a real prometheus_client
server (its ``name[]`` parameter), and a poll's answer holds the metric it asked for and nothing else.
``benchmarks`` is a layer tests do not import ([tool.importlinter]), so the checks run in a child interpreter of
the checkout, as ``pulse bench`` does.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from testing.stack import REPO

CHECKS = textwrap.dedent(
    """
    from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

    from benchmarks.phases.common import metric_sum, metric_values
    from pulse.devstack import free_port

    registry = CollectorRegistry()
    events = Counter("pulse_events", "events", ["outcome"], registry=registry)
    waits = Histogram("pulse_checkpoint_seconds", "checkpoint", registry=registry)
    events.labels(outcome="scored").inc(7)
    events.labels(outcome="dead_lettered").inc(2)
    waits.observe(0.2)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        one = metric_values(port, ("pulse_events_total",))
        everything = metric_values(port)
    finally:
        server.shutdown()
    assert metric_sum(one, "pulse_events_total") == 9 and metric_sum(one, "pulse_events_total", "scored") == 7, one
    assert "pulse_checkpoint_seconds" not in one and "pulse_events_created" not in one, one
    assert metric_sum(everything, "pulse_events_total") == 9, everything
    assert metric_sum(everything, "pulse_checkpoint_seconds_count") == 1, everything
    assert metric_values(free_port()) == ""  # nothing listening: no metrics yet, the poll goes on
    print("ok")
    """
)


def test_a_poll_asks_for_one_metric():
    done = subprocess.run([sys.executable, "-c", CHECKS], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


DELTAS = textwrap.dedent(
    """
    from benchmarks.phases.common import worker_deltas

    def scrape(batch_count, checkpoint_count, le_50ms, le_100ms):
        return "\\n".join([
            f"pulse_batch_events_count {batch_count}",
            f"pulse_batch_events_sum {batch_count * 2}",
            f"pulse_checkpoint_seconds_count {checkpoint_count}",
            f"pulse_checkpoint_seconds_sum {checkpoint_count * 0.02}",
            f'pulse_checkpoint_seconds_bucket{{le="0.05"}} {le_50ms}',
            f'pulse_checkpoint_seconds_bucket{{le="0.1"}} {le_100ms}',
        ])

    # the first scrape came between a batch's two histograms (counted in pulse_batch_events, not yet in
    # pulse_checkpoint_seconds); 26 batches since, 2 of them over 50 ms and none over 100 ms
    w = worker_deltas(scrape(10, 9, 9, 9), scrape(35, 35, 33, 35))
    assert w["batches"] == 25 and w["checkpoints"] == 26, w
    assert w["checkpoints_over_50ms"] == 2 and w["checkpoints_over_100ms"] == 0, w
    print("ok")
    """
)


def test_the_long_batches_are_counted_against_their_own_histogram():
    """A bench smoke run once reported -1 batches over 100 ms: counted as "batches" (another histogram's count) less
    the checkpoint histogram's bucket, across a scrape that fell between the two observations of one batch."""
    done = subprocess.run([sys.executable, "-c", DELTAS], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


SCORED = textwrap.dedent(
    """
    from benchmarks.phases.common import scored_seconds

    def scrape(started, ended):
        return "\\n".join([
            "# TYPE pulse_scoring_started_timestamp_seconds gauge",
            f"pulse_scoring_started_timestamp_seconds {started}",
            f"pulse_last_scored_batch_timestamp_seconds {ended}",
            'pulse_events_total{kind="order",outcome="scored"} 5.0',
        ])

    # two workers' scrapes joined: from the first one's start to the last one's end
    assert scored_seconds(scrape(1.7e9 + 0.5, 1.7e9 + 3.0) + "\\n" + scrape(1.7e9 + 1.0, 1.7e9 + 3.25), 2) == 2.75
    assert scored_seconds(scrape(1.7e9, 1.7e9 + 2.5), 1) == 2.5
    # a worker that scored nothing (its gauge still 0), or without the gauges: the polls' bound instead
    assert scored_seconds(scrape(1.7e9, 1.7e9 + 2.5) + "\\n" + scrape(0.0, 0.0), 2) is None
    assert scored_seconds('pulse_events_total{kind="order",outcome="scored"} 5.0', 1) is None
    print("ok")
    """
)


def test_a_backlog_is_timed_from_the_first_batch_begun_to_the_last_made_durable():
    """The workers are timed like the peers (first event to last), not by the polls (up to two poll intervals
    more, part of the first batch less)."""
    done = subprocess.run([sys.executable, "-c", SCORED], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
