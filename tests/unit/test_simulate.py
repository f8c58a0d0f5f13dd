from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from pulse.simulate import MIX, generate_events
from schemas.events import Kind, decode_event


def test_generated_traffic_is_valid_sorted_deterministic_and_in_the_mix():
    end = datetime(2026, 1, 1, tzinfo=UTC)
    events = generate_events(400, 365, seed=5, end=end)
    assert events == generate_events(400, 365, seed=5, end=end)
    times = [e["occurred_at"] for _, e in events]
    assert times == sorted(times)
    for kind, event in events:
        decode_event(Kind(kind), orjson.dumps(event), 65536)  # raises if invalid
    counts = Counter(kind for kind, _ in events)
    for kind, share in MIX.items():
        assert counts[kind] / len(events) == pytest.approx(share, abs=0.02)
    assert len({e["event_id"] for _, e in events}) == len(events)
