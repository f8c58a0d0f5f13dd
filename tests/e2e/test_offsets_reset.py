"""The group's committed offsets moved back to the start of every input: an operator's
``kafka-consumer-groups.sh --reset-offsets --to-earliest``, or offsets the broker expired while the group was
empty (``offsets.retention.minutes``, 7 days by default: the worker then starts at ``auto_offset_reset``,
the earliest offset, just the same).

The worker then reads every input again from its start. Each state remembers the last offset it applied per
input (scoring.customer ``source_offsets``), so the replay must change nothing: the profiles stay those of
every event applied once, no alert id is raised again with other content, and the events sent meanwhile are
applied once. Until session 27 only the opposite move (commits ahead of the changelog,
test_changelog_fencing.py) was tested.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pulse.simulate import generate_events
from streams.codec import decode_state
from streams.ownership import latest_states
from testing.chaos import conflicting_ids
from testing.reference import uninterrupted_profiles
from testing.stack import consume, metric_sum, move_group_offsets, profile_diffs, send_events, wait_until

pytestmark = pytest.mark.e2e

#: the outcomes of pulse_events_total a replay of valid events can have
OUTCOMES = ("duplicate", "scored")
#: customers and days of the generated history (a year of the four kinds of events: alerts and VIP changes too)
CUSTOMERS = 40
DAYS = 365


def test_offsets_reset_to_the_earliest_replay_nothing_twice(namespace, start_worker):
    settings = namespace.settings
    events = generate_events(customers=CUSTOMERS, days=DAYS, seed=23, end=datetime(2026, 6, 1, tzinfo=UTC))
    half = len(events) // 2
    first = start_worker(PULSE_BATCH_MAX_EVENTS="50")
    send_events(namespace, events[:half])
    assert wait_until(lambda: not profile_diffs(settings, uninterrupted_profiles(events[:half], settings)))
    first.stop()

    # no worker runs: the rest of the events arrive, and the group's offsets go back to the start of every input
    send_events(namespace, events[half:])
    moved = move_group_offsets(namespace, lambda tp: 0)
    assert any(before for before, _ in moved.values()), "the first worker committed nothing: nothing to reset"
    assert all(after == 0 for _, after in moved.values()), moved

    second = start_worker(PULSE_BATCH_MAX_EVENTS="50")
    expected = uninterrupted_profiles(events, settings)
    converged = wait_until(lambda: not profile_diffs(settings, expected))
    remaining = profile_diffs(settings, expected)
    outcomes = {o: metric_sum(second.metrics_port, "pulse_events_total", {"outcome": o}) for o in OUTCOMES}
    conflicting, ids = conflicting_ids(namespace.bootstrap, settings)
    print(
        f"\n[reset] offsets of {len(moved)} input partitions back to 0: the second worker's events by outcome "
        f"{outcomes} ({half} of {len(events)} sent before the reset), "
        f"{len(remaining)} profiles differ, {conflicting} of {ids} alert and VIP-change ids with two contents"
    )
    assert converged, f"{remaining[:2]}\n{second.log_tail()}"
    assert conflicting == 0
    # the replay happened (every event sent before the reset read again) and dropped each as applied already
    assert outcomes == {"duplicate": half, "scored": len(events) - half}, outcomes
    # once each: the changelog's states count every event once (the profiles compare events_total too)
    changelog = consume(namespace.bootstrap, f"{settings.app_id}-customer_states-changelog", 1, quiet=3)
    states = {k.decode(): decode_state(v) for k, v in latest_states(changelog).items()}
    assert sum(sum(s.events.values()) for s in states.values()) == len({e["event_id"] for _, e in events})
