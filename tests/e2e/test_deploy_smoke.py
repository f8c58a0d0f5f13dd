"""deploy/ started as written, without Docker: the compose topology run natively on loopback.

No Docker engine exists here, so each compose service runs as a process with the compose file's own
settings, and only hosts, ports and paths are rewritten (a container's port or path becomes a free
loopback port or a temporary folder):

* **kafka**: Apache Kafka (pulse.devstack's KRaft starter) with every ``KAFKA_*`` variable of the
  service, translated to server properties as the apache/kafka image does; ``KAFKA_LOG_DIRS`` points
  into the folder standing in for the ``kafka-data`` volume.
* **redis**: redis-server with the service's command (``--requirepass`` with the default password).
* **worker** ×2 (``deploy.replicas``): the Dockerfile's entry point ``pulse worker`` with the
  Dockerfile's ``ENV`` and then the service's environment (RocksDB store, 8 partitions, API and
  metrics), each with its own data folder (the anonymous ``/data`` volume) and the ``./params``
  folder holding a parameter file made by ``pulse fit``.
* **router**: ``pulse router`` with the image's ``ENV`` and the service's environment, its ``./router``
  configuration folder (the file destination's path moved into the folder standing in for the
  ``router-data`` volume); its metrics and actions API on free loopback ports.
* **prometheus**: Debian's ``prometheus`` with the service's command and deploy/prometheus's config
  and rules, only the scrape targets rewritten (the DNS discovery of ``worker`` becomes the two
  workers' metrics ports, that of ``router`` the router's).

Then, while generated traffic of the four kinds flows (with malformed events and surveys that raise
churn alerts, so the dead-letter and alert panels have something to show): both targets are up, the
alert rules load and evaluate, and every query of the Grafana dashboard returns data. A worker is
stopped (``PulseWorkerDown`` goes pending) and started again: its customers' counts and values go on
from where they were (RocksDB + changelog), though Redis was flushed in between.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis
import yaml
from aiokafka.partitioner import murmur2
from prometheus_client.parser import text_string_to_metric_families

from pulse.devstack import KafkaBroker, Server, free_port, kafka_available, kafka_props_from_env, stop_process
from pulse.simulate import BAD_PAYLOADS, generate_events, generate_orders, send
from streams.sinks.redis_profiles import profile_key
from testing.stack import CONVERGE_SECONDS, REPO, TEST_KAFKA_JVM_OPTIONS, produce, wait_until

pytestmark = pytest.mark.e2e

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "customer-pulse.json"
#: Grafana's $__rate_interval for the compose Prometheus (scrape_interval 15s): max(4 x 15s, ...)
RATE_INTERVAL = "1m"
#: traffic: a generated history (customers, days) then live events, at this rate, with malformed events and
#: alert-raising surveys mixed in; the history spans two population periods (30 days) so that every period
#: indicator is defined soon
TRAFFIC_CUSTOMERS = 800
TRAFFIC_DAYS = 60
TRAFFIC_RATE = 60.0
#: bound on the traffic (the fixture stops it when the module is done)
TRAFFIC_MAX_EVENTS = 100_000
BAD_PER_1000 = 10
ALERT_TRACER_EVERY = 40
#: customers outside the traffic whose state is checked across the worker restart
STATE_CUSTOMERS = 24
#: bound on waiting for Prometheus (targets, rules, panels, alert state): a few scrape intervals
PROMETHEUS_SECONDS = 120.0


# --- the compose file, read as Docker Compose would -------------------------------------------------


def interpolate(value: object, environ: dict[str, str] | None = None) -> str:
    """Compose's variable substitution: ``${VAR:-default}``, ``${VAR}``, ``$$`` (with no .env file)."""
    environ = environ or {}

    def sub(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        return environ.get(name) or (default if default is not None else "")

    return re.sub(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}", sub, str(value))


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def volume_map(service: dict, root: Path, binds: Path | None = None) -> dict[str, Path]:
    """Container path -> host folder for a service's volumes: named ones under ``root``, binds from deploy/.

    With ``binds``, a bind mount's source folder is that folder's namesake under ``binds`` instead
    (for files the test writes, which must not land in the repository).
    """
    mapped = {}
    for n, spec in enumerate(service.get("volumes", [])):
        parts = spec.split(":")
        if len(parts) == 1:  # anonymous volume
            mapped[parts[0]] = root / f"anonymous-{n}"
        elif parts[0].startswith("."):
            mapped[parts[1]] = binds / parts[0] if binds else (COMPOSE.parent / parts[0]).resolve()
        else:
            mapped[parts[1]] = root / parts[0]
    return mapped


def rewrite_path(value: str, volumes: dict[str, Path]) -> str:
    """A container path inside a volume -> the same path in the host folder standing in for it."""
    for target, host in sorted(volumes.items(), key=lambda kv: -len(kv[0])):
        if value == target or value.startswith(target.rstrip("/") + "/"):
            return str(host / Path(value).relative_to(target))
    return value


def dockerfile_env() -> dict[str, str]:
    """The image's ``ENV`` (PULSE_* defaults the compose environment then overrides)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def kafka_properties(service: dict, ports: dict[int, int], volumes: dict[str, Path]) -> dict[str, str]:
    """The service's KAFKA_* settings as server properties, hosts -> 127.0.0.1, ports remapped, dirs mapped."""
    env = {name: interpolate(value) for name, value in service["environment"].items()}
    props = kafka_props_from_env(env)

    def endpoint(match: re.Match) -> str:
        return f"{match.group(1)}127.0.0.1:{ports[int(match.group(3))]}"

    for key in ("listeners", "advertised.listeners", "controller.quorum.voters"):
        props[key] = re.sub(r"(://|@)([^:,/@]*):(\d+)", endpoint, props[key])
    assert "log.dirs" in props, "no KAFKA_LOG_DIRS: Kafka writes into the image's /tmp default, not the volume"
    props["log.dirs"] = ",".join(rewrite_path(d, volumes) for d in props["log.dirs"].split(","))
    return props


# --- the running topology ---------------------------------------------------------------------------


def http_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class Worker:
    name: str
    env: dict[str, str]
    cwd: Path
    metrics_port: int
    api_port: int
    proc: subprocess.Popen | None = None
    starts: int = 0
    #: the image's CMD, and the path that answers once it is ready (the router: its API's /health)
    command: str = "worker"
    ready_path: str = "/ready"

    @property
    def log(self) -> Path:
        return self.cwd / f"{self.name}.log"

    def start(self) -> None:
        self.starts += 1
        # the image's ENTRYPOINT ["pulse"] and CMD ["worker"] (the router service: command ["router"])
        pulse = str(Path(sys.executable).parent / "pulse")
        with self.log.open("ab") as out:
            out.write(f"\n--- start {self.starts}\n".encode())
        self.proc = subprocess.Popen(
            [pulse, self.command],
            cwd=self.cwd,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.api_port}{self.ready_path}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        # stop_grace_period (40 s) is what compose gives it before SIGKILL
        stop_process(self.proc, 40)
        return self.proc.returncode

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Topology:
    root: Path
    kafka: KafkaBroker
    redis: Server
    redis_password: str
    workers: list[Worker]
    prometheus: Server
    prometheus_port: int
    settings_env: dict[str, str]
    params_file: Path
    router: Worker
    console: Worker

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    def redis_client(self) -> redis.Redis:
        return redis.Redis(port=self.redis.port, password=self.redis_password, decode_responses=True)

    def prom(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return http_json(f"http://127.0.0.1:{self.prometheus_port}{path}{query}")

    def diagnostics(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.tail()}" for w in [*self.workers, self.router, self.console])


def fit_parameter_file(folder: Path, env: dict[str, str]) -> Path:
    """``pulse fit`` on a generated order history: the file the ./params mount brings to the workers."""
    history = folder / "orders.csv"
    with history.open("w", newline="") as out:
        writer = csv.DictWriter(out, ["customer_id", "occurred_at", "amount", "order_id", "status", "currency"])
        writer.writeheader()
        for order in generate_orders(300, 365, seed=21):
            writer.writerow({k: order[k] for k in writer.fieldnames})
    params = Path(env["PULSE_CLV_PARAMS_FILE"])
    params.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pulse", "fit", str(history), "--out", str(params)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return params


def start_prometheus(service: dict, root: Path, targets: dict[str, list[str]]) -> tuple[Server, int]:
    """Prometheus with the service's command and config; each job found by DNS (a compose service) scrapes the
    processes standing in for that service instead (``targets``: job name -> host:port)."""
    volumes = volume_map(service, root)
    config_dir = root / "prometheus-config"
    shutil.copytree(volumes["/etc/prometheus"], config_dir)
    volumes["/etc/prometheus"] = config_dir
    config_path = config_dir / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    port = free_port()
    for job in config["scrape_configs"]:
        if "dns_sd_configs" in job:  # DNS discovery of a compose service -> its processes
            job.pop("dns_sd_configs")
            job["static_configs"] = [{"targets": targets[job["job_name"]]}]
        else:
            for static in job.get("static_configs", []):
                static["targets"] = [f"127.0.0.1:{port}" if t == "localhost:9090" else t for t in static["targets"]]
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    args = [rewrite_path_flag(flag, volumes) for flag in service["command"]]
    for path in volumes.values():
        path.mkdir(parents=True, exist_ok=True)
    log = root / "prometheus.log"
    binary = shutil.which("prometheus")
    assert binary, "prometheus not on PATH (Debian package prometheus, installed by scripts/setup.sh)"
    proc = subprocess.Popen(
        [binary, *args, f"--web.listen-address=127.0.0.1:{port}"],
        cwd=root,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    server = Server("prometheus", port, proc, log)
    if not wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/-/ready") or proc.poll() is not None, 60):
        server.stop()
        raise AssertionError(f"prometheus not ready; see {log}")
    assert proc.poll() is None, log.read_text()[-3000:]
    return server, port


def start_router(service: dict, cwd: Path, base: dict[str, str], broker_port: int, redis_port: int) -> Worker:
    """The router service: the image's ENV, then its environment; its configuration folder copied with the
    container paths of its volumes (the file destination) rewritten to their stand-in folders."""
    cwd.mkdir()
    volumes = volume_map(service, cwd / "volumes", binds=cwd / "binds")
    env = {**base, **dockerfile_env(), **{k: interpolate(v) for k, v in service["environment"].items()}}
    config_file = Path(env["PULSE_ROUTER_CONFIG_FILE"])
    source = next(spec.split(":")[0] for spec in service["volumes"] if spec.split(":")[1] == str(config_file.parent))
    folder = volumes[str(config_file.parent)]
    shutil.copytree(COMPOSE.parent / source, folder)
    text = (folder / config_file.name).read_text()
    for target, host in volumes.items():
        if target != str(config_file.parent):
            host.mkdir(parents=True, exist_ok=True)
            text = text.replace(f'"{target}/', f'"{host}/')
    (folder / config_file.name).write_text(text)
    env.update(
        {
            "PULSE_BROKER_URL": f"kafka://127.0.0.1:{broker_port}",
            "PULSE_REDIS_URL": re.sub(r"//redis:\d+", f"//127.0.0.1:{redis_port}", env["PULSE_REDIS_URL"]),
            "PULSE_METRICS_HOST": "127.0.0.1",
            "PULSE_API_HOST": "127.0.0.1",
            "PULSE_ROUTER_CONFIG_FILE": rewrite_path(str(config_file), volumes),
            "PULSE_ROUTER_METRICS_PORT": str(free_port()),
            "PULSE_ROUTER_API_PORT": str(free_port()),
        }
    )
    router = Worker(
        "router",
        env,
        cwd,
        int(env["PULSE_ROUTER_METRICS_PORT"]),
        int(env["PULSE_ROUTER_API_PORT"]),
        command=service["command"][0],
        ready_path="/health",
    )
    router.start()
    assert wait_until(lambda: router.ready() or router.proc.poll() is not None, CONVERGE_SECONDS), router.tail()
    assert router.proc.poll() is None, router.tail()
    return router


def start_console(service: dict, cwd: Path, base: dict[str, str], broker_port: int, redis_port: int) -> Worker:
    """The console service: the image's ENV, then its environment (the token's compose default included); its
    port a free loopback one (its pages, /health and /metrics are on it)."""
    cwd.mkdir()
    env = {**base, **dockerfile_env(), **{k: interpolate(v) for k, v in service["environment"].items()}}
    env.update(
        {
            "PULSE_BROKER_URL": f"kafka://127.0.0.1:{broker_port}",
            "PULSE_REDIS_URL": re.sub(r"//redis:\d+", f"//127.0.0.1:{redis_port}", env["PULSE_REDIS_URL"]),
            "PULSE_CONSOLE_HOST": "127.0.0.1",
            "PULSE_CONSOLE_PORT": str(free_port()),
        }
    )
    port = int(env["PULSE_CONSOLE_PORT"])
    console = Worker("console", env, cwd, port, port, command=service["command"][0], ready_path="/health")
    console.start()
    assert wait_until(lambda: console.ready() or console.proc.poll() is not None, CONVERGE_SECONDS), console.tail()
    assert console.proc.poll() is None, console.tail()
    return console


def rewrite_path_flag(flag: str, volumes: dict[str, Path]) -> str:
    name, sep, value = flag.partition("=")
    return f"{name}={rewrite_path(value, volumes)}" if sep and value.startswith("/") else flag


def start_redis(service: dict, root: Path) -> tuple[Server, str]:
    command = [interpolate(part) for part in service["command"]]
    password = command[command.index("--requirepass") + 1]
    port = free_port()
    log = root / "redis.log"
    binary = shutil.which("redis-server")
    assert binary, "redis-server not on PATH"
    proc = subprocess.Popen(
        [binary, *command[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root), "--logfile", ""],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    server = Server("redis", port, proc, log)
    client = redis.Redis(port=port, password=password)
    assert wait_until(lambda: _pings(client) or proc.poll() is not None, 30), log.read_text()
    return server, password


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    reason = kafka_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Apache Kafka cannot start under CI: {reason}")
        pytest.skip(reason)
    if shutil.which("prometheus") is None:
        reason = "prometheus not installed (Debian package prometheus; scripts/setup.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("compose")
    spec = compose()
    services = spec["services"]
    started: list = []
    try:
        # kafka: the service's KAFKA_* settings; container ports -> free loopback ports
        kafka_service = services["kafka"]
        kafka_ports = {
            int(p): free_port() for p in re.findall(r":(\d+)", kafka_service["environment"]["KAFKA_LISTENERS"])
        }
        props = kafka_properties(kafka_service, kafka_ports, volume_map(kafka_service, root / "volumes"))
        assert props["log.dirs"].startswith(str(root / "volumes" / "kafka-data")), props["log.dirs"]
        kafka = KafkaBroker.start(root / "kafka", props, jvm_options=TEST_KAFKA_JVM_OPTIONS)
        started.append(kafka)
        assert kafka.bootstrap == f"127.0.0.1:{kafka_ports[9092]}"

        redis_server, password = start_redis(services["redis"], root)
        started.append(redis_server)

        # workers: the image's ENV, then the service's environment; hosts, ports and paths rewritten
        worker_service = services["worker"]
        base = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        compose_env = {
            **dockerfile_env(),
            **{k: interpolate(v) for k, v in worker_service["environment"].items()},
        }
        assert compose_env["PULSE_STORE"] == "rocksdb://" and compose_env["PULSE_PARTITIONS"] == "8"
        broker_port = int(compose_env["PULSE_BROKER_URL"].rsplit(":", 1)[1])
        workers = []
        params_file = None
        for n in range(1, int(worker_service["deploy"]["replicas"]) + 1):
            cwd = root / f"worker-{n}"
            cwd.mkdir()
            # the ./params bind mount is shared by the replicas: one folder, outside the repository
            volumes = volume_map(worker_service, cwd / "volumes", binds=root / "binds")
            env = {
                **base,
                **compose_env,
                "PULSE_BROKER_URL": f"kafka://127.0.0.1:{kafka_ports[broker_port]}",
                "PULSE_REDIS_URL": re.sub(
                    r"//redis:\d+", f"//127.0.0.1:{redis_server.port}", compose_env["PULSE_REDIS_URL"]
                ),
                # tests reach only loopback (the compose 0.0.0.0 is for a container's network)
                "PULSE_METRICS_HOST": "127.0.0.1",
                "PULSE_API_HOST": "127.0.0.1",
                "PULSE_METRICS_PORT": str(free_port()),
                "PULSE_API_PORT": str(free_port()),
            }
            for name in ("PULSE_DATA_DIR", "PULSE_CLV_PARAMS_FILE"):
                env[name] = rewrite_path(env[name], volumes)
            assert env["PULSE_DATA_DIR"] != compose_env["PULSE_DATA_DIR"], "data dir not on a volume"
            if params_file is None:
                params_file = fit_parameter_file(root, env)
            workers.append(Worker(f"worker-{n}", env, cwd, int(env["PULSE_METRICS_PORT"]), int(env["PULSE_API_PORT"])))
        for worker in workers:
            worker.start()
        started.extend(workers)
        assert wait_until(lambda: all(w.ready() or w.proc.poll() is not None for w in workers), CONVERGE_SECONDS)
        assert all(w.proc.poll() is None and w.ready() for w in workers), "\n".join(w.tail() for w in workers)

        router = start_router(services["router"], root / "router", base, kafka_ports[broker_port], redis_server.port)
        started.append(router)

        console = start_console(
            services["console"], root / "console", base, kafka_ports[broker_port], redis_server.port
        )
        started.append(console)

        prometheus, prometheus_port = start_prometheus(
            services["prometheus"],
            root / "prometheus",
            {
                "customer-pulse": [f"127.0.0.1:{w.metrics_port}" for w in workers],
                "customer-pulse-router": [f"127.0.0.1:{router.metrics_port}"],
                "customer-pulse-console": [f"127.0.0.1:{console.metrics_port}"],
            },
        )
        started.append(prometheus)
        yield Topology(
            root,
            kafka,
            redis_server,
            password,
            workers,
            prometheus,
            prometheus_port,
            compose_env,
            params_file,
            router,
            console,
        )
    finally:
        for thing in reversed(started):
            thing.stop()


# --- traffic ------------------------------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Traffic:
    thread: threading.Thread
    stop: threading.Event
    sent: list[int]

    def flowing(self) -> bool:
        return self.thread.is_alive()


@pytest.fixture(scope="module")
def traffic(topology: Topology) -> Iterator[Traffic]:
    """The four kinds of a generated history at a steady rate, malformed events and alert-raising surveys mixed in."""
    from pulse_config.settings import Settings

    env = topology.workers[0].env
    settings = Settings(
        _env_file=None, **{k[len("PULSE_") :].lower(): v for k, v in env.items() if k.startswith("PULSE_")}
    )
    stop = threading.Event()
    sent = [0]

    history = generate_events(TRAFFIC_CUSTOMERS, TRAFFIC_DAYS, seed=5)

    def events() -> Iterator[tuple[str, dict]]:
        """The history, then live traffic (its events again, as new events occurring now) until stopped."""
        for n in range(1, TRAFFIC_MAX_EVENTS + 1):
            if stop.is_set():
                return
            kind, event = history[(n - 1) % len(history)]
            if n > len(history):
                event = {**event, "event_id": f"live-{n}", "occurred_at": now_iso()}
                for id_field in ("order_id", "complaint_id", "ticket_id"):
                    if id_field in event:
                        event[id_field] = f"L{n}-{event[id_field]}"
            sent[0] = n
            yield kind, event
            if n % ALERT_TRACER_EVERY == 0:
                # detractor + dissatisfied for a fresh customer: a churn alert at once
                cid = f"ST{n:07d}"
                yield (
                    "survey",
                    {"event_id": f"st-{n}", "customer_id": cid, "occurred_at": now_iso(), "nps": 0, "csat": 1},
                )

    def run() -> None:
        asyncio.run(
            send(
                {"bootstrap_servers": topology.bootstrap},
                settings.input_topics(),
                events(),
                rate=TRAFFIC_RATE,
                bad=BAD_PER_1000,
                seed=5,
            )
        )

    assert BAD_PAYLOADS  # the malformed records send() mixes in
    thread = threading.Thread(target=run, name="smoke-traffic", daemon=True)
    thread.start()
    yield Traffic(thread, stop, sent)
    stop.set()
    thread.join(60)


# --- the checks ---------------------------------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
            queries.append((f"{panel['title']} [{target['refId']}]", expr))
    return queries


def finite_values(result: list[dict]) -> list[float]:
    return [float(r["value"][1]) for r in result if math.isfinite(float(r["value"][1]))]


def test_prometheus_scrapes_the_workers_evaluates_the_rules_and_every_panel_has_data(topology, traffic):
    def pulse_targets() -> list[dict]:
        active = topology.prom("/api/v1/targets")["data"]["activeTargets"]
        return [t for t in active if t["labels"]["job"] == "customer-pulse"]

    assert wait_until(lambda: sum(t["health"] == "up" for t in pulse_targets()) == 2, PROMETHEUS_SECONDS), (
        pulse_targets()
    )

    alert_names = {
        r["alert"]
        for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }

    def rules() -> list[dict]:
        return [r for g in topology.prom("/api/v1/rules")["data"]["groups"] for r in g["rules"]]

    def evaluated() -> bool:
        return all(r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules())

    assert {r["name"] for r in rules()} == alert_names
    assert wait_until(evaluated, PROMETHEUS_SECONDS), rules()

    pending = dict(dashboard_queries())
    empty: dict[str, str] = {}
    started = time.monotonic()
    deadline = started + PROMETHEUS_SECONDS
    seen_after: dict[str, float] = {}
    while pending and time.monotonic() < deadline:
        for name, expr in list(pending.items()):
            result = topology.prom("/api/v1/query", query=expr)["data"]["result"]
            if finite_values(result):
                del pending[name]
                seen_after[name] = time.monotonic() - started
            else:
                empty[name] = f"{expr} -> {result}"
        time.sleep(2)
    print("last panels to get data:", sorted(seen_after.items(), key=lambda kv: -kv[1])[:6])
    assert not pending, "panels without data:\n" + "\n".join(empty[n] for n in pending) + topology.diagnostics()
    assert traffic.flowing(), "the traffic ended before every panel had data"
    workers_up = topology.prom("/api/v1/query", query='sum(up{job="customer-pulse"})')["data"]["result"]
    assert finite_values(workers_up) == [2.0], workers_up
    router_up = topology.prom("/api/v1/query", query='sum(up{job="customer-pulse-router"})')["data"]["result"]
    assert finite_values(router_up) == [1.0], router_up
    # the router delivered the live alerts to the compose configuration's file destination
    delivered = list((topology.router.cwd / "volumes").rglob("alerts.log"))
    assert delivered and "churn" in delivered[0].read_text(), topology.router.tail()
    # the compose healthcheck of the workers
    assert all(http_ok(f"http://127.0.0.1:{w.api_port}/health") for w in topology.workers)
    print(f"every panel had data after {traffic.sent[0]} events")


def owned_partitions(worker: Worker, topic: str) -> set[int]:
    """Input partitions a worker reports lag for: the ones it owns."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=3) as response:
            text = response.read().decode()
    except OSError:
        return set()
    return {
        int(sample.labels["partition"])
        for family in text_string_to_metric_families(text)
        if family.name == "pulse_consumer_lag_records"
        for sample in family.samples
        if sample.labels.get("topic") == topic
    }


def test_workers_get_the_fitted_parameter_file(topology):
    """The ./params mount: PULSE_CLV_PARAMS_FILE of every worker names the file pulse fit wrote, not the defaults."""
    from pulse_config.clv_params import load_clv_params
    from scoring.clv import DEFAULT_CLV_PARAMS

    for worker in topology.workers:
        assert Path(worker.env["PULSE_CLV_PARAMS_FILE"]) == topology.params_file
        # the worker says which parameters it scores with (a missing file would mean the defaults)
        assert f"CLV parameters from {topology.params_file} (fitted on orders.csv" in worker.log.read_text(), (
            worker.tail()
        )
    params = load_clv_params(topology.params_file)
    assert params != DEFAULT_CLV_PARAMS and params.fitted_on


def test_a_restarted_worker_keeps_its_state(topology, traffic):
    partitions = int(topology.settings_env["PULSE_PARTITIONS"])
    customers = [f"CSTATE{n:03d}" for n in range(STATE_CUSTOMERS)]
    partition_of = {c: (murmur2(c.encode()) & 0x7FFFFFFF) % partitions for c in customers}
    assert set(partition_of.values()) == set(range(partitions)), "pick customers that cover every partition"
    orders_topic = "orders"
    client = topology.redis_client()
    prefix = topology.settings_env.get("PULSE_REDIS_KEY_PREFIX", "pulse:")

    def order(cid: str, n: int, amount: float) -> tuple[bytes, bytes]:
        event = {
            "event_id": f"{cid}-{n}",
            "customer_id": cid,
            "occurred_at": now_iso(),
            "order_id": f"{cid}-O{n}",
            "amount": amount,
            "currency": "USD",
            "status": "completed",
        }
        return cid.encode(), orjson.dumps(event)

    first = {c: 10.0 + i for i, c in enumerate(customers)}
    second = {c: 100.0 + i for i, c in enumerate(customers)}

    def profiles() -> dict[str, dict]:
        return {c: client.hgetall(profile_key(prefix, c)) for c in customers}

    def have(orders: int, revenue: dict[str, float]) -> bool:
        got = profiles()
        return all(p and p.get("orders") == str(orders) and float(p["revenue"]) == revenue[c] for c, p in got.items())

    produce(topology.bootstrap, orders_topic, [order(c, 1, first[c]) for c in customers])
    assert wait_until(lambda: have(1, first)), f"{profiles()}\n{topology.diagnostics()}"

    victim = topology.workers[0]
    before = owned_partitions(victim, orders_topic)
    assert before, victim.tail()
    assert victim.stop() == 0, victim.tail()
    data_dir = Path(victim.env["PULSE_DATA_DIR"])
    assert any(p.name.endswith(".sst") or p.name == "CURRENT" for p in data_dir.rglob("*")), "no RocksDB files"

    def victim_down() -> bool:
        alerts = topology.prom("/api/v1/alerts")["data"]["alerts"]
        return any(
            a["labels"]["alertname"] == "PulseWorkerDown"
            and a["labels"]["instance"].endswith(f":{victim.metrics_port}")
            for a in alerts
        )

    # the alert rule sees it (pending: its for is 1m)
    assert wait_until(victim_down, PROMETHEUS_SECONDS), topology.prom("/api/v1/alerts")

    client.flushdb()  # the profiles below can only come from the workers' state, not from what Redis kept
    victim.start()
    assert wait_until(lambda: victim.ready() or victim.proc.poll() is not None), victim.tail()
    assert victim.proc.poll() is None, victim.tail()
    produce(topology.bootstrap, orders_topic, [order(c, 2, second[c]) for c in customers])
    total = {c: first[c] + second[c] for c in customers}
    assert wait_until(lambda: have(2, total)), f"{profiles()}\n{topology.diagnostics()}"
    assert wait_until(lambda: bool(owned_partitions(victim, orders_topic))), victim.tail()
    after = owned_partitions(victim, orders_topic)
    assert all(w.proc.poll() is None for w in topology.workers), topology.diagnostics()
    # KAFKA_LOG_DIRS: the changelogs (all customer state) are in the folder standing in for the kafka-data volume
    changelogs = [d.name for d in Path(topology.kafka.properties["log.dirs"]).iterdir() if "changelog" in d.name]
    assert changelogs, sorted(d.name for d in Path(topology.kafka.properties["log.dirs"]).iterdir())
    print(f"victim owned partitions {sorted(before)} before the restart and {sorted(after)} after")


def test_the_console_serves_the_queue_behind_its_login(topology, traffic):
    """issue 20: the console service as compose runs it: nothing without its token (the compose default: never
    open), a login and the bearer token show the queue of the traffic's alerted customers in priority order,
    Prometheus scrapes it, and it keeps the population trend in Redis."""
    import http.client

    from pulse_config.settings import Settings
    from streams.console.trends import trend_key

    console = topology.console
    token = console.env["PULSE_API_TOKEN"]
    assert token, "the compose console must not be open"
    base = f"http://127.0.0.1:{console.api_port}"

    def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        request = urllib.request.Request(base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    assert get("/fragments/queue")[0] == 401
    assert get("/fragments/queue", {"Authorization": "Bearer wrong"})[0] == 401
    bearer = {"Authorization": f"Bearer {token}"}
    rows = re.compile(r'<tr data-customer-id="([^"]+)" data-priority="(\w+)"')
    assert wait_until(lambda: len(rows.findall(get("/fragments/queue", bearer)[1])) >= 2, PROMETHEUS_SECONDS), (
        get("/fragments/queue", bearer)[1][-2000:] + topology.diagnostics()
    )
    status, page = get("/fragments/queue", bearer)
    levels = [level for _, level in rows.findall(page)]
    assert status == 200 and levels == sorted(levels, key=lambda level: level != "high"), levels

    # a person's login: a cookie (not the token) that opens the pages
    conn = http.client.HTTPConnection("127.0.0.1", console.api_port, timeout=10)
    body = urllib.parse.urlencode({"name": "ana", "token": token})
    conn.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    cookie = response.getheader("Set-Cookie") or ""
    conn.close()
    assert response.status == 302 and cookie and token not in cookie, (response.status, cookie)
    status, page = get("/", {"Cookie": cookie.split(";")[0]})
    assert status == 200 and "At-risk queue" in page and token not in page

    def console_up() -> bool:
        result = topology.prom("/api/v1/query", query='sum(up{job="customer-pulse-console"})')["data"]["result"]
        return finite_values(result) == [1.0]

    assert wait_until(console_up, PROMETHEUS_SECONDS)
    settings = Settings(
        _env_file=None, **{k[len("PULSE_") :].lower(): v for k, v in console.env.items() if k.startswith("PULSE_")}
    )
    trend = trend_key(settings.redis_key_prefix)
    assert wait_until(lambda: topology.redis_client().llen(trend) >= 1, PROMETHEUS_SECONDS), console.tail()
