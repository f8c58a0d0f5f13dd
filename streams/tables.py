"""The changelog-backed per-customer state table, and the table manager whose recovery reads it in bulk."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from faust.stores import memory as memory_store
from faust.stores import rocksdb as rocksdb_store
from faust.streams import _current_event
from faust.tables import TableManager
from faust.tables.recovery import RebalanceAgain, Recovery, ServiceStopped
from faust.types import TP, EventT
from faust.types.tuples import RecordMetadata
from mode.utils.times import Seconds, want_seconds

from pulse_config.settings import Settings
from streams import metrics
from streams.fail_stop import fail_stop
from streams.faust_fixes import RESUME_SEEK
from streams.offsets import GenerationLost, assigned_generation, coordinator_generation, generation_lost
from streams.ownership import (
    END_MARKER_KEY,
    META_KEY,
    RESERVED_PREFIX,
    Epoch,
    InputLog,
    OwnWrites,
    PartitionView,
    epoch_headers,
    next_epoch,
    owner_marker,
    stale_keys,
)
from streams.security import kafka_client_kwargs
from streams.watchdog import awaiting

log = logging.getLogger(__name__)

__all__ = [
    "END_MARKER_KEY",
    "RESERVED_PREFIX",
    "BulkRecovery",
    "ChangelogUnread",
    "CustomerStateTable",
    "ForeignOwner",
    "table_manager",
    "unrecoverable_partitions",
]


def unrecoverable_partitions(actives: Iterable[TP], inputs: Iterable[str], changelog: str) -> set[int]:
    """The partitions of ``inputs`` in this worker's active assignment whose ``changelog`` partition is not in it.

    Why: Faust's assignor leaves out a topic its metadata does not list ("Ignoring missing topic"), and a worker
    assigned an input partition without the state changelog's partition of the same number recovers nothing for
    it: it would score on empty states, and the partition's next owner would recover those over the real ones
    (events lost; tests/faults/test_retained_partitions.py on Kafka, session 11). Such a worker must not score.
    """
    names = set(inputs)
    assigned = {tp.partition for tp in actives if tp.topic in names}
    recovered = {tp.partition for tp in actives if tp.topic == changelog}
    return assigned - recovered


class ForeignOwner(RuntimeError):
    """A newer owner's marker or records sit between this worker's own changelog writes: the group moved the
    partition on without this worker noticing; it must stop writing (fail-stop, recover anew)."""


class ChangelogUnread(RuntimeError):
    """Changelog records that landed between a recovery's end and the owner marker could not be applied: the
    worker must not read the partition's input without them (fail-stop; the next recovery reads through the
    marker)."""


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
    #: called before every changelog write; raises when the worker may no longer write (offsets.check_generation)
    fence: Callable[[], None] | None = None
    #: asks the group coordinator whether this worker is a member of the given generation now
    #: (offsets.generation_confirmed, set by streams.app); None: nobody to ask, so not confirmed
    confirm_generation: Callable[[int], Awaitable[bool]] | None = None
    #: aiokafka client arguments (bootstrap, security) and time bound of the read-back of foreign changelog
    #: offsets (:meth:`repair`); set by streams.app from the settings
    read_back_client: Mapping[str, Any] = {}
    read_back_seconds: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        #: per changelog partition, the log as this worker's recoveries read it (streams.ownership)
        self.views: dict[int, PartitionView] = {}
        #: per partition, the epoch this worker writes with since its owner marker was acknowledged
        self.writer_epoch: dict[int, Epoch] = {}
        #: per partition, the changelog offset of that owner marker (the Redis fences name it)
        self.marker_offsets: dict[int, int] = {}
        #: per partition, the input positions of the last end marker this worker sent (since the last rebalance)
        self.sent_positions: dict[int, dict[str, int]] = {}
        #: per partition, the input logs of the last end marker this worker sent (streams.ownership.InputLog)
        self.sent_logs: dict[int, dict[str, InputLog]] = {}
        #: per partition, the changelog offset recovery read up to (-1: nothing), for the owner marker
        self.recovered_through: dict[int, int] = {}
        self.writer_id = f"{socket.gethostname()}:{os.getpid()}"
        self._stale_logged: set[int] = set()
        #: partitions recovered since recovered_positions was last asked
        self._recovered: set[int] = set()
        #: per partition, where this worker's own acknowledged writes land, and the foreign ranges between them
        self.own_writes = OwnWrites()
        #: per partition, customers whose newest changelog record is a late write of an older epoch: the owner
        #: writes their state again, so compaction cannot leave the stale record as their only one
        self.repair_keys: dict[int, set[bytes]] = {}
        #: set once the recovery of the latest assignment claimed its partitions (:meth:`claim`): until then the
        #: table may still change under a batch (streams.batch_input waits for it); the assignments so far
        self.claimed = asyncio.Event()
        self._assignments = 0

    async def on_rebalance(self, assigned, revoked, newly_assigned, generation_id: int = 0) -> None:
        # every partition is recovered again (kept ones from where the last recovery stopped): each first write
        # after it is preceded by a new owner marker
        self._assignments += 1
        self.claimed.clear()
        self.writer_epoch.clear()
        self.marker_offsets.clear()
        self.sent_positions.clear()
        self.sent_logs.clear()
        self.own_writes.forget()
        kept = {tp.partition for tp in assigned}
        for partition in [p for p in self.repair_keys if p not in kept]:
            del self.repair_keys[partition]  # the next owner's recovery finds them again
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        if self.on_rebalanced is not None:
            self.on_rebalanced()

    # --- writes -----------------------------------------------------------------------------------------
    def has_epoch(self, partition: int) -> bool:
        """This worker wrote its owner marker to ``partition`` since its last recovery of it."""
        return partition in self.writer_epoch

    async def epoch_for(self, partition: int) -> Epoch:
        """This worker's epoch in ``partition``; its first call after a recovery writes the owner marker.

        The marker is acknowledged before any state record follows it, so a record carrying the epoch proves
        the marker is in the log before it (recovery relies on that when markers were compacted away).
        """
        epoch = self.writer_epoch.get(partition)
        if epoch is not None:
            return epoch
        generation = int(getattr(self.app, "consumer_generation_id", 0) or 0)
        view = self.views.get(partition, PartitionView())
        if view.epoch[1] > generation:
            await self._check_later_generation(partition, view.epoch, generation)
        epoch = next_epoch(view.epoch, generation)
        key, value = owner_marker(epoch, generation, self.writer_id, self.recovered_through.get(partition))
        if self.fence is not None:
            self.fence()
        topic = self.changelog_topic.get_topic_name()
        sent = await self.app.producer.send(topic, key, value, partition, None, epoch_headers(epoch))
        offset = (await sent).offset
        self.own_writes.marker(partition, offset)
        if self.fence is not None:
            self.fence()  # dropped while the marker was in flight: write nothing under it
        self.writer_epoch[partition] = epoch
        self.marker_offsets[partition] = offset
        log.info(
            "changelog partition %d: owner marker at offset %d, epoch %d.%d (recovery read through offset %s, "
            "epoch %d.%d)",
            partition,
            offset,
            *epoch,
            self.recovered_through.get(partition),
            *view.epoch,
        )
        return epoch

    async def claim(self, partitions: Iterable[int]) -> int:
        """Write the owner marker of each recovered partition now, and apply the records that landed between the
        partition's recovery and its marker; returns how many were read back.

        The recovery calls it before the partitions' input is read. Until a new owner's marker is in the log,
        another writer's records land *before* it: a worker the group dropped, woken from a stall, writing the
        batch it had scored. Every later recovery applies them, while this worker, whose recovery ended before
        them, neither holds them nor finds their offsets between its own writes (the read-back of
        :meth:`check_foreign` starts at the marker). It would then decide that batch's events again, at another
        clock, and publish ids the woken worker had published with other contents. Written at the first state
        write, the marker left that window open as long as a partition stayed quiet after a rebalance; now it
        is open for one acknowledgement, and what landed in it (on Tansu also the rest of a last record batch
        whose base the recovery's end offset pointed at) is read back and applied here as the recovery would
        have applied it. A newer owner's marker among those records means this worker is the one dropped:
        :class:`ForeignOwner`, after forgetting the RocksDB offsets. Records it cannot read in time raise too:
        the next recovery reads through the marker. Faust resumes the flow before the recovery's last step, so
        the batch input waits for :attr:`claimed`, which this sets (unless a newer assignment came meanwhile).
        """
        assignment = self._assignments
        wanted = sorted(set(partitions))
        await asyncio.gather(*(self.epoch_for(p) for p in wanted))
        read = 0
        for partition in wanted:
            read += await self._take_unread(partition)
        if assignment == self._assignments:  # else a newer assignment's recovery claims its partitions
            self.claimed.set()
        return read

    async def _take_unread(self, partition: int) -> int:
        """Apply the records between what the recovery of ``partition`` read and this worker's marker."""
        marker, through = self.marker_offsets.get(partition), self.recovered_through.get(partition)
        if marker is None or through is None or marker <= through + 1:
            return 0  # the usual case: the marker is the record after the last one the recovery read
        topic = self.changelog_topic.get_topic_name()
        first, last = through + 1, marker - 1
        if not self.can_restore_in_bulk():  # not the memory or the RocksDB store (rocksdict): as before the claim
            log.warning("changelog partition %d: offsets %d-%d not applied (the store cannot)", partition, first, last)
            return 0
        unread = (
            f"changelog partition {partition}: offsets {first}-{last}, written after this worker's recovery read it "
            "and before its owner marker,"
        )
        try:
            records = await asyncio.wait_for(
                self._read_back(topic, partition, [(first, last)]), timeout=2 * self.read_back_seconds
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            raise ChangelogUnread(f"{unread} could not be read: {exc!r}") from exc
        if not records or records[-1].offset != last:
            # the marker's offset was assigned right after them: the record before it exists
            raise ChangelogUnread(f"{unread} were not read within {self.read_back_seconds:g} s")
        self.restore_records(TP(topic, partition), records)
        metrics.CHANGELOG_RECORDS_AFTER_RECOVERY.inc(len(records))
        seen, own = self.views[partition].epoch, self.writer_epoch[partition]
        log.warning(
            "changelog partition %d: %d record(s) at offsets %d-%d landed after this worker's recovery read the "
            "partition and before its owner marker at %d; applied as the recovery would have (epoch now %d.%d)",
            partition,
            len(records),
            first,
            last,
            marker,
            *seen,
        )
        if seen > own:
            self.forget_persisted()
            raise ForeignOwner(
                f"changelog partition {partition}: epoch {seen} written after this worker's recovery, before its "
                f"owner marker of epoch {own}"
            )
        return len(records)

    async def _check_later_generation(self, partition: int, seen: Epoch, generation: int) -> None:
        """Raise :class:`GenerationLost` unless the coordinator confirms this worker's ``generation`` current.

        Recovery read an owner marker of a later generation than the one this worker was assigned the partition
        in. Either the assignment is stale (a worker frozen after its JoinGroup woke to the late SyncGroup answer
        of a generation the group has left, while the next generation's owner had written its marker), or the
        group's generations were numbered anew (its offsets expired after it stood empty, or it was deleted). A
        stale worker taking count + 1 would outrank the rightful owner, since epochs compare counts first: the
        owner would fail-stop as if dropped and the next recovery would skip its records (a frozen-worker run on
        Kafka: 5 ids with two contents, docs/benchmarks.md session 31). Only the coordinator can tell the two
        apart; not confirmed, the worker writes nothing and fail-stops, to join again as a new member.
        """
        confirm = self.confirm_generation
        if confirm is not None and await confirm(generation):
            log.warning(
                "changelog partition %d: its owner marker %d.%d is of a later generation than this worker's %d, "
                "which the group coordinator confirmed current: the group's generations were numbered anew",
                partition,
                *seen,
                generation,
            )
            return
        metrics.GENERATION_LOST_WRITES.inc()
        raise GenerationLost(
            f"changelog partition {partition}: owner marker {seen[0]}.{seen[1]} of a later generation than this "
            f"worker's assignment in {generation}, which the group coordinator did not confirm: not writing"
        )

    async def write_states(self, items: Iterable[tuple[bytes, bytes, EventT]]) -> list[Awaitable[RecordMetadata]]:
        """Store each (key, value) and send its changelog record straight to the producer, in record batches.

        The event is one of the customer's own events of the batch: inputs and
        table are co-partitioned by customer id, so its partition is the key's
        partition, both for the changelog record and for the RocksDB store
        (which files a key under the partition of the current event). Unlike
        ``table[key] = value``, records skip Faust's producer buffer (one
        ``publish_message`` per record, a 100-record cap). Each record carries
        the worker's ownership epoch of its partition (streams.ownership).

        The records of a partition go as aiokafka record batches (``create_batch``/``send_batch``, as many as
        ``PULSE_PRODUCER_MAX_BATCH_BYTES`` needs) rather than one ``send`` each: the per-record future, Faust's
        send wrapper and the accumulator's bookkeeping were ~10 % of a backlog worker's CPU (issue 18). One
        future per batch; it resolves to the metadata of the batch's last record (a batch's records take
        consecutive offsets), and the offsets it covers count as this worker's own writes.
        """
        fence = self.fence
        # the aiokafka producer under Faust's (its send wrapper is per record; Faust has no batch call)
        producer: Any = cast(Any, self.app.producer)._ensure_producer()
        topic = self.changelog_topic.get_topic_name()
        futures: list[Awaitable[RecordMetadata]] = []
        #: partition -> (the open batch, its records, the partition's epoch headers)
        open_batches: dict[int, tuple[Any, int, list[tuple[str, bytes]]]] = {}
        try:
            for key, value, event in items:
                partition = event.message.partition
                open_batch = open_batches.get(partition)
                if open_batch is None:
                    headers = epoch_headers(await self.epoch_for(partition))
                    open_batch = open_batches[partition] = (producer.create_batch(), 0, headers)
                builder, count, headers = open_batch
                if fence is not None:
                    fence()  # before each record: a stalled loop may resume after the group dropped the worker
                _current_event.set(weakref.ref(event))
                self.data[key] = value
                if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    # full: sent, and the record starts the next batch of the partition
                    futures.append(await self._send_batch(producer, topic, partition, builder, count))
                    builder, count = producer.create_batch(), 0
                    if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise ValueError(f"changelog record of {len(value)} B larger than a producer batch")
                open_batches[partition] = (builder, count + 1, headers)
        finally:
            _current_event.set(None)
        for partition, (builder, count, _) in open_batches.items():
            futures.append(await self._send_batch(producer, topic, partition, builder, count))
        return futures

    async def _send_batch(self, producer: Any, topic: str, partition: int, builder: Any, count: int) -> asyncio.Future:
        """Hand one record batch of ``count`` records to the producer; the future of its last record's metadata."""
        if self.fence is not None:
            self.fence()
        sent = await producer.send_batch(builder, topic, partition=partition)
        last: asyncio.Future = asyncio.get_running_loop().create_future()

        def acked(batch: asyncio.Future) -> None:
            if batch.cancelled():
                last.cancel()
            elif (exc := batch.exception()) is not None:
                last.set_exception(exc)
            else:
                first = batch.result()
                self.own_writes.acked_range(partition, first.offset, first.offset + count - 1)
                last.set_result(first._replace(offset=first.offset + count - 1))

        sent.add_done_callback(acked)
        return last

    def _tracked(self, sent: Awaitable[RecordMetadata]) -> Awaitable[RecordMetadata]:
        """Note where the record lands once acknowledged (streams.ownership.OwnWrites)."""
        if isinstance(sent, asyncio.Future):
            sent.add_done_callback(self._acked)
        return sent

    def _acked(self, sent: asyncio.Future) -> None:
        if sent.cancelled() or sent.exception() is not None:
            return
        meta = sent.result()
        self.own_writes.acked(meta.topic_partition.partition, meta.offset)

    async def check_foreign(self, owned: set[int]) -> None:
        """Read back the changelog offsets found between this worker's acknowledged writes since the last call
        (another writer's): raise :class:`ForeignOwner` if a newer owner wrote there, and note the customers of
        late writes of an older epoch for :meth:`repair`.

        The checkpoint calls it before publishing a batch's decisions as well as in :meth:`repair`: a worker
        woken from a stall whose writes landed after the next owner's marker learns it from where they landed,
        whatever its heartbeat says yet, and publishes nothing that owner, recovered without those states, will
        decide itself. Nothing to read (the usual case) costs nothing."""
        foreign = self.own_writes.take()
        topic = self.changelog_topic.get_topic_name()
        for partition, ranges in sorted(foreign.items()):
            epoch = self.writer_epoch.get(partition)
            if epoch is None or partition not in owned:
                continue
            try:
                log.info("changelog partition %d: reading back offsets %s (not this worker's)", partition, ranges)
                # bounded as a whole (connecting included): a checkpoint never waits longer than this on it
                records = await asyncio.wait_for(
                    self._read_back(topic, partition, ranges), timeout=2 * self.read_back_seconds
                )
                metrics.CHANGELOG_FOREIGN_OFFSETS.inc(sum(last - first + 1 for first, last in ranges))
            except (KafkaError, OSError, TimeoutError) as exc:
                # left to the partition's next recovery, which skips a stale record and rewrites its customer
                log.warning(
                    "changelog partition %d: read-back of %s failed, left to the next recovery: %r",
                    partition,
                    ranges,
                    exc,
                )
                continue
            keys, newer = stale_keys(records, epoch)
            if newer is not None:
                self.forget_persisted()
                raise ForeignOwner(
                    f"changelog partition {partition}: epoch {newer} written between this worker's writes "
                    f"of epoch {epoch}"
                )
            metrics.CHANGELOG_LATE_WRITES_FOUND.inc(len(keys))
            if keys:
                log.warning(
                    "changelog partition %d: %d late write(s) of an older epoch between this worker's writes at "
                    "offsets %s; their customers are written again",
                    partition,
                    len(keys),
                    ", ".join(f"{a}-{b}" for a, b in ranges),
                )
                self.repair_keys.setdefault(partition, set()).update(keys)

    async def repair(self, owned: set[int]) -> int:
        """Write again, under this worker's epoch, every owned customer whose newest changelog record is a late
        write of an older epoch: found between this worker's own writes (read back from the broker,
        :meth:`check_foreign`) or skipped by its recovery. Returns the states written; raises
        :class:`ForeignOwner` when a newer owner wrote."""
        await self.check_foreign(owned)
        if not any(p in owned for p in self.repair_keys):
            return 0
        topic = self.changelog_topic.get_topic_name()
        producer = self.app.producer
        futures = []
        for partition in sorted(p for p in self.repair_keys if p in owned):
            keys = self.repair_keys.pop(partition)
            headers = epoch_headers(await self.epoch_for(partition))
            for key in sorted(keys):
                value = self.data.get(key)
                if value is None:
                    continue  # the stale record was its only one: recovery skips it, and so the owner knows none
                if self.fence is not None:
                    self.fence()
                futures.append(self._tracked(await producer.send(topic, key, value, partition, None, headers)))
        await asyncio.gather(*futures)
        metrics.CHANGELOG_STATES_REWRITTEN.inc(len(futures))
        return len(futures)

    @contextlib.asynccontextmanager
    async def _changelog_reader(
        self, topic: str, partition: int, purpose: str
    ) -> AsyncIterator[tuple[AIOKafkaConsumer, TopicPartition]]:
        """A started group-less consumer assigned ``topic``'s partition ``partition`` (read-backs, fence checks);
        stopped on the way out, also when its start failed."""
        consumer = AIOKafkaConsumer(
            **self.read_back_client,
            client_id=f"{self.app.conf.broker_client_id}-{purpose}",
            enable_auto_commit=False,
        )
        tp = TopicPartition(topic, partition)
        try:
            await consumer.start()
            consumer.assign([tp])
            yield consumer, tp
        finally:
            await consumer.stop()

    async def _read_back(self, topic: str, partition: int, ranges: Sequence[tuple[int, int]]) -> list[Any]:
        """The records at ``ranges`` of one changelog partition, read with a group-less consumer (bounded in time
        by the recovery timeout: records missing by then are judged by the next owner's recovery)."""
        out: list[Any] = []
        async with self._changelog_reader(topic, partition, "changelog-repair") as (consumer, tp):
            deadline = time.monotonic() + self.read_back_seconds
            for first, last in ranges:
                consumer.seek(tp, first)
                position = first
                while position <= last and time.monotonic() < deadline:
                    fetched = await consumer.getmany(tp, timeout_ms=200)
                    for record in fetched.get(tp, []):
                        position = record.offset + 1
                        if first <= record.offset <= last:
                            out.append(record)
                    if not fetched.get(tp):
                        end = (await consumer.end_offsets([tp]))[tp]
                        if position >= end:
                            break
        return out

    async def holds_marker(self, partition: int, epoch: Epoch, offset: int) -> bool | None:
        """Whether changelog partition ``partition`` holds the owner marker of ``epoch`` at ``offset``; None when
        that could not be read within :attr:`read_back_seconds`.

        A Redis fence names the marker of the owner that raised it (streams.sinks.redis_profiles). Markers have
        a key per epoch, so compaction keeps them: one missing from this changelog was written to an earlier
        one (the topic deleted and created again, or another app id), whose epochs say nothing about this one's.
        """
        topic = self.changelog_topic.get_topic_name()
        try:
            async with (
                asyncio.timeout(self.read_back_seconds),
                self._changelog_reader(topic, partition, "fence-check") as (consumer, tp),
            ):
                start = (await consumer.beginning_offsets([tp]))[tp]
                end = (await consumer.end_offsets([tp]))[tp]
                if offset < start:
                    return True  # deleted from the log's start (not by compaction, which keeps markers): trusted
                if offset >= end:
                    return False
                consumer.seek(tp, offset)
                while True:  # bounded by the timeout above
                    records = (await consumer.getmany(tp, timeout_ms=200, max_records=1)).get(tp)
                    if records:
                        first = records[0]
                        wanted = owner_marker(epoch, 0, "", None)[0]
                        return first.offset == offset and first.key == wanted
        except (TimeoutError, KafkaError) as exc:
            log.warning("changelog partition %d: offset %d not read to check a Redis fence: %r", partition, offset, exc)
            return None

    def persisted(self, results: Iterable[RecordMetadata]) -> None:
        """Remember the changelog offsets written (RocksDB reads from there after a restart).

        RocksDB gets the partition's view (this worker's epoch, the positions it sent last) in the same write
        batch as the offset: a recovery that starts at the offset starts from that view.
        """
        last: dict[TP, int] = {}
        for res in results:
            last[res.topic_partition] = max(res.offset, last.get(res.topic_partition, -1))
        store = self.data
        for tp, offset in last.items():
            epoch = self.writer_epoch.get(tp.partition)
            if isinstance(store, rocksdb_store.Store) and store.use_rocksdict:
                if epoch is None:
                    continue  # rebalanced meanwhile: the offset stays behind (read again), never ahead of its view
                view = PartitionView(
                    epoch, dict(self.changelog_positions(tp.partition)), logs=dict(self.changelog_logs(tp.partition))
                )
                batch = rocksdb_store.WriteBatch(raw_mode=True)
                batch.put(store.offset_key, str(offset).encode())
                batch.put(META_KEY, view.to_bytes())
                store._db_for_partition(tp.partition).write(batch)
            else:
                store.set_persisted_offset(tp, offset)

    def forget_persisted(self) -> None:
        """RocksDB: drop the persisted offsets of every open partition, so the next start recovers them whole.

        Called before a fail-stop of a worker the group dropped: its local store may hold states whose
        changelog records the next owners skip as stale, and recovery from the persisted offset would keep them.
        """
        store = self.data
        if not isinstance(store, rocksdb_store.Store):
            return
        for partition in sorted({*store._dbs, *range(self.partitions or 0)}):
            try:
                store._db_for_partition(partition).delete(store.offset_key)
            except Exception:  # noqa: BLE001 - exiting anyway; the next start reads from the offset it finds
                log.exception("could not drop the persisted offset of partition %d", partition)

    async def send_end_markers(
        self,
        partitions: set[int],
        positions: Mapping[int, Mapping[str, int]] | None = None,
        logs: Mapping[int, Mapping[str, InputLog]] | None = None,
    ) -> list[Awaitable[RecordMetadata]]:
        """A tombstone of :data:`END_MARKER_KEY` to each partition, to be sent alone.

        Tansu answers ListOffsets(latest) with the base offset of the last
        record batch + 1, so Faust's recovery, which reads the changelog up to
        that "highwater", skips the rest of the last batch. Once a checkpoint's
        records are acknowledged, a one-record batch per partition makes the
        reported end the true end. A tombstone deletes nothing and leaves no key.
        It carries the epoch and, when given, the partition's input positions
        (the next input offset per topic the changelog covers, streams.ownership) and input logs.
        """
        producer = self.app.producer
        topic = self.changelog_topic.get_topic_name()
        out = []
        for p in sorted(partitions):
            where = None if positions is None else positions.get(p)
            which = None if where is None or logs is None else logs.get(p)
            headers = epoch_headers(await self.epoch_for(p), where, which)
            if self.fence is not None:
                self.fence()
            out.append(self._tracked(await producer.send(topic, END_MARKER_KEY, None, p, None, headers)))
            if where is not None:
                self.sent_positions[p] = dict(where)
                self.sent_logs[p] = dict(which or {})
        return out

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        self.mark_recovered(active_tps)

    def mark_recovered(self, active_tps: Iterable[TP]) -> None:
        """These changelog partitions are read to their end: :meth:`recovered_positions` reports them."""
        self._recovered.update(tp.partition for tp in active_tps)

    def recovered_positions(self) -> dict[int, dict[str, int]]:
        """The input positions of the partitions recovered since the last call (then forgotten): what the seek
        after a recovery compares the committed offsets with (streams.offsets). Only then: before the recovery
        has read a kept partition's tail, its view is older than this worker's own last end markers."""
        out = {p: dict(self.changelog_positions(p)) for p in sorted(self._recovered)}
        self._recovered.clear()
        return out

    def changelog_logs(self, partition: int) -> dict[str, InputLog]:
        """The input logs the changelog of ``partition`` names (streams.ownership.InputLog), from the same end
        marker as :meth:`changelog_positions`."""
        if partition in self.sent_positions:
            return self.sent_logs.get(partition, {})
        view = self.views.get(partition)
        return {} if view is None else view.logs

    def changelog_positions(self, partition: int) -> dict[str, int]:
        """The input positions the changelog of ``partition`` holds: this worker's last end marker's, else the
        last one its recovery accepted."""
        sent = self.sent_positions.get(partition)
        if sent is not None:
            return sent
        view = self.views.get(partition)
        return {} if view is None else view.positions

    # --- recovery -------------------------------------------------------------------------------------------
    def begin_restore(self, tp: TP, start: int | None) -> None:
        """A recovery of ``tp`` starts after offset ``start`` (-1 or None: from the beginning).

        From the beginning the view is empty; RocksDB starting at its persisted offset reads the view stored with
        it; the memory store continues the view of its last recovery (it keeps a partition's data through a
        rebalance, and Faust goes on reading from where that recovery stopped).
        """
        partition = tp.partition
        store = self.data
        if start is None or start < 0:
            self.views[partition] = PartitionView()
        elif isinstance(store, rocksdb_store.Store):
            try:
                raw = store._db_for_partition(partition).get(META_KEY)
            except Exception:  # noqa: BLE001 - no meta (written before epochs): epoch 0
                raw = None
            self.views[partition] = PartitionView.from_bytes(raw)
        else:
            self.views.setdefault(partition, PartitionView())
        self.recovered_through[partition] = -1 if start is None else start
        self.writer_epoch.pop(partition, None)
        self.sent_positions.pop(partition, None)
        self.sent_logs.pop(partition, None)

    def _accepted(self, tp: TP, records: Sequence[Any]) -> list[Any]:
        """The records of one partition that recovery applies (streams.ownership), in offset order."""
        view = self.views.setdefault(tp.partition, PartitionView())
        before = skipped = view.skipped
        accepted = []
        repair = self.repair_keys.get(tp.partition)
        for r in records:
            if view.accept(r.key, r.value, r.headers):
                accepted.append(r)
                if repair:
                    repair.discard(r.key)  # a record of the epoch after it: no longer the customer's newest
            elif view.skipped > skipped:
                skipped = view.skipped
                if not r.key.startswith(RESERVED_PREFIX):
                    # a stale record as a customer's newest: its owner writes the state again (repair)
                    repair = self.repair_keys.setdefault(tp.partition, set())
                    repair.add(r.key)
        if records:
            self.recovered_through[tp.partition] = records[-1].offset
        if view.skipped > before:
            metrics.CHANGELOG_STALE_RECORDS_SKIPPED.inc(view.skipped - before)
            if tp.partition not in self._stale_logged:
                self._stale_logged.add(tp.partition)
                log.warning(
                    "changelog partition %d: %d record(s) below the epoch %d.%d skipped (late writes of a worker "
                    "the group had dropped); logged once per partition",
                    tp.partition,
                    view.skipped - before,
                    *view.epoch,
                )
        return accepted

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        """Faust's own recovery path, with the same filter as :meth:`restore_records`."""
        by_tp: dict[TP, list[Any]] = defaultdict(list)
        for event in batch:
            by_tp[event.message.tp].append(event.message)
        for tp, messages in by_tp.items():
            if self.can_restore_in_bulk():
                self.restore_records(tp, messages)
            else:
                keep = {id(m) for m in self._accepted(tp, messages)}
                super().apply_changelog_batch([e for e in batch if id(e.message) in keep])  # type: ignore[attr-defined]

    def can_restore_in_bulk(self) -> bool:
        """Whether :meth:`restore_records` can write to this table's store (RocksDB or memory)."""
        store = self.data
        if self._on_changelog_event is not None:
            return False
        return isinstance(store, memory_store.Store) or (isinstance(store, rocksdb_store.Store) and store.use_rocksdict)

    def restore_records(self, tp: TP, records: Sequence[Any]) -> None:
        """Apply changelog records of one partition, in offset order, as Faust's recovery applies them.

        The same writes as the stores' ``apply_changelog_batch`` without a
        Faust event per record: a value is stored under its key, a tombstone
        deletes the key; owner and end markers and records of a stale epoch
        are not stored (streams.ownership). RocksDB gets one write batch per
        call that also records the last offset (what Faust's
        ``set_persisted_offset`` writes, here atomically with the values) and
        the partition's view at that offset.
        """
        if not records:
            return
        accepted = self._accepted(tp, records)
        store = self.data
        if isinstance(store, rocksdb_store.Store):
            batch = rocksdb_store.WriteBatch(raw_mode=True)
            for record in accepted:
                if record.value is None:
                    batch.delete(record.key)
                else:
                    batch.put(record.key, record.value)
            batch.put(store.offset_key, str(records[-1].offset).encode())
            batch.put(META_KEY, self.views[tp.partition].to_bytes())
            store._db_for_partition(tp.partition).write(batch)
        else:
            data, partitions = store.data, store._key_partition  # type: ignore[attr-defined]  # our memory store
            for record in accepted:
                if record.value is None:
                    data.pop(record.key, None)
                    partitions.pop(record.key, None)
                else:
                    data[record.key] = record.value
                    partitions[record.key] = tp.partition


#: what a recovery step may raise that Faust's recovery loop handles itself: another rebalance, a stop
RECOVERY_SIGNALS: tuple[type[Exception], ...] = (RebalanceAgain, ServiceStopped, IllegalStateError)


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

    #: read in bulk (PULSE_RECOVERY_BULK_READ); off: Faust reads everything, through the same epoch filter
    bulk: bool = True
    #: revocations seen so far (a count), the count when the last assignment came, and when the last seek before
    #: resuming the flow finished
    revocations: int = 0
    assigned_at: int = 0
    resumed_at: int | None = None

    def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.revocations += 1
        super().on_partitions_revoked(revoked)

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        self.note_assigned()
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    def note_assigned(self) -> None:
        """An assignment came: the recovery that follows resumes the flow only if no revocation comes after it
        (:meth:`revoked_while_resuming`)."""
        self.assigned_at = self.revocations

    def seeking_to_resume(self) -> bool:
        """The caller runs inside the seek that comes before the stream partitions are resumed (Faust's
        ``on_recovery_completed`` or ``_resume_streams``), not in the seek Faust's fetch loop makes when it
        fetched while the flow was stopped (streams.offsets)."""
        return RESUME_SEEK.get() is not None

    def revoked_while_resuming(self) -> bool:
        """Partitions were revoked since the assignment the resume whose seek calls this belongs to
        (``on_recovery_completed``, ``_resume_streams``: streams.faust_fixes): another rebalance is on.

        Why: Faust checks the generation, awaits the seek to the committed offsets, then resumes the flow. A
        revocation after the assignment (during the recovery, or during that seek: the offset guard reads the
        input logs back there, streams.offsets) leaves the generation as it was until the next assignment, so
        the flow was resumed in the middle of a rebalance, and stayed on through the next assignment's recovery:
        a chaos run on Kafka (session 29) scored a batch of the next generation's partitions before their
        recovery, from a table not read to its end, and published 5 alert ids with a second content; one on
        Tansu with workers frozen past their session (session 30: the revocation came 0.06 s after the
        assignment, before its resume began) 182, and two workers crashed on the population index. The seek raises
        ``RebalanceAgain`` instead (streams.offsets), and the next recovery resumes the flow. (Session 29 set this
        only around ``_resume_streams``, which apps with tables do not take, and from the resume's start.)"""
        start = RESUME_SEEK.get()
        return start is not None and self.revocations != start

    def resumed_since_revoked(self) -> bool:
        """A seek before resuming the flow finished since the last revocation: a seek from the fetch loop now
        would move the kept partitions back to their committed offsets, undoing that seek's rewinds."""
        return self.resumed_at == self.revocations

    def note_resume_seek(self) -> None:
        self.resumed_at = RESUME_SEEK.get()

    #: called with why (and the error) when a recovery step outlives its timeout or fails (a class attribute:
    #: tests replace it)
    on_step_failed: Callable[..., Any] = staticmethod(fail_stop)

    async def _wait(self, coro: Any, timeout: Seconds | None = None) -> None:
        """Faust's ``Recovery._wait``: await one step of the recovery, or raise ``RebalanceAgain`` if a new
        rebalance starts first; and, unlike upstream, a step that outlives ``timeout`` fail-stops the worker.

        Why: upstream's ``wait_first`` reports a timeout as the service stopped, and ``_restart_recovery`` then
        leaves its loop for good ("service was stopped", at debug level). The worker keeps its partitions with
        its flow suspended and reads nothing more, for ever, with no warning (a cause that fits a CI run of
        tests/faults/test_replicated_kafka.py, where a worker stayed idle for 180 s after the group's
        coordinator was killed during its recovery, session 27; not reproduced here). The steps with a timeout
        (the offsets and highwaters read before the changelogs, the seek to the committed offsets) are broker
        requests bounded by ``broker_request_timeout``; one that outlives it waits on something that will not
        come. The fail-stop logs the chain of awaits the step is suspended in; the supervisor's next worker
        recovers from the changelog, and nothing was committed meanwhile.

        A step that raises anything but the recovery's own signals (another rebalance, a stop) fail-stops too.
        Upstream lets it crash the recovery service, and Faust then stops the whole worker, a stop that waits on
        the broker: a worker whose seek after recovery met a broker killed at that instant (the offset guard's
        read-back could not bootstrap) crashed and then hung in its consumer thread's stop, alive and reading
        nothing (session 32, the broker-restart test under load)."""
        step = asyncio.ensure_future(coro if isinstance(coro, Awaitable) else coro.wait())
        try:
            # shielded: wait_first cancels what did not finish, and the chain of a step that timed out is wanted
            result = await self.wait_first(asyncio.shield(step), self.signal_recovery_start, timeout=timeout)  # type: ignore[arg-type]
        except Exception as error:  # the step's own (wait_first re-raises it)
            step.cancel()
            if isinstance(error, RECOVERY_SIGNALS):
                raise
            self.on_step_failed(f"a recovery step failed: {error!r}", error)
            raise ServiceStopped() from error  # reached only if on_step_failed returns (the tests')
        except BaseException:
            step.cancel()
            raise
        if result.stopped:
            if not step.done() and not self.should_stop and timeout is not None:
                limit = want_seconds(timeout)
                self.on_step_failed(f"a recovery step outlived broker_request_timeout ({limit:g} s): {awaiting(step)}")
            step.cancel()
            raise ServiceStopped()
        if self.signal_recovery_start in result.done:
            step.cancel()
            raise RebalanceAgain()

    async def _resume_streams(self, generation_id: int = 0) -> None:
        """Nothing left to read (no recovery needed): the partitions' views are complete, so the seek that follows
        compares their positions with the committed offsets as after a recovery."""
        for tp in self.active_tps:
            table = self.tp_to_table.get(tp)
            if isinstance(table, CustomerStateTable):
                table.mark_recovered({tp})
        await super()._resume_streams(generation_id)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        await self._claim(generation_id)
        await super().on_recovery_completed(generation_id)

    async def _claim(self, generation_id: int) -> None:
        """Each table's owner markers of its active partitions, before the seek that resumes their input
        (:meth:`CustomerStateTable.claim`): what the seek compares with the committed offsets, and what the
        partition's first batch is scored on, then include every record written before the markers.

        A step of the recovery like the others (:meth:`_wait`): a new rebalance abandons it, a failure
        fail-stops. The group moving on while a marker was in flight is such a rebalance, not a failure."""
        if self.app.consumer_generation_id != generation_id:
            return  # Faust's next step sees it and leaves this recovery for the next one
        for table in self.tables.values():
            if not isinstance(table, CustomerStateTable):
                continue
            partitions = {tp.partition for tp in self.actives_for_table.get(table, ())}
            await self._wait(self._claim_step(table, partitions), self.app.conf.broker_request_timeout)

    async def _claim_step(self, table: CustomerStateTable, partitions: set[int]) -> None:
        try:
            await table.claim(partitions)
        except GenerationLost:
            if generation_lost(assigned_generation(self.app), coordinator_generation(self.app)):
                raise RebalanceAgain() from None  # the fence: the group moved on, the next assignment recovers
            raise  # a stale assignment the coordinator did not confirm (CustomerStateTable.epoch_for)

    async def _build_offsets(self, consumer: Any, tps: set[TP], destination: Any, title: str) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if destination is self.active_offsets:
            for tp in tps:
                table = self.tp_to_table.get(tp)
                if isinstance(table, CustomerStateTable):
                    table.begin_restore(tp, self.active_offsets.get(tp))
        if destination is self.active_offsets and self.bulk:
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
    """The App's ``TableManager``: bulk changelog reads unless ``PULSE_RECOVERY_BULK_READ`` is off (the
    ownership epochs of the changelog are tracked either way)."""
    recovery = type(
        "PulseBulkRecovery",
        (BulkRecovery,),
        {
            "client_kwargs": kafka_client_kwargs(settings),
            "fetch_bytes": settings.recovery_fetch_bytes,
            "bulk": settings.recovery_bulk_read,
        },
    )
    return type("PulseTableManager", (BulkRecoveryTableManager,), {"recovery_class": recovery})
