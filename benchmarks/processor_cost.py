"""CPU cost of ``BatchProcessor.process`` per event (issue 18): µs and instructions, at 5k and 50k customers.

Usage::

    .venv/bin/python -m benchmarks.processor_cost [--customers 5000,50000] [--events 10000]
        [--scope process|full] [--batch N] [--callgrind] [--profile]

The input is fixed (seeded): a population of N customers cloned from the scored states of a generated
year (``testing.templates.template_states``, the same as ``pulse bench``'s cost phase), then live traffic
of the four-kind mix (orders 60 %, support 25 %, surveys 10 %, complaints 5 %) for random customers among
them, a few events per second of event time, in batches of ``batch_max_events`` (``--batch``: another size, e.g.
the 5,000-10,000 events of a backlog batch, where a customer often has several events per batch).

Scopes: ``process`` times ``BatchProcessor.process`` alone (its ``load`` decodes each state from a dict of
encoded states, as the worker's table does); ``full`` adds what the checkpoint does per batch without I/O
(encode every changed state, pack the profiles' Redis commands), as ``pulse bench``'s cost phase.

The box is shared, so wall and even CPU time are noisy: ``--callgrind`` re-runs the measurement under
``valgrind --tool=callgrind`` with instrumentation switched on only around the timed batches (a tiny
client-request helper compiled with ``cc``), and prints instructions per event: a number that does not
depend on the load. ``--profile`` prints the top of a cProfile of the timed batches instead.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from benchmarks.callgrind import REPO, timed_instructions

#: partitions of the input topics and the state table (``--partitions``: a population's percentiles are summed over
#: every partition's index, so a customer's ranking walks one tree per partition)
PARTITIONS = 4
TEMPLATE_CUSTOMERS = 2_000

_HELPER_C = r"""
#include <valgrind/callgrind.h>
void pulse_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void pulse_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS_AT("timed"); }
void pulse_collect(void) { CALLGRIND_TOGGLE_COLLECT; }
"""


def _helper() -> ctypes.CDLL | None:
    """The client-request helper (no-ops outside valgrind), built once into the temp dir; None without cc or
    valgrind's headers."""
    lib = Path(tempfile.gettempdir()) / f"pulse-callgrind-{os.getuid()}.so"
    if not lib.exists():
        cc = shutil.which("cc")
        if cc is None or not Path("/usr/include/valgrind/callgrind.h").exists():
            return None
        src = lib.with_suffix(".c")
        src.write_text(_HELPER_C)
        subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return ctypes.CDLL(str(lib))


def inputs(sizes: list[int], events: int, seed: int) -> dict[str, Any]:
    """Templates (encoded states, clock) and the live events: built once natively, reused under valgrind."""
    from pulse.simulate import generate_events
    from streams.codec import encode_state
    from testing.templates import template_states
    from testing.traffic import live_event

    templates = template_states(TEMPLATE_CUSTOMERS, seed)
    encoded = []
    for state in templates.states:
        row = []
        for p in range(PARTITIONS):
            state.partition = p
            row.append(encode_state(state))
        encoded.append(row)
    t = len(encoded)
    live = generate_events(max(10, t), 30, seed=seed + 2000)
    clock = datetime.fromtimestamp(templates.clock_ms / 1000, UTC)
    streams: dict[int, list[tuple[str, int, str, bytes]]] = {}
    for size in sizes:
        rng = random.Random(seed)
        rows = []
        for n in range(events):
            kind, event = live_event(live[n % len(live)], n)
            j = (int(event["customer_id"][1:]) % t) + t * rng.randrange(max(1, size // t))
            j = min(j, size - 1)
            cid = f"P{j:08d}"
            at = (clock + timedelta(milliseconds=200 * (n + 1))).isoformat()
            rows.append((kind, j % PARTITIONS, cid, orjson.dumps({**event, "customer_id": cid, "occurred_at": at})))
        streams[size] = rows
    return {"encoded": encoded, "streams": streams}


def cloned_processor(settings: Any, data: dict, size: int) -> tuple[Any, dict[bytes, bytes]]:
    """A processor (``settings``' batch engine) whose population is ``size`` customers cloned from the scored
    templates, and the encoded states by key (what the worker's table would hold)."""
    from streams.codec import decode_state
    from streams.processor import BatchProcessor

    encoded = data["encoded"]
    t = len(encoded)
    store: dict[bytes, bytes] = {}
    processor = BatchProcessor(settings.processor())

    def clones():
        for j in range(size):
            key = f"P{j:08d}".encode()
            raw = encoded[j % t][j % PARTITIONS]
            store[key] = raw
            yield key, decode_state(raw)

    processor.rebuild(set(range(PARTITIONS)), clones())
    return processor, store


def measure(
    data: dict[str, Any],
    size: int,
    scope: str,
    warm: int,
    mode: str,
    batch_events: int | None = None,
    backlog: bool = False,
) -> dict[str, Any]:
    """Run the batches of ``size`` customers; ``mode``: "time", "callgrind" (client requests) or "profile";
    ``batch_events``: events per batch (None: the setting's default); ``backlog``: as a worker behind its input
    (states kept decoded between batches, streams.state_cache; the next batch's keys known, so profiles it
    renders again are deferred to it, streams.processor._defer_profiles)."""
    from pulse_config.settings import Settings
    from streams.codec import decode_state, encode_state
    from streams.processor import Incoming
    from streams.sinks.redis_profiles import pack_batch, pack_profile

    extra = {} if batch_events is None else {"batch_max_events": batch_events}
    settings = Settings(_env_file=None, partitions=PARTITIONS, **extra)
    gc.set_threshold(*settings.gc_thresholds)  # as the worker runs
    topics = settings.input_topics()
    processor, store = cloned_processor(settings, data, size)
    offsets: dict[tuple[str, int], int] = collections.Counter()
    batches: list[list[Incoming]] = []
    batch: list[Incoming] = []
    for kind, partition, cid, value in data["streams"][size]:
        topic = topics[kind]
        offsets[(topic, partition)] += 1
        batch.append(Incoming(topic, partition, offsets[(topic, partition)], cid.encode(), value))
        if len(batch) >= settings.batch_max_events:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    prefix = settings.redis_key_prefix

    from streams.state_cache import StateCache

    kept = StateCache(settings.state_cache_customers if backlog else 0)
    following = {id(b): frozenset(r.key for r in n) for b, n in zip(batches, batches[1:], strict=False)}

    def load(key: bytes):
        raw = store.get(key)
        state = kept.take(key, raw)
        return decode_state(raw) if state is None else state

    def write(states: dict[bytes, Any]) -> None:
        """The batch's states into the table (encoded), kept decoded as the checkpoint keeps them."""
        for key, state in states.items():
            store[key] = raw = encode_state(state)
            kept.put(key, raw, state)

    def tallies(out: Any) -> tuple[int, int, int, int]:
        """Profiles, due checks, alerts and customers assessed (once per customer and batch) of one batch."""
        return len(out.profiles), out.due_checked, len(out.alerts), len(out.assessed)

    def run(batch: list[Incoming]) -> tuple[int, int, int, int]:
        if backlog:
            processor.upcoming = following.get(id(batch), frozenset())
        out = processor.process(batch, load)
        write(out.states)
        pack_batch({p.customer_id: pack_profile(p, prefix, settings.vip_value) for p in out.profiles}, prefix)
        return tallies(out)

    warm = min(warm, len(batches) - 1)
    for b in batches[:warm]:
        run(b)
    timed = batches[warm:]
    n_events = sum(len(b) for b in timed)
    helper = _helper() if mode == "callgrind" else None
    profiler = None
    totals = [0, 0, 0, 0]
    excluded = 0.0  # scope process: the CPU of the encode between the batches
    gc.collect()
    collected = GcTimes()
    gc.callbacks.append(collected)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if mode == "profile":
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    if helper is not None:
        helper.pulse_start()
    for b in timed:
        if scope == "full":
            result = run(b)
        else:
            # collect only inside process(): the encode of the changed states (which the next batch's
            # decode needs) is left out of the count
            if backlog:
                processor.upcoming = following.get(id(b), frozenset())
            if helper is not None:
                out = processor.process(b, load)
                helper.pulse_collect()
                write(out.states)
                helper.pulse_collect()
                result = tallies(out)
            else:
                out = processor.process(b, load)
                enc0 = time.process_time()
                write(out.states)
                excluded += time.process_time() - enc0
                result = tallies(out)
        for i in range(4):
            totals[i] += result[i]
    if helper is not None:
        helper.pulse_stop()
    if profiler is not None:
        profiler.disable()
    cpu, wall = time.process_time() - cpu0 - excluded, time.perf_counter() - wall0
    gc.callbacks.remove(collected)
    report = {
        "customers": size,
        "scope": scope,
        "events": n_events,
        "batches": len(timed),
        "cpu_us_per_event": round(cpu / n_events * 1e6, 1),
        "wall_us_per_event": round(wall / n_events * 1e6, 1),
        "profiles": totals[0],
        "due_checks": totals[1],
        "alerts": totals[2],
        "assessed": totals[3],
        "gc_us_per_event": round(sum(collected.seconds) / n_events * 1e6, 2),
        "gc_collections": collected.count,
        "gc_ms_by_generation": [round(s * 1000, 1) for s in collected.seconds],
    }
    if profiler is not None:
        import io
        import pstats

        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(35)
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(45)
        report["profile"] = text.getvalue()
    return report


class GcTimes:
    """A ``gc.callbacks`` entry: the collections of each generation and their wall time."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.count[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._started


def _callgrind(
    data_file: str, size: int, scope: str, warm: int, batch_events: int | None = None, backlog: bool = False
) -> int:
    """Instructions of the timed batches, from a child process under callgrind."""
    args = ["--child", data_file, "--customers", str(size), "--scope", scope, "--warm", str(warm)]
    args += ["--partitions", str(PARTITIONS)]
    if batch_events is not None:
        args += ["--batch", str(batch_events)]
    if backlog:
        args.append("--backlog")
    return timed_instructions("benchmarks.processor_cost", args)


def main(argv: list[str] | None = None) -> int:
    global PARTITIONS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--customers", default="5000,50000", help="population sizes, comma-separated")
    p.add_argument("--events", type=int, default=10_000, help="events per size (the first batches warm up)")
    p.add_argument("--warm", type=int, default=2, help="batches run before the timed ones")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--scope", choices=("process", "full"), default="process")
    p.add_argument("--batch", type=int, help="events per batch (default: PULSE_BATCH_MAX_EVENTS's default, 500)")
    p.add_argument(
        "--backlog",
        action="store_true",
        help="as a worker behind its input: states kept decoded between batches, profiles the next batch renders "
        "again deferred to it (use with --scope full --batch 10000)",
    )
    p.add_argument("--partitions", type=int, default=PARTITIONS, help="partitions of the topics and the table")
    p.add_argument("--callgrind", action="store_true", help="also count instructions under valgrind")
    p.add_argument("--profile", action="store_true", help="print a cProfile of the timed batches")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    PARTITIONS = args.partitions
    sizes = [int(s) for s in args.customers.split(",")]
    if args.child:
        with open(args.child, "rb") as f:
            data = pickle.load(f)
        measure(data, sizes[0], args.scope, args.warm, "callgrind", args.batch, args.backlog)
        return 0
    data = inputs(sizes, args.events, args.seed)
    data_file = None
    if args.callgrind:
        if shutil.which("valgrind") is None or _helper() is None:
            print("--callgrind needs valgrind, its headers (valgrind/callgrind.h) and cc", file=sys.stderr)
            return 2
        fd, data_file = tempfile.mkstemp(suffix=".pickle")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(data, f)
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    per_batch = args.batch or 500
    print(
        f"code: {code.stdout.strip()}  scope: {args.scope}  events per size: {args.events} (mix of four kinds), "
        f"batches of {per_batch:,}, {PARTITIONS} partitions"
    )
    try:
        for size in sizes:
            r = measure(
                data, size, args.scope, args.warm, "profile" if args.profile else "time", args.batch, args.backlog
            )
            line = (
                f"{size:>9,} customers: {r['cpu_us_per_event']:7.1f} µs CPU/event "
                f"({r['events']:,} events in {r['batches']} batches; {r['assessed']:,} customers assessed, "
                f"{r['profiles']:,} profiles, "
                f"{r['due_checks']:,} due checks, {r['alerts']:,} alerts; garbage collection "
                f"{r['gc_us_per_event']:.1f} µs/event, collections by generation {r['gc_collections']} taking "
                f"{r['gc_ms_by_generation']} ms)"
            )
            if data_file is not None:
                instructions = _callgrind(data_file, size, args.scope, args.warm, args.batch, args.backlog)
                line += f"; {instructions / r['events']:,.0f} instructions/event"
            print(line, flush=True)
            if args.profile:
                print(r["profile"])
    finally:
        if data_file is not None:
            os.unlink(data_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
