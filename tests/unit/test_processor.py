from array import array
from decimal import Decimal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse_config.settings import Settings
from scoring.customer import CustomerState
from scoring.orders import OrderState
from streams.codec import decode_state, encode_state
from streams.processor import BatchProcessor, Incoming

SETTINGS = Settings(_env_file=None, fx_rates={"EUR": Decimal("1.10")})


def order(eid: str, cid: str, amount: float, currency: str = "USD", **extra) -> bytes:
    return orjson.dumps(
        {
            "event_id": eid,
            "customer_id": cid,
            "occurred_at": "2025-05-01T00:00:00Z",
            "order_id": "O" + eid,
            "amount": amount,
            "currency": currency,
            "status": "completed",
            **extra,
        }
    )


def run(records: list[Incoming], store: dict[bytes, CustomerState] | None = None):
    processor = BatchProcessor(SETTINGS.processor())
    if store is None:
        store = {}
    else:  # a new worker: recovers the population of its partition from the table first
        processor.rebuild({0}, store.items())
    out = processor.process(records, lambda key: store.get(key, CustomerState()))
    store.update(out.states)
    return out, store


def rec(offset: int, key: bytes | None, value: bytes | None, topic: str = "orders") -> Incoming:
    return Incoming(topic, 0, offset, key, value)


def test_scores_converts_currency_and_builds_profiles():
    out, store = run([rec(0, b"A", order("1", "A", 10)), rec(1, b"A", order("2", "A", 10, "EUR"))])
    assert store[b"A"].orders.revenue_cents == 2100
    [profile] = [p.model() for p in out.profiles]
    assert profile.customer_id == "A" and profile.revenue == Decimal("21.00") and profile.orders == 2
    assert out.counts == {("order", "scored"): 2}


def test_bad_events_become_dead_letters_with_reason_and_payload():
    out, store = run(
        [
            rec(0, b"A", b"{oops"),
            rec(1, b"A", order("1", "A", -1)),
            rec(2, b"A", order("2", "A", 1, "JPY")),
            rec(3, None, None),
            rec(4, b"A", b"\xff" * 10),
            rec(5, b"A", order("3", "A", 5)),
        ]
    )
    letters = [orjson.loads(r.record) for r in out.rejected]
    assert [letter["reason"] for letter in letters] == [
        "malformed_json",
        "out_of_range",
        "unsupported_currency",
        "malformed_json",
        "malformed_json",
    ]
    assert letters[0]["payload"] == "{oops" and letters[0]["offset"] == 0 and letters[0]["source_topic"] == "orders"
    assert letters[4]["payload_encoding"] == "base64"
    assert "JPY" in letters[2]["detail"]
    assert store[b"A"].orders.revenue_cents == 500  # the valid one is not lost
    assert out.counts == {("order", "dead_lettered"): 5, ("order", "scored"): 1}


def test_a_rejected_record_below_what_was_decided_is_a_duplicate_not_a_second_dead_letter():
    """Read again after an offsets reset (or a commit lost in a crash), a record below the changelog's input
    position had its dead letter when first read: it is counted a duplicate. At the position, and after it,
    records are new and rejected as ever; other topics and partitions keep their own positions."""
    processor = BatchProcessor(SETTINGS.processor())
    processor.decided = {("orders", 0): 2, ("surveys", 0): 9, ("orders", 2): 5}
    store: dict[bytes, CustomerState] = {}
    records = [rec(0, b"A", b"{oops"), rec(1, b"A", order("1", "A", -1)), rec(2, b"A", b"{oops"), rec(3, b"A", b"[")]
    records.append(Incoming("orders", 1, 0, b"A", b"{oops"))
    # keyed by something else than the customer: re-published when first read, not again
    records += [
        Incoming("orders", 2, 4, b"other", order("2", "B", 5)),
        Incoming("orders", 2, 5, b"x", order("3", "B", 5)),
    ]
    out = processor.process(records, lambda key: store.get(key, CustomerState()))
    letters = [orjson.loads(r.record) for r in out.rejected]
    assert [(letter["partition"], letter["offset"]) for letter in letters] == [(0, 2), (0, 3), (1, 0)]
    assert out.rerouted_origins == [(2, 5)]
    assert out.counts == {("order", "duplicate"): 3, ("order", "dead_lettered"): 3, ("order", "rerouted"): 1}


def test_mis_keyed_valid_event_is_rerouted_not_scored():
    out, store = run([rec(0, None, order("1", "A", 5)), rec(1, b"B", order("2", "A", 5))])
    assert [(t, k) for t, k, _ in out.rerouted] == [("orders", b"A"), ("orders", b"A")]
    assert store == {} and out.counts == {("order", "rerouted"): 2}


def test_redelivered_batch_changes_nothing():
    batch = [rec(0, b"A", order("1", "A", 5)), rec(1, b"A", order("2", "A", 7))]
    _, store = run(batch)
    before = encode_state(store[b"A"])
    out, store = run(batch, store)
    assert encode_state(store[b"A"]) == before
    assert out.counts == {("order", "duplicate"): 2}


def test_a_replay_of_duplicates_only_still_refreshes_profiles():
    """A worker that crashed after the changelog write but before Redis re-reads the batch:
    every event is a duplicate, and the profiles must still be produced."""
    batch = [rec(0, b"A", order("1", "A", 5))]
    _, store = run(batch)
    out, _ = run(batch, store)  # a fresh processor (new worker), same recovered state
    assert out.counts == {("order", "duplicate"): 1}
    assert [p.customer_id for p in out.profiles] == ["A"] and out.profiles[0].model().revenue == Decimal("5.00")


def test_other_kinds_are_validated_and_counted():
    survey = orjson.dumps({"event_id": "s", "customer_id": "A", "occurred_at": "2025-05-02T00:00:00Z", "nps": 3})
    out, store = run([rec(0, b"A", survey, "surveys"), rec(1, b"A", b"{}", "complaints")])
    assert store[b"A"].events == {"survey": 1}
    assert out.counts == {("survey", "scored"): 1, ("complaint", "dead_lettered"): 1}


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.integers(-(10**6), 10**6), st.integers(-(10**12), 10**12), max_size=60),
    st.integers(0, 10**6),
    st.integers(0, 10**12),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=32),
)
def test_state_codec_round_trips(buckets, orders, revenue, ids):
    state = CustomerState(
        orders=OrderState(
            orders=orders, revenue_cents=revenue, first_purchase_ms=1, last_purchase_ms=2, revenue_buckets=buckets
        ),
        last_event_ms=5,
        events={"order": orders},
        source_offsets={"order": 3},
        recent_ids=array("q", ids),
    )
    assert decode_state(encode_state(state)) == state


def test_a_tick_sweeps_the_share_of_a_partition_that_makes_a_round_take_the_configured_time():
    """PULSE_SWEEP_ROUND_SECONDS paces the sweep by the partition's size, capped per tick; 0 sweeps the cap."""

    def limit(members: int, **overrides) -> int:
        processor = BatchProcessor(Settings(_env_file=None, sweep_tick_seconds=1.0, **overrides).processor())
        processor.population.partition(0).members.extend(f"C{i}".encode() for i in range(members))
        return processor._sweep_limit(0)

    assert limit(1_250, sweep_round_seconds=300) == 5  # a small partition: a few customers a second
    assert limit(250_000, sweep_round_seconds=300) == 834  # ceil(250,000 / 300)
    assert limit(250_000, sweep_round_seconds=60, sweep_customers_per_tick=2000) == 2000  # capped
    assert limit(1_250, sweep_round_seconds=0, sweep_customers_per_tick=2000) == 2000
    assert limit(0, sweep_round_seconds=300) == 1
