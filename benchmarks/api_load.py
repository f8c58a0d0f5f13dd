"""Scoring throughput of one worker with and without load on its HTTP API.

Usage: .venv/bin/python -m benchmarks.api_load [--customers N] [--connections C] [--pin]

For each run (no API load, then API load): starts Tansu and Redis, preloads an order history, starts one worker
with its API, and times the worker from its first scored event to the last (its pulse_events_total), as
benchmarks/dev_throughput.py does. In the loaded run a load generator in a separate process (a small aiohttp
client, C concurrent keep-alive connections asking for profiles and VIP pages as fast as they are answered)
runs from the worker's start until its last event is scored, and reports its requests/s; the CPU seconds of
the worker, of its API process and of the generator are printed too. ``--client-nice N`` runs the generator N
steps nicer (on two shared cores, the nearest thing to a client on another machine). ``--rate R``: at
most R requests/s (open loop), so that two versions of the worker face the same load.

``--pin``: the worker (and the API process it spawns) on CPU 0, the load generator on CPU 1 (Linux), so the
generator does not take the scoring core and what is measured is the API process's own effect on scoring.
Without it everything shares the two cores. Numbers are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.dev_throughput import POLL_SECONDS, SCORING_SECONDS, scored_so_far
from pulse.devstack import DevStack, free_port, stop_process
from pulse.simulate import customer_id, generate_orders, send
from pulse_config.settings import load_settings
from streams.admin import ensure_topics
from streams.security import kafka_client_kwargs
from testing.stack import start_process

#: How long the load generator waits for the API to come up.
API_START_SECONDS = 60


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def pinned(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def run(
    customers: int, connections: int, loaded: bool, pin: bool, rate: float = 0.0, client_nice: int = 0
) -> dict[str, float]:
    log_dir = Path(tempfile.mkdtemp(prefix="pulse-apibench-"))
    stack = DevStack.start(log_dir)
    worker = client = None
    try:
        port, api_port = free_port(), free_port()
        env = {
            **os.environ,
            **stack.env(),
            "PULSE_ENV_FILE": "",
            "PULSE_METRICS_PORT": str(port),
            "PULSE_API_PORT": str(api_port),
            "PULSE_BROKER_REBALANCE_TIMEOUT": "3",
            "PULSE_BROKER_SESSION_TIMEOUT": "6",
        }
        os.environ.update({k: v for k, v in env.items() if k.startswith("PULSE_")})
        settings = load_settings()
        asyncio.run(ensure_topics(settings))
        events = [("order", o) for o in generate_orders(customers, 365, seed=7)]
        asyncio.run(send(kafka_client_kwargs(settings), settings.input_topics(), events))
        worker = start_process(
            [*pinned(0 if pin else None), sys.executable, "-m", "pulse", "worker"], env, log_dir / "worker.log"
        )
        if loaded:
            client = subprocess.Popen(
                [
                    *pinned(1 if pin else None),
                    *(["nice", "-n", str(client_nice)] if client_nice else []),
                    sys.executable,
                    "-m",
                    "benchmarks.api_load",
                    "--client",
                    f"http://127.0.0.1:{api_port}",
                    "--customers",
                    str(customers),
                    "--connections",
                    str(connections),
                    "--rate",
                    str(rate),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=(log_dir / "client.log").open("wb"),
                text=True,
            )
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + SCORING_SECONDS
        cpu_first: tuple[float, float] | None = None  # (worker, its API process) CPU seconds at the first event
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited with {worker.returncode}; see {log_dir / 'worker.log'}")
            samples.append((time.monotonic(), scored_so_far(port)))
            if samples[-1][1] > 0 and cpu_first is None:
                cpu_first = (cpu_seconds(worker.pid), sum(cpu_seconds(c) for c in children(worker.pid)))
            if samples[-1][1] >= len(events):
                break
            time.sleep(POLL_SECONDS)
        cpu_last = (cpu_seconds(worker.pid), sum(cpu_seconds(c) for c in children(worker.pid)))
        cpu = {}
        if cpu_first is not None:
            cpu = {"worker_cpu": cpu_last[0] - cpu_first[0], "api_cpu": cpu_last[1] - cpu_first[1]}
        if client is not None:
            cpu["client_cpu"] = cpu_seconds(client.pid)
        load = {}
        if client is not None:
            client.terminate()  # the client prints its totals on SIGTERM
            out, _ = client.communicate(timeout=30)
            line = next((x for x in out.splitlines() if x.startswith("LOAD ")), "")
            load = {"api_" + k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        if worker is not None:
            stop_process(worker, 60)
        stack.close()
    first = next(t for t, n in samples if n > 0)
    last = next((t for t, n in samples if n >= len(events)), None)
    if last is None:
        raise SystemExit(f"only {samples[-1][1]:.0f} of {len(events)} events scored in {SCORING_SECONDS}s")
    return {"events": len(events), "seconds": last - first, "rate": len(events) / (last - first), **load, **cpu}


async def load_generator(base: str, customers: int, connections: int, rate: float = 0.0) -> None:
    """The load generator's process: requests as fast as answered until SIGTERM, then prints the totals."""
    import signal

    import aiohttp

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    done = errors = 0
    rng = random.Random(1)
    deadline = time.monotonic() + SCORING_SECONDS
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        ready_by = time.monotonic() + API_START_SECONDS
        while time.monotonic() < ready_by and not stop.is_set():  # bounded wait for the API process
            try:
                async with session.get(base + "/health") as response:
                    if response.status == 200:
                        break
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(0.2)
        started = time.monotonic()

        async def one() -> None:
            nonlocal done, errors
            interval = connections / rate if rate else 0.0  # each connection's share of the rate
            next_at = time.monotonic()
            while not stop.is_set() and time.monotonic() < deadline:
                if interval:
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                path = f"/customers/{customer_id(rng.randrange(customers))}" if rng.random() < 0.9 else "/vips?limit=20"
                try:
                    async with session.get(base + path) as response:
                        await response.read()
                        done += 1
                except (aiohttp.ClientError, OSError):
                    errors += 1
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(one() for _ in range(connections)))
        elapsed = time.monotonic() - started
    print(
        f"LOAD requests={done} errors={errors} seconds={elapsed:.1f} rate={done / max(elapsed, 1e-9):.0f}", flush=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pin", action="store_true", help="worker on CPU 0, load generator on CPU 1")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="API requests/s to send at most (0: as fast as answered)"
    )
    parser.add_argument("--client-nice", type=int, default=0, help="run the load generator this much nicer")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: run as the load generator
    args = parser.parse_args()
    if args.client:
        asyncio.run(load_generator(args.client, args.customers, args.connections, args.rate))
        return
    quiet = run(args.customers, args.connections, loaded=False, pin=args.pin)
    print(
        f"no API load:   {quiet['events']} events in {quiet['seconds']:.1f}s = {quiet['rate']:.0f} events/s", flush=True
    )
    loaded = run(
        args.customers, args.connections, loaded=True, pin=args.pin, rate=args.rate, client_nice=args.client_nice
    )
    print(
        f"with API load: {loaded['events']} events in {loaded['seconds']:.1f}s = {loaded['rate']:.0f} events/s "
        f"while the API answered {loaded.get('api_rate', 0):.0f} requests/s "
        f"({loaded.get('api_requests', 0):.0f} in {loaded.get('api_seconds', 0):.1f}s, "
        f"{loaded.get('api_errors', 0):.0f} errors)"
    )
    print(f"change: {100 * (loaded['rate'] / quiet['rate'] - 1):+.1f} %")
    for name, r in (("no API load", quiet), ("with API load", loaded)):
        if "worker_cpu" in r:
            print(
                f"{name}: CPU while scoring: worker process {r['worker_cpu']:.1f}s, "
                f"its API process {r['api_cpu']:.1f}s, load generator {r.get('client_cpu', 0):.1f}s in all "
                f"(machine load average now {os.getloadavg()[0]:.1f})"
            )


if __name__ == "__main__":
    main()
