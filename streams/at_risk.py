"""The at-risk index: who is at medium or high churn risk, by priority and value at risk, filterable, in Redis.

A queue of customers to call must page and filter at 1M customers without a
scan of the population, so the profile sink keeps, in the same write as the
profiles, one sorted set per (level, facet) scored by the queue's order
(:func:`index_score`): priority first (high before medium), then
``value_at_risk`` in exact cents, then the customer id (Redis orders equal
scores by member):

* ``{prefix}at-risk:{level}`` every customer at that level; ``level`` is
  ``medium``, ``high`` or ``any`` (both), so an unfiltered queue is one key;
* ``{prefix}at-risk:{level}:vip`` (``:nonvip``), ``…:segment:{segment}``,
  ``…:reason:{code}``: the same customers by facet.

A customer's current keys are kept in the hash ``{prefix}at-risk:members``
(customer id -> its keys, ``|``-joined), so that a server-side script removes
a customer from the keys it left (another level, segment or reason, or out of
risk altogether) without the worker remembering anything. The script runs
once per batch, atomically, after the batch's HSETs: the index never names a
customer whose profile says otherwise once the batch is written.

Reading (:func:`at_risk_page`) is one sorted set for zero or one facet (a
facet's set holds only its level's customers), else a ``ZINTERSTORE`` of the
facet sets into a temporary key (Redis intersects from the smallest set),
then one script (:data:`PAGE_SCRIPT`) that counts and pages the score ranges
of the filter by rank: the whole set, or with a minimum value at risk one
range per priority band. Sets to leave out (a console's acted-on customers,
for its "open" status) are skipped by walking the ranges from the top until
the page is full, so no read costs the size of the queue but a deep page's.

The score is ``-(band * 2**52 + cents)`` (band 1 for high, 0 for medium;
cents capped below 2**52, i.e. 45 trillion): every score is an integer below
2**53 in magnitude, which a double (Redis's score) holds exactly, so two
values a cent apart never tie, however large. Negative so that Redis's
ascending order is the queue's and equal scores fall to the customer id in
ascending order. A profile written before this order existed (scored by its
value alone) is re-scored by the worker's first sweep round after a start.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

import orjson
import redis.asyncio as aioredis

from schemas.profile import RenderedProfile
from streams.resp import pack_texts

#: the churn levels that put a customer in the queue
AT_RISK_LEVELS = ("medium", "high")
#: both levels at once
ANY_LEVEL = "any"
#: a segment or reason code used in a key name
FACET_VALUE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

#: ARGV: prefix, then per customer: id, score (index_score), keys ('|'-joined suffixes; '' = not at risk)
UPDATE_SCRIPT = """
local p = ARGV[1]
local members = p .. 'at-risk:members'
for i = 2, #ARGV, 3 do
  local cid, score, keys = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', members, cid)
  if old and old ~= keys then
    for k in string.gmatch(old, '[^|]+') do redis.call('ZREM', p .. 'at-risk:' .. k, cid) end
  end
  if keys == '' then
    if old then redis.call('HDEL', members, cid) end
  else
    for k in string.gmatch(keys, '[^|]+') do redis.call('ZADD', p .. 'at-risk:' .. k, score, cid) end
    if old ~= keys then redis.call('HSET', members, cid, keys) end
  end
end
return 0
"""

#: KEYS[1]: the filtered sorted set; with customers to leave out (e.g. a console's acted-on customers) also
#: KEYS[2], the sorted set of those among KEYS[1] (ZINTERSTORE: their scores), and KEYS[3], the plain set of all
#: of them. ARGV: offset, limit, then (min, max) score pairs of the ranges to read, in queue order. Returns
#: {total, ids...}. Each range is located by rank (ZCOUNT below its minimum), so a page without exclusions costs
#: its own size; with exclusions the ranges are walked from their top, skipping the excluded, until the page is
#: full (cost: offset + limit + skipped, not the whole set), and the total is the ranges' count less the
#: excluded members' count in them (two ZCOUNTs a range: the cost of intersecting is Redis's, in C).
PAGE_SCRIPT = """
local src, inter, union = KEYS[1], KEYS[2], KEYS[3]
local offset, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local ranges = {}
local total = 0
for i = 3, #ARGV, 2 do
  local low, high = ARGV[i], ARGV[i + 1]
  local first = 0
  if low ~= '-inf' then first = redis.call('ZCOUNT', src, '-inf', '(' .. low) end
  local count = redis.call('ZCOUNT', src, low, high)
  ranges[#ranges + 1] = {low, high, first, count}
  total = total + count
  if inter then total = total - redis.call('ZCOUNT', inter, low, high) end
end
local function excluded(id)
  return union ~= nil and redis.call('SISMEMBER', union, id) == 1
end
local out, seen = {total}, 0
for _, r in ipairs(ranges) do
  local first, count = r[3], r[4]
  if #out - 1 >= limit then break end
  if not union then
    if seen + count > offset then
      local skip = math.max(offset - seen, 0)
      local need = limit - (#out - 1)
      local last = first + math.min(count, skip + need) - 1
      for _, id in ipairs(redis.call('ZRANGE', src, first + skip, last)) do out[#out + 1] = id end
    end
    seen = seen + count
  else
    local rank, stop = first, first + count
    while #out - 1 < limit and rank < stop do
      local ids = redis.call('ZRANGE', src, rank, math.min(rank + 499, stop - 1))
      if #ids == 0 then break end
      rank = rank + #ids
      for _, id in ipairs(ids) do
        if not excluded(id) then
          seen = seen + 1
          if seen > offset and #out - 1 < limit then out[#out + 1] = id end
        end
      end
    end
  end
end
return out
"""

#: queue priority of a churn level (higher: called first), the band of its index score
PRIORITY = {"high": 1, "medium": 0}
#: bits of the score below the priority band: cents up to 2**52 - 1, so band * 2**52 + cents < 2**53 (exact)
VALUE_BITS = 52
MAX_CENTS = (1 << VALUE_BITS) - 1


def value_cents(value: Decimal | str | None) -> int:
    """Whole cents of a money value for the index, within 0..MAX_CENTS (a bad or missing value sorts as 0)."""
    try:
        cents = int((Decimal(value or 0) * 100).to_integral_value(ROUND_FLOOR))
    except (InvalidOperation, ValueError, OverflowError):
        return 0
    return min(max(cents, 0), MAX_CENTS)


def index_score(level: str, value_at_risk: Decimal | str | None) -> int:
    """The sorted-set score of a customer: ascending score is the queue's order (priority, then value at risk,
    then customer id as Redis orders equal scores)."""
    return -((PRIORITY[level] << VALUE_BITS) + value_cents(value_at_risk))


def score_ranges(min_value: Decimal | None) -> list[tuple[str, str]]:
    """The (min, max) score ranges of a queue, in its order: all of it, or with a minimum value at risk the
    part of each priority band (high, then medium) at or above it."""
    if min_value is None:
        return [("-inf", "+inf")]
    low = max(int((min_value * 100).to_integral_value(ROUND_CEILING)), 0)
    high, medium = PRIORITY["high"] << VALUE_BITS, PRIORITY["medium"] << VALUE_BITS
    return [("-inf", str(-(high + low))), (str(-(medium + MAX_CENTS)), str(-(medium + low)))]


#: profile fields a queue row shows
ROW_FIELDS = (
    "customer_id",
    "churn_level",
    "churn_risk",
    "vip",
    "segment",
    "rfm_cell",
    "churn_reasons",
    "value_at_risk",
    "clv",
    "revenue",
    "currency",
    "last_alert_at",
    "churn_alerts",
)


def index_key(prefix: str, suffix: str) -> str:
    return f"{prefix}at-risk:{suffix}"


def members_key(prefix: str) -> str:
    return f"{prefix}at-risk:members"


def index_suffixes(profile: RenderedProfile) -> str:
    """The ``|``-joined index keys (suffixes) of a profile; '' when it is not at risk.

    Only a customer at risk pays for reading its reasons back from the rendered JSON."""
    level = profile.value("churn_level")
    if level not in AT_RISK_LEVELS:
        return ""
    facets = ["", ":vip" if profile.vip else ":nonvip"]
    segment = profile.value("segment")
    if segment:
        facets.append(f":segment:{segment}")
    codes = profile.reason_codes
    if codes is None:
        codes = tuple(r["code"] for r in orjson.loads(profile.value("churn_reasons")))
    facets.extend([f":reason:{code}" for code in codes])
    return "|".join([f"{lvl}{facet}" for lvl in (level, ANY_LEVEL) for facet in facets])


def index_entry(profile: RenderedProfile) -> tuple[str, str]:
    """A profile's index score (:func:`index_score`, as text) and ``|``-joined index keys; ('', '') when it is
    not at risk. From the rendered value at risk in cents when the profile carries it (the value field is its
    ``%d.%02d``, so :func:`value_cents` of it is those cents, clamped), else parsed from the field."""
    keys = index_suffixes(profile)
    if not keys:
        return "", ""
    level, cents = profile.value("churn_level"), profile.value_at_risk_cents
    if cents is None:
        return str(index_score(level, profile.value("value_at_risk"))), keys
    return str(-((PRIORITY[level] << VALUE_BITS) + min(max(cents, 0), MAX_CENTS))), keys


def pack_update(prefix: str, entries: Sequence[tuple[str, str, str]]) -> bytes:
    """One EVAL of :data:`UPDATE_SCRIPT` for (customer id, index score, suffixes) entries.

    EVAL with the script text rather than EVALSHA: Redis caches the compiled script by its digest, and a
    Redis that restarted empty needs no reload step."""
    args: list[str] = ["EVAL", UPDATE_SCRIPT, "0", prefix]
    for cid, score, keys in entries:
        args.extend((cid, score or "0", keys))
    return pack_texts(args)


class BadFilter(ValueError):
    """A query parameter of the at-risk queue that cannot be used."""


@dataclass(frozen=True)
class AtRiskQuery:
    """One page of the queue: its filters (None: any) and its paging."""

    level: str | None = None
    vip: bool | None = None
    segment: str | None = None
    reason: str | None = None
    min_value: Decimal | None = None
    offset: int = 0
    limit: int = 50

    @classmethod
    def from_params(cls, params: Any, default_limit: int, max_limit: int) -> AtRiskQuery:
        """From query-string parameters (``level``, ``vip``, ``segment``, ``reason``, ``min_value``, ``offset``,
        ``limit``); empty values mean "any". BadFilter with the reason otherwise."""

        def get(name: str) -> str | None:
            value = params.get(name)
            return value.strip() or None if isinstance(value, str) else None

        level = get("level")
        if level is not None and level not in AT_RISK_LEVELS:
            raise BadFilter(f"level must be one of {', '.join(AT_RISK_LEVELS)}")
        vip_text = get("vip")
        if vip_text is not None and vip_text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise BadFilter("vip must be true or false")
        vip = None if vip_text is None else vip_text.lower() in ("true", "1", "yes")
        for name in ("segment", "reason"):
            value = get(name)
            if value is not None and not FACET_VALUE.match(value):
                raise BadFilter(f"{name} must match {FACET_VALUE.pattern}")
        try:
            min_text = get("min_value")
            min_value = None if min_text is None else Decimal(min_text)
            offset = int(get("offset") or 0)
            limit = int(get("limit") or default_limit)
        except (InvalidOperation, ValueError):
            raise BadFilter("min_value must be a number, offset and limit integers") from None
        if min_value is not None and not min_value.is_finite():
            raise BadFilter("min_value must be finite")
        if offset < 0 or not 1 <= limit <= max_limit:
            raise BadFilter(f"offset must be >= 0 and limit within 1..{max_limit}")
        return cls(level, vip, get("segment"), get("reason"), min_value, offset, limit)

    def include(self) -> list[str]:
        """Index suffixes whose intersection is the filtered queue: the facets' (each holds only its level's
        customers), else the level's own."""
        level = self.level or ANY_LEVEL
        keys = []
        if self.vip is not None:
            keys.append(f"{level}:{'vip' if self.vip else 'nonvip'}")
        if self.segment:
            keys.append(f"{level}:segment:{self.segment}")
        if self.reason:
            keys.append(f"{level}:reason:{self.reason}")
        return keys or [level]


@dataclass(frozen=True)
class AtRiskPage:
    total: int
    offset: int
    limit: int
    #: profile fields of each customer on the page (ROW_FIELDS), in the queue's order
    items: list[dict[str, Any]]

    @property
    def next_offset(self) -> int | None:
        end = self.offset + len(self.items)
        return end if end < self.total else None

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "offset": self.offset,
            "limit": self.limit,
            "next_offset": self.next_offset,
            "customers": self.items,
        }


def row(fields: Sequence[str | None]) -> dict[str, Any]:
    """A queue row from HMGET values of ROW_FIELDS: the JSON types of the profile model."""
    out: dict[str, Any] = dict(zip(ROW_FIELDS, fields, strict=True))
    for name, value in out.items():
        if value == "":
            out[name] = None
    out["vip"] = out["vip"] == "True"
    out["churn_risk"] = int(out["churn_risk"] or 0)
    out["churn_alerts"] = int(out["churn_alerts"] or 0)
    out["churn_reasons"] = orjson.loads(out["churn_reasons"] or "[]")
    return out


async def at_risk_page(
    client: aioredis.Redis,
    prefix: str,
    query: AtRiskQuery,
    extra_include: Sequence[str] = (),
    extra_exclude: Sequence[str] = (),
) -> AtRiskPage:
    """One page of the queue, by priority (high first), then value at risk, then customer id. ``extra_include``:
    full key names of further sets (plain or sorted) to intersect with; ``extra_exclude``: plain sets to leave
    out (PAGE_SCRIPT), e.g. a console's owner and status sets. ``client`` decodes responses."""
    include = [index_key(prefix, s) for s in query.include()] + list(extra_include)
    ranges = [bound for pair in score_ranges(query.min_value) for bound in pair]
    temporary: list[str] = []

    def scratch() -> str:
        temporary.append(index_key(prefix, f"tmp:{uuid.uuid4().hex}"))
        return temporary[-1]

    async with client.pipeline(transaction=True) as pipe:
        source = include[0]
        if len(include) > 1:
            source = scratch()
            # the first (an index sorted set) carries the score; a plain set counts 1, weighted 0
            pipe.zinterstore(source, {include[0]: 1, **{k: 0 for k in include[1:]}}, aggregate="SUM")
        keys = [source]
        if extra_exclude:
            union, inter = scratch(), scratch()
            pipe.sunionstore(union, list(extra_exclude))
            pipe.zinterstore(inter, {source: 1, union: 0}, aggregate="SUM")
            keys += [inter, union]
        pipe.eval(PAGE_SCRIPT, len(keys), *keys, query.offset, query.limit, *ranges)
        if temporary:
            pipe.unlink(*temporary)  # freed in the background: a large intersection costs no latency
        replies = await pipe.execute()
    page = replies[-2] if temporary else replies[-1]
    total, ids = page[0], page[1:]
    from streams.sinks.redis_profiles import profile_key  # the sink imports this module

    items: list[dict[str, Any]] = []
    if ids:
        async with client.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hmget(profile_key(prefix, cid), ROW_FIELDS)
            for fields in await pipe.execute():
                if fields[0] is not None:  # a profile deleted under the index: skipped, not shown empty
                    items.append(row(fields))
    return AtRiskPage(total, query.offset, query.limit, items)
