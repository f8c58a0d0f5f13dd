"""The group's committed offsets moved back to the start of every input: an operator's
``kafka-consumer-groups.sh --reset-offsets --to-earliest``, or offsets the broker expired while the group was
empty (``offsets.retention.minutes``, 7 days by default: the worker then starts at ``auto_offset_reset``,
the earliest offset, just the same).

The worker then reads every input again from its start. Each state remembers the last offset it applied per
input (scoring.customer ``source_offsets``), so the replay must change nothing: the profiles stay those of
every event applied once, no alert id is raised again with other content, and the events sent meanwhile are
applied once. Until session 27 only the opposite move (commits ahead of the changelog,
test_changelog_fencing.py) was tested. Malformed records sent before the reset had their dead letters then,
and get none again (until session 29 each was dead-lettered once more); those sent after it get theirs once.
Likewise valid events keyed by something else than their customer were re-published under its key when first
read, and are not again (until session 29 each got a second copy, dropped where it landed).
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from pulse.simulate import generate_events
from streams.codec import decode_state
from streams.ownership import latest_states
from testing.chaos import conflicting_ids
from testing.reference import uninterrupted_profiles
from testing.stack import (
    consume,
    event_records,
    metric_sum,
    move_group_offsets,
    produce,
    profile_diffs,
    send_stream,
    wait_until,
)

pytestmark = pytest.mark.e2e

#: the outcomes of pulse_events_total a replay of valid events can have
OUTCOMES = ("duplicate", "scored", "rerouted")
#: customers and days of the generated history (a year of the four kinds of events: alerts and VIP changes too)
CUSTOMERS = 40
DAYS = 365
#: malformed records sent with each half, keyed by customers of the history (so into their partitions)
MALFORMED = 6
#: every this many events of the history is sent keyed by something else than its customer (re-published)
MIS_KEYED_EVERY = 20


def send_partly_mis_keyed(namespace, events: list[tuple[str, dict]]) -> int:
    """The events, every ``MIS_KEYED_EVERY``-th keyed by something else than its customer; returns how many."""
    records = event_records(events)
    records[::MIS_KEYED_EVERY] = [(kind, b"mis-keyed", value) for kind, _, value in records[::MIS_KEYED_EVERY]]
    send_stream(namespace.bootstrap, namespace.settings.input_topics(), records, chunks=1, pause=0.0)
    return len(records[::MIS_KEYED_EVERY])


def send_malformed(namespace, tag: str) -> list[bytes]:
    """``MALFORMED`` records that are not JSON to the orders topic; returns their payloads."""
    payloads = [f"{{not json {tag} {i}".encode() for i in range(MALFORMED)]
    keyed = [(f"C{i:06d}".encode(), payload) for i, payload in enumerate(payloads)]
    produce(namespace.bootstrap, namespace.settings.topic_orders, keyed)
    return payloads


def dead_letter_payloads(namespace, expected: int) -> list[str]:
    """Every dead letter's payload, read until ``expected`` came and none more for a while."""
    letters = consume(namespace.bootstrap, namespace.settings.topic_dead_letters, expected, quiet=3)
    return sorted(orjson.loads(letter.value)["payload"] for letter in letters)


def test_offsets_reset_to_the_earliest_replay_nothing_twice(namespace, start_worker):
    settings = namespace.settings
    events = generate_events(customers=CUSTOMERS, days=DAYS, seed=23, end=datetime(2026, 6, 1, tzinfo=UTC))
    half = len(events) // 2
    first = start_worker(PULSE_BATCH_MAX_EVENTS="50")
    mis_keyed_before = send_partly_mis_keyed(namespace, events[:half])
    before = send_malformed(namespace, "before")
    assert wait_until(lambda: not profile_diffs(settings, uninterrupted_profiles(events[:half], settings)))
    assert wait_until(lambda: metric_sum(first.metrics_port, "pulse_dead_letters_total") == MALFORMED)
    first.stop()

    # no worker runs: the rest of the events arrive, and the group's offsets go back to the start of every input
    mis_keyed_after = send_partly_mis_keyed(namespace, events[half:])
    after = send_malformed(namespace, "after")
    moved = move_group_offsets(namespace, lambda tp: 0)
    assert any(before for before, _ in moved.values()), "the first worker committed nothing: nothing to reset"
    assert all(after == 0 for _, after in moved.values()), moved

    second = start_worker(PULSE_BATCH_MAX_EVENTS="50")
    expected = uninterrupted_profiles(events, settings)
    converged = wait_until(lambda: not profile_diffs(settings, expected))
    remaining = profile_diffs(settings, expected)
    letters = dead_letter_payloads(namespace, 2 * MALFORMED)
    outcomes = {o: metric_sum(second.metrics_port, "pulse_events_total", {"outcome": o}) for o in OUTCOMES}
    again = metric_sum(second.metrics_port, "pulse_dead_letters_total")
    conflicting, ids = conflicting_ids(namespace.bootstrap, settings)
    print(
        f"\n[reset] offsets of {len(moved)} input partitions back to 0: the second worker's events by outcome "
        f"{outcomes} ({half} of {len(events)} sent before the reset, {mis_keyed_before} and {mis_keyed_after} "
        "of them mis-keyed), "
        f"{len(remaining)} profiles differ, {conflicting} of {ids} alert and VIP-change ids with two contents, "
        f"{len(letters)} dead letters for {2 * MALFORMED} malformed records ({again:g} from the second worker)"
    )
    assert converged, f"{remaining[:2]}\n{second.log_tail()}"
    assert conflicting == 0
    # the replay happened (every record sent before the reset read again: the events, the first worker's copies of
    # the mis-keyed ones, the malformed records) and dropped each as decided already; the mis-keyed events sent
    # after the reset are re-published once, their copies scored
    assert outcomes == {
        "duplicate": half + mis_keyed_before + MALFORMED,
        "scored": len(events) - half,
        "rerouted": mis_keyed_after,
    }, outcomes
    # each malformed record dead-lettered once: those before the reset by the first worker only
    assert letters == sorted(p.decode() for p in before + after), letters
    assert again == MALFORMED
    # once each: the changelog's states count every event once (the profiles compare events_total too)
    changelog = consume(namespace.bootstrap, f"{settings.app_id}-customer_states-changelog", 1, quiet=3)
    states = {k.decode(): decode_state(v) for k, v in latest_states(changelog).items()}
    assert sum(sum(s.events.values()) for s in states.values()) == len({e["event_id"] for _, e in events})
