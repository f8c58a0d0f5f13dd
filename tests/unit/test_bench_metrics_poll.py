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
