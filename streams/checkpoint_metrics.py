"""What the checkpoint reports per batch: Prometheus metrics and a few log lines (streams.metrics).

Kept out of ``streams.checkpoint``, which is the order of the durable steps
only: the checkpoint calls :meth:`CheckpointMetrics.anomalies` before its
writes (records another producer misplaced, contained time-driven failures) and
:meth:`CheckpointMetrics.batch` once the batch is durable. Nothing here writes
to Kafka or Redis, and nothing here can fail the batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from scoring.episodes import (
    EPISODE_DESTINATIONS_TAG,
    EPISODES_TAG,
    RECOVERED_DESTINATIONS_TAG,
    RECOVERED_TAG,
    SAVE_TAGS,
)
from streams import metrics
from streams.processor import NEWER_EVENT, QUARANTINED, RenderFailure

if TYPE_CHECKING:
    from scoring.indicator_sums import IndicatorValues
    from streams.processor import BatchOutcome, BatchProcessor

#: the checkpoint's logger: these lines were logged by streams.checkpoint and keep its name
log = logging.getLogger("streams.checkpoint")


def record_tallies(tallies: Counter) -> None:
    """Customers per risk level, per segment and VIPs of the owned partitions, and their alert episodes' save
    rate (scoring.episodes) (a gauge per worker: they add up)."""
    vips = 0
    for gauge in (
        metrics.ALERT_EPISODES,
        metrics.ALERT_EPISODE_DELIVERIES,
        metrics.SAVE_RECOVERED_REVENUE,
        metrics.SAVE_RECOVERED_REVENUE_BY_DESTINATION,
    ):
        gauge.clear()  # a revoked partition's episodes leave with it
    for tag, n in tallies.items():
        kind, _, name = tag.partition(":")
        if kind in SAVE_TAGS:
            record_save_tally(kind, name, n)
        elif kind == "risk":
            metrics.CHURN_RISK_CUSTOMERS.labels(name).set(n)
        elif kind == "segment":
            metrics.SEGMENT_CUSTOMERS.labels(name).set(n)
        elif kind == "vip":
            vips = n
    metrics.VIP_CUSTOMERS.set(vips)


def record_save_tally(kind: str, name: str, n: int) -> None:
    """One save-rate tally (scoring.episodes.episode_tallies) into its gauge; cents become currency units."""
    if kind == EPISODES_TAG:
        level, action, result = name.split(":")
        metrics.ALERT_EPISODES.labels(level, action, result).set(n)
    elif kind == EPISODE_DESTINATIONS_TAG:
        destination, _, result = name.rpartition(":")
        metrics.ALERT_EPISODE_DELIVERIES.labels(destination, result).set(n)
    elif kind == RECOVERED_TAG:
        level, action = name.split(":")
        metrics.SAVE_RECOVERED_REVENUE.labels(level, action).set(n / 100)
    elif kind == RECOVERED_DESTINATIONS_TAG:
        metrics.SAVE_RECOVERED_REVENUE_BY_DESTINATION.labels(name).set(n / 100)


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def record_indicators(values: IndicatorValues | None) -> None:
    """The population indicators at the indicator time (``PopulationView.indicator_time``: the lowest partition
    clock; the whole population as this worker sees it: one value, not per worker)."""
    if values is None:
        return
    # when they are: a partition clock that stopped (a worker behind, or stuck) holds it, and every gauge with it
    metrics.POPULATION_INDICATOR_TIME.set(values.as_of_ms / 1000)
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


class CheckpointMetrics:
    """The per-batch reporting of one worker's checkpoint."""

    def __init__(
        self, processor: BatchProcessor, wall_clock: Callable[[], float] = time.time, population_seconds: float = 0.0
    ) -> None:
        self.processor = processor
        self.wall_clock = wall_clock
        #: the population gauges are recomputed at most this often (``PULSE_METRICS_POPULATION_SECONDS``)
        self.population_seconds = population_seconds
        #: wall time they were last recomputed (None: not yet)
        self._population_at: float | None = None
        #: (topic, partition) already logged as receiving records of another partition's customers
        self._misplaced_logged: set[tuple[str, int]] = set()
        #: input topic-partitions logged as stalled (BatchProcessor.stalled), until they read on or catch up
        self._stalls_logged: set[tuple[str, int]] = set()
        #: owned partition -> (its clock, wall seconds since when it is held at that clock), while held
        self._held_since: dict[int, tuple[int | None, float]] = {}
        #: partitions logged as held for long (one line per episode, until its clock moves or it is not held)
        self._held_logged: set[int] = set()

    def _log_stalls(self, stalled: dict[tuple[str, int], tuple[int, int]]) -> None:
        """One warning per input topic-partition that holds its partition's clock while nothing of it is read."""
        for (topic, partition), (position, end) in sorted(stalled.items()):
            if (topic, partition) not in self._stalls_logged:
                log.warning(
                    "clock of partition %d waits for %s[%d]: at offset %d of %d, and no record of it read for "
                    "PULSE_CLOCK_PARTITION_IDLE_SECONDS: a transaction its producer keeps open (read_committed reads "
                    "up to where it began), not fetched, or a wrong start position (a bug)",
                    partition,
                    topic,
                    partition,
                    position,
                    end,
                )
        self._stalls_logged = set(stalled)
        metrics.CLOCK_STALLED_INPUTS.set(len(stalled))

    def _log_held(self, now_s: float) -> None:
        """One warning per episode in which an owned partition's clock stays held at one time for
        ``PULSE_CLOCK_PARTITION_IDLE_SECONDS`` while a partition reached a later time: the inputs that hold
        it, with their read position, end offset, watermark and quiet time. A backlog being read shows
        positions that move between two such lines; a clock held for good shows what it waits for (the
        stall warning above covers only an input with no record read; this one any cause)."""
        processor = self.processor
        holding = processor.holding()
        latest = processor.watermark_ms
        limit_s = processor.partition_idle_ms / 1000
        since = self._held_since
        for partition in [p for p in since if p not in holding]:
            del since[partition]
            self._held_logged.discard(partition)
        for partition, holds in holding.items():
            clock = processor.population.clock_of(partition)
            last = since.get(partition)
            if last is None or last[0] != clock:
                since[partition] = (clock, now_s)
                self._held_logged.discard(partition)
                continue
            behind = latest is not None and (clock is None or clock < latest)
            if behind and now_s - last[1] >= limit_s and partition not in self._held_logged:
                self._held_logged.add(partition)
                log.warning(
                    "clock of partition %d held at %s for %.0f s while a partition reached %s; held by: %s",
                    partition,
                    clock,
                    now_s - last[1],
                    latest,
                    "; ".join(str(h) for h in holds),
                )

    def anomalies(self, outcome: BatchOutcome) -> None:
        """Misplaced records (another producer's partitioner) and contained time-driven failures."""
        for (topic, partition), n in outcome.misplaced.items():
            metrics.MISPLACED_EVENTS.labels(topic).inc(n)
            if (topic, partition) not in self._misplaced_logged:
                self._misplaced_logged.add((topic, partition))
                log.warning(
                    "%s[%d]: %d record(s) keyed by a customer id that murmur2 puts in another partition: "
                    "re-published there (a producer with another partitioner, e.g. librdkafka's default CRC32? "
                    "configure partitioner=murmur2_random; or partitions added to the topic? the worker stops at "
                    "its next metadata read); logged once per topic and partition",
                    topic,
                    partition,
                    n,
                )
        self.time_driven_failures(outcome.time_driven_failures)

    def time_driven_failures(self, failures: Iterable[tuple[int, bytes, str]]) -> None:
        """Customers whose time-driven re-scoring or rendering raised, now quarantined (in the batch, or answered
        by the render process)."""
        for partition, key, error in failures:
            metrics.PROCESSING_ERRORS.labels("time_driven").inc()
            log.error("partition %d: re-scoring %s raised, skipped until its next event: %s", partition, key, error)

    def render_failures(self, failures: Iterable[RenderFailure]) -> None:
        """Profiles the render process could not render (``BatchProcessor.render_answered`` decided on each): a
        customer without a record in its batch is reported as a time-driven failure in-process is
        (``stage="time_driven"``), one with a record as ``stage="render"`` (in-process its record would have been
        retried and dead-lettered; here it is applied already)."""
        for failure in failures:
            partition, key, error = failure.partition, failure.key, failure.error
            if failure.outcome == QUARANTINED and not failure.event and partition is not None:
                self.time_driven_failures([(partition, key, error)])  # as if the batch had rendered it
                continue
            metrics.PROCESSING_ERRORS.labels("render" if failure.event else "time_driven").inc()
            if failure.outcome == QUARANTINED:
                log.error(
                    "partition %s: rendering the profile of %s raised, not written (its record of the batch stays "
                    "applied), skipped until its next event: %s",
                    partition,
                    key,
                    error,
                )
            else:
                why = (
                    "a later batch had a record of it, and renders it again"
                    if failure.outcome == NEWER_EVENT
                    else "its partition was given away or rebuilt since, or a revoke settled without the answer"
                )
                log.error(
                    "partition %s: rendering the profile of %s raised, not written, not skipped (%s): %s",
                    partition,
                    key,
                    why,
                    error,
                )

    def batch(self, outcome: BatchOutcome) -> None:
        """What one made-durable batch (or piece of one) did, and the population it left: event, dead-letter,
        VIP-change and alert counters, sweep, due-check and assessment counts, the population and indicator gauges, the
        event-time latencies and the watermark."""
        processor = self.processor
        for (kind, outcome_name), n in outcome.counts.items():
            metrics.EVENTS.labels(kind, outcome_name).inc(n)
        for rejected in outcome.rejected:
            metrics.DEAD_LETTERS.labels(rejected.kind, rejected.reason).inc()
        for _, vip, _ in outcome.vip_changes:
            metrics.VIP_CHANGES.labels("entered" if vip else "left").inc()
        metrics.RETENTION_ALERTS_SUPPRESSED.inc(outcome.suppressed_alerts)
        for _, alert, _ in outcome.alerts:
            metrics.RETENTION_ALERTS.labels(alert.level.value).inc()
            for reason in alert.reasons:
                metrics.RETENTION_ALERT_REASONS.labels(reason.code).inc()
        metrics.SWEPT_CUSTOMERS.inc(sum(outcome.swept.values()))
        metrics.CUSTOMERS_ASSESSED.inc(len(outcome.assessed))
        metrics.DUE_CUSTOMERS.inc(outcome.due_checked)
        metrics.DUE_CUT.inc(outcome.due_cut)
        metrics.ASSESSMENTS_DEFERRED.inc(outcome.assessments_deferred)
        metrics.RANK_INEXACT.inc(outcome.rank_inexact)
        metrics.CLOCK_HELD_PARTITIONS.set(len(processor.held))
        self._log_stalls(processor.stalled())
        now_s = self.wall_clock()
        self._log_held(now_s)
        self.population(now_s)
        metrics.observe_many(
            metrics.EVENT_TO_SCORED_SECONDS,
            [max(0.0, now_s - occurred_ms / 1000) for occurred_ms in outcome.occurred_ms],
        )
        if processor.watermark_ms is not None:
            metrics.WATERMARK_SECONDS.set(processor.watermark_ms / 1000)

    def population(self, now_s: float) -> None:
        """The population gauges, unless they were recomputed less than ``population_seconds`` ago: summing every
        partition's tallies and indicator sums costs about a millisecond whatever the batch holds (the sweep
        ticks bring a batch every ``PULSE_SWEEP_TICK_SECONDS``, so the gauges follow a stopped stream too)."""
        last = self._population_at
        if last is not None and 0 <= now_s - last < self.population_seconds:
            return
        self._population_at = now_s
        processor = self.processor
        metrics.POPULATION_CUSTOMERS.set(processor.population.customers())
        metrics.TABLE_CUSTOMERS.set(processor.population.owned_customers())
        record_tallies(processor.population.tallies())
        record_indicators(processor.population.indicators())
