"""Rough single-worker throughput: run `pulse dev`, poll its pulse_events_total until every order is scored.

Usage: .venv/bin/python benchmarks/dev_throughput.py [CUSTOMERS]

A baseline until the benchmark harness of the performance issue exists. The
generator produces concurrently on the same machine, so this measures the
worker sharing the CPU with its producer, broker and Redis.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request

#: Bounds of every wait here (seconds).
STARTUP_SECONDS = 120
SCORING_SECONDS = 600
POLL_SECONDS = 0.2


def scored_so_far(port: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(v) for v in re.findall(r"^pulse_events_total\{[^}]*\} (\S+)", text, re.M))


def main(customers: int) -> None:
    cmd = [sys.executable, "-m", "pulse", "dev", "--customers", str(customers), "--duration", str(SCORING_SECONDS)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port, total = None, None
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while total is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if found := re.search(r"metrics http://127.0.0.1:(\d+)", line):
                port = found.group(1)
            if found := re.search(r"sending (\d+) events", line):
                total = int(found.group(1))
        if port is None or total is None:
            raise SystemExit("pulse dev did not start")
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + SCORING_SECONDS
        while time.monotonic() < deadline:
            samples.append((time.monotonic(), scored_so_far(port)))
            if samples[-1][1] >= total:
                break
            time.sleep(POLL_SECONDS)
    finally:
        proc.terminate()
        proc.wait(60)
    first = next(t for t, n in samples if n > 0)
    last = next((t for t, n in samples if n >= total), None)
    if last is None:
        raise SystemExit(f"only {samples[-1][1]:.0f} of {total} events scored in {SCORING_SECONDS}s")
    print(f"events={total} first->last scored {last - first:.1f}s throughput {total / (last - first):.0f} events/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
