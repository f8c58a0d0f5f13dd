"""The Quix Streams peers of ``pulse bench`` (issue 18): the same backlog through a Quix Streams application.

Run by the harness as a subprocess (``python -m benchmarks.quix_peer``), configured by env vars:

* ``PULSE_*``: the phase's settings (broker, input topics, partitions, output topics, Redis, batch size), as
  the worker reads them;
* ``PEER_MODE``: ``noop`` (decode each record's JSON and count it), ``count`` (per customer, in Quix state:
  events counted and order amounts summed) or ``scorer`` (the project's pure processor per event, below);
* ``PEER_APP_ID``: the consumer group (and the changelog topics' names), unique per run;
* ``PEER_STORE``: ``rocksdb`` (Quix Streams' default) or ``memory`` (its ``MemoryStore``), for the stateful modes;
* ``PEER_METRICS_PORT``: Prometheus endpoint with ``peer_events_total`` and the wall times of the first and
  last event processed (``peer_first_event_seconds``, ``peer_last_event_seconds``); the scorer's
  ``peer_alerts_total`` and ``peer_profiles_total``.

Equivalent work, as a Quix Streams application would do it: one ``Application`` in a consumer group
(``earliest``), the four input topics concatenated into one ``StreamingDataFrame`` (they are co-partitioned by
customer id), state in Quix's store with its changelog topics on, at-least-once (Quix's default; the worker's
exactly-once needs Kafka transactions, which Tansu lacks). Quix's checkpoint is its batch bookkeeping: it
commits every ``PULSE_BATCH_MAX_EVENTS`` records (the worker's batch) or every second, flushing the produced
records, the state changelog and the sinks first, as the worker's checkpoint does per batch.

The ``scorer`` peer calls ``BatchProcessor.process`` with a batch of one record per message (the processor
holds the population, clock and due-time index in memory, as in the worker), reads and writes the customers'
encoded states (``streams.codec``) in Quix state, produces the dead letters, alerts and VIP changes to the
phase's topics and writes the rendered profiles to Redis through a Quix ``BatchingSink`` at each checkpoint
(the worker's packing, ``streams.sinks.redis_profiles``). A due check may re-score customers other than the
message's: their states are read and written through the same partition transaction.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, start_http_server

EVENTS = Counter("peer_events", "Events processed by the Quix Streams peer.")
FIRST = Gauge("peer_first_event_seconds", "Wall time of the first event processed (Unix time).")
LAST = Gauge("peer_last_event_seconds", "Wall time of the last event processed (Unix time).")
ALERTS = Counter("peer_alerts", "Retention alerts the scorer peer produced.")
PROFILES = Counter("peer_profiles", "Profiles the scorer peer rendered for Redis.")

#: the state key of a customer's encoded state (Quix prefixes it with the message key)
STATE_KEY = "s"


class Progress:
    """Counts processed events into the Prometheus metrics (the harness polls them)."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, n: int = 1) -> None:
        now = time.time()
        if not self.seen:
            FIRST.set(now)
        self.seen += n
        LAST.set(now)
        EVENTS.inc(n)


def build(mode: str) -> Any:
    """The application for ``mode`` (Quix tracks the dataframes it made)."""
    from quixstreams import Application
    from quixstreams.state.memory import MemoryStore
    from quixstreams.state.rocksdb import RocksDBStore

    from testing.stack import settings_from_env

    settings = settings_from_env({k: v for k, v in os.environ.items() if k.startswith("PULSE_")})
    store = MemoryStore if os.environ.get("PEER_STORE", "rocksdb") == "memory" else RocksDBStore
    state_dir = Path(settings.data_dir) / f"quix-{os.environ['PEER_APP_ID']}"
    app = Application(
        broker_address=settings.broker_bootstrap(),
        consumer_group=os.environ["PEER_APP_ID"],
        auto_offset_reset="earliest",
        commit_every=settings.batch_max_events,
        commit_interval=1.0,
        # Quix pops the records in timestamp order across partitions and waits, up to a poll, for a partition
        # whose buffer is empty and whose end is not known yet: its default 1 s poll makes the end of a backlog
        # crawl. The worker waits at most batch_within_seconds to fill a batch: the same bound here (tuned).
        consumer_poll_timeout=settings.batch_within_seconds,
        # the worker's fetch wait (Tansu holds a fetch for its max wait even when data is there)
        consumer_extra_config={
            "fetch.wait.max.ms": settings.consumer_fetch_max_wait_ms,
            # the group timing of the worker here (testing.stack.LOCAL_GROUP_TIMING): a quick first join
            "session.timeout.ms": int(settings.broker_session_timeout * 1000),
            "heartbeat.interval.ms": int(settings.broker_heartbeat_interval * 1000),
        },
        state_dir=state_dir,
        loglevel=os.environ.get("PEER_LOGLEVEL", "WARNING"),
    )
    value = "bytes" if mode == "scorer" else "json"
    inputs = [
        app.topic(name, key_deserializer="bytes", value_deserializer=value) for name in settings.input_topics().values()
    ]
    for topic in inputs:
        # Tansu's DescribeConfigs has no retention.ms, from which Quix derives its changelog topics' (Kafka's has)
        topic.broker_config.extra_config.setdefault("retention.ms", "-1")
    sdf = app.dataframe(inputs[0])
    for topic in inputs[1:]:
        sdf = sdf.concat(app.dataframe(topic))
    progress = Progress()
    if mode == "noop":
        sdf.update(lambda _value: progress())
    elif mode == "count":
        sdf.register_store(store_type=store)

        def count(value: dict, state: Any) -> None:
            state.set("n", state.get("n", 0) + 1)
            if "amount" in value:
                state.set("sum", state.get("sum", 0.0) + float(value["amount"]))
            progress()

        sdf.update(count, stateful=True)
    elif mode == "scorer":
        sdf.register_store(store_type=store)
        scorer(app, sdf, settings, progress)
    else:
        raise SystemExit(f"PEER_MODE: noop, count or scorer, not {mode!r}")
    return app


def scorer(app: Any, sdf: Any, settings: Any, progress: Progress) -> None:
    """The processor per event; its outputs to the phase's topics and, at each checkpoint, Redis."""
    from quixstreams import message_context
    from quixstreams.models.serializers import Serializer
    from quixstreams.sinks import BatchingSink

    from streams.codec import decode_state, encode_state
    from streams.partitioning import partitioner
    from streams.processor import BatchProcessor, Incoming
    from streams.sinks.redis_profiles import pack_batch, pack_profile

    processor = BatchProcessor(settings.processor(), partitioner(settings.partitions))
    prefix, vip_value = settings.redis_key_prefix, settings.vip_value

    class Raw(Serializer):
        """The output row's bytes as they are (alerts, VIP changes and dead letters are encoded already)."""

        def __call__(self, value: dict, ctx: Any) -> bytes:
            return value["v"]

    class RedisProfiles(BatchingSink):
        """A checkpoint's rendered profiles to Redis in one round trip, packed as the worker's sink packs them
        (a customer's last profile wins)."""

        def __init__(self) -> None:
            import redis

            super().__init__()
            self.client = redis.Redis.from_url(settings.redis_url)

        def write(self, batch: Any) -> None:
            latest = {item.value["c"]: item.value["p"] for item in batch}
            packed, replies = pack_batch(latest, prefix)
            conn = self.client.connection_pool.get_connection()
            try:
                conn.send_packed_command([packed])
                for _ in range(replies):
                    conn.read_response()
            finally:
                self.client.connection_pool.release(conn)

    outputs = {
        name: app.topic(name, key_serializer="bytes", value_serializer=Raw())
        for name in (settings.topic_dead_letters, settings.topic_retention_alerts, settings.topic_vip_changes)
    }

    def score(value: bytes, key: bytes, timestamp: int, headers: Any, state: Any) -> list[dict]:
        ctx = message_context()
        # the partition's transaction: a due check may load and re-score other customers of the partition
        transaction = state._transaction

        def load(customer: bytes) -> Any:
            return decode_state(transaction.get_bytes(STATE_KEY, prefix=customer))

        record = Incoming(ctx.topic, ctx.partition, ctx.offset, key, value)
        out = processor.process([record], load, wall_ms=int(time.time() * 1000))
        for customer, customer_state in out.states.items():
            transaction.set_bytes(STATE_KEY, encode_state(customer_state), prefix=customer)
        rows = [{"t": settings.topic_dead_letters, "k": r.key, "v": r.record} for r in out.rejected]
        rows += [{"t": settings.topic_retention_alerts, "k": k, "v": raw} for k, _, raw in out.alerts]
        rows += [{"t": settings.topic_vip_changes, "k": k, "v": raw} for k, _, raw in out.vip_changes]
        rows += [{"t": "", "p": pack_profile(p, prefix, vip_value), "c": p.customer_id} for p in out.profiles]
        ALERTS.inc(len(out.alerts))
        PROFILES.inc(len(out.profiles))
        progress()
        return rows

    sdf = sdf.apply(score, stateful=True, metadata=True, expand=True)
    produced = sdf[sdf.apply(lambda row: row["t"] != "")]
    produced.to_topic(lambda row, *_: outputs[row["t"]], key=lambda row: row["k"])
    profiles = sdf[sdf.apply(lambda row: row["t"] == "")]
    profiles.sink(RedisProfiles())


def main() -> None:
    mode = os.environ.get("PEER_MODE", "noop")
    app = build(mode)
    start_http_server(int(os.environ["PEER_METRICS_PORT"]), addr="127.0.0.1")
    app.run()


if __name__ == "__main__":
    main()
