"""A Kafka cluster whose ACLs give the worker the least it needs, as production clusters do: an admin creates the
topics (``pulse topics``), and the worker's principal may Read, Write and Describe them and Read its group, and
nothing else (no Create, no cluster permission).

Until session 24 the worker could not run there: Faust created its leader-election topic and re-declared the
state changelog at every start, and Kafka refuses a CREATE it does not allow even for a topic that exists, so the
worker crashed at start with ``TopicAuthorizationFailedError`` whatever the admin had made. And a principal
missing an ACL read as something else: topics it may not create or see made the start-up wait 30 s and crash with
a traceback (aiokafka's ``create_topics`` does not raise a topic's error), and a group it may not use left the
worker hanging after "Subscribed to topic(s)", silent. Each is now one line and exit 78.

The broker: StandardAuthorizer (KRaft), a SASL_PLAINTEXT listener (PLAIN) for the worker's principal
``User:pulse``, and a PLAINTEXT listener whose principal (``User:ANONYMOUS``) is the super user: the admin, the
readiness probe and the controller. ACLs are added through Kafka's own Admin API (a single-file Java program on
the broker's jars: the broker distribution's kafka-acls.sh lives in a jar the tests do not fetch), from the
``kafka-acls.sh`` lines ``pulse topics --acls`` prints: what it prints is what is tested.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pulse.devstack import KafkaBroker, _kafka_java, free_port, stop_process
from pulse.simulate import generate_orders
from streams.startup import EXIT_CONFIG
from testing.reference import batch_order_profiles
from testing.stack import (
    TEST_KAFKA_JVM_OPTIONS,
    WorkerPool,
    make_namespace,
    produce,
    profile_diffs,
    start_pulse,
    wait_until,
)
from tests.router_fixtures import alert_dict, start_file_router

pytestmark = pytest.mark.e2e

END = datetime(2026, 6, 30, tzinfo=UTC)
USER, PASSWORD = "pulse", "pulse-secret"
PRINCIPAL = f"User:{USER}"
#: how long a worker missing an ACL gets to say so and stop
REFUSAL_SECONDS = 90

#: adds ALLOW ACLs through Kafka's Admin API: java Acls.java BOOTSTRAP PRINCIPAL TYPE:NAME:OP[,OP...] ...
ACLS_JAVA = """
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.common.acl.*;
import org.apache.kafka.common.resource.*;
import java.util.*;

public class Acls {
  public static void main(String[] args) throws Exception {
    Properties props = new Properties();
    props.put("bootstrap.servers", args[0]);
    List<AclBinding> bindings = new ArrayList<>();
    for (int i = 2; i < args.length; i++) {
      String[] f = args[i].split(":", 3);
      ResourcePattern pattern = new ResourcePattern(ResourceType.valueOf(f[0]), f[1], PatternType.LITERAL);
      for (String op : f[2].split(",")) {
        bindings.add(new AclBinding(pattern, new AccessControlEntry(args[1], "*", AclOperation.valueOf(op),
            AclPermissionType.ALLOW)));
      }
    }
    try (Admin admin = Admin.create(props)) { admin.createAcls(bindings).all().get(); }
  }
}
"""


@pytest.fixture(scope="module")
def acl_kafka(own_kafka_redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KafkaBroker, int]]:
    """A Kafka broker of its own that enforces ACLs; yields it and the port of its SASL_PLAINTEXT listener."""
    home = tmp_path_factory.mktemp("acl-kafka")
    port, controller, sasl = free_port(), free_port(), free_port()
    props = {
        "listeners": f"PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl},CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
            f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{USER}="{PASSWORD}";'
        ),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # the PLAINTEXT listener's principal: the admin, the readiness probe and the controller
        "super.users": "User:ANONYMOUS",
    }
    (home / "Acls.java").write_text(ACLS_JAVA)
    broker = KafkaBroker.start(home, props, port=port, controller_port=controller, jvm_options=TEST_KAFKA_JVM_OPTIONS)
    try:
        yield broker, sasl
    finally:
        broker.stop()
        broker.remove_data()


def grant(broker: KafkaBroker, lines: list[str]) -> None:
    """Add the ACLs of ``kafka-acls.sh --add`` lines (as ``pulse topics --acls`` prints them)."""
    principal, acls = None, []
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "kafka-acls.sh" and "--add" in words, line
        ops = [words[i + 1].upper() for i, w in enumerate(words) if w == "--operation"]
        principal = words[words.index("--allow-principal") + 1]
        kind = "TOPIC" if "--topic" in words else "GROUP"
        name = words[words.index("--topic" if kind == "TOPIC" else "--group") + 1]
        acls.append(f"{kind}:{name}:{','.join(ops)}")
    done = subprocess.run(
        [*_kafka_java(broker.home, broker.jvm_options), str(broker.home / "Acls.java"), broker.bootstrap, principal]
        + acls,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def admin_topics(broker: KafkaBroker, namespace, role: str = "worker") -> list[str]:
    """``pulse topics --acls User:pulse --role ROLE`` as the admin: creates the namespace's topics, returns the
    ACL lines."""
    env = {
        **namespace.env,
        "PULSE_BROKER_URL": f"kafka://{broker.bootstrap}",
        "PULSE_BROKER_SECURITY_PROTOCOL": "PLAINTEXT",
        "PULSE_BROKER_SASL_USERNAME": "",
        "PULSE_BROKER_SASL_PASSWORD": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pulse", "topics", "--acls", PRINCIPAL, "--role", role],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("kafka-acls.sh")]


def worker_env(own_kafka_redis, sasl_port: int) -> dict[str, str]:
    return {
        "PULSE_BROKER_URL": f"kafka://127.0.0.1:{sasl_port}",
        "PULSE_REDIS_URL": own_kafka_redis.url,
        "PULSE_BROKER_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "PULSE_BROKER_SASL_MECHANISM": "PLAIN",
        "PULSE_BROKER_SASL_USERNAME": USER,
        "PULSE_BROKER_SASL_PASSWORD": PASSWORD,
    }


def send_orders(broker: KafkaBroker, settings, orders: list[dict]) -> None:
    """As an upstream producer with its own permissions would: through the admin's listener."""
    produce(broker.bootstrap, settings.topic_orders, [(o["customer_id"].encode(), orjson.dumps(o)) for o in orders])


def test_a_worker_with_the_least_permissions_scores_restarts_and_recovers(acl_kafka, own_kafka_redis, tmp_path):
    broker, sasl_port = acl_kafka
    namespace = make_namespace(worker_env(own_kafka_redis, sasl_port), tmp_path, create=False)
    settings = namespace.settings
    lines = admin_topics(broker, namespace)
    assert any(f"--group {settings.app_id}" in line for line in lines), lines
    grant(broker, lines)
    pool = WorkerPool(namespace)
    try:
        worker = pool.start()
        orders = generate_orders(customers=40, days=200, seed=12, end=END)
        half = len(orders) // 2
        send_orders(broker, settings, orders[:half])
        assert wait_until(lambda: not profile_diffs(settings, batch_order_profiles(orders[:half]))), worker.digest()
        worker.stop()  # a restart recovers its state from the changelog, which it may read but not create
        worker = pool.start()
        send_orders(broker, settings, orders[half:])
        expected = batch_order_profiles(orders)
        converged = wait_until(lambda: not profile_diffs(settings, expected))
        diffs = profile_diffs(settings, expected)
        assert converged, f"{len(diffs)} profiles differ, e.g. {diffs[:2]}\n{worker.digest()}"
        assert worker.alive(), worker.log_tail()
        log = "".join(w.log.read_text(errors="replace") for w in pool.workers)
        assert "Traceback" not in log and "AuthorizationFailed" not in log
    finally:
        pool.stop_all()


@pytest.mark.parametrize(
    ("withheld", "said"),
    [
        ("everything", f"the broker's ACLs do not let PULSE_BROKER_SASL_USERNAME='{USER}' create topics"),
        ("the group", f"the broker's ACLs do not let PULSE_BROKER_SASL_USERNAME='{USER}' use the consumer group"),
    ],
    ids=["no-acls", "no-group-acl"],
)
def test_a_missing_acl_stops_the_start_with_one_clear_line(acl_kafka, own_kafka_redis, tmp_path, withheld, said):
    """Topics the principal may not see (so not create either), or a group it may not use: before, the first
    waited 30 s and crashed with a traceback, the second hung silent after "Subscribed to topic(s)"."""
    broker, sasl_port = acl_kafka
    namespace = make_namespace(worker_env(own_kafka_redis, sasl_port), tmp_path, create=False)
    lines = admin_topics(broker, namespace)
    if withheld == "the group":
        grant(broker, [line for line in lines if "--group" not in line])
    pool = WorkerPool(namespace)
    try:
        worker = pool.start()
        assert worker.proc.wait(REFUSAL_SECONDS) == EXIT_CONFIG, worker.log_tail()
        log = worker.log.read_text(errors="replace")
        [line] = [line for line in log.splitlines() if "refusing to start" in line]
        assert said in line and "docs/operations.md" in line, line
        assert "Traceback" not in log and "waiting for the broker" not in log
    finally:
        pool.stop_all()


def restricted(acl_kafka, own_kafka_redis, tmp_path: Path, role: str, group_acl: bool):
    """A namespace whose topics ``pulse topics`` made, and the ACLs of ``role`` granted (without its group's unless
    ``group_acl``): (the broker, the namespace)."""
    broker, sasl_port = acl_kafka
    namespace = make_namespace(worker_env(own_kafka_redis, sasl_port), tmp_path, create=False)
    namespace.env["PULSE_TOPIC_DELIVERY_DEAD_LETTERS"] = namespace.settings.topic_retention_alerts + "-deliveries-dlq"
    lines = admin_topics(broker, namespace, role=role)
    grant(broker, [line for line in lines if group_acl or "--group" not in line])
    return broker, namespace


def assert_group_refused_in_one_line(proc: subprocess.Popen, log: Path) -> None:
    """A ``pulse`` command without its group's ACL: exit 2 (a configuration error) with the one line."""
    assert proc.wait(REFUSAL_SECONDS) == 2, log.read_text(errors="replace")[-3000:]
    text = log.read_text(errors="replace")
    assert "do not let PULSE_BROKER_SASL_USERNAME='pulse' use the consumer group" in text, text[-2000:]
    assert "Traceback" not in text


def send_alerts(broker: KafkaBroker, settings, n: int = 5) -> list[dict]:
    alerts = [alert_dict(i) for i in range(n)]
    records = [(a["customer_id"].encode(), orjson.dumps(a)) for a in alerts]
    produce(broker.bootstrap, settings.topic_retention_alerts, records)
    return alerts


@pytest.mark.parametrize("group_acl", [True, False], ids=["least-permissions", "no-group-acl"])
def test_the_router_with_the_least_permissions_delivers_or_says_what_is_missing(
    acl_kafka, own_kafka_redis, tmp_path, group_acl
):
    """``pulse topics --acls --role router``'s lines are all the router needs to deliver; without its group's,
    it stops in one line (exit 2, as every ``pulse`` command's configuration error; nothing checked it at its
    start before)."""
    broker, namespace = restricted(acl_kafka, own_kafka_redis, tmp_path, "router", group_acl)
    router, log, deliveries = start_file_router(namespace, tmp_path)
    try:
        if not group_acl:
            assert_group_refused_in_one_line(router, log)
            return
        alerts = send_alerts(broker, namespace.settings)
        delivered = lambda: deliveries.exists() and all(a["alert_id"] in deliveries.read_text() for a in alerts)  # noqa: E731
        assert wait_until(delivered), log.read_text(errors="replace")[-3000:]
        assert router.poll() is None
        assert "Traceback" not in log.read_text(errors="replace")
    finally:
        stop_process(router, 30)


def console_alerts_applied(port: int) -> float:
    """The console's ``pulse_console_events_total{event="retention_alert",outcome="applied"}`` (0 before it serves)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "pulse_console_events_total" and labels.get("event") == "retention_alert":
                if labels.get("outcome") == "applied":
                    return sample.value
    return 0


@pytest.mark.parametrize("group_acl", [True, False], ids=["least-permissions", "no-group-acl"])
def test_the_console_with_the_least_permissions_reads_alerts_or_says_what_is_missing(
    acl_kafka, own_kafka_redis, tmp_path, group_acl
):
    """``pulse topics --acls --role console``'s lines (the router's topics and the population topic) are all the
    console needs to record the alerts it reads, and ``pulse alerts`` to print them; without its group's the console
    stops in one line (exit 2)."""
    broker, namespace = restricted(acl_kafka, own_kafka_redis, tmp_path, "console", group_acl)
    port, log = free_port(), tmp_path / "console.log"
    env = {**os.environ, **namespace.env, "PULSE_CONSOLE_PORT": str(port), "PULSE_API_TOKEN": "t0ken-for-the-test"}
    console = start_pulse(["console"], env, log)
    try:
        if not group_acl:
            assert_group_refused_in_one_line(console, log)
            return
        alerts = send_alerts(broker, namespace.settings)
        assert wait_until(lambda: console_alerts_applied(port) == len(alerts)), log.read_text(errors="replace")[-3000:]
        assert console.poll() is None
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "AuthorizationFailed" not in text, text[-3000:]
        # a person at the same desk, with the same principal: `pulse alerts` reads the topic without a group
        read = subprocess.run(
            [sys.executable, "-m", "pulse", "alerts", "--json"], env=env, capture_output=True, text=True, timeout=60
        )
        assert read.returncode == 0, read.stderr[-2000:]
        assert sorted(orjson.loads(line)["alert_id"] for line in read.stdout.splitlines()) == sorted(
            a["alert_id"] for a in alerts
        )
    finally:
        stop_process(console, 30)
