"""The frozen configuration of the batch engine (``streams.processor.BatchProcessor``).

Built once from :class:`pulse_config.settings.Settings` (``Settings.processor``) with the CLV parameters the
worker read at start, so the engine neither reads the environment nor files: the same values for a whole run,
and unit tests construct it without an environment. Field names are those of the ``PULSE_*`` settings they come
from, so error messages can name the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from scoring.customer import ScoringConfig


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    """Everything ``BatchProcessor`` reads of the configuration (see ``pulse_config.settings`` for each field)."""

    #: the scorers' configuration, CLV parameters included
    scoring: ScoringConfig
    #: topic name per event kind ("order", "survey", "complaint", "support")
    input_topics: Mapping[str, str]
    #: the internal sweep-ticks topic
    ticks_topic: str
    #: what teams did about alerts (PULSE_TOPIC_RETENTION_ACTIONS): read like an input, holds no clock
    actions_topic: str
    #: currency all money is reported in (upper case) and the rates to it, the base itself included
    base_currency: str
    currency_rates: Mapping[str, Decimal]
    max_event_bytes: int
    dead_letter_payload_bytes: int
    churn_due_per_batch: int
    churn_due_per_live_batch: int
    #: a batch past its budget stops its due checks once they took this many times its records' time
    churn_due_time_ratio: float
    #: a batch's time budget (Settings.batch_backlog_seconds: a share of the rebalance timeout); None: none
    batch_budget_seconds: float | None
    sweep_tick_seconds: float
    sweep_customers_per_tick: int
    sweep_round_seconds: float
    profile_refresh_seconds: float
    clock_idle_advance_seconds: float
    clock_partition_idle_seconds: float
    max_earliness_seconds: float
    max_lateness_days: float
    historical_alert_seconds: float
    #: a backlog customer the next batch scores again is assessed there, with its profile (PULSE_BACKLOG_DEFER_...)
    backlog_defer_assessments: bool = False
    #: profiles rendered and packed in C where built (PULSE_NATIVE_PROFILES; process-wide, as the renderer is)
    native_profiles: bool = True
    #: test only (fault injection, PULSE_TEST_FAIL_EVENT_IDS): scoring these event ids raises
    test_fail_event_ids: frozenset[str] = frozenset()
