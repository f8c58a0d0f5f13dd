"""Score a history without Kafka: the worker's own processor, fed from memory.

``pulse score`` and the tests use this to get what a worker ends with: the
same validation, de-duplication, scorers and population, one partition, then a
final sweep so every profile is scored against the final population at the
final clock (what a live worker reaches once its sweep has gone round).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Generic, TypeVar

import orjson

from pulse_config.clv_params import load_clv_params
from pulse_config.settings import Settings
from schemas.profile import CustomerProfile, RenderedProfile
from scoring.customer import CustomerState
from streams.processor import BatchOutcome, BatchProcessor, Incoming, Rejected

#: (topic, key, value) as it would be produced to Kafka
RawRecord = tuple[str, bytes | None, bytes | None]
#: where a record came from (``pulse score``: file and line), handed back with its rejection
Origin = TypeVar("Origin")


@dataclass
class OfflineResult:
    profiles: dict[str, CustomerProfile] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    vip_changes: list[bytes] = field(default_factory=list)
    states: dict[bytes, CustomerState] = field(default_factory=dict)
    #: records read (a re-keyed one, fed again, counts once)
    records: int = 0


@dataclass(frozen=True, slots=True)
class Located(Generic[Origin]):
    """A record with where it came from."""

    topic: str
    key: bytes | None
    value: bytes | None
    origin: Origin


def score_records(
    records: Iterable[RawRecord], settings: Settings, final_sweep: bool = True, wall_ms: int | None = None
) -> OfflineResult:
    """Run ``records`` through one uninterrupted processor in batches of ``batch_max_events``.

    Re-keyed events are fed again after the pass, as the worker's re-publish
    makes them arrive again. Profiles are the last written per customer, read
    back from the fields the worker writes to Redis (as a Redis reader gets them).

    ``wall_ms`` (default: now, when the file is scored) is the wall clock of ``too_early``: a history cannot
    hold events from after it was written, so an event more than ``max_earliness_seconds`` after the run is
    rejected with that reason, as a worker would. ``PULSE_MAX_EARLINESS_SECONDS=0`` turns the check off.
    """
    result_rejected: list[Rejected] = []
    result = score_stream(
        (Located(topic, key, value, None) for topic, key, value in records),
        settings,
        on_rejected=lambda rejected, _origin: result_rejected.append(rejected),
        final_sweep=final_sweep,
        wall_ms=wall_ms,
        keep_vip_changes=True,
    )
    result.rejected = result_rejected
    return result


def score_stream(
    records: Iterable[Located[Origin]],
    settings: Settings,
    on_rejected: Callable[[Rejected, Origin | None], None],
    final_sweep: bool = True,
    wall_ms: int | None = None,
    keep_vip_changes: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> OfflineResult:
    """:func:`score_records` on a stream: read one batch at a time, so memory holds the customers' states and
    profiles but not the input (``pulse score`` on a file of any length).

    Each rejection is handed to ``on_rejected`` with the origin of its record (None for a rejection without
    one, e.g. of a re-keyed record fed again); ``on_batch`` gets the number of records of each batch fed.
    """
    if wall_ms is None:
        wall_ms = int(time.time() * 1000)
    processor = BatchProcessor(settings.processor(load_clv_params(settings.clv_params_file)))
    result = OfflineResult()
    store = result.states
    offsets: dict[str, int] = {}
    written: dict[str, RenderedProfile] = {}

    def load(key: bytes) -> CustomerState:
        return store.get(key) or CustomerState()

    def take(out: BatchOutcome, origins: dict[tuple[str, int], Origin]) -> None:
        store.update(out.states)
        written.update({p.customer_id: p for p in out.profiles})
        for rejected in out.rejected:
            letter = orjson.loads(rejected.record)
            on_rejected(rejected, origins.get((letter.get("source_topic"), letter.get("offset"))))
        if keep_vip_changes:
            result.vip_changes += [value for _, _, value in out.vip_changes]

    size = settings.batch_max_events
    pending: Iterable[Located[Origin]] = records
    while True:
        rerouted: list[Located[Origin]] = []
        stream = iter(pending)
        while chunk := list(islice(stream, size)):
            batch = []
            origins: dict[tuple[str, int], Origin] = {}
            by_value: dict[tuple[str, bytes | None], Origin] = {}
            for record in chunk:
                offsets[record.topic] = offset = offsets.get(record.topic, -1) + 1
                batch.append(Incoming(record.topic, 0, offset, record.key, record.value))
                origins[(record.topic, offset)] = by_value[(record.topic, record.value)] = record.origin
            out = processor.process(batch, load, wall_ms)
            take(out, origins)
            result.records += len(chunk)
            if on_batch is not None:
                on_batch(len(chunk))
            # a re-keyed record keeps its origin (its value is the record's own bytes)
            for topic, key, value in out.rerouted:
                rerouted.append(Located(topic, key, value, by_value.get((topic, value))))  # type: ignore[arg-type]  # found: its value is an input record's bytes
        if not rerouted:
            break
        pending = rerouted
        result.records -= len(rerouted)  # fed again: counted once
    if final_sweep and processor.population.local:
        take(processor.sweep_whole(0, load), {})
    result.profiles = {cid: profile.model() for cid, profile in written.items()}
    return result
