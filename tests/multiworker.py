"""Several "workers" (processors) in one process, each owning some partitions: the property tests'
stand-in for a multi-worker deployment, without Kafka."""

from __future__ import annotations

from collections.abc import Iterator

from scoring.customer import CustomerState
from streams.processor import BatchOutcome, BatchProcessor, Incoming

#: records per batch: small, so that batches interleave customers and partitions
CHUNK = 5


def feed_workers(
    processors: list[BatchProcessor],
    stores: list[dict[bytes, CustomerState]],
    batches: list[list[Incoming]],
    owner: dict[int, int],
    chunk: int = CHUNK,
) -> Iterator[BatchOutcome]:
    """Each worker takes its owned partitions, then processes its own records in batches of ``chunk``."""
    for w, processor in enumerate(processors):
        for p, o in owner.items():
            if o == w:
                processor.population.partition(p)
        store = stores[w]
        for start in range(0, len(batches[w]), chunk):
            out = processor.process(batches[w][start : start + chunk], lambda k, s=store: s.get(k) or CustomerState())
            store.update(out.states)
            yield out
