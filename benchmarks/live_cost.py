"""CPU cost of *live* batches (issue 18: the live path): ``BatchProcessor.process`` as the worker calls it on live
traffic (the consumer's end offsets and the wall clock handed in), no broker, no Redis.

Usage::

    .venv/bin/python -m benchmarks.live_cost [--customers 5000] [--events 30000] [--rate 3000]
        [--batches 1,50,500] [--order mixed,by-topic] [--ahead-ms 0] [--render processor,here,elsewhere] [--callgrind]

The population and the traffic are ``benchmarks.processor_cost``'s (seeded: N customers cloned from a
generated year, the four-kind mix), but the events are timed as live traffic at ``--rate`` events/s of event
time, each batch handed in with ``wall_ms`` at its last event and the end offsets of what the consumer has
fetched by then (``--ahead-ms`` more of the stream: fetched, not yet taken). So the partitions are *live*
(``BatchProcessor.live``), their clocks wait for topic-partitions read behind (spec: Clock), and a customer whose
event is ahead of its partition's clock is deferred to a due check of a later batch, as in the worker.

``--order``: ``mixed`` takes the stream in production order (a consumer that keeps up); ``by-topic`` takes it as a
consumer that fell behind sees it: each second of traffic fetched topic-partition by topic-partition, so a batch
holds one or two topics and the others hold the partitions' clocks back.

Per batch size and order it prints CPU µs per event and per batch (process, plus the encode of the changed
states and ``CheckpointMetrics.batch``, the per-batch metrics the checkpoint computes), the customers deferred
and re-checked by due checks, and with ``--callgrind`` instructions per event (load-independent; see
``benchmarks.processor_cost``).
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import pickle
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from benchmarks.callgrind import timed_instructions
from benchmarks.processor_cost import PARTITIONS, _helper, cloned_processor, inputs


def _batches(
    rows: list[tuple[str, int, str, bytes, int]], size: int, order: str, ahead_ms: int, topics: dict[str, str]
) -> list[tuple[list[Any], int, dict[tuple[str, int], int]]]:
    """(records, wall_ms, end offsets) per batch: what the worker's checkpoint hands ``process``."""
    from streams.processor import Incoming

    offsets: dict[tuple[str, int], int] = collections.Counter()
    records = []
    for kind, partition, cid, value, at_ms in rows:
        tp = (topics[kind], partition)
        records.append((Incoming(tp[0], partition, offsets[tp], cid.encode(), value), at_ms))
        offsets[tp] += 1
    if order == "by-topic":
        # a lagging consumer: each second of traffic arrives topic-partition by topic-partition
        out = []
        window = []
        for rec in records:
            if window and rec[1] - window[0][1] >= 1000:
                out += sorted(window, key=lambda r: (r[0].topic, r[0].partition, r[0].offset))
                window = []
            window.append(rec)
        records = out + sorted(window, key=lambda r: (r[0].topic, r[0].partition, r[0].offset))
    times = sorted(at for _, at in records)
    by_time = sorted(records, key=lambda r: r[1])
    batches = []
    for i in range(0, len(records), size):
        chunk = records[i : i + size]
        wall = max(at for _, at in chunk)
        # fetched by now: everything produced up to the batch's newest event, and ahead_ms more
        import bisect

        upto = bisect.bisect_right(times, wall + ahead_ms)
        ends: dict[tuple[str, int], int] = {}
        for rec, _ in by_time[:upto]:
            tp = (rec.topic, rec.partition)
            ends[tp] = max(ends.get(tp, 0), rec.offset + 1)
        for rec, _ in chunk:
            tp = (rec.topic, rec.partition)
            ends[tp] = max(ends.get(tp, 0), rec.offset + 1)
        batches.append(([r for r, _ in chunk], wall, ends))
    return batches


def measure(
    data: dict[str, Any], size: int, batch: int, order: str, ahead_ms: int, mode: str, render: str = "processor"
) -> dict[str, Any]:
    import msgspec

    from pulse_config.settings import Settings
    from streams.checkpoint_metrics import CheckpointMetrics
    from streams.codec import decode_state, encode_state
    from streams.sinks.redis_profiles import pack_profile

    settings = Settings(_env_file=None, partitions=PARTITIONS)
    gc.set_threshold(*settings.gc_thresholds)
    topics = settings.input_topics()
    processor, store = cloned_processor(settings, data, size)
    # --render elsewhere: the processor lists the profiles and the worker's thread only encodes their inputs
    # (PULSE_PROFILE_RENDER_PROCESS, streams.render_process); here: rendered and packed as the sink packs them;
    # processor (the default, as before session 12): rendered, not packed
    processor.render_elsewhere = render == "elsewhere"
    pack = render == "here"
    encode_request = msgspec.msgpack.Encoder().encode
    prefix, vip_value = settings.redis_key_prefix, settings.vip_value
    report_batch = CheckpointMetrics(processor, population_seconds=settings.metrics_population_seconds).batch
    batches = _batches(data["streams"][size], batch, order, ahead_ms, topics)
    starts = {(topic, p): 0 for topic in topics.values() for p in range(PARTITIONS)}

    def load(key: bytes):
        return decode_state(store.get(key))

    totals = collections.Counter()

    def run(records: list[Any], wall: int, ends: dict[tuple[str, int], int]) -> None:
        full_ends = {tp: ends.get(tp, 0) for tp in starts}
        out = processor.process(records, load, wall, full_ends, starts)
        for key, state in out.states.items():
            store[key] = encode_state(state)
        if pack:
            for profile in out.profiles:
                pack_profile(profile, prefix, vip_value)
        if out.to_render:
            encode_request((0, [(key.decode(), store[key], at, clv, risk) for key, _, at, clv, risk in out.to_render]))
            processor.render_answered(out.seq, [], False)  # the worker hands every answer back (its quarantines)
        report_batch(out)
        totals["due_checks"] += out.due_checked
        totals["profiles"] += len(out.profiles) + len(out.to_render)
        totals["alerts"] += len(out.alerts)
        totals["written"] += len(out.states)
        clocks = {p: processor.population.clock_of(p) for p in range(PARTITIONS)}
        totals["deferred"] += sum(
            1
            for key in out.event_customers
            if (s := out.states[key]).last_event_ms is not None and s.last_event_ms > (clocks[out.partitions[key]] or 0)
        )

    warm = max(1, len(batches) // 5)
    for records, wall, ends in batches[:warm]:
        run(records, wall, ends)
    totals.clear()
    timed = batches[warm:]
    n_events = sum(len(b[0]) for b in timed)
    helper = _helper() if mode == "callgrind" else None
    gc.collect()
    cpu0 = time.process_time()
    if helper is not None:
        helper.pulse_start()
    for records, wall, ends in timed:
        run(records, wall, ends)
    if helper is not None:
        helper.pulse_stop()
    cpu = time.process_time() - cpu0
    return {
        "customers": size,
        "batch": batch,
        "order": order,
        "render": render,
        "events": n_events,
        "batches": len(timed),
        "cpu_us_per_event": round(cpu / n_events * 1e6, 1),
        "cpu_ms_per_batch": round(cpu / len(timed) * 1e3, 2),
        **{k: totals[k] for k in ("deferred", "due_checks", "written", "profiles", "alerts")},
    }


def live_inputs(size: int, events: int, rate: float, seed: int) -> dict[str, Any]:
    """``processor_cost.inputs`` with the events re-timed as live traffic at ``rate`` events/s of event time."""
    data = inputs([size], events, seed)
    rows = []
    start = None
    for n, (kind, partition, cid, value) in enumerate(data["streams"][size]):
        event = orjson.loads(value)
        if start is None:
            start = datetime.fromisoformat(event["occurred_at"])
        at = start + timedelta(milliseconds=n * 1000 / rate)
        at_ms = int(at.timestamp() * 1000)
        rows.append((kind, partition, cid, orjson.dumps({**event, "occurred_at": at.isoformat()}), at_ms))
    data["streams"][size] = rows
    return data


def _callgrind(data_file: str, size: int, batch: int, order: str, ahead_ms: int, render: str) -> int:
    args = ["--child", data_file, "--customers", str(size), "--batches", str(batch), "--order", order]
    return timed_instructions("benchmarks.live_cost", [*args, "--ahead-ms", str(ahead_ms), "--render", render])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=5000)
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--rate", type=float, default=3000.0, help="events/s of event time (the live traffic)")
    p.add_argument("--batches", default="1,50,500", help="batch sizes, comma-separated")
    p.add_argument("--order", default="mixed,by-topic", help="mixed and/or by-topic")
    p.add_argument("--ahead-ms", type=int, default=0, help="traffic fetched but not yet taken at each batch")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--callgrind", action="store_true", help="also count instructions per event under callgrind")
    p.add_argument(
        "--render",
        default="processor",
        help="processor (rendered, not packed: as before session 12), here (rendered and packed, as the sink "
        "packs them) and/or elsewhere (their inputs handed over, as with PULSE_PROFILE_RENDER_PROCESS; the "
        "answer's decode, ~1.2 µs per profile, not counted)",
    )
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = [int(b) for b in args.batches.split(",")]
    orders = [o.strip() for o in args.order.split(",") if o.strip()]
    renders = [r.strip() for r in args.render.split(",") if r.strip()]
    if args.child:
        data = pickle.loads(Path(args.child).read_bytes())
        measure(data, args.customers, sizes[0], orders[0], args.ahead_ms, "callgrind", renders[0])
        return 0
    data = live_inputs(args.customers, args.events, args.rate, args.seed)
    with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False) as f:
        f.write(pickle.dumps(data))
        data_file = f.name
    try:
        for order in orders:
            for batch in sizes:
                for render in renders:
                    row = measure(data, args.customers, batch, order, args.ahead_ms, "time", render)
                    if args.callgrind:
                        instr = _callgrind(data_file, args.customers, batch, order, args.ahead_ms, render)
                        row["instructions_per_event"] = round(instr / row["events"])
                    print(orjson.dumps(row).decode(), flush=True)
    finally:
        os.unlink(data_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
