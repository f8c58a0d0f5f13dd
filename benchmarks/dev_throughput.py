"""Single-worker throughput on a preloaded backlog.

Usage: .venv/bin/python benchmarks/dev_throughput.py [CUSTOMERS] [--orders-only]

Starts Tansu and Redis (as `pulse dev` does), produces the whole generated
history first (the realistic four-kind mix, or orders only), then starts one
worker and times it from its first scored event to the last, by polling its
pulse_events_total. The producer is done before the worker starts, so only
the worker, the broker and Redis share the machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pulse.devstack import DevStack, free_port
from pulse.simulate import generate_events, generate_orders, send
from pulse_config.settings import load_settings
from streams.admin import ensure_topics
from streams.security import kafka_client_kwargs
from testing.stack import start_pulse

#: Bounds of every wait here (seconds).
SCORING_SECONDS = 600
POLL_SECONDS = 0.1


def scored_so_far(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(v) for v in re.findall(r"^pulse_events_total\{[^}]*\} (\S+)", text, re.M))


def main(customers: int, orders_only: bool) -> None:
    log_dir = Path(tempfile.mkdtemp(prefix="pulse-bench-"))
    stack = DevStack.start(log_dir)
    worker = None
    try:
        port = free_port()
        env = {
            **os.environ,
            **stack.env(),
            "PULSE_ENV_FILE": "",
            "PULSE_METRICS_PORT": str(port),
            "PULSE_BROKER_REBALANCE_TIMEOUT": "3",
            "PULSE_BROKER_SESSION_TIMEOUT": "6",
        }
        os.environ.update({k: v for k, v in env.items() if k.startswith("PULSE_")})
        settings = load_settings()
        asyncio.run(ensure_topics(settings))
        if orders_only:
            events = [("order", o) for o in generate_orders(customers, 365, seed=7)]
        else:
            events = generate_events(customers, 365, seed=7)
        started = time.perf_counter()
        asyncio.run(send(kafka_client_kwargs(settings), settings.input_topics(), events))
        print(f"preloaded {len(events)} events in {time.perf_counter() - started:.1f}s")
        worker = start_pulse(["worker"], env, log_dir / "worker.log")
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + SCORING_SECONDS
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited with {worker.returncode}; see {log_dir / 'worker.log'}")
            samples.append((time.monotonic(), scored_so_far(port)))
            if samples[-1][1] >= len(events):
                break
            time.sleep(POLL_SECONDS)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(60)
        stack.close()
    first = next(t for t, n in samples if n > 0)
    last = next((t for t, n in samples if n >= len(events)), None)
    if last is None:
        raise SystemExit(f"only {samples[-1][1]:.0f} of {len(events)} events scored in {SCORING_SECONDS}s")
    kind = "orders only" if orders_only else "four-kind mix"
    print(
        f"{kind}: {len(events)} events, first->last scored {last - first:.1f}s, "
        f"{len(events) / (last - first):.0f} events/s"
    )


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(int(args[0]) if args else 8000, "--orders-only" in sys.argv)
