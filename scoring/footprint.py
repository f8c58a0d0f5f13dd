"""What one customer contributes to its partition's population, and the change of it that a population applies.

Every population number a worker keeps for an owned partition is a sum over
the partition's customers of one pure function of each customer's state, its
:class:`Footprint`:

* ``keys``: the RFM rank keys it is counted under in the rank indexes (None: no
  purchase, not ranked), scoring.rfm;
* ``gaps``: its purchase-gap sums (spec: Churn warning, "a population gap");
* ``rows``: its indicator day rows (scoring.indicators), summed per day in
  the partition's ``IndicatorSums`` (scoring.indicator_sums);
* ``tags``: what the tallies count it under (risk level, activity flags,
  segment, VIP, alert-episode save-rate counts): metrics and snapshots.

The footprint is read off the state; its clock-dependent parts (the activity
flags, the CLV when it is the VIP value) are as the state was last assessed,
at its partition's clock. A change of a customer is applied to the population
as ``diff(old, new)`` (:class:`FootprintDiff`, applied by
``scoring.partition.PartitionPopulation.apply``), so the population built
incrementally through diffs equals the population rebuilt from the states
(tests/unit/test_footprint.py).

Parts: a footprint may be taken of only some parts (``KEYS``, ``GAPS``,
``ROWS``, ``TAGS``): the parts an event cannot move are not looked at (see
``ORDER_PARTS``, ``OTHER_PARTS``), and the tallies are moved once per batch. ``diff`` compares
the parts both footprints hold; ``NOTHING`` (a customer counted nowhere) holds
every part, empty.

Pure: no I/O, no Faust.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import NamedTuple, cast

from scoring.customer import CustomerState, indicator_contribution
from scoring.episodes import SAVE_TAGS, Episode, EpisodeState, state_tallies
from scoring.indicators import EMPTY, TAG_PREFIX, Contribution, flag_tags
from scoring.rfm import MemberKeys, RfmConfig, rfm_keys

#: (sum of t_x days, sum of repeat purchase days x, customers with x ≥ 1): the purchase gaps
#: of the population, additive over partitions (spec: Churn warning, "a population gap")
GapSums = tuple[int, int, int]
NO_GAP: GapSums = (0, 0, 0)
#: what ``tags`` gives: a plain tag counts 1, a ``(tag, n)`` pair counts n
Tags = tuple[str | tuple[str, int], ...]

#: the parts of a footprint (bit flags)
KEYS, GAPS, ROWS, TAGS = 1, 2, 4, 8
ALL = KEYS | GAPS | ROWS | TAGS
#: the parts applying an event can move: only an order touches the orders and purchase days the keys and gaps
#: are made of, and an order touches neither the survey answers nor the ticket days the rows are made of
#: (scoring.customer.apply_event); the tags move with the assessment, not the event
ORDER_PARTS = KEYS | GAPS
OTHER_PARTS = ROWS


def gap_sums(state: CustomerState) -> GapSums:
    p = state.purchases
    if p.periods < 2 or p.first_day is None or p.last_day is None:
        return NO_GAP
    return (p.last_day - p.first_day, p.periods - 1, 1)


def member_keys(state: CustomerState, config: RfmConfig) -> MemberKeys | None:
    """The keys ``state`` is counted under (None: no purchase, not in the population)."""
    o = state.orders
    return rfm_keys(
        config, o.last_purchase_ms, o.orders, o.revenue_cents, o.revenue_cents - o.cost_cents, state.clv_cents
    )


def tags(state: CustomerState) -> Tags:
    """What the per-partition tallies count a customer under (metrics: segments, VIPs, risk levels; and the
    population indicators' activity flags, shipped in the snapshots). A plain tag counts 1; a ``(tag, n)`` pair
    counts n: the alert episodes' save-rate tallies (scoring.episodes), whose revenue recovered is a sum."""
    return tags_of(tag_key(state))


#: what ``tags`` is a function of (``tag_key``): risk level, activity flags, segment, VIP, then None (no
#: episodes) or the episodes' folded totals and one tuple per kept episode (level, status, outcome, purchased?,
#: settled, destinations, revenue recovered: ``scoring.episodes.episode_tallies`` reads nothing else);
#: ``NOT_COUNTED``: a customer counted nowhere (not in a partition yet), no tags
TagKey = tuple[object, ...]
NOT_COUNTED: TagKey = ()
#: one kept episode in a ``TagKey``
_EpisodeKey = tuple[str, str, str | None, bool, bool, tuple[str, ...], int]


def tag_key(state: CustomerState) -> TagKey:
    """The inputs of ``state``'s tags, as one hashable key: a re-scored customer's tags are taken before and after
    (streams.processor ``tags_before``), and most keep theirs, so the processor compares the keys and expands the
    tags (``tags_of``, memoised) only when they differ, rather than building and comparing the tags twice."""
    episodes = state.episodes
    if episodes is None:
        return (state.churn.level, state.activity, state.segment, state.vip, None)
    totals = episodes.totals
    key: list[object] = [
        state.churn.level,
        state.activity,
        state.segment,
        state.vip,
        tuple(totals.items()) if totals else (),
    ]
    for e in episodes.episodes:  # a loop, not a comprehension: no function object per call (3.11)
        key.append(
            (
                e.level,
                e.status,
                e.outcome,
                e.purchased_ms is not None,
                e.settled,
                tuple(e.destinations) if e.destinations else (),
                e.recovered_cents,
            )
        )
    return tuple(key)


def tags_of(key: TagKey) -> Tags:
    """The tags of a ``tag_key`` (``NOT_COUNTED``: none): the plain ones memoised by (level, flags, segment,
    VIP), a few hundred combinations; the episodes' tallies by their key, bounded least recently used."""
    if not key:
        return ()
    of = key[:4]
    found = _TAGS.get(of)
    if found is None:
        found = _tags(*of)  # type: ignore[arg-type]
        if len(_TAGS) < _TAGS_MAX:
            _TAGS[of] = found
    if key[4] is None:
        return found
    return (*found, *_episode_tags_of(key[4:]))


def retag(before: TagKey, after: TagKey) -> FootprintDiff:
    """The tallies' change of a customer whose tag key went from ``before`` to ``after``: ``diff`` of its
    ``TAGS`` footprints, from the keys (equal keys: equal tags, nothing to expand)."""
    if before == after:
        return NO_CHANGE
    old, new = tags_of(before), tags_of(after)
    return NO_CHANGE if old == new else _new(FootprintDiff, (None, NO_GAP, None, (old, new)))


@lru_cache(maxsize=8192)
def _episode_tags_of(key: TagKey) -> tuple[tuple[str, int], ...]:
    """The save-rate tallies (scoring.episodes.state_tallies) of the episodes' part of a ``tag_key`` (the folded
    totals, then each kept episode) as sorted ``(tag, n)`` pairs."""
    kept = cast("tuple[_EpisodeKey, ...]", key[1:])
    episodes = [
        Episode(
            level=level,
            status=status,
            outcome=outcome,
            purchased_ms=0 if purchased else None,
            settled=settled,
            destinations=list(destinations),
            recovered_cents=recovered,
        )
        for level, status, outcome, purchased, settled, destinations, recovered in kept
    ]
    totals = dict(cast("tuple[tuple[str, int], ...]", key[0]))
    return tuple(sorted(state_tallies(EpisodeState(episodes=episodes, totals=totals)).items()))


#: the plain tags by (risk level, activity flags, segment, VIP): a few hundred combinations; bounded all the same
_TAGS: dict[TagKey, tuple[str, ...]] = {}
_TAGS_MAX = 4096


def _tags(level: str, activity: int, segment: str | None, vip: bool) -> tuple[str, ...]:
    out = [f"risk:{level}", *flag_tags(activity)]
    if segment is not None:
        out.append(f"segment:{segment}")
    if vip:
        out.append("vip")
    return tuple(out)


def tag_weights(tagged: Tags) -> Counter[str]:
    """The counts a tag tuple of ``tags`` adds to the tallies."""
    out: Counter[str] = Counter()
    for tag in tagged:
        if isinstance(tag, tuple):
            out[tag[0]] += tag[1]
        else:
            out[tag] += 1
    return out


def save_counts(tallies: Counter[str] | dict[str, int]) -> dict[str, int]:
    """The save-rate share of the tallies (scoring.episodes), shipped in the snapshots for ``pulse stats``."""
    return {tag: n for tag, n in tallies.items() if n and tag.partition(":")[0] in SAVE_TAGS}


def flag_counts(tallies: Counter[str]) -> dict[str, int]:
    """The activity-flag share of the tallies (the population indicators' flags), shipped in the snapshots."""
    return {tag: n for tag, n in tallies.items() if tag.startswith(TAG_PREFIX) and n}


class Footprint(NamedTuple):
    """What one customer contributes to its partition's population (see the module docstring). A named tuple:
    two are built per scored event, and a tuple is built in C (``_make``)."""

    #: the parts looked at (``KEYS``…``TAGS``); the others hold their empty value, not the customer's
    parts: int
    keys: MemberKeys | None = None
    gaps: GapSums = NO_GAP
    rows: Contribution = EMPTY
    tags: Tags = ()


#: builds a named tuple from a tuple in C (``Footprint._make`` is a Python function around it)
_new = tuple.__new__

#: a customer counted nowhere (not in the partition yet): every part, empty
NOTHING = Footprint(ALL)


def footprint(state: CustomerState, config: RfmConfig, parts: int = ALL) -> Footprint:
    """The ``parts`` of ``state``'s footprint (the rows are shallow copies: a later change of the state's
    rows replaces them, see scoring.indicators.add_voice_row, so the footprint stays as it was)."""
    return _new(
        Footprint,
        (
            parts,
            member_keys(state, config) if parts & KEYS else None,
            gap_sums(state) if parts & GAPS else NO_GAP,
            indicator_contribution(state) if parts & ROWS else EMPTY,
            tags(state) if parts & TAGS else (),
        ),
    )


def widen(held: Footprint, more: Footprint) -> Footprint:
    """``held`` with the parts of ``more`` it does not hold: one footprint of both parts, as if taken at once when
    each was taken (a batch's events of one customer: the parts of its first order and of its first other event,
    each as it was before that event; the state's later events change the population once, ``diff`` of this
    against the footprint after them)."""
    add = more.parts & ~held.parts
    return _new(
        Footprint,
        (
            held.parts | add,
            more.keys if add & KEYS else held.keys,
            more.gaps if add & GAPS else held.gaps,
            more.rows if add & ROWS else held.rows,
            more.tags if add & TAGS else held.tags,
        ),
    )


class FootprintDiff(NamedTuple):
    """How one customer's footprint changed: each moved part as (old, new), the gap sums as a delta."""

    #: rank keys (old, new): the indexes move the customer (None: unchanged)
    keys: tuple[MemberKeys | None, MemberKeys | None] | None = None
    #: added to the gap sums
    gaps: GapSums = NO_GAP
    #: day rows (old, new): compared per day by identity (scoring.indicator_sums.IndicatorSums.move)
    rows: tuple[Contribution, Contribution] | None = None
    #: tallied tags (old, new)
    tags: tuple[Tags, Tags] | None = None


#: nothing moved
NO_CHANGE = FootprintDiff()


def diff(old: Footprint, new: Footprint) -> FootprintDiff:
    """What applying ``new`` in place of ``old`` changes, over the parts both hold."""
    parts = old.parts & new.parts
    keys = (old.keys, new.keys) if parts & KEYS and old.keys != new.keys else None
    gaps = NO_GAP
    if parts & GAPS and old.gaps != new.gaps:
        o, n = old.gaps, new.gaps
        gaps = (n[0] - o[0], n[1] - o[1], n[2] - o[2])
    rows = (old.rows, new.rows) if parts & ROWS and old.rows != new.rows else None
    tagged = (old.tags, new.tags) if parts & TAGS and old.tags != new.tags else None
    if keys is None and gaps is NO_GAP and rows is None and tagged is None:
        return NO_CHANGE
    return _new(FootprintDiff, (keys, gaps, rows, tagged))
