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

This module runs the phases in order and reports; the phases are in ``benchmarks/phases/`` (``common``:
the run, its processes and metrics; ``throughput``, ``latency``, ``state``, ``cost``, ``recovery``), and
what they share with the tests (per-phase environment, process spawning, live traffic) in ``testing/``.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.phases import cost, latency, recovery, state, throughput
from benchmarks.phases.common import LATENCY_WINDOW_SECONDS, REPO, Bench, log, peak_rss_bytes, worker_deltas
from testing.templates import template_states

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
                result["raw"] = throughput.raw(bench, env, n)
                log(f"raw: {result['raw']['events_per_second']:.0f} events/s")
            if "naive" not in skip:
                result["naive"] = throughput.naive(bench, env, n)
                log(f"naive: {result['naive']['events_per_second']:.0f} events/s")
            if "faust" not in skip:
                result["faust"] = throughput.naive(bench, env, n, mode="take")
                log(f"faust take_events, no work: {result['faust']['events_per_second']:.0f} events/s")
            if "full" not in skip:
                keep = "latency" not in skip
                full = throughput.run_workers(bench, f"full{tag}", env, 1, n, keep=keep)
                procs = full.pop("_procs", [])
                result["full"] = full
                log(f"full: {full['events_per_second']:.0f} events/s")
                try:
                    if "latency" not in skip:
                        rate = args.latency_rate or max(1.0, full["events_per_second"] / 2)
                        log(f"latency: {args.latency_seconds:g}s at {rate:.0f} events/s")
                        before = procs[0].metrics() if procs else ""
                        result["latency"] = latency.latency(bench, env, rate, args.latency_seconds)
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
                    result["state"] = state.state_size(bench, env)
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
                scaling.append(throughput.run_workers(bench, f"w{count}x{tag}", env, count, n))
            result["scaling"] = scaling
        if "cost" not in skip:
            log(f"cost per event: scoring the templates ({args.template_customers} customers)")
            templates = template_states(args.template_customers, args.seed)
            result["cost"] = []
            for size in args.cost_sizes:
                log(f"cost per event at {size} customers")
                result["cost"].append(cost.cost_per_event(size, templates, args.cost_events, args.seed))
        if "recovery" not in skip:
            log(f"recovery of {args.recovery} customers (rocksdb)")
            result["recovery"] = recovery.recovery(bench, args.recovery)
    finally:
        bench.close()
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    result["verdicts"] = verdicts(result)
    return result


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
        if "cpu_seconds" in w and lat.get("events"):
            lines.append(
                f"    worker CPU {w['cpu_seconds']} s, {1e6 * w['cpu_seconds'] / lat['events']:,.0f} µs per event"
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
    p.add_argument(
        "--latency-rate",
        type=float,
        default=0.0,
        help="events/s of the latency phase (default: half the full phase's rate; fixed, runs compare at one load)",
    )
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
