"""The two input paths (``PULSE_INPUT_PATH``: Faust's stream, or the batch input of streams/batch_input.py) score
the same profiles and commit exactly what they applied.

The restart and rebalance tests would pass even if a path never committed (each state drops what it already
applied), so this test reads the group's committed offsets after a graceful stop: every input partition is
committed to its log end, no further.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime

import orjson
import pytest

from pulse.simulate import generate_events
from testing.reference import uninterrupted_profiles
from testing.stack import log_ends, move_group_offsets, produce, profile_diffs, wait_until

pytestmark = [pytest.mark.e2e]


@pytest.mark.parametrize("path", ["stream", "batch"])
def test_the_input_path_scores_exactly_and_commits_what_it_applied(namespace, start_worker, path):
    settings = namespace.settings
    events = generate_events(customers=120, days=365, seed=18, end=datetime(2026, 6, 1, tzinfo=UTC))
    topics = settings.input_topics()
    half = len(events) // 2

    def send(part: list[tuple[str, dict]]) -> None:
        for kind in topics:
            produce(
                namespace.bootstrap,
                topics[kind],
                [(e["customer_id"].encode(), orjson.dumps(e)) for k, e in part if k == kind],
            )

    worker = start_worker(PULSE_BATCH_MAX_EVENTS="50", PULSE_INPUT_PATH=path)
    send(events[:half])
    send(events[half:])
    expected = uninterrupted_profiles(events, settings)
    converged = wait_until(lambda: not profile_diffs(settings, expected))
    assert converged, f"{profile_diffs(settings, expected)[:2]}\n{worker.log_tail()}"
    if path == "batch":
        assert "input path: batch" in worker.log.read_text()
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(60)

    inputs = list(topics.values())
    ends = log_ends(namespace.bootstrap, inputs)

    commits = {tp: after for tp, (_, after) in move_group_offsets(namespace, lambda tp: None).items()}
    print(f"\n[input path {path}] {len(events)} events, committed {sum(v or 0 for v in commits.values())}")
    assert {tp: commits.get(tp) for tp in ends} == ends
