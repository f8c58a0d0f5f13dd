"""One customer's whole scoring state, and the de-duplication that guards it.

The state carries its own de-duplication memory so that it is written to the
changelog atomically with the scores it protects:

* ``source_offsets``: the last applied offset per input stream. A customer's
  events of one stream all sit in one partition, in offset order, so an event
  at or below that offset was already applied: a redelivery after a crash or a
  rebalance is dropped exactly, whatever its age.
* ``recent_ids``: hashes of the last ``dedup_event_ids`` event ids, which drop a
  duplicate the *producer* sent twice (same event_id at another offset) when it
  is among the customer's recent events.
* ``source_offsets["<kind>@<partition>"]``: for records the worker re-published
  from another partition (mis-keyed or misplaced), the last applied offset they
  were first read at there. A replay publishes such a record again; every copy
  of an earlier origin reaches the customer's partition after the first copy
  of it, so a copy at or below that offset was applied (or dropped) already,
  however many of the customer's events came in between.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import TYPE_CHECKING, TypeAlias

import msgspec

from scoring.churn import ChurnAssessment, ChurnConfig, ChurnInputs, ChurnState, assess
from scoring.clv import ClvConfig, ClvSignals, PurchaseDays, clv_signals, record_purchase
from scoring.episodes import EpisodeConfig, EpisodeState, PendingAction, on_purchase, record_action
from scoring.frozen import Value
from scoring.indicators import Contribution, IndicatorConfig, contribution
from scoring.orders import OrderFact, OrderScoringConfig, OrderState, apply_order
from scoring.rfm import RfmConfig
from scoring.state import State
from scoring.tickets import ServiceConfig, ServiceState, TicketFact, apply_ticket_event
from scoring.units import DAY_MS
from scoring.voice import ComplaintFact, SurveyFact, VoiceConfig, VoiceState, apply_complaint, apply_survey


def event_id_hash(event_id: str) -> int:
    """Stable 64-bit hash (Python's hash() differs between processes): the first 8 bytes of BLAKE2b-64 as a
    signed big-endian integer. A copy of an empty hasher and ``struct`` instead of a keyword constructor and
    ``int.from_bytes``: the same value at 4,700 instead of 6,700 instructions (once per event, issue 18)."""
    hasher = _BLAKE2B_64.copy()
    hasher.update(event_id.encode())
    value: int = _SIGNED_64(hasher.digest())[0]
    return value


_BLAKE2B_64 = blake2b(digest_size=8)
_SIGNED_64 = struct.Struct(">q").unpack

if TYPE_CHECKING:
    IdHashes: TypeAlias = array[int]
else:
    #: the recent event ids' hashes (``CustomerState.recent_ids``): signed 64-bit integers in an ``array("q")``,
    #: whose bytes are the changelog's (streams/codec.py: 8 bytes each, little-endian, in one MessagePack bin)
    IdHashes = array


def no_id_hashes() -> IdHashes:
    """An empty ``recent_ids``."""
    return array("q")


#: the ``source_offsets`` key of the retention-actions topic
ACTION = "action"


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    """Everything the per-customer scorers are configured with (built from settings)."""

    orders: OrderScoringConfig = field(default_factory=OrderScoringConfig)
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    rfm: RfmConfig = field(default_factory=RfmConfig)
    clv: ClvConfig = field(default_factory=ClvConfig)
    churn: ChurnConfig = field(default_factory=ChurnConfig)
    indicators: IndicatorConfig = field(default_factory=IndicatorConfig)
    dedup_event_ids: int = 32
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)


class CustomerState(State):
    orders: OrderState = msgspec.field(default_factory=OrderState)
    voice: VoiceState = msgspec.field(default_factory=VoiceState)
    service: ServiceState = msgspec.field(default_factory=ServiceState)
    #: distinct purchase days and order money: the BG/NBD and Gamma-Gamma inputs (CLV)
    purchases: PurchaseDays = msgspec.field(default_factory=PurchaseDays)
    churn: ChurnState = msgspec.field(default_factory=ChurnState)
    last_event_ms: int | None = None
    #: events applied per kind (order, survey, complaint, support)
    events: dict[str, int] = {}
    source_offsets: dict[str, int] = {}
    recent_ids: IdHashes = msgspec.field(default_factory=no_id_hashes)
    #: input partition the customer's events arrive in (its population part)
    partition: int | None = None
    #: RFM as last scored against the population (scoring.population), e.g. "545"
    rfm_cell: str | None = None
    segment: str | None = None
    #: VIP flag (has hysteresis, so it is state) and how often it changed:
    #: the count makes VIP change ids deterministic under replay
    vip: bool = False
    vip_changes: int = 0
    #: population activity flags (scoring.indicators.activity) as last evaluated: counted per partition
    activity: int = 0
    #: the transactional outbox (streams/checkpoint.py): VIP changes and retention alerts decided for this
    #: customer, as the exact JSON bytes to publish, written to the changelog with the decision and removed
    #: once the broker acknowledged them; a worker that recovers a state with entries re-publishes exactly
    #: these bytes instead of deciding again. Empty between checkpoints, so it costs 2 bytes per state.
    pending_vip_changes: list[bytes] = []
    pending_alerts: list[bytes] = []
    #: predictive CLV (cents) as of the last assessment: the VIP value when it is CLV (``PULSE_VIP_VALUE=clv``),
    #: kept in the state because the population's VIP index must remove exactly the value it holds
    clv_cents: int | None = None
    #: alert episodes and the retention actions not yet in effect (scoring.episodes); None until the first alert
    #: or action, so a customer never alerted carries nothing
    episodes: EpisodeState | None = None


class EventFacts(Value, frozen=True):
    """A validated event as the scorer sees it, before it is scored: its kind, id, time, offset and the facts of
    its kind (built by the processor from a ``schemas.events`` event)."""

    kind: str
    event_id: str
    occurred_ms: int
    #: offset in its source partition; None when not read from Kafka
    offset: int | None = None
    order: OrderFact | None = None
    survey: SurveyFact | None = None
    complaint: ComplaintFact | None = None
    ticket: TicketFact | None = None


def origin_applied(state: CustomerState, kind: str, origin: tuple[int, int], keyed: bool = False) -> bool:
    """True if a copy of the record re-published from ``origin`` (partition, offset) was handled already.

    ``keyed``: the first copy was keyed by this customer's id (misplaced, not mis-keyed). If it also sits in the
    customer's own partition (``state.partition``), it was read there directly, in offset order and before this
    copy (published after it was read, so later in the same partition): handled once the direct offset passed
    it. That happens only at another partition count than the copy was made at (an input topic that gained
    partitions, scored again at the new count: docs/operations.md), and the copy may come more than
    ``dedup_event_ids`` events later. A mis-keyed first copy is never applied directly, wherever it sits."""
    if keyed and origin[0] == state.partition:
        direct = state.source_offsets.get(kind)
        if direct is not None and origin[1] <= direct:
            return True
    seen = state.source_offsets.get(f"{kind}@{origin[0]}")
    return seen is not None and origin[1] <= seen


def apply_event(
    state: CustomerState,
    event: EventFacts,
    config: ScoringConfig,
    origin: tuple[int, int] | None = None,
    origin_keyed: bool = False,
) -> bool:
    """Fold one event into the state unless it is a duplicate; True if applied.

    ``origin``: (partition, offset) where a re-published record was first read (``streams.partitioning``);
    ``origin_keyed``: that first copy was keyed by its customer id (see :func:`origin_applied`).
    """
    if event.offset is not None:
        seen = state.source_offsets.get(event.kind)
        if seen is not None and event.offset <= seen:
            return False  # redelivery of an offset already applied
        state.source_offsets[event.kind] = event.offset
    if origin is not None:
        if origin_applied(state, event.kind, origin, origin_keyed):
            return False  # another copy of a record re-published before (a replay published it again)
        state.source_offsets[f"{event.kind}@{origin[0]}"] = origin[1]
    id_hash = event_id_hash(event.event_id)
    ids = state.recent_ids
    if id_hash in ids:
        return False  # the producer sent this event twice
    ids.append(id_hash)
    if len(ids) > config.dedup_event_ids:
        del ids[: len(ids) - config.dedup_event_ids]
    state.events[event.kind] = state.events.get(event.kind, 0) + 1
    if state.last_event_ms is None or event.occurred_ms > state.last_event_ms:
        state.last_event_ms = event.occurred_ms
    if event.order is not None:
        apply_order(state.orders, event.order, config.orders)
        if not event.order.refunded:
            record_purchase(state.purchases, event.order.occurred_ms // DAY_MS, event.order.amount_cents, config.clv)
            if state.episodes is not None and state.episodes.episodes:
                on_purchase(state.episodes, event.order.occurred_ms, event.order.amount_cents, config.episodes)
    if event.survey is not None:
        apply_survey(state.voice, event.survey, config.voice)
    if event.complaint is not None:
        apply_complaint(state.voice, event.complaint, config.voice)
    if event.ticket is not None:
        apply_ticket_event(state.service, event.ticket, config.service)
    return True


def apply_action(
    state: CustomerState, event_id: str, offset: int | None, action: PendingAction, config: ScoringConfig
) -> bool:
    """Keep one retention action (scoring.episodes) until the clock reaches its time, unless it is a duplicate;
    True if kept. De-duplicated like an event (its topic's offset, its id among the recent ones), but not an
    event of the customer: it moves neither ``last_event_ms`` nor the event counts (people's clicks are wall
    time, not event time)."""
    if offset is not None:
        seen = state.source_offsets.get(ACTION)
        if seen is not None and offset <= seen:
            return False
        state.source_offsets[ACTION] = offset
    id_hash = event_id_hash(event_id)
    ids = state.recent_ids
    if id_hash in ids:
        return False
    ids.append(id_hash)
    if len(ids) > config.dedup_event_ids:
        del ids[: len(ids) - config.dedup_event_ids]
    if state.episodes is None:
        state.episodes = EpisodeState()
    record_action(state.episodes, action, config.episodes)
    return True


def indicator_contribution(state: CustomerState) -> Contribution:
    """The customer's day rows in the population indicators, as they are now (see scoring.indicators)."""
    return contribution(state.voice.answer_days, state.service.ticket_days)


def customer_clv(
    state: CustomerState, now_ms: int, config: ScoringConfig, lifetime_years: float | None = None
) -> ClvSignals:
    """Both CLV forms of one customer at ``now_ms`` (``lifetime_years``: the population's, else the fallback)."""
    o = state.orders
    return clv_signals(
        state.purchases,
        now_ms,
        o.revenue_cents,
        o.revenue_cents - o.cost_cents,
        config.clv,
        config.orders.default_gross_margin,
        lifetime_years,
    )


def assess_customer(
    state: CustomerState,
    now_ms: int,
    population_gap_days: float | None,
    config: ScoringConfig,
    lifetime_years: float | None = None,
) -> tuple[ClvSignals, ChurnAssessment]:
    """CLV and churn signals of one customer at event time ``now_ms`` (``state, now -> signals``);
    ``lifetime_years``: the historical CLV's lifetime from the population's churn rate (None: the fallback)."""
    clv = customer_clv(state, now_ms, config, lifetime_years)
    o = state.orders
    inputs = ChurnInputs(o, state.purchases, state.voice, state.service, clv)
    return clv, assess(inputs, now_ms, population_gap_days, config)
