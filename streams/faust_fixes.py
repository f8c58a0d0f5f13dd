"""Fixes for faust-streaming bugs that lose events, applied when the app is built.

Each fix replaces one method with the upstream code re-ordered, and says why;
``tests/e2e/test_restart_recovery.py`` fails without them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer, RecordMap
from faust.types import TP

_APPLIED = False


def _resume_flow_control(app: object) -> None:
    """``flow_control.resume()`` only if the flow is suspended.

    Resuming clears every stream queue (``FlowControlEvent.resume``): right for
    the records queued before a rebalance, wrong for those the fetcher
    delivered since the flow was last resumed. The table recovery resumes the
    flow before it completes (and seeks), then completion resumed it again,
    clearing records of kept partitions fetched in between, while later ones
    went on: the stream saw offsets 51..53, then 60 (issue 15).
    """
    flow_control = app.flow_control  # type: ignore[attr-defined]
    if not flow_control.is_active():
        flow_control.resume()


async def _resume_streams_seek_first(self: Recovery, generation_id: int = 0) -> None:
    """``Recovery._resume_streams`` (faust-streaming 0.15.3) with the seek moved before the resume.

    Upstream resumes the stream partitions and only then seeks them to the
    committed offsets. The fetcher is already running (it was started to read
    the changelogs), so it delivers records from the old position first; the
    seek then rewinds the consumer's read offset, Faust records the distance to
    the records already buffered as a *gap* (which it treats as acknowledged,
    so committable), and drops the re-fetched records as already read. After a
    restart, a whole batch of input events was skipped for good. Upstream fixed
    the same ordering for apps without tables (faust-streaming#216, PR #217).
    """
    app = self.app
    consumer = app.consumer
    await app.on_rebalance_complete.send()
    assignment = consumer.assignment()
    if app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        self.log.dev("Resume stream partitions")
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    else:
        self.log.info("Resuming streams with empty assignment")
    self.completed.set()
    self.log.info("Resuming flow...")
    _resume_flow_control(app)
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")


async def _on_recovery_completed_seek_first(self: Recovery, generation_id: int = 0) -> None:
    """``Recovery.on_recovery_completed`` (faust-streaming 0.15.3), the path apps with
    tables take, with the same fix as :func:`_resume_streams_seek_first`."""
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callback_coros = [
        asyncio.ensure_future(
            table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
        )
        for table in self.tables.values()
    ]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(f"Recovery rebalancing again app id {self.app.consumer_generation_id} param {generation_id}")
        return
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
    consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    self.completed.set()
    self.log.dev("Resume stream partitions")
    _resume_flow_control(self.app)
    consumer.resume_flow()
    await self.app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


_upstream_perform_seek = Consumer.perform_seek
_upstream_seek = Consumer.seek
_upstream_getmany = Consumer.getmany


def _seek_epoch(consumer: Consumer) -> int:
    return getattr(consumer, "_pulse_seek_epoch", 0)


async def _perform_seek_counted(self: Consumer) -> None:
    """``Consumer.perform_seek`` that marks every fetch issued before it as stale (see :func:`_getmany_until_seek`)."""
    await _upstream_perform_seek(self)
    self._pulse_seek_epoch = _seek_epoch(self) + 1  # type: ignore[attr-defined]


async def _seek_counted(self: Consumer, partition: TP, offset: int) -> None:
    await _upstream_seek(self, partition, offset)
    self._pulse_seek_epoch = _seek_epoch(self) + 1  # type: ignore[attr-defined]


async def _getmany_until_seek(self: Consumer, timeout: float):  # type: ignore[no-untyped-def]
    """``Consumer.getmany`` (faust-streaming 0.15.3) that stops delivering a fetch once a seek happened.

    Issue 15 (records lost by a worker that kept a partition through a
    rebalance): the table recovery resumes the flow before it seeks the
    stream partitions to their committed offsets, and a fetch queued on the
    consumer thread before the rebalance (for the partitions of then) may
    return meanwhile. Upstream delivers those records while the seek runs;
    the recovery's second ``flow_control.resume()`` then clears the ones
    still queued for the stream, and the rest arrive after that, ahead of the
    cleared ones, which only come again from the seek position. A customer
    with records on both sides had the earlier one dropped as a duplicate
    (its state remembers the highest offset applied), and Faust, whose read
    offset the late deliveries had moved past the cleared records, did not
    even deliver them again. Here a fetch is only delivered while no seek
    happened since it was issued; the seek position reads the rest again,
    in order.
    """
    epoch = _seek_epoch(self)
    records = _upstream_getmany(self, timeout)
    try:
        async for tp, message in records:
            if _seek_epoch(self) != epoch:
                return
            yield tp, message
    finally:
        await records.aclose()


async def _seek_in_thread(consumer: Any, starts: dict[TP, int]) -> None:
    """aiokafka seeks on the consumer thread, between its fetches (Faust's ``_seek`` runs on the caller's
    thread, where it races a fetch being consumed: the fetch moved the position on, past the seek)."""
    assigned = consumer.assignment()
    for tp, offset in starts.items():
        ktp = TopicPartition(tp.topic, tp.partition)
        if ktp in assigned:
            consumer.seek(ktp, offset)


async def _wait_next_records_snapshot(self: Consumer, timeout: float) -> tuple[RecordMap | None, set[TP] | None]:
    """``Consumer._wait_next_records`` (faust-streaming 0.15.3) fetching for a *copy* of the active set.

    Upstream hands its live active-partition set to the consumer thread. When
    recovery pauses the changelog partitions meanwhile, the set is empty by the
    time aiokafka runs ``getmany(*partitions)``, which then means *all*
    partitions; Faust discards the records of every partition not in the (now
    empty) set after aiokafka has moved past them. A new worker whose group had
    not committed yet skipped everything produced before it started.
    """
    if not self.flow_active:
        await self.wait(self.can_resume_flow)
    try:
        self.not_waiting_next_records.set()
        active_partitions: set[TP] | None
        if self.app.client_only:
            active_partitions = None
        else:
            active_partitions = set(self._get_active_partitions())
        records: RecordMap = {}
        epoch = _seek_epoch(self)
        if active_partitions is None or active_partitions:
            records = await self._getmany(active_partitions=active_partitions, timeout=timeout)
        else:
            await self.sleep(1)
        if records and _seek_epoch(self) != epoch:
            # a seek ran while this fetch was queued or in flight: the records may come from before it or
            # from its position; either way they are fetched again from where they start, in order
            starts = {tp: batch[0].offset for tp, batch in records.items() if batch}
            await self._thread.call_thread(_seek_in_thread, self._thread._ensure_consumer(), starts)  # type: ignore[attr-defined]
            records = {}
        return records, active_partitions
    finally:
        self.not_waiting_next_records.set()


def apply() -> None:
    global _APPLIED
    if not _APPLIED:
        Recovery._resume_streams = _resume_streams_seek_first  # type: ignore[method-assign]
        Recovery.on_recovery_completed = _on_recovery_completed_seek_first  # type: ignore[method-assign]
        Consumer._wait_next_records = _wait_next_records_snapshot  # type: ignore[method-assign]
        Consumer.perform_seek = _perform_seek_counted  # type: ignore[method-assign]
        Consumer.seek = _seek_counted  # type: ignore[method-assign]
        Consumer.getmany = _getmany_until_seek  # type: ignore[method-assign]
        _APPLIED = True
