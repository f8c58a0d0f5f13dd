"""The population indicators of the whole population, read from the population topic (`pulse stats`, the console).

Every worker publishes the sums of the partitions it owns to the compacted
``{app_id}-population`` topic (scoring.population); this reads that topic
from the beginning with a plain consumer (no group: it moves nobody's
offsets), keeps the latest snapshot of every partition and computes the
indicators at the indicator time (the lowest partition clock, spec: Clock) with the same function the
workers' gauges use, so both show the same numbers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from pulse_config.settings import Settings
from schemas.profile import ms_to_datetime
from scoring.episodes import SaveRow, save_rates
from scoring.indicator_sums import IndicatorValues
from scoring.population import PopulationView
from streams.security import kafka_client_kwargs

#: how long one poll waits, and how often a missing topic is looked for
POLL_MS = 250
METADATA_RETRY_SECONDS = 0.25


@dataclass(frozen=True)
class PopulationStats:
    partitions: int
    customers: int
    values: IndicatorValues | None
    #: the alert episodes' save-rate tallies (scoring.episodes), summed over the partitions
    saves: dict[str, int] = field(default_factory=dict)


class PopulationReadTimeout(TimeoutError):
    """The population topic was not read to its end offset within the time given.

    The snapshots read by then can be older than the ones after them (a partition's clock published before it
    moved on), so no indicators are made of them: stale numbers that look current are worse than none. A
    ``TimeoutError``, so an ``OSError``: the console shows "indicators unavailable" and tries again."""

    def __init__(self, topic: str, position: int, end: int, seconds: float) -> None:
        super().__init__(f"{topic}: read to offset {position} of {end} in {seconds:g} s")
        self.topic, self.position, self.end = topic, position, end


async def read_stats(settings: Settings, timeout: float = 10.0) -> PopulationStats:
    """The latest snapshot of every partition, merged, as of the topic's end offset when the read started.

    ``timeout`` bounds the whole read: no topic by then gives no indicators (no worker published yet); a read
    short of the end offset by then raises :class:`PopulationReadTimeout` (a slow or busy broker)."""
    topic = settings.topic_population()
    consumer = AIOKafkaConsumer(**kafka_client_kwargs(settings), enable_auto_commit=False, auto_offset_reset="earliest")
    latest: dict[bytes | None, bytes] = {}
    try:
        await consumer.start()  # inside the try: a broker that is down must not leak the client
        deadline = time.monotonic() + timeout
        while not consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
            await consumer._client.force_metadata_update()
            await asyncio.sleep(METADATA_RETRY_SECONDS)
        if consumer.partitions_for_topic(topic):
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            # read to the end, then until a poll brings nothing (some brokers report a short end offset)
            while True:
                batches = await consumer.getmany(timeout_ms=POLL_MS)
                records = [r for rs in batches.values() for r in rs]
                for record in records:
                    if record.value:
                        latest[record.key] = record.value
                position = await consumer.position(tp)
                if not records and position >= end:
                    break
                if time.monotonic() >= deadline:
                    if position < end:
                        raise PopulationReadTimeout(topic, position, end, timeout)
                    break
    finally:
        await consumer.stop()
    view = PopulationView(settings.rfm(), settings.indicators())
    for value in latest.values():
        view.apply_snapshot(value)
    customers = sum(r.customers for r in view.remote.values())
    return PopulationStats(len(view.remote), customers, view.indicators(), view.save_counts())


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _hours(ms: int | None) -> str:
    return "-" if ms is None else f"{ms / 3_600_000:.2f} h"


def format_stats(stats: PopulationStats, settings: Settings) -> str:
    """A table a person can read: each indicator, its value, and the counts it comes from."""
    v = stats.values
    if v is None:
        return f"no population snapshots on {settings.topic_population()} yet (is a worker running?)"
    survey, period, active = (
        settings.population_survey_window_days,
        settings.population_period_days,
        settings.population_activity_days,
    )
    answers = v.promoters + v.passives + v.detractors
    rows = [
        (
            f"NPS ({survey} d)",
            "-" if v.nps is None else f"{v.nps:+.1f}",
            f"{v.promoters} promoters, {v.passives} passives, {v.detractors} detractors of {answers}",
        ),
        (f"CSAT ({survey} d)", _pct(v.csat), f"{v.csat_satisfied} satisfied of {v.csat_answers}"),
        (f"complaint rate ({period} d)", _pct(v.complaint_rate), f"{v.complaints} complaints / {v.active} active"),
        *(
            (f"first response p{q} ({period} d)", _hours(ms), f"of {v.first_responses} responses, bucket edge")
            for q, ms in v.first_response_ms.items()
        ),
        (
            f"resolution rate ({period} d)",
            _pct(v.resolution_rate),
            f"{v.tickets_resolved} resolved / {v.tickets_opened} opened",
        ),
        (f"repurchase rate ({active} d)", _pct(v.repurchase_rate), f"{v.repeat} repeat buyers / {v.active} active"),
        (f"retention rate ({period} d)", _pct(v.retention_rate), f"(E {v.active} - N {v.new}) / S {v.active_at_start}"),
        (f"churn rate ({period} d)", _pct(v.churn_rate), f"(S {v.active_at_start} - E {v.active}) / S"),
        (f"net additions ({period} d)", f"{v.net_additions:+d}", f"{v.new} new - {v.lost} lost"),
        ("active customers", str(v.active), f"a purchase in the last {active} days; {v.active_at_start} at the start"),
    ]
    width = max(len(name) for name, _, _ in rows)
    head = (
        f"population indicators as of {ms_to_datetime(v.as_of_ms):%Y-%m-%d %H:%M} UTC "
        f"({stats.partitions} partitions, {stats.customers} customers)"
    )
    lines = [head, *(f"  {name:<{width}}  {value:>9}   {detail}" for name, value, detail in rows)]
    return "\n".join(lines + format_save_rate(stats.saves, settings))


def _save_line(label: str, row: SaveRow, currency: str) -> str:
    rate = _pct(row.save_rate)
    return (
        f"  {label:<28} {rate:>9}   {row.saved} saved of {row.settled} settled, {row.pending} pending; "
        f"{row.recovered_cents / 100:,.2f} {currency} recovered"
    )


def format_save_rate(saves: dict[str, int], settings: Settings) -> list[str]:
    """The save rate of alerted customers (issue 19): overall, by level, by action taken, by destination."""
    window = f"{settings.save_window_days:g}"
    if not saves:
        return ["", f"save rate (purchase within {window} d of an alert): no alert episodes yet"]
    currency = settings.base_currency.upper()
    rates = save_rates(saves)
    lines = ["", f"save rate (purchase within {window} d of an alert; settled = window over or saved)"]
    lines += [_save_line("all alerted customers", row, currency) for row in rates["all"]]
    for by in ("level", "action", "destination"):
        lines += [_save_line(f"{by} {row.group}", row, currency) for row in rates[by]]
    return lines


def save_rate_json(saves: dict[str, int]) -> dict:
    rates = save_rates(saves)
    out: dict = {}
    for by, rows in rates.items():
        out[by] = {
            row.group: {
                "episodes": row.episodes,
                "saved": row.saved,
                "not_saved": row.not_saved,
                "pending": row.pending,
                "save_rate": row.save_rate,
                "recovered": f"{row.recovered_cents / 100:.2f}",
            }
            for row in rows
        }
    return out


def stats_json(stats: PopulationStats) -> dict:
    out: dict = {"partitions": stats.partitions, "customers": stats.customers}
    if stats.values is not None:
        out.update(stats.values.to_json())
        out["as_of"] = ms_to_datetime(stats.values.as_of_ms).isoformat()
    out["save_rate"] = save_rate_json(stats.saves)
    return out
