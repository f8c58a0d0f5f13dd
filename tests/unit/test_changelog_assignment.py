"""A worker assigned input partitions without their state-changelog partitions refuses to score them.

Why (docs/architecture.md, "Apache Kafka and Tansu"): Faust's assignor leaves out a topic missing from the group
leader's metadata, and a worker then takes input partitions it can recover nothing for; it scored on empty states
and the next owner recovered those over the real ones (tests/faults/test_retained_partitions.py[kafka], session
11: 1,214 events lost). ``streams.admin.ensure_topics`` removes the cause seen; this is the defence behind it.
"""

from __future__ import annotations

import asyncio

import pytest
from faust.types import TP

from pulse_config.settings import Settings
from streams.tables import unrecoverable_partitions

INPUTS = ("orders", "surveys", "ticks")
CHANGELOG = "pulse-customer_states-changelog"


def tps(topic: str, *partitions: int) -> set[TP]:
    return {TP(topic, p) for p in partitions}


def test_every_input_partition_with_its_changelog_partition_is_recoverable():
    actives = tps("orders", 0, 2) | tps("surveys", 0, 2) | tps(CHANGELOG, 0, 2)
    assert unrecoverable_partitions(actives, INPUTS, CHANGELOG) == set()


def test_a_changelog_missing_from_the_assignment_leaves_every_input_partition_unrecoverable():
    actives = tps("orders", 0, 1, 3) | tps("ticks", 0, 1, 3)
    assert unrecoverable_partitions(actives, INPUTS, CHANGELOG) == {0, 1, 3}


def test_a_changelog_with_fewer_partitions_leaves_the_rest_unrecoverable():
    actives = tps("orders", 0, 1, 2, 3) | tps(CHANGELOG, 0, 1)
    assert unrecoverable_partitions(actives, INPUTS, CHANGELOG) == {2, 3}


def test_any_input_topic_counts_and_other_topics_do_not():
    # a partition only the ticks topic brings is scored too (sweeps); dead letters are not read
    actives = tps("ticks", 5) | tps("dead-letters", 6) | tps(CHANGELOG, 0)
    assert unrecoverable_partitions(actives, INPUTS, CHANGELOG) == {5}


@pytest.mark.parametrize(("changelog_partitions", "stops"), [((0, 1, 2, 3), False), ((0, 1), True), ((), True)])
def test_the_worker_fail_stops_on_such_an_assignment_before_scoring(monkeypatch, changelog_partitions, stops):
    """The app's own on_partitions_assigned receiver (Faust sends it after pausing the new assignment and before
    its recovery can resume it), with the assignor's actives replaced: the exit is the module's fail-stop."""
    from streams.agents import customer_events
    from streams.app import create_app

    calls: list[str] = []
    monkeypatch.setattr(customer_events, "_fail_stop", lambda why, exc=None: calls.append(why))
    settings = Settings(_env_file=None, partitions=4)

    async def go() -> None:
        pulse = create_app(settings, settings.processor())
        changelog = settings.topic_state_changelog()
        actives = tps(settings.topic_orders, 0, 1, 2, 3) | tps(changelog, *changelog_partitions)
        monkeypatch.setattr(pulse.app.assignor, "assigned_actives", lambda: actives)
        await pulse.app.on_partitions_assigned.send(actives)

    asyncio.run(go())
    if stops:
        missing = sorted(set(range(4)) - set(changelog_partitions))
        assert len(calls) == 1 and f"assigned input partitions {missing} without their partitions of" in calls[0]
    else:
        assert calls == []
