"""The issue-15 fixes of streams/faust_fixes.py around seeks, with fakes for Faust's consumer."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import TopicPartition
from faust.types import TP

from streams import faust_fixes

O5 = TP("orders", 5)


class FakeFlowControl:
    def __init__(self, active: bool) -> None:
        self.active = active
        self.resumed = 0

    def is_active(self) -> bool:
        return self.active

    def resume(self) -> None:  # clears every stream queue in mode's FlowControlEvent
        self.resumed += 1
        self.active = True


def test_flow_is_resumed_only_when_suspended():
    """A second resume would clear the stream queues of records fetched since the first."""
    running, suspended = FakeFlowControl(True), FakeFlowControl(False)
    faust_fixes._resume_flow_control(SimpleNamespace(flow_control=running))
    faust_fixes._resume_flow_control(SimpleNamespace(flow_control=suspended))
    assert running.resumed == 0 and suspended.resumed == 1


class FakeKafkaConsumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def fake_consumer(records: dict, seek_meanwhile: bool) -> SimpleNamespace:
    kafka = FakeKafkaConsumer({TopicPartition("orders", 5)})

    async def call_thread(fun, *args):
        return await fun(*args)

    consumer = SimpleNamespace(
        flow_active=True,
        app=SimpleNamespace(client_only=False),
        not_waiting_next_records=asyncio.Event(),
        _get_active_partitions=lambda: {O5},
        _thread=SimpleNamespace(call_thread=call_thread, _ensure_consumer=lambda: kafka),
        kafka=kafka,
    )

    async def getmany(active_partitions, timeout):
        if seek_meanwhile:
            consumer._pulse_seek_epoch = faust_fixes._seek_epoch(consumer) + 1
        return records

    consumer._getmany = getmany
    return consumer


def test_a_fetch_that_straddles_a_seek_is_dropped_and_read_again_from_where_it_started():
    records = {O5: [SimpleNamespace(offset=3484), SimpleNamespace(offset=3485)]}
    consumer = fake_consumer(records, seek_meanwhile=True)
    got, active = asyncio.run(faust_fixes._wait_next_records_snapshot(consumer, 1.0))
    assert got == {} and active == {O5}
    assert consumer.kafka.seeks == [(TopicPartition("orders", 5), 3484)]


def test_a_fetch_without_a_seek_meanwhile_is_delivered():
    records = {O5: [SimpleNamespace(offset=3484)]}
    consumer = fake_consumer(records, seek_meanwhile=False)
    got, _ = asyncio.run(faust_fixes._wait_next_records_snapshot(consumer, 1.0))
    assert got == records and consumer.kafka.seeks == []


def test_delivery_of_a_fetch_stops_at_a_seek(monkeypatch):
    consumer = SimpleNamespace()

    async def upstream(self, timeout):
        for offset in (10, 11, 12):
            yield O5, offset
            if offset == 10:
                self._pulse_seek_epoch = faust_fixes._seek_epoch(self) + 1

    monkeypatch.setattr(faust_fixes, "_upstream_getmany", upstream)

    async def drain() -> list:
        return [m async for m in faust_fixes._getmany_until_seek(consumer, 1.0)]

    assert asyncio.run(drain()) == [(O5, 10)]
