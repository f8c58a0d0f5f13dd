"""The naive baseline of ``pulse bench``: one Faust agent, one table update per event.

Run by the harness as a subprocess (``python benchmarks/naive_faust.py``), configured by env vars:

* ``PULSE_BROKER_URL``: the broker (faust URL form);
* ``NAIVE_APP_ID``: app id (consumer group and changelog prefix), unique per run;
* ``NAIVE_TOPICS``: the input topics, comma-separated (keyed by customer id);
* ``NAIVE_PARTITIONS``: their partition count (the table's too);
* ``NAIVE_MODE``: ``take`` for batches of ``stream.take_events`` that only decode (Faust's own ceiling);
  ``batch`` for the same no-work loop on the worker's batch input path (``streams.batch_input``: the group
  consumer's fetches as raw batches, commits of what was applied); otherwise one table update per event;
* ``PULSE_EVENT_LOOP``, ``PULSE_CONSUMER_FETCH_MAX_WAIT_MS``: as the worker's settings (uvloop, 100 ms);
* ``NAIVE_METRICS_PORT``: Prometheus endpoint with ``naive_events_total`` and the wall times of the
  first and last event processed (``naive_first_event_seconds``, ``naive_last_event_seconds``).

Same consumer settings as the real worker (short group timeouts as in the tests, ``earliest``, acks
all, the transport fixes of ``streams.faust_fixes``, its fetch wait and event loop), memory store.
Per event: decode the JSON and ``table[customer_id] += 1``, which Faust sends to the changelog
through its producer buffer: what a first Faust version of the scorer would do, without any scoring.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import faust
import orjson
from prometheus_client import Counter, Gauge, start_http_server

from streams import faust_fixes, faust_tuning

EVENTS = Counter("naive_events", "Events processed by the naive agent.")
FIRST = Gauge("naive_first_event_seconds", "Wall time of the first event processed (Unix time).")
LAST = Gauge("naive_last_event_seconds", "Wall time of the last event processed (Unix time).")


def build() -> faust.App:
    faust_fixes.apply()
    faust_tuning.set_fetch_max_wait_ms(int(os.environ.get("PULSE_CONSUMER_FETCH_MAX_WAIT_MS", "100")))
    partitions = int(os.environ.get("NAIVE_PARTITIONS", "4"))
    datadir = Path(os.environ.get("PULSE_DATA_DIR", ".pulse/naive"))
    datadir.mkdir(parents=True, exist_ok=True)  # Faust makes the last level only
    app = faust.App(
        os.environ["NAIVE_APP_ID"],
        broker=os.environ["PULSE_BROKER_URL"],
        store="memory://",
        # Faust makes a data dir even for the memory store: the phase's own, not the current directory
        datadir=datadir,
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=float(os.environ.get("PULSE_BROKER_SESSION_TIMEOUT", "6")),
        broker_heartbeat_interval=float(os.environ.get("PULSE_BROKER_HEARTBEAT_INTERVAL", "0.5")),
        broker_rebalance_timeout=float(os.environ.get("PULSE_BROKER_REBALANCE_TIMEOUT", "3")),
        broker_commit_interval=1.0,
        producer_acks=-1,
        web_enabled=False,
        table_standby_replicas=0,
    )
    names = [t for t in os.environ["NAIVE_TOPICS"].split(",") if t]
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    topic = app.topic(*names, partitions=partitions, **raw)
    counts = app.Table("counts", default=int, partitions=partitions, key_type=str, value_type=int)
    seen = [0]

    def counted(n: int) -> None:
        now = time.time()
        if not seen[0]:
            FIRST.set(now)
        seen[0] += n
        LAST.set(now)
        EVENTS.inc(n)

    if os.environ.get("NAIVE_MODE") == "batch":
        from streams import batch_input

        tap = batch_input.attach(app, names, 5000)
        topic.__aiter__()  # subscribes the group consumer to the topics (what an agent's stream does)

        async def decode(records: list[batch_input.InputRecord]) -> list[batch_input.InputRecord]:
            for record in records:
                orjson.loads(record.value)  # type: ignore[arg-type]
            counted(len(records))
            return records

        @app.task
        async def naive_batch() -> None:
            await tap.run(decode, 500, 0.05, lambda work: work)

    elif os.environ.get("NAIVE_MODE") == "take":

        @app.agent(topic, name="naive_take")
        async def naive_take(stream: faust.StreamT) -> None:
            async for events in stream.take_events(500, 0.05):
                for event in events:
                    orjson.loads(event.value)
                counted(len(events))

    else:

        @app.agent(topic, name="naive_count")
        async def naive_count(stream: faust.StreamT) -> None:
            async for event in stream.events():
                data = orjson.loads(event.value)
                counts[data["customer_id"]] += 1
                counted(1)

    return app


def main() -> None:
    if os.environ.get("PULSE_EVENT_LOOP", "uvloop") == "uvloop":  # as the worker
        import uvloop

        uvloop.install()
    app = build()
    start_http_server(int(os.environ["NAIVE_METRICS_PORT"]), addr="127.0.0.1")
    faust.Worker(app, loglevel=os.environ.get("NAIVE_LOGLEVEL", "warning")).execute_from_commandline()


if __name__ == "__main__":
    main()
