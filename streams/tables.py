"""The changelog-backed per-customer state table."""

from __future__ import annotations

from typing import Any

import faust
from faust.types import CodecArg
from faust.types.tuples import FutureMessage

#: Key of the checkpoint end markers. Customer ids cannot start with NUL
#: (schemas.events.ID_PATTERN), so it never names a customer.
END_MARKER_KEY = b"\x00pulse-checkpoint-end"


class CustomerStateTable(faust.Table):
    """A Faust table that hands out the futures of its changelog writes.

    Faust sends changelog records through a producer buffer and commits
    offsets after ``producer.flush()``, but that flush can return while
    records are still buffered, and a stopping app commits before it flushes.
    The checkpoint therefore awaits these futures itself: an event's offset is
    acknowledged only once its state change is acknowledged by the broker.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unflushed: list[FutureMessage] = []

    def send_changelog(
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: CodecArg | None = None,
        value_serializer: CodecArg | None = None,
    ) -> FutureMessage:
        fut = super().send_changelog(partition, key, value, key_serializer, value_serializer)
        self.unflushed.append(fut)
        return fut

    def take_unflushed(self) -> list[FutureMessage]:
        futs, self.unflushed = self.unflushed, []
        return futs

    def send_end_markers(self, partitions: set[int]) -> list[FutureMessage]:
        """A tombstone of :data:`END_MARKER_KEY` to each partition, to be sent alone.

        Tansu answers ListOffsets(latest) with the base offset of the last
        record batch + 1, so Faust's recovery, which reads the changelog up to
        that "highwater", skips the rest of the last batch. Once a checkpoint's
        records are acknowledged, a one-record batch per partition makes the
        reported end the true end. A tombstone deletes nothing and leaves no key.
        """
        for partition in sorted(partitions):
            self.send_changelog(partition, END_MARKER_KEY, None, value_serializer="raw")
        return self.take_unflushed()
