"""``pulse``: the command line of customer-pulse."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from pulse.errors import EXIT_INTERRUPTED, CliError, debug_requested, explain, redact_url, usage_error
from pulse_config.settings import DEV_ENV_FILE, Settings, load_settings

if TYPE_CHECKING:
    from pulse.devstack import DevStack


def _profile_key(prefix: str, cid: str) -> str:
    from streams.sinks.redis_profiles import profile_key

    return profile_key(prefix, cid)


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    settings = load_settings()
    settings.scoring()  # a bad setting or CLV parameter file: one line now, not a traceback inside Faust
    run_worker(settings, loglevel=args.loglevel)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    events = _traffic(args)
    n = _send_traffic(load_settings(), events, args, progress_every=args.progress_every)
    print(f"sent {n} events")
    return 0


def _send_traffic(
    settings: Settings,
    events: list[tuple[str, dict]],
    args: argparse.Namespace,
    progress_every: int = 0,
    deadline: float | None = None,
) -> int:
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
            progress_every=progress_every,
            deadline=deadline,
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
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, **redis_client_kwargs(settings, sync=True))
    fields = client.hgetall(_profile_key(settings.redis_key_prefix, args.customer_id))
    if not fields:
        raise CliError(
            f"customer {args.customer_id}",
            f"no profile in Redis at {redact_url(settings.redis_url)}",
            "check the id; a profile appears once a worker scored the customer's first event",
        )
    profile = CustomerProfile.from_redis(fields)  # type: ignore[arg-type]  # decode_responses: str keys and values
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

    from pulse.history import Progress, count_rows, read_orders
    from streams.admin import ensure_topics
    from streams.security import kafka_client_kwargs

    settings = load_settings()
    path = _input_files([args.file])[0]
    first = read_orders(path, settings.base_currency)
    next(first, None)  # the columns (and the encoding) are checked before connecting to anything
    first.close()

    async def go() -> int:
        await ensure_topics(settings)
        producer = AIOKafkaProducer(**kafka_client_kwargs(settings), acks="all", linger_ms=5)
        progress = None
        sent = 0
        try:
            await producer.start()  # inside the try: a broker that is down must not leak the client
            if sys.stderr.isatty():  # a bar for a person watching; a log gets the summary line alone
                progress = Progress(count_rows(path), f"replay {path.name} -> {settings.topic_orders}")
            futures = []
            for key, value in read_orders(path, settings.base_currency):
                futures.append(await producer.send(settings.topic_orders, key=key, value=value))
                if len(futures) >= 1000:
                    await asyncio.gather(*futures)
                    if progress is not None:
                        progress.advance(len(futures))
                    sent += len(futures)
                    futures = []
            await asyncio.gather(*futures)
            if progress is not None:
                progress.advance(len(futures))
            sent += len(futures)
        finally:
            if progress is not None:
                progress.close()
            await producer.stop()
        return sent

    sent = asyncio.run(go())
    print(f"replayed {sent} rows to {settings.topic_orders}")
    return 0


def _input_files(names: list[str]) -> list[Path]:
    """The input files, each checked before anything is read: a typo in the last one costs nothing."""
    paths = [Path(name) for name in names]
    for path in paths:
        path.open("rb").close()  # FileNotFoundError, PermissionError, IsADirectoryError: one line, exit 2
    return paths


def _output_file(name: str, what: str) -> None:
    """An output file's folder must exist (checked before the work that would be written there)."""
    if name != "-" and not Path(name).resolve().parent.is_dir():
        raise usage_error(name, f"no folder {Path(name).parent} for the {what}", "create it, or give another path")


#: columns of ``pulse score --rejects``: where the row is, and why the worker would dead-letter it
REJECT_COLUMNS = ("file", "line", "kind", "reason", "detail")


def cmd_score(args: argparse.Namespace) -> int:
    """Score a history offline with the worker's processor; write one row per customer.

    The files are read as they are scored (one batch in memory), so memory holds the customers' states and
    profiles, not the input. Rejected rows are counted by reason, listed with --rejects, and make the exit
    status 1 unless --allow-rejects.
    """
    import csv
    from collections import Counter

    import orjson

    from pulse.history import JSON_LINES_SUFFIXES, Progress, count_lines, history_lines, profile_row, write_profiles
    from pulse.offline import Located, score_stream
    from streams.processor import Rejected

    settings = load_settings()
    paths = _input_files(args.file)
    _output_file(args.out, "profiles")
    if args.rejects:
        _output_file(args.rejects, "rejected rows")
    settings.scoring()  # a bad setting or parameter file is said before any reading
    topics = {**settings.input_topics(), "action": settings.topic_retention_actions}
    reasons: Counter[str] = Counter()
    rejects = open(args.rejects, "w", newline="", encoding="utf-8") if args.rejects else None  # noqa: SIM115
    writer = csv.writer(rejects, lineterminator="\n") if rejects is not None else None
    if writer is not None:
        writer.writerow(REJECT_COLUMNS)

    def on_rejected(rejected: Rejected, origin: tuple[str, int] | None) -> None:
        reasons[rejected.reason] += 1
        if writer is not None:
            file, line = origin if origin is not None else ("", "")
            detail = orjson.loads(rejected.record).get("detail", "")
            writer.writerow([file, line, rejected.kind, rejected.reason, detail])

    def located() -> Iterator[Located[tuple[str, int]]]:
        for path in paths:
            for line, kind, key, value in history_lines(path, settings.base_currency):
                yield Located(topics[kind], key, value, (str(path), line))

    progress = None
    if sys.stderr.isatty():  # a bar only for a person watching; a log or a pipe gets the summary line alone
        total = sum(count_lines(p) - (p.suffix.lower() not in JSON_LINES_SUFFIXES) for p in paths)
        progress = Progress(total, "score")
    try:
        result = score_stream(located(), settings, on_rejected, on_batch=progress.advance if progress else None)
    finally:
        if progress is not None:
            progress.close()
        if rejects is not None:
            rejects.close()
    profiles = list(result.profiles.values())
    if args.out == "-":
        write_profiles(profiles, sys.stdout)
    else:
        with open(args.out, "w", newline="", encoding="utf-8") as out:
            write_profiles(profiles, out)
    vips = sum(1 for p in profiles if profile_row(p)["vip"] == "true")
    rejected = sum(reasons.values())
    print(
        f"scored {result.records} rows: {len(profiles)} customers, {vips} VIP, {rejected} rejected"
        + (f" ({', '.join(f'{k}: {n}' for k, n in reasons.most_common())})" if reasons else ""),
        file=sys.stderr,
    )
    if rejected and not args.allow_rejects:
        listed = (
            f"{args.rejects} lists them (file, line, reason, detail)" if args.rejects else "--rejects FILE lists them"
        )
        raise CliError(
            ", ".join(str(p) for p in paths),
            f"{rejected} of {result.records} rows rejected",
            f"{listed}; --allow-rejects exits 0 anyway",
        )
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit the CLV parameters (BG/NBD, Gamma-Gamma) on an order history; write the parameter file."""
    from pulse.fit import FitAdvice, fit_history, parse_as_of
    from pulse_config.clv_params import save_clv_params

    settings = load_settings()
    path = _input_files([args.file])[0]
    out = Path(args.out or settings.clv_params_file)
    try:
        as_of = parse_as_of(args.as_of) if args.as_of else None
    except ValueError as exc:
        raise usage_error(f"--as-of {args.as_of}", str(exc), "give an ISO date or date-time, e.g. 2026-06-01") from None
    try:
        report = fit_history(path, settings, as_of, args.time_unit_days)
    except FitAdvice as exc:
        raise usage_error(str(path), exc.problem, exc.hint) from None
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


def cmd_console(args: argparse.Namespace) -> int:
    """The service console: at-risk queue, customer pages, actions, VIPs, population (streams/console)."""
    import logging

    from streams.console.app import run_console

    logging.basicConfig(level=args.loglevel.upper(), format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    run_console(load_settings())
    return 0


def cmd_router(args: argparse.Namespace) -> int:
    """Deliver retention alerts to the destinations of the router configuration file."""
    from streams.router.config import load_config

    settings = load_settings()
    path = args.config or settings.router_config_file
    config = load_config(path)  # RouterConfigError: one line naming the file, exit 2 (pulse/errors.py)
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


def cmd_topics(args: argparse.Namespace) -> int:
    """Create every topic of the worker and the router that is missing, with the settings in force, and list them.

    Why a command of its own: on a cluster whose ACLs do not let the worker create topics, an admin runs this
    under the admin's credentials (the same PULSE_* settings otherwise), then grants the worker's principal what
    ``--acls`` prints. The output is a shell script: the topics as a comment, the ``kafka-acls.sh`` lines."""
    from streams.admin import acls, console_topics, ensure_topics, worker_topics
    from streams.router.service import ensure_router_topics

    settings = load_settings()

    async def go() -> None:
        await ensure_topics(settings)
        await ensure_router_topics(settings)

    asyncio.run(go())
    topics = list(dict.fromkeys([*worker_topics(settings), *console_topics(settings)]))
    print(f"# {len(topics)} topics on {redact_url(settings.broker_url)} (created where missing): {', '.join(topics)}")
    if args.acls:
        print(f"# what {args.acls} needs to run pulse {args.role} (docs/operations.md, 'A cluster with ACLs')")
        print("\n".join(acls(settings, args.acls, settings.broker_bootstrap(), args.role)))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the population indicators (NPS, CSAT, rates) of the whole population."""
    import json

    from streams.stats import format_stats, read_stats, stats_json

    settings = load_settings()
    stats = asyncio.run(read_stats(settings, timeout=args.timeout))
    print(json.dumps(stats_json(stats), indent=2) if args.json else format_stats(stats, settings))
    return 0 if stats.values is not None else 1


def settings_table() -> str:
    """Markdown table of every setting: env var, default, meaning (docs/settings.md is this table).

    A list, tuple or dict default is shown as JSON, the form its env var accepts (a Python repr pasted
    back into the variable would not parse)."""
    import json

    from pulse_config.settings import Settings

    rows = ["| env var | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        if isinstance(default, list | tuple | dict):
            default = json.dumps(default, default=str)
        rows.append(f"| `PULSE_{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(rows)


def env_value(value: object) -> str:
    """A setting's value in the form its ``PULSE_*`` variable accepts: JSON for lists and maps (what
    pydantic-settings parses), true/false, numbers and text as they are; quoted for a shell and for an env
    file (``.pulse/dev.env``, ``PULSE_ENV_FILE``) where needed, so a printed line pastes back unchanged."""
    import json
    import shlex

    if isinstance(value, list | dict | tuple):
        # a quote inside as \u0027: the single-quoted form then reads the same in a shell and an env file
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False).replace("'", "\\u0027")
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = ""
    else:
        text = str(value)
    return shlex.quote(text) if text else ""


def effective_lines(settings: Settings) -> list[str]:
    """``PULSE_NAME=value`` per setting (see :func:`env_value`); a secret that is set is a comment line,
    so pasting the output back never replaces it with a mask."""
    from pydantic import SecretStr

    lines = []
    for name, value in settings.model_dump(mode="json").items():
        var = f"PULSE_{name.upper()}"
        raw = getattr(settings, name)
        if isinstance(raw, SecretStr) and raw.get_secret_value():
            lines.append(f"# {var} is set (not shown)")
        else:
            lines.append(f"{var}={env_value(value)}")
    return lines


def cmd_config(args: argparse.Namespace) -> int:
    if args.effective:
        print("\n".join(effective_lines(load_settings())))
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


#: ``pulse dev``: time the workers and the router get to stop on SIGTERM before SIGKILL (with the broker still
#: up, a worker commits, leaves its group and closes its store in a few seconds)
DEV_STOP_SECONDS = 30.0
#: ``pulse dev``: seconds between two looks at Redis while the profiles arrive, and once all are live
DEV_POLL_SECONDS = 2.0
DEV_LIVE_POLL_SECONDS = 5.0


def _dev_child(name: str, command: list[str], env: dict[str, str], log_dir: Path) -> subprocess.Popen:
    """A worker, the router or the console of ``pulse dev``: its own process group (the terminal's Ctrl-C reaches only
    ``pulse dev``, which stops it before the broker), stopped with its parent if that dies, output in a log."""
    from pulse.devstack import _die_with_parent

    return subprocess.Popen(
        [sys.executable, "-m", "pulse", *command],
        env=env,
        stdout=(log_dir / f"{name}.log").open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        process_group=0,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only a prctl, no locks taken
    )


def _stop_dev(children: list[tuple[str, subprocess.Popen]], stack: DevStack) -> None:
    """Stop ``pulse dev``: the workers and the router first (SIGTERM to all at once, SIGKILL after
    :data:`DEV_STOP_SECONDS`), then Redis and the broker. The other order left each worker retrying a
    broker that was gone for its whole session (30 s each, thousands of ERROR lines, then SIGKILL)."""
    import signal

    started = time.monotonic()
    # a second Ctrl-C or SIGTERM must not cut the stop short
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        running = [(name, proc) for name, proc in children if proc.poll() is None]
        print(f"stopping… {', '.join(name for name, _ in running) or 'nothing running'}, then the broker and redis")
        sys.stdout.flush()
        for _, proc in running:
            proc.terminate()
        killed = []
        for name, proc in running:
            try:
                proc.wait(max(0.0, started + DEV_STOP_SECONDS - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed.append(name)
        print(
            f"stopped workers, router and console in {time.monotonic() - started:.1f} s"
            + (f" (killed after {DEV_STOP_SECONDS:g} s: {', '.join(killed)})" if killed else ""),
            flush=True,
        )
        stack.close()
        Path(DEV_ENV_FILE).unlink(missing_ok=True)
        print(f"stopped broker and redis; everything stopped in {time.monotonic() - started:.1f} s", flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a service manager, a CI runner's cancel) stops ``pulse dev`` as Ctrl-C does."""
    raise KeyboardInterrupt


def cmd_dev(args: argparse.Namespace) -> int:
    """Broker + Redis + worker(s) + sample traffic, until Ctrl-C or --duration."""
    import signal

    from pulse.devstack import DevStack, free_port
    from streams.admin import ensure_topics
    from streams.security import redis_client_kwargs

    load_settings().scoring()  # a bad setting or parameter file: said before anything starts
    # --duration counts from here: the servers' start and the traffic are inside it
    deadline = time.monotonic() + args.duration if args.duration else None
    log_dir = Path(".pulse/logs")
    # the servers run in process groups of their own: a Ctrl-C while they start is kept for after
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: interrupted.append(signum))
    try:
        stack = DevStack.start(log_dir, broker=args.broker, own_group=True)
    except RuntimeError as exc:  # a server missing or not starting (devstack says which, and its log)
        raise CliError(f"{args.broker} and redis", str(exc), f"their logs are in {log_dir}") from None
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, _interrupt)
    children: list[tuple[str, subprocess.Popen]] = []
    try:
        if interrupted:
            raise KeyboardInterrupt
        env = {**stack.env(), "PULSE_API_PORT": str(free_port())}
        # A local broker with local workers: short group joins, unless set.
        for name, value in DEV_DEFAULTS.items():
            env.setdefault(name, os.environ.get(name, value))
        _write_dev_env(env)
        os.environ.update(env)
        settings = load_settings()
        kind = "Tansu, in memory" if stack.broker_name == "tansu" else "Apache Kafka, KRaft, temporary storage"
        print(f"broker  {stack.broker_url}   ({kind}; log {stack.broker.log})")
        print(f"redis   {stack.redis_url}")
        print(f"api     http://127.0.0.1:{env['PULSE_API_PORT']}/customers/<id>  (also /vips, /health, /ready)")
        asyncio.run(ensure_topics(settings))
        for i in range(args.workers):
            # every worker its own metrics endpoint; the API on the first one
            metrics = str(free_port())
            api = env["PULSE_API_PORT"] if i == 0 else "0"
            worker_env = {**os.environ, **env, "PULSE_METRICS_PORT": metrics, "PULSE_API_PORT": api}
            children.append((f"worker-{i}", _dev_child(f"worker-{i}", ["worker"], worker_env, log_dir)))
            print(f"worker-{i} metrics http://127.0.0.1:{metrics}/metrics  (log {log_dir}/worker-{i}.log)")
        router_config = _dev_router_config(settings, log_dir)
        actions_port = str(free_port())
        router_env = {
            **os.environ,
            **env,
            "PULSE_ROUTER_CONFIG_FILE": router_config,
            "PULSE_ROUTER_METRICS_PORT": "0",
            "PULSE_ROUTER_API_PORT": actions_port,
        }
        children.append(("router", _dev_child("router", ["router"], router_env, log_dir)))
        print(
            f"router  {router_config} (log {log_dir}/router.log); POST http://127.0.0.1:{actions_port}/alerts/<id>/acknowledge"
        )
        console_port = str(free_port())
        console_env = {**os.environ, **env, "PULSE_CONSOLE_PORT": console_port}
        children.append(("console", _dev_child("console", ["console"], console_env, log_dir)))
        print(f"console http://127.0.0.1:{console_port}/  (log {log_dir}/console.log)")
        events = _traffic(args)
        sent = _send_traffic(settings, events, args, deadline=deadline)
        if sent < len(events):
            print(f"--duration {args.duration:g} s ran out after {sent} of {len(events)} events", flush=True)
            events = events[:sent]
        customers_with_orders = len({e["customer_id"] for _, e in events})
        client = redis.Redis.from_url(
            settings.redis_url, decode_responses=True, **redis_client_kwargs(settings, sync=True)
        )
        shown = False
        alerted_before = None
        while deadline is None or time.monotonic() < deadline:
            for name, proc in children:
                if proc.poll() is not None:
                    raise CliError(name, f"exited with status {proc.returncode}", f"see {log_dir}/{name}.log")
            n, alerted, alerts = _alerted(client, f"{settings.redis_key_prefix}profile:*")
            if not shown:
                print(f"profiles in redis: {n}/{customers_with_orders}; customers alerted: {alerted} ({alerts} alerts)")
            elif (alerted, alerts) != alerted_before:
                print(f"customers alerted: {alerted} ({alerts} alerts)")
            alerted_before = (alerted, alerts)
            sys.stdout.flush()
            if n >= customers_with_orders and not shown:
                sample = _richest_customer(events)
                print(
                    "\nall profiles are live. Try, in another terminal:"
                    f"  pulse profile {sample}   |   pulse alerts --follow\n"
                )
                args.customer_id, args.json = sample, False
                cmd_profile(args)
                shown = True
                print("\nCtrl-C stops the stack.", flush=True)
            time.sleep(DEV_LIVE_POLL_SECONDS if shown else DEV_POLL_SECONDS)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_dev(children, stack)
        signal.signal(signal.SIGTERM, previous_term)


#: what ``pulse bench`` says where benchmarks/ is absent (an installed package has no benchmarks/)
BENCH_NEEDS_CHECKOUT = "pulse bench needs a source checkout (git clone, then pip install -e .[dev])"


def _checkout() -> Path | None:
    """The source checkout this ``pulse`` runs from, or None when it is an installed package.

    benchmarks/ is not installed (it is measurement code, not the product): only a checkout
    (editable install) can run ``pulse bench``; everything else must work without it.
    """
    repo = Path(__file__).resolve().parent.parent
    return repo if (repo / "pyproject.toml").is_file() and (repo / "benchmarks" / "harness.py").is_file() else None


def cmd_bench(args: argparse.Namespace) -> int:
    """The performance benchmark (issues 8, 18): raw consumer, naive Faust, Quix Streams peers, full scorer (on
    each ``--broker``), latency, scaling, processor, cost, recovery; each target with its verdict.

    Runs ``python -m benchmarks`` of the checkout with the arguments as given (``pulse bench --help`` is its
    help): benchmarks/ sits above this CLI in the layers (it drives pulse's dev stack), so the CLI starts it
    instead of importing it.
    """
    repo = _checkout()
    if repo is None:
        print(BENCH_NEEDS_CHECKOUT, file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
    return subprocess.call([sys.executable, "-m", "benchmarks", *args.passed_on], env=env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pulse", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}", help="print the version")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error instead of its one-line explanation (also PULSE_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run one scoring worker (settings from PULSE_* env vars)")
    p.add_argument("--loglevel", default="info", help="log level: debug, info, warning, error (default info)")
    p.set_defaults(func=cmd_worker)

    def traffic_args(p: argparse.ArgumentParser, customers: int) -> None:
        p.add_argument("--customers", type=int, default=customers, help="population size")
        p.add_argument("--days", type=int, default=365, help="length of the order history")
        p.add_argument("--seed", type=int, default=7, help="random seed of the generated history (default 7)")
        p.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
        p.add_argument("--bad-per-1000", type=float, default=0.0, help="malformed events mixed in per 1000")
        p.add_argument("--orders-only", action="store_true", help="only order events (default: the realistic mix)")

    p = sub.add_parser("simulate", help="send a realistic history of all four event kinds")
    traffic_args(p, 3000)
    p.add_argument(
        "--progress-every", type=int, default=0, help="print a progress line every this many events (0: none)"
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("dev", help="embedded broker + redis + worker + sample traffic")
    traffic_args(p, 3000)
    p.add_argument("--workers", type=int, default=1, help="scoring workers to start (default 1)")
    p.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop this many seconds after the start, traffic included (0: run until Ctrl-C)",
    )
    p.add_argument(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="tansu: the embedded broker, in memory (default); kafka: Apache Kafka (KRaft, needs java and the jars "
        "scripts/setup.sh fetches)",
    )
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("config", help="list every setting with its default (--effective: the values in force)")
    p.add_argument(
        "--effective",
        action="store_true",
        help="print the values in force as PULSE_NAME=value lines, in the form the variables accept (JSON for "
        "lists and maps), so they can be pasted back",
    )
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
    p.add_argument(
        "--rejects",
        metavar="FILE",
        help="write every rejected row to this CSV: file, line, kind, reason, detail (the worker's dead-letter reason)",
    )
    p.add_argument(
        "--allow-rejects",
        action="store_true",
        help="exit 0 even when rows were rejected (default: exit 1, after writing the profiles)",
    )
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
    p.add_argument("--loglevel", default="info", help="log level: debug, info, warning, error (default info)")
    p.set_defaults(func=cmd_router)

    p = sub.add_parser("console", help="serve the service console web app (PULSE_CONSOLE_PORT, PULSE_API_TOKEN)")
    p.add_argument("--loglevel", default="info", help="log level: debug, info, warning, error (default info)")
    p.set_defaults(func=cmd_console)

    p = sub.add_parser("stats", help="print the population indicators (NPS, CSAT, rates) from the population topic")
    p.add_argument("--json", action="store_true", help="one JSON object (ratios 0..1, times in ms)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to read the topic to its end (default 10)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "topics", help="create the worker's and the router's topics (an admin, on a cluster with ACLs) and list them"
    )
    p.add_argument(
        "--acls",
        metavar="PRINCIPAL",
        default="",
        help="also print the kafka-acls.sh lines that let PRINCIPAL (e.g. User:pulse) run --role",
    )
    p.add_argument(
        "--role",
        choices=("worker", "router", "console"),  # the roles streams.admin.acls knows
        default="worker",
        help="whose ACLs --acls prints: a scoring worker's (default), pulse router's or pulse console's",
    )
    p.set_defaults(func=cmd_topics)

    # every argument, --help included, goes to python -m benchmarks (or, installed, to cmd_bench's "why not")
    p = sub.add_parser(
        "bench", add_help=False, help="the performance benchmark on an embedded broker (see docs/benchmarks.md)"
    )
    p.set_defaults(func=cmd_bench, any_arguments=True)

    p = sub.add_parser("profile", help="print a customer's live profile from Redis")
    p.add_argument("customer_id", help="the customer's id, as in its events")
    p.add_argument("--json", action="store_true", help="the profile as one JSON object")
    p.set_defaults(func=cmd_profile)
    return parser


#: sub-commands that run until stopped and log what their clients do (their logs are their diagnosis)
SERVICE_COMMANDS = frozenset({"worker", "router", "console", "bench"})


def version() -> str:
    """The installed distribution's version (a source tree without metadata says so)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("customer-pulse")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def main(argv: list[str] | None = None) -> int:
    """Parse, dispatch, and turn an ordinary mistake into one line and an exit status (pulse/errors.py):
    2 for usage errors, 1 for runtime failures, the same for every sub-command."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.passed_on = unknown
    debug = args.debug or debug_requested()
    if not debug and args.command not in SERVICE_COMMANDS:
        # a one-shot command whose broker is down: aiokafka logs each failed connect before raising;
        # the error line below says it once (the services keep their clients' logs)
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        error = None if debug else explain(exc)
        if error is None:
            raise  # not an ordinary mistake (or --debug): the traceback is what helps
        print(error.line(args.command), file=sys.stderr)
        return error.status


if __name__ == "__main__":
    sys.exit(main())
