"""Score a history without Kafka: the worker's own processor, fed from memory.

``pulse score`` and the tests use this to get what a worker ends with: the
same validation, de-duplication, scorers and population, one partition, then a
final sweep so every profile is scored against the final population at the
final clock (what a live worker reaches once its sweep has gone round).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pulse_config.clv_params import load_clv_params
from pulse_config.settings import Settings
from schemas.profile import CustomerProfile, RenderedProfile
from scoring.customer import CustomerState
from streams.processor import BatchOutcome, BatchProcessor, Incoming, Rejected

#: (topic, key, value) as it would be produced to Kafka
RawRecord = tuple[str, bytes | None, bytes | None]


@dataclass
class OfflineResult:
    profiles: dict[str, CustomerProfile] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    vip_changes: list[bytes] = field(default_factory=list)
    states: dict[bytes, CustomerState] = field(default_factory=dict)


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
    if wall_ms is None:
        wall_ms = int(time.time() * 1000)
    processor = BatchProcessor(settings.processor(load_clv_params(settings.clv_params_file)))
    result = OfflineResult()
    store = result.states
    offsets: dict[str, int] = {}
    written: dict[str, RenderedProfile] = {}

    def load(key: bytes) -> CustomerState:
        return store.get(key) or CustomerState()

    def take(out: BatchOutcome) -> None:
        store.update(out.states)
        written.update({p.customer_id: p for p in out.profiles})
        result.rejected += out.rejected
        result.vip_changes += [value for _, _, value in out.vip_changes]

    pending: list[RawRecord] = list(records)
    size = settings.batch_max_events
    while pending:
        rerouted: list[RawRecord] = []
        for start in range(0, len(pending), size):
            batch = []
            for topic, key, value in pending[start : start + size]:
                offsets[topic] = offsets.get(topic, -1) + 1
                batch.append(Incoming(topic, 0, offsets[topic], key, value))
            out = processor.process(batch, load, wall_ms)
            take(out)
            rerouted += out.rerouted
        pending = rerouted
    if final_sweep and processor.population.local:
        take(processor.sweep_whole(0, load))
    result.profiles = {cid: profile.model() for cid, profile in written.items()}
    return result
