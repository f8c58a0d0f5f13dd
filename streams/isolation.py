"""No poison pill: a record whose processing raises is isolated, retried a bounded number of times, then
dead-lettered as ``processing_error``; every other record of its batch is applied exactly once.

Faust-free like the processor. Why this works: while it scores a batch, the processor changes only its
in-memory population view (rank counts, due times, watermarks) and fresh copies of the states it loads;
the table is written by the checkpoint afterwards. So when :meth:`BatchProcessor.process` raises, nothing
durable happened: the population of the batch's partitions is dropped and rebuilt from the table
(``rebuild``), and the batch is processed again one record at a time, each piece committed before the
next is processed (the next piece loads the states it wrote, and a later rebuild counts them). A record
that still raises after ``retries`` more tries (each after a rebuild) becomes a dead letter with the
exception text. The invariant checks that raise (e.g. the rank counts of ``scoring/rank.py``) stay: they
now cost one record, not the partition.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from scoring.customer import CustomerState
from streams.processor import BatchOutcome, BatchProcessor, Incoming, TopicPartitionKey

log = logging.getLogger(__name__)

#: commit(outcome, indexes of the batch's records it covers): make it durable (the agent's checkpoint)
Commit = Callable[[BatchOutcome, Sequence[int]], Awaitable[None]]


async def process_contained(
    processor: BatchProcessor,
    batch: Sequence[Incoming],
    load: Callable[[bytes], CustomerState],
    wall_ms: int | None,
    rebuild: Callable[[set[int]], None],
    commit: Commit,
    retries: int,
    on_failure: Callable[[Incoming, BaseException, bool], None] | None = None,
    ends: Mapping[TopicPartitionKey, int | None] | None = None,
    starts: Mapping[TopicPartitionKey, int] | None = None,
) -> int:
    """Process and commit ``batch``; returns how many records were dead-lettered as ``processing_error``.

    ``rebuild(partitions)``: forget the population of ``partitions`` and count it again from the table.
    ``on_failure(record, exc, final)``: each failed try of a record (``final``: it is dead-lettered now).
    ``ends``, ``starts``: the input positions for the per-partition clock (see :meth:`BatchProcessor.process`).
    """
    try:
        outcome = processor.process(batch, load, wall_ms, ends, starts)
    except Exception as exc:  # noqa: BLE001 - isolated below
        log.warning(
            "batch of %d records raised %r: re-processing it record by record to isolate the cause", len(batch), exc
        )
        rebuild({record.partition for record in batch})
    else:
        await commit(outcome, range(len(batch)))
        return 0
    dead = 0
    for i, record in enumerate(batch):
        error: BaseException | None = None
        for attempt in range(retries + 1):
            try:
                outcome = processor.process([record], load, wall_ms, ends, starts)
            except Exception as exc:  # noqa: BLE001 - bounded retries, then a dead letter
                error = exc
                final = attempt == retries
                if on_failure is not None:
                    on_failure(record, exc, final)
                rebuild({record.partition})
                continue
            error = None
            break
        if error is not None:
            outcome = processor.quarantine(record, error)
            dead += 1
            log.error(
                "%s[%d]@%d raised on %d tries, dead-lettered as processing_error: %r",
                record.topic,
                record.partition,
                record.offset,
                retries + 1,
                error,
                exc_info=error,  # the one traceback of a poison record: what its fix needs
            )
        await commit(outcome, [i])
    return dead
