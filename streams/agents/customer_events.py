"""The agent that scores all four input streams into the customer state table.

One agent reads the four topics as one channel, so each customer's state has a
single writer. Events are handled in batches, each closed by a checkpoint in
the order of Quix Streams' Checkpoint:

1. score the batch in memory (validate, de-duplicate, apply);
2. send dead letters, mis-keyed events (back to their topic under the right
   key), VIP changes and retention alerts, and wait until the broker has
   acknowledged them; then send the changed states to the changelog and wait
   for those acknowledgements too; then close each touched changelog
   partition with an end marker (see ``CustomerStateTable``);
3. hand the profiles to the Redis writer, which writes them in the background
   (write-behind: the next batch is scored meanwhile; retried if Redis is down);
4. return, so ``take_events`` acks the batch and Faust's commit can cover it.

If step 2 fails, or a stop interrupts it beyond the grace time, the worker
exits at once without committing (like ``kill -9``): the events are read again
after restart and the offsets stored in each state drop what was already
applied. Nothing acknowledged is ever ahead of the changelog.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from faust.types import EventT, StreamT

from streams import metrics, offsets
from streams.codec import decode_state, encode_state
from streams.processor import BatchProcessor, Incoming
from streams.security import redis_client_kwargs
from streams.sinks.redis_profiles import RedisProfileSink
from streams.tables import END_MARKER_KEY

if TYPE_CHECKING:
    from scoring.customer import CustomerState
    from scoring.indicators import IndicatorValues
    from streams.app import PulseApp

log = logging.getLogger(__name__)

#: Exit status of a worker whose checkpoint could not complete (EX_TEMPFAIL).
EXIT_CHECKPOINT_FAILED = 75


def _fail_stop(why: str, exc: BaseException | None = None) -> None:
    log.critical("checkpoint failed, exiting without commit: %s", why, exc_info=exc)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_CHECKPOINT_FAILED)


async def run_guarded(checkpoint: Awaitable[None], grace_seconds: float) -> None:
    """Run a checkpoint so that it either completes or the process dies uncommitted."""
    task = asyncio.ensure_future(checkpoint)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        # Stopping: take_events would ack the batch on the way out, so the
        # checkpoint must finish first.
        done, _ = await asyncio.wait({task}, timeout=grace_seconds)
        if not done or task.cancelled() or task.exception() is not None:
            _fail_stop("interrupted by shutdown")
        raise
    except Exception as exc:  # noqa: BLE001 - any failure means: do not commit
        _fail_stop(repr(exc), exc)


def record_tallies(tallies: Counter) -> None:
    """Customers per risk level, per segment and VIPs of the owned partitions (a gauge per worker: they add up)."""
    vips = 0
    for tag, n in tallies.items():
        kind, _, name = tag.partition(":")
        if kind == "risk":
            metrics.CHURN_RISK_CUSTOMERS.labels(name).set(n)
        elif kind == "segment":
            metrics.SEGMENT_CUSTOMERS.labels(name).set(n)
        elif kind == "vip":
            vips = n
    metrics.VIP_CUSTOMERS.set(vips)


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def record_indicators(values: IndicatorValues | None) -> None:
    """The population indicators at the clock (whole population as this worker sees it: one value, not per worker)."""
    if values is None:
        return
    metrics.POPULATION_NPS.set(_nan(values.nps))
    metrics.POPULATION_NPS_ANSWERS.set(values.promoters + values.passives + values.detractors)
    metrics.POPULATION_CSAT_RATIO.set(_nan(values.csat))
    metrics.POPULATION_COMPLAINT_RATIO.set(_nan(values.complaint_rate))
    for percent, ms in values.first_response_ms.items():
        metrics.POPULATION_FIRST_RESPONSE_SECONDS.labels(str(percent / 100)).set(
            _nan(None if ms is None else ms / 1000)
        )
    metrics.POPULATION_RESOLUTION_RATIO.set(_nan(values.resolution_rate))
    metrics.POPULATION_TICKETS_OPENED.set(values.tickets_opened)
    metrics.POPULATION_REPURCHASE_RATIO.set(_nan(values.repurchase_rate))
    metrics.POPULATION_RETENTION_RATIO.set(_nan(values.retention_rate))
    metrics.POPULATION_CHURN_RATIO.set(_nan(values.churn_rate))
    metrics.POPULATION_NET_ADDITIONS.set(values.net_additions)
    metrics.POPULATION_ACTIVE_CUSTOMERS.labels("end").set(values.active)
    metrics.POPULATION_ACTIVE_CUSTOMERS.labels("start").set(values.active_at_start)
    metrics.POPULATION_NEW_CUSTOMERS.set(values.new)
    metrics.POPULATION_LOST_CUSTOMERS.set(values.lost)


def register(pulse: PulseApp) -> BatchProcessor:
    """Define the scoring agent on the app; returns its processor (whose population the sync agents share)."""
    settings = pulse.settings
    table = pulse.customer_states
    processor = BatchProcessor(settings)
    sink = RedisProfileSink(
        settings.redis_url,
        settings.redis_key_prefix,
        settings.redis_retry_max_seconds,
        settings.vip_value,
        client_kwargs=redis_client_kwargs(settings),
    )
    orders_topic = settings.topic_orders
    # after a rebalance, owned partitions are counted again from the recovered table
    table.on_rebalanced = processor.population.drop
    # after a Redis outage, the sweep writes every profile again (Redis may have lost them)
    sink.on_recovered = processor.population.refresh_all

    def load(key: bytes) -> CustomerState:
        return decode_state(table.get(key))

    def owned_partitions() -> set[int]:
        return {tp.partition for tp in pulse.app.consumer.assignment() if tp.topic == orders_topic}

    def ensure_population() -> None:
        owned = owned_partitions()
        local = set(processor.population.local)
        if local - owned:
            processor.population.drop(local - owned)
        missing = owned - local
        if not missing:
            return
        started = time.perf_counter()
        n = processor.rebuild(missing, ((k, decode_state(v)) for k, v in table.data.items() if k != END_MARKER_KEY))
        elapsed = time.perf_counter() - started
        metrics.POPULATION_REBUILD_SECONDS.observe(elapsed)
        log.info("population of partitions %s rebuilt from %d customers in %.2fs", sorted(missing), n, elapsed)

    flushing: asyncio.Task | None = None

    async def flush_pending() -> None:
        # until nothing is pending; a failed write leaves the rest to the sink's own retry loop
        while sink.pending and await sink.flush():
            pass

    def write_behind() -> None:
        """Redis is a view of the table: the batch is acknowledged without waiting for it (one write in
        flight, the next takes everything submitted meanwhile). A profile lost in a crash is written again
        by the first sweep round of the worker that takes over (see PopulationView.refresh_all); at a
        rebalance, ``settle_profile_writes`` keeps a late write from overwriting the next owner's."""
        nonlocal flushing
        if flushing is None or flushing.done():
            flushing = asyncio.ensure_future(flush_pending())

    @pulse.app.on_partitions_revoked.connect
    async def settle_profile_writes(app: object, revoked: object, **kwargs: object) -> None:
        # Awaited before the group rebalances on (Faust first waits for the batch in progress): the profiles
        # of this worker's last batches reach Redis before the partitions' next owner writes newer ones.
        dropped = await sink.settle(settings.shutdown_grace_seconds)
        log.info("partitions revoked: profile writes settled, %d pending dropped (the sweep rewrites them)", dropped)

    # the next offset to apply per input partition: gaps stop the batch, Faust commits no further
    guard = offsets.attach(pulse) if settings.offset_gap_check else None

    async def checkpoint(events: Sequence[EventT]) -> None:
        started = time.perf_counter()
        scan = None
        if guard:
            events = guard.owned(events, pulse.app.consumer.assignment())
            scan = await guard.check([(e.message.tp, e.message.offset) for e in events])
        ensure_population()
        batch = [
            Incoming(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
            for e in events
        ]
        outcome = processor.process(batch, load, int(time.time() * 1000))
        # Produced messages first, then state (Quix's Checkpoint order): a state that records an alert
        # or a VIP change is only written once that message is acknowledged, so a crash in between
        # replays the batch and raises it again, with the same id, instead of losing it.
        produced = []
        for rejected in outcome.rejected:
            produced.append(await pulse.dead_letters.send(key=rejected.key, value=rejected.record))
        for topic, key, value in outcome.rerouted:
            produced.append(await pulse.topics_by_name[topic].send(key=key, value=value))
        for key, _, value in outcome.vip_changes:
            produced.append(await pulse.vip_changes.send(key=key, value=value))
        for key, _, value in outcome.alerts:
            produced.append(await pulse.retention_alerts.send(key=key, value=value))
        await asyncio.gather(*produced)
        if outcome.alerts:
            metrics.CONSUME_TO_ALERT_SECONDS.observe(time.perf_counter() - started)
        # any event of a partition places a state there (changelog and RocksDB)
        event_by_partition = {e.message.partition: e for e in events}
        changelog = await table.write_states(
            (key, encode_state(state), event_by_partition[outcome.partitions[key]])
            for key, state in outcome.states.items()
        )
        written = await asyncio.gather(*changelog)
        if written and settings.changelog_end_markers:
            written += await asyncio.gather(*await table.send_end_markers({res.partition for res in written}))
        table.persisted(written)
        if scan is not None:
            guard.ledger.applied(scan)  # now take_events may ack them and Faust commit them
        sink.submit(outcome.profiles)
        write_behind()

        for (kind, outcome_name), n in outcome.counts.items():
            metrics.EVENTS.labels(kind, outcome_name).inc(n)
        for rejected in outcome.rejected:
            metrics.DEAD_LETTERS.labels(rejected.kind, rejected.reason).inc()
        for _, vip, _ in outcome.vip_changes:
            metrics.VIP_CHANGES.labels("entered" if vip else "left").inc()
        for _, alert, _ in outcome.alerts:
            metrics.RETENTION_ALERTS.labels(alert.level.value).inc()
            for reason in alert.reasons:
                metrics.RETENTION_ALERT_REASONS.labels(reason.code).inc()
        metrics.SWEPT_CUSTOMERS.inc(sum(outcome.swept.values()))
        metrics.DUE_CUSTOMERS.inc(outcome.due_checked)
        metrics.POPULATION_CUSTOMERS.set(processor.population.customers())
        metrics.TABLE_CUSTOMERS.set(processor.population.owned_customers())
        record_tallies(processor.population.tallies())
        record_indicators(processor.population.indicators())
        now_s = time.time()
        for occurred_ms in outcome.occurred_ms:
            metrics.EVENT_TO_SCORED_SECONDS.observe(max(0.0, now_s - occurred_ms / 1000))
        if processor.watermark_ms is not None:
            metrics.WATERMARK_SECONDS.set(processor.watermark_ms / 1000)
        metrics.BATCH_EVENTS.observe(len(batch))
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)

    @pulse.app.agent(pulse.customer_events, name="score_customer_events")
    async def score_customer_events(stream: StreamT) -> None:
        async for events in stream.take_events(settings.batch_max_events, settings.batch_within_seconds):
            await run_guarded(checkpoint(events), settings.shutdown_grace_seconds)

    return processor
