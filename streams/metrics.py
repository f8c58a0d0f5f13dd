"""Prometheus metrics of a worker (base units, ``_total`` counters, no customer ids)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

EVENTS = Counter(
    "pulse_events_total",
    "Input events handled, by kind and outcome (scored, duplicate, dead_lettered, rerouted).",
    ["kind", "outcome"],
)
DEAD_LETTERS = Counter(
    "pulse_dead_letters_total", "Events sent to the dead-letter topic, by kind and reason.", ["kind", "reason"]
)
INPUT_OFFSET_GAPS = Counter(
    "pulse_input_offset_gaps_total",
    "Batches stopped before commit because they skipped input offsets that hold records, by topic.",
    ["topic"],
)
GENERATION_LOST_WRITES = Counter(
    "pulse_generation_lost_writes_total",
    "Checkpoints stopped before a state write because the group had dropped the worker (fail-stop, re-read).",
)
CHANGELOG_STALE_RECORDS_SKIPPED = Counter(
    "pulse_changelog_stale_records_skipped_total",
    "Changelog records recovery skipped because their ownership epoch is below the partition's latest owner "
    "marker (late writes of a worker the group had dropped).",
)
CHANGELOG_FOREIGN_OFFSETS = Counter(
    "pulse_changelog_foreign_offsets_total",
    "Changelog offsets another writer took between this owner's own acknowledged writes (read back and judged: "
    "late writes of a dropped worker, or a retried send of its own written twice).",
)
CHANGELOG_LATE_WRITES_FOUND = Counter(
    "pulse_changelog_late_writes_found_total",
    "Customer records of an older ownership epoch that the partition's owner found between its own changelog "
    "writes (late writes of a worker the group had dropped); their customers are written again.",
)
CHANGELOG_RECORDS_AFTER_RECOVERY = Counter(
    "pulse_changelog_records_after_recovery_total",
    "Changelog records that landed after a new owner's recovery read the partition and before its owner marker (a "
    "dropped worker's late batch; on Tansu also the rest of a record batch the recovery's end cut), read back and "
    "applied as the recovery would before the partition's input is read.",
)
CHANGELOG_STATES_REWRITTEN = Counter(
    "pulse_changelog_states_rewritten_total",
    "Customer states the owner wrote to the changelog again because a late write of an older epoch was their "
    "newest record (so compaction cannot leave the stale one as their only record).",
)
LOG_RECORDS_SUPPRESSED = Counter(
    "pulse_log_records_suppressed_total",
    "Log records held back as repeats of one written less than PULSE_LOG_REPEAT_WINDOW_SECONDS before (a retry "
    "loop's while the broker is down), by logger.",
    ["logger"],
)
INPUT_OFFSETS_DELETED_UNREAD = Counter(
    "pulse_input_offsets_deleted_unread_total",
    "Input offsets deleted from the broker before this worker read them (the topic's retention outran an outage, "
    "or DeleteRecords): their records were never scored, by topic.",
    ["topic"],
)
STATE_LOADS = Counter(
    "pulse_state_loads_total",
    "Customer states a batch loaded, by where from: hit (the decoded state the checkpoint kept after writing it, "
    "streams/state_cache.py) or decoded (from the table's bytes).",
    ["source"],
)
INPUT_LOG_CHECKS = Counter(
    "pulse_input_log_checks_total",
    "Input partitions whose last decided record was read back (when taken, or read again below the next offset), "
    "by verdict: same, replaced (pulse_input_logs_replaced_total), unknown (not readable: retention, compaction, "
    "no answer in time; taken as the same log).",
    ["verdict"],
)
INPUT_LOGS_REPLACED = Counter(
    "pulse_input_logs_replaced_total",
    "Input partitions found replaced when taken or read again (the topic deleted and created again): "
    "the record the changelog names as the last one decided is gone or different. Read from the new log's "
    "start, its offsets counted above the old log's (streams.ownership.InputLog), by topic.",
    ["topic"],
)
INPUT_REWINDS = Counter(
    "pulse_input_rewinds_total",
    "Input partitions sought back at assignment because their committed offset was ahead of the input position "
    "the changelog holds (its events are read again; states drop what they applied), by topic.",
    ["topic"],
)
INPUT_UNCOMMITTED_SEEKS = Counter(
    "pulse_input_uncommitted_seeks_total",
    "Input partitions without a committed offset sought back to the next offset to apply at a rebalance's seek "
    "(the consumer's seek to the committed offsets leaves them where fetches before the rebalance left them).",
    ["topic"],
)
GENERATION_MISSED = Counter(
    "pulse_generation_missed_total",
    "Assignments after a group generation this worker missed (dropped from the group): fail-stop, recover anew.",
)
INPUT_GAPS_EXPLAINED = Counter(
    "pulse_input_gaps_explained_total",
    "Gaps in a batch's input offsets found empty (transaction markers, aborted transactions, compaction, "
    "retention), by how: read_back (a round trip to the broker) or read_ahead (covered by the partition's last "
    "read-back).",
    ["how"],
)
INPUT_OFFSETS_SKIPPED = Counter(
    "pulse_input_offsets_skipped_total",
    "Input offsets a batch skipped that hold no records (compaction, transaction markers), by topic.",
    ["topic"],
)
INPUT_ACKS_REFUSED = Counter(
    "pulse_input_acks_refused_total",
    "Acks Faust gave input records the worker had not applied (skipped during a rebalance), refused, by topic.",
    ["topic"],
)
STALE_EVENTS_DROPPED = Counter(
    "pulse_stale_events_dropped_total",
    "Events of a batch whose partition went to another worker meanwhile, dropped unapplied (the owner reads them).",
)
CHECKPOINT_SECONDS = Histogram(
    "pulse_checkpoint_seconds",
    "Time to make one batch durable: changelog + produced messages acknowledged, then Redis.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CHECKPOINT_STEP_SECONDS = Histogram(
    "pulse_checkpoint_step_seconds",
    "Time of each step of a batch's checkpoint (streams.checkpoint): score (validate, score, render: CPU), "
    "changelog (states encoded and handed to the producer), changelog_ack (they and the side outputs "
    "acknowledged), end_markers, publish (VIP changes and "
    "alerts acknowledged), clear (the outbox entries removed, acknowledged), repair, submit (profiles to the Redis "
    "writer, or to the render process: the hand-over and any wait for it), metrics (the per-batch counters and "
    "population gauges).",
    ["step"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SCORING_STARTED = Gauge(
    "pulse_scoring_started_timestamp_seconds",
    "Unix time this worker process began its first batch with input events, after its start, group join and table "
    "recovery: minus process_start_time_seconds, how long a start took to begin scoring.",
)
LAST_SCORED = Gauge(
    "pulse_last_scored_batch_timestamp_seconds",
    "Unix time this worker last made a batch with input events durable: on a partition with lag, a value that "
    "stops moving is a stuck worker.",
)
BATCH_EVENTS = Histogram(
    "pulse_batch_events",
    "Events per processing batch.",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000),  # backlog batches (input_path=batch)
)
MISPLACED_EVENTS = Counter(
    "pulse_misplaced_events_total",
    "Correctly keyed events read from a partition other than their customer's murmur2 partition (a producer with "
    "another partitioner): re-published to the right one, also counted as outcome=rerouted.",
    ["topic"],
)
PROCESSING_ERRORS = Counter(
    "pulse_processing_errors_total",
    "Processing that raised: each failed try of an event (stage=event; after the retries it is dead-lettered as "
    "processing_error), or a customer's time-driven re-scoring, skipped until its next event (stage=time_driven), "
    "or a profile the render process could not render, not written (stage=render).",
    ["stage"],
)
REDIS_WRITE_ERRORS = Counter("pulse_redis_write_errors_total", "Failed Redis profile writes (retried).")
REDIS_FENCED_PROFILES = Counter(
    "pulse_redis_fenced_profiles_total",
    "Profiles not written to Redis because a newer owner of their partition writes them (a worker the group "
    "dropped, woken after a stall; streams.sinks.redis_profiles).",
)
REDIS_FENCES_REPLACED = Counter(
    "pulse_redis_fences_replaced_total",
    "Redis fences of a partition written over because the owner marker they name is not in the changelog: raised "
    "for an earlier changelog (its topic created again, or another app id with the same key prefix; "
    "streams.sinks.redis_profiles).",
)
REDIS_BATCH_PROFILES = Histogram(
    "pulse_redis_batch_profiles",
    "Profiles per write of the pending profiles (in round trips of at most 2,000).",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000),
)
REDIS_PENDING_PROFILES = Gauge(
    "pulse_redis_pending_profiles", "Profiles waiting for Redis (non-zero during an outage)."
)
RENDER_PROCESS_BATCHES_IN_FLIGHT = Gauge(
    "pulse_render_process_batches_in_flight",
    "Batches of profiles handed to the render process (PULSE_PROFILE_RENDER_PROCESS) and not answered yet; the "
    "checkpoint waits at profile_render_max_batches.",
)
RENDER_PROCESS_CPU_SECONDS = Counter(
    "pulse_render_process_cpu_seconds_total",
    "CPU seconds the render process spent decoding, rendering and packing profiles (off the worker's thread).",
)
RENDER_PROCESS_PROFILES = Counter(
    "pulse_render_process_profiles_total", "Profiles the render process rendered and packed for Redis."
)
WATERMARK_SECONDS = Gauge("pulse_event_time_watermark_seconds", "Highest event time seen by this worker (Unix time).")
CLOCK_HELD_PARTITIONS = Gauge(
    "pulse_clock_held_partitions",
    "Owned partitions whose clock waits for an input topic-partition read behind the others (spec: Clock).",
)
CLOCK_STALLED_INPUTS = Gauge(
    "pulse_clock_stalled_inputs",
    "Input topic-partitions that hold their partition's clock while behind their end offset and read nothing for "
    "PULSE_CLOCK_PARTITION_IDLE_SECONDS: the clock waits for them for good (each one is logged).",
)
VIP_CHANGES = Counter(
    "pulse_vip_changes_total", "VIP flag changes published, by direction (entered, left).", ["direction"]
)
SWEPT_CUSTOMERS = Counter("pulse_swept_customers_total", "Customers re-scored by the sweep as the population moved.")
#: the work a worker does per customer (issue 18): live, about one per event; catching up, one for many events
CUSTOMERS_ASSESSED = Counter(
    "pulse_customers_assessed_total",
    "Customers whose CLV and churn were assessed, once per customer and batch (for an event, a due check or the "
    "sweep).",
)
ASSESSMENTS_DEFERRED = Counter(
    "pulse_assessments_deferred_total",
    "Customers with an event whose assessment a backlog batch left to the next batch, which scores them again "
    "(PULSE_BACKLOG_DEFER_ASSESSMENTS).",
)
RANK_INEXACT = Counter(
    "pulse_rank_inexact_lookups_total",
    "M or VIP-value percentiles at a score or VIP threshold ranked at bucket resolution because another worker's "
    "snapshot lacked that bucket's exact values (see PULSE_RFM_EXACT_BAND_SHARE).",
)
POPULATION_CUSTOMERS = Gauge(
    "pulse_population_customers", "Customers with a purchase in the RFM population, as this worker sees it."
)
POPULATION_REBUILD_SECONDS = Histogram(
    "pulse_population_rebuild_seconds",
    "Time to rebuild the population of newly owned partitions from the table.",
    buckets=(0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """``histogram.observe(v)`` for each of ``values`` (an unlabelled histogram, no exemplars), in bulk: one
    C bisect per value and one locked increment per bucket. Why: a backlog batch observes every event's
    latency, and ``observe`` walks the bounds in Python and takes a lock per value (~2.5 % of a backlog
    worker's CPU, old events passing every bound; issue 18). Same buckets and sum (tests/unit/test_metrics_bulk.py).
    """
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for value in values:
        counts[bisect_left(bounds, value)] += 1
        total += value
    for bucket, n in zip(histogram._buckets, counts, strict=True):
        if n:
            bucket.inc(n)
    histogram._sum.inc(total)


EVENT_TO_SCORED_SECONDS = Histogram(
    "pulse_event_to_scored_seconds",
    "Wall-clock time from an event's occurred_at to its checkpoint completing (live traffic: end-to-end latency).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
CONSUME_TO_ALERT_SECONDS = Histogram(
    "pulse_consume_to_alert_seconds",
    "Time from the start of the batch that raised a retention alert to the alert being acknowledged by the broker.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RETENTION_ALERTS = Counter(
    "pulse_retention_alerts_total", "Churn alerts published to the retention topic, by risk level.", ["level"]
)
RETENTION_ALERT_REASONS = Counter(
    "pulse_retention_alert_reasons_total",
    "Reasons carried by published churn alerts (an alert with three reasons counts three), by reason code.",
    ["reason"],
)
RETENTION_ALERTS_SUPPRESSED = Counter(
    "pulse_retention_alerts_suppressed_total",
    "Churn alerts not raised because the customer's open episode was acknowledged, assigned or resolved.",
)
# Save rate (scoring.episodes): gauges of this worker's partitions (they add up over workers), from the states.
ALERT_EPISODES = Gauge(
    "pulse_alert_episodes",
    "Alert episodes of this worker's partitions by level, action taken (none, acknowledged, assigned, or the "
    "resolution's outcome) and save-window result (saved, not_saved, pending).",
    ["level", "action", "result"],
)
ALERT_EPISODE_DELIVERIES = Gauge(
    "pulse_alert_episode_deliveries",
    "Alert episodes by router destination they were delivered to (none: not known delivered) and save-window "
    "result; an episode delivered to two destinations counts under both.",
    ["destination", "result"],
)
SAVE_RECOVERED_REVENUE = Gauge(
    "pulse_save_recovered_revenue",
    "Revenue (base currency) of the purchases within the save window after an alert, by level and action taken.",
    ["level", "action"],
)
SAVE_RECOVERED_REVENUE_BY_DESTINATION = Gauge(
    "pulse_save_recovered_revenue_by_destination",
    "Revenue (base currency) of the purchases within the save window after an alert, by router destination.",
    ["destination"],
)
CHURN_RISK_CUSTOMERS = Gauge(
    "pulse_churn_risk_customers", "Customers of this worker's partitions per churn-risk level.", ["level"]
)
SEGMENT_CUSTOMERS = Gauge(
    "pulse_segment_customers", "Customers of this worker's partitions per RFM segment.", ["segment"]
)
VIP_CUSTOMERS = Gauge("pulse_vip_customers", "VIP customers of this worker's partitions.")
TABLE_CUSTOMERS = Gauge("pulse_table_customers", "Customers in the state table partitions this worker owns.")
OUTBOX_REPUBLISHED = Counter(
    "pulse_outbox_republished_total",
    "VIP changes and retention alerts re-published from a recovered state's outbox (after a crash), by topic "
    "kind: the exact records decided before the crash, not decided again.",
    ["kind"],
)
DUE_CUSTOMERS = Counter(
    "pulse_churn_due_checks_total",
    "Customers re-checked by the due-time index: a time-driven churn signal or activity flag fell due.",
)
DUE_CUT = Counter(
    "pulse_churn_due_checks_cut_total",
    "Partitions whose due re-checks a batch stopped for time, past its budget (PULSE_CHURN_DUE_TIME_RATIO): the "
    "customers still due are checked in the partition's next batches, earliest due first.",
)
CONSUMER_LAG = Gauge(
    "pulse_consumer_lag_records",
    "Records not yet consumed per input partition (high water - position).",
    ["topic", "partition"],
)

# Population indicators (spec: Population indicators) of the whole population as this worker sees it
# (its partitions live, the others as last published): the same numbers on every worker, and in
# `pulse stats`. NaN while undefined (no answers, no active customers, no tickets opened).
POPULATION_NPS = Gauge("pulse_population_nps", "NPS of the survey window's answers: % promoters - % detractors.")
POPULATION_NPS_ANSWERS = Gauge("pulse_population_nps_answers", "NPS answers in the survey window.")
POPULATION_CSAT_RATIO = Gauge(
    "pulse_population_csat_ratio", "CSAT of the survey window: satisfied answers (4-5) / answers, 0..1."
)
POPULATION_COMPLAINT_RATIO = Gauge("pulse_population_complaint_ratio", "Complaints in the period / active customers.")
POPULATION_FIRST_RESPONSE_SECONDS = Gauge(
    "pulse_population_first_response_seconds",
    "First-response time of the period's responses at the quantile (histogram bucket upper edge).",
    ["quantile"],
)
POPULATION_RESOLUTION_RATIO = Gauge(
    "pulse_population_resolution_ratio", "Tickets resolved in the period / tickets opened in the period."
)
POPULATION_TICKETS_OPENED = Gauge("pulse_population_tickets_opened", "Tickets opened in the period.")
POPULATION_REPURCHASE_RATIO = Gauge(
    "pulse_population_repurchase_ratio",
    "Active customers with 2+ distinct purchase days in the activity window / active customers.",
)
POPULATION_RETENTION_RATIO = Gauge(
    "pulse_population_retention_ratio", "(E - N) / S: active now minus new, over active at the period's start."
)
POPULATION_CHURN_RATIO = Gauge("pulse_population_churn_ratio", "(S - E) / S over the period (net of new customers).")
POPULATION_NET_ADDITIONS = Gauge("pulse_population_net_additions", "New customers minus lost customers in the period.")
POPULATION_ACTIVE_CUSTOMERS = Gauge(
    "pulse_population_active_customers",
    "Customers with a purchase in the activity window, now (at=end) and at the period's start (at=start).",
    ["at"],
)
POPULATION_NEW_CUSTOMERS = Gauge("pulse_population_new_customers", "Customers whose first purchase is in the period.")
POPULATION_LOST_CUSTOMERS = Gauge(
    "pulse_population_lost_customers", "Customers active at the period's start and not any more."
)
POPULATION_INDICATOR_TIME = Gauge(
    "pulse_population_indicator_time_seconds",
    "The event time the population indicators are at: the lowest partition clock (Unix time; spec: Clock).",
)

# The alert router (pulse router) is its own process: its metrics live in their own registry, served on
# PULSE_ROUTER_METRICS_PORT, so its endpoint does not list the worker's metrics at zero.
ROUTER_REGISTRY = CollectorRegistry()
ROUTER_DELIVERIES = Counter(
    "pulse_router_deliveries_total",
    "Deliveries per (alert, destination), by outcome: sent (the receiver acknowledged), failed (an attempt "
    "failed), retried (another attempt is scheduled), dead_lettered (given up), duplicate (already acknowledged).",
    ["destination", "outcome"],
    registry=ROUTER_REGISTRY,
)
ROUTER_RAISED_TO_DELIVERED_SECONDS = Histogram(
    "pulse_router_raised_to_delivered_seconds",
    "Time from an alert's raised_at (a VIP change's at) to the receiver's acknowledgement, per destination.",
    ["destination"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400),
    registry=ROUTER_REGISTRY,
)
ROUTER_EVENTS = Counter(
    "pulse_router_events_total",
    "Events read by the router, by type (retention_alert, vip_change) and outcome (routed, unrouted, "
    "historical: not delivered, invalid: dead-lettered).",
    ["event", "outcome"],
    registry=ROUTER_REGISTRY,
)
ROUTER_LOG_RECORDS_SUPPRESSED = Counter(
    "pulse_log_records_suppressed_total",
    "Log records held back as repeats of one written less than PULSE_LOG_REPEAT_WINDOW_SECONDS before (a retry "
    "loop's while the broker is down), by logger.",
    ["logger"],
    registry=ROUTER_REGISTRY,
)
ROUTER_INFLIGHT = Gauge(
    "pulse_router_inflight_events", "Events read but not yet delivered to every destination.", registry=ROUTER_REGISTRY
)

# The service console (pulse console) is its own process with its own registry, served on its /metrics.
CONSOLE_REGISTRY = CollectorRegistry()
CONSOLE_EVENTS = Counter(
    "pulse_console_events_total",
    "Events the console read, by type (retention_alert, retention_action, vip_change) and outcome (applied, "
    "duplicate: already recorded, invalid: skipped with the reason in its log).",
    ["event", "outcome"],
    registry=CONSOLE_REGISTRY,
)
CONSOLE_REQUEST_SECONDS = Histogram(
    "pulse_console_request_seconds",
    "Time to answer a console request, by route (its pattern, never a customer id).",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=CONSOLE_REGISTRY,
)
CONSOLE_LIVE_CLIENTS = Gauge(
    "pulse_console_live_clients",
    "Open server-sent-event streams (browser pages receiving live updates).",
    registry=CONSOLE_REGISTRY,
)
