"""Turn one batch of raw Kafka records into state updates, dead letters and profiles.

No Faust and no I/O here: the agent hands in raw records and a way to load a
customer's state, and gets back everything the checkpoint must make durable.
That keeps the whole validate → de-duplicate → score path testable with plain
function calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from pulse.settings import Settings
from schemas.dead_letter import DeadLetter
from schemas.events import (
    ComplaintEvent,
    CustomerEvent,
    EventRejected,
    Kind,
    OrderEvent,
    OrderStatus,
    Reason,
    SupportEvent,
    SurveyEvent,
    decode_event,
)
from schemas.profile import CustomerProfile
from scoring.customer import CustomerState, ScoredEvent, apply_event
from scoring.orders import OrderFact, to_cents
from scoring.service import TicketFact
from scoring.voice import ComplaintFact, SurveyFact


@dataclass(frozen=True, slots=True)
class Incoming:
    """One consumed record, as read from Kafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Rejected:
    kind: str
    reason: str
    record: bytes  # DeadLetter JSON
    key: bytes | None


@dataclass(slots=True)
class BatchOutcome:
    #: customer key -> updated state (only customers whose state changed)
    states: dict[bytes, CustomerState] = field(default_factory=dict)
    profiles: list[CustomerProfile] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    #: valid events whose record key is not their customer id: re-produced
    #: under the right key (topic, key, value) so they reach the right partition
    rerouted: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    #: (kind, outcome) -> count, for metrics
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, kind: str, outcome: str) -> None:
        self.counts[(kind, outcome)] = self.counts.get((kind, outcome), 0) + 1


class BatchProcessor:
    """Validates, de-duplicates and scores batches; owns the event-time clock of the worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kind_by_topic = {topic: Kind(kind) for kind, topic in settings.input_topics().items()}
        self.config = settings.scoring()
        self.rates = settings.currency_rates()
        #: the scorer's clock: highest event time seen (spec: Clock)
        self.watermark_ms: int | None = None

    def process(self, batch: Sequence[Incoming], load: Callable[[bytes], CustomerState]) -> BatchOutcome:
        out = BatchOutcome()
        for record in batch:
            kind = self.kind_by_topic[record.topic]
            try:
                event = decode_event(kind, record.value or b"", self.settings.max_event_bytes)
                scored = self._to_scored(event, record.offset)
            except EventRejected as exc:
                out.rejected.append(self._reject(record, kind, exc))
                out.count(kind, "dead_lettered")
                continue
            key = event.customer_id.encode()
            if record.key != key:
                out.rerouted.append((record.topic, key, record.value or b""))
                out.count(kind, "rerouted")
                continue
            state = out.states.get(key)
            if state is None:
                state = load(key)
            applied = apply_event(state, scored, self.config)
            out.count(kind, "scored" if applied else "duplicate")
            # A replayed duplicate still counts for the clock and still gets its
            # state and profile written: after a crash between the changelog
            # and Redis, the replay is what brings the profile up to date.
            if self.watermark_ms is None or scored.occurred_ms > self.watermark_ms:
                self.watermark_ms = scored.occurred_ms
            out.states[key] = state
        if out.states and self.watermark_ms is not None:
            currency = self.settings.base_currency.upper()
            out.profiles = [
                CustomerProfile.from_state(key.decode(), state, self.watermark_ms, self.config, currency)
                for key, state in out.states.items()
            ]
        return out

    def _to_scored(self, event: CustomerEvent, offset: int) -> ScoredEvent:
        at = event.occurred_ms
        facts: dict[str, object] = {}
        if isinstance(event, OrderEvent):
            rate = self.rates.get(event.currency)
            if rate is None:
                raise EventRejected(
                    Reason.UNSUPPORTED_CURRENCY, f"currency: no rate for {event.currency} (see PULSE_FX_RATES)"
                )
            facts["order"] = OrderFact(
                occurred_ms=at,
                amount_cents=to_cents(event.amount, rate),
                cost_cents=None if event.cost is None else to_cents(event.cost, rate),
                refunded=event.status is OrderStatus.REFUNDED,
            )
        elif isinstance(event, SurveyEvent):
            facts["survey"] = SurveyFact(at, event.nps, event.csat)
        elif isinstance(event, ComplaintEvent):
            facts["complaint"] = ComplaintFact(at, event.severity.value)
        elif isinstance(event, SupportEvent):
            facts["ticket"] = TicketFact(at, event.ticket_id, event.kind.value)
        return ScoredEvent(kind=event.KIND.value, event_id=event.event_id, occurred_ms=at, offset=offset, **facts)

    def _reject(self, record: Incoming, kind: str, exc: EventRejected) -> Rejected:
        payload, encoding, truncated = DeadLetter.render_payload(record.value, self.settings.dead_letter_payload_bytes)
        letter = DeadLetter(
            reason=exc.reason.value,
            detail=exc.detail,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=None if record.key is None else record.key.decode("utf-8", "backslashreplace"),
            payload=payload,
            payload_encoding=encoding,
            payload_bytes=len(record.value or b""),
            payload_truncated=truncated,
            rejected_at=datetime.now(UTC),
        )
        return Rejected(
            kind=kind, reason=exc.reason.value, record=orjson.dumps(letter.model_dump(mode="json")), key=record.key
        )
