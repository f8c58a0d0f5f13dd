"""``pulse bench``: the performance issue's numbers (issue 8) in one run, in one process tree.

Starts a broker (Tansu, or Apache Kafka with ``--broker kafka``) and Redis on loopback (``DevStack``),
preloads N generated events of the realistic four-kind mix (orders 60 %, support 25 %, surveys 10 %,
complaints 5 %) to fresh topics, then:

1. **raw**: a plain aiokafka consumer (no group) reads the N records of the four topics: the ceiling
   of a Python consumer;
2. **naive**: ``benchmarks/naive_faust.py``, one Faust agent that decodes each event and updates one
   table entry (memory store, the worker's consumer settings): the baseline;
   **faust**: the same agent in batches of ``stream.take_events`` doing nothing but decode: the
   ceiling of any scorer built on Faust's stream (what Faust costs per event on this machine);
3. **full**: ``python -m pulse worker`` with its real settings (all scoring, changelog, Redis
   write-behind), timed from its first to its last scored event by ``pulse_events_total``;
   then its peak RSS (``VmHWM``) and the bytes of state per customer (the last value of every key of
   its changelog topic);
4. **latency**: the same (now warm) worker gets live traffic at half the rate it reached in (3) for
   ``--latency-seconds``; tracer events (about 50/s: an order, or a survey with NPS 0 and CSAT 1 that
   raises a retention alert at once, each for a fresh customer) are timed from their production to
   their profile being in Redis and to their alert arriving on the retention topic;
5. **scaling**: 2, 3 … workers, each count on its own preloaded copy of the N events;
6. **cost**: CPU per event of the processor alone (decode the state, ``BatchProcessor.process``,
   encode the state, render the Redis fields), no Kafka, against populations of 10k, 100k (1M)
   customers cloned from a realistically scored history;
7. **recovery** (``--recovery N``): N customers' states written to the changelog topic, then a fresh
   worker with ``PULSE_STORE=rocksdb://`` is timed until it scored its first event; then it scores
   ``--recovery-events`` events of the mix for customers among the N (RocksDB reads, a population of N).

Each phase has its own topics, app id and Redis prefix, so phases never see each other. Every wait
is bounded. The result is a table (each number next to its target: met, or missed by how much) or,
with ``--json``, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from testing.templates import Templates, template_states

REPO = Path(__file__).resolve().parent.parent
PHASES = ("raw", "naive", "faust", "full", "latency", "state", "scaling", "cost", "recovery")

#: Targets of the performance issue (per worker, on the project's 2-core machine).
TARGETS = {
    "full_events_per_second": 20_000,
    "full_over_raw": 0.30,
    "full_over_naive": 4.0,
    "alert_p99_ms": 250.0,
    "state_bytes_per_customer": 1024,
    "recovery_seconds": 60.0,
}

#: Bounds of the waits (seconds).
START_SECONDS = 120.0
PHASE_SECONDS = 900.0
DRAIN_SECONDS = 20.0
#: Metrics polling (each scrape costs the worker's GIL a few ms: not too often).
POLL_SECONDS = 0.2
#: Tracer events per second in the latency phase (about half of them raise an alert).
TRACERS_PER_SECOND = 50
#: the latency phase also reports the alert p99 of the tracers produced in each window of this length
LATENCY_WINDOW_SECONDS = 5.0
#: py-spy samples per second.
SPY_RATE = 100
#: Customer ids of the latency tracers start with this (left out of the state sizes).
TRACER_PREFIX = b"LT"


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def metric_values(port: int) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return ""


def metric_sum(text: str, name: str, where: str = "") -> float:
    """Sum of the samples of ``name`` whose label set contains ``where`` (e.g. 'outcome="scored"')."""
    total = 0.0
    for labels, value in re.findall(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        if where in labels:
            total += float(value)
    return total


def peak_rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Proc:
    """A subprocess of the benchmark with its log and metrics port."""

    name: str
    popen: subprocess.Popen
    log: Path
    metrics_port: int

    def alive(self) -> bool:
        return self.popen.poll() is None

    def metrics(self) -> str:
        return metric_values(self.metrics_port)

    def stop(self, timeout: float = 30.0) -> None:
        from pulse.devstack import stop_process

        stop_process(self.popen, timeout)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Bench:
    """One run: the stack, its options, the processes it started and the results so far."""

    args: argparse.Namespace
    log_dir: Path
    stack: Any = None
    procs: list[Proc] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ namespaces and processes

    def env(self, tag: str, inputs: str | None = None, **extra: str) -> dict[str, str]:
        """PULSE_* env of one phase: its own app id, output topics and Redis prefix; inputs of ``inputs``."""
        inputs = inputs or tag
        return {
            **self.stack.env(),
            "PULSE_ENV_FILE": "",
            "PULSE_APP_ID": f"bench-{tag}",
            "PULSE_TOPIC_ORDERS": f"orders-{inputs}",
            "PULSE_TOPIC_SURVEYS": f"surveys-{inputs}",
            "PULSE_TOPIC_COMPLAINTS": f"complaints-{inputs}",
            "PULSE_TOPIC_SUPPORT": f"support-{inputs}",
            "PULSE_TOPIC_DEAD_LETTERS": f"dlq-{tag}",
            "PULSE_TOPIC_RETENTION_ALERTS": f"alerts-{tag}",
            "PULSE_TOPIC_VIP_CHANGES": f"vips-{tag}",
            "PULSE_REDIS_KEY_PREFIX": f"b{tag}:",
            "PULSE_PARTITIONS": str(self.args.partitions),
            "PULSE_DATA_DIR": str(self.log_dir / tag / "data"),
            "PULSE_API_PORT": "0",
            # a local broker with local workers: short group joins (as the tests and pulse dev)
            "PULSE_BROKER_REBALANCE_TIMEOUT": "3",
            "PULSE_BROKER_SESSION_TIMEOUT": "6",
            "PULSE_BROKER_HEARTBEAT_INTERVAL": "0.5",
            **extra,
        }

    @staticmethod
    def settings(env: dict[str, str]):
        from pulse_config.settings import Settings

        return Settings(
            _env_file=None, **{k[len("PULSE_") :].lower(): v for k, v in env.items() if k != "PULSE_ENV_FILE"}
        )

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        from pulse.devstack import free_port

        port = free_port()
        log_path = self.log_dir / f"{name}.log"
        popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **env, "PULSE_METRICS_PORT": str(port), "NAIVE_METRICS_PORT": str(port)},
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        proc = Proc(name, popen, log_path, port)
        self.procs.append(proc)
        return proc

    def worker(self, name: str, env: dict[str, str]) -> Proc:
        return self.spawn(name, [sys.executable, "-m", "pulse", "worker", "--loglevel", "info"], env)

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        if self.stack is not None:
            self.stack.close()

    # ------------------------------------------------------------------ traffic

    def history(self) -> list[tuple[str, dict]]:
        """N events of the four-kind mix (the first N by event time of a generated history)."""
        from pulse.simulate import generate_events

        n = self.args.events
        customers = self.args.customers or max(10, math.ceil(n / 10))
        days = 365
        events = generate_events(customers, days, seed=self.args.seed)
        if len(events) < n:
            # a longer history for the same customers gives more events
            days = min(3650, math.ceil(days * n / max(1, len(events)) * 1.1))
            events = generate_events(customers, days, seed=self.args.seed)
        return events[:n]

    def preload(self, env: dict[str, str], events: list[tuple[str, dict]]) -> float:
        from pulse.simulate import send
        from streams.admin import ensure_topics
        from streams.security import kafka_client_kwargs

        settings = self.settings(env)
        started = time.perf_counter()
        asyncio.run(ensure_topics(settings))
        asyncio.run(send(kafka_client_kwargs(settings), settings.input_topics(), events))
        return time.perf_counter() - started

    # ------------------------------------------------------------------ phases

    def raw(self, env: dict[str, str], n: int) -> dict[str, Any]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from streams.security import kafka_client_kwargs

        settings = self.settings(env)

        async def go() -> tuple[int, float]:
            consumer = AIOKafkaConsumer(
                **kafka_client_kwargs(settings), enable_auto_commit=False, group_id=None, fetch_max_wait_ms=100
            )
            await consumer.start()
            try:
                tps = [
                    TopicPartition(topic, p)
                    for topic in settings.input_topics().values()
                    for p in range(settings.partitions)
                ]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                count = 0
                started = time.perf_counter()
                deadline = time.monotonic() + PHASE_SECONDS
                while count < n and time.monotonic() < deadline:
                    batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                    count += sum(len(records) for records in batch.values())
                return count, time.perf_counter() - started
            finally:
                await consumer.stop()

        count, seconds = asyncio.run(go())
        if count < n:
            raise RuntimeError(f"raw consumer read {count} of {n} records in {PHASE_SECONDS}s")
        return {"events": count, "seconds": round(seconds, 3), "events_per_second": round(count / seconds, 1)}

    def naive(self, env: dict[str, str], n: int, mode: str = "table") -> dict[str, Any]:
        """``mode``: "table" (one table update per event) or "take" (batches, no work: Faust's own ceiling)."""
        settings = self.settings(env)
        naive_env = {
            **env,
            "NAIVE_MODE": mode,
            "NAIVE_APP_ID": f"bench-naive-{mode}-{self.args.run_tag}",
            "NAIVE_TOPICS": ",".join(settings.input_topics().values()),
            "NAIVE_PARTITIONS": str(settings.partitions),
        }
        proc = self.spawn("naive", [sys.executable, str(REPO / "benchmarks" / "naive_faust.py")], naive_env)
        try:
            text = self._wait_count([proc], "naive_events_total", "", n)
            first = metric_sum(text, "naive_first_event_seconds")
            last = metric_sum(text, "naive_last_event_seconds")
            rss = peak_rss_bytes(proc.popen.pid)
        finally:
            proc.stop()
        seconds = max(last - first, 1e-3)
        return {
            "events": n,
            "seconds": round(seconds, 3),
            "events_per_second": round(n / seconds, 1),
            "peak_rss_mib": None if rss is None else round(rss / 2**20, 1),
        }

    def _wait_count(
        self,
        procs: list[Proc],
        name: str,
        where: str,
        n: int,
        samples: list[tuple[float, float]] | None = None,
        on_first: Any = None,
    ) -> str:
        """Poll the processes' metrics until the sum of ``name`` reaches ``n``; returns the last metrics text.

        ``on_first`` is called once, when the first event has been counted."""
        deadline = time.monotonic() + PHASE_SECONDS
        text = ""
        while time.monotonic() < deadline:
            for proc in procs:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            texts = [proc.metrics() for proc in procs]
            total = sum(metric_sum(t, name, where) for t in texts)
            if samples is not None:
                samples.append((time.monotonic(), total))
            if total > 0 and on_first is not None:
                on_first()
                on_first = None
            if total >= n:
                return "\n".join(texts)
            text = "\n".join(texts)
            time.sleep(POLL_SECONDS)
        raise RuntimeError(f"{name} reached only {metric_sum(text, name, where):.0f} of {n} in {PHASE_SECONDS}s")

    def run_workers(self, tag: str, env: dict[str, str], count: int, n: int, keep: bool = False) -> dict[str, Any]:
        """Start ``count`` workers at once on a preloaded backlog of ``n`` events; time first -> last scored.

        With ``--py-spy`` (one worker), py-spy samples the worker from its first scored event to its last."""
        procs = [self.worker(f"worker-{tag}-{i}", env) for i in range(count)]
        spy: list[Any] = []

        def start_profile() -> None:
            if count == 1 and self.args.py_spy:
                spy.append(self._start_py_spy(procs[0], tag))

        samples: list[tuple[float, float]] = []
        try:
            text = self._wait_count(procs, "pulse_events_total", 'outcome="scored"', n, samples, start_profile)
            rss = [peak_rss_bytes(p.popen.pid) for p in procs]
            profile = self._finish_py_spy(spy[0]) if spy and spy[0] is not None else None
        finally:
            for popen, _, _ in (s for s in spy if s is not None):
                if popen.poll() is None:
                    popen.kill()
            if not keep:
                for proc in procs:
                    proc.stop()
        seconds = counted_seconds(samples, 0)
        worker = worker_deltas("", text)
        out = {
            "workers": count,
            "events": n,
            "seconds": round(seconds, 3),
            "events_per_second": round(n / seconds, 1),
            "events_per_second_per_worker": round(n / seconds / count, 1),
            "peak_rss_mib": [None if r is None else round(r / 2**20, 1) for r in rss],
            "batches": worker["batches"],
            "checkpoint_ms_mean": worker["checkpoint_ms_mean"],
            "due_checks": worker["due_checks"],
            "alerts": int(metric_sum(text, "pulse_retention_alerts_total")),
        }
        if profile is not None:
            out["profile"] = profile
        if keep:
            out["_procs"] = procs
        return out

    # ------------------------------------------------------------------ py-spy

    def _start_py_spy(self, proc: Proc, tag: str) -> tuple[subprocess.Popen, Path, float] | None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if spy is None:
            log("py-spy not installed (.venv/bin/pip install py-spy): no profile")
            return None
        out = self.log_dir / f"py-spy-{tag}.txt"
        argv = [spy, "record", "-p", str(proc.popen.pid), "-r", str(SPY_RATE), "-f", "raw", "-o", str(out)]
        popen = subprocess.Popen(
            argv,
            stdout=(self.log_dir / f"py-spy-{tag}.log").open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return popen, out, time.monotonic()

    def _finish_py_spy(self, spy: tuple[subprocess.Popen, Path, float]) -> dict[str, Any]:
        """Stop py-spy as Ctrl-C would (it then writes its profile) and summarise the profile."""
        popen, out, started = spy
        elapsed = time.monotonic() - started
        popen.send_signal(signal.SIGINT)
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)
        if not out.exists():
            return {"error": f"py-spy wrote no profile; see {out.with_suffix('.log')}"}
        return summarise_collapsed(out, elapsed)

    def _score_at_scale(self, proc: Proc, settings: Any, n: int) -> dict[str, Any]:
        """The recovered worker then scores a backlog of the mix for random customers among its ``n``
        (RocksDB reads, a population of ``n``): events/s over the polls from just before the backlog's first
        scored event to its last."""
        from pulse.simulate import generate_events, send
        from streams.security import kafka_client_kwargs

        k = self.args.recovery_events
        rng = random.Random(self.args.seed + 3000)
        live = generate_events(200, 30, seed=self.args.seed + 3000)
        events = []
        for i in range(k):
            kind, event = live_event(live[i % len(live)], i)
            events.append((kind, {**event, "customer_id": f"R{rng.randrange(n):08d}"}))
        # the checkpoints of the backlog only (the first one also rebuilt the population)
        before_text = proc.metrics()
        asyncio.run(send(kafka_client_kwargs(settings), settings.input_topics(), events))
        samples: list[tuple[float, float]] = []
        text = self._wait_count([proc], "pulse_events_total", "", 1 + k, samples=samples)
        # the backlog was all produced before the first poll; the probe event was counted before it
        seconds = counted_seconds(samples, 1)
        worker = worker_deltas(before_text, text)
        return {
            "scored_events": k,
            "scored_events_per_second": round((samples[-1][1] - 1) / seconds, 1),
            "scored_checkpoint_ms_mean": worker["checkpoint_ms_mean"],
            "swept_customers": worker["swept_customers"],
        }

    # ------------------------------------------------------------------ latency

    def latency(self, env: dict[str, str], rate: float, seconds: float) -> dict[str, Any]:
        return asyncio.run(self._latency(env, rate, seconds))

    async def _latency(self, env: dict[str, str], rate: float, seconds: float) -> dict[str, Any]:
        import redis.asyncio as aioredis
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        from pulse.simulate import generate_events
        from streams.security import kafka_client_kwargs

        settings = self.settings(env)
        kafka = kafka_client_kwargs(settings)
        topics = settings.input_topics()
        customers = self.args.customers or max(10, math.ceil(self.args.events / 10))
        live = generate_events(customers, 30, seed=self.args.seed + 1000)
        if not live:
            raise RuntimeError("no live traffic generated")
        tracer_every = max(2, int(rate // TRACERS_PER_SECOND))
        tag = self.args.run_tag
        sent_at: dict[str, float] = {}  # tracer customer -> production time (monotonic)
        alert_tracers: set[str] = set()
        to_redis: dict[str, float] = {}
        to_alert: dict[str, float] = {}

        producer = AIOKafkaProducer(**kafka, acks="all", linger_ms=1)
        consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False, group_id=None, fetch_max_wait_ms=10)
        client = aioredis.from_url(settings.redis_url)
        await producer.start()
        await consumer.start()
        stop = asyncio.Event()
        try:
            tps = [TopicPartition(settings.topic_retention_alerts, p) for p in range(settings.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)

            async def read_alerts() -> None:
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=20)
                    now = time.monotonic()
                    for records in batch.values():
                        for record in records:
                            cid = orjson.loads(record.value).get("customer_id")
                            if cid in alert_tracers and cid not in to_alert:
                                to_alert[cid] = now - sent_at[cid]

            # Redis tells when a tracer's profile is written (keyspace notifications for hash commands):
            # polling hundreds of keys every few ms loaded Redis and the two cores the worker runs on
            key_prefix = f"{settings.redis_key_prefix}profile:"
            channel_prefix = f"__keyspace@{client.connection_pool.connection_kwargs.get('db', 0)}__:{key_prefix}"
            await client.config_set("notify-keyspace-events", "Kh")
            pubsub = client.pubsub()
            await pubsub.psubscribe(f"{channel_prefix}{TRACER_PREFIX.decode()}{tag}*")

            async def poll_redis() -> None:
                while not stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
                    if message is None:
                        continue
                    now = time.monotonic()
                    cid = message["channel"].decode()[len(channel_prefix) :]
                    if cid in sent_at and cid not in to_redis:
                        to_redis[cid] = now - sent_at[cid]

            readers = [asyncio.ensure_future(read_alerts()), asyncio.ensure_future(poll_redis())]
            sent = 0
            tracers = 0
            started = time.monotonic()
            end = started + seconds
            while time.monotonic() < end:
                due = int((time.monotonic() - started) * rate) - sent
                for _ in range(max(0, due)):
                    if sent % tracer_every == 0:
                        tracers += 1
                        cid = f"{TRACER_PREFIX.decode()}{tag}{tracers:07d}"
                        kind, event = tracer_event(cid, tracers, alert=tracers % 2 == 0)
                        if kind == "survey":
                            alert_tracers.add(cid)
                        sent_at[cid] = time.monotonic()
                    else:
                        kind, event = live_event(live[sent % len(live)], sent)
                    await producer.send(topics[kind], key=event["customer_id"].encode(), value=orjson.dumps(event))
                    sent += 1
                await asyncio.sleep(0.002)
            produced_seconds = time.monotonic() - started
            await producer.flush()
            deadline = time.monotonic() + DRAIN_SECONDS
            while time.monotonic() < deadline and (len(to_redis) < len(sent_at) or len(to_alert) < len(alert_tracers)):
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*readers, return_exceptions=True)
            await pubsub.aclose()
        finally:
            await producer.stop()
            await consumer.stop()
            await client.aclose()

        def ms(values: list[float], q: float) -> float | None:
            p = percentile(values, q)
            return None if p is None else round(p * 1000, 1)

        redis_lat = list(to_redis.values())
        alert_lat = list(to_alert.values())
        # p99 by window of production time: a tail only at the start is the warm-up, throughout is steady state
        windows: dict[int, list[float]] = collections.defaultdict(list)
        for cid, lat in to_alert.items():
            windows[int((sent_at[cid] - started) // LATENCY_WINDOW_SECONDS)].append(lat)
        return {
            "alert_p99_ms_by_window": [ms(windows[w], 0.99) for w in sorted(windows)],
            "rate_target": round(rate, 1),
            "rate_achieved": round(sent / produced_seconds, 1),
            "seconds": round(produced_seconds, 2),
            "events": sent,
            "tracers": len(sent_at),
            "redis_seen": len(redis_lat),
            "redis_p50_ms": ms(redis_lat, 0.50),
            "redis_p99_ms": ms(redis_lat, 0.99),
            "redis_max_ms": ms(redis_lat, 1.0),
            "alert_tracers": len(alert_tracers),
            "alerts_seen": len(alert_lat),
            "alert_p50_ms": ms(alert_lat, 0.50),
            "alert_p99_ms": ms(alert_lat, 0.99),
            "alert_max_ms": ms(alert_lat, 1.0),
        }

    # ------------------------------------------------------------------ state size

    def state_size(self, env: dict[str, str]) -> dict[str, Any]:
        """Bytes of the latest changelog value of every customer of the phase's app."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from streams.security import kafka_client_kwargs
        from streams.tables import RESERVED_PREFIX

        settings = self.settings(env)
        topic = f"{settings.app_id}-customer_states-changelog"

        async def go() -> dict[bytes, int]:
            consumer = AIOKafkaConsumer(**kafka_client_kwargs(settings), enable_auto_commit=False, group_id=None)
            await consumer.start()
            try:
                tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                ends = await consumer.end_offsets(tps)
                sizes: dict[bytes, int] = {}
                deadline = time.monotonic() + PHASE_SECONDS
                quiet_since = time.monotonic()
                while time.monotonic() < deadline:
                    positions = {tp: await consumer.position(tp) for tp in tps}
                    if all(positions[tp] >= ends[tp] for tp in tps) or time.monotonic() - quiet_since > 5:
                        break
                    batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                    for records in batch.values():
                        quiet_since = time.monotonic()
                        for record in records:
                            if record.key.startswith(RESERVED_PREFIX) or record.key.startswith(TRACER_PREFIX):
                                continue
                            if record.value is None:
                                sizes.pop(record.key, None)
                            else:
                                sizes[record.key] = len(record.value)
                return sizes
            finally:
                await consumer.stop()

        sizes = list(asyncio.run(go()).values())
        if not sizes:
            raise RuntimeError(f"no state in {topic}")
        return {
            "customers": len(sizes),
            "mean_bytes": round(statistics.fmean(sizes), 1),
            "p50_bytes": percentile(sizes, 0.5),
            "p99_bytes": percentile(sizes, 0.99),
            "max_bytes": max(sizes),
        }

    # ------------------------------------------------------------------ recovery

    def recovery(self, n: int) -> dict[str, Any]:
        from pulse.simulate import send

        tag = f"rec{self.args.run_tag}"
        data_dir = self.log_dir / tag / "rocksdb"
        env = self.env(tag, PULSE_STORE="rocksdb://", PULSE_DATA_DIR=str(data_dir))
        settings = self.settings(env)
        templates = template_states(self.args.template_customers, self.args.seed)
        started = time.perf_counter()
        written = asyncio.run(write_changelog(settings, templates, n))
        preload_seconds = time.perf_counter() - started
        # one event so that the first checkpoint (and the population rebuild) runs once recovery is done
        probe = {
            "event_id": f"probe-{tag}",
            "customer_id": f"PROBE{tag}",
            "occurred_at": iso_now(),
            "order_id": "PROBE1",
            "amount": 10.0,
            "currency": "USD",
            "status": "completed",
        }
        from streams.security import kafka_client_kwargs

        asyncio.run(send(kafka_client_kwargs(settings), settings.input_topics(), [("order", probe)]))
        proc = self.worker(f"worker-{tag}", env)
        t0 = time.monotonic()
        ready = None
        try:
            deadline = t0 + PHASE_SECONDS
            text = ""
            while time.monotonic() < deadline:
                if not proc.alive():
                    raise RuntimeError(f"recovery worker exited:\n{proc.tail()}")
                if ready is None and "Ready" in proc.log.read_text(errors="replace"):
                    ready = time.monotonic() - t0
                text = proc.metrics()
                if metric_sum(text, "pulse_events_total") >= 1:
                    break
                time.sleep(POLL_SECONDS)
            else:
                raise RuntimeError(f"the recovering worker scored nothing in {PHASE_SECONDS}s")
            first_event = time.monotonic() - t0
            table_customers = int(metric_sum(text, "pulse_table_customers"))
            rebuild = metric_sum(text, "pulse_population_rebuild_seconds_sum")
            scoring = self._score_at_scale(proc, settings, n) if self.args.recovery_events else {}
            rss = peak_rss_bytes(proc.popen.pid)
        finally:
            proc.stop()
        return {
            **scoring,
            "customers": written,
            "store": "rocksdb://",
            "changelog_write_seconds": round(preload_seconds, 2),
            "ready_seconds": None if ready is None else round(ready, 2),
            "first_event_seconds": round(first_event, 2),
            "population_rebuild_seconds": round(rebuild, 2),
            "table_customers": table_customers,
            "peak_rss_mib": None if rss is None else round(rss / 2**20, 1),
        }


# --------------------------------------------------------------------------- events


def tracer_event(cid: str, n: int, alert: bool) -> tuple[str, dict]:
    """An event for a fresh customer: an order, or a survey (NPS 0, CSAT 1: detractor + dissatisfied =
    medium risk) that raises a retention alert at once."""
    base = {"event_id": f"trc-{cid}", "customer_id": cid, "occurred_at": iso_now()}
    if alert:
        return "survey", {**base, "nps": 0, "csat": 1}
    return "order", {
        **base,
        "order_id": f"TO{n:08d}",
        "amount": 25.0,
        "currency": "USD",
        "status": "completed",
    }


def live_event(template: tuple[str, dict], n: int) -> tuple[str, dict]:
    """A generated event of the mix as live traffic: new ids, occurring now."""
    kind, event = template
    event = {**event, "event_id": f"live-{n}", "occurred_at": iso_now()}
    for id_field in ("order_id", "complaint_id", "ticket_id"):
        if id_field in event:
            event[id_field] = f"L{event[id_field]}"
    return kind, event


# --------------------------------------------------------------------------- cost per event (no Kafka)


def cost_per_event(size: int, templates: Templates, events: int, seed: int, partitions: int = 4) -> dict[str, Any]:
    """CPU µs per event of decode + process + encode + Redis fields, against ``size`` cloned customers."""
    from pulse.simulate import generate_events
    from pulse_config.settings import Settings
    from streams.codec import decode_state, encode_state
    from streams.processor import BatchProcessor, Incoming
    from streams.sinks.redis_profiles import pack_batch, pack_profile

    settings = Settings(_env_file=None, partitions=partitions)
    gc.set_threshold(*settings.gc_thresholds)  # as the worker runs
    topics = settings.input_topics()
    variants = templates.variant(partitions)
    t = len(variants)
    started = time.perf_counter()
    store: dict[bytes, bytes] = {}
    processor = BatchProcessor(settings.processor())

    def clones():
        for j in range(size):
            key = f"P{j:08d}".encode()
            raw, state = variants[j % t][j % partitions]
            store[key] = raw
            yield key, state

    processor.rebuild(set(range(partitions)), clones())
    build_seconds = time.perf_counter() - started
    # live traffic of the mix, a few events per second of event time after the population's clock
    rng = random.Random(seed)
    live = generate_events(max(10, t), 30, seed=seed + 2000)
    clock = datetime.fromtimestamp(templates.clock_ms / 1000, UTC)
    offsets: dict[tuple[str, int], int] = collections.Counter()
    batches: list[list[Incoming]] = []
    batch: list[Incoming] = []
    for n in range(events):
        kind, event = live_event(live[n % len(live)], n)
        j = (int(event["customer_id"][1:]) % t) + t * rng.randrange(max(1, size // t))
        j = min(j, size - 1)
        cid = f"P{j:08d}"
        event = {
            **event,
            "customer_id": cid,
            "occurred_at": (clock + timedelta(milliseconds=200 * (n + 1))).isoformat(),
        }
        p = j % partitions
        topic = topics[kind]
        offsets[(topic, p)] += 1
        batch.append(Incoming(topic, p, offsets[(topic, p)], cid.encode(), orjson.dumps(event)))
        if len(batch) >= settings.batch_max_events:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)

    def load(key: bytes):
        return decode_state(store.get(key))

    def run(batch: list[Incoming]) -> tuple[int, int]:
        out = processor.process(batch, load)
        for key, state in out.states.items():
            store[key] = encode_state(state)
        # as the worker's Redis sink (submit, then the flush's buffer), short of the I/O
        prefix = settings.redis_key_prefix
        pack_batch({p.customer_id: pack_profile(p, prefix, settings.vip_value) for p in out.profiles}, prefix)
        return len(out.profiles), out.due_checked

    warm = min(2, len(batches) - 1)
    for b in batches[:warm]:
        run(b)
    timed = batches[warm:]
    n_events = sum(len(b) for b in timed)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    profiles = due = 0
    for b in timed:
        p, d = run(b)
        profiles += p
        due += d
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "customers": size,
        "events": n_events,
        "cpu_us_per_event": round(cpu / n_events * 1e6, 1),
        "wall_us_per_event": round(wall / n_events * 1e6, 1),
        "profiles_rendered": profiles,
        "due_checks": due,
        "population_build_seconds": round(build_seconds, 2),
    }


async def write_changelog(settings: Any, templates: Templates, n: int) -> int:
    """``n`` customers' states (clones of the templates) straight to the table's changelog, then end markers."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError
    from aiokafka.partitioner import murmur2

    from streams.admin import ensure_topics
    from streams.security import kafka_client_kwargs
    from streams.tables import END_MARKER_KEY

    await ensure_topics(settings)
    kafka = kafka_client_kwargs(settings)
    topic = f"{settings.app_id}-customer_states-changelog"
    admin = AIOKafkaAdminClient(**kafka, request_timeout_ms=15000)
    await admin.start()
    try:
        topic_config = {"cleanup.policy": "compact"}
        await admin.create_topics(
            [NewTopic(topic, settings.partitions, settings.replication_factor, topic_configs=topic_config)]
        )
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()
    variants = templates.variant(settings.partitions)
    producer = AIOKafkaProducer(**kafka, acks="all", linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = []
        for j in range(n):
            key = f"R{j:08d}".encode()
            # the partition the worker's producer gives the key (Kafka's murmur2 partitioner)
            p = (murmur2(key) & 0x7FFFFFFF) % settings.partitions
            futures.append(await producer.send(topic, variants[j % len(variants)][p][0], key=key, partition=p))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
        await asyncio.gather(
            *[await producer.send(topic, None, key=END_MARKER_KEY, partition=p) for p in range(settings.partitions)]
        )
    finally:
        await producer.stop()
    return n


# --------------------------------------------------------------------------- profile summary


def summarise_collapsed(path: Path, elapsed: float, top: int = 12) -> dict[str, Any]:
    """Top frames of a py-spy ``raw`` profile (collapsed stacks; idle samples are not recorded).

    ``busy_percent``: samples against the samples of ``elapsed`` seconds of one always-busy thread (the
    worker's Python work runs on its event loop thread). Frames in % of the recorded samples, line
    numbers dropped so that a function's lines add up."""
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        total += n
        if not frames:
            continue
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def pct(c: collections.Counter) -> list[tuple[str, float]]:
        return [(frame, round(100 * k / max(1, total), 1)) for frame, k in c.most_common(top)]

    return {
        "samples": total,
        "seconds": round(elapsed, 1),
        "busy_percent": round(100 * total / max(1.0, elapsed * SPY_RATE), 1),
        "self": pct(own),
        "inclusive": pct(inclusive),
        "file": str(path),
    }


# --------------------------------------------------------------------------- run and report


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pulse.devstack import DevStack

    skip = {s.strip() for s in (args.skip or "").split(",") if s.strip()}
    unknown = skip - set(PHASES)
    if unknown:
        raise SystemExit(f"--skip: unknown phase(s) {sorted(unknown)}; phases: {', '.join(PHASES)}")
    if not args.recovery:
        skip.add("recovery")
    if "full" in skip:
        skip |= {"latency", "state"}
    args.run_tag = args.run_tag or f"{int(time.time()) % 100000:05d}"
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="pulse-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, log_dir)
    result = bench.result
    result["machine"] = machine()
    result["options"] = {
        k: v for k, v in vars(args).items() if k not in {"func", "command", "json"} and not k.startswith("_")
    }
    result["log_dir"] = str(log_dir)
    result["code"] = code_version()
    started = time.perf_counter()
    try:
        tag = args.run_tag
        kafka_phases = {"raw", "naive", "faust", "full"} - skip
        if set(PHASES) - {"cost"} - skip:
            bench.stack = DevStack.start(log_dir, broker=args.broker)
        if kafka_phases or "scaling" not in skip:
            log(f"generating {args.events} events of the four-kind mix")
            events = bench.history()
            n = len(events)
            result["events"] = n
            result["customers"] = len({e["customer_id"] for _, e in events})
            counts = collections.Counter(kind for kind, _ in events)
            result["mix"] = {kind: round(counts[kind] / n, 3) for kind in ("order", "support", "survey", "complaint")}
        if kafka_phases:
            env = bench.env(f"full{tag}", inputs=f"a{tag}")
            seconds = bench.preload(env, events)
            result["preload_seconds"] = round(seconds, 2)
            log(f"preloaded {n} events in {seconds:.1f}s")
            if "raw" not in skip:
                result["raw"] = bench.raw(env, n)
                log(f"raw: {result['raw']['events_per_second']:.0f} events/s")
            if "naive" not in skip:
                result["naive"] = bench.naive(env, n)
                log(f"naive: {result['naive']['events_per_second']:.0f} events/s")
            if "faust" not in skip:
                result["faust"] = bench.naive(env, n, mode="take")
                log(f"faust take_events, no work: {result['faust']['events_per_second']:.0f} events/s")
            if "full" not in skip:
                keep = "latency" not in skip
                full = bench.run_workers(f"full{tag}", env, 1, n, keep=keep)
                procs = full.pop("_procs", [])
                result["full"] = full
                log(f"full: {full['events_per_second']:.0f} events/s")
                try:
                    if "latency" not in skip:
                        rate = max(1.0, full["events_per_second"] / 2)
                        log(f"latency: {args.latency_seconds:g}s at {rate:.0f} events/s")
                        before = procs[0].metrics() if procs else ""
                        result["latency"] = bench.latency(env, rate, args.latency_seconds)
                        if procs:
                            result["latency"]["worker"] = worker_deltas(before, procs[0].metrics())
                        result["latency"]["peak_rss_mib"] = [
                            None if r is None else round(r / 2**20, 1)
                            for r in (peak_rss_bytes(p.popen.pid) for p in procs)
                        ]
                finally:
                    for proc in procs:
                        proc.stop()
                if "state" not in skip:
                    result["state"] = bench.state_size(env)
        if "scaling" not in skip:
            scaling = []
            for count in args.workers:
                if count == 1 and "full" in result:
                    # the full phase is the 1-worker run
                    scaling.append({k: v for k, v in result["full"].items() if k != "profile"})
                    continue
                env = bench.env(f"w{count}x{tag}")
                bench.preload(env, events)
                log(f"scaling: {count} worker(s)")
                scaling.append(bench.run_workers(f"w{count}x{tag}", env, count, n))
            result["scaling"] = scaling
        if "cost" not in skip:
            log(f"cost per event: scoring the templates ({args.template_customers} customers)")
            templates = template_states(args.template_customers, args.seed)
            result["cost"] = []
            for size in args.cost_sizes:
                log(f"cost per event at {size} customers")
                result["cost"].append(cost_per_event(size, templates, args.cost_events, args.seed))
        if "recovery" not in skip:
            log(f"recovery of {args.recovery} customers (rocksdb)")
            result["recovery"] = bench.recovery(args.recovery)
    finally:
        bench.close()
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    result["verdicts"] = verdicts(result)
    return result


def counted_seconds(samples: list[tuple[float, float]], floor: float) -> float:
    """From the last poll whose count was still ``floor`` to the last poll: an upper bound of the time the
    counted work took, at poll resolution."""
    first = max((t for t, total in samples if total <= floor), default=samples[0][0] - POLL_SECONDS)
    return max(samples[-1][0] - first, POLL_SECONDS)


def worker_deltas(before: str, after: str) -> dict[str, Any]:
    """What a worker did between two scrapes of its metrics: batches, checkpoint time, profiles written, sweeps."""

    def d(name: str) -> float:
        return metric_sum(after, name) - metric_sum(before, name)

    batches = d("pulse_batch_events_count")
    return {
        "batches": int(batches),
        "events_per_batch": round(d("pulse_batch_events_sum") / max(1, batches), 1),
        "checkpoint_ms_mean": round(1000 * d("pulse_checkpoint_seconds_sum") / max(1, batches), 1),
        "profiles_written": int(d("pulse_redis_batch_profiles_sum")),
        "swept_customers": int(d("pulse_swept_customers_total")),
        "due_checks": int(d("pulse_churn_due_checks_total")),
    }


def code_version() -> str:
    """The commit measured, and whether the tree had uncommitted changes to the worker's code."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "streams", "scoring", "schemas", "pulse"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    import platform

    cpu = ""
    try:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if "model name" in line
            ),
            "",
        )
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        mem_gib = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        mem_gib = None
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if (value >= target) if higher_is_better else (value <= target):
        return "met"
    factor = target / value if higher_is_better else value / target
    return f"missed by {factor:.1f}x" if value else "missed"


def verdicts(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each measured number against its target; ratios (3)/(1) and (3)/(2)."""
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float | None, target: float, higher: bool) -> None:
        out[name] = {"value": value, "target": target, "verdict": verdict(value, target, higher)}

    full = r.get("full", {}).get("events_per_second")
    if full is not None:
        add("full_events_per_second", full, TARGETS["full_events_per_second"], True)
        if "raw" in r:
            add("full_over_raw", round(full / r["raw"]["events_per_second"], 3), TARGETS["full_over_raw"], True)
        if "naive" in r:
            add("full_over_naive", round(full / r["naive"]["events_per_second"], 2), TARGETS["full_over_naive"], True)
    if r.get("latency", {}).get("alert_p99_ms") is not None:
        add("alert_p99_ms", r["latency"]["alert_p99_ms"], TARGETS["alert_p99_ms"], False)
    if "state" in r:
        add("state_bytes_per_customer", r["state"]["mean_bytes"], TARGETS["state_bytes_per_customer"], False)
    if "recovery" in r:
        add("recovery_seconds", r["recovery"]["first_event_seconds"], TARGETS["recovery_seconds"], False)
    cost = r.get("cost") or []
    if len(cost) >= 2:
        first, last = cost[0]["cpu_us_per_event"], cost[-1]["cpu_us_per_event"]
        # flat: the largest population costs at most 1.5x the smallest per event
        add(f"cost_growth_{cost[0]['customers']}_to_{cost[-1]['customers']}", round(last / first, 2), 1.5, False)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and abs(v) < 10:
        return f"{v:.3g}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def report(r: dict[str, Any]) -> str:
    lines: list[str] = []
    m = r["machine"]
    lines.append(f"code: {r.get('code')}")
    lines.append(f"broker: {r.get('options', {}).get('broker', 'tansu')}")
    lines.append(
        f"machine: {m['cpus']} cpus ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, {m['platform']}"
    )
    if "events" in r:
        mix = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r.get("mix", {}).items())
        lines.append(f"events: {r['events']:,} for {r['customers']:,} customers ({mix})")
    lines.append("")
    lines.append(f"{'phase':<44} {'events/s':>12} {'seconds':>9}")
    for name, label in (
        ("raw", "(1) raw aiokafka consumer"),
        ("naive", "(2) naive Faust agent (1 table update)"),
        ("faust", "    Faust take_events, no work (ceiling)"),
    ):
        if name in r:
            lines.append(f"{label:<44} {_fmt(r[name]['events_per_second']):>12} {_fmt(r[name]['seconds']):>9}")
    if "full" in r:
        f = r["full"]
        lines.append(f"{'(3) full scorer, 1 worker':<44} {_fmt(f['events_per_second']):>12} {_fmt(f['seconds']):>9}")
        lines.append(
            f"    batches {f['batches']:,}, checkpoint mean {f['checkpoint_ms_mean']} ms, "
            f"due checks {f['due_checks']:,}, alerts {f['alerts']:,}, peak RSS {f['peak_rss_mib'][0]} MiB"
        )
    for s in r.get("scaling", []):
        lines.append(
            f"{'    scaling: ' + str(s['workers']) + ' worker(s)':<44} {_fmt(s['events_per_second']):>12} "
            f"{_fmt(s['seconds']):>9}   per worker {_fmt(s['events_per_second_per_worker'])}"
        )
    if "latency" in r:
        lat = r["latency"]
        lines.append("")
        lines.append(
            f"latency at half rate: {lat['rate_achieved']:,.0f} events/s for {lat['seconds']}s "
            f"({lat['events']:,} events, {lat['tracers']} tracers)"
        )
        lines.append(
            f"    event -> profile in Redis: p50 {_fmt(lat['redis_p50_ms'])} ms, p99 {_fmt(lat['redis_p99_ms'])} ms, "
            f"max {_fmt(lat['redis_max_ms'])} ms ({lat['redis_seen']}/{lat['tracers']} seen)"
        )
        lines.append(
            f"    event -> alert on retention topic: p50 {_fmt(lat['alert_p50_ms'])} ms, "
            f"p99 {_fmt(lat['alert_p99_ms'])} ms, max {_fmt(lat['alert_max_ms'])} ms "
            f"({lat['alerts_seen']}/{lat['alert_tracers']} seen)"
        )
        by_window = ", ".join(_fmt(v) for v in lat.get("alert_p99_ms_by_window", []))
        lines.append(f"    alert p99 per {LATENCY_WINDOW_SECONDS:g} s of production (ms): {by_window}")
    if "worker" in r.get("latency", {}):
        w = r["latency"]["worker"]
        lines.append(
            f"    the worker meanwhile: {w['batches']:,} batches of {w['events_per_batch']} events, checkpoint mean "
            f"{w['checkpoint_ms_mean']} ms, {w['profiles_written']:,} profiles written, "
            f"{w['swept_customers']:,} customers swept, {w['due_checks']:,} due checks"
        )
    if "state" in r:
        s = r["state"]
        lines.append("")
        lines.append(
            f"state per customer (changelog, {s['customers']:,} customers): mean {s['mean_bytes']:,.0f} B, "
            f"p50 {s['p50_bytes']:,} B, p99 {s['p99_bytes']:,} B, max {s['max_bytes']:,} B"
        )
    if r.get("cost"):
        lines.append("")
        lines.append("cost per event, processor only (decode state, process, encode, Redis fields; no Kafka):")
        for c in r["cost"]:
            lines.append(
                f"    {c['customers']:>10,} customers: {c['cpu_us_per_event']:>7.1f} µs CPU/event "
                f"({c['events']:,} events, {c['due_checks']:,} due checks; population built in "
                f"{c['population_build_seconds']}s)"
            )
    if "recovery" in r:
        rc = r["recovery"]
        lines.append("")
        lines.append(
            f"recovery ({rc['store']}, {rc['customers']:,} customers): ready {_fmt(rc['ready_seconds'])}s, "
            f"first event scored {rc['first_event_seconds']}s "
            f"(population rebuild {rc['population_rebuild_seconds']}s), "
            f"{rc['table_customers']:,} customers in the table, peak RSS {rc['peak_rss_mib']} MiB"
        )
        if "scored_events_per_second" in rc:
            lines.append(
                f"    then {rc['scored_events']:,} events of the mix for customers among them: "
                f"{_fmt(rc['scored_events_per_second'])} events/s, "
                f"checkpoint mean {rc['scored_checkpoint_ms_mean']} ms, {rc['swept_customers']:,} customers swept"
            )
    prof = r.get("full", {}).get("profile")
    if prof and "self" in prof:
        lines.append("")
        lines.append(
            f"py-spy of the full worker over {prof['seconds']}s: {prof['samples']:,} samples "
            f"(busy {prof['busy_percent']}% of one thread); top self time:"
        )
        for frame, pct in prof["self"][:12]:
            lines.append(f"    {pct:5.1f}%  {frame}")
        lines.append("  top inclusive time:")
        for frame, pct in prof["inclusive"][:12]:
            lines.append(f"    {pct:5.1f}%  {frame}")
    lines.append("")
    lines.append(f"{'target':<36} {'measured':>12} {'target':>10}  verdict")
    for name, v in r["verdicts"].items():
        lines.append(f"{name:<36} {_fmt(v['value']):>12} {_fmt(v['target']):>10}  {v['verdict']}")
    lines.append("")
    lines.append(f"total {r['bench_seconds']}s; logs in {r['log_dir']}")
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=50_000, help="events preloaded per phase (default 50,000)")
    p.add_argument("--customers", type=int, default=0, help="population of the generated history (default: events/10)")
    p.add_argument("--workers", type=_int_list, default=[1, 2, 3], help="scaling run, e.g. 1,2,3 (default)")
    p.add_argument("--latency-seconds", type=float, default=20.0, help="length of the half-rate latency phase")
    p.add_argument("--skip", default="", help=f"phases to skip, comma-separated: {','.join(PHASES)}")
    p.add_argument(
        "--cost-sizes",
        type=_int_list,
        default=[10_000, 100_000],
        help="populations of the CPU cost phase (default 10000,100000; add 1000000 for the 1M case, ~1 min more)",
    )
    p.add_argument("--cost-events", type=int, default=20_000, help="events timed per population size")
    p.add_argument("--template-customers", type=int, default=2_000, help="customers scored to clone states from")
    p.add_argument("--recovery", type=int, default=0, help="customers to recover with RocksDB (0: skip)")
    p.add_argument(
        "--recovery-events", type=int, default=20_000, help="events then scored by the recovered worker (0: none)"
    )
    p.add_argument("--partitions", type=int, default=4, help="partitions of the input topics (default 4)")
    p.add_argument(
        "--broker", choices=("tansu", "kafka"), default="tansu", help="tansu (default) or Apache Kafka (KRaft)"
    )
    p.add_argument("--seed", type=int, default=7, help="seed of the generated history (default 7)")
    p.add_argument("--py-spy", action="store_true", help="profile the full worker with py-spy while it scores")
    p.add_argument("--log-dir", default="", help="logs of the stack and workers (default: a temp dir)")
    p.add_argument("--run-tag", default="", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    if args is None:
        parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
        add_arguments(parser)
        args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(report(result))
    return 0
