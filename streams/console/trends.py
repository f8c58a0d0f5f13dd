"""The population panel's trend lines, kept in Redis so that they survive a restart of ``pulse console``.

The indicators are computed by the console (``streams.stats.read_stats``:
the workers' compacted population topic holds only the latest snapshot of
each partition, so it has no history to re-read). Each console appends what
it computed to one capped Redis list, newest first, ``{prefix}console:
population-trend``: one entry per ``PULSE_CONSOLE_TREND_SECONDS`` at most,
``PULSE_CONSOLE_TREND_POINTS`` entries at most (LTRIM), so its size is
bounded whatever runs. The append is a script that skips a point when the
newest entry is younger than the spacing, so two consoles (replicas) write one
series, not two interleaved ones. A console that starts reads the list back:
its panel shows the values and trends at once, not after a period of reading.

Why Redis and not Prometheus' history of the workers' gauges: Redis is what
every console already has (a Prometheus is optional, and its URL and access
would be one more setting and one more dependency of a page), and the console
shows exactly what it computed, the save rate included.

An entry is ``"{recorded ms} {JSON}"``: the script reads the time without a
JSON decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from scoring.episodes import save_rates
from streams.stats import PopulationStats

#: the indicators of the panel, as IndicatorValues attributes; save_rate comes from the episodes' tallies
INDICATORS = (
    "nps",
    "csat",
    "retention_rate",
    "churn_rate",
    "repurchase_rate",
    "complaint_rate",
    "resolution_rate",
    "save_rate",
)

#: KEYS[1]: the list. ARGV: recorded ms, minimum spacing ms, most entries kept, the entry. 1 if appended.
RECORD_SCRIPT = """
local key, at, gap, cap = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local newest = redis.call('LINDEX', key, 0)
if newest then
  local t = tonumber(string.match(newest, '^(%d+) '))
  if t and at - t < gap then return 0 end
end
redis.call('LPUSH', key, ARGV[4])
redis.call('LTRIM', key, 0, cap - 1)
return 1
"""


def trend_key(prefix: str) -> str:
    return f"{prefix}console:population-trend"


@dataclass(frozen=True)
class Point:
    """The panel at one reading: when the console recorded it (wall clock ms), the customers and the values."""

    at_ms: int
    customers: int
    values: dict[str, float | None]

    def entry(self) -> bytes:
        return f"{self.at_ms} ".encode() + orjson.dumps({"customers": self.customers, "values": self.values})

    @classmethod
    def from_entry(cls, entry: str | bytes) -> Point | None:
        """None for an entry this version cannot read (it is skipped, not fatal)."""
        text = entry.decode() if isinstance(entry, bytes) else entry
        at, _, body = text.partition(" ")
        try:
            data: dict[str, Any] = orjson.loads(body)
            values = {name: _number(data["values"].get(name)) for name in INDICATORS}
            return cls(int(at), int(data.get("customers", 0)), values)
        except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
            return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def point_of(stats: PopulationStats, at_ms: int) -> Point | None:
    """The panel's values of a population reading (None if no worker published a snapshot yet)."""
    if stats.values is None:
        return None
    values: dict[str, float | None] = {name: getattr(stats.values, name, None) for name in INDICATORS}
    overall = save_rates(stats.saves)["all"] if stats.saves else []
    values["save_rate"] = overall[0].save_rate if overall else None
    return Point(at_ms, stats.customers, values)


async def record(client: aioredis.Redis, prefix: str, point: Point, spacing_seconds: float, keep: int) -> bool:
    """Append ``point`` unless the newest entry is younger than ``spacing_seconds``; True if it was appended."""
    appended = await client.eval(  # type: ignore[misc]  # redis-py types eval as sync or async
        RECORD_SCRIPT, 1, trend_key(prefix), point.at_ms, int(spacing_seconds * 1000), keep, point.entry()
    )
    return bool(appended)


async def load(client: aioredis.Redis, prefix: str, count: int) -> list[Point]:
    """The newest ``count`` points, oldest first."""
    entries: Sequence[str | bytes] = await client.lrange(trend_key(prefix), 0, count - 1)  # type: ignore[misc]
    points = [p for p in (Point.from_entry(e) for e in entries) if p is not None]
    return points[::-1]
