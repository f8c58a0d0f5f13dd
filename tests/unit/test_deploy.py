"""deploy/ without Docker: files parse, the dashboard loads, and everything they name exists in the code.

A renamed metric or setting breaks a dashboard panel, an alert rule or a
worker's configuration silently in production; here it fails a test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import streams.metrics  # noqa: F401 - registers every metric of the worker
from pulse_config.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "customer-pulse.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"

METRIC = re.compile(r"\bpulse_[a-z_]+")
#: sample-name suffixes each metric type exposes besides the family name
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def families() -> dict[str, str]:
    """Family name -> type of every registered pulse_ metric (a Counter pulse_x_total is family pulse_x): the
    worker's, and the router's (its own registry, served by `pulse router`)."""
    from streams.metrics import ROUTER_REGISTRY

    collected = [*REGISTRY.collect(), *ROUTER_REGISTRY.collect()]
    return {m.name: m.type for m in collected if m.name.startswith("pulse_")}


def resolve(sample: str, known: dict[str, str]) -> str | None:
    """The family a PromQL sample name belongs to, or None if the code has no such metric."""
    for family, kind in known.items():
        if any(sample == family + suffix for suffix in SUFFIXES.get(kind, ("",))):
            return family
    return None


def load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    return [rule["expr"] for group in load_all(ALERTS)[0]["groups"] for rule in group["rules"]]


def test_alert_tests_use_only_real_metrics():
    """The promtool unit tests feed series by name: they must be the code's names too."""
    known = families()
    series = [s["series"] for t in load_all(ALERTS_TEST)[0]["tests"] for s in t["input_series"]]
    unknown = sorted({n for text in series for n in METRIC.findall(text) if resolve(n, known) is None})
    assert not unknown, unknown


def pulse_env_vars() -> Iterator[tuple[str, str, str]]:
    """(file, name, value) of every PULSE_* variable set in compose and the k8s manifests."""
    compose = load_all(COMPOSE)[0]
    anchors = [compose.get("x-pulse-env", {})]
    for service in compose["services"].values():
        env = service.get("environment") or {}
        anchors.append(env if isinstance(env, dict) else dict(item.split("=", 1) for item in env))
    for env in anchors:
        for name, value in env.items():
            if name.startswith("PULSE_"):
                yield COMPOSE.name, name, str(value)
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_all(path):
            if doc.get("metadata", {}).get("name") == "customer-pulse-router" and doc["kind"] in (
                "ConfigMap",
                "Secret",
            ):
                continue  # the router's configuration file and its destinations' secrets, not settings
            if doc.get("kind") == "ConfigMap":
                yield from ((path.name, k, str(v)) for k, v in doc["data"].items())
            if doc.get("kind") == "Secret":
                yield from ((path.name, k, str(v)) for k, v in doc.get("stringData", {}).items())
            for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                yield from ((path.name, e["name"], str(e.get("value", ""))) for e in container.get("env", []))
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        yield from (("Dockerfile", name, value) for name, value in re.findall(r"(PULSE_[A-Z_]+)=(\S+)", line))


def test_every_yaml_file_parses():
    assert {p.name for p in YAML_FILES} >= {
        "compose.yaml",
        "prometheus.yml",
        "alerts.yml",
        "prometheus.yaml",
        "dashboards.yaml",
        "statefulset.yaml",
        "configmap.yaml",
        "service.yaml",
        "secret.example.yaml",
    }
    for path in YAML_FILES:
        assert load_all(path), path


def test_dashboard_has_the_structure_grafana_loads():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    datasource_uids = {
        ds["uid"]
        for ds in load_all(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")[0]["datasources"]
    }
    for panel in dash["panels"]:
        assert panel["type"] in {"timeseries", "stat"} and panel["title"], panel
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"]
            assert target["datasource"]["uid"] in datasource_uids
    provider = load_all(DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml")[0]
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_shows_what_operators_need():
    exprs = " ".join(dashboard_exprs())
    for needed in (
        "pulse_events_total",  # throughput
        "pulse_event_to_scored_seconds_bucket",  # latency
        "pulse_checkpoint_seconds_bucket",
        "pulse_consumer_lag_records",
        "pulse_dead_letters_total",
        "pulse_retention_alerts_total",
        "pulse_retention_alert_reasons_total",
        "pulse_vip_customers",
        "pulse_segment_customers",
        "pulse_churn_risk_customers",
        "pulse_redis_write_errors_total",
        "pulse_redis_pending_profiles",
        # issue 19: the save rate and the router's deliveries
        "pulse_alert_episodes",
        "pulse_alert_episode_deliveries",
        "pulse_save_recovered_revenue",
        "pulse_router_deliveries_total",
        "pulse_router_raised_to_delivered_seconds_bucket",
        # the time the population panels are at (a held partition clock holds them all)
        "pulse_population_indicator_time_seconds",
        # and what holds a partition clock: an input read behind, or one that reads nothing (stalled)
        "pulse_clock_held_partitions",
        "pulse_clock_stalled_inputs",
        # the work per event: live about one assessment, catching up far fewer (issue 18, sizing)
        "pulse_customers_assessed_total",
    ):
        assert needed in exprs, needed


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_in_queries_and_rules_exists_in_the_code(source):
    known = families()
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used, exprs
    unknown = sorted(name for name in used if resolve(name, known) is None)
    assert not unknown, f"{source} names metrics the code does not register (or with the wrong suffix): {unknown}"


def test_the_suffix_rule_itself():
    known = families()
    assert resolve("pulse_events_total", known) == "pulse_events"
    assert resolve("pulse_events", known) is None  # a counter's samples end in _total
    assert resolve("pulse_checkpoint_seconds_bucket", known) == "pulse_checkpoint_seconds"
    assert resolve("pulse_checkpoint_seconds_total", known) is None
    assert resolve("pulse_vip_customers", known) == "pulse_vip_customers"
    assert resolve("pulse_vip_customers_count", known) is None


def test_alert_rules_cover_the_four_conditions():
    rules = {rule["alert"]: rule for group in load_all(ALERTS)[0]["groups"] for rule in group["rules"]}
    assert "up" in rules["PulseWorkerDown"]["expr"]
    assert "pulse_consumer_lag_records" in rules["PulseConsumerLagGrowing"]["expr"]
    assert "pulse_dead_letters_total" in rules["PulseDeadLetterRate"]["expr"]
    assert "pulse_retention_alerts_total" in rules["PulseChurnAlertSpike"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]


def test_every_pulse_variable_is_a_setting():
    fields = {f"PULSE_{name.upper()}" for name in Settings.model_fields}
    seen = list(pulse_env_vars())
    assert len(seen) > 10
    unknown = sorted({(where, name) for where, name, _ in seen if name not in fields})
    assert not unknown, unknown


def test_configured_values_are_valid_settings():
    """The ConfigMap's values load as settings (types, ranges, enums), secrets added."""
    for path in (K8S / "configmap.yaml", K8S / "secret.example.yaml"):
        assert load_all(path)
    data = load_all(K8S / "configmap.yaml")[0]["data"]
    secret = load_all(K8S / "secret.example.yaml")[0]["stringData"]
    values = {k[len("PULSE_") :].lower(): v for k, v in {**data, **secret}.items()}
    Settings(_env_file=None, **values)


def test_statefulset_is_production_shaped():
    sts = load_all(K8S / "statefulset.yaml")[0]
    config = load_all(K8S / "configmap.yaml")[0]["data"]
    pod = sts["spec"]["template"]
    grace = float(config.get("PULSE_SHUTDOWN_GRACE_SECONDS", Settings.model_fields["shutdown_grace_seconds"].default))
    stop = float(config.get("PULSE_STOP_TIMEOUT_SECONDS", Settings.model_fields["stop_timeout_seconds"].default))
    assert pod["spec"]["terminationGracePeriodSeconds"] > stop > grace
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": int(config["PULSE_METRICS_PORT"]), "api": int(config["PULSE_API_PORT"])}
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == config["PULSE_METRICS_PORT"]
    assert config["PULSE_STORE"] == "rocksdb://"
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim] == config["PULSE_DATA_DIR"]
    assert sts["spec"]["replicas"] <= int(config["PULSE_PARTITIONS"])


def test_compose_stack_shape():
    compose = load_all(COMPOSE)[0]
    services = compose["services"]
    assert {"kafka", "redis", "worker", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    assert services["worker"]["build"]["dockerfile"] == "deploy/Dockerfile"
    env = services["worker"]["environment"]
    scrape = load_all(PROMETHEUS)[0]["scrape_configs"][0]
    assert scrape["dns_sd_configs"][0]["names"] == ["worker"]
    assert scrape["dns_sd_configs"][0]["port"] == int(env["PULSE_METRICS_PORT"])
    assert env["PULSE_METRICS_HOST"] == env["PULSE_API_HOST"] == "0.0.0.0"
    # the kill comes after a stop that cannot finish has said so, which comes after a running checkpoint's grace
    kill_after = float(services["worker"]["stop_grace_period"].removesuffix("s"))
    assert kill_after > float(env["PULSE_STOP_TIMEOUT_SECONDS"]) > float(env["PULSE_SHUTDOWN_GRACE_SECONDS"])


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (Debian: apt-get install prometheus)")
@pytest.mark.parametrize(
    "command",
    [["check", "rules", ALERTS], ["check", "config", PROMETHEUS], ["test", "rules", ALERTS_TEST]],
    ids=["check-rules", "check-config", "alerts-fire"],
)
def test_promtool_accepts_the_prometheus_files(command):
    """Syntax of config and rules, and alerts_test.yml: each alert fires on its situation, not on a steady one."""
    result = subprocess.run([PROMTOOL, *map(str, command)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


#: Kubernetes versions the manifests must be valid for: the oldest still in providers' extended
#: support, and the newest schema kubernetes-validate ships
K8S_OLDEST = "1.29.0"


def k8s_docs() -> list[tuple[str, dict]]:
    """(file, resource) of every manifest in deploy/k8s/ except the kustomization."""
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in load_all(path)
        if doc.get("kind") != "Kustomization"
    ]


@pytest.mark.parametrize("version", [K8S_OLDEST, "latest"])
def test_kubernetes_manifests_pass_the_schema_validator(version):
    """Strict: an unknown or misplaced field (which kubectl rejects or silently drops) fails here."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version() if version == "latest" else version
    errors = []
    for name, doc in k8s_docs():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name} {doc['kind']}/{doc['metadata']['name']} at {list(exc.path)}: {exc.message}")
    assert not errors, "\n".join(errors)
    kinds = {doc["kind"] for _, doc in k8s_docs()}
    assert kinds == {"ConfigMap", "Secret", "Service", "StatefulSet", "Deployment"}


def test_kustomization_lists_every_manifest_but_the_example_secret():
    kustomization = load_all(K8S / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    assert all((K8S / name).is_file() for name in listed), listed
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}


def test_kubernetes_references_resolve():
    """What the schema cannot see: names that must match across fields and resources (the workers' StatefulSet,
    the router's and the console's Deployments)."""
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in k8s_docs()}
    (sts,) = [doc for (kind, _), doc in docs.items() if kind == "StatefulSet"]
    headless = docs[("Service", sts["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    workloads = [doc for (kind, _), doc in docs.items() if kind in ("StatefulSet", "Deployment")]
    assert len(workloads) == 3
    for workload in workloads:
        check_workload(workload, docs)
    pods = [w["spec"]["template"] for w in workloads]
    for (kind, name), doc in docs.items():
        if kind == "Service":
            # each Service selects the pods of exactly one workload, and names their ports
            (pod,) = [p for p in pods if doc["spec"]["selector"].items() <= p["metadata"]["labels"].items()]
            container_ports = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
            assert {p["targetPort"] for p in doc["spec"]["ports"]} <= container_ports, name


#: settings only the scoring workers read (the router keeps no table store and scores nothing)
WORKER_ONLY_PATHS = {"PULSE_DATA_DIR", "PULSE_CLV_PARAMS_FILE"}


def check_workload(workload: dict, docs: dict) -> None:
    pod = workload["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]} | {
        c["metadata"]["name"]: c for c in workload["spec"].get("volumeClaimTemplates", [])
    }
    for volume in pod["spec"]["volumes"]:
        if "configMap" in volume and not volume["configMap"].get("optional"):
            assert ("ConfigMap", volume["configMap"]["name"]) in docs, volume
    config = docs[("ConfigMap", "customer-pulse")]["data"]
    for container in pod["spec"]["containers"]:
        port_names = {p["name"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in port_names, probe
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert set(mounts.values()) <= set(volumes), mounts
        for source in container["envFrom"]:
            if "configMapRef" in source:
                assert ("ConfigMap", source["configMapRef"]["name"]) in docs
            if "secretRef" in source:  # created by the operator; its keys are shown by the example
                assert ("Secret", source["secretRef"]["name"]) in docs
        # every file or folder a setting names is on a mounted volume
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        for name, value in {**config, **env}.items():
            if workload["kind"] == "Deployment" and name in WORKER_ONLY_PATHS:
                continue
            if value.startswith("/"):
                assert any(Path(value).is_relative_to(path) for path in mounts), (name, value, mounts)


def test_kubernetes_workers_get_the_clv_parameter_file_when_there_is_one():
    sts = load_all(K8S / "statefulset.yaml")[0]
    config = load_all(K8S / "configmap.yaml")[0]["data"]
    pod = sts["spec"]["template"]["spec"]
    (mount,) = [
        m
        for m in pod["containers"][0]["volumeMounts"]
        if Path(config["PULSE_CLV_PARAMS_FILE"]).parent == Path(m["mountPath"])
    ]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["optional"] is True  # pods start before anyone ran pulse fit
    assert mount["readOnly"] is True


def compose_services() -> dict:
    return load_all(COMPOSE)[0]["services"]


def volume_targets(service: dict) -> dict[str, str | None]:
    """Container path -> source (None: anonymous volume) of a compose service's volumes (short syntax)."""
    targets: dict[str, str | None] = {}
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        if len(parts) == 1:
            targets[parts[0]] = None
        else:
            targets[parts[1]] = parts[0]
    return targets


def test_compose_kafka_writes_onto_its_volume():
    """The changelogs hold all customer state: they must outlive re-creating the Kafka container."""
    kafka = compose_services()["kafka"]
    log_dirs = str(kafka["environment"]["KAFKA_LOG_DIRS"]).split(",")
    named = {t: s for t, s in volume_targets(kafka).items() if s and not s.startswith(".")}
    assert named and all(any(Path(d).is_relative_to(t) for t in named) for d in log_dirs), (log_dirs, named)
    assert set(named.values()) <= set(load_all(COMPOSE)[0]["volumes"])
    # a fixed cluster id: the formatted volume would refuse a new one
    assert kafka["environment"]["CLUSTER_ID"]


def test_compose_kafka_is_the_version_the_tests_run():
    from pulse.devstack import KAFKA_VERSION

    assert compose_services()["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_compose_publishes_no_redis_and_only_on_loopback():
    services = compose_services()
    assert not services["redis"].get("ports"), "Redis on a host port clashes with a local Redis"
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_compose_workers_restart_and_get_their_files():
    worker = compose_services()["worker"]
    assert worker["restart"] == "unless-stopped"
    targets = volume_targets(worker)
    env = worker["environment"]
    for name in ("PULSE_DATA_DIR", "PULSE_CLV_PARAMS_FILE"):
        assert any(Path(env[name]).is_relative_to(t) for t in targets), (name, env[name], targets)
    params = targets[str(Path(env["PULSE_CLV_PARAMS_FILE"]).parent)]
    assert params is not None and (COMPOSE.parent / params).is_dir(), params  # the bind source is in the repo


def test_the_router_is_deployed_scraped_and_watched(monkeypatch):
    """issue 19: the router runs in compose (restarting) and on Kubernetes, Prometheus scrapes it, rules watch it,
    and both configurations it is given load."""
    from streams.router.config import load_config, parse_config

    router = compose_services()["router"]
    assert router["restart"] == "unless-stopped" and router["command"] == ["router"]
    env = router["environment"]
    config_file = Path(env["PULSE_ROUTER_CONFIG_FILE"])
    source = volume_targets(router)[str(config_file.parent)]
    assert source is not None
    assert load_config(COMPOSE.parent / source / config_file.name).destinations
    Settings(_env_file=None, **{k[len("PULSE_") :].lower(): v for k, v in env.items() if k.startswith("PULSE_")})
    jobs = {job["job_name"]: job for job in load_all(PROMETHEUS)[0]["scrape_configs"]}
    sd = jobs["customer-pulse-router"]["dns_sd_configs"][0]
    assert sd["names"] == ["router"] and sd["port"] == int(env["PULSE_ROUTER_METRICS_PORT"])
    rules = {rule["alert"]: rule for group in load_all(ALERTS)[0]["groups"] for rule in group["rules"]}
    assert 'job="customer-pulse-router"' in rules["PulseRouterDown"]["expr"]
    assert "pulse_router_deliveries_total" in rules["PulseDeliveriesDeadLettered"]["expr"]

    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in k8s_docs()}
    pod = docs[("Deployment", "customer-pulse-router")]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["router"]
    k8s_env = {e["name"]: e["value"] for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": int(k8s_env["PULSE_ROUTER_METRICS_PORT"]), "api": int(k8s_env["PULSE_ROUTER_API_PORT"])}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == k8s_env["PULSE_ROUTER_METRICS_PORT"]
    # the router.toml of the ConfigMap loads once the variables it names are set (the example secret's keys)
    for key, value in docs[("Secret", "customer-pulse-router")]["stringData"].items():
        monkeypatch.setenv(key, value)
    toml = docs[("ConfigMap", "customer-pulse-router")]["data"][Path(k8s_env["PULSE_ROUTER_CONFIG_FILE"]).name]
    assert parse_config(toml, "router.yaml").destinations


def test_the_console_is_deployed_scraped_and_watched():
    """issue 20: the console runs in compose (restarting, published on loopback, never open: a token by default)
    and on Kubernetes (Deployment + Service, its token from a Secret), Prometheus scrapes it, a rule watches it."""
    console = compose_services()["console"]
    assert console["restart"] == "unless-stopped" and console["command"] == ["console"]
    env = {k: str(v) for k, v in console["environment"].items()}
    settings = Settings(
        _env_file=None, **{k[len("PULSE_") :].lower(): v for k, v in env.items() if k.startswith("PULSE_")}
    )
    assert settings.console_host == "0.0.0.0"
    # the compose default of the token is not empty: without a token the console would be open
    default_token = re.fullmatch(r"\$\{PULSE_API_TOKEN:-([^}]+)\}", env["PULSE_API_TOKEN"])
    assert default_token is not None, env["PULSE_API_TOKEN"]
    (published,) = console["ports"]
    assert published.startswith("127.0.0.1:") and published.endswith(f":{settings.console_port}")
    assert f"127.0.0.1:{settings.console_port}/health" in " ".join(console["healthcheck"]["test"])
    assert {"kafka", "redis"} <= set(console["depends_on"])
    jobs = {job["job_name"]: job for job in load_all(PROMETHEUS)[0]["scrape_configs"]}
    sd = jobs["customer-pulse-console"]["dns_sd_configs"][0]
    assert sd["names"] == ["console"] and sd["port"] == settings.console_port  # /metrics on the console's port
    rules = {rule["alert"]: rule for group in load_all(ALERTS)[0]["groups"] for rule in group["rules"]}
    assert 'job="customer-pulse-console"' in rules["PulseConsoleDown"]["expr"]

    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in k8s_docs()}
    pod = docs[("Deployment", "customer-pulse-console")]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["console"]
    k8s_env = {e["name"]: e["value"] for e in container["env"]}
    assert k8s_env["PULSE_CONSOLE_HOST"] == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": int(k8s_env["PULSE_CONSOLE_PORT"])}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == k8s_env["PULSE_CONSOLE_PORT"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    # the token only from Secrets (the console's own one, if created, wins: it comes last), never in the manifest
    sources = container["envFrom"]
    assert sources[-1] == {"secretRef": {"name": "customer-pulse-console", "optional": True}}
    assert "PULSE_API_TOKEN" not in k8s_env and "PULSE_API_TOKEN" not in docs[("ConfigMap", "customer-pulse")]["data"]
    assert "PULSE_API_TOKEN" in docs[("Secret", "customer-pulse-console")]["stringData"]
    service = docs[("Service", "customer-pulse-console")]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    # no secret baked into the image: the Dockerfile sets no token
    assert "TOKEN" not in (DEPLOY / "Dockerfile").read_text().replace("PULSE_API_TOKEN", "")
