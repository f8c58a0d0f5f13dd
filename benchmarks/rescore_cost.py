"""Instructions per re-scored customer (issue 18): ``BatchProcessor._rescore`` and its parts, as a live batch has it.

Usage::

    .venv/bin/python -m benchmarks.rescore_cost [PART ...]     (default: every part)

``benchmarks.live_cost`` counts what a whole live batch costs per event; this says what re-scoring one touched
customer costs and where: ``processor_cost``'s 5,000 cloned customers, each re-scored once at a clock one hour
after their latest event, in groups of ``--group`` (default 450: a live batch of 500 events touches about as
many customers) with a fresh ``Ranking`` per group, as each batch builds one (so the rank lookups miss the
batch's memo as they do live). Parts: ``rescore`` (the whole ``_rescore``: RFM, VIP, CLV, churn, episodes,
activity flags, due time), ``rank`` (``scoring.population.rescore`` alone), ``assess`` (``assess_customer``:
CLV and the churn signals), ``tags`` (one tallied footprint), ``tag_key`` (what the processor takes instead,
twice per customer: the tallies' inputs, compared; the tags are expanded only when they differ). Each part
runs in a child process under ``valgrind --tool=callgrind`` with instrumentation on only around the second of
two passes (the first warms caches and memos as a running worker has them), so the count does not depend on
the load of the box. Needs valgrind, its headers and ``cc`` (the helper of ``processor_cost``).
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import sys
import tempfile
from typing import Any

from benchmarks.callgrind import timed_instructions
from benchmarks.processor_cost import PARTITIONS, _helper, cloned_processor, inputs

HOUR_MS = 3_600_000
CUSTOMERS = 5_000
NAMES = ("rescore", "rank", "assess", "tags", "tag_key")


def _child(part: str, data_file: str, group: int) -> None:
    from pulse_config.settings import Settings
    from scoring.customer import assess_customer
    from scoring.footprint import TAGS, footprint, tag_key
    from scoring.population import rescore
    from scoring.rfm import Ranking
    from streams.codec import decode_state
    from streams.processor import BatchOutcome

    with open(data_file, "rb") as f:
        data = pickle.load(f)
    processor, store = cloned_processor(Settings(_env_file=None, partitions=PARTITIONS), data, CUSTOMERS)
    items = list(store.items())
    now = max(decode_state(raw).last_event_ms or 0 for raw in store.values()) + HOUR_MS
    for population in processor.population.local.values():
        population.clock_ms = now
    processor._population_stands()
    config = processor.config
    gc.disable()

    def one_pass(helper: Any) -> None:
        states = [(key, decode_state(raw)) for key, raw in items]
        if helper is not None:
            helper.pulse_start()
        for start in range(0, len(states), group):
            ranking = processor._ranking = Ranking(processor.population.parts(), config.rfm)
            out = BatchOutcome()
            for key, state in states[start : start + group]:
                if part == "rescore":
                    processor._rescore(key, state, now, out)
                elif part == "rank":
                    rescore(state, ranking, config.rfm)
                elif part == "assess":
                    assess_customer(state, now, processor._gap_days, config, processor._lifetime_years)
                elif part == "tags":
                    footprint(state, config.rfm, TAGS)
                else:
                    tag_key(state)
        if helper is not None:
            helper.pulse_stop()

    one_pass(None)
    one_pass(_helper())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("parts", nargs="*", help=f"parts to count (default: all of {', '.join(NAMES)})")
    p.add_argument("--group", type=int, default=450, help="customers per Ranking (a live batch's)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.data, args.group)
        return 0
    if _helper() is None:
        print("needs valgrind, its headers (valgrind/callgrind.h) and cc", file=sys.stderr)
        return 2
    fd, data_file = tempfile.mkstemp(suffix=".pickle")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(inputs([CUSTOMERS], 10, 7), f)
        for name in args.parts or NAMES:
            child = ["--child", name, "--data", data_file, "--group", str(args.group)]
            count = timed_instructions("benchmarks.rescore_cost", child) / CUSTOMERS
            print(f"{name:<8} {count:>10,.0f} instructions per customer", flush=True)
    finally:
        os.unlink(data_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
