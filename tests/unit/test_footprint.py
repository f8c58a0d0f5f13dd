"""A customer's footprint and its diff: the population the processor builds incrementally, one footprint diff
per change, equals the population rebuilt from the final states (each customer's whole footprint added once)."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulse_config.settings import Settings
from scoring.customer import CustomerState
from scoring.footprint import (
    ALL,
    GAPS,
    KEYS,
    NO_CHANGE,
    NOTHING,
    ORDER_PARTS,
    OTHER_PARTS,
    ROWS,
    TAGS,
    diff,
    footprint,
    widen,
)
from scoring.indicator_sums import IndicatorSums
from scoring.partition import PartitionPopulation
from scoring.population import PopulationView
from scoring.rfm import Population
from streams.processor import BatchProcessor, Incoming
from tests.multiworker import feed_workers
from tests.unit.test_indicators_property import DAY0, event_rows, to_events

#: small batches; the VIP value as CLV moves a customer's keys with the clock alone (``_revalue_clv``)
SETTINGS = {value: Settings(_env_file=None, batch_max_events=7, vip_value=value) for value in ("revenue", "clv")}
PLAIN = SETTINGS["revenue"]


def customer(orders: int, revenue_cents: int, last_ms: int) -> CustomerState:
    state = CustomerState()
    state.orders.orders, state.orders.revenue_cents, state.orders.last_purchase_ms = orders, revenue_cents, last_ms
    state.last_event_ms = last_ms
    return state


def test_a_diff_holds_only_what_moved_over_the_parts_both_footprints_hold():
    config = PLAIN.rfm()
    a = customer(1, 5_000, 1_700_000_000_000)
    assert diff(footprint(a, config), footprint(a, config)) is NO_CHANGE
    joined = diff(NOTHING, footprint(a, config))
    assert joined.keys is not None and joined.keys[0] is None and joined.tags is not None and joined.tags[0] == ()
    b = customer(2, 9_000, 1_700_000_000_000)
    moved = diff(footprint(a, config, KEYS | GAPS), footprint(b, config, KEYS | GAPS))
    assert moved.keys == (footprint(a, config).keys, footprint(b, config).keys) and moved.rows is None
    # a footprint of the keys only, against one of the tags only: no part in common, nothing to compare
    assert diff(footprint(a, config, KEYS), footprint(b, config, TAGS)) is NO_CHANGE


def test_applying_a_diff_and_its_reverse_leaves_the_partition_as_it_was():
    config = PLAIN.rfm()
    part = PartitionPopulation(Population.empty(config))
    a, b = customer(1, 5_000, 1_700_000_000_000), customer(3, 12_000, 1_710_000_000_000)
    part.apply(diff(NOTHING, footprint(a, config)))
    counts, version = part.population.counts(), part.version
    assert part.apply(diff(footprint(a, config), footprint(b, config)))
    assert part.population.counts() != counts and part.version > version
    part.apply(diff(footprint(b, config), footprint(a, config)))
    assert part.population.counts() == counts and +part.tallies == _tallies(a, config) and part.gaps == (0, 0, 0)
    assert not part.apply(diff(footprint(a, config), footprint(a, config)))


def _tallies(state: CustomerState, config):
    part = PartitionPopulation(Population.empty(config))
    part.apply(diff(NOTHING, footprint(state, config, ALL)))
    return +part.tallies


def _sums(sums: IndicatorSums) -> tuple:
    """Indicator sums without the all-zero rows a subtraction leaves behind."""
    return (
        {d: row for d, row in sums.voice.items() if any(row)},
        {d: row for d, row in sums.tickets.items() if any(row)},
        {d: {b: n for b, n in hist.items() if n} for d, hist in sums.responses.items() if any(hist.values())},
    )


def assert_equal_parts(a: PartitionPopulation, b: PartitionPopulation) -> None:
    assert sorted(a.members) == sorted(b.members)
    assert a.gaps == b.gaps and +a.tallies == +b.tallies and _sums(a.indicators) == _sums(b.indicators)
    assert a.due == b.due and a.watermark_ms == b.watermark_ms
    for index in ("r", "f", "m", "v"):
        x, y = getattr(a.population, index), getattr(b.population, index)
        assert (x.total, x.counts()) == (y.total, y.counts()), index
        # exact indexes (M, VIP value) also hold each member's exact value
        assert {k: list(v) for k, v in getattr(x, "values", {}).items() if len(v)} == {
            k: list(v) for k, v in getattr(y, "values", {}).items() if len(v)
        }, index


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    event_rows,
    st.randoms(use_true_random=False),
    st.integers(1, 3),
    st.sampled_from(sorted(SETTINGS)),
    st.integers(0, 400),
)
def test_the_population_built_through_footprint_diffs_equals_the_one_rebuilt_from_the_final_states(
    rows, rnd, partitions, vip_value, later_days
):
    """Events of all four kinds in any order, in small batches, with sweep ticks between them; then the clock
    jumps on and the due-time index re-assesses (risk levels, activity flags and CLV move with time alone).
    Every owned partition's population, kept by footprint diffs, equals one rebuilt from the table's states:
    one customer at a time (``add_state``) and in bulk (``add_states``)."""
    chosen = SETTINGS[vip_value]
    topics = chosen.input_topics()
    arrivals = to_events(rows)
    rnd.shuffle(arrivals)
    at = DAY0.timestamp() + (500 + later_days) * 86_400
    arrivals.append(("survey", {"event_id": "clock", "customer_id": "Z", "occurred_at": _iso(at), "nps": 9}))
    processor = BatchProcessor(chosen.processor())
    store: dict[bytes, CustomerState] = {}
    offsets: dict[tuple[str, int], int] = {}
    batch: list[Incoming] = []
    for n, (kind, event) in enumerate(arrivals):
        p = zlib.crc32(event["customer_id"].encode()) % partitions
        offset = offsets[(kind, p)] = offsets.get((kind, p), -1) + 1
        batch.append(Incoming(topics[kind], p, offset, event["customer_id"].encode(), orjson.dumps(event)))
        if n % 4 == 3:  # a sweep tick of that partition now and then
            batch.append(Incoming(chosen.topic_ticks(), p, n, None, b""))
    for out in feed_workers([processor], [store], [batch], {p: 0 for p in range(partitions)}):
        assert not out.rejected
    for p in sorted(processor.population.local):
        store.update(processor.check_due_whole(p, store.__getitem__).states)
        store.update(processor.sweep_whole(p, store.__getitem__).states)

    owned = set(processor.population.local)
    config = chosen.scoring()
    one_by_one = PopulationView(config.rfm, config.indicators)
    for key, state in store.items():
        assert state.partition is not None
        one_by_one.add_state(state.partition, key, state)
    bulk = PopulationView(config.rfm, config.indicators)
    bulk.add_states(owned, store.items())
    for p in owned:
        assert_equal_parts(processor.population.local[p], one_by_one.partition(p))
        assert_equal_parts(processor.population.local[p], bulk.partition(p))


def _iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat()


def test_a_widened_footprint_holds_each_part_as_it_was_taken():
    """The processor takes a customer's parts before the first event of the batch that can move them and moves the
    population once after the last: widening adds the parts a footprint lacks, keeps those it holds."""
    config = PLAIN.rfm()
    a, b = customer(1, 5_000, 1_700_000_000_000), customer(3, 12_000, 1_710_000_000_000)
    held = footprint(a, config, ROWS)
    wide = widen(held, footprint(b, config, KEYS | GAPS | ROWS))
    assert wide.parts == KEYS | GAPS | ROWS and wide.keys == footprint(b, config).keys and wide.rows is held.rows
    assert widen(wide, footprint(a, config, KEYS)) == wide  # nothing to add
    assert diff(wide, footprint(b, config, wide.parts)) is NO_CHANGE


def test_a_customers_events_of_one_batch_move_its_partition_once_and_exactly():
    """Orders and other events of one customer, several in a batch, interleaved: the population equals the one
    rebuilt from the final states (the parts are taken before the first event that can move them)."""
    topics = PLAIN.input_topics()
    at = DAY0.timestamp() + 400 * 86_400
    events = [
        ("survey", {"nps": 3}),
        ("order", {"order_id": "o1", "amount": 20, "currency": "USD", "status": "completed"}),
        ("support", {"ticket_id": "t1", "kind": "opened"}),
        ("order", {"order_id": "o2", "amount": 35.5, "currency": "USD", "status": "completed"}),
        ("complaint", {"complaint_id": "c1", "severity": "high", "category": "late"}),
        ("order", {"order_id": "o1", "amount": 20, "currency": "USD", "status": "refunded"}),
    ]
    processor = BatchProcessor(PLAIN.processor())
    store: dict[bytes, CustomerState] = {}
    batches: list[list[Incoming]] = [[], []]
    for n, (kind, fields) in enumerate(events * 2):
        cid = f"C{n % 3}"
        event = {"event_id": f"e{n}", "customer_id": cid, "occurred_at": _iso(at + 3600 * n), **fields}
        batches[n // 7].append(Incoming(topics[kind], 0, n, cid.encode(), orjson.dumps(event)))
    for out in feed_workers([processor], [store], batches, {0: 0}):
        assert not out.rejected
    rebuilt = PopulationView(PLAIN.rfm(), PLAIN.scoring().indicators)
    rebuilt.add_states({0}, store.items())
    assert_equal_parts(processor.population.local[0], rebuilt.partition(0))
    assert processor.population.local[0].population.m.total == 2  # C2 has refunds only: not ranked


def test_the_parts_an_event_moves():
    assert ORDER_PARTS == KEYS | GAPS and OTHER_PARTS == ROWS and not ORDER_PARTS & OTHER_PARTS
    assert ALL == KEYS | GAPS | ROWS | TAGS


def test_the_memoised_episode_tallies_follow_every_field_they_are_made_of():
    """``tags`` memoises the save-rate tallies by what ``episode_tallies`` reads (``tag_key``): a change of any of
    those fields gives the tallies computed afresh; and ``retag`` of the keys before and after each change is
    ``diff`` of the ``TAGS`` footprints (the processor's tallies move by it)."""
    import copy

    from scoring.episodes import Episode, EpisodeState, state_tallies
    from scoring.footprint import NOT_COUNTED, retag, tag_key, tags

    def fresh(state: EpisodeState) -> tuple:
        return tuple(sorted(state_tallies(state).items()))

    config = PLAIN.rfm()
    customer_state = customer(1, 5_000, 1_700_000_000_000)
    plain = tags(customer_state)
    episode = Episode(first_alert=1, last_alert=1, level="medium")
    state = EpisodeState(episodes=[episode], totals={"episodes:high:won_back:saved": 1})
    customer_state.episodes = state
    seen = {tags(customer_state)}
    assert tags(customer_state) == (*plain, *fresh(state))
    assert retag(NOT_COUNTED, tag_key(customer_state)) == diff(NOTHING, footprint(customer_state, config, TAGS))
    for change in (
        lambda: setattr(episode, "status", "assigned"),
        lambda: setattr(episode, "level", "high"),
        lambda: (setattr(episode, "status", "resolved"), setattr(episode, "outcome", "won_back")),
        lambda: episode.destinations.append("chat"),
        lambda: setattr(episode, "settled", True),
        lambda: (setattr(episode, "purchased_ms", 5), setattr(episode, "recovered_cents", 1234)),
        lambda: state.totals.update({"episodes:high:won_back:saved": 2}),
        lambda: state.episodes.append(Episode(first_alert=2, last_alert=2)),
        lambda: setattr(customer_state, "vip", True),
        lambda: setattr(customer_state, "segment", "champions"),
        lambda: setattr(customer_state, "activity", 3),
        lambda: setattr(customer_state.churn, "level", "high"),
        lambda: setattr(customer_state, "episodes", None),
    ):
        before = copy.deepcopy(customer_state)
        key = tag_key(customer_state)
        change()
        got = tags(customer_state)
        if customer_state.episodes is not None:
            without = copy.copy(customer_state)
            without.episodes = None
            assert got == (*tags(without), *fresh(state))
        assert got not in seen
        seen.add(got)
        moved = retag(key, tag_key(customer_state))
        assert moved == diff(footprint(before, config, TAGS), footprint(customer_state, config, TAGS))
        assert moved.tags == (tags(before), got)
        assert retag(key, tag_key(before)) is NO_CHANGE
