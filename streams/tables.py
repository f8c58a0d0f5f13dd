"""The changelog-backed per-customer state table."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable

import faust
from faust.streams import _current_event
from faust.types import EventT
from faust.types.tuples import RecordMetadata

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

    async def on_rebalance(self, assigned, revoked, newly_assigned, generation_id: int = 0) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        if self.on_rebalanced is not None:
            self.on_rebalanced()

    async def write_states(self, items: Iterable[tuple[bytes, bytes, EventT]]) -> list[asyncio.Future]:
        """Store each (key, value) and send its changelog record straight to the producer.

        The event is one of the customer's own events of the batch: inputs and
        table are co-partitioned by customer id, so its partition is the key's
        partition, both for the changelog record and for the RocksDB store
        (which files a key under the partition of the current event). Unlike
        ``table[key] = value``, records skip Faust's producer buffer (one
        ``publish_message`` per record, a 100-record cap).
        """
        producer = self.app.producer
        topic = self.changelog_topic.get_topic_name()
        futures: list[asyncio.Future] = []
        try:
            for key, value, event in items:
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

    async def send_end_markers(self, partitions: set[int]) -> list[asyncio.Future]:
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
