"""All configuration of customer-pulse, in one place.

Every setting is an environment variable ``PULSE_<NAME>`` (case-insensitive)
with the documented default below. ``pulse dev`` also writes the URLs of the
stack it started to ``.pulse/dev.env`` so that other ``pulse`` commands run in
the same folder find it; real environment variables always win over that file.
The names of scoring thresholds follow shared/spec/customer-value.md.
"""

from __future__ import annotations

import os
from decimal import Decimal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from scoring.customer import ScoringConfig
from scoring.orders import OrderScoringConfig
from scoring.service import ServiceConfig
from scoring.voice import VoiceConfig

#: The file ``pulse dev`` writes; read by settings when present.
DEV_ENV_FILE = ".pulse/dev.env"


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
    partitions: int = Field(4, ge=1, description="Partitions of every input topic and of the state table.")
    replication_factor: int = Field(1, ge=1, description="Replication of topics the app creates.")

    # --- state store -------------------------------------------------------
    store: str = Field("memory://", description="Faust table store: memory:// or rocksdb:// (needs the rocksdb extra).")
    data_dir: str = Field(".pulse/data", description="Worker data directory (RocksDB files).")

    # --- processing --------------------------------------------------------
    batch_max_events: int = Field(500, ge=1, description="Events per processing batch (one checkpoint each).")
    batch_within_seconds: float = Field(0.05, gt=0, description="Longest wait to fill a batch.")
    max_event_bytes: int = Field(65536, ge=256, description="Larger payloads are dead-lettered as payload_too_large.")
    dead_letter_payload_bytes: int = Field(4096, ge=0, description="Bytes of a rejected payload the DLQ record keeps.")
    dedup_event_ids: int = Field(
        32, ge=1, le=1024, description="Recent event ids remembered per customer to drop producer duplicates."
    )
    changelog_end_markers: bool = Field(
        True,
        description="End each checkpoint with a one-record marker per changelog partition (needed on Tansu, "
        "whose ListOffsets makes Faust's recovery miss the tail of the last batch; harmless on Kafka).",
    )
    shutdown_grace_seconds: float = Field(10.0, gt=0, description="Time a running checkpoint gets to finish on stop.")

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
    base_currency: str = Field("USD", min_length=3, max_length=3, description="Currency all money is reported in.")
    fx_rates: dict[str, Decimal] = Field(
        default_factory=dict,
        description='Extra currencies: units of base currency per unit, JSON, e.g. {"EUR": "1.08"}.',
    )

    # --- sinks -------------------------------------------------------------
    redis_key_prefix: str = Field("pulse:", description="Prefix of every Redis key the app writes.")
    redis_retry_max_seconds: float = Field(5.0, gt=0, description="Longest back-off between Redis write retries.")

    # --- consumer tuning (short group joins; defaults suit a small cluster) -
    broker_session_timeout: float = Field(10.0, gt=0, description="Consumer group session timeout, seconds.")
    broker_heartbeat_interval: float = Field(1.0, gt=0, description="Consumer heartbeat interval, seconds.")
    broker_rebalance_timeout: float = Field(10.0, gt=0, description="Group join wait, seconds.")
    broker_commit_interval: float = Field(1.0, gt=0, description="Offset commit interval, seconds.")

    # --- monitoring --------------------------------------------------------
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus metrics HTTP port (0: off).")
    metrics_host: str = Field("127.0.0.1", description="Address the metrics endpoint binds.")

    def input_topics(self) -> dict[str, str]:
        """Topic name per event kind."""
        return {
            "order": self.topic_orders,
            "survey": self.topic_surveys,
            "complaint": self.topic_complaints,
            "support": self.topic_support,
        }

    def scoring(self) -> ScoringConfig:
        return ScoringConfig(
            orders=OrderScoringConfig(
                default_gross_margin=self.default_gross_margin,
                revenue_window_days=self.revenue_window_days,
                revenue_bucket_days=self.revenue_bucket_days,
            ),
            voice=VoiceConfig(complaint_window_days=self.complaint_window_days),
            service=ServiceConfig(
                first_response_sla_hours=self.first_response_sla_hours,
                resolution_sla_hours=self.resolution_sla_hours,
                max_tickets=self.max_tickets_per_customer,
            ),
            dedup_event_ids=self.dedup_event_ids,
        )

    def currency_rates(self) -> dict[str, Decimal]:
        """Rates to the base currency, the base itself included."""
        return {self.base_currency.upper(): Decimal(1), **{k.upper(): v for k, v in self.fx_rates.items()}}

    def broker_bootstrap(self) -> str:
        """aiokafka form of broker_url: host:port,host:port."""
        raw = self.broker_url.split("://", 1)[-1]
        return ",".join(part for part in raw.replace(";", ",").split(",") if part)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, then ``.pulse/dev.env`` (``PULSE_ENV_FILE``), then defaults."""
    env_file = os.environ.get("PULSE_ENV_FILE", DEV_ENV_FILE)
    return Settings(_env_file=env_file if env_file and os.path.exists(env_file) else None, **overrides)
