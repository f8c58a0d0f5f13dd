"""Live traffic made of a generated history (``pulse.simulate.generate_events``): what the benchmarks (``pulse
bench``'s latency, cost and recovery phases, benchmarks/processor_cost.py) send as "now"."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_now() -> str:
    """The wall clock as an event's ``occurred_at``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def live_event(template: tuple[str, dict], n: int) -> tuple[str, dict]:
    """A generated event of the mix as live traffic: new ids, occurring now."""
    kind, event = template
    event = {**event, "event_id": f"live-{n}", "occurred_at": iso_now()}
    for id_field in ("order_id", "complaint_id", "ticket_id"):
        if id_field in event:
            event[id_field] = f"L{event[id_field]}"
    return kind, event
