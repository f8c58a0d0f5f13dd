"""What the phases of ``pulse bench`` share: the run (``Bench``: the stack, each phase's environment, the
processes it started, the traffic), polling the processes' metrics, and the numbers made of them.

The environment of a phase, the process spawning and the live traffic are testing/'s (``testing.stack``,
``testing.traffic``), the same as the tests use: one copy."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pulse_config.settings import Settings

REPO = Path(__file__).resolve().parent.parent.parent

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


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def metric_values(port: int, names: Sequence[str] = ()) -> str:
    """The metrics a process serves on ``port``; with ``names``, only those samples (prometheus_client's
    ``name[]`` filter: it collects only the named metrics, so a poll does not render every histogram under the
    worker's GIL; a server without the filter answers with everything, which the readers accept too)."""
    query = "?" + urllib.parse.urlencode([("name[]", n) for n in names]) if names else ""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics{query}", timeout=2).read().decode()
    except OSError:
        return ""


def metric_sum(text: str, name: str, where: str = "") -> float:
    """Sum of the samples of ``name`` whose label set contains ``where`` (e.g. 'outcome="scored"')."""
    total = 0.0
    for labels, value in re.findall(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        if where in labels:
            total += float(value)
    return total


def metric_samples(text: str, name: str) -> list[float]:
    """Every sample of an unlabelled ``name`` in ``text`` (several processes' scrapes joined: one each)."""
    return [float(v) for v in re.findall(rf"^{re.escape(name)} (\S+)$", text, re.M)]


def scored_seconds(text: str, count: int) -> float | None:
    """Wall seconds from the first batch with input events that any of ``count`` workers began to the last one any
    of them made durable (``pulse_scoring_started_timestamp_seconds``, ``pulse_last_scored_batch_timestamp_seconds``),
    as the peers are timed from their first event to their last; None unless every worker reports both (a worker
    of a version without them, or one that scored nothing)."""
    started = metric_samples(text, "pulse_scoring_started_timestamp_seconds")
    ended = metric_samples(text, "pulse_last_scored_batch_timestamp_seconds")
    if len(started) != count or len(ended) != count or not all(started):
        return None
    return max(max(ended) - min(started), 1e-3)


def peak_rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def stat_cpu_seconds(stat: Path) -> float | None:
    """User + system CPU seconds in a ``/proc`` ``stat`` file (a process's or one of its threads'); None when it is
    gone."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the command: state is field 3, utime and stime are fields 14 and 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process so far (/proc/<pid>/stat): the load-independent yardstick
    beside wall-clock events/s on a shared box."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of a process's main thread and of all its other threads together (/proc/<pid>/task): in a
    worker the other threads are mostly Faust's consumer thread (aiokafka's fetches), whose cost is per fetch, not
    per event (docs/benchmarks.md, session 12, pace18)."""
    out = {"main": 0.0, "others": 0.0}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        seconds = stat_cpu_seconds(task / "stat")
        if seconds is not None:  # (None: the thread ended meanwhile)
            out["main" if task.name == str(pid) else "others"] += seconds
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Proc:
    """A subprocess of the benchmark with its log and metrics port."""

    name: str
    popen: subprocess.Popen
    log: Path
    metrics_port: int

    def alive(self) -> bool:
        return self.popen.poll() is None

    def metrics(self, names: Sequence[str] = ()) -> str:
        return metric_values(self.metrics_port, names)

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
    #: records of the last preload that landed outside their customer's murmur2 partition (``--preload-producer
    #: librdkafka-defaults``): the worker counts each twice, re-published ("rerouted") and then its copy's outcome
    misplaced: int = 0

    # ------------------------------------------------------------------ namespaces and processes

    def env(self, tag: str, inputs: str | None = None, **extra: str) -> dict[str, str]:
        """PULSE_* env of one phase: its own app id, output topics and Redis prefix; inputs of ``inputs``."""
        from testing.stack import LOCAL_GROUP_TIMING, input_topics_env

        return {
            **self.stack.env(),
            "PULSE_ENV_FILE": "",
            "PULSE_APP_ID": f"bench-{tag}",
            **input_topics_env(inputs or tag),
            "PULSE_TOPIC_DEAD_LETTERS": f"dlq-{tag}",
            "PULSE_TOPIC_RETENTION_ALERTS": f"alerts-{tag}",
            "PULSE_TOPIC_VIP_CHANGES": f"vips-{tag}",
            "PULSE_REDIS_KEY_PREFIX": f"b{tag}:",
            "PULSE_PARTITIONS": str(self.args.partitions),
            "PULSE_DATA_DIR": str(self.log_dir / tag / "data"),
            "PULSE_API_PORT": "0",
            **LOCAL_GROUP_TIMING,
            **extra,
        }

    def server_pids(self) -> list[int]:
        """The broker's and Redis's process ids (none without a stack)."""
        if self.stack is None:
            return []
        return [server.proc.pid for server in (self.stack.broker, self.stack.redis)]

    @staticmethod
    def settings(env: dict[str, str]) -> Settings:
        from testing.stack import settings_from_env

        return settings_from_env(env)

    def spawn(self, name: str, argv: list[str] | None, env: dict[str, str]) -> Proc:
        """Start ``argv`` (None: ``pulse worker``) with ``env`` and a free metrics port, logging to ``name``.log."""
        from pulse.devstack import free_port
        from testing.stack import start_process, start_pulse

        port = free_port()
        log_path = self.log_dir / f"{name}.log"
        full_env = {**os.environ, **env, "PULSE_METRICS_PORT": str(port), "NAIVE_METRICS_PORT": str(port)}
        full_env["PEER_METRICS_PORT"] = str(port)
        if argv is None:
            popen = start_pulse(["worker", "--loglevel", "info"], full_env, log_path)
        else:
            popen = start_process(argv, full_env, log_path)
        proc = Proc(name, popen, log_path, port)
        self.procs.append(proc)
        return proc

    def worker(self, name: str, env: dict[str, str]) -> Proc:
        return self.spawn(name, None, env)

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
        self.misplaced = 0
        if getattr(self.args, "preload_producer", "aiokafka") == "librdkafka-defaults":
            self.misplaced = preload_librdkafka_defaults(settings, events)
        else:
            asyncio.run(send(kafka_client_kwargs(settings), settings.input_topics(), events))
        return time.perf_counter() - started


def preload_librdkafka_defaults(settings: Settings, events: list[tuple[str, dict]]) -> int:
    """Produce ``events`` with librdkafka's default configuration (``testing.traffic.produce_librdkafka_defaults``:
    CRC32 puts most customers in another partition than murmur2 does). Returns how many records landed outside
    their customer's murmur2 partition (the worker re-publishes each)."""
    import orjson

    from streams.partitioning import murmur2_partition
    from testing.traffic import produce_librdkafka_defaults

    topics = settings.input_topics()
    records = [(topics[kind], event["customer_id"].encode(), orjson.dumps(event)) for kind, event in events]
    landed = produce_librdkafka_defaults(settings.broker_bootstrap(), records, flush_seconds=120.0)
    return sum(1 for key, partition in landed if partition != murmur2_partition(key, settings.partitions))


def wait_count(
    procs: list[Proc],
    name: str,
    where: str,
    n: int,
    samples: list[tuple[float, float]] | None = None,
    on_first: Any = None,
    cpu_before: list[CpuReading] | None = None,
    server_pids: list[int] | None = None,
    per_proc: list[tuple[float, list[float]]] | None = None,
) -> str:
    """Poll the processes' metric ``name`` until its sum reaches ``n``; returns all their metrics, scraped right
    after that poll (a poll asks for ``name`` alone: a full scrape every 0.2 s took 2-4 % of a backlog worker's
    samples, under its GIL, session 18).

    ``samples`` gets each poll's (time, total); ``per_proc`` each poll's (time, count per process). ``on_first``
    is called once, when the first event has been counted. ``cpu_before`` (if given) ends up holding the
    processes' and the machine's CPU (:class:`CpuReading`) read just before the last scrape that still counted
    nothing: the start of the counted work's CPU, as ``counted_seconds`` is of its time. Read before the scrape,
    so no counted event's CPU is in it, and at every poll, not at the first that counts: one backlog batch can
    score thousands of events between two polls (a 2,000-event run scored them all between two polls, and a
    first-poll reading gave 0 µs per event)."""
    deadline = time.monotonic() + PHASE_SECONDS
    text = ""
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        cpu = cpu_reading(procs, server_pids) if cpu_before is not None else None
        texts = [proc.metrics((name,)) for proc in procs]
        counts = [metric_sum(t, name, where) for t in texts]
        total = sum(counts)
        if samples is not None:
            samples.append((time.monotonic(), total))
        if per_proc is not None:
            per_proc.append((time.monotonic(), counts))
        if cpu is not None and cpu_before is not None and total == 0:
            cpu_before[:] = [cpu]
        if total > 0 and on_first is not None:
            on_first()
            on_first = None
        if total >= n:
            # the rest of the metrics once, right after the poll that counted the last event
            return "\n".join(proc.metrics() for proc in procs)
        text = "\n".join(texts)
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{name} reached only {metric_sum(text, name, where):.0f} of {n} in {PHASE_SECONDS}s")


@dataclass(frozen=True)
class CpuReading:
    """The processes' summed CPU seconds (None: one could not be read), the servers' (the broker's and Redis's)
    and the machine's busy and total CPU time (/proc/stat, seconds over all cores) at one moment."""

    procs: float | None
    servers: float | None
    box_busy: float
    box_total: float
    #: of ``servers``, the JVM's just-in-time compiler threads (Apache Kafka's; None: no JVM among the servers)
    servers_jit: float | None = None


def box_cpu_seconds() -> tuple[float, float]:
    """The machine's (busy, total) CPU seconds summed over its cores since boot (/proc/stat's ``cpu`` line:
    idle and iowait are the idle part)."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = fields[3] + fields[4]
    return (total - idle) / tick, total / tick


#: HotSpot's names (``/proc/<pid>/task/<tid>/comm``, cut to 15 characters) of its just-in-time compiler threads
JIT_THREAD_PREFIXES = ("C1 CompilerThre", "C2 CompilerThre")


#: (pid, thread id) -> the thread's name, read once per thread: ``wait_count`` reads the servers' CPU at every
#: poll (5 a second) on the box being measured, and reading every name of a broker's ~100 threads each time cost
#: the bench ~5 ms a poll; a thread's name does not change
_thread_names: dict[tuple[int, str], str] = {}


def jit_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a JVM's just-in-time compiler threads so far; None for a process without them (Tansu,
    Redis). A broker started for the bench compiles its hot code while the phases run: in session 19's Kafka runs
    about half the broker's CPU in the full phase, and more than its request handlers' in the live traffic. A
    long-running broker has done that; the readings show how much of ``servers`` it was. HotSpot adds and ends
    compiler threads as it goes, so the thread list is read each time, each new thread's name once."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    compilers = []
    for tid in tids:
        name = _thread_names.get((pid, tid))
        if name is None:
            try:
                name = _thread_names[(pid, tid)] = Path(f"/proc/{pid}/task/{tid}/comm").read_text()
            except OSError:
                continue  # ended meanwhile
        if name.startswith(JIT_THREAD_PREFIXES):
            seconds = stat_cpu_seconds(Path(f"/proc/{pid}/task/{tid}/stat"))
            if seconds is not None:
                compilers.append(seconds)
    return sum(compilers) if compilers else None


def cpu_reading(procs: list[Proc], server_pids: list[int] | None = None) -> CpuReading:
    cpus = [cpu_seconds(p.popen.pid) for p in procs]
    servers = [cpu_seconds(pid) for pid in server_pids or []]
    jit = [j for j in (jit_cpu_seconds(pid) for pid in server_pids or []) if j is not None]
    busy, total = box_cpu_seconds()
    return CpuReading(
        None if None in cpus else sum(cpus),  # type: ignore[arg-type]
        None if not servers or None in servers else sum(servers),  # type: ignore[arg-type]
        busy,
        total,
        sum(jit) if jit else None,
    )


def cpu_us_per_event(before: list[CpuReading], after: CpuReading, n: int) -> float | None:
    """µs of the processes' CPU per event from the last poll before the first counted event (``wait_count``'s
    ``cpu_before``) to the end: the start-up before that poll left out, at most one poll interval of idle CPU
    in: an upper bound at poll resolution, as the seconds are. None when no poll saw zero (the work began
    before the first poll: not measured)."""
    if not before or before[0].procs is None or after.procs is None:
        return None
    return round((after.procs - before[0].procs) / n * 1e6, 1)


def servers_us_per_event(before: list[CpuReading], after: CpuReading, n: int) -> float | None:
    """µs of the broker's and Redis's CPU per event over the same window: with the workers' own, what an event
    costs the machine (the cores a second worker would need are shared with these)."""
    if not before or before[0].servers is None or after.servers is None:
        return None
    return round((after.servers - before[0].servers) / n * 1e6, 1)


def servers_jit_us_per_event(before: list[CpuReading], after: CpuReading, n: int) -> float | None:
    """Of :func:`servers_us_per_event`, the broker JVM's compiler threads (None: no JVM, or not read)."""
    if not before or before[0].servers_jit is None or after.servers_jit is None:
        return None
    return round((after.servers_jit - before[0].servers_jit) / n * 1e6, 1)


def box_busy_share(before: list[CpuReading], after: CpuReading) -> float | None:
    """The share of the machine's CPU (all cores) busy over the same window, anyone's: the broker, Redis, the
    bench, other users. Near 1: the box, not the worker, bounds what more workers can add."""
    if not before or after.box_total <= before[0].box_total:
        return None
    return round((after.box_busy - before[0].box_busy) / (after.box_total - before[0].box_total), 3)


def rate_after_all_started(per_proc: list[tuple[float, list[float]]]) -> tuple[float, float] | None:
    """(events/s, seconds) from the first poll at which every process had counted an event to the last poll:
    the processes' joint rate once the last of them joined (for workers of one group: after the rebalance
    that gave it partitions), without the staggered start. None if that poll is the last."""
    started = next((i for i, (_, counts) in enumerate(per_proc) if all(c > 0 for c in counts)), None)
    if started is None or started >= len(per_proc) - 1:
        return None
    (t0, c0), (t1, c1) = per_proc[started], per_proc[-1]
    return (sum(c1) - sum(c0)) / (t1 - t0), t1 - t0


def counted_seconds(samples: list[tuple[float, float]], floor: float) -> float:
    """From the last poll whose count was still ``floor`` to the last poll: an upper bound of the time the
    counted work took, at poll resolution."""
    first = max((t for t, total in samples if total <= floor), default=samples[0][0] - POLL_SECONDS)
    return max(samples[-1][0] - first, POLL_SECONDS)


#: the checkpoint's steps (pulse_checkpoint_step_seconds' label), in their order
STEPS = ("score", "changelog", "changelog_ack", "end_markers", "publish", "clear", "repair", "submit", "metrics")


def worker_deltas(before: str, after: str) -> dict[str, Any]:
    """What a worker did between two scrapes of its metrics: batches, checkpoint time, profiles written, sweeps."""

    def d(name: str) -> float:
        return metric_sum(after, name) - metric_sum(before, name)

    def d_where(name: str, where: str) -> float:
        return metric_sum(after, name, where) - metric_sum(before, name, where)

    batches = d("pulse_batch_events_count")
    # the long batches are counted against their own histogram's count: a scrape between two histograms'
    # observations of one batch (another thread reads them) sees it in one and not yet in the other
    checkpoints = d("pulse_checkpoint_seconds_count")
    return {
        "batches": int(batches),
        "checkpoints": int(checkpoints),
        "events_per_batch": round(d("pulse_batch_events_sum") / max(1, batches), 1),
        "checkpoint_ms_mean": round(1000 * d("pulse_checkpoint_seconds_sum") / max(1, checkpoints), 1),
        # the long batches (pulse_checkpoint_seconds' buckets): a live event that waits behind one shows in the tail
        "checkpoints_over_50ms": int(checkpoints - d_where("pulse_checkpoint_seconds_bucket", 'le="0.05"')),
        "checkpoints_over_100ms": int(checkpoints - d_where("pulse_checkpoint_seconds_bucket", 'le="0.1"')),
        # a backlog's batches over a second (its budget is a share of the rebalance timeout: BatchPace)
        "checkpoints_over_1s": int(checkpoints - d_where("pulse_checkpoint_seconds_bucket", 'le="1.0"')),
        "profiles_written": int(d("pulse_redis_batch_profiles_sum")),
        "swept_customers": int(d("pulse_swept_customers_total")),
        "due_checks": int(d("pulse_churn_due_checks_total")),
        # partitions whose due checks a batch past its budget stopped (PULSE_CHURN_DUE_TIME_RATIO)
        "due_cut": int(d("pulse_churn_due_checks_cut_total")),
        "assessed": int(d("pulse_customers_assessed_total")),
        "assessments_deferred": int(d("pulse_assessments_deferred_total")),
        # input events scored, and those de-duplicated (a live run whose ids were seen before would show here)
        "scored": int(d_where("pulse_events_total", 'outcome="scored"')),
        "duplicates": int(d_where("pulse_events_total", 'outcome="duplicate"')),
        # the worker process's own CPU (prometheus_client's process collector): a yardstick the load moves less
        "cpu_seconds": round(d("process_cpu_seconds_total"), 2),
        # PULSE_PROFILE_RENDER_PROCESS: the render process's CPU, which the worker process's no longer holds
        "render_process_cpu_seconds": round(d("pulse_render_process_cpu_seconds_total"), 2),
        # mean ms per batch of each checkpoint step (pulse_checkpoint_step_seconds): scoring, acks, Redis, metrics
        "step_ms_mean": {
            step: round(1000 * d2 / max(1, batches), 1)
            for step in STEPS
            if (d2 := d_where("pulse_checkpoint_step_seconds_sum", f'step="{step}"'))
        },
        # per step, the batches in which it took over 25 ms: which step makes the long batches
        "steps_over_25ms": {
            step: n
            for step in STEPS
            if (
                n := int(
                    d_where("pulse_checkpoint_step_seconds_count", f'step="{step}"')
                    - d_where("pulse_checkpoint_step_seconds_bucket", f'le="0.025",step="{step}"')
                )
            )
        },
    }
