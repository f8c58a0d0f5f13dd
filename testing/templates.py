"""Realistically scored customer states to clone into large populations (benchmarks' cost phase, and tests of
the state codec, the profile fields and the Redis sink): a year of the generated four-kind mix, scored by the
worker's own processor (``pulse.offline.score_records``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson


@dataclass
class Templates:
    """Scored states of a generated history: the shapes cloned into large populations."""

    states: list[Any]  # CustomerState, partition 0
    clock_ms: int
    #: template index -> partition -> (encoded state, decoded state) with that partition
    variants: list[list[tuple[bytes, Any]]] = field(default_factory=list)

    def variant(self, partitions: int) -> list[list[tuple[bytes, Any]]]:
        from streams.codec import decode_state, encode_state

        if not self.variants or len(self.variants[0]) != partitions:
            self.variants = []
            for state in self.states:
                row = []
                for p in range(partitions):
                    state.partition = p
                    raw = encode_state(state)
                    row.append((raw, decode_state(raw)))
                self.variants.append(row)
        return self.variants


_TEMPLATES: dict[tuple[int, int], Templates] = {}


def template_states(customers: int, seed: int) -> Templates:
    """A year of the four-kind mix for ``customers`` customers, scored by the worker's own processor."""
    key = (customers, seed)
    if key not in _TEMPLATES:
        from pulse.offline import score_records
        from pulse.simulate import generate_events
        from pulse_config.settings import Settings

        settings = Settings(_env_file=None)
        topics = settings.input_topics()
        events = generate_events(customers, 365, seed=seed)
        records = [(topics[kind], e["customer_id"].encode(), orjson.dumps(e)) for kind, e in events]
        result = score_records(records, settings)
        clock = max(int(datetime.fromisoformat(e["occurred_at"]).timestamp() * 1000) for _, e in events)
        _TEMPLATES[key] = Templates(list(result.states.values()), clock)
    return _TEMPLATES[key]
