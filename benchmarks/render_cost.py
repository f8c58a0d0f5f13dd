"""Instructions per profile of rendering a profile and packing it for Redis (issue 18), part by part.

Usage::

    PYTHONHASHSEED=0 .venv/bin/python -m benchmarks.render_cost [--customers 5000] [--events 3000]

``benchmarks.processor_cost --scope full`` counts rendering and packing inside a batch; this splits them: it
runs the same seeded batches (``processor_cost.inputs``), keeps what each profile of the timed batches was
rendered from (the customer, its encoded state, the clock, CLV and churn), then replays those renderings under
``valgrind --tool=callgrind`` and prints instructions per profile of ``render_profile``, the at-risk
``index_entry``, ``pack_profile`` (the HSET, the VIP score, the index entry), ``pack_batch`` (the batch's
buffer: the VIP set and the at-risk script), and the state codec's ``encode_state`` and ``decode_state`` of
the same customers' states, each dumped on its own by a client request. Needs valgrind, its
headers and ``cc``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.callgrind import instructions
from benchmarks.processor_cost import inputs, measure

_HELPER_C = r"""
#include <valgrind/callgrind.h>
void part_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void part_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
void part_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""
PARTS = ("render_profile", "index_entry", "pack_profile", "pack_batch", "encode_state", "decode_state")


def _helper() -> ctypes.CDLL:
    lib = Path(tempfile.gettempdir()) / f"pulse-render-cost-{os.getuid()}.so"
    if not lib.exists():
        src = lib.with_suffix(".c")
        src.write_text(_HELPER_C)
        subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    helper = ctypes.CDLL(str(lib))
    helper.part_dump.argtypes = [ctypes.c_char_p]
    return helper


def capture(size: int, events: int, seed: int, warm: int) -> list[tuple[Any, ...]]:
    """What every profile of the benchmark's timed batches (after ``warm`` batches, as processor_cost counts)
    was rendered from; states encoded, since they change later."""
    import streams.processor as processor
    from streams.codec import encode_state

    data = inputs([size], events, seed)  # (scores a generated year through the processor: not recorded)
    batches: list[list[tuple[Any, ...]]] = []
    render, process = processor.render_profile, processor.BatchProcessor.process

    def record(cid, state, now, config, currency, clv, risk):  # type: ignore[no-untyped-def]
        batches[-1].append((cid, encode_state(state), now, clv, risk))
        return render(cid, state, now, config, currency, clv, risk)

    def one_batch(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        batches.append([])
        return process(self, *args, **kwargs)

    processor.render_profile = record  # type: ignore[assignment]
    processor.BatchProcessor.process = one_batch  # type: ignore[method-assign]
    try:
        measure(data, size, "full", warm, "time")
    finally:
        processor.render_profile = render
        processor.BatchProcessor.process = process  # type: ignore[method-assign]
    return [item for batch in batches[warm:] for item in batch]


def replay(path: str) -> None:
    """The child under callgrind: each part over every captured profile, one dump per part."""
    from pulse_config.settings import Settings
    from schemas.profile import render_profile, use_native
    from streams.at_risk import index_entry
    from streams.codec import decode_state, encode_state
    from streams.sinks.redis_profiles import pack_batch, pack_profile

    settings = Settings(_env_file=None)
    gc.set_threshold(*settings.gc_thresholds)  # as the worker runs
    use_native(settings.native_profiles)  # PULSE_NATIVE_PROFILES=false: the Python renderer and packer
    config, currency = settings.scoring(), settings.base_currency
    prefix, vip_value = settings.redis_key_prefix, settings.vip_value
    with open(path, "rb") as f:
        items = [(cid, decode_state(raw), now, clv, risk) for cid, raw, now, clv, risk in pickle.load(f)]
    profiles = [render_profile(cid, s, now, config, currency, clv, risk) for cid, s, now, clv, risk in items]
    helper = _helper()
    helper.part_start()
    profiles = [render_profile(cid, s, now, config, currency, clv, risk) for cid, s, now, clv, risk in items]
    helper.part_dump(b"render_profile")
    for p in profiles:
        index_entry(p)
    helper.part_dump(b"index_entry")
    packed = {p.customer_id: pack_profile(p, prefix, vip_value) for p in profiles}
    helper.part_dump(b"pack_profile")
    pack_batch(packed, prefix)
    helper.part_dump(b"pack_batch")
    # the state codec on the same customers (the checkpoint encodes each written state; a load that misses the
    # state cache decodes it): results kept, so no part pays for freeing another's
    states = [state for _, state, _, _, _ in items]
    encoded = [encode_state(state) for state in states]
    helper.part_dump(b"encode_state")
    decoded = [decode_state(raw) for raw in encoded]
    helper.part_dump(b"decode_state")
    helper.part_stop()
    del decoded


def count(path: str) -> dict[str, int]:
    """Instructions of each part, from a child process under callgrind."""
    return instructions("benchmarks.render_cost", ["--child", path])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--customers", type=int, default=5000)
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--warm", type=int, default=2, help="batches left out, as processor_cost's warm-up")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        replay(args.child)
        return 0
    if shutil.which("valgrind") is None or shutil.which("cc") is None:
        print("needs valgrind, its headers (valgrind/callgrind.h) and cc", file=sys.stderr)
        return 2
    rendered = capture(args.customers, args.events, args.seed, args.warm)
    fd, path = tempfile.mkstemp(suffix=".pickle")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(rendered, f)
        totals = count(path)
    finally:
        os.unlink(path)
    print(f"{args.customers:,} customers, {args.events:,} events: {len(rendered):,} profiles rendered")
    for part in PARTS:
        print(f"  {part:>15}: {totals.get(part, 0) / len(rendered):>9,.0f} instructions/profile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
