"""Throughput phases of ``pulse bench``: raw (a plain consumer), naive and faust (the Faust baselines),
full and scaling (``pulse worker`` on a preloaded backlog, optionally profiled with py-spy)."""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.phases.common import (
    PHASE_SECONDS,
    POLL_SECONDS,
    REPO,
    SPY_RATE,
    Bench,
    CpuReading,
    Proc,
    box_busy_share,
    counted_seconds,
    cpu_reading,
    cpu_us_per_event,
    log,
    metric_sum,
    peak_rss_bytes,
    rate_after_all_started,
    scored_seconds,
    servers_jit_us_per_event,
    servers_us_per_event,
    wait_count,
    worker_deltas,
)


def raw(bench: Bench, env: dict[str, str], n: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.security import kafka_client_kwargs

    settings = bench.settings(env)

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


def naive(bench: Bench, env: dict[str, str], n: int, mode: str = "table") -> dict[str, Any]:
    """``mode``: "table" (one table update per event), "take" (batches, no work: Faust's own ceiling) or "batch"
    (the worker's batch input path, no work)."""
    settings = bench.settings(env)
    naive_env = {
        **env,
        "NAIVE_MODE": mode,
        "NAIVE_APP_ID": f"bench-naive-{mode}-{bench.args.run_tag}",
        "NAIVE_TOPICS": ",".join(settings.input_topics().values()),
        "NAIVE_PARTITIONS": str(settings.partitions),
    }
    argv = [sys.executable, str(REPO / "benchmarks" / "naive_faust.py")]
    return peer(bench, "naive", argv, naive_env, n, "naive")


#: why the Quix Streams phases cannot run here (None: they can)
QUIX_MISSING = (
    None if importlib.util.find_spec("quixstreams") else "Quix Streams not installed: pip install -e .[bench]"
)


def quix(bench: Bench, env: dict[str, str], n: int, mode: str, store: str = "rocksdb") -> dict[str, Any]:
    """A Quix Streams application on the backlog (``benchmarks/quix_peer.py``): ``mode`` noop, count or scorer,
    its state in ``store`` (rocksdb or memory)."""
    peer_env = {
        **env,
        "PEER_MODE": mode,
        "PEER_STORE": store,
        "PEER_APP_ID": f"bench-quix-{mode}-{store}-{bench.args.run_tag}",
    }
    out = peer(bench, f"quix-{mode}-{store}", [sys.executable, "-m", "benchmarks.quix_peer"], peer_env, n, "peer")
    return {**out, "mode": mode, "store": store}


def peer(bench: Bench, name: str, argv: list[str], env: dict[str, str], n: int, metric: str) -> dict[str, Any]:
    """A peer program on the backlog, timed from its first to its last event by its own ``{metric}_*`` metrics;
    its CPU seconds (user + sys of the process) too."""
    proc = bench.spawn(name, argv, env)
    cpu0: list[CpuReading] = []
    try:
        text = wait_count([proc], f"{metric}_events_total", "", n, cpu_before=cpu0)
        first = metric_sum(text, f"{metric}_first_event_seconds")
        last = metric_sum(text, f"{metric}_last_event_seconds")
        rss = peak_rss_bytes(proc.popen.pid)
        cpu = cpu_reading([proc])
        counts = {k: int(metric_sum(text, f"{metric}_{k}_total")) for k in ("alerts", "profiles")}
    finally:
        proc.stop()
    seconds = max(last - first, 1e-3)
    return {
        "events": n,
        "seconds": round(seconds, 3),
        "events_per_second": round(n / seconds, 1),
        "cpu_us_per_event": cpu_us_per_event(cpu0, cpu, n),
        "peak_rss_mib": None if rss is None else round(rss / 2**20, 1),
        **{k: v for k, v in counts.items() if f"{metric}_{k}_total" in text},
    }


def run_workers(bench: Bench, tag: str, env: dict[str, str], count: int, n: int, keep: bool = False) -> dict[str, Any]:
    """Start ``count`` workers at once on a preloaded backlog of ``n`` events; time first -> last scored.

    With ``--py-spy`` (one worker), py-spy samples the worker from its first scored event to its last."""
    procs = [bench.worker(f"worker-{tag}-{i}", env) for i in range(count)]
    spy: list[Any] = []

    cpu0: list[CpuReading] = []

    def start_profile() -> None:
        if count == 1 and bench.args.py_spy:
            spy.append(start_py_spy(bench, procs[0], tag))

    per_proc: list[tuple[float, list[float]]] = []
    try:
        servers = bench.server_pids()
        # every outcome counts towards the end (a backlog that dead-letters some events must not wait out the
        # phase's bound): the events not scored are reported beside the rate, which they would flatter
        text = wait_count(
            procs,
            "pulse_events_total",
            "",
            # a misplaced record is counted as re-published, then as its copy's outcome
            n + bench.misplaced,
            on_first=start_profile,
            cpu_before=cpu0,
            server_pids=servers,
            per_proc=per_proc,
        )
        rss = [peak_rss_bytes(p.popen.pid) for p in procs]
        cpu = cpu_reading(procs, servers)
        rendered = worker_deltas("", renders_settled(procs, text))["render_process_cpu_seconds"]
        profile = finish_py_spy(spy[0]) if spy and spy[0] is not None else None
    finally:
        for popen, _, _ in (s for s in spy if s is not None):
            if popen.poll() is None:
                popen.kill()
        if not keep:
            for proc in procs:
                proc.stop()
    # timed as the peers are, from the first batch with events to the last one made durable; the polls' bound
    # (from the last poll that counted nothing to the one that counted everything: up to two poll intervals more,
    # and part of the first batch less) is kept beside it
    polled = counted_seconds([(t, sum(counts)) for t, counts in per_proc], 0)
    scored = scored_seconds(text, count)
    seconds = polled if scored is None else scored
    worker = worker_deltas("", text)
    out = {
        "workers": count,
        "events": n,
        "seconds": round(seconds, 3),
        "seconds_polled": round(polled, 3),
        "events_per_second": round(n / seconds, 1),
        "events_per_second_per_worker": round(n / seconds / count, 1),
        "peak_rss_mib": [None if r is None else round(r / 2**20, 1) for r in rss],
        "cpu_us_per_event": cpu_us_per_event(cpu0, cpu, n),
        # PULSE_PROFILE_RENDER_PROCESS: the render processes' CPU (their own metric, once they answered every batch)
        "render_process_cpu_us_per_event": round(rendered / n * 1e6, 1),
        "servers_cpu_us_per_event": servers_us_per_event(cpu0, cpu, n),
        # of which the broker JVM's just-in-time compiler (Kafka; a warmed-up broker does not pay it)
        "servers_jit_cpu_us_per_event": servers_jit_us_per_event(cpu0, cpu, n),
        "box_cpu_busy": box_busy_share(cpu0, cpu),
        "batches": worker["batches"],
        "checkpoint_ms_mean": worker["checkpoint_ms_mean"],
        # mean ms per batch of each checkpoint step (scoring, changelog, publish, ...): where a batch's time went
        "step_ms_mean": worker["step_ms_mean"],
        "due_checks": worker["due_checks"],
        "due_cut": worker["due_cut"],
        "checkpoints_over_1s": worker["checkpoints_over_1s"],
        # customers assessed (CLV and churn) for the phase's events: a backlog assesses a customer once its
        # partition's clock passes its latest event, once for many events (session 17); and the profiles handed
        # to Redis by the time the last event was scored (a catch-up defers its profiles a batch)
        "assessed": worker["assessed"],
        # of the customers with events, those a backlog batch left to the next one (PULSE_BACKLOG_DEFER_ASSESSMENTS)
        "assessments_deferred": worker["assessments_deferred"],
        "profiles_written": worker["profiles_written"],
        "alerts": int(metric_sum(text, "pulse_retention_alerts_total")),
        "vip_changes": int(metric_sum(text, "pulse_vip_changes_total")),
        # --preload-producer librdkafka-defaults: records re-published into their customer's partition
        "rerouted": int(metric_sum(text, "pulse_events_total", 'outcome="rerouted"')),
        "not_scored": int(n - metric_sum(text, "pulse_events_total", 'outcome="scored"')),
    }
    if out["not_scored"]:
        log(f"{tag}: {out['not_scored']:,} of {n:,} events not scored (dead-lettered or duplicates): see the log")
    if count > 1:
        # the staggered join (the first worker scores alone until the last one's rebalance) left out
        joint = rate_after_all_started(per_proc)
        out["events_per_second_all_joined"] = None if joint is None else round(joint[0], 1)
        out["seconds_all_joined"] = None if joint is None else round(joint[1], 3)
    if profile is not None:
        out["profile"] = profile
    if keep:
        out["_procs"] = procs
    return out


def renders_settled(procs: list[Proc], text: str, polls: int = 50) -> str:
    """The workers' metrics once their render processes (PULSE_PROFILE_RENDER_PROCESS) answered every batch
    handed over (at most ``polls`` polls): the last batches' profiles render after their events are counted."""
    for _ in range(polls):
        if not metric_sum(text, "pulse_render_process_batches_in_flight"):
            return text
        time.sleep(POLL_SECONDS)
        text = "\n".join(proc.metrics() for proc in procs)
    return text


def start_py_spy(bench: Bench, proc: Proc, tag: str) -> tuple[subprocess.Popen, Path, float] | None:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        log("py-spy not installed (.venv/bin/pip install py-spy): no profile")
        return None
    out = bench.log_dir / f"py-spy-{tag}.txt"
    argv = [spy, "record", "-p", str(proc.popen.pid), "-r", str(SPY_RATE), "-f", "raw", "-o", str(out)]
    popen = subprocess.Popen(
        argv,
        stdout=(bench.log_dir / f"py-spy-{tag}.log").open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return popen, out, time.monotonic()


def finish_py_spy(spy: tuple[subprocess.Popen, Path, float]) -> dict[str, Any]:
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
