"""``pulse``: the command line of customer-pulse."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import redis

from pulse.settings import DEV_ENV_FILE, Settings, load_settings


def _profile_key(prefix: str, cid: str) -> str:
    from streams.sinks.redis_profiles import profile_key

    return profile_key(prefix, cid)


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    run_worker(load_settings(), loglevel=args.loglevel)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    events = _traffic(args)
    n = _send_traffic(load_settings(), events, args, progress_every=args.progress_every)
    print(f"sent {n} events")
    return 0


def _send_traffic(settings: Settings, events: list[tuple[str, dict]], args: argparse.Namespace, **kw: int) -> int:
    from pulse.simulate import send
    from streams.security import kafka_client_kwargs

    print(f"sending {len(events)} events for {args.customers} customers…", flush=True)
    return asyncio.run(
        send(
            kafka_client_kwargs(settings),
            settings.input_topics(),
            events,
            rate=args.rate,
            bad=args.bad_per_1000,
            seed=args.seed,
            **kw,
        )
    )


def _traffic(args: argparse.Namespace) -> list[tuple[str, dict]]:
    from pulse.simulate import generate_events, generate_orders

    if args.orders_only:
        return [("order", o) for o in generate_orders(args.customers, args.days, args.seed)]
    return generate_events(args.customers, args.days, args.seed)


def _alerted(client: redis.Redis, pattern: str) -> tuple[int, int, int]:
    """(profiles, customers with at least one retention alert, alerts) over the profiles in Redis: what the
    demo says about its alerts (each profile counts its customer's alerts)."""
    keys = list(client.scan_iter(pattern, count=1000))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, "churn_alerts")
        counts = [int(c or 0) for c in pipe.execute()]
    return len(keys), sum(1 for c in counts if c), sum(counts)


def _richest_customer(events: list[tuple[str, dict]]) -> str:
    """The customer with the most kinds of events, then the most events: the best profile to show."""
    kinds: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    for kind, event in events:
        cid = event["customer_id"]
        kinds.setdefault(cid, set()).add(kind)
        counts[cid] = counts.get(cid, 0) + 1
    return max(kinds, key=lambda c: (len(kinds[c]), counts[c], c))


def cmd_profile(args: argparse.Namespace) -> int:
    from schemas.profile import CustomerProfile
    from streams.security import redis_client_kwargs

    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, **redis_client_kwargs(settings))
    fields = client.hgetall(_profile_key(settings.redis_key_prefix, args.customer_id))
    if not fields:
        print(f"no profile for {args.customer_id} in {settings.redis_url}", file=sys.stderr)
        return 1
    profile = CustomerProfile.from_redis(fields)
    if args.json:
        print(profile.model_dump_json(indent=2))
    else:
        width = max(len(k) for k in fields)
        for key, value in profile.model_dump(mode="json").items():
            if key == "churn_reasons":
                # one line per reason: what was seen, against which threshold
                value = "".join(f"\n{'':<{width}}  - {r['code']}: {r['detail']}" for r in value) or ""
            print(f"{key:<{width}}  {'' if value is None else value}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Produce an order history (CSV) to the order topic, keyed by customer id."""
    from aiokafka import AIOKafkaProducer

    from pulse.history import HistoryError, Progress, count_rows, read_orders
    from streams.admin import ensure_topics
    from streams.security import kafka_client_kwargs

    settings = load_settings()
    path = Path(args.file)

    async def go() -> int:
        await ensure_topics(settings)
        producer = AIOKafkaProducer(**kafka_client_kwargs(settings), acks="all", linger_ms=5)
        await producer.start()
        progress = Progress(count_rows(path), f"replay {path.name} -> {settings.topic_orders}")
        sent = 0
        try:
            futures = []
            for key, value in read_orders(path, settings.base_currency):
                futures.append(await producer.send(settings.topic_orders, key=key, value=value))
                if len(futures) >= 1000:
                    await asyncio.gather(*futures)
                    progress.advance(len(futures))
                    sent += len(futures)
                    futures = []
            await asyncio.gather(*futures)
            progress.advance(len(futures))
            sent += len(futures)
        finally:
            progress.close()
            await producer.stop()
        return sent

    try:
        sent = asyncio.run(go())
    except HistoryError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"replayed {sent} rows to {settings.topic_orders}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Score a history offline with the worker's processor; write one row per customer."""
    from collections import Counter

    from pulse.history import HistoryError, profile_row, read_history, write_profiles
    from pulse.offline import score_records

    settings = load_settings()
    topics = {**settings.input_topics(), "action": settings.topic_retention_actions}
    try:
        records = [
            (topics[kind], key, value)
            for file in args.file
            for kind, key, value in read_history(Path(file), settings.base_currency)
        ]
    except (HistoryError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 2
    result = score_records(records, settings)
    profiles = list(result.profiles.values())
    if args.out == "-":
        write_profiles(profiles, sys.stdout)
    else:
        with open(args.out, "w", newline="", encoding="utf-8") as out:
            write_profiles(profiles, out)
    vips = sum(1 for p in profiles if profile_row(p)["vip"] == "true")
    reasons = Counter(r.reason for r in result.rejected)
    print(
        f"scored {len(records)} rows: {len(profiles)} customers, {vips} VIP, {len(result.rejected)} rejected"
        + (f" ({', '.join(f'{k}: {n}' for k, n in reasons.most_common())})" if reasons else ""),
        file=sys.stderr,
    )
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit the CLV parameters (BG/NBD, Gamma-Gamma) on an order history; write the parameter file."""
    from pulse.fit import fit_history, parse_as_of, save_clv_params
    from pulse.history import HistoryError

    settings = load_settings()
    path = Path(args.file)
    try:
        as_of = parse_as_of(args.as_of) if args.as_of else None
        report = fit_history(path, settings, as_of, args.time_unit_days)
    except (HistoryError, ValueError) as exc:  # FitError and a bad --as-of are ValueErrors
        print(exc, file=sys.stderr)
        return 2
    out = Path(args.out or settings.clv_params_file)
    save_clv_params(report.params, out)
    for line in report.lines():
        print(line)
    print(f"wrote {out}")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """Print retention alerts as they arrive."""
    from pulse.alerts import AlertFilter, parse_since, watch
    from schemas.alerts import RiskLevel

    settings = load_settings()
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"pulse alerts: {exc}", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print("pulse alerts: --limit must be at least 1", file=sys.stderr)
        return 2
    select = AlertFilter(RiskLevel(args.level) if args.level else None, args.vip, args.customer, since)
    # --follow watches from now on (the end) unless --from-beginning; a one-off read shows history unless --new
    from_beginning = not args.new and (args.from_beginning or not args.follow)
    try:
        n = asyncio.run(
            watch(
                settings,
                follow=args.follow,
                from_beginning=from_beginning,
                as_json=args.json,
                max_alerts=args.limit,
                select=select,
            )
        )
    except KeyboardInterrupt:
        return 0
    if not args.json:
        print(f"{n} alert(s) on {settings.topic_retention_alerts}", file=sys.stderr)
    return 0


def cmd_router(args: argparse.Namespace) -> int:
    """Deliver retention alerts to the destinations of the router configuration file."""
    import logging

    from streams.router.config import RouterConfigError, load_config

    settings = load_settings()
    path = args.config or settings.router_config_file
    try:
        config = load_config(path)
    except RouterConfigError as exc:
        print(f"pulse router: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{path}: {len(config.destinations)} destination(s), {len(config.routes)} route(s): valid")
        return 0
    from streams.router.service import run_router

    logging.basicConfig(level=args.loglevel.upper(), format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    run_router(settings.model_copy(update={"router_config_file": str(path)}), config)
    return 0


#: what `pulse dev` routes alerts to when there is no router configuration: a file, readable with tail -f
DEV_ROUTER_CONFIG = """\
# written by pulse dev: every alert, historical ones too, appended to a file
[router]
deliver_historical = true
default_route = ["dev-log"]

[[destinations]]
name = "dev-log"
kind = "file"
path = "{path}"
group_seconds = 2
"""


def _dev_router_config(settings: Settings, log_dir: Path) -> str:
    """The user's router configuration if there is one, else a file destination under ``log_dir``."""
    if Path(settings.router_config_file).exists():
        return settings.router_config_file
    path = Path(".pulse/router-dev.toml")
    path.write_text(DEV_ROUTER_CONFIG.format(path=(log_dir / "deliveries.log").as_posix()))
    return str(path)


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the population indicators (NPS, CSAT, rates) of the whole population."""
    import json

    from pulse.stats import format_stats, read_stats, stats_json

    settings = load_settings()
    stats = asyncio.run(read_stats(settings, timeout=args.timeout))
    print(json.dumps(stats_json(stats), indent=2) if args.json else format_stats(stats, settings))
    return 0 if stats.values is not None else 1


def settings_table() -> str:
    """Markdown table of every setting: env var, default, meaning."""
    from pulse.settings import Settings

    rows = ["| env var | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
        rows.append(f"| `PULSE_{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(rows)


def cmd_config(args: argparse.Namespace) -> int:
    if args.effective:
        for key, value in load_settings().model_dump(mode="json").items():
            print(f"PULSE_{key.upper()}={value}")
    else:
        print(settings_table())
    return 0


#: Settings `pulse dev` defaults (unless set): group timeouts (a first join takes about the rebalance timeout)
#: and the sweep pace.
DEV_DEFAULTS = {
    "PULSE_BROKER_REBALANCE_TIMEOUT": "3",
    "PULSE_BROKER_SESSION_TIMEOUT": "6",
    "PULSE_BROKER_HEARTBEAT_INTERVAL": "0.5",
    # a demo population is small: let the sweep go round every 10 s, so the RFM cells settle while you watch
    "PULSE_SWEEP_ROUND_SECONDS": "10",
}


def _write_dev_env(env: dict[str, str]) -> None:
    path = Path(DEV_ENV_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))


def cmd_dev(args: argparse.Namespace) -> int:
    """Broker + Redis + worker(s) + sample traffic, until Ctrl-C or --duration."""
    from pulse.devstack import DevStack, free_port
    from streams.admin import ensure_topics
    from streams.security import redis_client_kwargs

    log_dir = Path(".pulse/logs")
    stack = DevStack.start(log_dir, broker=args.broker)
    workers: list[subprocess.Popen] = []
    try:
        env = {**stack.env(), "PULSE_METRICS_PORT": str(free_port()), "PULSE_API_PORT": str(free_port())}
        # A local broker with local workers: short group joins, unless set.
        for name, value in DEV_DEFAULTS.items():
            env.setdefault(name, os.environ.get(name, value))
        _write_dev_env(env)
        os.environ.update(env)
        settings = load_settings()
        kind = "Tansu, in memory" if stack.broker_name == "tansu" else "Apache Kafka, KRaft, temporary storage"
        print(f"broker  {stack.broker_url}   ({kind}; log {stack.broker.log})")
        print(f"redis   {stack.redis_url}")
        print(f"metrics http://127.0.0.1:{env['PULSE_METRICS_PORT']}/metrics")
        print(f"api     http://127.0.0.1:{env['PULSE_API_PORT']}/customers/<id>  (also /vips, /health, /ready)")
        asyncio.run(ensure_topics(settings))
        for i in range(args.workers):
            # one metrics endpoint and one API for the demo: the first worker's
            ports = {name: env[name] if i == 0 else "0" for name in ("PULSE_METRICS_PORT", "PULSE_API_PORT")}
            worker_env = {**os.environ, **env, **ports}
            log = (log_dir / f"worker-{i}.log").open("wb")
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "pulse", "worker"],
                    env=worker_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
        print(f"workers {args.workers} (logs in {log_dir}/worker-*.log)")
        router_config = _dev_router_config(settings, log_dir)
        actions_port = str(free_port())
        router_env = {
            **os.environ,
            **env,
            "PULSE_ROUTER_CONFIG_FILE": router_config,
            "PULSE_ROUTER_METRICS_PORT": "0",
            "PULSE_ROUTER_API_PORT": actions_port,
        }
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "pulse", "router"],
                env=router_env,
                stdout=(log_dir / "router.log").open("wb"),
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
        print(
            f"router  {router_config} (log {log_dir}/router.log); POST http://127.0.0.1:{actions_port}/alerts/<id>/acknowledge"
        )
        events = _traffic(args)
        _send_traffic(settings, events, args)
        customers_with_orders = len({e["customer_id"] for _, e in events})
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True, **redis_client_kwargs(settings))
        deadline = time.monotonic() + args.duration if args.duration else None
        shown = False
        while deadline is None or time.monotonic() < deadline:
            if any(w.poll() is not None for w in workers):
                print("a worker or the router exited; see its log", file=sys.stderr)
                return 1
            n, alerted, alerts = _alerted(client, f"{settings.redis_key_prefix}profile:*")
            print(
                f"profiles in redis: {n}/{customers_with_orders}; customers alerted: {alerted} ({alerts} alerts)",
                flush=True,
            )
            if n >= customers_with_orders and not shown:
                sample = _richest_customer(events)
                print(
                    "\nall profiles are live. Try, in another terminal:"
                    f"  pulse profile {sample}   |   pulse alerts --follow\n"
                )
                args.customer_id, args.json = sample, False
                cmd_profile(args)
                shown = True
                print("\nCtrl-C stops the stack.")
            time.sleep(2 if not shown else 5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        stack.close()
        Path(DEV_ENV_FILE).unlink(missing_ok=True)
        print("stopped broker, redis, workers and router")


#: what ``pulse bench`` says where benchmarks/ is absent (an installed package has no benchmarks/)
BENCH_NEEDS_CHECKOUT = "pulse bench needs a source checkout (git clone, then pip install -e .[dev])"


def _checkout() -> Path | None:
    """The source checkout this ``pulse`` runs from, or None when it is an installed package.

    benchmarks/ is not installed (it is measurement code, not the product): only a checkout
    (editable install) can run ``pulse bench``; everything else must work without it.
    """
    repo = Path(__file__).resolve().parent.parent
    return repo if (repo / "pyproject.toml").is_file() and (repo / "benchmarks" / "harness.py").is_file() else None


def _bench_harness() -> ModuleType | None:
    """benchmarks.harness of the checkout, imported only here; None in an installed package."""
    repo = _checkout()
    if repo is None:
        return None
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from benchmarks import harness

    return harness


def cmd_bench(args: argparse.Namespace) -> int:
    """The performance benchmark (issue 8): raw consumer, naive Faust, full scorer, latency, scaling, cost."""
    harness = _bench_harness()
    if harness is None:
        print(BENCH_NEEDS_CHECKOUT, file=sys.stderr)
        return 2
    return harness.main(args=args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pulse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run one scoring worker (settings from PULSE_* env vars)")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_worker)

    def traffic_args(p: argparse.ArgumentParser, customers: int) -> None:
        p.add_argument("--customers", type=int, default=customers, help="population size")
        p.add_argument("--days", type=int, default=365, help="length of the order history")
        p.add_argument("--seed", type=int, default=7)
        p.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
        p.add_argument("--bad-per-1000", type=float, default=0.0, help="malformed events mixed in per 1000")
        p.add_argument("--orders-only", action="store_true", help="only order events (default: the realistic mix)")

    p = sub.add_parser("simulate", help="send a realistic history of all four event kinds")
    traffic_args(p, 3000)
    p.add_argument("--progress-every", type=int, default=0)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("dev", help="embedded broker + redis + worker + sample traffic")
    traffic_args(p, 3000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run until Ctrl-C)")
    p.add_argument(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="tansu: the embedded broker, in memory (default); kafka: Apache Kafka (KRaft, needs java and the jars "
        "scripts/setup.sh fetches)",
    )
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("config", help="list every setting with its default (--effective: the values in force)")
    p.add_argument("--effective", action="store_true")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("replay", help="produce an order history (CSV) to the order topic, with progress")
    p.add_argument("file", help="CSV: customer_id, occurred_at, amount[, order_id, cost, status, currency]")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("score", help="score a history (order CSV, or JSON lines of all four kinds) offline")
    p.add_argument(
        "file",
        nargs="+",
        help="order CSV (customer_id, occurred_at, amount[, order_id, cost, status, currency]) or JSON lines "
        '(.jsonl/.ndjson/.json: {"kind": "order|survey|complaint|support", "event": {...}} per line); '
        "several files are scored as one history",
    )
    p.add_argument("--out", default="-", help="output CSV, one row per customer (default: stdout)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("fit", help="fit the CLV parameters (BG/NBD, Gamma-Gamma) on an order history (CSV)")
    p.add_argument("file", help="CSV: customer_id, occurred_at, amount[, order_id, cost, status, currency]")
    p.add_argument("--as-of", help="ISO date/time the history ends (default: its highest event time)")
    p.add_argument("--out", help="parameter file to write (default: PULSE_CLV_PARAMS_FILE)")
    p.add_argument("--time-unit-days", type=float, default=7.0, help="unit of t_x, T and alpha (default: weeks)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("alerts", help="print retention (churn) alerts, readable by a person")
    p.add_argument("--follow", "-f", action="store_true", help="keep waiting for new alerts until Ctrl-C")
    p.add_argument(
        "--new", action="store_true", help="only alerts raised from now on (default: from the start; --follow: this)"
    )
    p.add_argument(
        "--from-beginning", action="store_true", help="with --follow: print the topic's alerts first, then wait"
    )
    p.add_argument("--level", choices=["medium", "high"], help="only alerts of this level or above")
    p.add_argument("--vip", action="store_true", help="only VIP (priority) customers' alerts")
    p.add_argument("--customer", metavar="ID", help="only this customer's alerts")
    p.add_argument(
        "--since", metavar="WHEN", help="only alerts raised since WHEN: ISO date/time, or an age (30m, 12h, 7d, 2w)"
    )
    p.add_argument("--limit", type=int, metavar="N", help="stop after N alerts")
    p.add_argument("--json", action="store_true", help="one JSON alert per line")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("router", help="deliver retention alerts to chat robots, webhooks and e-mail (router.toml)")
    p.add_argument("--config", help="router configuration file (default: PULSE_ROUTER_CONFIG_FILE)")
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_router)

    p = sub.add_parser("stats", help="print the population indicators (NPS, CSAT, rates) from the population topic")
    p.add_argument("--json", action="store_true", help="one JSON object (ratios 0..1, times in ms)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the topic (default 10)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("bench", help="the performance benchmark on an embedded broker (see docs/benchmarks.md)")
    harness = _bench_harness()
    if harness is not None:
        harness.add_arguments(p)
    else:
        # installed package: any arguments reach cmd_bench, which says why it cannot run
        p.description = BENCH_NEEDS_CHECKOUT
        p.set_defaults(any_arguments=True)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile", help="print a customer's live profile from Redis")
    p.add_argument("customer_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
