"""Streaming RFM, segments and VIP over the worker's processor equal a batch (pandas) computation.

The streaming side is the real processor: events in batches, population moved
per event, partitions owned by different "workers" that only exchange
snapshots, then the sweep. The batch side recomputes everything from the
de-duplicated final history with pandas, written independently.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta

import orjson
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.offline import score_records
from pulse_config.settings import Settings
from scoring.customer import CustomerState
from scoring.population import PopulationView
from scoring.rfm import DEFAULT_SEGMENTS, HIGH_VALUE, OTHERS
from streams.processor import BatchProcessor, Incoming
from tests.multiworker import feed_workers

# no hysteresis: the flag is then a function of the final population (see docs/profile.md, VIP)
SETTINGS = Settings(_env_file=None, batch_max_events=7, vip_enter_share=0.1, vip_leave_share=0.1)
DAY0 = datetime(2025, 1, 1, tzinfo=UTC)

orders = st.lists(
    st.tuples(
        st.integers(0, 25),  # customer
        st.integers(0, 400),  # day
        st.integers(0, 86_399),  # second of the day
        st.integers(1, 500_000),  # amount in cents
        st.booleans(),  # refunded (only when the customer bought before)
    ),
    min_size=1,
    max_size=120,
)


def to_events(rows) -> list[dict]:
    events, bought = [], set()
    for n, (c, day, sec, cents, refund) in enumerate(rows):
        cid = f"C{c:03d}"
        status = "refunded" if refund and cid in bought else "completed"
        bought.add(cid)
        at = DAY0 + timedelta(days=day, seconds=sec)
        events.append(
            {
                "event_id": f"e{n}",
                "customer_id": cid,
                "occurred_at": at.isoformat(),
                "order_id": f"o{n}",
                "amount": f"{cents / 100:.2f}",
                "currency": "USD",
                "status": status,
            }
        )
    return events


def batch_rfm(events: list[dict], settings: Settings) -> dict[str, tuple]:
    """customer -> (r, f, m, segment, vip) by pandas, from the raw events."""
    config = settings.rfm()
    df = pd.DataFrame(events)
    df["cents"] = (df["amount"].astype(float) * 100).round().astype(int)
    df["signed"] = df["cents"].where(df["status"] == "completed", -df["cents"])
    df["at_ms"] = pd.to_datetime(df["occurred_at"]).map(lambda t: int(t.timestamp() * 1000))
    completed = df[df["status"] == "completed"]
    per = pd.DataFrame(
        {
            "last": completed.groupby("customer_id")["at_ms"].max(),
            "orders": completed.groupby("customer_id").size(),
            "revenue": df.groupby("customer_id")["signed"].sum(),
        }
    ).dropna(subset=["orders"])
    keys = config.keys
    per["r"] = per["last"].map(lambda ms: keys.r_key(int(ms)))
    per["f"] = per["orders"].astype(int)
    per["m"] = per["revenue"].astype(int)  # exact cents (spec: the percentile of the lifetime revenue)
    n = len(per)
    out = {}
    pct = {col: (per[col].rank(method="average") - 0.5) / n for col in ("r", "f", "m")}
    for cid in per.index:
        r, f, m = (min(5, 1 + int(5 * pct[col][cid] // 1)) for col in ("r", "f", "m"))
        segment = next((s.name for s in DEFAULT_SEGMENTS if s.matches(r, f, m)), OTHERS)
        vip = segment == HIGH_VALUE or pct["m"][cid] >= 1 - config.vip_enter_share
        out[cid] = (r, f, m, segment, vip)
    return out


def streamed(profiles) -> dict[str, tuple]:
    return {
        p.customer_id: (p.r_score, p.f_score, p.m_score, p.segment, p.vip) for p in profiles if p.r_score is not None
    }


@settings(max_examples=80, deadline=None)
@given(orders)
def test_offline_streaming_rfm_equals_batch(rows):
    events = to_events(rows)
    topic = SETTINGS.topic_orders
    result = score_records([(topic, e["customer_id"].encode(), orjson.dumps(e)) for e in events], SETTINGS)
    assert streamed(result.profiles.values()) == batch_rfm(events, SETTINGS)


def partition_of(cid: str, partitions: int) -> int:
    return zlib.crc32(cid.encode()) % partitions


@settings(max_examples=60, deadline=None)
@given(orders, st.integers(1, 4), st.integers(1, 3))
def test_workers_sharing_snapshots_score_against_the_whole_population(rows, partitions, workers):
    """Partitions spread over workers that see each other only through snapshots; after the sweep, == batch."""
    events = to_events(rows)
    topic = SETTINGS.topic_orders
    processors = [BatchProcessor(SETTINGS.processor()) for _ in range(workers)]
    stores: list[dict[bytes, CustomerState]] = [{} for _ in range(workers)]
    owner = {p: p % workers for p in range(partitions)}
    offsets = [0] * partitions
    batches: list[list[Incoming]] = [[] for _ in range(workers)]
    for e in events:
        p = partition_of(e["customer_id"], partitions)
        batches[owner[p]].append(Incoming(topic, p, offsets[p], e["customer_id"].encode(), orjson.dumps(e)))
        offsets[p] += 1
    profiles = {}
    for out in feed_workers(processors, stores, batches, owner):
        profiles.update({pr.customer_id: pr.model() for pr in out.profiles})
    # exchange snapshots, then one full sweep of every owned partition
    for processor in processors:
        for other in processors:
            if other is not processor:
                for p in other.population.local:
                    processor.population.apply_snapshot(other.population.snapshot(p))
    for w, processor in enumerate(processors):
        for p in sorted(processor.population.local):
            out = processor.sweep_whole(p, lambda k, s=stores[w]: s[k])
            stores[w].update(out.states)
            profiles.update({pr.customer_id: pr.model() for pr in out.profiles})
    assert streamed(profiles.values()) == batch_rfm(events, SETTINGS)
    clocks = {processor.watermark_ms for processor in processors}
    assert len(clocks) == 1  # every worker ends on the same event-time clock


def test_snapshots_round_trip_and_owned_partitions_win():
    view = PopulationView(SETTINGS.rfm())
    state = CustomerState()
    state.orders.orders, state.orders.revenue_cents, state.orders.last_purchase_ms = 2, 5000, 1_700_000_000_000
    state.last_event_ms = state.orders.last_purchase_ms
    view.add_state(3, b"A", state)
    other = PopulationView(SETTINGS.rfm())
    other.apply_snapshot(view.snapshot(3))
    assert other.remote[3].population.counts() == view.local[3].population.counts()
    assert other.clock() == view.clock() == 1_700_000_000_000
    view.apply_snapshot(other.remote and view.snapshot(3))  # own snapshot echoed back: the live part is used
    assert view.partition_parts() == [view.local[3].population]
    assert view.parts() == [view.sums.live] and view.sums.live.counts() == view.local[3].population.counts()
    assert not view.sums.published.members


def test_sweep_goes_round_and_refreshes_only_when_the_clock_moved():
    view = PopulationView(SETTINGS.rfm())
    for n in range(5):
        view.add_state(0, f"C{n}".encode(), CustomerState())
    first = view.sweep_slice(0, 2, now_ms=10)
    assert first.keys == [b"C0", b"C1"] and first.refresh_all
    assert view.sweep_slice(0, 2, 10).keys == [b"C2", b"C3"]
    assert view.sweep_slice(0, 2, 10).keys == [b"C4"]
    second_round = view.sweep_slice(0, 5, 10)
    assert second_round.keys == [b"C0", b"C1", b"C2", b"C3", b"C4"] and not second_round.refresh_all
    assert view.sweep_slice(0, 5, 11).refresh_all  # the clock moved: render again
    assert not view.sweep_slice(0, 5, 11).refresh_all
    view.sweep_slice(0, 2, 11)  # mid-round when Redis comes back after an outage
    view.refresh_all()
    again = view.sweep_slice(0, 5, 11)
    assert again.keys == [b"C0", b"C1", b"C2", b"C3", b"C4"] and again.refresh_all


def test_live_traffic_re_renders_every_profile_at_most_once_per_refresh_interval():
    """The clock moves with every batch in live operation: whole-population re-renders are rationed,
    and once the clock stops, the next round still brings every profile to the final clock."""
    view = PopulationView(SETTINGS.rfm(), refresh_min_ms=1000)
    for i in range(3):
        view.partition(0).members.append(f"C{i}".encode())
    clocks_and_refresh = [(0, True), (10, False), (500, False), (1000, True), (1200, False), (1300, False)]
    for clock, refresh in clocks_and_refresh:
        assert view.sweep_slice(0, None, clock).refresh_all == refresh, clock
    # traffic stops at 1300: the round after the one that saw 1300 re-renders, then no more
    assert view.sweep_slice(0, None, 1300).refresh_all
    assert not view.sweep_slice(0, None, 1300).refresh_all


def test_once_the_clock_stopped_a_moving_population_gap_brings_another_round():
    """After traffic stops, partitions read behind the others (or another worker's late snapshot) still move
    the population's purchase gap without moving the clock: every profile must end measured against the
    final gap, so a round re-renders whenever the gap moved since the last such round, and then stops."""
    view = PopulationView(SETTINGS.rfm(), refresh_min_ms=1000)
    for i in range(3):
        view.partition(0).members.append(f"C{i}".encode())
    assert view.sweep_slice(0, None, 1300, 71.5).refresh_all
    assert not view.sweep_slice(0, None, 1300, 71.5).refresh_all
    assert view.sweep_slice(0, None, 1300, 71.9).refresh_all  # the clock stood still, the gap moved
    assert not view.sweep_slice(0, None, 1300, 71.9).refresh_all
    assert view.sweep_slice(0, None, 1300, 72.21).refresh_all
    assert not view.sweep_slice(0, None, 1300, 72.21).refresh_all
    # while the clock moves, a moving gap does not lift the ration of one re-render per refresh interval
    assert not view.sweep_slice(0, None, 1400, 72.3).refresh_all
    assert not view.sweep_slice(0, None, 1500, 72.4).refresh_all
    assert view.sweep_slice(0, None, 2300, 72.5).refresh_all


def test_a_bulk_rebuild_equals_adding_each_customer():
    """``add_states`` (the rebuild after a rebalance) fills the indexes from counts and heapifies once; every
    derived structure must equal what one ``add_state`` per customer builds."""
    from pulse.simulate import generate_events

    settings = Settings(_env_file=None)
    topics = settings.input_topics()
    events = generate_events(300, 365, seed=11)
    records = [(topics[kind], e["customer_id"].encode(), orjson.dumps(e)) for kind, e in events]
    states = list(score_records(records, settings).states.items())
    for n, (_, state) in enumerate(states):
        state.partition = zlib.crc32(str(n).encode()) % 4
    config = settings.scoring()
    one_by_one, bulk = (PopulationView(config.rfm, config.indicators) for _ in range(2))
    for key, state in states:
        if state.partition != 3:  # partition 3 is not owned: skipped by both
            one_by_one.add_state(state.partition, key, state)
    bulk.add_states({0, 1, 2}, states)

    assert set(bulk.local) == set(one_by_one.local) == {0, 1, 2}
    clock = max(s.last_event_ms for _, s in states)
    for p in (0, 1, 2):
        a, b = one_by_one.local[p], bulk.local[p]
        assert b.members == a.members and b.gaps == a.gaps and b.watermark_ms == a.watermark_ms
        assert +b.tallies == +a.tallies and b.indicators == a.indicators and b.due == a.due
        for index in ("r", "f", "m", "v"):
            x, y = getattr(a.population, index), getattr(b.population, index)
            if index in ("m", "v"):  # exact values per bucket, then the buckets' tree
                assert y.values == x.values, index
                x, y = x.coarse, y.coarse
            assert (y.total, y._tree, y._counts) == (x.total, x._tree, x._counts), index
        assert b.due.pop_due(clock + 400 * 86_400_000, 10**6) == a.due.pop_due(clock + 400 * 86_400_000, 10**6)
    # adding to a partition that already has customers takes the incremental path and agrees too
    more = [(k + b"x", s) for k, s in states if s.partition == 0]
    for key, state in more:
        one_by_one.add_state(0, key, state)
    bulk.add_states({0}, more)
    for index in ("r", "f", "m", "v"):
        x, y = getattr(one_by_one.local[0].population, index), getattr(bulk.local[0].population, index)
        if index in ("m", "v"):
            assert y.values == x.values, index
            x, y = x.coarse, y.coarse
        assert (y.total, y._tree, y._counts) == (x.total, x._tree, x._counts), index
