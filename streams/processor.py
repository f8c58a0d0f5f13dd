"""Turn one batch of raw Kafka records into state updates, dead letters and profiles.

No Faust and no I/O here: the agent hands in raw records and a way to load a
customer's state, and gets back everything the checkpoint must make durable.
That keeps the whole validate → de-duplicate → score path testable with plain
function calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from pulse.settings import Settings
from schemas.alerts import AlertReason, RetentionAlert
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
from schemas.profile import RenderedProfile, cents_to_money, money_or_none, ms_to_datetime, render_profile
from schemas.vip import VipChange
from scoring import churn
from scoring.churn import ChurnAssessment
from scoring.clv import ClvSignals, lifetime_from_churn, margin
from scoring.customer import (
    CustomerState,
    ScoredEvent,
    apply_event,
    assess_customer,
    customer_clv,
    indicator_contribution,
)
from scoring.indicators import activity
from scoring.orders import DAY_MS, OrderFact, to_cents, window_revenue_cents
from scoring.population import PopulationView, gap_sums, member_keys, rescore, tags
from scoring.rfm import Ranking
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
    #: partition of each changed state (its changelog partition)
    partitions: dict[bytes, int] = field(default_factory=dict)
    #: rendered without pydantic: the worker renders one per re-scored customer
    profiles: list[RenderedProfile] = field(default_factory=list)
    #: VIP flag changes, in the order they were scored: (key, now VIP?, VipChange JSON)
    vip_changes: list[tuple[bytes, bool, bytes]] = field(default_factory=list)
    #: retention alerts, in the order they were raised: (key, alert, RetentionAlert JSON)
    alerts: list[tuple[bytes, RetentionAlert, bytes]] = field(default_factory=list)
    #: customers re-checked because a time-driven churn signal fell due
    due_checked: int = 0
    #: event times of the valid events of the batch (metrics: event time -> scored latency)
    occurred_ms: list[int] = field(default_factory=list)
    #: tallies (see scoring.population.tags) of each changed state when first loaded in the batch
    tags_before: dict[bytes, tuple[str, ...]] = field(default_factory=dict)
    #: CLV and churn of the customers assessed in this batch (the profiles reuse them)
    assessed: dict[bytes, tuple[ClvSignals, ChurnAssessment]] = field(default_factory=dict)
    #: partitions swept in this batch and customers re-scored by the sweep
    swept: dict[int, int] = field(default_factory=dict)
    #: threshold lookups ranked at bucket resolution (``scoring.rfm.Ranking.inexact``)
    rank_inexact: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    #: valid events whose record key is not their customer id: re-produced
    #: under the right key (topic, key, value) so they reach the right partition
    rerouted: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    #: (kind, outcome) -> count, for metrics
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, kind: str, outcome: str) -> None:
        self.counts[(kind, outcome)] = self.counts.get((kind, outcome), 0) + 1


class BatchProcessor:
    """Validates, de-duplicates and scores batches; owns the worker's view of the population and its clock.

    A batch may also hold sweep ticks (records of the internal ticks topic,
    one per partition): each re-scores the next slice of that partition's
    customers against the moved population, in the same checkpoint as events.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kind_by_topic = {topic: Kind(kind) for kind, topic in settings.input_topics().items()}
        self.ticks_topic = settings.topic_ticks()
        self.config = settings.scoring()
        self.rates = settings.currency_rates()
        self.currency = settings.base_currency.upper()
        self.population = PopulationView(
            self.config.rfm, self.config.indicators, int(settings.profile_refresh_seconds * 1000)
        )
        self.max_lateness_ms = int(settings.max_lateness_days * DAY_MS)
        #: the population's purchase gap, computed once per batch (churn: overdue)
        self._gap_days: float | None = None
        #: the historical CLV's lifetime from the population's churn rate (None: the fallback), once per batch
        self._lifetime_years: float | None = None
        #: RFM percentiles against the population as it stands once a batch's events are applied
        self._ranking: Ranking | None = None
        #: idle advance: (clock, wall time) when the clock last moved by events, and the clock seen then
        self._idle_anchor: tuple[int, int] | None = None
        self._clock_seen: int | None = None

    def rebuild(self, partitions: set[int], states: Iterable[tuple[bytes, CustomerState]]) -> int:
        """Count the recovered customers of newly owned ``partitions`` into the population; returns how many.

        ``states`` may hold customers of other partitions too (they are skipped).
        """
        self.population.drop(partitions)
        for partition in partitions:
            self.population.partition(partition)
        return self.population.add_states(partitions, states)

    @property
    def watermark_ms(self) -> int | None:
        """The scorer's clock: highest event time seen in any partition (spec: Clock)."""
        return self.population.clock()

    def process(
        self, batch: Sequence[Incoming], load: Callable[[bytes], CustomerState], wall_ms: int | None = None
    ) -> BatchOutcome:
        """Score one batch. ``wall_ms``: the wall clock, for the idle advance of a live worker (None: off)."""
        out = BatchOutcome()
        self._ranking = None  # the events below move the population
        #: partitions with a tick in the batch (round-robin sweep), and with any record (due checks)
        ticks: set[int] = set()
        present: set[int] = set()
        for record in batch:
            present.add(record.partition)
            if record.topic == self.ticks_topic:
                ticks.add(record.partition)
                continue
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
                out.tags_before[key] = () if state.partition is None else tags(state)
            late = self._too_late(record, kind, scored, state)
            if late is not None:
                out.rejected.append(self._reject(record, kind, late))
                out.count(kind, "dead_lettered")
                continue
            new_customer = state.partition is None
            state.partition = record.partition
            before, gaps_before = member_keys(state, self.config.rfm), gap_sums(state)
            contribution_before = indicator_contribution(state)
            applied = apply_event(state, scored, self.config)
            out.count(kind, "scored" if applied else "duplicate")
            out.occurred_ms.append(scored.occurred_ms)
            self.population.applied(
                record.partition, key, before, state, new_customer, gaps_before, contribution_before
            )
            # A replayed duplicate still counts for the clock and still gets its
            # state and profile written: after a crash between the changelog
            # and Redis, the replay is what brings the profile up to date.
            self.population.partition(record.partition).observe(scored.occurred_ms)
            out.states[key] = state
            out.partitions[key] = record.partition
        self._advance_idle_clock(ticks, wall_ms)
        now = self.population.clock()
        if now is None:
            return out
        self._population_stands()
        render = dict(out.states)
        for key, state in out.states.items():
            self._rescore(key, state, now, out)
        # only partitions with a record in the batch: a state is written with one of its partition's events
        for partition in sorted(present & set(self.population.local)):
            render.update(self.check_due(partition, self.settings.churn_due_per_batch, load, out, now))
        for partition in sorted(ticks):
            render.update(self.sweep(partition, self._sweep_limit(partition), load, out, now))
        self._retag(out)
        out.profiles = self.profiles(render, now, out.assessed)
        out.rank_inexact = self._ranking.inexact if self._ranking is not None else 0
        return out

    def _sweep_limit(self, partition: int) -> int:
        """Customers one tick re-scores: a round of the partition every ``sweep_round_seconds``, so a small
        population is not re-scored every second, capped at ``sweep_customers_per_tick`` for a large one.

        The population moves a little with every event; rounds only let customers who place no order
        follow its drift (an event re-scores its customer at once)."""
        cap = self.settings.sweep_customers_per_tick
        round_seconds = self.settings.sweep_round_seconds
        if not round_seconds:
            return cap
        members = len(self.population.partition(partition).members)
        return max(1, min(cap, math.ceil(members * self.settings.sweep_tick_seconds / round_seconds)))

    def _population_stands(self) -> None:
        """The events are applied and the population stands still for the rest of the batch: what every
        re-scored customer is measured against is computed once (purchase gap) or memoised (percentiles)."""
        self._gap_days = self.population.gap_days(self.config.churn.population_gap_min_customers)
        churn_rate = self.population.period_churn_rate(self.config.clv.lifetime_min_customers)
        self._lifetime_years = lifetime_from_churn(churn_rate, self.config.indicators.period_days)
        self._ranking = Ranking(self.population.parts(), self.config.rfm)

    def _too_late(self, record: Incoming, kind: Kind, event: ScoredEvent, state: CustomerState) -> EventRejected | None:
        """An event older than its partition's watermark minus ``max_lateness_days`` (spec: late events beyond
        the configured lateness go to the dead-letter topic).

        Measured against the event's own partition, not the global clock: during a replay partitions are
        read at very different speeds, and a partition far behind the others is not late. A redelivered
        offset is never "too late": it was applied (or rejected) when first read, and the state drops it.
        """
        watermark = self.population.partition(record.partition).watermark_ms
        if watermark is None or event.occurred_ms >= watermark - self.max_lateness_ms:
            return None
        seen = state.source_offsets.get(kind.value)
        if seen is not None and event.offset is not None and event.offset <= seen:
            return None
        behind_days = (watermark - event.occurred_ms) / DAY_MS
        return EventRejected(
            Reason.TOO_LATE,
            f"occurred_at: {behind_days:.1f} days behind partition {record.partition}'s watermark "
            f"(PULSE_MAX_LATENESS_DAYS={self.settings.max_lateness_days:g})",
        )

    def _advance_idle_clock(self, ticks: set[int], wall_ms: int | None) -> None:
        """Spec (Clock): when no event moved the clock for ``clock_idle_advance_seconds`` of wall time, move it
        with the wall clock, so overdue customers are still found when traffic stops in live operation.

        The advance is a watermark of the ticked partitions: published with their snapshots like any other.
        """
        idle_ms = int(self.settings.clock_idle_advance_seconds * 1000)
        clock = self.population.clock()
        if not idle_ms or wall_ms is None or clock is None:
            return
        if self._idle_anchor is None or clock != self._clock_seen:
            # moved by events (this worker's or, through snapshots, another's): idle from now
            self._idle_anchor, self._clock_seen = (clock, wall_ms), clock
            return
        anchor_clock, anchor_wall = self._idle_anchor
        if ticks and wall_ms - anchor_wall >= idle_ms:
            for partition in ticks:
                self.population.partition(partition).observe(anchor_clock + wall_ms - anchor_wall)
            self._clock_seen = self.population.clock()

    def profiles(
        self,
        states: dict[bytes, CustomerState],
        now: int,
        assessed: dict[bytes, tuple[ClvSignals, ChurnAssessment]] | None = None,
    ) -> list[RenderedProfile]:
        out = []
        for key, state in states.items():
            clv, risk = (assessed or {}).get(key) or assess_customer(
                state, now, self._gap_days, self.config, self._lifetime_years
            )
            out.append(render_profile(key.decode(), state, now, self.config, self.currency, clv, risk))
        return out

    def _retag(self, out: BatchOutcome) -> None:
        for key, state in out.states.items():
            before = out.tags_before.get(key)
            if before is not None and state.partition is not None:
                self.population.partition(state.partition).retag(before, tags(state))

    def check_due(
        self, partition: int, limit: int, load: Callable[[bytes], CustomerState], out: BatchOutcome, now: int
    ) -> dict[bytes, CustomerState]:
        """Re-assess the customers of ``partition`` whose time-driven churn signals fell due (spec: Churn warning:
        "raised by time passing"). The due-time index makes this cost the customers due, not the population."""
        render: dict[bytes, CustomerState] = {}
        for key in self.population.partition(partition).pop_due(now, limit):
            if key in out.states:
                continue  # assessed with this batch already (and rescheduled)
            state = load(key)
            out.tags_before[key] = tags(state)
            self._rescore(key, state, now, out)
            out.states[key] = render[key] = state
            out.partitions[key] = partition
            out.due_checked += 1
        return render

    def sweep_whole(self, partition: int, load: Callable[[bytes], CustomerState]) -> BatchOutcome:
        """One complete sweep round of ``partition`` that re-renders every profile: what a live worker
        reaches once traffic stopped and its sweep went round (used offline and in tests)."""
        out = BatchOutcome()
        now = self.population.clock()
        if now is not None:
            self._population_stands()
            render = self.sweep(partition, None, load, out, now, refresh_all=True)
            self._retag(out)
            out.profiles = self.profiles(render, now, out.assessed)
        return out

    def check_due_whole(self, partition: int, load: Callable[[bytes], CustomerState]) -> BatchOutcome:
        """Re-assess every customer of ``partition`` due at the clock, unbounded: what a live worker's batches
        reach once the clock stopped moving (used in tests: the due-time index alone keeps time-driven
        state such as the activity flags current)."""
        out = BatchOutcome()
        now = self.population.clock()
        if now is not None:
            self._population_stands()
            render = self.check_due(partition, len(self.population.partition(partition).due) + 1, load, out, now)
            self._retag(out)
            out.profiles = self.profiles(render, now, out.assessed)
        return out

    def sweep(
        self,
        partition: int,
        limit: int | None,
        load: Callable[[bytes], CustomerState],
        out: BatchOutcome,
        now: int,
        refresh_all: bool = False,
    ) -> dict[bytes, CustomerState]:
        """Re-score the next ``limit`` customers of ``partition``; returns those whose profile must be re-rendered.

        A customer whose stored scores change is also written (``out.states``).
        Profiles are re-rendered when their scores changed, or for the whole
        round when the clock moved since the previous round, so that once
        events stop, one round later every profile is as of the final clock.
        """
        chunk = self.population.sweep_slice(partition, limit, now)
        render: dict[bytes, CustomerState] = {}
        for key in chunk.keys:
            if key in out.states:
                continue  # scored with this batch already
            state = load(key)
            before = tags(state)
            refresh = chunk.refresh_all or refresh_all
            # churn is time-driven through the due-time index: the sweep re-assesses it only for a customer
            # whose RFM/VIP moved (the alert's context) or whose profile this round re-renders
            if self._rescore(key, state, now, out, churn=refresh):
                out.tags_before[key] = before
                out.states[key] = state
                out.partitions[key] = partition
                render[key] = state
            elif refresh:
                render[key] = state
        out.swept[partition] = out.swept.get(partition, 0) + len(chunk.keys)
        return render

    def _rescore(self, key: bytes, state: CustomerState, now: int, out: BatchOutcome, churn: bool = True) -> bool:
        """RFM, segment and VIP against the population, then (if ``churn`` or they changed) CLV and churn;
        True if the stored state changed."""
        rfm = self.config.rfm
        revalued = rfm.vip_value == "clv" and self._revalue_clv(state, now)
        result = rescore(state, self._ranking or self.population.parts(), rfm)
        if result.vip_changed:
            keys = member_keys(state, rfm)
            value_cents = 0 if keys is None else keys.v
            in_top = result.scores is not None and result.scores.value_percentile >= 1 - rfm.vip_enter_share
            change = VipChange(
                change_id=f"{key.decode()}:vip:{state.vip_changes}",
                customer_id=key.decode(),
                vip=state.vip,
                reason=("top_share" if in_top else "segment") if state.vip else "left",
                value_measure=rfm.vip_value,
                value=cents_to_money(value_cents),
                value_percentile=None if result.scores is None else round(result.scores.value_percentile, 6),
                rfm_cell=state.rfm_cell,
                segment=state.segment,
                currency=self.currency,
                at=ms_to_datetime(now),
            )
            out.vip_changes.append((key, state.vip, orjson.dumps(change.model_dump(mode="json"))))
        if churn or result.changed:
            return self._assess_churn(key, state, now, out) or result.changed or revalued
        return revalued

    def _revalue_clv(self, state: CustomerState, now: int) -> bool:
        """``PULSE_VIP_VALUE=clv``: the customer's predictive CLV at ``now`` becomes its VIP value in the population
        before it is ranked (CLV moves with the clock, not only with events); True if it changed (the state,
        which holds the value the index must later remove, is then written)."""
        if state.partition is None:
            return False
        before = member_keys(state, self.config.rfm)
        state.clv_cents = customer_clv(state, now, self.config).clv_predictive_cents
        if not self.population.revalued(state.partition, before, state):
            return False
        if self._ranking is not None:
            self._ranking.forget(3)  # the VIP value percentiles moved
        return True

    def _assess_churn(self, key: bytes, state: CustomerState, now: int, out: BatchOutcome) -> bool:
        """Churn signals, level and alert decision, and the population activity flags; True if the stored
        churn state or flags changed."""
        before = (state.churn.level, state.churn.score, state.churn.next_check_ms, state.activity)
        clv, risk = assess_customer(state, now, self._gap_days, self.config, self._lifetime_years)
        out.assessed[key] = (clv, risk)
        decision = churn.update(state.churn, risk, now, self.config.churn)
        # the activity flags change with time alone too: one due time covers both (the earlier one)
        state.activity, flip_ms = activity(state.purchases, now, self.config.indicators)
        if flip_ms is not None and (state.churn.next_check_ms is None or flip_ms < state.churn.next_check_ms):
            state.churn.next_check_ms = flip_ms
        if state.partition is not None:
            self.population.partition(state.partition).schedule(key, state.churn.next_check_ms)
        if decision.kind is not None:
            alert = self._alert(key, state, now, clv, risk, decision)
            out.alerts.append((key, alert, orjson.dumps(alert.model_dump(mode="json"))))
        after = (state.churn.level, state.churn.score, state.churn.next_check_ms, state.activity)
        return decision.kind is not None or before != after

    def _alert(
        self,
        key: bytes,
        state: CustomerState,
        now: int,
        clv: ClvSignals,
        risk: ChurnAssessment,
        decision: churn.AlertDecision,
    ) -> RetentionAlert:
        o = state.orders
        share = margin(o.revenue_cents, o.revenue_cents - o.cost_cents, self.config.orders.default_gross_margin)
        window = window_revenue_cents(o, now, self.config.orders)
        return RetentionAlert(
            alert_id=f"{key.decode()}:churn:{state.churn.alerts}",
            customer_id=key.decode(),
            raised_at=ms_to_datetime(now),
            kind=decision.kind,
            level=risk.level,
            previous_level=decision.previous_level,
            risk_score=risk.score,
            reasons=[AlertReason.of(r) for r in risk.reasons],
            vip=state.vip,
            priority=state.vip,
            segment=state.segment,
            rfm_cell=state.rfm_cell,
            currency=self.currency,
            revenue=cents_to_money(o.revenue_cents),
            revenue_window=cents_to_money(window),
            clv=money_or_none(clv.clv_predictive_cents),
            clv_historical=money_or_none(clv.clv_historical_cents),
            p_alive=None if clv.p_alive is None else round(clv.p_alive, 4),
            value_at_risk=cents_to_money(round(max(0, window) * share)),
            suggested_action=churn.suggested_action(state.vip, risk.reasons),
        )

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
