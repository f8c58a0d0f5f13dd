"""Issue 15's chaos scenario at full size, on a broker and Redis of its own (a checkout with .venv).

6,000 customers (~67,000 valid events of the four kinds, ~72,000 records with the out-of-order,
late, producer-duplicated, mis-keyed and malformed ones), 3 workers on 6 partitions, kill -9 of a
random worker about every 30 s, a fourth worker joining and leaving by SIGTERM about every 40 s, and
Redis killed and restarted empty for 25 s, 5 s of the traffic sent at once at mid-run. Then every profile
and changelog state is compared with the offline processor and an independent batch oracle, and it prints one
line of numbers per run:
events produced, valid, applied, lost, doubled, dead-lettered, conflicting ids, ...

    .venv/bin/python -m benchmarks.chaos [--broker tansu|kafka] [--customers 6000] [--seeds 1 2 3]
        [--store memory:// rocksdb://] [--send-seconds 480] [--kills 15] [--churn 12] [--backlog-from-events N]
        [--json]

``--broker kafka`` runs it on Apache Kafka (KRaft, one node; needs java and the jars of
scripts/setup.sh), the other broker the suite runs on; Tansu is the default.

Exit status 1 if any run lost or doubled an event, left a profile or state different, or had a worker exit
other than by a kill, a stop or a fail-stop (exit 75, restarted as the design expects): a crash.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pulse.devstack import BROKERS, DevStack, kafka_available
from testing.chaos import ChaosPlan, run_chaos
from testing.stack import WorkerPool, make_namespace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=BROKERS, default="tansu", help="tansu (default) or Apache Kafka (KRaft)")
    parser.add_argument("--customers", type=int, default=6000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--store", nargs="+", default=["memory://"], help="memory:// and/or rocksdb://")
    parser.add_argument("--send-seconds", type=float, default=480.0, help="traffic spread over this long")
    parser.add_argument("--kills", type=int, default=15)
    parser.add_argument("--churn", type=int, default=12, help="join/leave cycles of a fourth worker")
    parser.add_argument("--redis-outage-seconds", type=float, default=25.0)
    parser.add_argument("--freezes", type=int, default=0, help="SIGSTOPs of a worker past its session, then SIGCONT")
    parser.add_argument("--freeze-seconds", type=float, default=8.0, help="how long each freeze lasts (+- 2 s)")
    parser.add_argument(
        "--backlog-from-events",
        type=int,
        default=None,
        help="the workers' PULSE_BATCH_BACKLOG_FROM_EVENTS (default: the setting's); lower, more catch-up batches "
        "defer assessments to the next batch",
    )
    parser.add_argument("--strict-ids", action="store_true", help="fail on alert/VIP ids with two contents")
    parser.add_argument("--keep", action="store_true", help="keep the logs directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.broker == "kafka" and (reason := kafka_available()) is not None:
        parser.error(f"--broker kafka: {reason}")
    failed = False
    root = Path(tempfile.mkdtemp(prefix="pulse-chaos-"))
    stack = DevStack.start(root / "stack", broker=args.broker)
    print(f"[chaos] broker {args.broker} ({stack.broker_url}), code {_commit()}, logs {root}", flush=True)
    try:
        for store in args.store:
            for seed in args.seeds:
                ns = make_namespace(stack.env(), root / f"{store.split(':')[0]}-{seed}", ChaosPlan.partitions)
                ns.log_dir.mkdir(parents=True, exist_ok=True)
                plan = ChaosPlan(
                    customers=args.customers,
                    seed=seed,
                    kills=args.kills,
                    churn_cycles=args.churn,
                    redis_outage_seconds=args.redis_outage_seconds,
                    freezes=args.freezes,
                    freeze_seconds=args.freeze_seconds,
                    send_seconds=args.send_seconds,
                    store=store,
                    converge_seconds=600.0,
                    backlog_from_events=args.backlog_from_events,
                )
                pool = WorkerPool(ns)
                load_before = os.getloadavg()
                try:
                    result = run_chaos(plan, ns, pool.start, say=lambda line: print(line, flush=True))
                finally:
                    pool.stop_all()
                load = f"load average {_load(load_before)} at the start, {_load(os.getloadavg())} at the end"
                bad = (
                    result.lost
                    or result.doubled
                    or result.profiles_off_offline
                    or result.profiles_off_oracle
                    or result.changelog_states_off
                    or result.dead_lettered != result.malformed_sent
                    or (args.strict_ids and result.conflicting_ids)
                    or result.unplanned_exits != result.unplanned_fail_stops
                )
                failed = failed or bool(bad)
                if args.json:
                    print(
                        json.dumps(
                            {"broker": args.broker, "store": store, "seed": seed, **dataclasses.asdict(result)},
                            default=str,
                        )
                    )
                print(
                    f"[chaos] {args.broker} {store} seed {seed} customers {args.customers}: {result.line()}; {load}",
                    flush=True,
                )
                if bad:
                    print(f"[chaos] examples: {result.examples}  (logs: {ns.log_dir})", flush=True)
    finally:
        stack.close()
    if not args.keep and not failed:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


def _commit() -> str:
    """The checkout's commit (with "+dirty" when it has local changes), to record with the numbers."""
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=here, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.1f}" for x in avg)


if __name__ == "__main__":
    sys.exit(main())
