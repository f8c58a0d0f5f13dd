"""The population publisher (streams/agents/population.py ``publish_changed``) against a rebalance that drops every
owned partition while a snapshot is being sent, as ``table.on_rebalanced`` does: nothing raises (the timer's
exception crashed the worker at a rebalance in the deploy smoke test), and a rebuilt partition is published again."""

from __future__ import annotations

import asyncio

import orjson

from pulse_config.settings import Settings
from scoring.population import PopulationView
from streams.agents.population import Published, publish_changed

CONFIG = Settings(_env_file=None).scoring()


def view_of(*partitions: int) -> PopulationView:
    view = PopulationView(CONFIG.rfm, CONFIG.indicators)
    for partition in partitions:
        view.partition(partition)
    return view


def test_a_rebalance_during_a_send_skips_the_dropped_partitions_and_a_rebuilt_one_is_published_again():
    async def go() -> None:
        view = view_of(0, 1, 2)
        sent: list[int] = []
        published: Published = {}

        async def send(partition: int, snapshot: bytes) -> None:
            sent.append(partition)
            assert snapshot
            if len(sent) == 1:
                view.drop()  # the rebalance, while this send is awaited
                await asyncio.sleep(0)

        await publish_changed(view, send, published)
        assert sent == [0]
        await publish_changed(view, send, published)
        assert sent == [0] and published == {}  # nothing owned: nothing sent, nothing of the dropped kept
        view.partition(0)  # rebuilt: a new object, at the same version as the one sent
        view.partition(2)
        await publish_changed(view, send, published)
        assert sorted(sent[1:]) == [0, 2]
        await publish_changed(view, send, published)
        assert len(sent) == 3  # unchanged since: not sent again

    asyncio.run(go())


def test_a_changed_partition_is_published_again():
    async def go() -> None:
        view = view_of(0)
        sent: list[int] = []
        published: Published = {}

        async def send(partition: int, snapshot: bytes) -> None:
            sent.append(partition)

        await publish_changed(view, send, published)
        view.partition(0).version += 1
        await publish_changed(view, send, published)
        assert sent == [0, 0]

    asyncio.run(go())


def test_a_clock_moved_while_the_partition_s_snapshot_is_sent_is_published_at_the_next_call():
    """CI (sessions 16, 19, 20): a batch ran while a partition's snapshot was being sent and moved its clock to
    the last event's time. The publisher recorded the version it found after the send as published, so the move
    was never sent: the population indicators stayed at the earlier time for good, every count right."""

    async def go() -> None:
        view = view_of(0, 1)
        view.partition(0).move_clock(1_000)
        view.partition(1).move_clock(1_000)
        sent: list[tuple[int, int | None]] = []
        published: Published = {}

        async def send(partition: int, snapshot: bytes) -> None:
            sent.append((partition, orjson.loads(snapshot)["clock_ms"]))
            if len(sent) == 1:  # the batch, while partition 0's snapshot is in flight: both clocks move
                view.partition(0).move_clock(2_000)
                view.partition(1).move_clock(2_000)
            await asyncio.sleep(0)

        await publish_changed(view, send, published)
        assert sent == [(0, 1_000), (1, 2_000)]
        await publish_changed(view, send, published)
        assert sent[2:] == [(0, 2_000)]  # the move of partition 0 is sent; partition 1 was already
        await publish_changed(view, send, published)
        assert len(sent) == 3

    asyncio.run(go())


def test_a_snapshot_whose_send_failed_is_sent_again_at_the_next_call():
    async def go() -> None:
        view = view_of(0, 1)
        sent: list[int] = []
        published: Published = {}
        failures = [OSError("not acknowledged")]

        async def send(partition: int, snapshot: bytes) -> None:
            if partition == 0 and failures:
                raise failures.pop()
            sent.append(partition)

        await publish_changed(view, send, published)
        assert sent == [1] and 0 not in published  # partition 1 still sent after partition 0's failure
        await publish_changed(view, send, published)
        assert sent == [1, 0]
        await publish_changed(view, send, published)
        assert sent == [1, 0]

    asyncio.run(go())
