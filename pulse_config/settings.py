"""All configuration of customer-pulse, in one place.

Every setting is an environment variable ``PULSE_<NAME>`` (case-insensitive)
with the documented default below. ``pulse dev`` also writes the URLs of the
stack it started to ``.pulse/dev.env`` so that other ``pulse`` commands run in
the same folder find it; real environment variables always win over that file.
The names of scoring thresholds follow docs/spec/customer-value.md (vendored from the shared domain spec).

This is the bottom configuration layer (package ``pulse_config``): ``Settings`` is declarative, and its
builders (``scoring``, ``processor``, ``rfm``, ``churn``, ``indicators``, ``clv``) return the frozen
configurations the scorers and the batch engine take. Nothing here reads files besides the environment:
the fitted CLV parameters (``pulse_config.clv_params``) are read once by the worker and passed in.
"""

from __future__ import annotations

import os
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pulse_config.processor import ProcessorConfig
from scoring.churn import DEFAULT_WEIGHTS, SIGNALS, ChurnConfig
from scoring.clv import DEFAULT_CLV_PARAMS, ClvConfig, ClvParams
from scoring.customer import ScoringConfig
from scoring.episodes import EpisodeConfig
from scoring.indicators import (
    DEFAULT_RESPONSE_BUCKETS,
    DEFAULT_RESPONSE_BUCKETS_PER_DOUBLING,
    DEFAULT_RESPONSE_MIN_SECONDS,
    IndicatorConfig,
    response_edges_ms,
)
from scoring.orders import OrderScoringConfig
from scoring.rank import RfmKeys
from scoring.rfm import DEFAULT_SEGMENTS, HIGH_VALUE, RfmConfig, SegmentRule
from scoring.tickets import ServiceConfig
from scoring.voice import VoiceConfig

#: The file ``pulse dev`` writes; read by settings when present.
DEV_ENV_FILE = ".pulse/dev.env"
#: Name of the customer-state table: Faust names its changelog topic ``{app_id}-{name}-changelog``
STATE_TABLE = "customer_states"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PULSE_", extra="ignore")

    # --- connections -------------------------------------------------------
    broker_url: str = Field(
        "kafka://127.0.0.1:9092", description="Kafka bootstrap servers, faust URL form (kafka://host:port;host2:port)."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding the served profiles.")
    app_id: str = Field("customer-pulse", description="Faust app id: consumer group and changelog topic prefix.")

    # --- topics ------------------------------------------------------------
    topic_orders: str = Field("orders", description="Order events.")
    topic_surveys: str = Field("surveys", description="Survey (NPS/CSAT) events.")
    topic_complaints: str = Field("complaints", description="Complaint events.")
    topic_support: str = Field("support-tickets", description="Support-ticket events.")
    topic_dead_letters: str = Field("customer-events-dlq", description="Rejected events, each with the reason.")
    topic_retention_alerts: str = Field("retention-alerts", description="Churn alerts for the service teams.")
    topic_vip_changes: str = Field("vip-changes", description="Every change of a customer's VIP flag, as it happens.")
    partitions: int = Field(4, ge=1, description="Partitions of every input topic and of the state table.")
    replication_factor: int = Field(1, ge=1, description="Replication of topics the app creates.")

    # --- state store -------------------------------------------------------
    store: str = Field("memory://", description="Faust table store: memory:// or rocksdb:// (needs the rocksdb extra).")
    data_dir: str = Field(".pulse/data", description="Worker data directory (RocksDB files).")

    # --- processing --------------------------------------------------------
    batch_max_events: int = Field(500, ge=1, description="Events per processing batch (one checkpoint each).")
    batch_within_seconds: float = Field(
        0.01,
        gt=0,
        description="Longest wait to fill a batch of batch_max_events once a first record came to an idle input (on "
        "input_path=batch a batch that starts with records queued never waits; input_path=stream is Faust's "
        "take_events, which always may). Every event of such a batch waits for it: 10 ms "
        "against the 50 ms before session 15 took 2-17 ms off alert p50 and 6-58 ms off the steady p99 at "
        "500-1,000 live events/s on both brokers, for 1.1-1.5x the batches and 0-25 % more main-thread CPU at those "
        "rates (docs/benchmarks.md, session 15).",
    )
    batch_backlog_max_events: int = Field(
        10000,
        ge=1,
        description="input_path=batch: while the input is behind (batch_backlog_from_events fetched and queued: "
        "a backlog, a replay, a catch-up), a batch takes all queued records up to this many, never waiting to fill "
        "it; a live input keeps batches of batch_max_events. Large batches amortise the checkpoint and score a "
        "customer with several events once (docs/benchmarks.md, session 9: 500 -> 10,000 about doubles events/s); "
        "alerts are decided at a batch's end clock, so a backlog batch skips transient risk episodes inside it "
        "(docs/architecture.md). At most batch_max_events: off.",
    )
    batch_backlog_from_events: int = Field(
        2000,
        ge=1,
        description="input_path=batch: fetched records queued (and at least batch_max_events) from which the input "
        "counts as behind and a batch grows up to batch_backlog_max_events. Four live batches: a live worker a "
        "moment behind keeps small batches (an event of a large batch waits for all of it), a backlog fills the "
        "queue far beyond.",
    )
    batch_backlog_rebalance_share: float = Field(
        0.25,
        ge=0,
        le=1,
        description="input_path=batch: a backlog batch takes no more records than its checkpoint is expected to "
        "finish in this share of broker_rebalance_timeout, at the wall seconds per record measured on the last "
        "batches: a rebalance waits for the batch in flight, and a member not back within the rebalance timeout is "
        "dropped from the group (its commit refused, the worker exits 75). Matters on a loaded box or with a short "
        "rebalance timeout (pulse dev: 3 s). 0: no time bound, batch_backlog_max_events only.",
    )
    batch_queued_max_events: int = Field(
        2000,
        ge=0,
        description="input_path=batch: a live batch that starts with records already queued (they came while the "
        "previous batch was scored) takes all of them up to this many (at least batch_max_events) at once, without "
        "waiting batch_within_seconds to fill it: records left queued behind a cut hold their partitions' clocks "
        "back and defer their batch's customers to a later due check (docs/benchmarks.md, session 10: live "
        "latency). Only an idle input waits to fill a batch. 0: batches of batch_max_events, filled as before.",
    )
    input_path: Literal["stream", "batch"] = Field(
        "batch",
        description="How the scoring worker reads its input topics: batch (the group consumer's fetches as raw "
        "batches, sized from the backlog; the checkpoint's applied offsets are what Faust commits; about half the "
        "CPU per event, streams/batch_input.py) or stream (Faust's stream.take_events, an Event and an ack per "
        "record; the default until session 9, docs/architecture.md).",
    )
    input_queue_records: int = Field(
        10000,
        ge=1,
        description="input_path=batch: fetched records queued for the checkpoint at most; the fetcher waits "
        "beyond (back-pressure; a rebalance drops the queue and the seek fetches it again). Never less than "
        "batch_backlog_max_events nor batch_backlog_from_events (a backlog is seen in and taken from the queue).",
    )
    input_merge_topics: bool = Field(
        False,
        description="input_path=batch: each fetch's topic-partitions merged by Kafka timestamp (each in offset "
        "order) instead of queued one after the other, so a batch cut from a large fetch covers about the same "
        "time on every topic: fewer customers wait for the clock when a live input is behind, but a backlog's "
        "clock then moves every batch (more due checks and alerts, docs/benchmarks.md, session 9).",
    )
    max_event_bytes: int = Field(65536, ge=256, description="Larger payloads are dead-lettered as payload_too_large.")
    dead_letter_payload_bytes: int = Field(4096, ge=0, description="Bytes of a rejected payload the DLQ record keeps.")
    processing_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="A batch whose processing raises is re-processed record by record; a record that raises this "
        "many more times is dead-lettered as processing_error (with the exception) and its partition moves on.",
    )
    test_fail_event_ids: list[str] = Field(
        [],
        description="Test only (fault injection; keep empty in production): event ids whose scoring raises, to "
        "show a poison record is dead-lettered as processing_error while its partition moves on, JSON list.",
    )
    dedup_event_ids: int = Field(
        32, ge=1, le=1024, description="Recent event ids remembered per customer to drop producer duplicates."
    )
    changelog_end_markers: bool = Field(
        True,
        description="End each checkpoint with a one-record marker per changelog partition (needed on Tansu, "
        "whose ListOffsets makes Faust's recovery miss the tail of the last batch; harmless on Kafka). Off, a marker "
        "still goes out to each partition whose input positions moved: it carries them (docs/architecture.md).",
    )
    recovery_bulk_read: bool = Field(
        True,
        description="Table recovery reads the changelog with a plain consumer and writes each fetched batch at once "
        "(~270,000 records/s; Faust's own recovery, one event per record, ~11,500 on uvloop); off: Faust's only.",
    )
    recovery_fetch_bytes: int = Field(
        4 * 1024 * 1024, ge=65536, description="Bulk recovery: bytes fetched per changelog partition and request."
    )
    shutdown_grace_seconds: float = Field(10.0, gt=0, description="Time a running checkpoint gets to finish on stop.")
    stop_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="A worker still stopping this long after its stop began (SIGTERM, SIGINT, a crashed service) "
        "exits anyway (status 75), as a kill would: nothing is lost, its partitions' next owner re-reads from the "
        "last commit (a stop can wait for ever on a broker that is down). Longer than PULSE_SHUTDOWN_GRACE_SECONDS, "
        "shorter than the orchestrator's grace.",
    )
    checkpoint_stall_warn_seconds: float = Field(
        30.0,
        gt=0,
        description="A checkpoint still running after this long logs a warning naming the awaits it is suspended "
        "in (streams/watchdog.py), again after each further interval; it does not stop the checkpoint.",
    )
    log_repeat_window_seconds: float = Field(
        10.0,
        ge=0,
        description="The Kafka client's and the Redis profile writer's repeated log lines (a retry loop's, while "
        "the broker is down; a failed write per batch while Redis is down or full) are written once per this window, "
        "the next one with the count held back (streams/log_limits.py, "
        "pulse_log_records_suppressed_total); 0 writes every line.",
    )
    offset_gap_check: bool = Field(
        True,
        description="Per input partition, check each batch against the next offset the worker expects: a gap whose "
        "offsets hold records stops the worker before commit (it re-reads them), and Faust never commits past "
        "what was applied (streams/offsets.py).",
    )
    offset_gap_read_back_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest the gap check reads skipped offsets back (unread in time counts as a gap), and "
        "the changelog repair reads offsets another writer took (unread in time: left to the next recovery).",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="The worker's event loop: uvloop (faster) or the standard asyncio loop."
    )
    gc_thresholds: tuple[int, int, int] = Field(
        (50_000, 20, 20),
        description="Python's garbage-collector thresholds in the worker, as JSON (Python's default [700, 10, 10] "
        "collects every few hundred allocations, and a scorer allocates a lot: 20 % of its CPU at 100k customers).",
    )

    # --- scoring (spec: Financial) ----------------------------------------
    default_gross_margin: Decimal = Field(
        Decimal("0.30"), ge=0, le=1, description="Margin used when an order carries no cost."
    )
    revenue_window_days: int = Field(365, ge=1, description="Rolling revenue window.")
    revenue_bucket_days: int = Field(7, ge=1, description="Width of the rolling-revenue time buckets.")
    # --- scoring (spec: Loyalty and satisfaction, Service) ----------------
    complaint_window_days: int = Field(30, ge=1, description="Rolling window of the per-customer complaint count.")
    first_response_sla_hours: float = Field(24.0, gt=0, description="A ticket waiting longer for a response breaches.")
    resolution_sla_hours: float = Field(72.0, gt=0, description="A ticket unresolved longer than this breaches.")
    max_tickets_per_customer: int = Field(
        32, ge=1, le=1024, description="Ticket records kept per customer; older closed ones fold into totals."
    )
    # --- scoring (spec: RFM, VIP flag) ------------------------------------
    rfm_high_value_min_score: int = Field(
        5, ge=1, le=5, description="High-value segment: R, F and M all at least this (spec default 5; 4 is common)."
    )
    rfm_segments: list[SegmentRule] = Field(
        default_factory=list,
        description="Segment rules replacing the defaults, first match wins, JSON: "
        '[{"name": "loyal", "r": [3, 5], "f": [4, 5], "m": [1, 5]}, …]; empty: the spec\'s rules, then the '
        "usual named segments (see docs/profile.md).",
    )
    rfm_m_relative_error: float = Field(
        0.01,
        gt=0,
        le=0.1,
        description="M (and VIP value) are ranked exactly in cents; this is the ratio of the coarse buckets that "
        "size the rank structure and the population snapshots.",
    )
    rfm_exact_band_share: float = Field(
        0.002,
        ge=0,
        le=1,
        description="Population snapshots carry the exact M and VIP values of the buckets within this share of "
        "the population (in rank) of a score or VIP threshold; wider: exact through faster population moves, "
        "bigger snapshots.",
    )
    vip_value: str = Field(
        "revenue",
        pattern="^(revenue|profit|clv)$",
        description="What VIP ranks: lifetime revenue, lifetime profit or clv (predictive CLV, as of each "
        "customer's last scoring).",
    )
    vip_enter_share: float = Field(0.05, gt=0, lt=1, description="A customer becomes VIP in this top share by value.")
    vip_leave_share: float = Field(
        0.08, gt=0, lt=1, description="A VIP stops being one only below this top share (hysteresis, ≥ enter share)."
    )
    vip_segments: list[str] = Field(
        default_factory=lambda: [HIGH_VALUE], description="Segments whose members are always VIP, JSON list."
    )
    # --- scoring (spec: Lifetime value) ------------------------------------
    clv_params_file: str = Field(
        ".pulse/clv-params.json",
        description="Fitted BG/NBD and Gamma-Gamma parameters (written by pulse fit); missing: CDNOW defaults.",
    )
    clv_horizon_days: int = Field(365, ge=1, description="Predictive CLV horizon (expected purchases over it).")
    clv_expected_lifetime_years: float = Field(
        3.0, gt=0, description="Historical CLV: customer lifetime while the population gives none."
    )
    clv_lifetime_min_customers: int = Field(
        100,
        ge=1,
        description="Historical CLV: the lifetime is 1 / the population's annual churn rate once this many "
        "customers were active at the start of the churn period (and that rate is positive).",
    )
    clv_max_purchase_days: int = Field(
        32,
        ge=2,
        le=1024,
        description="Distinct purchase days remembered per customer (CLV's x); a late order older than all of them "
        "counts as a new day.",
    )
    population_publish_seconds: float = Field(
        1.0, gt=0, description="How often a worker publishes the population counts of its partitions."
    )
    sweep_tick_seconds: float = Field(1.0, gt=0, description="How often each owned partition is swept (re-scored).")
    sweep_customers_per_tick: int = Field(
        2000, ge=1, description="Customers re-scored per partition and tick as the population moves."
    )
    consumer_fetch_max_wait_ms: int = Field(
        100,
        ge=1,
        description="Longest a fetch waits on the broker for records (Faust hard-codes 1,500 ms; Tansu holds each "
        "fetch that long even when records arrive, which delays them by up to that much).",
    )
    consumer_fetch_min_bytes: int = Field(
        1,
        ge=1,
        description="Bytes a fetch waits for on the broker (Kafka's fetch.min.bytes), at most "
        "consumer_fetch_max_wait_ms; Faust passes none (1). Kafka answers a 1-byte fetch as soon as anything "
        "arrived: a live input is then fetched hundreds of times a second, each fetch ~0.65 ms of the worker's CPU "
        "(benchmarks/fetch_pace.py).",
    )
    consumer_isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed",
        description="Which input records the worker reads when an upstream producer writes in transactions (Kafka "
        "Streams or Flink with exactly-once, any transactional.id): read_committed scores only committed ones, so an "
        "aborted transaction's orders never count, and a partition waits while a transaction is open (at most the "
        "producer's transaction.timeout.ms). read_uncommitted (Kafka's own consumer default) scores aborted records "
        "too. Producers without transactions read the same either way.",
    )
    backlog_defer_profiles: bool = Field(
        True,
        description="input_path=batch, while the input is behind: a customer the next batch (already queued) scores "
        "again has its profile rendered and written there instead, never two batches in a row, so a profile in "
        "Redis is at most one batch behind during a catch-up (~10 % of a backlog worker's CPU); never on a live "
        "partition (clock within historical_alert_seconds of the wall clock). Off: every batch writes its profiles.",
    )
    backlog_defer_assessments: bool = Field(
        True,
        description="With backlog_defer_profiles, while the input is behind: a customer with an event in this batch "
        "whom the next batch (already queued) scores again is assessed there instead (CLV, churn and its alert "
        "decision, RFM, VIP), with its profile, never two batches in a row: as one batch twice the size would "
        "decide it, on every event up to a later clock. A customer with events in every batch of a catch-up was "
        "assessed in each; never on a live partition. Off: every batch assesses its customers.",
    )
    native_profiles: bool = Field(
        True,
        description="Render profiles and pack their Redis writes in C (schemas/_native.c, built by pip install "
        "where a C compiler is found): the same strings as the Python renderer, which stays the reference and "
        "renders whatever the C one leaves (numbers beyond its ranges); a profile rendered and packed in 87k "
        "instructions instead of 217k (docs/benchmarks.md, session 37). Off, or not built: Python renders. The "
        "worker logs which one it uses at start.",
    )
    profile_render_process: bool = Field(
        False,
        description="Render and pack the Redis profiles in a child process of the worker (streams/render_process.py): "
        "the worker's thread hands over each re-scored customer's state bytes, clock, CLV and churn (~2 µs) instead "
        "of rendering it (~38 µs, about a third of a live event); the same bytes reach Redis, in the same order. "
        "Worth it when a core is free for the child (docs/benchmarks.md, session 12).",
    )
    profile_render_max_batches: int = Field(
        2,
        ge=1,
        description="profile_render_process: batches of profiles handed to the render process and not rendered yet, "
        "at most; the checkpoint waits beyond (back-pressure). 2: one rendering while the next is scored.",
    )
    state_cache_customers: int = Field(
        10_000,
        ge=0,
        description="Decoded customer states the checkpoint keeps after writing them, so the next batch that scores "
        "the customer skips decoding its bytes (~8 µs each; a backlog scores most customers batch after batch). "
        "~5 KB each; dropped when the worker's partitions change; 0: off (streams/state_cache.py).",
    )
    sweep_round_seconds: float = Field(
        300.0,
        ge=0,
        description="Pace of the sweep: each tick re-scores the share of a partition that makes a round take this "
        "long (at most sweep_customers_per_tick); 0: sweep_customers_per_tick every tick. Rounds only let customers "
        "without new events follow the population's drift (1M customers, RocksDB: 2,254 events/s at 60 s, 2,798 at "
        "600 s).",
    )
    profile_refresh_seconds: float = Field(
        3600.0,
        ge=0,
        description="Event time between sweep rounds that re-render every profile (recency, windows, as_of) "
        "while the clock moves; once it stops, one more round brings every profile to the final clock.",
    )
    base_currency: str = Field("USD", min_length=3, max_length=3, description="Currency all money is reported in.")
    fx_rates: dict[str, Decimal] = Field(
        default_factory=dict,
        description='Extra currencies: units of base currency per unit, JSON, e.g. {"EUR": "1.08"}.',
    )

    # --- scoring (spec: Churn warning) -----------------------------------
    churn_overdue_gap_multiple: float = Field(
        3.0, gt=0, description="Overdue: no purchase for more than this many times the customer's mean gap."
    )
    churn_overdue_min_repeat_purchases: int = Field(
        2, ge=1, description="Repeat purchase days a customer needs for their own mean gap; fewer: the population's."
    )
    churn_default_gap_days: float = Field(
        30.0, gt=0, description="Population gap used while fewer than churn_population_gap_min_customers are known."
    )
    churn_population_gap_min_customers: int = Field(
        30, ge=1, description="Repeat customers needed before the population's mean purchase gap is used."
    )
    churn_p_alive_threshold: float = Field(
        0.3, gt=0, lt=1, description="Low P(alive): a repeat customer below this BG/NBD probability."
    )
    churn_spend_window_days: int = Field(
        90, ge=1, description="Spend decline: the last this many days against the same span before (bucket resolution)."
    )
    churn_spend_decline_ratio: float = Field(
        0.5, gt=0, lt=1, description="Spend decline: recent spend below this share of the span before."
    )
    churn_nps_drop_points: int = Field(3, ge=1, le=10, description="Detractor signal also on an NPS drop this large.")
    churn_csat_dissatisfied_max: int = Field(2, ge=1, le=5, description="Dissatisfied: latest CSAT at or below this.")
    churn_complaint_burst_count: int = Field(
        2, ge=1, description="Complaints in the complaint window that make a burst."
    )
    churn_severe_complaint_severity: str = Field(
        "high", pattern="^(low|medium|high|critical)$", description="A complaint this severe or worse signals alone."
    )
    churn_survey_max_age_days: int = Field(180, ge=1, description="NPS/CSAT answers older than this no longer signal.")
    churn_reopened_window_days: int = Field(
        30, ge=1, description="Slow service: a ticket reopened within this many days (or open again)."
    )
    churn_weights: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        description="Risk points per signal (summed, capped at 100), JSON; signals: " + ", ".join(SIGNALS) + ".",
    )
    churn_medium_min_score: int = Field(40, ge=1, le=100, description="Risk score from which the level is medium.")
    churn_high_min_score: int = Field(70, ge=1, le=100, description="Risk score from which the level is high.")
    churn_alert_cooldown_days: float = Field(
        14.0, ge=0, description="After an alert, the next one only on escalation or once this much event time passed."
    )
    churn_due_per_batch: int = Field(
        5000, ge=1, description="Customers per partition and batch re-checked because a time-driven signal fell due."
    )
    churn_due_per_live_batch: int = Field(
        8,
        ge=1,
        description="Live partitions (clock within historical_alert_seconds of the wall clock): at most this many of "
        "those re-checks per partition and batch, earliest due first, the rest in the next batches, so a burst (the "
        "clock jumping after a pause) does not hold back the alerts of fresh events (8, not 25: at 3,000 events/s on "
        "Kafka a batch holds ~55 events, and 25 per partition doubled the first window's batches; docs/benchmarks.md "
        "session 12).",
    )
    churn_due_time_ratio: float = Field(
        1.0,
        ge=0,
        description="A batch's due re-checks (customers whose event waited for the clock first, then the "
        "time-driven ones) stop once the batch has run for its time budget (batch_backlog_rebalance_share of "
        "broker_rebalance_timeout) and they took this many times what the batch's records took; at least "
        "churn_due_per_live_batch per partition, the rest in the next batches, earliest due first. Why: the batch "
        "in which a backlog's partition clocks catch up finds thousands of customers due at once; checked all in "
        "it, that batch outlasted its budget several times (a rebalance waits for it) and the measured pace then "
        "shrank the backlog's next batches (docs/benchmarks.md, sessions 37-38). A live batch is far within its "
        "budget and never stops early. No budget (batch_backlog_rebalance_share 0) or offline: "
        "churn_due_per_batch alone.",
    )
    clock_idle_advance_seconds: float = Field(
        0.0,
        ge=0,
        description="Live operation: when no event arrived for this many wall seconds, the event-time clock "
        "advances with the wall clock (0: off, replays stay exact); never beyond the wall clock.",
    )
    clock_partition_idle_seconds: float = Field(
        10.0,
        gt=0,
        description="An input topic-partition with nothing read for this many wall seconds, and not known to be "
        "behind its end offset, no longer holds its partition's clock back (spec: Clock, idleness).",
    )
    max_earliness_seconds: float = Field(
        86400.0,
        ge=0,
        description="Events more than this ahead of the wall clock are dead-lettered as too_early and move no "
        "clock (0: off). pulse score measures against the time it runs.",
    )
    historical_alert_seconds: float = Field(
        86400.0,
        ge=0,
        description="Alerts raised at an event time older than the wall clock by more than this are marked "
        "historical: true (a replay or backfill; delivery may skip them; 0: off).",
    )

    # --- population indicators (spec: Population indicators) -------------
    population_survey_window_days: int = Field(
        90, ge=1, description="Population NPS and CSAT: over the answers of this many days (event time)."
    )
    population_period_days: int = Field(
        30,
        ge=1,
        description="Period of the population rates: retention, churn, new/lost customers, net additions, "
        "complaint rate, resolution rate, first-response times.",
    )
    population_activity_days: int = Field(
        365, ge=1, description="Active customer: a purchase within this many days (retention, churn, repurchase)."
    )
    population_response_min_seconds: float = Field(
        DEFAULT_RESPONSE_MIN_SECONDS,
        gt=0,
        description="First-response histogram: upper edge of the first bucket (median/p90 are bucket edges).",
    )
    population_response_buckets_per_doubling: int = Field(
        DEFAULT_RESPONSE_BUCKETS_PER_DOUBLING,
        ge=1,
        le=16,
        description="First-response histogram buckets per doubling of the time (4: edges about 19 % apart).",
    )
    population_response_buckets: int = Field(
        DEFAULT_RESPONSE_BUCKETS,
        ge=2,
        le=256,
        description="First-response histogram edges (64 from 1 minute at 4 per doubling: up to about 38 days).",
    )
    max_lateness_days: float = Field(
        730.0,
        gt=0,
        description="Events older than their topic-partition's watermark (the latest event time read from it) "
        "minus this are dead-lettered as too_late (longer than every window, so only absurdly old events are "
        "refused).",
    )

    # --- sinks -------------------------------------------------------------
    redis_key_prefix: str = Field("pulse:", description="Prefix of every Redis key the app writes.")
    redis_retry_max_seconds: float = Field(5.0, gt=0, description="Longest back-off between Redis write retries.")
    redis_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Longest wait for Redis to accept a connection or to answer one round trip (a worker's profile "
        "write, a router's delivery record, a CLI command) before it counts as failed and is retried: a Redis that "
        "stops answering (a frozen process, a failover, a network cut) would otherwise hold them for redis-py's "
        "default: none before redis-py 8 (until TCP gives up, many minutes later, with no error counted), 5 s "
        "since. The HTTP API and the console wait 1 s and 2 s (a page's own bound).",
    )
    startup_wait_seconds: float = Field(
        0.0,
        ge=0,
        description="A worker started while the broker or Redis is down waits for them this long, retrying with "
        "capped exponential back-off and one log line per attempt, then exits with status 69 (0: forever, the "
        "default: the API's /health stays up and /ready says what it waits for, which is what an orchestrator's "
        "probes expect; set a bound to have a supervisor restart it instead).",
    )
    startup_retry_min_seconds: float = Field(0.5, gt=0, description="First back-off while waiting at start-up.")
    startup_retry_max_seconds: float = Field(
        15.0, gt=0, description="Longest back-off between start-up attempts (doubles from startup_retry_min_seconds)."
    )

    # --- consumer tuning (short group joins; defaults suit a small cluster) -
    broker_session_timeout: float = Field(10.0, gt=0, description="Consumer group session timeout, seconds.")
    broker_heartbeat_interval: float = Field(1.0, gt=0, description="Consumer heartbeat interval, seconds.")
    broker_rebalance_timeout: float = Field(10.0, gt=0, description="Group join wait, seconds.")
    broker_commit_interval: float = Field(1.0, gt=0, description="Offset commit interval, seconds.")
    broker_metadata_max_age_seconds: float = Field(
        300.0,
        gt=0,
        description="How often the worker's Kafka clients read the cluster's metadata anew (metadata.max.age.ms, "
        "the Java client's default): how soon a worker notices partitions added to an input topic, and stops "
        "(docs/operations.md).",
    )
    producer_max_batch_bytes: int = Field(
        524288,
        ge=1024,
        le=1000000,
        description="Largest record batch the worker's producer builds per partition (Faust's producer_max_batch_size, "
        "16,384 by default). aiokafka builds the next batch of a partition only once the previous one went out in a "
        "request, one request per broker at a time, so a checkpoint's changelog writes took one round trip per 16 KB "
        "of each partition (a 500-state batch ~5, a 10,000-event backlog batch ~45) before their acks were even "
        "awaited (docs/benchmarks.md, session 10: live latency), and a backlog's changelog records cost ~1.5 µs CPU "
        "more each (session 10: backlog throughput). Below the brokers' 1 MB record batch limit "
        "(message.max.bytes) and Faust's 1,000,000-byte request size.",
    )

    # --- HTTP API and security --------------------------------------------
    api_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="HTTP API port of each worker: profiles, VIP list, /health, /ready (0: off, the default, so "
        "several local workers do not collide; the deploy files use 8464).",
    )
    api_host: str = Field("127.0.0.1", description="Address the HTTP API binds (0.0.0.0 in a container).")
    api_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token the HTTP API requires, except on /health and /ready (empty: no authentication).",
    )
    api_max_page_size: int = Field(500, ge=1, description="Largest `limit` of one GET /vips page.")
    api_max_connections: int = Field(
        256, ge=1, description="Open HTTP API connections at most; further ones are answered 503 and closed."
    )
    api_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="An API connection must send a complete request head within this of opening (or of its "
        "previous response), else it is closed (slowloris); an unread request body is drained this long at most.",
    )
    api_request_timeout_seconds: float = Field(
        5.0, gt=0, description="Longest an API request may take to answer (503 after that)."
    )
    api_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="The API runs in its own process this many nice steps below the worker: under CPU contention "
        "the kernel gives it a bounded share of the scoring process's time (10: about a tenth).",
    )
    broker_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol of every client: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL."
    )
    broker_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism (SASL_* protocols): PLAIN, SCRAM-SHA-256, SCRAM-SHA-512."
    )
    broker_sasl_username: str = Field("", description="SASL user name.")
    broker_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password.")
    broker_ssl_cafile: str = Field(
        "", description="CA bundle that signs the brokers' certificates (empty: system CAs)."
    )
    broker_ssl_certfile: str = Field("", description="Client certificate for mutual TLS (empty: none).")
    broker_ssl_keyfile: str = Field("", description="Private key of the client certificate.")
    redis_password: SecretStr = Field(
        SecretStr(""), description="Redis password (AUTH); empty: none or the one in PULSE_REDIS_URL. rediss:// is TLS."
    )
    redis_ssl_ca_certs: str = Field("", description="CA bundle for a rediss:// Redis (empty: system CAs).")

    # --- alert router (pulse router) ---------------------------------------
    router_config_file: str = Field(
        "router.toml",
        description="The router's destinations and routes (TOML; deploy/router.example.toml shows every kind).",
    )
    router_group: str = Field(
        "", description="Consumer group of pulse router (empty: '{app_id}-router'); offsets commit once delivered."
    )
    topic_delivery_dead_letters: str = Field(
        "retention-deliveries-dlq",
        description="Deliveries the router gave up on (a destination kept failing), each with the reason.",
    )
    router_metrics_port: int = Field(9465, ge=0, le=65535, description="The router's Prometheus port (0: off).")
    router_api_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="The router's HTTP API: acknowledge, assign and resolve alerts (0: off); binds PULSE_API_HOST, "
        "requires PULSE_API_TOKEN when set.",
    )
    topic_retention_actions: str = Field(
        "retention-actions",
        description="What teams did about alerts (acknowledged, assigned, resolved with an outcome), keyed by "
        "customer, with the inputs' partition count.",
    )
    router_dedup_ttl_seconds: int = Field(
        30 * 86400,
        ge=60,
        description="How long Redis remembers that (alert, destination) was acknowledged by the receiver: a "
        "redelivered alert older than this may be sent again (longer than any replay you would redo).",
    )
    router_retry_initial_seconds: float = Field(1.0, gt=0, description="First back-off after a failed delivery.")
    router_retry_max_seconds: float = Field(
        60.0, gt=0, description="Cap of the exponential back-off between delivery attempts (doubles each time)."
    )
    router_max_attempts: int = Field(
        10, ge=1, description="Attempts per (message, destination) before it goes to the delivery dead-letter topic."
    )
    router_max_retry_seconds: float = Field(
        900.0, gt=0, description="Longest time a delivery is retried before it is dead-lettered (whichever first)."
    )
    router_http_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one webhook request.")
    router_smtp_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one SMTP conversation.")
    router_max_inflight: int = Field(
        1000, ge=1, description="Alerts read but not yet delivered everywhere; beyond it the router pauses reading."
    )
    router_commit_seconds: float = Field(1.0, gt=0, description="How often delivered offsets are committed.")
    router_revoke_wait_seconds: float = Field(
        5.0,
        ge=0,
        description="In a rebalance, how long the router lets deliveries of leaving partitions finish before the "
        "next owner takes over (at most 80 % of PULSE_BROKER_REBALANCE_TIMEOUT; what is left, it stops trying: the "
        "next owner reads it again).",
    )
    router_group_seconds: float = Field(
        5.0,
        ge=0,
        description="Quiet grouping, default of chat and e-mail destinations: alerts for one destination within "
        "this many seconds go as one digest message (0: one message per alert).",
    )
    router_group_max_alerts: int = Field(20, ge=1, description="Most alerts in one digest message.")
    router_rate_per_minute: int = Field(
        20,
        ge=0,
        description="Default rate limit of a destination, messages per rolling minute (DingTalk and WeCom robots "
        "accept 20; 0: unlimited).",
    )

    # --- service console (pulse console) -----------------------------------
    console_port: int = Field(8470, ge=0, le=65535, description="Port of the service console web app (0: off).")
    console_host: str = Field("127.0.0.1", description="Address the service console binds (0.0.0.0 in a container).")
    console_page_size: int = Field(25, ge=1, le=500, description="Customers on one page of the console's queue.")
    console_stats_seconds: float = Field(
        15.0, gt=0, description="How often the console re-reads the population indicators (its panel and trends)."
    )
    console_queue_refresh_seconds: float = Field(
        30.0,
        gt=0,
        description="The console's queue also refreshes this often (alerts and actions refresh it at once; a "
        "customer leaving risk by a purchase raises neither).",
    )
    console_session_hours: float = Field(
        12.0, gt=0, description="How long a console login (its signed cookie) is valid; PULSE_API_TOKEN logs in."
    )
    console_group_id: str = Field(
        "", description="Consumer group of pulse console on alerts, actions, VIP changes (empty: '{app_id}-console')."
    )
    console_trend_seconds: float = Field(
        60.0,
        gt=0,
        description="Spacing of the population panel's trend points, kept in Redis so trends survive a console "
        "restart (one series for all consoles).",
    )
    console_trend_points: int = Field(
        1440, ge=2, le=100_000, description="Trend points kept in Redis (the oldest are dropped): 1440 x 60 s = a day."
    )

    # --- alert episodes and the save rate (issue 19) ---------------------
    save_window_days: int = Field(
        60,
        ge=1,
        description="Save rate: an alerted customer who purchases within this many days (event time) after the "
        "alert counts as saved, and the window's purchases as revenue recovered.",
    )
    alert_episode_history: int = Field(
        4,
        ge=1,
        description="Alert episodes kept per customer besides the open one (older ones fold into the customer's "
        "save-rate totals): bounds the state.",
    )
    alert_episode_pending_actions: int = Field(
        16,
        ge=1,
        description="Retention actions per customer read but not yet in effect (their time ahead of the clock); "
        "beyond it the oldest are dropped and counted stale.",
    )

    # --- monitoring --------------------------------------------------------
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus metrics HTTP port (0: off).")
    metrics_host: str = Field("127.0.0.1", description="Address the metrics endpoint binds.")
    lag_poll_seconds: float = Field(
        5.0, gt=0, description="How often a worker updates pulse_consumer_lag_records for its input partitions."
    )
    metrics_population_seconds: float = Field(
        1.0,
        ge=0,
        description="The population gauges (customers, per risk level, segment and VIP, save rates, population "
        "indicators) are recomputed at a batch's end at most this often (wall seconds; 0: every batch): they cost "
        "the same for a batch of one event as for 500, and live batches are small.",
    )

    @model_validator(mode="after")
    def _stop_outlasts_the_checkpoint_grace(self) -> Settings:
        """A stop timeout within the checkpoint's grace would cut every checkpoint a stop waits for."""
        if self.stop_timeout_seconds <= self.shutdown_grace_seconds:
            raise ValueError(
                "PULSE_STOP_TIMEOUT_SECONDS must be longer than PULSE_SHUTDOWN_GRACE_SECONDS, got "
                f"{self.stop_timeout_seconds:g} and {self.shutdown_grace_seconds:g}"
            )
        return self

    def batch_backlog_seconds(self) -> float | None:
        """The time budget of a backlog batch (streams.batch_input.BatchPace); None: no time bound."""
        share = self.batch_backlog_rebalance_share
        return share * self.broker_rebalance_timeout if share > 0 else None

    def input_topics(self) -> dict[str, str]:
        """Topic name per event kind."""
        return {
            "order": self.topic_orders,
            "survey": self.topic_surveys,
            "complaint": self.topic_complaints,
            "support": self.topic_support,
        }

    def router_group_id(self) -> str:
        """Consumer group of pulse router."""
        return self.router_group or f"{self.app_id}-router"

    def topic_population(self) -> str:
        """Compacted topic of per-partition population counts (internal)."""
        return f"{self.app_id}-population"

    def topic_ticks(self) -> str:
        """Sweep ticks, co-partitioned with the inputs (internal)."""
        return f"{self.app_id}-ticks"

    def topic_state_changelog(self) -> str:
        """The customer-state table's changelog, as Faust names it (internal, compacted)."""
        return f"{self.app_id}-{STATE_TABLE}-changelog"

    def rfm(self) -> RfmConfig:
        if self.vip_leave_share < self.vip_enter_share:
            raise ValueError("PULSE_VIP_LEAVE_SHARE must be at least PULSE_VIP_ENTER_SHARE")
        low = self.rfm_high_value_min_score
        segments = tuple(self.rfm_segments) or tuple(
            SegmentRule(HIGH_VALUE, (low, 5), (low, 5), (low, 5)) if rule.name == HIGH_VALUE else rule
            for rule in DEFAULT_SEGMENTS
        )
        return RfmConfig(
            keys=RfmKeys(m_relative_error=self.rfm_m_relative_error),
            segments=segments,
            vip_enter_share=self.vip_enter_share,
            vip_leave_share=self.vip_leave_share,
            vip_segments=frozenset(self.vip_segments),
            vip_value=self.vip_value,
            exact_band_share=self.rfm_exact_band_share,
        )

    def churn(self) -> ChurnConfig:
        unknown = set(self.churn_weights) - set(SIGNALS)
        if unknown:
            raise ValueError(f"PULSE_CHURN_WEIGHTS: unknown signals {sorted(unknown)}; known: {', '.join(SIGNALS)}")
        if self.churn_high_min_score < self.churn_medium_min_score:
            raise ValueError("PULSE_CHURN_HIGH_MIN_SCORE must be at least PULSE_CHURN_MEDIUM_MIN_SCORE")
        if 2 * self.churn_spend_window_days > self.revenue_window_days + self.revenue_bucket_days:
            raise ValueError("PULSE_CHURN_SPEND_WINDOW_DAYS: two spans must fit in PULSE_REVENUE_WINDOW_DAYS")
        return ChurnConfig(
            overdue_gap_multiple=self.churn_overdue_gap_multiple,
            overdue_min_repeat_purchases=self.churn_overdue_min_repeat_purchases,
            default_gap_days=self.churn_default_gap_days,
            population_gap_min_customers=self.churn_population_gap_min_customers,
            p_alive_threshold=self.churn_p_alive_threshold,
            spend_window_days=self.churn_spend_window_days,
            spend_decline_ratio=self.churn_spend_decline_ratio,
            nps_drop_points=self.churn_nps_drop_points,
            csat_dissatisfied_max=self.churn_csat_dissatisfied_max,
            complaint_burst_count=self.churn_complaint_burst_count,
            severe_complaint_severity=self.churn_severe_complaint_severity,
            survey_max_age_days=self.churn_survey_max_age_days,
            reopened_window_days=self.churn_reopened_window_days,
            weights=MappingProxyType(dict(self.churn_weights)),
            medium_min_score=self.churn_medium_min_score,
            high_min_score=self.churn_high_min_score,
            alert_cooldown_days=self.churn_alert_cooldown_days,
        )

    def indicators(self) -> IndicatorConfig:
        return IndicatorConfig(
            survey_window_days=self.population_survey_window_days,
            period_days=self.population_period_days,
            activity_days=self.population_activity_days,
            response_edges_ms=response_edges_ms(
                self.population_response_min_seconds,
                self.population_response_buckets_per_doubling,
                self.population_response_buckets,
            ),
        )

    def scoring(self, clv_params: ClvParams = DEFAULT_CLV_PARAMS) -> ScoringConfig:
        """The scorers' configuration, with ``clv_params`` (the worker's: read once at start from
        ``clv_params_file`` with ``pulse_config.clv_params.load_clv_params``; default: the CDNOW defaults)."""
        indicators = self.indicators()
        return ScoringConfig(
            orders=OrderScoringConfig(
                default_gross_margin=self.default_gross_margin,
                revenue_window_days=self.revenue_window_days,
                revenue_bucket_days=self.revenue_bucket_days,
            ),
            voice=VoiceConfig(
                complaint_window_days=self.complaint_window_days,
                population_window_days=indicators.voice_window_days,
            ),
            service=ServiceConfig(
                first_response_sla_hours=self.first_response_sla_hours,
                resolution_sla_hours=self.resolution_sla_hours,
                max_tickets=self.max_tickets_per_customer,
                population_window_days=indicators.period_days,
                response_edges_ms=indicators.response_edges_ms,
            ),
            rfm=self.rfm(),
            clv=self.clv(clv_params),
            churn=self.churn(),
            indicators=indicators,
            dedup_event_ids=self.dedup_event_ids,
            episodes=EpisodeConfig(
                save_window_days=self.save_window_days,
                history=self.alert_episode_history,
                max_pending_actions=self.alert_episode_pending_actions,
            ),
        )

    def clv(self, clv_params: ClvParams = DEFAULT_CLV_PARAMS) -> ClvConfig:
        """CLV settings with ``clv_params`` (the fitted parameters the caller read from ``clv_params_file``)."""
        return ClvConfig(
            params=clv_params,
            horizon_days=self.clv_horizon_days,
            expected_lifetime_years=self.clv_expected_lifetime_years,
            lifetime_min_customers=self.clv_lifetime_min_customers,
            max_purchase_days=self.clv_max_purchase_days,
        )

    def processor(self, clv_params: ClvParams = DEFAULT_CLV_PARAMS) -> ProcessorConfig:
        """The batch engine's frozen configuration (``streams.processor.BatchProcessor``), scoring with
        ``clv_params`` (see :meth:`scoring`)."""
        return ProcessorConfig(
            scoring=self.scoring(clv_params),
            input_topics=MappingProxyType(self.input_topics()),
            ticks_topic=self.topic_ticks(),
            actions_topic=self.topic_retention_actions,
            base_currency=self.base_currency.upper(),
            currency_rates=MappingProxyType(self.currency_rates()),
            max_event_bytes=self.max_event_bytes,
            dead_letter_payload_bytes=self.dead_letter_payload_bytes,
            churn_due_per_batch=self.churn_due_per_batch,
            churn_due_per_live_batch=self.churn_due_per_live_batch,
            churn_due_time_ratio=self.churn_due_time_ratio,
            batch_budget_seconds=self.batch_backlog_seconds(),
            sweep_tick_seconds=self.sweep_tick_seconds,
            sweep_customers_per_tick=self.sweep_customers_per_tick,
            sweep_round_seconds=self.sweep_round_seconds,
            profile_refresh_seconds=self.profile_refresh_seconds,
            clock_idle_advance_seconds=self.clock_idle_advance_seconds,
            clock_partition_idle_seconds=self.clock_partition_idle_seconds,
            max_earliness_seconds=self.max_earliness_seconds,
            max_lateness_days=self.max_lateness_days,
            historical_alert_seconds=self.historical_alert_seconds,
            backlog_defer_assessments=self.backlog_defer_profiles and self.backlog_defer_assessments,
            native_profiles=self.native_profiles,
            test_fail_event_ids=frozenset(self.test_fail_event_ids),
        )

    def currency_rates(self) -> dict[str, Decimal]:
        """Rates to the base currency, the base itself included."""
        return {self.base_currency.upper(): Decimal(1), **{k.upper(): v for k, v in self.fx_rates.items()}}

    def broker_bootstrap(self) -> str:
        """aiokafka form of broker_url: host:port,host:port."""
        raw = self.broker_url.split("://", 1)[-1]
        return ",".join(part for part in raw.replace(";", ",").split(",") if part)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, then ``.pulse/dev.env`` (``PULSE_ENV_FILE``), then defaults."""
    env_file = os.environ.get("PULSE_ENV_FILE", DEV_ENV_FILE)
    return Settings(_env_file=env_file if env_file and os.path.exists(env_file) else None, **overrides)
