"""What the worker's main thread would save by handing profile rendering to another process (issue 18).

Usage::

    PYTHONHASHSEED=0 .venv/bin/python -m benchmarks.render_offload [--customers 5000] [--events 3000] [--rounds 3]

Why: a worker's cost is per customer touched per batch, and about a third of it turns a scored customer into
Redis bytes (``render_profile``, the at-risk ``index_entry``, ``pack_profile``, ``pack_batch``: pure CPython,
see docs/benchmarks.md, session 11). The worker is one thread; the box's other core runs the broker and Redis.
Rendering in a second process needs only what the profile is rendered from: the customer, its state (already
encoded for the changelog), the clock, CLV and churn (msgspec values). This times, on the main thread, both
sides per profile over the profiles of ``benchmarks.processor_cost``'s timed batches (as ``render_cost``
captures them): rendering and packing them here, against encoding their inputs with msgpack and writing them
to a pipe that a child process drains. CPU time of this process (``time.process_time``), alternated rounds.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from benchmarks.render_cost import capture


def drain(conn: Connection) -> None:
    """The child: read until the empty message."""
    while conn.recv_bytes():
        pass


def main(argv: list[str] | None = None) -> int:
    from pulse_config.settings import Settings
    from schemas.profile import render_profile
    from streams.at_risk import index_entry
    from streams.codec import decode_state
    from streams.sinks.redis_profiles import pack_batch, pack_profile

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--customers", type=int, default=5000)
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    items = capture(args.customers, args.events, args.seed, 2)
    settings = Settings(_env_file=None)
    gc.set_threshold(*settings.gc_thresholds)  # as the worker runs
    config, currency = settings.scoring(), settings.base_currency
    prefix, vip_value = settings.redis_key_prefix, settings.vip_value
    decoded = [(cid, decode_state(raw), now, clv, risk) for cid, raw, now, clv, risk in items]
    encoder = msgspec.msgpack.Encoder()
    receiving, sending = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.Process(target=drain, args=(receiving,), daemon=True)
    child.start()

    def render_here() -> int:
        profiles = [render_profile(cid, s, now, config, currency, clv, risk) for cid, s, now, clv, risk in decoded]
        for profile in profiles:
            index_entry(profile)
        pack_batch({pr.customer_id: pack_profile(pr, prefix, vip_value) for pr in profiles}, prefix)
        return 0

    def hand_over() -> int:
        payload = encoder.encode(items)  # (customer, encoded state, clock, CLV, churn) per profile
        sending.send_bytes(payload)
        return len(payload)

    sides: list[tuple[str, Callable[[], int]]] = [("render and pack here", render_here), ("hand over", hand_over)]
    results: dict[str, list[float]] = {name: [] for name, _ in sides}
    sizes: list[int] = []
    try:
        for _ in range(args.rounds):
            for name, side in sides:
                started = time.process_time()
                size = side()
                results[name].append((time.process_time() - started) / len(items) * 1e6)
                if size:
                    sizes.append(size)
    finally:
        sending.send_bytes(b"")
        child.join(timeout=10)
    out: dict[str, Any] = {"profiles": len(items), "bytes_per_profile": round(sizes[-1] / len(items))}
    out |= {name: [round(us, 1) for us in values] for name, values in results.items()}
    print(msgspec.json.encode(out).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
