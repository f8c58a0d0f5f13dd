"""Prometheus metrics of a worker (base units, ``_total`` counters, no customer ids)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "pulse_events_total",
    "Input events handled, by kind and outcome (scored, duplicate, dead_lettered, rerouted).",
    ["kind", "outcome"],
)
DEAD_LETTERS = Counter(
    "pulse_dead_letters_total", "Events sent to the dead-letter topic, by kind and reason.", ["kind", "reason"]
)
CHECKPOINT_SECONDS = Histogram(
    "pulse_checkpoint_seconds",
    "Time to make one batch durable: changelog + produced messages acknowledged, then Redis.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_EVENTS = Histogram(
    "pulse_batch_events", "Events per processing batch.", buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500)
)
REDIS_WRITE_ERRORS = Counter("pulse_redis_write_errors_total", "Failed Redis profile writes (retried).")
REDIS_BATCH_PROFILES = Histogram(
    "pulse_redis_batch_profiles",
    "Profiles per Redis pipeline write.",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000),
)
REDIS_PENDING_PROFILES = Gauge(
    "pulse_redis_pending_profiles", "Profiles waiting for Redis (non-zero during an outage)."
)
WATERMARK_SECONDS = Gauge("pulse_event_time_watermark_seconds", "Highest event time seen by this worker (Unix time).")
VIP_CHANGES = Counter(
    "pulse_vip_changes_total", "VIP flag changes published, by direction (entered, left).", ["direction"]
)
SWEPT_CUSTOMERS = Counter("pulse_swept_customers_total", "Customers re-scored by the sweep as the population moved.")
POPULATION_CUSTOMERS = Gauge(
    "pulse_population_customers", "Customers with a purchase in the RFM population, as this worker sees it."
)
POPULATION_REBUILD_SECONDS = Histogram(
    "pulse_population_rebuild_seconds",
    "Time to rebuild the population of newly owned partitions from the table.",
    buckets=(0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
)
