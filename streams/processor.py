"""Turn one batch of raw Kafka records into state updates, dead letters and profiles.

No Faust and no I/O here: the agent hands in raw records and a way to load a
customer's state, and gets back everything the checkpoint must make durable.
That keeps the whole validate → de-duplicate → score path testable with plain
function calls.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import orjson

from pulse_config.processor import ProcessorConfig
from schemas.actions import RetentionAction
from schemas.alerts import AlertReason, RetentionAlert
from schemas.dead_letter import DeadLetter
from schemas.events import (
    MIN_TIME_MS,
    EventRejected,
    Kind,
    RejectReason,
    decode_as,
    time_ms,
)
from schemas.profile import (
    RenderedProfile,
    cents_to_money,
    money_or_none,
    ms_to_datetime,
    render_profile,
    use_native,
)
from schemas.vip import VipChange
from scoring import churn
from scoring.churn import ChurnAssessment
from scoring.clv import ClvSignals, lifetime_from_churn, value_at_risk_cents
from scoring.customer import (
    ACTION,
    CustomerState,
    EventFacts,
    apply_action,
    apply_event,
    assess_customer,
    customer_clv,
)
from scoring.episodes import (
    EpisodeState,
    PendingAction,
    alert_number,
    apply_due_actions,
    next_due_ms,
    on_alert,
    on_assessed,
)
from scoring.footprint import (
    KEYS,
    NO_CHANGE,
    NOT_COUNTED,
    ORDER_PARTS,
    OTHER_PARTS,
    Footprint,
    TagKey,
    diff,
    footprint,
    member_keys,
    retag,
    tag_key,
    widen,
)
from scoring.frozen import Value
from scoring.indicators import activity
from scoring.orders import window_revenue_cents
from scoring.partition import PartitionPopulation
from scoring.population import PopulationView, rescore
from scoring.rfm import Ranking
from scoring.units import DAY_MS
from streams.validation import EventReader


class InjectedFailure(RuntimeError):
    """Raised for the event ids of the test-only fault injection setting ``PULSE_TEST_FAIL_EVENT_IDS``."""


class Incoming(Value, frozen=True, gc=False):
    """One consumed record, as read from Kafka. A frozen ``scoring.frozen.Value`` (built in C) rather than a
    frozen dataclass: the checkpoint builds one per record of a batch (1.5 % of a backlog worker's samples)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: (partition, offset) a re-published record was first read at (its ``pulse-origin`` header), else None
    origin: tuple[int, int] | None = None
    #: its first copy was keyed by its customer id (``pulse-origin-keyed``: misplaced, not mis-keyed)
    origin_keyed: bool = False


#: (topic, partition): one input topic-partition
TopicPartitionKey = tuple[str, int]


@dataclass(slots=True)
class TopicProgress:
    """What this worker read of one input topic-partition (spec: Clock): its watermark, the offset after the
    last record read (compared with the consumer's end offset: caught up?) and the wall time of that read."""

    #: highest valid event time read (None: none yet)
    mark_ms: int | None = None
    #: offset after the last record read in this session (None: none read yet)
    next_offset: int | None = None
    #: wall time of the last record read, or when the topic-partition was first seen (idleness)
    active_wall_ms: int | None = None
    #: wall time since when it is known behind its end offset (None: caught up, or not known): a stall is behind
    #: and unread for the idle time, counted from the later of the two (a sparse input quiet for minutes is
    #: behind for a moment each time a fetch brings a new end offset before its record is read)
    behind_wall_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ClockHold:
    """One input topic-partition that holds its partition's clock back, as the last batch saw it: what an
    operator (and a failing test) needs to tell "still reading" from "waiting for something that never comes"
    (:meth:`BatchProcessor.holding`)."""

    topic: str
    #: the next offset to read: after the last record read, else where the session started (None: not known)
    position: int | None
    #: the consumer's end offset (None: not fetched yet)
    end: int | None
    #: the highest event time read from it (None: none yet)
    mark_ms: int | None
    #: wall ms since its last record was read, or since it was first seen holding (None: no wall clock)
    quiet_ms: int | None

    def __str__(self) -> str:
        quiet = "?" if self.quiet_ms is None else f"{self.quiet_ms / 1000:.0f} s"
        return f"{self.topic} at offset {self.position} of {self.end}, watermark {self.mark_ms}, quiet {quiet}"


@dataclass(frozen=True, slots=True)
class Rejected:
    kind: str
    reason: str
    record: bytes  # DeadLetter JSON
    key: bytes | None


@dataclass(frozen=True, slots=True)
class RenderFailure:
    """A profile the render process could not render (``render_elsewhere``), and what the processor made of it
    (:meth:`BatchProcessor.render_answered`)."""

    #: the customer's partition (None: not known, the failure is then only reported)
    partition: int | None
    key: bytes
    error: str
    #: a record of its batch was applied to the customer (in-process, its failure would have failed the batch)
    event: bool
    #: ``quarantined`` (as a time-driven failure in-process: skipped by due checks and sweeps until its next
    #: event), ``newer_event`` (a record of the customer was processed after that batch: its own rendering
    #: decides) or ``not_owned`` (the partition was given away, or rebuilt, since: this worker's view is gone)
    outcome: str


#: one profile to render elsewhere (``BatchOutcome.to_render``): key, state, clock (ms), CLV, churn
ToRender = tuple[bytes, CustomerState, int, ClvSignals, ChurnAssessment]

#: RenderFailure.outcome values
QUARANTINED, NEWER_EVENT, NOT_OWNED = "quarantined", "newer_event", "not_owned"


@dataclass(slots=True)
class BatchOutcome:
    #: customer key -> updated state (only customers whose state changed)
    states: dict[bytes, CustomerState] = field(default_factory=dict)
    #: partition of each changed state (its changelog partition)
    partitions: dict[bytes, int] = field(default_factory=dict)
    #: rendered without pydantic: the worker renders one per re-scored customer
    profiles: list[RenderedProfile] = field(default_factory=list)
    #: instead of ``profiles`` when the processor's ``render_elsewhere`` is set: (key, state, clock, CLV, churn) of each
    #: profile to render, in order (the checkpoint hands them to the render process, streams.render_process)
    to_render: list[ToRender] = field(default_factory=list)
    #: VIP flag changes, in the order they were scored: (key, now VIP?, VipChange JSON)
    vip_changes: list[tuple[bytes, bool, bytes]] = field(default_factory=list)
    #: retention alerts, in the order they were raised: (key, alert, RetentionAlert JSON)
    alerts: list[tuple[bytes, RetentionAlert, bytes]] = field(default_factory=list)
    #: customers re-checked because a time-driven churn signal fell due
    due_checked: int = 0
    #: partitions whose due checks this batch stopped for time, customers still due (check_due, _due_until)
    due_cut: int = 0
    #: customers with an event whose assessment this backlog batch left to the next one (_later_assessments)
    assessments_deferred: int = 0
    #: event times of the valid events of the batch (metrics: event time -> scored latency)
    occurred_ms: list[int] = field(default_factory=list)
    #: the tallies' key (scoring.footprint.tag_key) of each changed state when first loaded in the batch
    tags_before: dict[bytes, TagKey] = field(default_factory=dict)
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
    #: where each of ``rerouted`` was first read (partition, offset): its ``pulse-origin`` header, by index
    rerouted_origins: list[tuple[int, int]] = field(default_factory=list)
    #: whether each of ``rerouted``'s first copy was keyed by its customer id (``pulse-origin-keyed``), by index
    rerouted_keyed: list[bool] = field(default_factory=list)
    #: (kind, outcome) -> count, for metrics
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (topic, partition) -> correctly keyed events that arrived outside their customer's partition (a producer
    #: with another partitioner, e.g. librdkafka's CRC32 default): re-published like mis-keyed ones (``rerouted``)
    misplaced: dict[tuple[str, int], int] = field(default_factory=dict)
    #: (partition, customer, error) of time-driven re-scoring (due checks, sweep) that raised: skipped, quarantined
    time_driven_failures: list[tuple[int, bytes, str]] = field(default_factory=list)
    #: customers with an event applied in the batch (a failure of theirs fails the batch, see streams.isolation)
    event_customers: set[bytes] = field(default_factory=set)
    #: alerts the churn warning decided but the customer's handled episode suppressed (scoring.episodes)
    suppressed_alerts: int = 0
    #: the processor's number of this batch (:attr:`BatchProcessor.batches`): the render process's answer to
    #: ``to_render`` names it (:meth:`BatchProcessor.render_answered`)
    seq: int = 0

    def count(self, kind: str, outcome: str) -> None:
        self.counts[(kind, outcome)] = self.counts.get((kind, outcome), 0) + 1


class BatchProcessor:
    """Validates, de-duplicates and scores batches; owns the worker's view of the population and its clock.

    A batch may also hold sweep ticks (records of the internal ticks topic,
    one per partition): each re-scores the next slice of that partition's
    customers against the moved population, in the same checkpoint as events.
    """

    def __init__(
        self,
        options: ProcessorConfig,
        partition_of: Callable[[bytes], int] | None = None,
        timer: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(options, ProcessorConfig):
            # a caller written before the engine took a frozen configuration: say how to build one
            raise TypeError(f"BatchProcessor takes a ProcessorConfig (Settings.processor()), not {type(options)}")
        #: the frozen configuration (pulse_config.processor): the engine reads no environment and no files
        self.options = options
        # the C renderer and packer, or Python: one switch for the process (the sink packs with the same one)
        use_native(options.native_profiles)
        #: the partition each customer id belongs in (streams.partitioning); None: not checked (offline, tests)
        self.partition_of = partition_of
        #: wall seconds (the worker's ``time.perf_counter``) that bound a batch's due checks by its budget
        #: (:meth:`_due_until`); None: no time bound (offline, where the batches are all there is, and tests, which
        #: give their own), as without a budget
        self.timer = timer if options.batch_budget_seconds is not None else None
        #: customers whose time-driven re-scoring raised: left out of due checks and sweeps until their next event
        self.quarantined: set[bytes] = set()
        #: test only (fault injection, PULSE_TEST_FAIL_EVENT_IDS): scoring these event ids raises
        self._fail_event_ids = options.test_fail_event_ids
        self.kind_by_topic = {topic: Kind(kind) for kind, topic in options.input_topics.items()}
        self.ticks_topic = options.ticks_topic
        #: what teams did about alerts (scoring.episodes): read with the inputs, but holds no clock
        self.actions_topic = options.actions_topic
        self.config = options.scoring
        self.rates = options.currency_rates
        self.currency = options.base_currency
        self.reader = EventReader(self.rates, options.max_event_bytes)
        self.population = PopulationView(
            self.config.rfm, self.config.indicators, int(options.profile_refresh_seconds * 1000)
        )
        self.max_lateness_ms = int(options.max_lateness_days * DAY_MS)
        self.max_earliness_ms = int(options.max_earliness_seconds * 1000)
        self.historical_ms = int(options.historical_alert_seconds * 1000)
        self.partition_idle_ms = int(options.clock_partition_idle_seconds * 1000)
        self.input_topics = tuple(sorted(self.kind_by_topic))
        #: per input topic-partition: watermark, read position, last read (spec: Clock)
        self.progress: dict[TopicPartitionKey, TopicProgress] = {}
        #: the consumer's end offsets as last handed in (None: the batches are all there is) and the wall clock
        self._ends: Mapping[TopicPartitionKey, int | None] | None = None
        self._starts: Mapping[TopicPartitionKey, int] | None = None
        self._wall_ms: int | None = None
        #: input topic-partitions known behind that read nothing for a while, at the last batch (see stalled)
        self._stalled: dict[TopicPartitionKey, tuple[int, int]] = {}
        #: owned partition -> the input topic-partitions that held its clock at the last batch (see held, holding;
        #: no idle advance for those partitions)
        self._holding: dict[int, list[TopicPartitionKey]] = {}
        #: the population's purchase gap, computed once per batch (churn: overdue)
        self._gap_days: float | None = None
        #: the historical CLV's lifetime from the population's churn rate (None: the fallback), once per batch
        self._lifetime_years: float | None = None
        #: RFM percentiles against the population as it stands once a batch's events are applied
        self._ranking: Ranking | None = None
        #: idle advance, per owned partition: (clock, wall time) when its clock last moved otherwise, and the
        #: clock seen then
        self._idle_anchor: dict[int, tuple[int, int, int | None]] = {}
        #: the customers the next batch is sure to score again (a backlog's queued records; set by the worker
        #: before each batch, empty offline and live): their profiles wait for it (:meth:`_defer_profiles`)
        self.upcoming: Collection[bytes] = frozenset()
        #: customers whose profile the previous batch left to this one, and of those, whose assessment it left too
        self._deferred: set[bytes] = set()
        self._deferred_assessments: set[bytes] = set()
        #: (topic, partition) -> the offset below which every record was decided and made durable before this
        #: worker took the partition (its changelog's input position, set by streams.checkpoint; empty offline). A
        #: record below it was read before (an offsets reset, a crash before the commit): rejected again, it had
        #: its dead letter then; mis-keyed or misplaced, its copy; either counts as a duplicate instead of a second
        #: one (:meth:`_dead_letter`, :meth:`_reroute`)
        self.decided: dict[tuple[str, int], int] = {}
        #: (topic, partition) -> the offset base of the log read there (streams.ownership.InputLog; set by
        #: streams.checkpoint, absent: 0): added to a record's offset where the states compare and store it, so the
        #: log of a topic deleted and created again, which starts at 0 again, counts above the old one
        self.bases: dict[tuple[str, int], int] = {}
        #: a batch's profiles are listed in ``BatchOutcome.to_render`` (assessed, not rendered): the worker renders
        #: them in another process from the states it writes (PULSE_PROFILE_RENDER_PROCESS), and hands each
        #: batch's answer to :meth:`render_answered`
        self.render_elsewhere = False
        #: batches processed so far (``BatchOutcome.seq`` of the last one)
        self.batches = 0
        #: render_elsewhere: (seq, customers with a record in it, ``to_render``) of each batch whose profiles are
        #: rendered elsewhere and not answered yet, oldest first
        self._rendering: deque[tuple[int, set[bytes], list[ToRender]]] = deque()
        #: render_elsewhere: (seq, customers with a record in it) of the batches processed after the oldest of
        #: ``_rendering``: a failure answered late does not quarantine a customer that had a record since (that
        #: batch rendered it again, and its own answer decides)
        self._events_since: deque[tuple[int, set[bytes]]] = deque()
        #: partition -> ``batches`` when its population was last rebuilt (a failure answered for an older batch
        #: belongs to a view of the partition this worker dropped)
        self._built_at: dict[int, int] = {}

    def rebuild(self, partitions: set[int], states: Iterable[tuple[bytes, CustomerState]]) -> int:
        """Count the recovered customers of newly owned ``partitions`` into the population; returns how many.

        ``states`` may hold customers of other partitions too (they are skipped).
        """
        self.population.drop(partitions)
        for partition in partitions:
            self.population.partition(partition)
            self._built_at[partition] = self.batches
            # read again from the committed offsets: the clock restarts where the last owner published it
            for topic in self.input_topics:
                self.progress.pop((topic, partition), None)
            self._idle_anchor.pop(partition, None)
            published = self.population.remote.get(partition)
            if published is not None and published.clock_ms is not None:
                self.population.partition(partition).move_clock(published.clock_ms)
        return self.population.add_states(partitions, states)

    @property
    def watermark_ms(self) -> int | None:
        """The latest event time any partition reached (its watermark or idle-advanced clock): metrics, and where
        a partition with nothing left to read moves its clock to (see ``move_clocks``)."""
        return self.population.clock()

    def process(
        self,
        batch: Sequence[Incoming],
        load: Callable[[bytes], CustomerState],
        wall_ms: int | None = None,
        ends: Mapping[TopicPartitionKey, int | None] | None = None,
        starts: Mapping[TopicPartitionKey, int] | None = None,
    ) -> BatchOutcome:
        """Score one batch.

        ``wall_ms``: the wall clock (too_early, the idle advance, historical alerts; None: off).
        ``ends``: the consumer's end offset (highwater) of every assigned input topic-partition, None where not
        known yet; a topic-partition whose read position reached it does not hold its partition's clock back.
        ``starts``: the offset this session started reading each of them at (the group's committed offset): its
        position until a record of it was read. Without ``ends`` (offline, tests) the batches are all there
        is: everything read has caught up.
        """
        started = self.timer() if self.timer is not None else 0.0
        self.batches += 1
        out = BatchOutcome(seq=self.batches)
        self._ranking = None  # the events below move the population
        self._wall_ms = wall_ms
        if ends is not None or self._ends is None:
            self._ends, self._starts = ends, starts
        #: partitions with a tick in the batch (round-robin sweep), and with any record (due checks)
        ticks: set[int] = set()
        present: set[int] = set()
        partition_of = self.partition_of
        rfm = self.config.rfm
        placed: dict[bytes, int] = {}  # customer -> partition, memoised per batch
        #: customer -> (partition, footprint before its first event of the batch), applied after the last
        moved: dict[bytes, tuple[int, Footprint]] = {}
        # looked up once per batch, not per event: the population part of each partition, the reader, and the
        # time past which an event is too early (None: not checked)
        population_parts: dict[int, PartitionPopulation] = {}
        read_event, counts, bases = self.reader.read, out.counts, self.bases
        early_ms = None if wall_ms is None or not self.max_earliness_ms else wall_ms + self.max_earliness_ms
        for record in batch:
            present.add(record.partition)
            if record.topic == self.ticks_topic:
                ticks.add(record.partition)
                continue
            if record.topic == self.actions_topic:
                self._take_action(record, load, out, wall_ms, placed)
                continue
            kind = self.kind_by_topic[record.topic]
            read = self.progress.get((record.topic, record.partition))
            if read is None:
                read = self.progress[(record.topic, record.partition)] = TopicProgress()
            read.next_offset = record.offset + 1
            read.active_wall_ms = wall_ms
            try:
                offset = record.offset
                if bases:
                    offset += bases.get((record.topic, record.partition), 0)
                customer_id, scored = read_event(kind, record.value or b"", offset)
                if early_ms is not None and scored.occurred_ms > early_ms:
                    self._check_early(scored, wall_ms)
            except EventRejected as exc:
                self._dead_letter(out, record, kind, exc)
                continue
            key = customer_id.encode()
            misplaced = False
            if record.key == key and partition_of is not None:
                expected = placed.get(key)
                if expected is None:
                    expected = placed[key] = partition_of(key)
                # applied here, it would split the customer over two partitions (or break the rank counts of the
                # one it is not in): re-published under its key, it reaches the right one
                misplaced = expected != record.partition
            if misplaced or record.key != key:
                # late or not is decided here, in the log it was produced to: the copy lands at the end of
                # another log, read to wherever that one was (_too_late)
                late = self._too_late(record, kind, scored, None, read.mark_ms)
                if late is not None:
                    self._dead_letter(out, record, kind, late)
                    continue
                self._reroute(out, record, kind, key, misplaced)
                continue
            if self.quarantined:
                self.quarantined.discard(key)  # a new event: scheduled and swept again
            state = out.states.get(key)
            if state is None:
                state = load(key)
                out.tags_before[key] = NOT_COUNTED if state.partition is None else tag_key(state)
            part = population_parts.get(record.partition)
            if part is None:
                part = population_parts[record.partition] = self.population.partition(record.partition)
            # late against its own topic-partition's watermark: a partition's topics are read at different
            # speeds in a backlog (months apart in a replay of years), so another topic's events say nothing
            mark = read.mark_ms
            if mark is not None and scored.occurred_ms < mark - self.max_lateness_ms:
                late = self._too_late(record, kind, scored, state, mark)
                if late is not None:
                    self._dead_letter(out, record, kind, late)
                    continue
            new_customer = state.partition is None
            state.partition = record.partition
            # the footprint parts the event cannot move are not looked at (scoring.footprint.ORDER_PARTS); taken
            # before the customer's first event of the batch that can move them, the population moved once after
            # its last (``moved``): a customer with several events in a batch costs one diff, not one per event
            parts = OTHER_PARTS if scored.order is None else ORDER_PARTS
            held = moved.get(key)
            if held is None or held[0] != record.partition:
                if held is not None:  # the customer's events came in two partitions (offline, no placement check)
                    self.population.partition(held[0]).apply(diff(held[1], footprint(state, rfm, held[1].parts)))
                moved[key] = (record.partition, footprint(state, rfm, parts))
            elif held[1].parts & parts != parts:
                moved[key] = (record.partition, widen(held[1], footprint(state, rfm, parts & ~held[1].parts)))
            applied = apply_event(state, scored, self.config, record.origin, record.origin_keyed)
            outcome = (kind, "scored" if applied else "duplicate")
            counts[outcome] = counts.get(outcome, 0) + 1  # out.count, without a call per event
            out.occurred_ms.append(scored.occurred_ms)
            if new_customer:
                part.members.append(key)
            if self._fail_event_ids and scored.event_id in self._fail_event_ids:
                raise InjectedFailure(f"PULSE_TEST_FAIL_EVENT_IDS: {scored.event_id}")
            # A replayed duplicate still counts for the clock and still gets its
            # state and profile written: after a crash between the changelog
            # and Redis, the replay is what brings the profile up to date.
            part.observe(scored.occurred_ms)
            if read.mark_ms is None or scored.occurred_ms > read.mark_ms:
                read.mark_ms = scored.occurred_ms
            out.states[key] = state
            out.partitions[key] = record.partition
        for key, (partition, before) in moved.items():
            self.population.partition(partition).apply(diff(before, footprint(out.states[key], rfm, before.parts)))
        out.event_customers = set(out.states)
        self.move_clocks()
        self._advance_idle_clock(ticks, wall_ms)
        clocks = {p: part.clock_ms for p, part in self.population.local.items() if part.clock_ms is not None}
        # a customer is scored at its own partition's clock, and not before that partition has one
        waiting = [key for key in out.states if out.partitions[key] not in clocks]
        for key in waiting:
            self._defer(key, out.states[key])
        if not clocks:
            self._track_elsewhere(out)
            return out
        self._population_stands()
        render = {}
        later = self._later_assessments(out, clocks)
        out.assessments_deferred = len(later)
        for key, state in out.states.items():
            now = clocks.get(out.partitions[key])
            if now is not None and key not in later:
                self._rescore(key, state, now, out)
                render[key] = state
        # only partitions with a record in the batch: a state is written with one of its partition's events
        limit, live_limit = self.options.churn_due_per_batch, self.options.churn_due_per_live_batch
        checked = sorted(present & set(clocks))
        until = self._due_until(started)
        for i, partition in enumerate(checked):
            share = None
            if until is not None and self.timer is not None:
                # the time left, shared among the partitions left (what one leaves, the next may use)
                now_s = self.timer()
                share = now_s + (until - now_s) / (len(checked) - i)
            checks = live_limit if self.live(partition) else None
            render.update(self.check_due(partition, limit, load, out, clocks[partition], checks, share))
        for partition in sorted(ticks & set(clocks)):
            render.update(self.sweep(partition, self._sweep_limit(partition), load, out, clocks[partition]))
        for key in later:
            # due at its latest event, first among the due (after this batch's due checks, which skip the batch's
            # customers): the next batch's events assess it, or else the first due check of its partition, by
            # whichever worker owns it then (the changelog holds the due time)
            self._defer(key, out.states[key])
        self._retag(out)
        deferred = self._defer_profiles(render, load, out)
        out.profiles = self.profiles(render, None, out.assessed, out)
        # (a batch that raised leaves the previous batch's to its retry)
        self._deferred, self._deferred_assessments = deferred | later, later
        out.rank_inexact = self._ranking.inexact if self._ranking is not None else 0
        self._track_elsewhere(out)
        return out

    def _track_elsewhere(self, out: BatchOutcome) -> None:
        """render_elsewhere: note what :meth:`render_answered` needs of a batch that returned (one that raised is
        processed again and noted then): the customers with a record in it, while an older batch's profiles are
        being rendered, and its own profiles to render."""
        if not self.render_elsewhere:
            return
        if self._rendering and out.event_customers:
            self._events_since.append((out.seq, out.event_customers))
        if out.to_render:
            self._rendering.append((out.seq, out.event_customers, out.to_render))

    def render_answered(self, seq: int, failures: Sequence[tuple[str, str]], dropped: bool) -> list[RenderFailure]:
        """The render process answered batch ``seq``'s ``to_render`` (``dropped``: after a revoke settled without
        it); ``failures``: (customer id, error) of the profiles it could not render. Each is quarantined as a
        time-driven failure in-process is (:meth:`_contained`: unscheduled, left out of due checks and sweeps
        until the customer's next event), unless the customer had a record in a batch processed since (an input
        event would have lifted the quarantine; any record renders the customer again in its batch, and that
        rendering's own answer decides: a record's customers are known per batch already, so this costs the
        batch nothing per event) or its partition is no
        longer this worker's view (given away or rebuilt since: the answer is as good as dropped). A customer
        with a record in batch ``seq`` is quarantined too: its record is applied and committed (no dead letter
        is possible any more), its profile stays as last written, and rendering it again before its next
        event would fail again. Returns what became of each, for the caller to report."""
        entry = None
        while self._rendering and self._rendering[0][0] <= seq:
            entry = self._rendering.popleft()
        if entry is not None and entry[0] != seq:
            entry = None  # not a batch this processor listed (none noted): nothing known of it
        results: list[RenderFailure] = []
        if failures:
            event_customers: Collection[bytes] = () if entry is None else entry[1]
            partitions = {} if entry is None else {key: state.partition for key, state, *_ in entry[2]}
            for cid, error in failures:
                key = cid.encode()
                partition = partitions.get(key)
                if partition is None and self.partition_of is not None:
                    partition = self.partition_of(key)
                if (
                    dropped
                    or entry is None
                    or partition is None
                    or partition not in self.population.local
                    or self._built_at.get(partition, 0) >= seq
                ):
                    outcome = NOT_OWNED
                elif any(key in keys for after, keys in self._events_since if after > seq):
                    outcome = NEWER_EVENT
                else:
                    self._quarantine(partition, key)
                    outcome = QUARANTINED
                results.append(RenderFailure(partition, key, error, key in event_customers, outcome))
        # what a batch still being rendered needs: the events of the batches after it
        oldest = self._rendering[0][0] if self._rendering else None
        while self._events_since and (oldest is None or self._events_since[0][0] <= oldest):
            self._events_since.popleft()
        return results

    def _later_assessments(self, out: BatchOutcome, clocks: Mapping[int, int]) -> set[bytes]:
        """A backlog's catch-up (``backlog_defer_assessments``): the customers with an event in this batch whom the
        next batch scores again (``upcoming``) are assessed there, with every event up to its clock, as one batch
        twice the size would assess them; never two batches in a row (those the previous batch left are assessed
        here: by their events, else by the due check, since they are due at their latest event), never on a live
        partition. A customer with events in every batch of a catch-up was assessed in each
        (~130k instructions an assessment saved, ~8 % of a backlog event's: docs/benchmarks.md, session 33)."""
        upcoming = self.upcoming
        if not upcoming or not self.options.backlog_defer_assessments:
            return set()
        # partitions with a clock (a customer of one without waits for it anyway) that are not live
        catching_up = {p for p in clocks if not self.live(p)}
        deferred, partitions = self._deferred, out.partitions
        return {key for key in out.states if key in upcoming and key not in deferred and partitions[key] in catching_up}

    def _defer_profiles(
        self, render: dict[bytes, CustomerState], load: Callable[[bytes], CustomerState], out: BatchOutcome
    ) -> set[bytes]:
        """A backlog's catch-up: a customer the next batch scores again (``upcoming``) is rendered there instead,
        unless this batch is already the one its profile was left to: a profile in Redis is at most one batch
        behind its state (the next batch renders every customer left to it, with an event or not), and a
        customer with events in every batch is rendered every other batch. Rendering, packing and writing the
        profile were ~10 % of a backlog worker's CPU (issue 18, docs/benchmarks.md session 10). A live
        partition's profiles are never deferred, even while its input is a few batches behind. Left to a batch
        that never comes (a revoke cleared the queue and the partition moved, a stop), a profile is written
        again by the first sweep round of the worker that scores the partition next, as a write-behind lost in
        a crash is. Returns the customers left to the next batch."""
        deferred = self._deferred
        for key in deferred:
            if key in render or key in self.quarantined or key in self._deferred_assessments:
                continue  # (an assessment left here and not made: rendered by the due check that makes it)
            state = out.states.get(key)
            if state is None:
                state = load(key)  # no event this batch (rejected, or the queue was cleared): rendered as it is
            if state.partition is not None and state.partition in self.population.local:
                render[key] = state
        upcoming = self.upcoming
        if not upcoming:
            return set()
        # only a catch-up of history: a live partition's profiles are read live (``live``: its clock within
        # historical_alert_seconds of the wall clock, as a live input a few batches behind still is)
        live = {p for p in self.population.local if self.live(p)}
        later = {
            key
            for key, state in render.items()
            if key in upcoming and key not in deferred and state.partition not in live
        }
        for key in later:
            del render[key]
        return later

    def _take_action(
        self,
        record: Incoming,
        load: Callable[[bytes], CustomerState],
        out: BatchOutcome,
        wall_ms: int | None,
        placed: dict[bytes, int],
    ) -> None:
        """One record of the retention-actions topic: validated, placed and de-duplicated like an input event,
        then kept in the customer's state until its partition's clock reaches its time (scoring.episodes). It
        moves no clock and no watermark, and is never too late (its time is wall time, not event time)."""
        try:
            raw = record.value or b""
            action = cast(RetentionAction, decode_as(RetentionAction, raw, self.options.max_event_bytes))
            at = time_ms(action.occurred_at)
            if wall_ms is not None and self.max_earliness_ms and at > wall_ms + self.max_earliness_ms:
                raise EventRejected(
                    RejectReason.TOO_EARLY,
                    f"occurred_at: {(at - wall_ms) / 1000:.0f} s ahead of the wall clock "
                    f"(PULSE_MAX_EARLINESS_SECONDS={self.options.max_earliness_seconds:g})",
                )
        except EventRejected as exc:
            self._dead_letter(out, record, ACTION, exc)
            return
        key = action.customer_id.encode()
        misplaced = False
        if self.partition_of is not None:
            expected = placed.get(key)
            if expected is None:
                expected = placed[key] = self.partition_of(key)
            misplaced = expected != record.partition
        if record.key != key or misplaced:
            self._reroute(out, record, ACTION, key, misplaced and record.key == key)
            return
        state = out.states.get(key)
        if state is None:
            state = load(key)
            if state.partition is None:
                out.count(ACTION, "stale")  # no such customer here: no alert of it to act on
                return
            out.tags_before[key] = tag_key(state)
        pending = PendingAction(
            at_ms=at,
            alert=alert_number(action.alert_id),
            action=action.action.value,
            assignee=action.assignee,
            outcome=None if action.outcome is None else action.outcome.value,
            destination=action.destination,
        )
        offset = record.offset + self.bases.get((record.topic, record.partition), 0)
        kept = apply_action(state, action.event_id, offset, pending, self.config)
        out.count(ACTION, "scored" if kept else "duplicate")
        out.states[key] = state
        out.partitions[key] = record.partition

    @property
    def held(self) -> set[int]:
        """Owned partitions whose clock an input topic-partition held back at the last batch."""
        return set(self._holding)

    def _check_early(self, event: EventFacts, wall_ms: int | None) -> None:
        """Spec (Clock): an event ahead of the wall clock by more than ``max_earliness_seconds`` moves no clock."""
        if wall_ms is None or not self.max_earliness_ms or event.occurred_ms <= wall_ms + self.max_earliness_ms:
            return
        ahead_s = (event.occurred_ms - wall_ms) / 1000
        raise EventRejected(
            RejectReason.TOO_EARLY,
            f"occurred_at: {ahead_s:.0f} s ahead of the wall clock "
            f"(PULSE_MAX_EARLINESS_SECONDS={self.options.max_earliness_seconds:g})",
        )

    def _position(self, key: TopicPartitionKey, read: TopicProgress | None) -> int | None:
        """Where this session reads ``key`` next: after its last record read, else where it started (None: not
        known)."""
        position = None if read is None else read.next_offset
        if position is None and self._starts is not None:
            position = self._starts.get(key)
        return position

    def holds(self, key: TopicPartitionKey) -> bool:
        """Does this input topic-partition hold its partition's clock back? Not when it caught up with its end
        offset, nor when nothing was read from it for ``clock_partition_idle_seconds`` while it is not known to
        be behind (Kafka Streams' max.task.idle.ms, Flink's idleness): its end offset not fetched yet, or
        neither a record read nor a start offset known. Without end offsets: never."""
        ends = self._ends
        if ends is None or key not in ends:
            return False
        end = ends[key]
        read = self.progress.get(key)
        position = self._position(key, read)
        if end is not None:
            if end == 0 or (position is not None and position >= end):
                if read is not None:
                    read.behind_wall_ms = None
                return False  # caught up
            if position is not None:
                wall = self._wall_ms
                if wall is not None:
                    if read is None:
                        # nothing read yet: from now on, how long it holds without a record tells a stall
                        self.progress[key] = TopicProgress(active_wall_ms=wall, behind_wall_ms=wall)
                    else:
                        if read.behind_wall_ms is None:
                            read.behind_wall_ms = wall
                        quiet_since = max(read.behind_wall_ms, read.active_wall_ms or read.behind_wall_ms)
                        if wall - quiet_since >= self.partition_idle_ms:
                            self._stalled[key] = (position, end)
                return True  # known to be behind: never idle
        wall = self._wall_ms
        if wall is None:
            return True
        if read is None:
            read = self.progress[key] = TopicProgress()
        if read.active_wall_ms is None:
            read.active_wall_ms = wall  # first seen now: idle from here
        return wall - read.active_wall_ms < self.partition_idle_ms

    def stalled(self) -> dict[TopicPartitionKey, tuple[int, int]]:
        """Input topic-partitions that held an owned partition's clock at the last batch (known behind their end
        offset) and from which no record was read for ``clock_partition_idle_seconds`` while behind: key ->
        (position, end offset). Reading behind, a consumer reads on; one that reads nothing while behind is not
        fetched, or its start position is wrong, and the clock waits for it for good. The quiet time counts from
        the later of its last read and the moment it fell behind: a sparse input quiet for minutes falls behind
        for a moment whenever a fetch brings a new end offset before a batch reads its record (counted from the
        last read alone, every such moment was a stall: the fresh clone of fed23c8 logged one per input at the
        end of a Redis outage). Found by :meth:`holds`; the worker logs them (``CheckpointMetrics``)."""
        return dict(self._stalled)

    def holding(self) -> dict[int, list[ClockHold]]:
        """Owned partitions whose clock an input topic-partition held back at the last batch, and what each of
        those inputs stood at: a diagnostic (``CheckpointMetrics`` logs a partition held for long while others
        moved on), computed on demand."""
        out: dict[int, list[ClockHold]] = {}
        ends, wall = self._ends or {}, self._wall_ms
        for partition, keys in self._holding.items():
            holds = []
            for key in keys:
                read = self.progress.get(key)
                position = self._position(key, read)
                active = None if read is None else read.active_wall_ms
                quiet = None if wall is None or active is None else wall - active
                holds.append(ClockHold(key[0], position, ends.get(key), None if read is None else read.mark_ms, quiet))
            out[partition] = holds
        return out

    def live(self, partition: int) -> bool:
        """Is ``partition`` live: on a worker (end offsets known; offline the batches are all there is), its clock
        within ``historical_alert_seconds`` of the wall clock (the alerts it raises are not historical)? Then its
        time-driven checks are bounded per batch by ``churn_due_per_live_batch``: a batch moves a live clock by
        about its own wall time, so carrying checks into the next batches delays them by that much event time,
        while doing them all at once (the clock jumped after a pause) holds back every fresh event's alert. A
        replay or backfill (a batch may move the clock by hours) keeps ``churn_due_per_batch`` alone."""
        if self._ends is None or self._wall_ms is None or not self.historical_ms:
            return False
        clock = self.population.clock_of(partition)
        return clock is not None and self._wall_ms - clock <= self.historical_ms

    def move_clocks(self) -> None:
        """Move each owned partition's clock (spec: Clock) to the lowest watermark of its input topic-partitions
        that hold it back, or, when none does (all read), to the latest time any partition reached. A holding
        topic-partition with nothing read yet keeps the clock where it is; it never goes back.

        A holding topic-partition vouches for the time just before its watermark only: its next record may
        carry the watermark's own millisecond (two events in one ms, a batch cut between them), so deciding at
        the watermark could miss it (an order at that ms unread: a false overdue). As Flink's bounded
        out-of-orderness watermark (the highest timestamp minus the bound minus 1 ms)."""
        high = self.population.clock()
        self._stalled = {}
        self._holding = {}
        for partition, part in self.population.local.items():
            lowest: int | None = None
            blocked = False
            for topic in self.input_topics:
                key = (topic, partition)
                if not self.holds(key):
                    continue
                self._holding.setdefault(partition, []).append(key)
                read = self.progress.get(key)
                mark = None if read is None else read.mark_ms
                if mark is None or mark <= MIN_TIME_MS:
                    # nothing read, or only the first representable ms: no time vouched for yet
                    blocked = True  # (the others are still looked at: their idle time starts now)
                else:
                    lowest = mark - 1 if lowest is None else min(lowest, mark - 1)
            target = None if blocked else lowest if partition in self._holding else high
            if target is not None:
                part.move_clock(target)

    def quarantine(self, record: Incoming, exc: BaseException) -> BatchOutcome:
        """The outcome of a record whose processing raised on every retry: a ``processing_error`` dead letter
        with the exception, nothing applied (a sweep tick is just dropped: the next one sweeps on). A record
        decided before (:attr:`decided`: read again) gets none: it had its dead letter, or was applied."""
        out = BatchOutcome()
        kind = ACTION if record.topic == self.actions_topic else self.kind_by_topic.get(record.topic)
        if kind is not None:
            detail = f"{type(exc).__name__}: {exc}"[: self.options.dead_letter_payload_bytes or 4096]
            self._dead_letter(out, record, kind, EventRejected(RejectReason.PROCESSING_ERROR, detail))
        return out

    def _contained(
        self, partition: int, key: bytes, state: CustomerState, now: int, out: BatchOutcome, churn: bool = True
    ) -> bool | None:
        """Time-driven re-scoring of one customer (:meth:`_rescore`); None if it raised.

        No event of the batch is at stake, so a failure is contained to that customer: whatever the attempt
        added to the batch is taken back, the customer is unscheduled and left out of sweeps until its next
        event (which is scored, or dead-lettered if it raises too), and the failure is reported.
        """
        marks = (len(out.vip_changes), len(out.alerts))
        try:
            return self._rescore(key, state, now, out, churn)
        except Exception as exc:  # noqa: BLE001 - contained: the partition moves on
            del out.vip_changes[marks[0] :], out.alerts[marks[1] :]
            out.assessed.pop(key, None)
            self._quarantine_customer(partition, key, exc, out)
            return None

    def _quarantine_customer(self, partition: int, key: bytes, exc: BaseException, out: BatchOutcome) -> None:
        self._quarantine(partition, key)
        out.time_driven_failures.append((partition, key, f"{type(exc).__name__}: {exc}"))

    def _quarantine(self, partition: int, key: bytes) -> None:
        """Unschedule ``key`` and leave it out of due checks and sweeps until its next event."""
        self.population.partition(partition).due.schedule(key, None)
        self.quarantined.add(key)

    def _sweep_limit(self, partition: int) -> int:
        """Customers one tick re-scores: a round of the partition every ``sweep_round_seconds``, so a small
        population is not re-scored every second, capped at ``sweep_customers_per_tick`` for a large one.

        The population moves a little with every event; rounds only let customers who place no order
        follow its drift (an event re-scores its customer at once)."""
        cap = self.options.sweep_customers_per_tick
        round_seconds = self.options.sweep_round_seconds
        if not round_seconds:
            return cap
        members = len(self.population.partition(partition).members)
        return max(1, min(cap, math.ceil(members * self.options.sweep_tick_seconds / round_seconds)))

    def _population_stands(self) -> None:
        """The events are applied and the population stands still for the rest of the batch: what every
        re-scored customer is measured against is computed once (purchase gap) or memoised (percentiles)."""
        self._gap_days = self.population.gap_days(self.config.churn.population_gap_min_customers)
        churn_rate = self.population.period_churn_rate(self.config.clv.lifetime_min_customers)
        self._lifetime_years = lifetime_from_churn(churn_rate, self.config.indicators.period_days)
        self._ranking = Ranking(self.population.parts(), self.config.rfm)

    def _too_late(
        self, record: Incoming, kind: Kind, event: EventFacts, state: CustomerState | None, mark_ms: int | None
    ) -> EventRejected | None:
        """An event older than its topic-partition's watermark ``mark_ms`` (the highest valid event time read
        from that topic-partition in this session; None: nothing read yet) minus ``max_lateness_days``:
        dead-lettered ``too_late``.

        Measured against the log the event was produced to, neither the global clock nor its partition's other
        topics: in a backlog or a replay partitions, and the topics of one partition, are read at very
        different speeds (one topic of a partition can be read years ahead of another), and what was read of
        another stream says nothing of this one's order. So whether an event is late depends on its own log
        alone, not on read speeds or batch cuts. A misplaced record (another producer's partitioner) is
        decided where it was produced, before it is re-published (``state`` None there); its copy (``origin``
        set) lands at the end of another log, wherever that one was read to, and is never late. A redelivered
        offset is never "too late": it was applied (or rejected) when first read, and the state drops it.
        """
        if mark_ms is None or record.origin is not None or event.occurred_ms >= mark_ms - self.max_lateness_ms:
            return None
        if state is not None:
            seen = state.source_offsets.get(kind.value)
            if seen is not None and event.offset is not None and event.offset <= seen:
                return None
        behind_days = (mark_ms - event.occurred_ms) / DAY_MS
        return EventRejected(
            RejectReason.TOO_LATE,
            f"occurred_at: {behind_days:.1f} days behind the watermark of {record.topic}[{record.partition}] "
            f"(PULSE_MAX_LATENESS_DAYS={self.options.max_lateness_days:g})",
        )

    def _advance_idle_clock(self, ticks: set[int], wall_ms: int | None) -> None:
        """Spec (Clock): when nothing moved a partition's clock for ``clock_idle_advance_seconds`` of wall time,
        move it with the wall clock, so overdue customers are still found when traffic stops in live operation.

        Only for a partition none of whose input topic-partitions holds it back (everything read), and never
        beyond the wall clock. The advanced clock is published with the partition's snapshot, so partitions
        with nothing left to read on other workers follow it.
        """
        idle_ms = int(self.options.clock_idle_advance_seconds * 1000)
        if not idle_ms or wall_ms is None:
            return
        for partition, part in self.population.local.items():
            clock = part.clock_ms
            if clock is None:
                continue
            anchor = self._idle_anchor.get(partition)
            if anchor is None or clock != anchor[2]:
                # moved by events (this worker's or, through snapshots, another's): idle from now
                self._idle_anchor[partition] = (clock, wall_ms, clock)
                continue
            anchor_clock, anchor_wall, _ = anchor
            if partition in ticks and partition not in self._holding and wall_ms - anchor_wall >= idle_ms:
                if part.move_clock(min(anchor_clock + wall_ms - anchor_wall, wall_ms)):
                    self._idle_anchor[partition] = (anchor_clock, anchor_wall, part.clock_ms)

    def profiles(
        self,
        states: dict[bytes, CustomerState],
        now: int | None,
        assessed: dict[bytes, tuple[ClvSignals, ChurnAssessment]] | None = None,
        batch: BatchOutcome | None = None,
    ) -> list[RenderedProfile]:
        """Render ``states`` at ``now`` (None: each at its partition's clock; a customer whose own events are
        ahead of that clock is rendered once the clock reaches them, by the due check). With ``batch``, a profile
        of a customer without an event in it (time-driven: due check, sweep) that fails to render is skipped and
        its customer quarantined (see :meth:`_contained`)."""
        out = []
        later = batch.to_render if batch is not None and self.render_elsewhere else None
        for key, state in states.items():
            at = now
            if at is None:
                at = None if state.partition is None else self.population.clock_of(state.partition)
                if at is None or (state.last_event_ms is not None and state.last_event_ms > at):
                    continue
            try:
                clv, risk = (assessed or {}).get(key) or assess_customer(
                    state, at, self._gap_days, self.config, self._lifetime_years
                )
                if later is not None:
                    later.append((key, state, at, clv, risk))
                    continue
                out.append(render_profile(key.decode(), state, at, self.config, self.currency, clv, risk))
            except Exception as exc:
                if batch is None or state.partition is None or key in batch.event_customers:
                    raise
                self._quarantine_customer(state.partition, key, exc, batch)
        return out

    def _retag(self, out: BatchOutcome) -> None:
        for key, state in out.states.items():
            before = out.tags_before.get(key)
            if before is not None and state.partition is not None:
                change = retag(before, tag_key(state))
                if change is not NO_CHANGE:  # the usual case: risk level, flags, segment and VIP stayed
                    self.population.partition(state.partition).apply(change)

    def _due_until(self, started: float) -> float | None:
        """When a batch's due checks stop (``timer`` seconds; the batch started at ``started``): once the batch has
        run for its budget and they took ``churn_due_time_ratio`` times what its records took (scored and
        assessed, up to now). Why both: the budget is what a rebalance can wait for (streams.batch_input.BatchPace)
        and a live batch stays far within it; a backlog batch's records fill it by design, and a share of their
        time keeps a catch-up's checks going at the input's pace. None: no time bound."""
        budget = self.options.batch_budget_seconds
        if self.timer is None or budget is None:
            return None
        now_s = self.timer()
        return max(started + budget, now_s + self.options.churn_due_time_ratio * (now_s - started))

    def check_due(
        self,
        partition: int,
        limit: int,
        load: Callable[[bytes], CustomerState],
        out: BatchOutcome,
        now: int,
        checks: int | None = None,
        until: float | None = None,
    ) -> dict[bytes, CustomerState]:
        """Re-assess the customers of ``partition`` whose time-driven churn signals fell due (spec: Churn warning:
        "raised by time passing"), at most ``limit``: first those whose own event waited for the clock, then the
        time-driven checks, at most ``checks`` of those (None: no other bound). The due-time index makes this cost
        the customers due, not the population. ``until``: stop once ``timer`` reaches it, after at least
        ``churn_due_per_live_batch`` checks; those still due stay scheduled, earliest first, for the next batch
        (a catch-up's bound, see :meth:`_due_until`)."""
        render: dict[bytes, CustomerState] = {}
        due = self.population.partition(partition).due
        timer, floor, checked = self.timer, self.options.churn_due_per_live_batch, 0
        for key in due.take_due(now, limit, checks):
            if key in out.states or key in self.quarantined:
                continue  # assessed with this batch already (and rescheduled), or quarantined
            state = load(key)
            before = tag_key(state)
            if self._contained(partition, key, state, now, out) is None:
                continue
            out.tags_before[key] = before
            out.states[key] = render[key] = state
            out.partitions[key] = partition
            out.due_checked += 1
            checked += 1
            if until is not None and timer is not None and checked >= floor and timer() >= until:
                if due.has_due(now):
                    out.due_cut += 1
                break
        return render

    def sweep_whole(self, partition: int, load: Callable[[bytes], CustomerState]) -> BatchOutcome:
        """One complete sweep round of ``partition`` that re-renders every profile: what a live worker
        reaches once traffic stopped and its sweep went round (used offline and in tests)."""
        out = BatchOutcome()
        self.move_clocks()
        now = self.population.clock_of(partition)
        if now is not None:
            self._population_stands()
            render = self.sweep(partition, None, load, out, now, refresh_all=True)
            self._retag(out)
            out.profiles = self.profiles(render, None, out.assessed)
        return out

    def check_due_whole(self, partition: int, load: Callable[[bytes], CustomerState]) -> BatchOutcome:
        """Re-assess every customer of ``partition`` due at the clock, unbounded: what a live worker's batches
        reach once the clock stopped moving (used in tests: the due-time index alone keeps time-driven
        state such as the activity flags current)."""
        out = BatchOutcome()
        self.move_clocks()
        now = self.population.clock_of(partition)
        if now is not None:
            self._population_stands()
            render = self.check_due(partition, len(self.population.partition(partition).due) + 1, load, out, now)
            self._retag(out)
            out.profiles = self.profiles(render, None, out.assessed)
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
        # a round re-renders when the population gap moved too (churn's overdue threshold; the gap is not
        # the clock, and it keeps moving after the clock stopped while partitions read behind catch up)
        # what every profile is measured against besides the clock: a round re-renders all when one moved
        chunk = self.population.sweep_slice(partition, limit, now, (self._gap_days, self._lifetime_years))
        render: dict[bytes, CustomerState] = {}
        for key in chunk.keys:
            if key in out.states or key in self.quarantined:
                continue  # scored with this batch already, or quarantined
            state = load(key)
            before = tag_key(state)
            refresh = chunk.refresh_all or refresh_all
            # churn is time-driven through the due-time index: the sweep re-assesses it only for a customer
            # whose RFM/VIP moved (the alert's context) or whose profile this round re-renders
            changed = self._contained(partition, key, state, now, out, churn=refresh)
            if changed is None:
                continue
            if changed:
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
        before = footprint(state, self.config.rfm, KEYS)
        state.clv_cents = customer_clv(state, now, self.config).clv_predictive_cents
        change = diff(before, footprint(state, self.config.rfm, KEYS))
        if not self.population.partition(state.partition).apply(change):
            return False
        if self._ranking is not None:
            self._ranking.forget(3)  # the VIP value percentiles moved
        return True

    def _assess_churn(self, key: bytes, state: CustomerState, now: int, out: BatchOutcome) -> bool:
        """Churn signals, level and alert decision, and the population activity flags; True if the stored
        churn state or flags changed.

        Not before the clock reached the customer's own latest event: its other input topics may still hold
        events up to that time (a topic read behind the others). It is due then instead (spec: Clock)."""
        before = (state.churn.level, state.churn.score, state.churn.next_check_ms, state.activity)
        if state.last_event_ms is not None and state.last_event_ms > now:
            return self._defer(key, state)
        clv, risk = assess_customer(state, now, self._gap_days, self.config, self._lifetime_years)
        out.assessed[key] = (clv, risk)
        # the team's actions in effect by now count before the decision (a handled episode is not re-alerted)
        episodes, episodes_cfg, episode_moved = state.episodes, self.config.episodes, False
        if episodes is not None and episodes.pending:
            for result in apply_due_actions(episodes, now, state.churn.alerts, episodes_cfg):
                out.count(ACTION, result)
                episode_moved = True
        decision = churn.update(state.churn, risk, now, self.config.churn)
        alert = None
        if decision.kind is not None:
            if episodes is None:
                episodes = state.episodes = EpisodeState()
            if on_alert(episodes, state.churn.alerts, risk.level, now, episodes_cfg):
                alert = self._alert(key, state, now, clv, risk, decision)
                # actions read before this alert was raised, at its own time (the router's delivery record)
                for result in apply_due_actions(episodes, now, state.churn.alerts, episodes_cfg):
                    out.count(ACTION, result)
            else:
                state.churn.alerts -= 1  # the next alert's id stays the next number
                out.suppressed_alerts += 1
        if episodes is not None:
            episode_moved = on_assessed(episodes, risk.level, now, episodes_cfg) or episode_moved
            # a save window's end or an action's time changes the episode with time alone: due then too
            due = next_due_ms(episodes, state.churn.alerts, episodes_cfg)
            if due is not None and (state.churn.next_check_ms is None or due < state.churn.next_check_ms):
                state.churn.next_check_ms = due
        # the activity flags change with time alone too: one due time covers both (the earlier one)
        state.activity, flip_ms = activity(state.purchases, now, self.config.indicators)
        if flip_ms is not None and (state.churn.next_check_ms is None or flip_ms < state.churn.next_check_ms):
            state.churn.next_check_ms = flip_ms
        if state.partition is not None:
            self.population.partition(state.partition).due.schedule(key, state.churn.next_check_ms)
        if alert is not None:
            out.alerts.append((key, alert, orjson.dumps(alert.model_dump(mode="json"))))
        after = (state.churn.level, state.churn.score, state.churn.next_check_ms, state.activity)
        return decision.kind is not None or episode_moved or before != after

    def _defer(self, key: bytes, state: CustomerState) -> bool:
        """The customer's churn is decided once its partition's clock reaches its latest event: due then (the
        due-time index re-assesses and renders it). True if the stored next check moved.

        Due exactly then, also when an earlier check was due: a check before the latest event only defers again,
        and a due time at or before the clock would be popped by this batch's due check, which skips the
        customers of the batch: the customer would drop out of the index."""
        due, at = state.churn.next_check_ms, state.last_event_ms
        if at is not None:
            state.churn.next_check_ms = at
        if state.partition is not None:
            # waiting: checked before the time-driven backlog (a fresh event's alert does not queue behind it)
            self.population.partition(state.partition).due.schedule(key, state.churn.next_check_ms, at is not None)
        return due != state.churn.next_check_ms

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
        window = window_revenue_cents(o, now, self.config.orders)
        at_risk = value_at_risk_cents(o.revenue_cents, o.cost_cents, window, self.config.orders.default_gross_margin)
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
            value_at_risk=cents_to_money(at_risk),
            suggested_action=churn.suggested_action(state.vip, risk.reasons),
            historical=bool(self.historical_ms)
            and self._wall_ms is not None
            and self._wall_ms - now > self.historical_ms,
        )

    def _dead_letter(self, out: BatchOutcome, record: Incoming, kind: str, exc: EventRejected) -> None:
        """A record rejected: its dead letter, unless it lies below what was decided before (:attr:`decided`).

        Each dead letter is sent and acknowledged before the end marker whose input positions cover its record
        (streams.checkpoint, step 1), so a record below those positions had its dead letter already: read again
        (an offsets reset, a commit lost in a crash), it is a duplicate like a valid event read again.
        """
        if record.offset < self.decided.get((record.topic, record.partition), 0):
            out.count(kind, "duplicate")
            return
        out.rejected.append(self._reject(record, kind, exc))
        out.count(kind, "dead_lettered")

    def _reroute(self, out: BatchOutcome, record: Incoming, kind: str, key: bytes, misplaced: bool) -> None:
        """A record keyed by something else than its customer, or in another partition than the customer's:
        re-published under the customer's key with where it was first read (its copy is known by that, and the
        checkpoint pairs copies with origins by index), unless it lies below what was decided before
        (:attr:`decided`): its copy was acknowledged before the end marker that covers it, and one more would
        only be dropped as a duplicate where it lands (after an offsets reset, every record of a producer with
        another partitioner would be published twice)."""
        if record.offset < self.decided.get((record.topic, record.partition), 0):
            out.count(kind, "duplicate")
            return
        out.rerouted.append((record.topic, key, record.value or b""))
        base = self.bases.get((record.topic, record.partition), 0)
        out.rerouted_origins.append(record.origin or (record.partition, record.offset + base))
        out.rerouted_keyed.append(record.origin_keyed if record.origin is not None else record.key == key)
        out.count(kind, "rerouted")
        if misplaced:
            where = (record.topic, record.partition)
            out.misplaced[where] = out.misplaced.get(where, 0) + 1

    def _reject(self, record: Incoming, kind: str, exc: EventRejected) -> Rejected:
        payload, encoding, truncated = DeadLetter.render_payload(record.value, self.options.dead_letter_payload_bytes)
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
