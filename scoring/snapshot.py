"""The population snapshot: an owned partition's population part as published to the other workers.

A worker owns only some partitions; every ``population_publish_seconds`` it
publishes each owned partition's part (on the ``{app_id}-population`` topic),
and the other workers rank against the latest one of each partition they do
not own (:class:`RemotePart`). The counts, gap sums, indicator sums and tallies
add up across partitions.

M and the VIP value are ranked exactly, at cent resolution (spec: the mid-rank
percentile). A live partition holds every member's exact value. A snapshot
carries the coarse bucket counts of M and V and, for the buckets within
``RfmConfig.exact_band_share`` of the population (in rank) of a score or VIP
threshold as the publisher sees the population (:func:`exact_buckets`), the
exact values: the only buckets where a customer's score or flag depends on the
order *inside* a bucket. Elsewhere the bucketed rank decides the same score.
Once every worker sees the same population (traffic stopped, snapshots
exchanged), each worker's threshold buckets are the publishers' ones: scores
are exact; while traffic moves the thresholds by more than the band between
two snapshots, a lookup may fall back to the bucket (``Ranking.inexact``
counts those).

Format (``SNAPSHOT_VERSION``, the ``version`` field): version 1 had no
``version`` field; version 2 adds ``version`` and ``values`` (exact M/V values)
and keeps every version-1 field with its meaning, so a version-1 reader reads a
version-2 snapshot at bucket resolution, a version-2 reader ranks a version-1
snapshot at bucket resolution, and a snapshot of a later version than the
reader knows is skipped (the previous one of that partition stays). Fields
added within a version are optional (``clock_ms``, ``saves``: older workers'
snapshots lack them). Pure: no I/O, no Faust.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from scoring.footprint import NO_GAP, GapSums, save_counts
from scoring.indicator_sums import IndicatorSums
from scoring.indicators import IndicatorConfig
from scoring.partition import PartitionPopulation
from scoring.rank import rank_bucket
from scoring.rfm import Population, RfmConfig
from scoring.units import DAY_MS

#: the population snapshot format this code writes and the highest it reads (see the module docstring)
SNAPSHOT_VERSION = 2


@dataclass(slots=True)
class RemotePart:
    """Another worker's partition, as of its last snapshot."""

    population: Population
    watermark_ms: int | None
    customers: int
    gaps: GapSums = NO_GAP
    indicators: IndicatorSums = field(default_factory=IndicatorSums)
    flags: dict[str, int] = field(default_factory=dict)
    #: the partition's clock (None in snapshots of older workers)
    clock_ms: int | None = None
    #: the save-rate tallies of its customers' alert episodes (``save_counts``; empty from older workers)
    saves: dict[str, int] = field(default_factory=dict)


def exact_buckets(parts: Sequence[Population], config: RfmConfig) -> dict[str, set[int]]:
    """The M and V buckets a snapshot carries exact values of: those holding a rank within
    ``exact_band_share`` of the population of a score (M) or VIP (V) threshold, in ``parts``."""
    out: dict[str, set[int]] = {"m": set(), "v": set()}
    if not parts:
        return out
    for name, thresholds in (("m", config.m_thresholds()), ("v", config.v_thresholds())):
        coarse = [getattr(p, name).coarse for p in parts]
        n = sum(c.total for c in coarse)
        if not n:
            continue
        band = math.ceil(config.exact_band_share * n)
        for t in thresholds:
            lo = rank_bucket(coarse, max(0, math.floor(t * n) - band - 1))
            hi = rank_bucket(coarse, min(n - 1, math.ceil(t * n) + band))
            out[name].update(range(lo, hi + 1))
    return out


def encode(
    partition: int,
    part: PartitionPopulation,
    exact: dict[str, set[int]],
    indicators: IndicatorConfig,
    indicator_ms: int | None,
) -> bytes:
    """The snapshot of owned ``partition`` (``exact``: :func:`exact_buckets`). Prunes the part's indicator
    sums to the horizon of ``indicator_ms``, the population's indicator time (``PopulationView.indicator_time``,
    the lowest partition clock): days before it are outside every window at this or any later indicator time.
    Not the partition's own watermark: in a backlog it can be months ahead of the slowest partition, whose
    time the indicators are computed at, and rows still inside that time's windows would be lost. None (no
    partition has a clock yet): nothing is pruned."""
    sums = None
    if part.watermark_ms is not None:
        from_day = None if indicator_ms is None else indicator_ms // DAY_MS - indicators.horizon_days
        if from_day is not None:
            part.indicators.prune(from_day)
        sums = part.indicators.to_json(from_day)
    pop = part.population
    data: dict[str, Any] = {
        "version": SNAPSHOT_VERSION,
        "partition": partition,
        "watermark_ms": part.high_ms(),
        "clock_ms": part.clock_ms,
        "customers": len(part.members),
        "gaps": list(part.gaps),
        "indicators": sums,
        "flags": part.flag_counts(),
        "saves": save_counts(part.tallies),
        **{name: [x for kv in sorted(c.items()) for x in kv] for name, c in pop.counts().items()},
        "values": {"m": pop.m.encode_values(exact["m"]), "v": pop.v.encode_values(exact["v"])},
    }
    return orjson.dumps(data)


def decode(raw: bytes, config: RfmConfig) -> tuple[int, RemotePart] | None:
    """Another worker's snapshot: its partition and part (None: a later format than this code reads). The part's
    indexes hold counts and values without Fenwick trees: the reader ranks against the published parts summed
    (``scoring.population_sums``), and ``Population.with_trees`` ranks one on its own."""
    data = orjson.loads(raw)
    if int(data.get("version", 1)) > SNAPSHOT_VERSION:
        return None
    counts = {name: dict(zip(data[name][::2], data[name][1::2], strict=True)) for name in ("r", "f", "m", "v")}
    return int(data["partition"]), RemotePart(
        Population.from_snapshot(config, counts, data.get("values"), ranked=False),
        data["watermark_ms"],
        int(data["customers"]),
        tuple(data.get("gaps", NO_GAP)),
        IndicatorSums.from_json(data.get("indicators") or {}),
        dict(data.get("flags") or {}),
        data.get("clock_ms"),
        dict(data.get("saves") or {}),
    )
