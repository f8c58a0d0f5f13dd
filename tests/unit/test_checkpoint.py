"""The checkpoint's order and its transactional outbox (streams.checkpoint), with fakes of the table, the
producer and the Redis sink (the real ones are covered end to end in tests/e2e and tests/faults).

The property that matters: a VIP change or alert id is published with one content however often its batch
is replayed after a crash, and the state's count never falls behind an id already published.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from pulse_config.settings import Settings
from streams.checkpoint import Checkpoint
from streams.codec import decode_state
from streams.partitioning import partitioner
from streams.processor import BatchOutcome, BatchProcessor
from streams.publish import BatchPublisher

SETTINGS = Settings(_env_file=None)
START = datetime(2025, 1, 1, tzinfo=UTC)


#: one event loop for every checkpoint, as in a worker (a checkpoint hands futures on to the next one)
LOOP = asyncio.new_event_loop()


def run(coro: Any) -> Any:
    return LOOP.run_until_complete(coro)


class Crash(Exception):
    """Stands for kill -9 at that point: nothing after it happens."""


def done(value: Any) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


class Broker:
    """Acknowledged records per topic, the changelog among them, and one log of every step in order."""

    def __init__(self, crash_at: str | None = None) -> None:
        self.log: list[tuple[str, Any]] = []
        self.topics: dict[str, list[tuple[bytes | None, bytes | None]]] = {}
        #: the step that crashes: "publish" (before any VIP change or alert is sent) or "clear" (the second
        #: changelog write, after they were acknowledged)
        self.crash_at = crash_at
        self.changelog_writes = 0
        #: (topic, key, headers) of each record sent
        self.headers: list[tuple[str, bytes | None, list | None]] = []

    def ack(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self.topics.setdefault(topic, []).append((key, value))

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None) -> asyncio.Future:
        if self.crash_at == "publish" and topic in (SETTINGS.topic_vip_changes, SETTINGS.topic_retention_alerts):
            raise Crash(topic)
        self.log.append(("send", topic))
        self.ack(topic, key, value)
        self.headers.append((topic, key, headers))
        return done(SimpleNamespace(partition=0))

    def recovered(self) -> dict[bytes, bytes]:
        """What a restarted worker's table holds: the last acknowledged changelog record of each key."""
        return {key: value for key, value in self.topics.get("changelog", []) if key != b"__end__"}


class Table:
    def __init__(self, broker: Broker, data: dict[bytes, bytes] | None = None) -> None:
        self.broker = broker
        self.data = dict(data or {})
        #: the input positions and logs of the last end marker per partition
        self.positions: dict[int, dict[str, int]] = {}
        self.logs: dict[int, dict[str, Any]] = {}
        #: partitions with an owner marker since the last rebalance (a state write writes one first), and the
        #: partitions epoch_for was asked for, in order
        self.epochs: set[int] = set()
        self.claimed: list[int] = []
        #: the generation fence (streams.tables.CustomerStateTable.fence); None: not in a group
        self.fence: Any = None

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def has_epoch(self, partition: int) -> bool:
        return partition in self.epochs

    async def epoch_for(self, partition: int) -> tuple[int, int]:
        self.broker.log.append(("owner marker", partition))
        self.claimed.append(partition)
        self.epochs.add(partition)
        return 1, 0

    async def write_states(self, items) -> list[asyncio.Future]:
        self.broker.changelog_writes += 1
        if self.broker.crash_at == "clear" and self.broker.changelog_writes == 2:
            raise Crash("changelog")
        futures = []
        for key, value, event in items:
            self.epochs.add(event.message.partition)
            self.data[key] = value
            self.broker.log.append(("changelog", key))
            self.broker.ack("changelog", key, value)
            futures.append(done(SimpleNamespace(partition=event.message.partition)))
        return futures

    async def send_end_markers(self, partitions: set[int], positions=None, logs=None) -> list[asyncio.Future]:
        self.broker.log.append(("markers", sorted(partitions)))
        for p in partitions:
            self.broker.ack("changelog", b"__end__", None)
            if positions is not None and p in positions:
                self.positions[p] = dict(positions[p])
                self.logs[p] = dict((logs or {}).get(p, {}))
        return [done(SimpleNamespace(partition=p)) for p in partitions]

    def changelog_positions(self, partition: int) -> dict[str, int]:
        return self.positions.get(partition, {})

    def changelog_logs(self, partition: int) -> dict[str, Any]:
        return self.logs.get(partition, {})

    def persisted(self, results) -> None:
        self.broker.log.append(("persisted", len(list(results))))

    async def check_foreign(self, owned: set[int]) -> None:
        self.broker.log.append(("check foreign", sorted(owned)))

    async def repair(self, owned: set[int]) -> int:
        return 0


class Sink:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.pending = 0

    def submit(self, profiles) -> None:
        self.broker.log.append(("redis", len(profiles)))

    async def flush(self) -> bool:
        return True


def order(offset: int, customer: str, day: int, amount: int) -> SimpleNamespace:
    value = orjson.dumps(
        {
            "event_id": f"e{customer}-{offset}",
            "customer_id": customer,
            "occurred_at": (START + timedelta(days=day)).isoformat(),
            "order_id": f"o{customer}-{offset}",
            "amount": amount,
            "currency": "USD",
            "status": "completed",
        }
    )
    message = SimpleNamespace(
        topic=SETTINGS.topic_orders, partition=0, offset=offset, key=customer.encode(), value=value, headers=None
    )
    return SimpleNamespace(message=message)


def first_batch() -> list[SimpleNamespace]:
    """A big spender B (VIP: top 5 % of 20) and a customer A silent for 200 days (a medium-risk alert)."""
    events = [order(0, "A", 0, 50)]
    events += [order(i, f"C{i:02d}", 200, 40 + i) for i in range(1, 19)]
    events.append(order(19, "B", 200, 5_000))
    return events


def later_batch() -> list[SimpleNamespace]:
    """100 days later, 30 new customers who all out-spend B: had the first batch been decided again here, B
    would not become VIP and A's alert would say 300 days."""
    return [order(20 + i, f"D{i:02d}", 300, 9_000 + i) for i in range(30)]


class BatchProducer:
    """aiokafka's record-batch calls on ``broker``: how the worker sends a batch's records
    (streams.publish.BatchPublisher)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> Any:
        records: list[tuple[bytes | None, bytes, Any]] = []

        def append(key: bytes | None, value: bytes, timestamp: None, headers: Any) -> int:
            records.append((key, value, headers))
            return 1

        return SimpleNamespace(records=records, append=append)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future:
        for key, value, headers in batch.records:
            await self.broker.send(topic, key, value, headers)
        return done(SimpleNamespace(partition=partition))


def publish_on(broker: Broker) -> Any:
    """The worker's publisher (streams.publish.BatchPublisher, record batches) over ``broker``'s records."""
    return BatchPublisher(lambda: BatchProducer(broker)).publish


def worker(broker: Broker, data: dict[bytes, bytes] | None = None) -> tuple[Checkpoint, Table]:
    """A checkpoint on ``broker`` (its records go as record batches, as the worker's do)."""
    table = Table(broker, data)
    return checkpoint_on(broker, table=table), table


#: the wall clock the random-history tests score under
HISTORY_WALL_CLOCK = lambda: datetime(2026, 6, 2, tzinfo=UTC).timestamp()  # noqa: E731


def checkpoint_on(
    broker: Broker,
    settings: Settings = SETTINGS,
    table: Any = None,
    sink: Any = None,
    owned: frozenset[int] = frozenset({0}),
    **options: Any,
) -> Checkpoint:
    """A checkpoint writing to ``broker`` (a fresh ``Table`` and ``Sink`` of it unless given), owning ``owned``;
    ``options``: Checkpoint's keyword arguments (wall_clock, input_positions, applied_positions ...)."""
    return Checkpoint(
        settings,
        BatchProcessor(settings.processor()),
        Table(broker) if table is None else table,
        Sink(broker) if sink is None else sink,
        publish_on(broker),
        lambda: set(owned),
        **options,
    )


def test_profiles_of_a_partition_without_an_owner_marker_claim_it_before_the_sink_gets_them():
    """A sweep round or a due check after a rebalance renders profiles of partitions no state was written to yet:
    the checkpoint writes the owner marker of each such partition first, so the sink fences their Redis writes
    with this worker's epoch (streams.sinks.redis_profiles); partitions with a marker, or not owned, are left."""
    broker, partition_of = Broker(), partitioner(4)
    table = Table(broker)
    checkpoint = Checkpoint(
        SETTINGS,
        BatchProcessor(SETTINGS.processor(), partition_of),
        table,
        Sink(broker),
        publish_on(broker),
        lambda: {0, 1, 2},
    )
    customer = {partition_of(c.encode()): c for c in (f"C{i:03d}" for i in range(200))}
    table.epochs = {1}  # partition 1 wrote a state since the rebalance
    outcome = BatchOutcome(
        profiles=[SimpleNamespace(customer_id=customer[p]) for p in (0, 1, 3)],
        to_render=[(customer[2].encode(), None, 0, None, None)],
    )
    run(checkpoint._claim_profile_partitions(outcome))
    assert table.claimed == [0, 2]
    run(checkpoint._claim_profile_partitions(outcome))
    assert table.claimed == [0, 2], "once per partition"


def records(broker: Broker, topic: str, field: str) -> list[tuple[str, bytes]]:
    return [(orjson.loads(value)[field], value) for _, value in broker.topics.get(topic, [])]


def vip_records(broker: Broker) -> list[tuple[str, bytes]]:
    return records(broker, SETTINGS.topic_vip_changes, "change_id")


def alert_records(broker: Broker) -> list[tuple[str, bytes]]:
    return records(broker, SETTINGS.topic_retention_alerts, "alert_id")


def test_states_with_their_decisions_pending_then_the_decisions_then_the_cleared_states():
    broker = Broker()
    checkpoint, table = worker(broker)
    run(checkpoint(first_batch()))

    steps = [step for step, _ in broker.log]
    first_send = steps.index("send")
    # the offsets between this worker's writes are checked for another owner's before anything is published
    assert steps[:first_send] == ["changelog"] * 20 + ["markers", "check foreign"]
    assert steps[first_send : first_send + 2] == ["send", "send"]
    # the cleared states, acknowledged (their end markers come with the next checkpoint's)
    assert steps[first_send + 2 :] == ["changelog", "changelog", "persisted", "redis"]
    assert broker.log[-2] == ("persisted", 21)  # the clearing does not move the persisted offsets
    assert [topic for step, topic in broker.log if step == "send"] == [
        SETTINGS.topic_retention_alerts,  # A
        SETTINGS.topic_vip_changes,  # B
    ]

    # the first changelog record of A and B carries exactly the bytes published afterwards
    (vip_id, vip_bytes), (alert_id, alert_bytes) = vip_records(broker)[0], alert_records(broker)[0]
    assert (vip_id, alert_id) == ("B:vip:1", "A:churn:1")
    first = {}
    for key, value in broker.topics["changelog"]:
        first.setdefault(key, value)
    assert decode_state(first[b"B"]).pending_vip_changes == [vip_bytes]
    assert decode_state(first[b"A"]).pending_alerts == [alert_bytes]
    # and the table ends with the outbox empty, the counts kept
    a, b = decode_state(table.data[b"A"]), decode_state(table.data[b"B"])
    assert a.pending_alerts == [] and b.pending_vip_changes == []
    assert a.churn.alerts == 1 and b.vip and b.vip_changes == 1


def test_a_batch_without_decisions_writes_the_changelog_once():
    broker = Broker()
    checkpoint, _ = worker(broker)
    run(checkpoint([order(0, "A", 0, 50), order(1, "B", 0, 60)]))
    assert [step for step, _ in broker.log] == ["changelog", "changelog", "markers", "persisted", "redis"]


def test_a_mis_keyed_or_misplaced_retention_action_is_re_published_with_where_it_was_read():
    """A retention action keyed by something else than its customer, or produced into another partition than
    murmur2 gives its customer (a CRM integration on librdkafka's CRC32 default), is re-published under its
    customer id, with the ``pulse-origin`` header its copy is known by, beside the batch's other records. Until
    session 18 the action's copy had no origin: the checkpoint's pairing of copies with origins raised, on every
    retry of the batch, a crash loop of the worker over one record."""
    from streams.partitioning import origin_of

    broker = Broker()
    actions = SETTINGS.topic_retention_actions

    def action(offset: int, key: bytes, partition: int) -> SimpleNamespace:
        value = orjson.dumps(
            {
                "event_id": f"act-{offset}",
                "customer_id": "A",
                "occurred_at": (START + timedelta(days=1)).isoformat(),
                "alert_id": "A:churn:1",
                "action": "acknowledged",
            }
        )
        message = SimpleNamespace(topic=actions, partition=partition, offset=offset, key=key, value=value, headers=None)
        return SimpleNamespace(message=message)

    # customer A's records belong in partition 0
    processor = BatchProcessor(SETTINGS.processor(), partition_of=lambda key: 0)
    checkpoint = Checkpoint(SETTINGS, processor, Table(broker), Sink(broker), publish_on(broker), lambda: {0, 1})
    run(checkpoint([order(0, "A", 0, 50), action(7, b"A:churn:1", 0), action(8, b"A", 1), order(1, "B", 0, 60)]))

    copies = [(key, origin_of(headers)) for topic, key, headers in broker.headers if topic == actions]
    assert copies == [(b"A", (0, 7)), (b"A", (1, 8))]
    assert {key for key, _ in broker.topics["changelog"]} >= {b"A", b"B"}  # the batch's events scored


def malformed(offset: int) -> SimpleNamespace:
    message = SimpleNamespace(
        topic=SETTINGS.topic_orders, partition=0, offset=offset, key=b"X", value=b"{oops", headers=None
    )
    return SimpleNamespace(message=message)


def test_an_offsets_reset_dead_letters_nothing_twice_even_across_a_new_owner_half_way():
    """The group's offsets go back to 0 (an operator's reset, or offsets the broker expired). The next worker
    reads everything again: a rejected record below the changelog's input position was dead-lettered when
    first read, and is not again. The end markers of the re-read keep the old position instead of falling with
    it, so a worker that takes the partition half way (a crash, a rebalance) knows that too."""
    broker = Broker()
    first, table = worker(broker)
    run(first([order(0, "A", 0, 50), malformed(1), order(2, "B", 0, 60)]))
    dead = SETTINGS.topic_dead_letters
    assert len(broker.topics[dead]) == 1
    assert table.positions[0][SETTINGS.topic_orders] == 3

    def next_owner() -> tuple[Checkpoint, Table]:
        taken = Table(broker, table.data)
        taken.positions = {p: dict(where) for p, where in table.positions.items()}
        taken.logs = {p: dict(logs) for p, logs in table.logs.items()}
        return checkpoint_on(broker, table=taken), taken

    # reset: the second worker reads offset 0 again, and stops (killed before its commit)
    second, table = next_owner()
    run(second([order(0, "A", 0, 50)]))
    assert table.positions[0][SETTINGS.topic_orders] == 3  # not 1
    # the third reads from 0 again: offsets 1 and 2 were decided, 3 is new
    third, table = next_owner()
    run(third([order(0, "A", 0, 50), malformed(1), order(2, "B", 0, 60), malformed(3)]))
    assert [orjson.loads(value)["offset"] for _, value in broker.topics[dead]] == [1, 3]
    assert table.positions[0][SETTINGS.topic_orders] == 4


@pytest.mark.parametrize("crash_at", ["publish", "clear"])
def test_a_replay_after_a_crash_publishes_each_id_with_one_content(crash_at: str):
    """kill -9 before the decisions were sent, or after they were acknowledged but before the states were
    cleared; the restarted worker reads the first batch again together with a later one (a replay's
    batches need not be the first run's), at a clock 100 days on and a population where B is no longer VIP."""
    broker = Broker(crash_at)
    checkpoint, _ = worker(broker)
    with pytest.raises(Crash):
        run(checkpoint(first_batch()))
    published_before = vip_records(broker) + alert_records(broker)
    assert len(published_before) == (0 if crash_at == "publish" else 2)
    pending = decode_state(broker.recovered()[b"A"]).pending_alerts
    assert len(pending) == 1  # the decision is durable with the state, before it is published

    broker.crash_at = None
    restarted, table = worker(broker, broker.recovered())
    run(restarted(first_batch() + later_batch()))

    vips, alerts = vip_records(broker), alert_records(broker)
    for published in (vips, alerts):
        contents: dict[str, set[bytes]] = {}
        for record_id, value in published:
            contents.setdefault(record_id, set()).add(value)
        assert all(len(c) == 1 for c in contents.values()), contents
    # A's alert is the one decided at day 200, not a new decision at day 300
    [a_alert] = {value for record_id, value in alerts if record_id == "A:churn:1"}
    assert a_alert == pending[0]
    assert orjson.loads(a_alert)["raised_at"].startswith((START + timedelta(days=200)).date().isoformat())
    # B entered at the first batch; the replay's population makes it leave, as a new id
    assert [(i, orjson.loads(v)["vip"]) for i, v in dict(vips).items() if i.startswith("B:")] == [
        ("B:vip:1", True),
        ("B:vip:2", False),
    ]
    # the state agrees with the last record, and counts every id published
    a, b = decode_state(table.data[b"A"]), decode_state(table.data[b"B"])
    assert b.vip is False and b.vip_changes == 2 and a.churn.alerts == 1
    assert a.pending_alerts == [] and b.pending_vip_changes == []
    for key, value in broker.recovered().items():
        state = decode_state(value)
        assert not state.pending_alerts and not state.pending_vip_changes, key


def test_recovered_outbox_waits_for_a_record_of_its_partition():
    """A recovered state is re-published and cleared with one of its partition's records (the changelog and
    RocksDB file a state under the partition of an event of the batch)."""
    broker = Broker("publish")
    checkpoint, _ = worker(broker)
    with pytest.raises(Crash):
        run(checkpoint(first_batch()))
    broker.crash_at = None
    restarted, _ = worker(broker, broker.recovered())
    other = order(0, "X", 200, 10)
    other.message.partition = 1
    restarted.owned_partitions = lambda: {0, 1}
    run(restarted([other]))
    assert vip_records(broker) == [] and set(restarted.recovered) == {b"A", b"B"}
    run(restarted([order(40, "Y", 200, 10)]))  # a record of partition 0 (a sweep tick would do)
    assert [i for i, _ in vip_records(broker)] == ["B:vip:1"]
    assert [i for i, _ in alert_records(broker)] == ["A:churn:1"]
    assert restarted.recovered == {}


def history_events(seed: int) -> list[SimpleNamespace]:
    """A year of all four kinds for 80 customers, over two partitions, as consumed records."""
    from pulse.simulate import generate_events

    topics = SETTINGS.input_topics()
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for kind, event in generate_events(customers=80, days=365, seed=seed, end=datetime(2026, 6, 1, tzinfo=UTC)):
        key = event["customer_id"].encode()
        topic, partition = topics[kind], key[-1] % 2
        offsets[(topic, partition)] = offset = offsets.get((topic, partition), -1) + 1
        message = SimpleNamespace(
            topic=topic, partition=partition, offset=offset, key=key, value=orjson.dumps(event), headers=None
        )
        out.append(SimpleNamespace(message=message))
    return out


def tick(partition: int) -> SimpleNamespace:
    return SimpleNamespace(
        message=SimpleNamespace(
            topic=SETTINGS.topic_ticks(), partition=partition, offset=0, key=None, value=b"", headers=None
        )
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_crashes_at_random_points_and_replays_in_other_batches_publish_each_id_with_one_content(seed: int):
    """kill -9 before publishing, before clearing, or after a checkpoint whose offsets were not committed yet,
    at random; each restart recovers the table from the acknowledged changelog and reads again from the last
    commit in batches of another size (so at other clocks and populations)."""
    import random

    rng = random.Random(seed)
    records = history_events(seed)
    broker = Broker()

    def restart() -> Checkpoint:
        checkpoint, _ = worker(broker, broker.recovered())
        checkpoint.owned_partitions = lambda: {0, 1}
        return checkpoint

    checkpoint, position, committed, crashes = restart(), 0, 0, 0
    for _ in range(2000):
        if position >= len(records):
            break
        batch = records[position : position + rng.randint(3, 40)]
        crash = rng.choice(["publish", "clear", "after"]) if rng.random() < 0.3 else None
        broker.crash_at, broker.changelog_writes = crash, 0
        try:
            run(checkpoint(batch))
        except Crash:
            crashes += 1
            checkpoint, position = restart(), committed
            continue
        position += len(batch)
        if crash == "after":
            crashes += 1
            checkpoint, position = restart(), committed
        elif rng.random() < 0.5:
            committed = position
    assert position >= len(records) and crashes >= 10
    broker.crash_at = None
    run(checkpoint([tick(0), tick(1)]))  # the sweep ticks bring the last recovered outbox out

    states = {key.decode(): decode_state(value) for key, value in broker.recovered().items()}
    for published, count_of in (
        (vip_records(broker), lambda s: s.vip_changes),
        (alert_records(broker), lambda s: s.churn.alerts),
    ):
        contents: dict[str, set[bytes]] = {}
        for record_id, value in published:
            contents.setdefault(record_id, set()).add(value)
        assert all(len(c) == 1 for c in contents.values()), {i: len(c) for i, c in contents.items() if len(c) > 1}
        for customer, state in states.items():
            ids = {i for i in contents if i.rsplit(":", 2)[0] == customer}
            assert len(ids) == count_of(state), (customer, sorted(ids), count_of(state))
    assert alert_records(broker) and vip_records(broker)
    last_vip: dict[str, bool] = {}
    for _, value in vip_records(broker):
        change = orjson.loads(value)
        last_vip[change["customer_id"]] = change["vip"]
    assert all(last_vip.get(c, False) == s.vip for c, s in states.items())
    assert not any(s.pending_alerts or s.pending_vip_changes for s in states.values())


class CopyingTable(Table):
    """A table whose reads return new bytes objects, as RocksDB's do (the state cache then compares contents)."""

    def get(self, key: bytes) -> bytes | None:
        value = self.data.get(key)
        return None if value is None else bytes(bytearray(value))


def scored_history(
    seed: int, cache: int, table_class: type = Table, fail: frozenset[str] = frozenset(), ticks: bool = True
) -> Any:
    """The history of ``seed`` scored by one checkpoint in batches of random size (each with the sweep ticks of
    both partitions, unless not ``ticks``), with ``cache`` decoded states kept between batches; the broker and
    the checkpoint."""
    import random

    settings = Settings(_env_file=None, state_cache_customers=cache, test_fail_event_ids=sorted(fail))
    broker = Broker()
    table = table_class(broker)
    checkpoint = checkpoint_on(broker, settings, table, owned=frozenset({0, 1}), wall_clock=HISTORY_WALL_CLOCK)
    rng = random.Random(seed)
    records, position = history_events(seed), 0
    while position < len(records):
        size = rng.randint(20, 300)
        run(checkpoint(records[position : position + size] + ([tick(0), tick(1)] if ticks else [])))
        position += size
        # what the cache would hand out is what decoding the table's bytes gives
        for key, (raw, kept) in checkpoint.states.entries.items():
            assert table.data[key] == raw and decode_state(raw) == kept, key
    return broker, checkpoint


def outputs(broker: Broker) -> dict[str, list[tuple[bytes | None, bytes | None]]]:
    """Every record the broker acknowledged but the dead letters' (their rejected_at is the wall clock)."""
    return {topic: records for topic, records in broker.topics.items() if topic != SETTINGS.topic_dead_letters}


@pytest.mark.parametrize("table_class", [Table, CopyingTable])
def test_states_kept_decoded_between_batches_write_exactly_what_decoding_them_would(table_class: type):
    """streams.state_cache: the same changelog records, VIP changes and alerts, in the same order, with the
    cache as without it; and most loads after the first batches are served from it."""
    without, _ = scored_history(4, 0, table_class)
    with_cache, checkpoint = scored_history(4, 10_000, table_class)
    assert outputs(with_cache) == outputs(without)
    assert checkpoint.states.hits > checkpoint.states.misses > 0


def test_a_batch_that_raises_half_way_is_scored_again_from_the_table_not_from_half_scored_states():
    """A poison event makes its batch raise after other customers' events of it were applied to the states it
    loaded; streams.isolation rebuilds the partitions (which drops the cache) and re-processes the batch record
    by record from the table's bytes: had the half-scored states stayed cached, the poison event's effect would
    stay in its customer's state although it is dead-lettered."""
    events = history_events(5)
    # past the middle, an event of a customer scored before (its state kept after a previous batch) and after
    seen = {e.message.key for e in events[: len(events) // 2]}
    later = [e for e in events[len(events) // 2 :] if e.message.key in seen]
    victim = next(e for i, e in enumerate(later) if any(f.message.key == e.message.key for f in later[i + 50 :]))
    poison = frozenset({orjson.loads(victim.message.value)["event_id"]})
    without, _ = scored_history(5, 0, fail=poison, ticks=False)  # (a sweep would write the poison's customer)
    with_cache, checkpoint = scored_history(5, 10_000, fail=poison, ticks=False)
    assert outputs(with_cache) == outputs(without)
    assert checkpoint.states.hits > 0
    letters = [orjson.loads(v)["reason"] for _, v in with_cache.topics[SETTINGS.topic_dead_letters]]
    assert letters.count("processing_error") == 1


def test_the_state_cache_is_dropped_when_the_partitions_change():
    broker = Broker()
    checkpoint, _ = worker(broker)
    run(checkpoint([order(0, "A", 0, 50)]))
    assert len(checkpoint.states) == 1
    checkpoint.owned_partitions = lambda: {0, 1}
    run(checkpoint([tick(1)]))
    assert len(checkpoint.states) == 0


class ProfileSink(Sink):
    """Keeps every profile written, by customer, with the number of the batch that wrote it."""

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker)
        self.batch = 0
        self.written: dict[str, list[tuple[int, Any]]] = {}

    def submit(self, profiles) -> None:
        super().submit(profiles)
        for profile in profiles:
            self.written.setdefault(profile.customer_id, []).append((self.batch, profile))


def backlog_history(
    seed: int, defer: bool, assessments: bool = False, assessed: list[set[str]] | None = None
) -> tuple[ProfileSink, list[set[str]]]:
    """The history of ``seed`` in batches of random size, each checkpoint told the keys of the next batch (as the
    batch input does while the input is behind; the last batch has none after it); the sink and the customers
    each batch changed. ``defer``: profiles (PULSE_BACKLOG_DEFER_PROFILES), ``assessments``: assessments too
    (PULSE_BACKLOG_DEFER_ASSESSMENTS); ``assessed`` gets the customers each batch assessed."""
    import random

    settings = Settings(_env_file=None, backlog_defer_profiles=defer, backlog_defer_assessments=assessments)
    broker = Broker()
    sink = ProfileSink(broker)
    checkpoint = checkpoint_on(broker, settings, sink=sink, owned=frozenset({0, 1}), wall_clock=HISTORY_WALL_CLOCK)
    if assessed is not None:
        process = checkpoint.processor.process

        def recorded(*args: Any, **kwargs: Any) -> BatchOutcome:
            out = process(*args, **kwargs)
            assessed.append({k.decode() for k in out.assessed})
            return out

        checkpoint.processor.process = recorded  # type: ignore[method-assign]
    rng = random.Random(seed)
    records, batches, position = history_events(seed), [], 0
    while position < len(records):
        size = rng.randint(20, 200)
        batches.append(records[position : position + size])
        position += size
    changed: list[set[str]] = []
    for n, batch in enumerate(batches):
        following = batches[n + 1] if n + 1 < len(batches) else []
        checkpoint.upcoming = lambda following=following: frozenset(e.message.key for e in following)
        sink.batch = n
        states_before = dict(checkpoint.table.data)
        run(checkpoint(batch))
        changed.append({k.decode() for k, v in checkpoint.table.data.items() if states_before.get(k) != v})
    return sink, changed


def test_a_backlog_defers_a_profile_to_the_next_batch_at_most_and_ends_with_the_same_profiles():
    """streams.processor._defer_profiles: a customer the next batch scores again is rendered there, never two
    batches in a row, so each state change reaches a profile within one batch; the last profiles are the ones
    rendering every batch gives."""
    every, _ = backlog_history(6, defer=False)
    deferring, changed = backlog_history(6, defer=True, assessments=False)
    written = sum(len(p) for p in deferring.written.values())
    assert written < 0.8 * sum(len(p) for p in every.written.values())  # most customers are in the next batch
    assert {c: p[-1][1] for c, p in deferring.written.items()} == {c: p[-1][1] for c, p in every.written.items()}
    for customer, profiles in deferring.written.items():
        rendered = {n for n, _ in profiles}
        for n, customers in enumerate(changed):
            if customer in customers:
                assert n in rendered or n + 1 in rendered, (customer, n, sorted(rendered))


@pytest.mark.parametrize("seed", [6, 7])
def test_a_backlog_defers_an_assessment_to_the_next_batch_at_most_and_ends_with_the_same_state(seed: int):
    """streams.processor._later_assessments: a customer the next batch scores again is assessed there (its alert
    decided on every event up to that batch's clock, as one batch twice the size would), never two batches in a
    row, its profile with it; the customers whose events the next batch did not bring after all are assessed
    there anyway. What the events decide is the same as assessing in every batch; when the alerts were decided
    is a batch's granularity, as it always was."""
    from schemas.profile import CustomerProfile
    from testing.reference import STATE_FIELDS

    every_assessed: list[set[str]] = []
    deferring_assessed: list[set[str]] = []
    every, _ = backlog_history(seed, defer=True, assessments=False, assessed=every_assessed)
    deferring, changed = backlog_history(seed, defer=True, assessments=True, assessed=deferring_assessed)
    fewer = sum(map(len, deferring_assessed))
    assert fewer < 0.8 * sum(map(len, every_assessed))  # most customers are in the next batch
    for n, customers in enumerate(changed):
        for customer in customers:
            # a change is assessed within one batch, and its profile written with that assessment or after it
            assert any(customer in a for a in deferring_assessed[n : n + 2]), (customer, n)
            rendered = {m for m, _ in deferring.written[customer]}
            assert n in rendered or n + 1 in rendered, (customer, n, sorted(rendered))

    def fields(sink: ProfileSink) -> dict[str, dict]:
        last = {
            c: CustomerProfile.from_redis(dict(zip(p[-1][1].args[::2], p[-1][1].args[1::2], strict=True)))
            for c, p in sink.written.items()
        }
        return {c: {f: getattr(profile, f) for f in STATE_FIELDS} for c, profile in last.items()}

    assert fields(deferring) == fields(every)


@pytest.mark.parametrize("partition", [0, 1])
def test_an_assessment_left_to_a_batch_that_does_not_bring_the_customer_is_made_by_its_partitions_due_check(
    partition: int,
):
    """The next batch was expected to score the customer again (its records queued), but a revoke cleared the
    queue or its records were rejected: the customer is due at its latest event, so the first due check of its
    partition makes the assessment, and raises the churn alert it decides. Partition 1: the next batch has no
    record of the customer's partition, whose states it cannot write (a state goes with one of its partition's
    events); the partition's next record, a sweep tick, brings the check."""
    from prometheus_client import REGISTRY

    broker = Broker()
    sink = ProfileSink(broker)
    wall = (START + timedelta(days=400)).timestamp()
    settings = Settings(_env_file=None, backlog_defer_assessments=True)
    checkpoint = checkpoint_on(
        broker, settings, sink=sink, owned=frozenset({0, 1}), wall_clock=lambda: wall, input_positions=lambda: ({}, {})
    )
    first = first_batch()  # A, silent for 200 days: its medium-risk alert waits for the next batch
    first[0].message.partition = partition
    checkpoint.upcoming = lambda: frozenset({b"A"})
    deferred_before = REGISTRY.get_sample_value("pulse_assessments_deferred_total") or 0.0
    run(checkpoint(first))
    assert "A" not in sink.written and not broker.topics.get(SETTINGS.topic_retention_alerts)
    assert REGISTRY.get_sample_value("pulse_assessments_deferred_total") == deferred_before + 1
    checkpoint.upcoming = lambda: frozenset()
    run(checkpoint([order(20, "D", 200, 70)]))  # partition 0, no record of A after all
    if partition == 1:
        assert "A" not in sink.written
        run(checkpoint([tick(1)]))
    assert "A" in sink.written
    alerts = [orjson.loads(v) for _, v in broker.topics.get(SETTINGS.topic_retention_alerts, [])]
    assert [a["customer_id"] for a in alerts] == ["A"]


@pytest.mark.parametrize(("hours_later", "deferred"), [(1, False), (24 * 30, True)])
def test_a_live_partition_never_defers_its_profiles(hours_later: int, deferred: bool):
    """A live input a few batches behind also fills the queue: its profiles are still written with their batch;
    only a catch-up of history (a clock further than historical_alert_seconds behind the wall clock) defers."""
    broker = Broker()
    sink = ProfileSink(broker)
    wall = (START + timedelta(hours=hours_later)).timestamp()
    checkpoint = checkpoint_on(broker, sink=sink, wall_clock=lambda: wall, input_positions=lambda: ({}, {}))
    checkpoint.upcoming = lambda: frozenset({b"A"})
    run(checkpoint([order(0, "A", 0, 50), order(1, "B", 0, 60)]))
    assert sorted(sink.written) == (["B"] if deferred else ["A", "B"])
    run(checkpoint([order(2, "A", 0, 70)]))  # left to this batch: written here, whatever comes next
    assert len(sink.written["A"]) == (1 if deferred else 2)


def test_the_first_and_last_batches_with_events_are_stamped_and_a_batch_without_events_moves_neither():
    """``pulse bench`` times a backlog by these two gauges, as it times its peers by their first and last event:
    the first batch with input events is stamped when it begins (its work counts), the last one when it is
    durable; a batch of nothing but ticks, as a worker reads after a backlog, must not stretch the time."""
    from prometheus_client import REGISTRY

    calls: list[float] = []

    def clock() -> float:
        calls.append(1_000.0 + len(calls))
        return calls[-1]

    def gauge(name: str) -> float | None:
        return REGISTRY.get_sample_value(name)

    checkpoint = checkpoint_on(Broker(), wall_clock=clock)
    run(checkpoint(first_batch()))
    begun = calls[0]
    assert gauge("pulse_scoring_started_timestamp_seconds") == begun
    assert gauge("pulse_last_scored_batch_timestamp_seconds") == calls[-1]
    run(checkpoint(later_batch()))
    ended = calls[-1]
    assert gauge("pulse_scoring_started_timestamp_seconds") == begun  # the first batch's, not this one's
    assert gauge("pulse_last_scored_batch_timestamp_seconds") == ended > begun
    run(checkpoint([]))
    assert len(calls) > ended - 1_000.0  # the clock was read again
    assert gauge("pulse_last_scored_batch_timestamp_seconds") == ended


def test_decisions_are_not_published_when_another_owners_marker_lies_between_this_workers_writes():
    """A worker woken from a stall whose heartbeat has not been refused yet passes the generation fence; but its
    states landed after the partitions' next owner's marker, so the offsets between its acknowledged writes are
    another writer's, and the read-back finds the newer epoch there (``CustomerStateTable.check_foreign``). It
    publishes none of the batch's decisions: that owner, recovered without these states, decides those ids."""
    from streams.tables import ForeignOwner

    broker = Broker()
    checkpoint, table = worker(broker)

    async def newer_owner_found(owned: set[int]) -> None:
        broker.log.append(("check foreign", sorted(owned)))
        raise ForeignOwner("changelog partition 0: epoch (2, 9) written between this worker's writes of epoch (1, 0)")

    table.check_foreign = newer_owner_found  # type: ignore[method-assign]
    with pytest.raises(ForeignOwner):
        run(checkpoint(first_batch()))
    assert ("check foreign", [0]) in broker.log
    assert not broker.topics.get(SETTINGS.topic_retention_alerts)
    assert not broker.topics.get(SETTINGS.topic_vip_changes)
    states = {key: decode_state(value) for key, value in broker.recovered().items()}
    assert any(state.pending_alerts for state in states.values())


def test_decisions_are_not_published_when_the_group_dropped_the_worker_while_they_were_written():
    """A worker woken from a stall gets the acks of the writes it sent before it, at once, and passes the fence
    before them until a heartbeat is refused: if the generation was lost by the time its states and end markers are
    acknowledged, it publishes none of their decisions (the partitions' next owner decides those ids), and the
    states keep them pending, as a crash there would."""
    from streams.offsets import GenerationLost

    broker = Broker()
    checkpoint, table = worker(broker)
    lost = {"now": False}

    def fence() -> None:
        if lost["now"]:
            raise GenerationLost("group generation -1, partitions assigned in 1: not writing")

    table.fence = fence
    real_markers = table.send_end_markers

    async def markers_then_dropped(*args: Any, **kwargs: Any) -> list[asyncio.Future]:
        sent = await real_markers(*args, **kwargs)
        lost["now"] = True  # the heartbeat refused while the end markers were in flight
        return sent

    table.send_end_markers = markers_then_dropped  # type: ignore[method-assign]
    with pytest.raises(GenerationLost):
        run(checkpoint(first_batch()))
    assert not broker.topics.get(SETTINGS.topic_retention_alerts)
    assert not broker.topics.get(SETTINGS.topic_vip_changes)
    states = {key: decode_state(value) for key, value in broker.recovered().items()}
    assert any(state.pending_alerts for state in states.values())  # the outbox is the next owner's to publish
