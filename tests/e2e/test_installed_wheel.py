"""The installed package, as deploy/Dockerfile installs it: a wheel in a fresh virtualenv, no checkout.

Every other test imports the editable checkout, where tests/ and benchmarks/ sit next to the
packages: an installed module that imports them works there and crashes in production (issue 16:
``pulse --help`` failed with ``No module named 'benchmarks'``). Here the wheel is built from
exactly the files the Dockerfile copies, installed (not editable) into a new virtualenv, and run
from an empty directory: ``pulse --help``, ``pulse config``, ``pulse bench`` (a clear message) and
``pulse worker`` on Apache Kafka until one order's profile is in Redis.

Offline and quick: the wheel is built without build isolation (the dev extra's setuptools), and
the new virtualenv gets its third-party dependencies from the development virtualenv's
site-packages through a ``.pth`` to a directory of links that leaves out customer-pulse itself
(its editable hook, metadata and the packages); pip then installs the wheel with ``--no-index``,
so the wheel's declared dependencies must be satisfied by what is there, and nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis

from pulse.devstack import DevStack, free_port, kafka_available, stop_process
from streams.sinks.redis_profiles import profile_key
from testing.stack import CONVERGE_SECONDS, REPO, TEST_KAFKA_JVM_OPTIONS, produce, wait_until

pytestmark = pytest.mark.e2e

#: the packages the wheel must ship (pyproject's packages.find) and the folders it must not reach
PACKAGES = ("pulse", "pulse_config", "streams", "scoring", "schemas")
CHECKOUT_ONLY = ("tests", "testing", "benchmarks")
#: bound on each build/install step
STEP_SECONDS = 180.0


@pytest.fixture(scope="module")
def devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """Apache Kafka (what users deploy on) and Redis for this module: overrides the suite's Tansu stack."""
    reason = kafka_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Apache Kafka cannot start under CI: {reason}")
        pytest.skip(reason)
    stack = DevStack.start(
        tmp_path_factory.mktemp("kafka-stack"), broker="kafka", kafka_jvm_options=TEST_KAFKA_JVM_OPTIONS
    )
    yield stack
    stack.close()


@dataclass
class Installed:
    venv: Path
    site_packages: Path
    cwd: Path
    wheel: Path

    @property
    def pulse(self) -> str:
        return str(self.venv / "bin" / "pulse")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: no PYTHONPATH, no dev env file, nothing pointing at the checkout."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PULSE_", "VIRTUAL_ENV"))}
        return {**keep, "PULSE_ENV_FILE": "", "PYTHONDONTWRITEBYTECODE": "1", **extra}

    def run(self, *args: str, timeout: float = 60.0, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), cwd=self.cwd, env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )


def dockerfile_sources() -> list[str]:
    """What deploy/Dockerfile copies into the image before ``pip install``: the wheel's whole input."""
    sources = []
    for line in (REPO / "deploy" / "Dockerfile").read_text().splitlines():
        match = re.match(r"COPY\s+(.+)\s+\S+$", line.strip())
        if match:
            sources += match.group(1).split()
    return sources


def _check(cmd: list[str], **kw) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_SECONDS, **kw)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    started = time.monotonic()
    # 1. the build context of the Dockerfile, copied: nothing else of the checkout can end up in the wheel
    src = root / "src"
    src.mkdir()
    sources = dockerfile_sources()
    assert {"pyproject.toml", *PACKAGES} <= set(sources), sources
    for name in sources:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))  # built, not copied
        else:
            shutil.copy2(path, src / name)
    dist = root / "dist"
    _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)])
    (wheel,) = dist.glob("customer_pulse-*.whl")

    # 2. a fresh virtualenv; the third-party dependencies of the dev venv, without customer-pulse
    venv = root / "venv"
    _check([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    )
    deps = root / "deps"
    deps.mkdir()
    ours = re.compile(r"^(__editable__|_?customer_pulse|pip\b|pip-|setuptools|_distutils_hack|pkg_resources)|\.pth$")
    dev_site = Path(sysconfig.get_path("purelib"))
    for entry in dev_site.iterdir():
        if not ours.search(entry.name) and entry.name not in (*PACKAGES, *CHECKOUT_ONLY):
            (deps / entry.name).symlink_to(entry)
    (site / "dev-dependencies.pth").write_text(f"{deps}\n")

    # 3. pip installs the wheel (with the extra the Dockerfile uses) offline: its requirements must be met
    _check([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-index", "-q",
            f"{wheel}[rocksdb]"])  # fmt: skip
    cwd = root / "run"
    cwd.mkdir()
    print(f"wheel built and installed in {time.monotonic() - started:.1f} s")
    return Installed(venv, site, cwd, wheel)


def test_the_wheel_holds_the_packages_and_nothing_of_the_checkout(installed):
    import zipfile

    names = set(zipfile.ZipFile(installed.wheel).namelist())
    tops = {name.split("/")[0] for name in names}
    # the C renderer, compiled for this Python, and its types
    assert any(re.fullmatch(r"schemas/_native\.cpython-\d+[^/]*\.so", name) for name in names), sorted(names)
    assert "schemas/_native.pyi" in names
    assert set(PACKAGES) <= tops
    assert not tops & set(CHECKOUT_ONLY), tops
    # the service console's package data: templates and the vendored htmx (no CDN at run time)
    assert {"streams/console/templates/queue.html", "streams/console/static/htmx-2.0.11.min.js"} <= names


def test_no_installed_module_imports_the_checkout_only_folders(installed):
    """Imports inside functions too: no installed module names benchmarks/ or tests/ (pulse bench starts
    ``python -m benchmarks`` of a checkout instead of importing it)."""
    import zipfile

    allowed: set[str] = set()
    pattern = re.compile(rf"^\s*(from|import)\s+({'|'.join(CHECKOUT_ONLY)})\b", re.MULTILINE)
    wheel = zipfile.ZipFile(installed.wheel)
    offenders = [n for n in wheel.namelist() if n.endswith(".py") and pattern.search(wheel.read(n).decode())]
    assert set(offenders) <= allowed, offenders


def test_modules_come_from_the_venv_and_the_checkout_is_unreachable(installed):
    probe = (
        "import importlib, importlib.util, json, sys; "
        f"mods = {list(PACKAGES)!r}; "
        "files = {m: importlib.import_module(m).__file__ for m in mods}; "
        f"absent = {{m: importlib.util.find_spec(m) is None for m in {list(CHECKOUT_ONLY)!r}}}; "
        # every module of the packages imports (a module-level import of tests/ or benchmarks/ fails here)
        "import pkgutil; "
        "files.update({i.name: importlib.import_module(i.name).__file__ for m in mods "
        "for i in pkgutil.walk_packages(importlib.import_module(m).__path__, m + '.') "
        "if not i.name.endswith('.__main__')}); "
        "print(json.dumps({'files': files, 'absent': absent, 'path': sys.path}))"
    )
    result = installed.run(installed.python, "-c", probe)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    for module, file in seen["files"].items():
        assert Path(file).is_relative_to(installed.site_packages), (module, file)
    assert all(seen["absent"].values()), seen["absent"]
    assert not any(Path(p).resolve() == REPO.resolve() for p in seen["path"] if p), seen["path"]


def test_cli_help_config_and_bench_message(installed):
    result = installed.run(installed.pulse, "--help")
    assert result.returncode == 0, result.stderr
    for command in ("worker", "simulate", "config", "fit", "alerts", "stats", "bench", "profile", "console"):
        assert command in result.stdout
    result = installed.run(installed.pulse, "config")
    assert result.returncode == 0, result.stderr
    assert "`PULSE_BROKER_URL`" in result.stdout and "`PULSE_CLV_PARAMS_FILE`" in result.stdout
    # benchmarks/ is checkout-only: one clear line, not a traceback, whatever the arguments
    for args in ([], ["--events", "1000"]):
        result = installed.run(installed.pulse, "bench", *args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip().startswith("pulse bench needs a source checkout"), result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("render_process", ["false", "true"])
def test_installed_worker_scores_an_order_into_redis(installed, namespace, render_process: str):
    """With PULSE_PROFILE_RENDER_PROCESS the spawned render process imports the installed packages too."""
    settings = namespace.settings
    metrics_port, api_port = free_port(), free_port()
    log = installed.cwd / f"worker-{uuid.uuid4().hex[:6]}.log"
    env = installed.env(
        **{
            **namespace.env,
            "PULSE_STORE": "rocksdb://",  # the Dockerfile's store: rocksdict must come with the extra
            "PULSE_DATA_DIR": str(installed.cwd / f"data-{render_process}"),  # a RocksDB of its own per run
            "PULSE_METRICS_PORT": str(metrics_port),
            "PULSE_API_PORT": str(api_port),
            "PULSE_PROFILE_RENDER_PROCESS": render_process,
        }
    )
    proc = subprocess.Popen(
        [installed.pulse, "worker"],
        cwd=installed.cwd,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def tail() -> str:
        return "\n".join(log.read_text(errors="replace").splitlines()[-40:])

    try:
        assert wait_until(lambda: ready() or proc.poll() is not None, CONVERGE_SECONDS), tail()
        assert proc.poll() is None, f"worker exited with {proc.returncode}\n{tail()}"
        order = {
            "event_id": "wheel-1",
            "customer_id": "CWHEEL1",
            "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "order_id": "OWHEEL1",
            "amount": 42.5,
            "currency": settings.base_currency,
            "status": "completed",
        }
        produce(namespace.bootstrap, settings.topic_orders, [(b"CWHEEL1", orjson.dumps(order))])
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        key = profile_key(settings.redis_key_prefix, "CWHEEL1")
        assert wait_until(lambda: client.exists(key) == 1 or proc.poll() is not None), tail()
        fields = client.hgetall(key)
        assert fields, f"no profile in Redis\n{tail()}"
        assert fields["orders"] == "1" and float(fields["revenue"]) == 42.5, fields
        assert "pulse worker: CLV parameters: the defaults (no file at .pulse/clv-params.json" in log.read_text()
        assert ("profile render process started" in log.read_text()) == (render_process == "true")
        # the wheel carries the compiled renderer (setup.py's extension, built by pip with the machine's compiler)
        assert "profiles: rendered and packed in C (schemas._native)" in log.read_text(), tail()
    finally:
        stop_process(proc, 30)
    assert proc.returncode == 0, f"worker did not stop cleanly on SIGTERM: {proc.returncode}\n{tail()}"
