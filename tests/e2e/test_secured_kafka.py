"""A Kafka cluster that requires SASL, as production clusters do: a real broker with SASL_PLAINTEXT and SASL_SSL
listeners (TLS with a certificate for 127.0.0.1 made by openssl, checked against its CA).

Every Kafka client of the worker (Faust's consumer and producer, the admin client that creates the topics, the
offset guard's read-back, the changelog recovery and repair, the population follower) must authenticate: one
that does not fails against such a listener. Until session 23 no test had a worker talk to an authenticating
broker. The broker here also keeps a PLAINTEXT listener, for its own readiness probe only.

Mechanisms: PLAIN (credentials in the broker's JAAS line) and SCRAM-SHA-512 (a user added with Kafka's own
``kafka-configs`` tool). A wrong password or mechanism must end the worker's start-up with one clear line (exit
78), not read as a broker that is down.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pulse.devstack import KafkaBroker, _kafka_java, free_port
from pulse.simulate import generate_orders
from streams.security import kafka_client_kwargs
from streams.startup import EXIT_CONFIG
from testing.reference import batch_order_profiles
from testing.stack import TEST_KAFKA_JVM_OPTIONS, WorkerPool, make_namespace, profile_diffs, wait_until

pytestmark = pytest.mark.e2e

END = datetime(2026, 6, 30, tzinfo=UTC)
USER, PASSWORD = "pulse", "pulse-secret"
#: how long a worker with a wrong password gets to say so and stop
REFUSAL_SECONDS = 90


#: the broker, its port per security protocol, the CA file of its certificate
SecuredKafka = tuple[KafkaBroker, dict[str, int], Path]
#: the keystore's password (a throwaway certificate for 127.0.0.1, made per test run)
KEYSTORE_PASSWORD = "changeit"


def make_certificates(folder: Path) -> tuple[Path, Path]:
    """A CA and a server certificate for IP 127.0.0.1 signed by it, with openssl: (the CA's PEM file, the server's
    PKCS12 keystore for Kafka). Also a client certificate signed by the same CA, for the mutual-TLS listener:
    ``client.pem`` and ``client.key`` beside them."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate for the SASL_SSL listener")
    ca_key, ca, key, csr, cert, ext = (folder / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem", "s.ext"))
    keystore = folder / "server.p12"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2"]
        + ["-subj", "/CN=pulse-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2"]
        + ["-extfile", ext],
        ["pkcs12", "-export", "-in", cert, "-inkey", key, "-out", keystore, "-passout", f"pass:{KEYSTORE_PASSWORD}"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", folder / "client.key", "-out", folder / "client.csr"]
        + ["-subj", "/CN=pulse-worker"],
        ["x509", "-req", "-in", folder / "client.csr", "-CA", ca, "-CAkey", ca_key, "-CAcreateserial"]
        + ["-out", folder / "client.pem", "-days", "2"],
        # a client certificate of no CA the broker knows (self-signed)
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", folder / "stranger.key"]
        + ["-out", folder / "stranger.pem", "-days", "2", "-subj", "/CN=stranger"],
    ]
    for step in steps:
        done = subprocess.run(["openssl", *map(str, step)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    return ca, keystore


@pytest.fixture(scope="module")
def sasl_kafka(
    own_kafka_redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KafkaBroker, dict[str, int], Path]]:
    """A Kafka broker of its own, for this module's tests, with SASL_PLAINTEXT and SASL_SSL listeners (PLAIN and
    SCRAM-SHA-512 on each) beside PLAINTEXT; yields it, the port per protocol and the CA file."""
    home = tmp_path_factory.mktemp("sasl-kafka")
    ca, keystore = make_certificates(home)
    port, controller = free_port(), free_port()
    ports = {"SASL_PLAINTEXT": free_port(), "SASL_SSL": free_port(), "SSL": free_port()}
    clients = ",".join(f"{name}://127.0.0.1:{p}" for name, p in ports.items())
    props = {
        "listeners": f"PLAINTEXT://127.0.0.1:{port},{clients},CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},{clients}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,"
        "SSL:SSL,CONTROLLER:PLAINTEXT",
        # mutual TLS: the SSL listener requires a client certificate signed by the test's CA (a PEM truststore)
        "listener.name.ssl.ssl.client.auth": "required",
        "listener.name.ssl.ssl.truststore.type": "PEM",
        "listener.name.ssl.ssl.truststore.location": str(ca),
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(keystore),
        "ssl.keystore.password": KEYSTORE_PASSWORD,
        "ssl.key.password": KEYSTORE_PASSWORD,
    }
    for listener in ("sasl_plaintext", "sasl_ssl"):
        props[f"listener.name.{listener}.plain.sasl.jaas.config"] = (
            f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{USER}="{PASSWORD}";'
        )
        props[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        )
    broker = KafkaBroker.start(home, props, port=port, controller_port=controller, jvm_options=TEST_KAFKA_JVM_OPTIONS)
    try:
        added = subprocess.run(
            [
                *_kafka_java(broker.home, broker.jvm_options),
                "kafka.admin.ConfigCommand",
                "--bootstrap-server",
                broker.bootstrap,
                "--alter",
                "--entity-type",
                "users",
                "--entity-name",
                USER,
                "--add-config",
                f"SCRAM-SHA-512=[iterations=4096,password={PASSWORD}]",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert added.returncode == 0, added.stdout + added.stderr
        yield broker, ports, ca
    finally:
        broker.stop()
        broker.remove_data()


def sasl_env(own_kafka_redis, sasl_kafka, protocol: str, mechanism: str) -> dict[str, str]:
    _, ports, ca = sasl_kafka
    if protocol == "SSL":  # mutual TLS: the client certificate is the credential
        return {
            "PULSE_BROKER_URL": f"kafka://127.0.0.1:{ports[protocol]}",
            "PULSE_REDIS_URL": own_kafka_redis.url,
            "PULSE_BROKER_SECURITY_PROTOCOL": "SSL",
            "PULSE_BROKER_SSL_CAFILE": str(ca),
            "PULSE_BROKER_SSL_CERTFILE": str(ca.parent / "client.pem"),
            "PULSE_BROKER_SSL_KEYFILE": str(ca.parent / "client.key"),
        }
    return {
        "PULSE_BROKER_URL": f"kafka://127.0.0.1:{ports[protocol]}",
        "PULSE_REDIS_URL": own_kafka_redis.url,
        "PULSE_BROKER_SECURITY_PROTOCOL": protocol,
        "PULSE_BROKER_SASL_MECHANISM": mechanism,
        "PULSE_BROKER_SASL_USERNAME": USER,
        "PULSE_BROKER_SASL_PASSWORD": PASSWORD,
        **({"PULSE_BROKER_SSL_CAFILE": str(ca)} if protocol == "SASL_SSL" else {}),
    }


def produce_authenticated(settings, orders: list[dict]) -> None:
    async def go() -> None:
        producer = AIOKafkaProducer(**kafka_client_kwargs(settings), acks="all")
        await producer.start()
        try:
            for o in orders:
                await producer.send(settings.topic_orders, key=o["customer_id"].encode(), value=orjson.dumps(o))
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(asyncio.wait_for(go(), 120))


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_PLAINTEXT", "PLAIN"), ("SASL_SSL", "SCRAM-SHA-512"), ("SSL", "client-certificate")],
    ids=["plain", "scram-tls", "mutual-tls"],
)
def test_a_worker_scores_through_a_sasl_listener(sasl_kafka, own_kafka_redis, tmp_path, protocol, mechanism):
    env = sasl_env(own_kafka_redis, sasl_kafka, protocol, mechanism)
    namespace = make_namespace(env, tmp_path)  # creates the topics: the admin client authenticates too
    settings = namespace.settings
    pool = WorkerPool(namespace)
    try:
        worker = pool.start()
        orders = generate_orders(customers=40, days=200, seed=11, end=END)
        produce_authenticated(settings, orders[: len(orders) // 2])
        assert wait_until(lambda: not profile_diffs(settings, batch_order_profiles(orders[: len(orders) // 2])))
        worker.stop()  # a restart recovers its state from the changelog, through the same listener
        worker = pool.start()
        produce_authenticated(settings, orders[len(orders) // 2 :])
        expected = batch_order_profiles(orders)
        converged = wait_until(lambda: not profile_diffs(settings, expected))
        diffs = profile_diffs(settings, expected)
        assert converged, f"{len(diffs)} profiles differ, e.g. {diffs[:2]}\n{worker.log_tail()}"
        assert worker.alive(), worker.log_tail()
        log = worker.log.read_text(errors="replace")
        assert "Traceback" not in log and "Authentication" not in log
    finally:
        pool.stop_all()


REFUSED = f"refused the credentials of PULSE_BROKER_SASL_USERNAME='{USER}'"
UNTRUSTED = "TLS certificate of the broker at"
NO_CLIENT_CERTIFICATE = "refused the TLS handshake without a client certificate"


@pytest.mark.parametrize(
    ("protocol", "change", "said"),
    [
        ("SASL_PLAINTEXT", {"PULSE_BROKER_SASL_PASSWORD": "not-the-password"}, REFUSED),
        ("SASL_PLAINTEXT", {"PULSE_BROKER_SASL_MECHANISM": "SCRAM-SHA-256"}, REFUSED),
        ("SASL_SSL", {"PULSE_BROKER_SSL_CAFILE": ""}, UNTRUSTED),
        ("SSL", {"PULSE_BROKER_SSL_CERTFILE": "", "PULSE_BROKER_SSL_KEYFILE": ""}, NO_CLIENT_CERTIFICATE),
        (
            "SSL",
            {"PULSE_BROKER_SSL_CERTFILE": "{certs}/stranger.pem", "PULSE_BROKER_SSL_KEYFILE": "{certs}/stranger.key"},
            "refused the TLS handshake with the client certificate PULSE_BROKER_SSL_CERTFILE=",
        ),
    ],
    ids=["password", "mechanism", "untrusted-certificate", "no-client-certificate", "unknown-client-certificate"],
)
def test_refused_credentials_stop_the_start_with_one_clear_line(
    sasl_kafka, own_kafka_redis, tmp_path, protocol, change, said
):
    """A wrong password, a mechanism the listener does not offer, or a broker certificate the worker cannot check
    (no CA file: the system CAs do not know the test's CA). Until session 23 aiokafka's bootstrap took each for
    an unreachable broker: the worker logged `waiting for the broker ... Unable to bootstrap` and retried for as
    long as PULSE_STARTUP_WAIT_SECONDS allows (forever by default)."""
    namespace = make_namespace(sasl_env(own_kafka_redis, sasl_kafka, protocol, "PLAIN"), tmp_path)
    pool = WorkerPool(namespace)
    try:
        certs = str(sasl_kafka[2].parent)
        worker = pool.start(**{k: v.replace("{certs}", certs) for k, v in change.items()})
        assert worker.proc.wait(REFUSAL_SECONDS) == EXIT_CONFIG, worker.log_tail()
        log = worker.log.read_text(errors="replace")
        [line] = [line for line in log.splitlines() if "refusing to start" in line]
        assert said in line, line
        assert "waiting for the broker" not in log and "Traceback" not in log and PASSWORD not in log
        assert "not-the-password" not in log
    finally:
        pool.stop_all()
