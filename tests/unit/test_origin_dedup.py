"""A re-published copy whose first copy was keyed by its customer id and sits in the customer's own partition:
handled once the direct offset passed it; a mis-keyed one is judged by its origin alone.

Such copies come from a partition-count change (docs/operations.md, "Partitions added to an input topic"): a
worker at the old count re-published records the producers had put in their new-count partition; scored again
at the new count, the original is read directly in the customer's partition and the copy later, often more than
``dedup_event_ids`` events later, so the recent ids no longer hold it (tests/e2e/test_partitions_added.py
found 3 of 150 customers counted twice before this)."""

from __future__ import annotations

from scoring.customer import CustomerState, EventFacts, ScoringConfig, apply_event
from scoring.voice import SurveyFact

CONFIG = ScoringConfig()
OWN = 2


def survey(i: int, offset: int) -> EventFacts:
    at = 1_000 * i
    fact = SurveyFact(occurred_ms=at, nps=9, csat=None)
    return EventFacts(kind="survey", event_id=f"s{i}", occurred_ms=at, offset=offset, survey=fact)


def test_a_copy_from_the_own_partition_after_many_events_is_a_duplicate():
    state = CustomerState()
    state.partition = OWN
    assert apply_event(state, survey(0, offset=10), CONFIG)
    for i in range(1, 2 * CONFIG.dedup_event_ids):  # the original's id leaves the recent ids
        assert apply_event(state, survey(i, offset=10 + i), CONFIG)
    assert not apply_event(state, survey(0, offset=500), CONFIG, origin=(OWN, 10), origin_keyed=True)
    assert state.events["survey"] == 2 * CONFIG.dedup_event_ids


def test_a_copy_from_another_partition_is_still_judged_by_its_origin():
    state = CustomerState()
    state.partition = OWN
    for i in range(3):
        assert apply_event(state, survey(i, offset=100 + i), CONFIG)
    # a record first read at offset 7 of partition 0 (mis-keyed there): applied once, its next copy dropped
    assert apply_event(state, survey(50, offset=200), CONFIG, origin=(0, 7))
    assert not apply_event(state, survey(50, offset=201), CONFIG, origin=(0, 7))
    # the own partition's origin offset not yet read directly: not taken for a duplicate by this rule
    assert apply_event(state, survey(60, offset=202), CONFIG, origin=(OWN, 900), origin_keyed=True)


def test_a_mis_keyed_copy_from_the_own_partition_is_applied():
    """A record keyed by another customer (whose id happens to hash to this customer's partition) was never
    applied directly: its copy must be applied, however far the direct offset has moved (the chaos run of
    2b44186 lost such events when the rule ignored how the first copy was keyed)."""
    state = CustomerState()
    state.partition = OWN
    assert apply_event(state, survey(0, offset=10), CONFIG)
    # offset 11 of the own partition: keyed by another customer, re-published; the direct reads go on past it
    for i in range(1, 5):
        assert apply_event(state, survey(i, offset=11 + i), CONFIG)
    assert apply_event(state, survey(99, offset=40), CONFIG, origin=(OWN, 11), origin_keyed=False)
    assert not apply_event(state, survey(99, offset=41), CONFIG, origin=(OWN, 11), origin_keyed=False)
