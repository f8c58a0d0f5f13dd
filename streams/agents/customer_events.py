"""The agent that scores all four input streams into the customer state table.

One agent reads the four topics as one channel, so each customer's state has a
single writer. Events are handled in batches, each closed by a checkpoint
(``streams.checkpoint.Checkpoint``, in the order of Quix Streams' Checkpoint
with a transactional outbox for VIP changes and alerts): score the batch in
memory; write the changed states, with the batch's decisions recorded as
pending, to the changelog and wait for the acks; publish the decisions and
wait; clear them from the states; hand the profiles to the Redis writer; return,
so ``take_events`` acks the batch and Faust's commit can cover it. With
``PULSE_INPUT_PATH=batch`` a task takes the group consumer's fetches instead
(``streams.batch_input``), and Faust commits what each checkpoint applied.

If the checkpoint fails, or a stop interrupts it beyond the grace time, the
worker exits at once without committing (like ``kill -9``): the events are read
again after restart and the offsets stored in each state drop what was already
applied. Nothing acknowledged is ever ahead of the changelog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, cast

from faust.types import TP, EventT, StreamT
from mode.utils.times import want_seconds

from schemas.profile import native_available, native_in_use
from streams import batch_input, offsets
from streams.admin import PARTITIONS_ADDED_HINT
from streams.checkpoint import Checkpoint
from streams.fail_stop import fail_stop
from streams.partitioning import partitioner
from streams.processor import BatchProcessor
from streams.publish import BatchPublisher
from streams.render_process import RenderProcess
from streams.security import redis_client_kwargs
from streams.sinks.redis_profiles import Packed, ProfileFence, RedisProfileSink
from streams.tables import unrecoverable_partitions
from streams.watchdog import watched

if TYPE_CHECKING:
    from streams.app import PulseApp
    from streams.tables import CustomerStateTable

log = logging.getLogger(__name__)

#: every fail-stop of the agent goes through this name (tests replace it)
_fail_stop = fail_stop


def _render_process_died(why: str) -> None:
    _fail_stop(f"{why} (restarted, the worker's sweep rewrites the profiles)")


async def run_guarded(checkpoint: Awaitable[Any], grace_seconds: float, warn_seconds: float = 30.0) -> None:
    """Run a checkpoint so that it either completes or the process dies uncommitted; one still running after
    ``warn_seconds`` logs what it awaits (streams.watchdog)."""
    task = asyncio.ensure_future(checkpoint)
    try:
        await watched(task, warn_seconds, "checkpoint")
    except asyncio.CancelledError:
        # Stopping: take_events would ack the batch on the way out, so the
        # checkpoint must finish first.
        done, _ = await asyncio.wait({task}, timeout=grace_seconds)
        if not done or task.cancelled() or task.exception() is not None:
            _fail_stop("checkpoint interrupted by shutdown")
        raise
    except Exception as exc:  # noqa: BLE001 - any failure means: do not commit
        _fail_stop(f"checkpoint failed: {exc!r}", exc)


def fenced(app: Any, table: CustomerStateTable) -> None:
    """The generation fence before each changelog write; a worker the group dropped forgets its RocksDB offsets
    (its store may hold writes recovery skips) before the checkpoint fails."""
    try:
        offsets.check_generation(app)
    except offsets.GenerationLost:
        table.forget_persisted()
        raise


def register(pulse: PulseApp) -> BatchProcessor:
    """Define the scoring agent on the app; returns its processor (whose population the sync agents share)."""
    settings = pulse.settings
    table = pulse.customer_states
    # records outside their customer's murmur2 partition are re-published, not applied (streams.partitioning)
    partition_of = partitioner(settings.partitions)
    # wall seconds bound the due checks of a batch past its budget (PULSE_CHURN_DUE_TIME_RATIO)
    processor = BatchProcessor(pulse.processor_config, partition_of, time.perf_counter)

    @pulse.app.task
    async def log_profile_renderer() -> None:
        """Which renderer this worker's profiles take (at start, once logging is set up)."""
        if native_in_use():
            log.info("profiles: rendered and packed in C (schemas._native)")
        else:
            why = "PULSE_NATIVE_PROFILES=false" if native_available() else "schemas._native not built: no C compiler?"
            log.info("profiles: rendered and packed in Python (%s)", why)

    sink = RedisProfileSink(
        settings.redis_url,
        settings.redis_key_prefix,
        settings.redis_retry_max_seconds,
        settings.vip_value,
        client_kwargs=redis_client_kwargs(settings),
        # a worker the group dropped writes no profile over a newer owner's (the changelog's ownership epochs)
        fence=ProfileFence(
            lambda cid: partition_of(cid.encode()),
            table.writer_epoch.get,
            table.marker_offsets.get,
            # a fence that names a marker this changelog lacks was raised for an earlier one: written over
            table.holds_marker,
        ),
    )
    orders_topic = settings.topic_orders
    # after a rebalance, owned partitions are counted again from the recovered table (set below, with the checkpoint)
    # a worker the group dropped (stalled past the rebalance timeout) writes no state: fail-stop, re-read
    table.fence = lambda: fenced(pulse.app, table)
    # after a Redis outage, the sweep writes every profile again (Redis may have lost them)
    sink.on_recovered = processor.population.refresh_all

    inputs = set(settings.input_topics().values())

    def highwater(tp: TP) -> int | None:
        try:
            return pulse.app.consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - revoked meanwhile, or not fetched yet: not known
            return None

    def input_positions() -> tuple[dict[tuple[str, int], int | None], dict[tuple[str, int], int]]:
        """The consumer's end offset per assigned input topic-partition (a partition's clock waits for the ones
        behind) and where this session reads it from until a record of it is read (offsets.read_starts)."""
        tps = [tp for tp in pulse.app.consumer.assignment() if tp.topic in inputs]
        committed = getattr(pulse.app.consumer, "_committed_offset", {})
        starts = offsets.read_starts(tps, committed, guard.ledger if guard is not None else None)
        tap = getattr(pulse.app, "pulse_batch_input", None)
        if tap is None:
            ends = {(tp.topic, tp.partition): highwater(tp) for tp in tps}
        else:  # past transaction markers and aborted records at a log's end (BatchInput.readable_end)
            ends = {
                (tp.topic, tp.partition): tap.readable_end(tp, highwater(tp), starts.get((tp.topic, tp.partition)))
                for tp in tps
            }
        return ends, starts

    def owned_partitions() -> set[int]:
        return {tp.partition for tp in pulse.app.consumer.assignment() if tp.topic == orders_topic}

    # the next offset to apply per input partition: gaps stop the batch, Faust commits no further (streams.offsets)
    guard = offsets.attach(pulse) if settings.offset_gap_check else None
    checkpoint = Checkpoint(
        settings,
        processor,
        table,
        sink,
        # dead letters, re-published events and the outbox as record batches (streams.publish), on the producer
        # under Faust's, as the changelog goes
        BatchPublisher(lambda: cast(Any, pulse.app.producer)._ensure_producer()).publish,
        owned_partitions,
        input_positions=input_positions,
        applied_positions=guard.positions if guard is not None else None,
        # input logs found replaced at the seek after a recovery (a topic deleted and created again)
        replaced_logs=guard.take_replaced if guard is not None else None,
    )

    def rebalanced() -> None:
        processor.population.drop()
        checkpoint.rebalanced()

    table.on_rebalanced = rebalanced
    renderer = None
    if settings.profile_render_process:
        # profiles rendered and packed in a child process, handed to the sink in order (streams.render_process)
        processor.render_elsewhere = True

        def packed(profiles: dict[str, Packed]) -> None:
            sink.submit_packed(profiles)
            checkpoint.write_behind()

        renderer = checkpoint.renderer = RenderProcess(
            processor.config,
            processor.currency,
            settings.redis_key_prefix,
            settings.vip_value,
            settings.profile_render_max_batches,
            settings.gc_thresholds,
            packed,
            _render_process_died,
            # a profile the child could not render quarantines its customer as an in-process failure does
            checkpoint.render_answered,
        )

        # spawned now, before Faust's threads and clients start: its imports overlap the worker's start-up and
        # recovery instead of delaying the first batches' profiles
        renderer.start()

        @pulse.app.task
        async def read_render_process() -> None:
            await renderer.open()

    if guard is not None:
        # a committed offset ahead of the changelog's input position is read again from there (streams.ownership)
        guard.changelog_positions = table.recovered_positions
        guard.changelog_logs = table.changelog_logs
        guard.table_positions = table.changelog_positions

        def missed_generation(last: int | None, generation: int | None) -> None:
            # another worker owned our partitions meanwhile, and our late writes (if any) are skipped by recovery:
            # the local store may hold them, so start again from the changelog (RocksDB: from its beginning)
            table.forget_persisted()
            _fail_stop(f"group generation {generation} after {last}: this worker was dropped from the group")

        guard.on_missed_generation = missed_generation

    async def guarded_checkpoint(events: Sequence[EventT]) -> Sequence[EventT]:
        """Check the batch against the offset ledger, make it durable; returns the events it applied."""
        scan = None
        if guard:
            events = guard.owned(events, pulse.app.consumer.assignment())
            scan = await guard.check([(e.message.tp, e.message.offset) for e in events])
        await checkpoint(events)
        if guard is not None and scan is not None:
            guard.ledger.applied(scan)  # the changelog holds them: now take_events may ack and Faust commit them
        return events

    changelog = table.changelog_topic.get_topic_name()
    channel = [*settings.input_topics().values(), settings.topic_retention_actions, settings.topic_ticks()]

    @pulse.app.on_partitions_assigned.connect  # type: ignore[arg-type]  # a coroutine receiver, as Faust allows
    async def refuse_unrecoverable(app: object, assigned: object, **kwargs: object) -> None:
        # Sent after Faust paused the new assignment and before its recovery can resume it: nothing of it has
        # been scored. A restart reads the broker's metadata anew (and ensure_topics creates a missing changelog).
        gaps = unrecoverable_partitions(pulse.app.assignor.assigned_actives(), channel, changelog)
        if any(p >= settings.partitions for p in gaps):
            # Faust's assignor groups topics by partition count, so an input topic that gained partitions is
            # assigned apart from the changelog; states are partitioned by murmur2 % PULSE_PARTITIONS
            _fail_stop(
                f"assigned input partitions {sorted(gaps)} with PULSE_PARTITIONS {settings.partitions}: an input "
                f"topic gained partitions. {PARTITIONS_ADDED_HINT}"
            )
        if gaps:
            _fail_stop(
                f"assigned input partitions {sorted(gaps)} without their partitions of {changelog}: their states "
                "cannot be recovered, so they are not scored (was the changelog missing from the group leader's "
                "metadata, or created with fewer partitions?)"
            )

    @pulse.app.on_partitions_revoked.connect  # type: ignore[arg-type]  # a coroutine receiver, as Faust allows
    async def settle_profile_writes(app: object, revoked: object, **kwargs: object) -> None:
        # Awaited before the group rebalances on (Faust first waits for the batch in progress): the profiles
        # of this worker's last batches reach Redis before the partitions' next owner writes newer ones.
        grace = settings.shutdown_grace_seconds
        if renderer is not None:  # the profiles being rendered reach the sink first (or are dropped)
            started = time.monotonic()
            await renderer.settle(grace)
            grace = max(0.0, grace - (time.monotonic() - started))
        dropped = await sink.settle(grace)
        log.info("partitions revoked: profile writes settled, %d pending dropped (the sweep rewrites them)", dropped)

    if settings.input_path == "batch":
        # the group consumer's fetches as raw batches; Faust commits what the checkpoint applied (streams.batch_input)
        tap = batch_input.attach(
            pulse.app,
            pulse.customer_events.topics,
            # a backlog batch fits, and a backlog can be seen
            max(settings.input_queue_records, settings.batch_backlog_max_events, settings.batch_backlog_from_events),
            cap=guard.ledger.cap if guard is not None else None,
            merge=settings.input_merge_topics,
            pace=batch_input.BatchPace(settings.batch_backlog_seconds()),
        )
        # no batch starts before the recovery's claim of the partitions (CustomerStateTable.claim) is done
        tap.gate = table.claimed
        pulse.customer_events.__aiter__()  # subscribes the group to the channel's topics, as an agent's stream does
        # a backlog's next batch: the customers it scores again render there (streams.processor._defer_profiles)
        checkpoint.upcoming = lambda: tap.queue.backlog_keys(
            settings.batch_max_events, settings.batch_backlog_max_events, settings.batch_backlog_from_events
        )

        @pulse.app.task
        async def score_customer_batches() -> None:
            log.info(
                "input path: batch (the group consumer's fetches, up to %d records queued; batches of %d, of all "
                "queued up to %d, of up to %d from %d queued, each expected within %s s)",
                tap.queue.max_records,
                settings.batch_max_events,
                max(settings.batch_max_events, settings.batch_queued_max_events),
                settings.batch_backlog_max_events,
                settings.batch_backlog_from_events,
                settings.batch_backlog_seconds(),
            )
            await tap.run(
                guarded_checkpoint,  # type: ignore[arg-type]  # InputRecord carries what the checkpoint reads
                settings.batch_max_events,
                settings.batch_within_seconds,
                lambda work: run_guarded(work, settings.shutdown_grace_seconds, settings.checkpoint_stall_warn_seconds),
                backlog_limit=settings.batch_backlog_max_events,
                backlog_from=settings.batch_backlog_from_events,
                queued_limit=settings.batch_queued_max_events or None,
            )

        # every owned partition's sweep tick brings a batch each PULSE_SWEEP_TICK_SECONDS: none for much longer
        # means the input stopped (a flow left suspended, partitions left paused, a fetch loop stuck), which no
        # checkpoint can report; say where it stands, once per silence
        silence_seconds = max(settings.checkpoint_stall_warn_seconds, 10 * settings.sweep_tick_seconds)
        silent_logged = False

        @pulse.app.timer(silence_seconds / 2, name="watch_input_silence")
        async def watch_input_silence() -> None:
            nonlocal silent_logged
            quiet = tap.silent_for()
            assigned = any(tp.topic in inputs for tp in pulse.app.consumer.assignment())
            silent = quiet is not None and assigned and quiet >= silence_seconds
            if silent and not silent_logged and not pulse.app.rebalancing:
                log.warning(
                    "no batch for %.0f s although sweep ticks come every %s s: %s",
                    quiet,
                    settings.sweep_tick_seconds,
                    tap.describe(cast(Any, pulse.app.consumer)),
                )
            silent_logged = silent

        return processor

    @pulse.app.agent(pulse.customer_events, name="score_customer_events")
    async def score_customer_events(stream: StreamT) -> None:
        async for events in stream.take_events(  # type: ignore[attr-defined]  # faust-streaming's Stream has it
            settings.batch_max_events, settings.batch_within_seconds
        ):
            # as the batch path's gate, but bounded: these events are unacknowledged, and a rebalance waits for
            # them before its recovery can claim anything
            if not table.claimed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(table.claimed.wait(), want_seconds(pulse.app.conf.broker_request_timeout))
            await run_guarded(
                guarded_checkpoint(events), settings.shutdown_grace_seconds, settings.checkpoint_stall_warn_seconds
            )

    return processor
