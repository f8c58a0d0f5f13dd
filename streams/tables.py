"""The changelog-backed per-customer state table, and the table manager whose recovery reads it in bulk."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from faust.stores import memory as memory_store
from faust.stores import rocksdb as rocksdb_store
from faust.streams import _current_event
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP, EventT
from faust.types.tuples import RecordMetadata

from pulse_config.settings import Settings
from streams.security import kafka_client_kwargs

log = logging.getLogger(__name__)

#: Key of the checkpoint end markers. Customer ids cannot start with NUL
#: (schemas.events.ID_PATTERN), so it never names a customer.
END_MARKER_KEY = b"\x00pulse-checkpoint-end"


class CustomerStateTable(faust.Table):
    """A Faust table whose writes the checkpoint sends and awaits itself.

    Faust sends changelog records through a producer buffer and commits
    offsets after ``producer.flush()``, but that flush can return while
    records are still buffered, and a stopping app commits before it flushes.
    So the checkpoint writes states with :meth:`write_states`, which returns
    the producer futures, and acknowledges a batch's events only once the
    broker has acknowledged every record.
    """

    #: called after every rebalance: derived in-memory views of the table (the
    #: population) must be rebuilt from the recovered states
    on_rebalanced: Callable[[], None] | None = None
    #: called before every state write; raises when the worker may no longer write (streams.offsets.check_generation)
    fence: Callable[[], None] | None = None

    async def on_rebalance(self, assigned, revoked, newly_assigned, generation_id: int = 0) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        if self.on_rebalanced is not None:
            self.on_rebalanced()

    async def write_states(self, items: Iterable[tuple[bytes, bytes, EventT]]) -> list[Awaitable[RecordMetadata]]:
        """Store each (key, value) and send its changelog record straight to the producer.

        The event is one of the customer's own events of the batch: inputs and
        table are co-partitioned by customer id, so its partition is the key's
        partition, both for the changelog record and for the RocksDB store
        (which files a key under the partition of the current event). Unlike
        ``table[key] = value``, records skip Faust's producer buffer (one
        ``publish_message`` per record, a 100-record cap).
        """
        fence = self.fence
        producer = self.app.producer
        topic = self.changelog_topic.get_topic_name()
        futures: list[Awaitable[RecordMetadata]] = []
        try:
            for key, value, event in items:
                if fence is not None:
                    fence()  # before each send: a stalled loop may resume after the group dropped the worker
                _current_event.set(weakref.ref(event))
                self.data[key] = value
                futures.append(await producer.send(topic, key, value, event.message.partition, None, None))
        finally:
            _current_event.set(None)
        return futures

    def persisted(self, results: Iterable[RecordMetadata]) -> None:
        """Remember the changelog offsets written (RocksDB reads from there after a restart)."""
        for res in results:
            self.data.set_persisted_offset(res.topic_partition, res.offset)

    async def send_end_markers(self, partitions: set[int]) -> list[Awaitable[RecordMetadata]]:
        """A tombstone of :data:`END_MARKER_KEY` to each partition, to be sent alone.

        Tansu answers ListOffsets(latest) with the base offset of the last
        record batch + 1, so Faust's recovery, which reads the changelog up to
        that "highwater", skips the rest of the last batch. Once a checkpoint's
        records are acknowledged, a one-record batch per partition makes the
        reported end the true end. A tombstone deletes nothing and leaves no key.
        """
        producer = self.app.producer
        topic = self.changelog_topic.get_topic_name()
        return [await producer.send(topic, END_MARKER_KEY, None, p, None, None) for p in sorted(partitions)]

    def can_restore_in_bulk(self) -> bool:
        """Whether :meth:`restore_records` can write to this table's store (RocksDB or memory)."""
        store = self.data
        if self._on_changelog_event is not None:
            return False
        return isinstance(store, memory_store.Store) or (isinstance(store, rocksdb_store.Store) and store.use_rocksdict)

    def restore_records(self, tp: TP, records: Sequence[ConsumerRecord]) -> None:
        """Apply changelog records of one partition, in offset order, as Faust's recovery applies them.

        The same writes as the stores' ``apply_changelog_batch`` without a
        Faust event per record: a value is stored under its key, a tombstone
        (an end marker too) deletes the key. RocksDB gets one write batch per
        call that also records the last offset (what Faust's
        ``set_persisted_offset`` writes, here atomically with the values).
        """
        if not records:
            return
        store = self.data
        if isinstance(store, rocksdb_store.Store):
            batch = rocksdb_store.WriteBatch(raw_mode=True)
            for record in records:
                if record.value is None:
                    batch.delete(record.key)
                else:
                    batch.put(record.key, record.value)
            batch.put(store.offset_key, str(records[-1].offset).encode())
            store._db_for_partition(tp.partition).write(batch)
        else:
            data, partitions = store.data, store._key_partition  # type: ignore[attr-defined]  # our memory store
            for record in records:
                if record.value is None:
                    data.pop(record.key, None)
                    partitions.pop(record.key, None)
                else:
                    data[record.key] = record.value
                    partitions[record.key] = tp.partition


class BulkRecovery(Recovery):
    """Faust's recovery, which first reads the active changelog partitions of bulk-capable tables itself.

    Faust turns every changelog record into an event that passes through its
    consumer, conductor, changelog queue and recovery loop, each with tasks
    of its own: about 6,000 records/s here on asyncio, 11,500 on uvloop,
    bounded by that per-record work (pulse bench --recovery 1000000: 87 s).
    This reads the same records with a plain aiokafka consumer and writes each
    fetched batch with :meth:`CustomerStateTable.restore_records`, from the
    offset Faust would start at up to the highwater Faust would stop at
    (inclusive: on Tansu the end markers make it the true end, see
    :meth:`CustomerStateTable.send_end_markers`), and advances Faust's
    offsets with it. Faust's own recovery
    then finds nothing left to read; whatever this did not read (another
    rebalance, an error, the time budget) Faust reads the usual way from
    where this stopped.
    """

    #: plain aiokafka client kwargs (servers, security) and the fetch size per partition
    client_kwargs: dict[str, Any] = {}
    fetch_bytes: int = 4 * 1024 * 1024
    #: nothing fetched for this long: leave the rest to Faust's recovery
    stall_seconds: float = 10.0

    async def _build_offsets(self, consumer: Any, tps: set[TP], destination: Any, title: str) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if destination is self.active_offsets:
            # _build_offsets runs under broker_request_timeout (a timeout stops the recovery service)
            budget = 0.8 * self.app.conf.broker_request_timeout
            try:
                await self._read_in_bulk(time.monotonic() + budget)
            except Exception:
                log.exception("bulk changelog read failed; Faust's recovery reads the rest")

    async def _read_in_bulk(self, deadline: float) -> None:
        generation = self._generation_id
        ends: dict[TP, int] = {}
        for tp in self.active_tps:
            table = self.tp_to_table.get(tp)
            start, end = self.active_offsets.get(tp), self.active_highwaters.get(tp)
            if isinstance(table, CustomerStateTable) and table.can_restore_in_bulk():
                if start is not None and end is not None and end > start:
                    ends[tp] = end
        if not ends:
            return
        started = time.monotonic()
        bulk = AIOKafkaConsumer(
            **self.client_kwargs,
            client_id=f"{self.app.conf.broker_client_id}-recovery",
            enable_auto_commit=False,
            max_partition_fetch_bytes=self.fetch_bytes,
            fetch_max_bytes=max(self.fetch_bytes * len(ends), 52428800),
            request_timeout_ms=int(self.app.conf.broker_request_timeout * 1000),
            check_crcs=self.app.conf.broker_check_crcs,
            isolation_level="read_committed" if self.app.in_transaction else "read_uncommitted",
        )
        records_read = 0
        pending = {TopicPartition(tp.topic, tp.partition): tp for tp in ends}
        try:
            await bulk.start()
            bulk.assign(list(pending))
            for ktp, tp in pending.items():
                # Faust's offset is the last record applied (-1: none); the next one is read
                bulk.seek(ktp, self.active_offsets[tp] + 1)
            progress_at = time.monotonic()
            while pending and time.monotonic() < min(deadline, progress_at + self.stall_seconds):
                fetched = await bulk.getmany(*pending, timeout_ms=500)
                if self.app.consumer_generation_id != generation or self.signal_recovery_start.is_set():
                    return  # rebalanced meanwhile: the partitions may be someone else's now
                if fetched:
                    progress_at = time.monotonic()
                for ktp, records in fetched.items():
                    tp = pending[ktp]
                    end = ends[tp]
                    if records[-1].offset > end:
                        records = [r for r in records if r.offset <= end]
                    if records:
                        table = self.tp_to_table[tp]
                        table.restore_records(tp, records)  # type: ignore[attr-defined]
                        self.active_offsets[tp] = records[-1].offset
                        records_read += len(records)
                for ktp, tp in list(pending.items()):
                    if self.active_offsets[tp] >= ends[tp] or await bulk.position(ktp) > ends[tp]:
                        bulk.pause(ktp)
                        del pending[ktp]
                await asyncio.sleep(0)
        finally:
            elapsed = time.monotonic() - started
            log.info(
                "bulk changelog read: %d records of %d partitions in %.2fs (%.0f records/s)%s",
                records_read,
                len(ends),
                elapsed,
                records_read / max(elapsed, 1e-9),
                f", {len(pending)} partitions unfinished" if pending else "",
            )
            # a new rebalance cancels this task (Recovery._wait): the consumer still closes
            await asyncio.shield(bulk.stop())


class BulkRecoveryTableManager(TableManager):
    """Faust's table manager with :class:`BulkRecovery` as its recovery service."""

    recovery_class: type[BulkRecovery] = BulkRecovery

    async def on_start(self) -> None:
        """Faust's ``on_start`` without its one-second sleep: create_app adds every table before the worker starts."""
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = self.recovery_class(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


def table_manager(settings: Settings) -> type[TableManager]:
    """The App's ``TableManager``: bulk changelog reads unless ``PULSE_RECOVERY_BULK_READ`` is off."""
    if not settings.recovery_bulk_read:
        return TableManager
    recovery = type(
        "PulseBulkRecovery",
        (BulkRecovery,),
        {"client_kwargs": kafka_client_kwargs(settings), "fetch_bytes": settings.recovery_fetch_bytes},
    )
    return type("PulseTableManager", (BulkRecoveryTableManager,), {"recovery_class": recovery})
