"""The Faust app: topics, the customer state table and the agents, built from settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from pulse_config.processor import ProcessorConfig
from pulse_config.settings import STATE_TABLE, Settings
from streams import faust_fixes, faust_tuning, offsets
from streams.security import broker_credentials, kafka_client_kwargs
from streams.tables import CustomerStateTable, table_manager

RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


@dataclass
class PulseApp:
    settings: Settings
    #: the batch engine's frozen configuration, built once at start (with the CLV parameters the worker read)
    processor_config: ProcessorConfig
    app: faust.App
    customer_events: faust.TopicT  # all four input topics, one channel
    topics_by_name: dict[str, faust.TopicT]
    dead_letters: faust.TopicT
    vip_changes: faust.TopicT
    retention_alerts: faust.TopicT
    #: internal: sweep ticks (co-partitioned with the inputs) and population snapshots
    ticks: faust.TopicT
    population: faust.TopicT
    customer_states: CustomerStateTable


def create_app(settings: Settings, processor_config: ProcessorConfig) -> PulseApp:
    faust_fixes.apply()
    faust_tuning.set_fetch_max_wait_ms(settings.consumer_fetch_max_wait_ms)
    faust_tuning.set_fetch_min_bytes(settings.consumer_fetch_min_bytes)
    faust_tuning.set_isolation_level(settings.consumer_isolation_level)
    app = faust.App(
        settings.app_id,
        broker=settings.broker_url,
        store=settings.store,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        broker_rebalance_timeout=settings.broker_rebalance_timeout,
        broker_commit_interval=settings.broker_commit_interval,
        consumer_metadata_max_age_ms=int(settings.broker_metadata_max_age_seconds * 1000),
        producer_metadata_max_age_ms=int(settings.broker_metadata_max_age_seconds * 1000),
        producer_acks=-1,
        # a checkpoint's changelog records of a partition in one or two requests, not one round trip per 16 KB
        producer_max_batch_size=settings.producer_max_batch_bytes,
        broker_credentials=broker_credentials(settings),
        web_enabled=False,
        # Faust's leader election topic ({app_id}-__assignor-__leader) serves only @app.timer(on_leader=True), which
        # this app does not use; Faust creates it at every start, so on a cluster whose ACLs deny the worker CREATE
        # (its topics made by an admin) the worker crashed at start (tests/e2e/test_kafka_acls.py)
        topic_disable_leader=True,
        table_standby_replicas=0,
        TableManager=table_manager(settings),
    )
    # retention-actions (what teams did about alerts) is read like an input, customer-keyed and co-partitioned
    names = [*settings.input_topics().values(), settings.topic_retention_actions]
    # the ticks ride in the same channel, so a sweep runs inside a batch's checkpoint
    customer_events = app.topic(*names, settings.topic_ticks(), partitions=settings.partitions, **RAW)
    topics_by_name = {name: app.topic(name, partitions=settings.partitions, **RAW) for name in names}
    dead_letters = app.topic(settings.topic_dead_letters, **RAW)
    vip_changes = app.topic(settings.topic_vip_changes, **RAW)
    retention_alerts = app.topic(settings.topic_retention_alerts, **RAW)
    ticks = app.topic(settings.topic_ticks(), partitions=settings.partitions, **RAW)
    population = app.topic(settings.topic_population(), partitions=1, **RAW)
    # Built the way App.Table builds tables, with our subclass.
    table = CustomerStateTable(
        app,
        name=STATE_TABLE,
        default=None,
        beacon=app.tables.beacon,
        partitions=settings.partitions,
        # The checkpoint writes with the customer's own partition
        # (CustomerStateTable.write_states); reads in a batch have no
        # current event, so the store looks the key up in its index.
        use_partitioner=True,
        # bytes in, bytes out: the "raw" codec (see _serializer_from_type)
        key_type=bytes,
        value_type=bytes,
    )
    # the read-back of foreign changelog offsets (CustomerStateTable.repair) reaches the broker as the offset guard does
    table.read_back_client = kafka_client_kwargs(settings)
    table.read_back_seconds = settings.offset_gap_read_back_seconds
    # an owner marker of a later generation than the worker's is checked with the coordinator (see epoch_for)
    table.confirm_generation = lambda generation: offsets.generation_confirmed(app, generation)
    app.tables.add(table)
    pulse = PulseApp(
        settings,
        processor_config,
        app,
        customer_events,
        topics_by_name,
        dead_letters,
        vip_changes,
        retention_alerts,
        ticks,
        population,
        table,
    )
    # (the agents' modules, named apart from the topics above)
    from streams.agents import customer_events as events_agent
    from streams.agents import monitoring
    from streams.agents import population as population_agent

    processor = events_agent.register(pulse)
    population_agent.register(pulse, processor)
    monitoring.register(pulse)
    return pulse
