"""Instructions per call of the processor's per-customer parts (issue 18), counted by callgrind.

Usage::

    .venv/bin/python -m benchmarks.scorer_parts [PART ...]     (default: every part)

``benchmarks.processor_cost`` counts what a whole batch costs; this says where a re-scored customer's share goes,
part by part, on the same states (the 2,000 scored template customers ``processor_cost`` clones, each part called
once per customer at a clock one hour after the templates'). Each part runs in a child process under
``valgrind --tool=callgrind`` with instrumentation switched on only around the second of two passes over the
customers (the first warms memos and caches as a running worker has them), so the count does not depend on the
load of the box. Needs valgrind, its headers and ``cc`` (the helper of ``processor_cost``).
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import orjson

from benchmarks.callgrind import timed_instructions
from benchmarks.processor_cost import PARTITIONS, TEMPLATE_CUSTOMERS, _helper

HOUR_MS = 3_600_000
#: the parts ``parts()`` builds, in print order ("nothing": the harness's own cost per call)
NAMES = (
    "decode_state", "validate_order", "rfm_rescore", "assess_customer", "clv", "churn_assess", "spend_decline",
    "overdue", "activity", "tags", "render_profile", "nothing",
)  # fmt: skip


def templates() -> tuple[list[bytes], int]:
    """The template customers' encoded states and clock, built natively once (the children load them)."""
    from streams.codec import encode_state
    from testing.templates import template_states

    built = template_states(TEMPLATE_CUSTOMERS, 7)
    return [encode_state(s) for s in built.states], built.clock_ms


def parts(raw: list[bytes], clock_ms: int) -> dict[str, Callable[[int], Any]]:
    """Each part as a function of the customer's index, on the template states."""
    from pulse_config.settings import Settings
    from schemas.events import Kind
    from schemas.profile import render_profile
    from scoring import churn
    from scoring.churn import ChurnInputs
    from scoring.customer import assess_customer, customer_clv
    from scoring.footprint import TAGS, footprint
    from scoring.indicators import activity
    from scoring.population import rescore
    from scoring.rfm import Ranking
    from streams.codec import decode_state
    from streams.processor import BatchProcessor

    states = [decode_state(r) for r in raw]
    settings = Settings(_env_file=None, partitions=PARTITIONS)
    config = settings.scoring()
    now = clock_ms + HOUR_MS
    processor = BatchProcessor(settings.processor())
    processor.rebuild(set(range(PARTITIONS)), [(b"P%d" % k, copy.deepcopy(s)) for k, s in enumerate(states)])
    ranking = Ranking(processor.population.parts(), config.rfm)
    ranked = copy.deepcopy(states)
    inputs = [ChurnInputs(s.orders, s.purchases, s.voice, s.service, customer_clv(s, now, config)) for s in states]
    assessed = [assess_customer(s, now, 30.0, config) for s in states]
    at = "2026-03-01T10:00:00.123+00:00"
    orders = [
        orjson.dumps(
            {
                "event_id": f"e{k}",
                "customer_id": f"C{k:06d}",
                "occurred_at": at,
                "order_id": f"o{k}",
                "amount": 12.5 + k,
                "currency": "USD",
                "status": "completed",
            }
        )  # fmt: skip
        for k in range(len(states))
    ]
    return {
        "decode_state": lambda k: decode_state(raw[k]),
        "validate_order": lambda k: processor.reader.read(Kind.ORDER, orders[k], k),
        "rfm_rescore": lambda k: rescore(ranked[k], ranking, config.rfm),
        "assess_customer": lambda k: assess_customer(states[k], now, 30.0, config),
        "clv": lambda k: customer_clv(states[k], now, config),
        "churn_assess": lambda k: churn.assess(inputs[k], now, 30.0, config),
        "spend_decline": lambda k: churn._spend_decline(inputs[k], now, config),
        "overdue": lambda k: churn._overdue(inputs[k], now, 30.0, config.churn),
        "activity": lambda k: activity(states[k].purchases, now, config.indicators),
        "tags": lambda k: footprint(states[k], config.rfm, TAGS),
        "render_profile": lambda k: render_profile(f"P{k}", states[k], now, config, "USD", *assessed[k]),
        "nothing": lambda k: None,
    }


def _child(name: str, data_file: str) -> None:
    with open(data_file, "rb") as f:
        raw, clock_ms = pickle.load(f)
    helper = _helper()
    fn = parts(raw, clock_ms)[name]
    n = TEMPLATE_CUSTOMERS
    for k in range(n):
        fn(k)
    if helper is not None:
        helper.pulse_start()
    for k in range(n):
        fn(k)
    if helper is not None:
        helper.pulse_stop()


def _count(name: str, data_file: str) -> float:
    return timed_instructions("benchmarks.scorer_parts", ["--child", name, "--data", data_file]) / TEMPLATE_CUSTOMERS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("parts", nargs="*", help="parts to count (default: all)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.data)
        return 0
    if _helper() is None:
        print("needs valgrind, its headers (valgrind/callgrind.h) and cc", file=sys.stderr)
        return 2
    names = args.parts or NAMES
    fd, data_file = tempfile.mkstemp(suffix=".pickle")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(templates(), f)
        for name in names:
            print(f"{name:<16} {_count(name, data_file):>10,.0f} instructions/call", flush=True)
    finally:
        os.unlink(data_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
