"""The checkpoint that closes every batch of the scoring agent, with a transactional outbox.

Order (each step waits for the broker's acknowledgements before the next):

1. the changed states go to the changelog, each carrying the batch's VIP
   changes and retention alerts of its customer as *pending* records
   (``CustomerState.pending_vip_changes`` / ``pending_alerts``: the exact JSON
   bytes); dead letters and re-keyed events are sent alongside (they decide
   nothing: a replay rejects and re-keys the same events again); once all are
   acknowledged, an end marker per touched changelog partition and per
   partition whose input positions moved (``CustomerStateTable.send_end_markers``:
   it carries the next input offset per topic the changelog now covers, which
   a committed offset must not pass, see ``streams.offsets.rewinds``);
2. the pending records are published to the VIP and retention topics, unless the
   generation fence or the changelog offsets between this worker's acknowledged
   writes (``CustomerStateTable.check_foreign``) show that another owner took
   their partitions meanwhile;
3. the states that had pending records are written again with the entries
   removed and acknowledged, without end markers (the next checkpoint's close
   them; a clearing that recovery misses only makes the recovered state
   publish the same bytes again) and without moving the persisted offsets;
4. the profiles go to the Redis writer (write-behind); the agent returns and
   ``take_events`` acks the batch, so Faust's commit can cover it.

Every write is acknowledged before the batch is: a changelog record that lands
after the partition moved to another worker would overwrite that worker's
newer state (tried: leaving step 3 to be acknowledged by the next checkpoint
lost events under kill -9 with 3 workers). A batch without VIP changes or
alerts makes the same two round trips as before (changelog, end markers); one
with some makes four (then the records, then the clearing) instead of three.

Why: an alert or VIP change id (``{customer}:churn:{n}``, ``{customer}:vip:{n}``)
counts decisions in the state. Before, the records were published first and the
state written after; a crash in between replayed the batch against a recovered
state that had not counted them, scored at another clock and population, and
published the same ids with other content (or none, leaving ids above the
state's count, or a VIP topic that ends on ``left`` for a VIP). Now an id is
published only once the changelog holds it together with its content and the
events that caused it. After a crash the recovered state still holds the
pending records: the worker re-publishes exactly those bytes (found when the
population of its partitions is rebuilt from the table) instead of deciding
again, and the replayed events are duplicates for that state (it stores the
source offsets), so they decide nothing that was already decided. A record is
published at least once, and always with the same content.

If a step fails the agent's guard exits the worker without committing (see
``run_guarded`` in ``streams/agents/customer_events.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from streams import metrics
from streams.checkpoint_metrics import CheckpointMetrics
from streams.codec import decode_state, encode_state
from streams.isolation import process_contained
from streams.ownership import Epoch, InputLog, record_crc
from streams.partitioning import origin_header, origin_keyed, origin_of
from streams.processor import BatchOutcome, BatchProcessor, Incoming
from streams.publish import OutputRecord
from streams.state_cache import StateCache
from streams.tables import RESERVED_PREFIX

if TYPE_CHECKING:
    from faust.types import EventT

    from pulse_config.settings import Settings
    from schemas.profile import RenderedProfile
    from scoring.customer import CustomerState
    from streams.render_process import RenderInput

log = logging.getLogger(__name__)


#: (records) -> the futures of their acknowledgements: hands the records to the producer (the worker's:
#: streams.publish.BatchPublisher, one record batch per topic-partition)
Publish = Callable[[Iterable[OutputRecord]], Awaitable[list[Awaitable[Any]]]]

#: () -> (end offset, start offset) of every assigned input topic-partition, keyed by (topic, partition)
InputPositions = Callable[[], tuple[Mapping[tuple[str, int], int | None], Mapping[tuple[str, int], int]]]


class StateTable(Protocol):
    """What the checkpoint needs of ``streams.tables.CustomerStateTable``."""

    data: Any
    #: the generation fence (raises ``streams.offsets.GenerationLost``); None: not in a group
    fence: Callable[[], None] | None

    def get(self, key: bytes) -> bytes | None: ...

    async def write_states(self, items: Iterable[tuple[bytes, bytes, EventT]]) -> list[Awaitable[Any]]: ...

    async def send_end_markers(
        self,
        partitions: set[int],
        positions: Mapping[int, Mapping[str, int]] | None = None,
        logs: Mapping[int, Mapping[str, InputLog]] | None = None,
    ) -> list[Awaitable[Any]]: ...

    def has_epoch(self, partition: int) -> bool: ...

    async def epoch_for(self, partition: int) -> Epoch: ...

    def changelog_positions(self, partition: int) -> Mapping[str, int]: ...

    def changelog_logs(self, partition: int) -> Mapping[str, InputLog]: ...

    def persisted(self, results: Iterable[Any]) -> None: ...

    async def check_foreign(self, owned: set[int]) -> None: ...

    async def repair(self, owned: set[int]) -> int: ...


class ProfileSink(Protocol):
    """What the checkpoint needs of ``streams.sinks.redis_profiles.RedisProfileSink``."""

    @property
    def pending(self) -> int: ...

    def submit(self, profiles: Sequence[RenderedProfile]) -> None: ...

    async def flush(self) -> bool: ...


class ProfileRenderer(Protocol):
    """What the checkpoint needs of ``streams.render_process.RenderProcess``."""

    async def submit(self, items: Sequence[RenderInput], batch: int = 0) -> None: ...


class StepTimer:
    """Observes the time since its previous call (or its creation) as one checkpoint step
    (``pulse_checkpoint_step_seconds``): where a live batch's time goes, scoring or waiting for acks."""

    __slots__ = ("last", "total")

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.total = 0.0

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        metrics.CHECKPOINT_STEP_SECONDS.labels(name).observe(now - self.last)
        self.total += now - self.last
        self.last = now


class Checkpoint:
    """Scores one batch and makes it durable in the order above; one instance per worker, called per batch.

    ``owned_partitions`` returns the input partitions the worker owns now (the population is rebuilt for
    newly owned ones before the batch is scored).
    """

    def __init__(
        self,
        settings: Settings,
        processor: BatchProcessor,
        table: StateTable,
        sink: ProfileSink,
        publish: Publish,
        owned_partitions: Callable[[], set[int]],
        wall_clock: Callable[[], float] = time.time,
        input_positions: InputPositions | None = None,
        applied_positions: Callable[[int], Mapping[str, int]] | None = None,
        replaced_logs: Callable[[], Mapping[tuple[str, int], tuple[int, InputLog]]] | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.table = table
        self.sink = sink
        #: hands the batch's records (dead letters, re-published events, the outbox's VIP changes and alerts) to
        #: the producer
        self.publish = publish
        self.owned_partitions = owned_partitions
        self.wall_clock = wall_clock
        #: end offsets and start offsets of the input topic-partitions (the per-partition clock; None: unknown)
        self.input_positions = input_positions
        #: partition -> the next offset to apply per input topic before this batch (the offset ledger)
        self.applied_positions = applied_positions
        #: () -> the input logs found replaced since the last call (streams.offsets): (topic, partition) -> the
        #: new log's first offset and its InputLog
        self.replaced_logs = replaced_logs
        #: (topic, partition) -> the input log this worker reads there (streams.ownership.InputLog): taken from the
        #: changelog with the partition, its last record moved by each piece, carried by the end markers
        self.logs: dict[tuple[str, int], InputLog] = {}
        #: owned partitions whose positions and logs were taken from the changelog (:meth:`_note_taken`)
        self._taken: set[int] = set()
        #: input topics whose positions the end markers carry (the ticks are not: a lost tick is harmless)
        self.position_topics = {*settings.input_topics().values(), settings.topic_retention_actions}
        #: (topic, partition) -> next offset after the batch's records made durable so far (pieces go in order)
        self._through: dict[tuple[str, int], int] = {}
        #: customers recovered with outbox entries (a crash before step 3), and their partition: re-published by
        #: the first checkpoint with a record of that partition (a state is written with one of its events)
        self.recovered: dict[bytes, int] = {}
        self._flushing: asyncio.Task | None = None
        #: seconds the batch in progress spent in :meth:`_commit` (the rest of it is scoring)
        self._committing = 0.0
        #: the batch in progress made input events durable; a batch with input events was (:meth:`_mark_scored`)
        self._scored_events = False
        self._scoring_started = False
        #: what each batch reports (streams.checkpoint_metrics): counters, gauges, a few log lines
        self.metrics = CheckpointMetrics(processor, wall_clock, settings.metrics_population_seconds)
        #: the states this checkpoint wrote, decoded already (streams.state_cache; dropped when ownership changes)
        self.states = StateCache(settings.state_cache_customers)
        self._loads_counted = (0, 0)
        #: the keys of the records the next batch is sure to take while the input is behind (the batch input's
        #: ``BatchQueue.backlog_keys``; None: not known, the stream path): their profiles wait for it
        self.upcoming: Callable[[], Collection[bytes]] | None = None
        #: renders the batches' profiles in a child process (PULSE_PROFILE_RENDER_PROCESS; None: this thread does)
        self.renderer: ProfileRenderer | None = None

    def load(self, key: bytes) -> CustomerState:
        raw = self.table.get(key)
        state = self.states.take(key, raw)
        return decode_state(raw) if state is None else state

    # --- population ---------------------------------------------------------------------------------------
    def ensure_population(self) -> None:
        """Drop the population of partitions no longer owned, rebuild it for newly owned ones from the table,
        and note the rebuilt customers whose state holds outbox entries (they are re-published)."""
        processor = self.processor
        owned = self.owned_partitions()
        local = set(processor.population.local)
        if local != owned:
            self.states.clear()  # a partition given away or (re)covered: its table is another writer's now
        if local - owned:
            processor.population.drop(local - owned)
        if not self._taken <= owned:
            # given away: what was taken of them is their next owner's (taken again should they come back)
            self._taken &= owned
            processor.decided = {tp: offset for tp, offset in processor.decided.items() if tp[1] in owned}
            processor.bases = {tp: base for tp, base in processor.bases.items() if tp[1] in owned}
            self.logs = {tp: log for tp, log in self.logs.items() if tp[1] in owned}
        gone = {key for key, partition in self.recovered.items() if partition not in owned}
        for key in gone:
            del self.recovered[key]
        missing = owned - local
        if missing:
            self._note_taken(missing)
        if self.replaced_logs is not None:
            self._note_replaced(self.replaced_logs(), owned)
        if not missing:
            return
        started = time.perf_counter()
        n = processor.rebuild(missing, self._recovered_states(missing))
        elapsed = time.perf_counter() - started
        metrics.POPULATION_REBUILD_SECONDS.observe(elapsed)
        log.info("population of partitions %s rebuilt from %d customers in %.2fs", sorted(missing), n, elapsed)
        if self.recovered:
            log.info("%d recovered customers hold unpublished VIP changes or alerts", len(self.recovered))

    def rebalanced(self) -> None:
        """After a rebalance every partition is recovered again, and one given away and back may have moved on
        meanwhile: the next batch takes positions and input logs from the changelog again (:meth:`_note_taken`;
        a log this worker found replaced and has not named in an end marker yet is found again at the seek after
        the recovery, with the same new base)."""
        self._taken.clear()

    def _note_taken(self, partitions: set[int]) -> None:
        """What the changelog says of ``partitions`` when the worker takes them: their input positions, below
        which everything was decided (``BatchProcessor.decided``; the end markers never lower them, see
        :meth:`_positions`), and the input logs read there with their offset bases (``BatchProcessor.bases``)."""
        processor = self.processor
        for partition in partitions - self._taken:  # a rebuild after a failed try keeps what the worker had
            self._taken.add(partition)
            for topic, offset in self.table.changelog_positions(partition).items():
                processor.decided[(topic, partition)] = offset
            for topic, log in self.table.changelog_logs(partition).items():
                self._take_log((topic, partition), log)

    def _take_log(self, tp: tuple[str, int], log: InputLog) -> None:
        self.logs[tp] = log
        if log.base:
            self.processor.bases[tp] = log.base
        else:
            self.processor.bases.pop(tp, None)

    def _note_replaced(self, replaced: Mapping[tuple[str, int], tuple[int, InputLog]], owned: set[int]) -> None:
        """Input logs found replaced (streams.offsets, at the seek after the partition was taken): read from the
        new log's ``start`` with its new offset base, nothing of it decided yet. The next end marker of the
        partition names the new log (its position falls to the new log's, see :meth:`_positions`)."""
        for tp, (start, log) in replaced.items():
            if tp[1] not in owned:
                continue  # given away meanwhile: its next owner finds the replacement itself
            self._take_log(tp, log)
            self.processor.decided[tp] = start

    def _recovered_states(self, partitions: set[int]) -> Iterable[tuple[bytes, CustomerState]]:
        for key, raw in self.table.data.items():
            if key.startswith(RESERVED_PREFIX):
                continue  # markers, RocksDB's view of the partition: not customers
            state = decode_state(raw)
            if (state.pending_vip_changes or state.pending_alerts) and state.partition in partitions:
                self.recovered[key] = state.partition
            yield key, state

    # --- the checkpoint -----------------------------------------------------------------------------------
    async def __call__(self, events: Sequence[EventT]) -> None:
        started = time.perf_counter()
        started_s = self.wall_clock()
        self._scored_events = False
        self.ensure_population()
        self._through = {}
        self._committing = 0.0
        batch = [
            Incoming(
                e.message.topic,
                e.message.partition,
                e.message.offset,
                e.message.key,
                e.message.value,
                origin_of(e.message.headers),
                origin_keyed(e.message.headers),
            )
            for e in events
        ]
        ends, starts = self.input_positions() if self.input_positions is not None else (None, None)
        upcoming = self.upcoming if self.settings.backlog_defer_profiles else None
        self.processor.upcoming = frozenset() if upcoming is None else upcoming()

        async def commit_piece(outcome: BatchOutcome, indexes: Sequence[int]) -> None:
            await self._commit(outcome, [events[i] for i in indexes], started)

        # a record whose processing raises is isolated and, after bounded retries, dead-lettered (streams.isolation)
        await process_contained(
            self.processor,
            batch,
            self.load,
            int(self.wall_clock() * 1000),
            self._rebuild,
            commit_piece,
            self.settings.processing_retries,
            self._failed,
            ends,
            starts,
        )
        metrics.BATCH_EVENTS.observe(len(batch))
        self._count_loads()
        elapsed = time.perf_counter() - started
        metrics.CHECKPOINT_STEP_SECONDS.labels("score").observe(max(0.0, elapsed - self._committing))
        metrics.CHECKPOINT_SECONDS.observe(elapsed)
        if self._scored_events:
            self._mark_scored(started_s)

    def _mark_scored(self, started_s: float) -> None:
        """A batch with input events is durable: the first one's start and the last one's end, as wall times
        (``pulse bench`` times a backlog from the one to the other, as it times its peers from their first event
        to their last; operators see when a start began scoring and whether scoring goes on)."""
        if not self._scoring_started:
            self._scoring_started = True
            metrics.SCORING_STARTED.set(started_s)
        metrics.LAST_SCORED.set(self.wall_clock())

    def _count_loads(self) -> None:
        """The batch's state loads by source (``pulse_state_loads_total``), added once per batch."""
        cache, (hits, misses) = self.states, self._loads_counted
        if cache.hits > hits:
            metrics.STATE_LOADS.labels("hit").inc(cache.hits - hits)
        if cache.misses > misses:
            metrics.STATE_LOADS.labels("decoded").inc(cache.misses - misses)
        self._loads_counted = (cache.hits, cache.misses)

    def _rebuild(self, partitions: set[int]) -> None:
        """Forget the population of ``partitions`` and count it again from the table (after a failed try)."""
        self.processor.population.drop(partitions)
        self.ensure_population()

    def _failed(self, record: Incoming, exc: BaseException, final: bool) -> None:
        metrics.PROCESSING_ERRORS.labels("event").inc()
        log.warning(
            "%s[%d]@%d raised%s: %r", record.topic, record.partition, record.offset, "" if final else ", retrying", exc
        )

    async def _commit(self, outcome: BatchOutcome, events: Sequence[EventT], started: float) -> None:
        """Make one processed batch (or, after a failure, one record of it) durable, in the order above."""
        step = StepTimer()
        self.metrics.anomalies(outcome)
        # any event of a partition places a state there (changelog and RocksDB)
        event_by_partition = {e.message.partition: e for e in events}
        outbox, partitions = self._outbox(outcome, set(event_by_partition))
        positions = self._positions(events)

        # 1. states with their decisions pending, and the records that decide nothing
        produced = await self.publish(
            [OutputRecord(self.settings.topic_dead_letters, r.key, r.record) for r in outcome.rejected]
            + [
                OutputRecord(topic, key, value, origin_header(origin, keyed))
                for (topic, key, value), origin, keyed in zip(
                    outcome.rerouted, outcome.rerouted_origins, outcome.rerouted_keyed, strict=True
                )
            ]
        )
        acks = await self._produce(outcome.states, outcome.partitions, event_by_partition)
        step("changelog")
        written = list(await asyncio.gather(*acks))
        await asyncio.gather(*produced)
        step("changelog_ack")
        # the end markers, with the input positions this piece makes durable, once everything it produced is
        written += await self._close({res.partition for res in written}, positions)
        step("end_markers")
        if outbox:
            # 2. publish exactly the recorded bytes, unless the group dropped this worker while they were being
            # written: the partitions' next owner may have recovered without them and decides those ids itself (a
            # worker woken from a stall passes the fence before its writes until a heartbeat is refused, and the
            # acks of writes sent before the stall come at once)
            if self.table.fence is not None:
                self.table.fence()
            # and unless its writes landed after another owner's marker (read back only when another writer's
            # offsets lie between this worker's acknowledged writes): the heartbeat may not have told it yet
            await self.table.check_foreign(self.owned_partitions())
            await self._publish(outbox, outcome)
            step("publish")
            if outcome.alerts:
                metrics.CONSUME_TO_ALERT_SECONDS.observe(time.perf_counter() - started)
            # 3. the outbox is done: remove the entries
            for state in outbox.values():
                state.pending_vip_changes = []
                state.pending_alerts = []
            # not in the persisted offsets (RocksDB): without an end marker behind them Tansu's highwater may
            # stop short of them, and Faust refuses a persisted offset above the highwater
            await self._write(outbox, partitions, event_by_partition)
            for key in outbox:
                self.recovered.pop(key, None)
            step("clear")
        self.table.persisted(written)
        # late writes of an older epoch found between ours (or by our recovery): their customers written again
        await self.table.repair(self.owned_partitions())
        step("repair")
        # 4. Redis behind
        await self._claim_profile_partitions(outcome)
        if outcome.to_render and self.renderer is not None:
            await self.renderer.submit(self._render_inputs(outcome), outcome.seq)
        self.sink.submit(outcome.profiles)
        self.write_behind()
        step("submit")
        self.metrics.batch(outcome)
        if outcome.counts or outcome.rejected:
            self._scored_events = True
        step("metrics")
        self._committing += step.total

    async def _claim_profile_partitions(self, outcome: BatchOutcome) -> None:
        """Each owned partition with a profile in this batch gets this worker's epoch (its owner marker) before
        the profile goes to the sink, which fences the partition's Redis writes with it
        (streams.sinks.redis_profiles): a sweep round or a due check renders profiles of partitions no state was
        written to since the rebalance, and unfenced, a worker the group dropped could overwrite them. The
        recovery's claim writes every marker first (``CustomerStateTable.claim``), so this writes one only where
        that did not run: the stream input path's wait for it is bounded."""
        partition_of = self.processor.partition_of
        if partition_of is None or not (outcome.profiles or outcome.to_render):
            return
        unclaimed = {p for p in self.owned_partitions() if not self.table.has_epoch(p)}
        if not unclaimed:  # the usual case: every owned partition wrote a state since the rebalance
            return
        keys = [profile.customer_id.encode() for profile in outcome.profiles]
        keys += [key for key, *_ in outcome.to_render]
        for partition in sorted(unclaimed.intersection(map(partition_of, keys))):
            await self.table.epoch_for(partition)

    def render_answered(self, batch: int, failures: list[tuple[str, str]], dropped: bool) -> None:
        """The render process answered ``batch`` (``RenderProcess.on_answered``): a profile it could not render
        quarantines its customer as a failure on this thread does (``BatchProcessor.render_answered``), and is
        reported alike (``CheckpointMetrics.render_failures``)."""
        self.metrics.render_failures(self.processor.render_answered(batch, failures, dropped))

    def _render_inputs(self, outcome: BatchOutcome) -> list[RenderInput]:
        """What the render process renders each profile from: the bytes the table holds now (every state of the
        batch is written, and one only rendered is unchanged; its outbox entries, cleared or not, render nothing),
        so the handing over encodes no state."""
        get = self.table.get
        out = []
        for key, state, at, clv, risk in outcome.to_render:
            raw = get(key)
            out.append((key.decode(), encode_state(state) if raw is None else raw, at, clv, risk))
        return out

    def _outbox(self, outcome: BatchOutcome, present: set[int]) -> tuple[dict[bytes, CustomerState], dict[bytes, int]]:
        """The batch's decisions joined to their states' outbox, and every state whose outbox is to be published
        now (with the partition of each): the batch's, and recovered ones of partitions present in the batch."""
        states = outcome.states
        for key, _, raw in outcome.vip_changes:
            states[key].pending_vip_changes.append(raw)
        for key, _, raw in outcome.alerts:
            states[key].pending_alerts.append(raw)
        outbox = {key: state for key, state in states.items() if state.pending_vip_changes or state.pending_alerts}
        partitions = {key: outcome.partitions[key] for key in outbox}
        for key, partition in list(self.recovered.items()):
            if key in states or partition not in present:
                continue
            state = self.load(key)
            if state.pending_vip_changes or state.pending_alerts:
                outbox[key] = state
                partitions[key] = partition
            else:
                del self.recovered[key]
        return outbox, partitions

    def _positions(self, events: Sequence[EventT]) -> dict[int, dict[str, int]]:
        """Per partition of the batch (or piece), the next input offset per topic the changelog covers once this
        piece is durable: the ledger's before the batch, moved by this batch's records so far, and never below
        what the changelog covered when the worker took the partition (``BatchProcessor.decided``).

        Never lower: after an offsets reset the worker reads from 0 again, and every record below the old
        position is still covered (each state drops what it applied, each rejected record had its dead letter).
        Positions that fell with the re-read would tell the next owner (after a crash or a rebalance in the
        middle of it) that those records were never decided, and it would dead-letter them a second time."""
        through = self._through
        last: dict[tuple[str, int], Any] = {}
        for e in events:
            message = e.message
            if message.topic in self.position_topics:
                tp = (message.topic, message.partition)
                if message.offset + 1 > through.get(tp, 0):
                    through[tp] = message.offset + 1
                    last[tp] = message
        # the last record of each input log this piece decides names the log (a re-read below it keeps the one
        # read before: the end markers never name a lower one than they did, as for the positions)
        logs = self.logs
        for tp, message in last.items():
            log = logs.get(tp) or InputLog()
            if log.last is None or message.offset > log.last:
                logs[tp] = InputLog(message.offset, record_crc(message.key, message.value), log.base)
        decided = self.processor.decided
        out: dict[int, dict[str, int]] = {}
        for partition in {e.message.partition for e in events}:
            base = dict(self.applied_positions(partition)) if self.applied_positions is not None else {}
            for topic in self.position_topics:
                for offset in (through.get((topic, partition)), decided.get((topic, partition))):
                    if offset is not None and offset > base.get(topic, -1):
                        base[topic] = offset
            if base:
                out[partition] = base
        return out

    async def _write(
        self,
        states: Mapping[bytes, CustomerState],
        partitions: Mapping[bytes, int],
        event_by_partition: Mapping[int, EventT],
    ) -> list[Any]:
        """Write ``states`` to the changelog and wait for the acks (the end markers are :meth:`_close`'s)."""
        return list(await asyncio.gather(*await self._produce(states, partitions, event_by_partition)))

    async def _produce(
        self,
        states: Mapping[bytes, CustomerState],
        partitions: Mapping[bytes, int],
        event_by_partition: Mapping[int, EventT],
    ) -> list[Awaitable[Any]]:
        """Encode ``states`` and hand them to the producer; returns the futures of their acks. The table holds
        the bytes once this returns: each state is kept decoded with them for the next batch (``self.states``)."""
        encoded = [(key, encode_state(state), state) for key, state in states.items()]
        futures = await self.table.write_states(
            (key, raw, event_by_partition[partitions[key]]) for key, raw, _ in encoded
        )
        put = self.states.put
        for key, raw, state in encoded:
            put(key, raw, state)
        return futures

    async def _close(self, touched: set[int], positions: Mapping[int, Mapping[str, int]] | None = None) -> list[Any]:
        """End markers: for each touched partition (``PULSE_CHANGELOG_END_MARKERS``) and, always, for each whose
        input positions moved (they carry them: a committed offset ahead of them is rewound), with the input logs
        they were read from (streams.ownership.InputLog)."""
        close = set(touched) if self.settings.changelog_end_markers else set()
        for partition, where in (positions or {}).items():
            if dict(where) != dict(self.table.changelog_positions(partition)):
                close.add(partition)
        if not close:
            return []
        logs: dict[int, dict[str, InputLog]] = {}
        for (topic, partition), log in self.logs.items():
            if partition in close:
                logs.setdefault(partition, {})[topic] = log
        return list(await asyncio.gather(*await self.table.send_end_markers(close, positions, logs)))

    async def _publish(self, outbox: Mapping[bytes, CustomerState], outcome: BatchOutcome) -> None:
        s = self.settings
        decided_vip = len(outcome.vip_changes)
        decided_alerts = len(outcome.alerts)
        records: list[OutputRecord] = []
        vips = alerts = 0
        for key, state in outbox.items():
            for raw in state.pending_vip_changes:
                records.append(OutputRecord(s.topic_vip_changes, key, raw))
            for raw in state.pending_alerts:
                records.append(OutputRecord(s.topic_retention_alerts, key, raw))
            vips += len(state.pending_vip_changes)
            alerts += len(state.pending_alerts)
        await asyncio.gather(*await self.publish(records))
        if vips > decided_vip:
            metrics.OUTBOX_REPUBLISHED.labels("vip_change").inc(vips - decided_vip)
        if alerts > decided_alerts:
            metrics.OUTBOX_REPUBLISHED.labels("alert").inc(alerts - decided_alerts)

    # --- Redis ------------------------------------------------------------------------------------------------
    async def _flush_pending(self) -> None:
        # until nothing is pending; a failed write leaves the rest to the sink's own retry loop
        while self.sink.pending and await self.sink.flush():
            pass

    def write_behind(self) -> None:
        """Redis is a view of the table: the batch is acknowledged without waiting for it (one write in
        flight, the next takes everything submitted meanwhile). A profile lost in a crash is written again
        by the first sweep round of the worker that takes over (see PopulationView.refresh_all); at a
        rebalance, ``settle_profile_writes`` keeps a late write from overwriting the next owner's."""
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush_pending())
