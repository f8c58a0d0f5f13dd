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

import asyncio
import urllib.request
from datetime import UTC, datetime

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pulse.simulate import generate_events
from streams.codec import decode_state
from streams.ownership import latest_states
from testing.chaos import conflicting_ids
from testing.reference import uninterrupted_profiles
from testing.stack import consume, group_member, produce, profile_diffs, wait_until

pytestmark = pytest.mark.e2e

#: customers and days of the generated history (a year of the four kinds of events: alerts and VIP changes too)
CUSTOMERS = 40
DAYS = 365


def send(namespace, part: list[tuple[str, dict]]) -> None:
    topics = namespace.settings.input_topics()
    for kind in topics:
        records = [(e["customer_id"].encode(), orjson.dumps(e)) for k, e in part if k == kind]
        produce(namespace.bootstrap, topics[kind], records)


def events_by_outcome(port: int) -> dict[str, float]:
    """A worker's ``pulse_events_total`` per outcome (scored, duplicate, ...), kinds summed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pulse_events_total":
                out[sample.labels["outcome"]] = out.get(sample.labels["outcome"], 0.0) + sample.value
    return out


def test_offsets_reset_to_the_earliest_replay_nothing_twice(namespace, start_worker):
    settings = namespace.settings
    events = generate_events(customers=CUSTOMERS, days=DAYS, seed=23, end=datetime(2026, 6, 1, tzinfo=UTC))
    half = len(events) // 2
    first = start_worker(PULSE_BATCH_MAX_EVENTS="50")
    send(namespace, events[:half])
    assert wait_until(lambda: not profile_diffs(settings, uninterrupted_profiles(events[:half], settings)))
    first.stop()

    # no worker runs: the rest of the events arrive, and the group's offsets go back to the start of every input
    send(namespace, events[half:])
    inputs = list(settings.input_topics().values())

    async def reset_to_earliest() -> dict:
        async with group_member(namespace.bootstrap, settings.app_id, inputs, settings.partitions) as consumer:
            tps = sorted(consumer.assignment())
            before = {tp: await consumer.committed(tp) for tp in tps}
            await consumer.commit({tp: 0 for tp in tps})
            return before

    before = asyncio.run(reset_to_earliest())
    assert any(before.values()), "the first worker committed nothing: the reset would prove nothing"

    second = start_worker(PULSE_BATCH_MAX_EVENTS="50")
    expected = uninterrupted_profiles(events, settings)
    converged = wait_until(lambda: not profile_diffs(settings, expected))
    remaining = profile_diffs(settings, expected)
    outcomes = events_by_outcome(second.metrics_port)
    conflicting, ids = conflicting_ids(namespace.bootstrap, settings)
    print(
        f"\n[reset] offsets of {len(before)} input partitions back to 0: the second worker's events by outcome "
        f"{outcomes} ({half} of {len(events)} sent before the reset), "
        f"{len(remaining)} profiles differ, {conflicting} of {ids} alert and VIP-change ids with two contents"
    )
    assert converged, f"{remaining[:2]}\n{second.log_tail()}"
    assert conflicting == 0
    # the replay happened (every event sent before the reset read again) and dropped each as applied already
    assert outcomes.get("duplicate") == half and outcomes.get("scored") == len(events) - half, outcomes
    # once each: the changelog's states count every event once (the profiles compare events_total too)
    changelog = consume(namespace.bootstrap, f"{settings.app_id}-customer_states-changelog", 1, quiet=3)
    states = {k.decode(): decode_state(v) for k, v in latest_states(changelog).items()}
    assert sum(sum(s.events.values()) for s in states.values()) == len({e["event_id"] for _, e in events})
