"""Alert episodes: what a customer's retention alerts led to (issue 19, the loop back), and the save rate.

An **episode** is one stretch of churn risk that a team is asked to work on. It
opens with a retention alert and records the alert's level, what the team did
(the ``retention-actions`` topic: acknowledged, assigned, resolved with an
outcome; and where the router delivered it), and whether the customer bought
again within the save window after the alert (``PULSE_SAVE_WINDOW_DAYS``).

The rules (pure functions of the state, the action records and the clock):

* An alert opens a new episode when the customer has none open, or when its
  level is above the open episode's level (the risk rose: what the team
  acknowledged was less serious; the old episode ends, superseded).
* Any other alert the churn warning decides while an episode is open (the
  level rose again to the episode's level after the cooldown) is a reminder:
  raised while nobody has acted on the episode, **suppressed** once it was
  acknowledged, assigned or resolved. A handled customer is not re-alerted
  for the same episode.
* The episode closes when the customer recovers: an assessment at level low.
  Falling again later opens a new episode (with the churn warning's cooldown).
* An action takes effect at its own time (``occurred_at``) once the
  customer's clock reaches it, like an event that does not move the clock:
  people's clicks are wall time, not event time, so they must not hold or
  push the partition's clock. A replay or ``pulse score`` that reads the same
  actions applies them at the same clock, whatever the batches.
* An episode's save window is ``[raised, raised + window]``: its first
  purchase in it saves the episode, and every purchase in it adds to the
  revenue recovered. Once the clock passes the window's end, it is settled
  (saved or not). Settled episodes beyond ``history`` fold into per-customer
  totals, so the state stays bounded and the tallies stay complete.

Pure: no I/O; the worker stores :class:`EpisodeState` in the customer's state.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from scoring.state import FrozenState, State

LOW, MEDIUM, HIGH = "low", "medium", "high"
_RANK = {LOW: 0, MEDIUM: 1, HIGH: 2}

#: the episode's status, in the order it can only move forward
OPEN, ACKNOWLEDGED, ASSIGNED, RESOLVED = "open", "acknowledged", "assigned", "resolved"
_STATUS_RANK = {OPEN: 0, ACKNOWLEDGED: 1, ASSIGNED: 2, RESOLVED: 3}
#: the router's record that it delivered an alert to a destination (not a step of the team)
DELIVERED = "delivered"
#: the save window's result, a tally label
SAVED, NOT_SAVED, PENDING = "saved", "not_saved", "pending"
#: the ``action`` label of an episode nobody acted on, and of one never delivered anywhere known
NO_ACTION_TAKEN = "none"
NO_DESTINATION = "none"
#: tally prefixes (scoring.footprint.tags): episodes by level × action × result, by destination × result,
#: and the revenue recovered (cents) by level × action and by destination
EPISODES_TAG = "episodes"
EPISODE_DESTINATIONS_TAG = "episode_destinations"
RECOVERED_TAG = "recovered_cents"
RECOVERED_DESTINATIONS_TAG = "recovered_destination_cents"
SAVE_TAGS = (EPISODES_TAG, EPISODE_DESTINATIONS_TAG, RECOVERED_TAG, RECOVERED_DESTINATIONS_TAG)


@dataclass(frozen=True, slots=True)
class EpisodeConfig:
    #: days after an alert in which a purchase counts as the customer saved (PULSE_SAVE_WINDOW_DAYS)
    save_window_days: float = 60.0
    #: settled episodes kept per customer (the profile shows the latest); older ones fold into totals
    history: int = 4
    #: actions read but not yet in effect (their time is ahead of the clock) kept per customer
    max_pending_actions: int = 16
    #: destinations remembered per episode
    max_destinations: int = 4

    @property
    def window_ms(self) -> int:
        return int(self.save_window_days * 86_400_000)


class Episode(State):
    #: the numbers n of the first and latest alert {customer}:churn:{n} of the episode
    first_alert: int = 0
    last_alert: int = 0
    raised_ms: int = 0
    #: the highest level alerted in the episode
    level: str = MEDIUM
    status: str = OPEN
    #: assigned: the person or team responsible
    owner: str | None = None
    #: resolved: contacted, offer_made, won_back, lost, no_action
    outcome: str | None = None
    #: when it ended: the customer recovered (level low) or a higher-level episode superseded it
    closed_ms: int | None = None
    #: the first purchase in the save window, and the revenue of the window's purchases (cents)
    purchased_ms: int | None = None
    recovered_cents: int = 0
    #: where the router delivered its alerts (destination names)
    destinations: list[str] = []
    #: the clock passed the save window's end
    settled: bool = False

    @property
    def action(self) -> str:
        """The action label: the outcome once resolved, else the furthest step (or "none")."""
        if self.status == RESOLVED:
            return self.outcome or RESOLVED
        return NO_ACTION_TAKEN if self.status == OPEN else self.status

    @property
    def result(self) -> str:
        return SAVED if self.purchased_ms is not None else NOT_SAVED if self.settled else PENDING

    def covers(self, alert: int) -> bool:
        return self.first_alert <= alert <= self.last_alert


class PendingAction(FrozenState, frozen=True):
    """An action as read, in effect from ``at_ms`` on (its occurred_at)."""

    at_ms: int = 0
    alert: int = 0
    action: str = ACKNOWLEDGED
    assignee: str | None = None
    outcome: str | None = None
    destination: str | None = None


class EpisodeState(State):
    #: oldest first; only the last can be open
    episodes: list[Episode] = []
    #: read, not yet in effect; in reading order
    pending: list[PendingAction] = []
    #: tallies of the episodes folded out of ``episodes`` (see ``tallies``)
    totals: dict[str, int] = {}
    #: alerts suppressed because the episode was handled
    suppressed: int = 0
    #: actions that matched no kept episode (an alert this history never raised, or folded away), or dropped
    stale_actions: int = 0

    def open(self) -> Episode | None:
        last = self.episodes[-1] if self.episodes else None
        return last if last is not None and last.closed_ms is None else None


def alert_number(alert_id: str) -> int:
    """n of an alert id ``{customer}:churn:{n}``."""
    return int(alert_id.rsplit(":churn:", 1)[1])


def record_action(state: EpisodeState, action: PendingAction, config: EpisodeConfig) -> int:
    """Keep an action until the clock reaches its time; returns how many older pending actions were dropped
    (the bound: a customer flooded with actions ahead of the clock)."""
    state.pending.append(action)
    over = len(state.pending) - config.max_pending_actions
    if over > 0:
        del state.pending[:over]
        state.stale_actions += over
        return over
    return 0


def apply_due_actions(state: EpisodeState, now_ms: int, raised: int, config: EpisodeConfig) -> list[str]:
    """Apply the pending actions whose time the clock reached, in (time, reading) order; returns the result of
    each ("applied" or "stale") for the metrics.

    ``raised``: the customer's alerts so far. An action for a later alert waits until that alert is raised
    (the router's delivery record carries the alert's own time, and a replay may read an action before the
    alert is decided again); it does not make the customer due, and the pending bound drops it eventually."""
    if not state.pending:
        return []
    due = sorted(
        (a for a in enumerate(state.pending) if a[1].at_ms <= now_ms and a[1].alert <= raised),
        key=lambda ia: (ia[1].at_ms, ia[0]),
    )
    if not due:
        return []
    taken = {i for i, _ in due}
    state.pending = [a for i, a in enumerate(state.pending) if i not in taken]
    results = []
    for _, action in due:
        episode = next((e for e in reversed(state.episodes) if e.covers(action.alert)), None)
        if episode is None:
            state.stale_actions += 1
            results.append("stale")
            continue
        _apply(episode, action, config)
        results.append("applied")
    return results


def _apply(episode: Episode, action: PendingAction, config: EpisodeConfig) -> None:
    if action.action == DELIVERED:
        name = action.destination
        if name and name not in episode.destinations and len(episode.destinations) < config.max_destinations:
            episode.destinations.append(name)
        return
    if _STATUS_RANK.get(action.action, 0) > _STATUS_RANK[episode.status]:
        episode.status = action.action
    if action.action == ASSIGNED and action.assignee:
        episode.owner = action.assignee
    if action.action == RESOLVED and action.outcome:
        episode.outcome = action.outcome  # a later resolution corrects the outcome


def on_alert(state: EpisodeState, alert: int, level: str, now_ms: int, config: EpisodeConfig) -> bool:
    """The churn warning decided alert number ``alert`` at ``level``: open or extend an episode; False if the
    alert is suppressed (the open episode was handled and the level is not above it)."""
    current = state.open()
    if current is not None and _RANK[level] <= _RANK[current.level]:
        if current.status != OPEN:
            state.suppressed += 1
            return False
        current.last_alert = alert  # a reminder: nobody acted yet
        return True
    if current is not None:
        current.closed_ms = now_ms  # superseded by a higher-level episode
    state.episodes.append(Episode(first_alert=alert, last_alert=alert, raised_ms=now_ms, level=level))
    _fold(state, config)
    return True


def on_assessed(state: EpisodeState, level: str, now_ms: int, config: EpisodeConfig) -> bool:
    """After an assessment at ``now_ms``: the open episode closes if the customer recovered (level low); the
    episodes whose save window the clock passed are settled. True if an episode changed."""
    changed = False
    current = state.open()
    if current is not None and level == LOW:
        current.closed_ms = now_ms
        changed = True
    window = config.window_ms
    for episode in state.episodes:
        if not episode.settled and now_ms > episode.raised_ms + window:
            episode.settled = True
            changed = True
    _fold(state, config)
    return changed


def on_purchase(state: EpisodeState, occurred_ms: int, amount_cents: int, config: EpisodeConfig) -> None:
    """A completed order: saves every kept episode whose window holds it, and adds to their revenue recovered.

    Order-independent: the first purchase is the earliest one, whatever order the orders are read in."""
    window = config.window_ms
    for episode in state.episodes:
        if episode.raised_ms < occurred_ms <= episode.raised_ms + window:
            if episode.purchased_ms is None or occurred_ms < episode.purchased_ms:
                episode.purchased_ms = occurred_ms
            episode.recovered_cents += amount_cents


def next_due_ms(state: EpisodeState, raised: int, config: EpisodeConfig) -> int | None:
    """The next clock at which time alone changes the episodes: a pending action for a raised alert falls due,
    or an unsettled save window ends (the due-time index re-checks the customer then)."""
    # the earliest in one loop each (no lists of times, ``window_ms`` read once): every assessment of a customer
    # with episodes asks
    nxt = None
    for a in state.pending:
        if a.alert <= raised and (nxt is None or a.at_ms < nxt):
            nxt = a.at_ms
    window = config.window_ms
    for e in state.episodes:
        if not e.settled:
            t = e.raised_ms + window + 1
            if nxt is None or t < nxt:
                nxt = t
    return nxt


def _fold(state: EpisodeState, config: EpisodeConfig) -> None:
    """Keep at most ``history`` episodes besides the open one: the oldest settled (else oldest) fold into
    the totals with their result as it stands."""
    while len(state.episodes) > config.history + 1:
        episode = state.episodes.pop(0)
        totals = Counter(state.totals)
        totals.update(episode_tallies(episode))
        state.totals = {k: v for k, v in totals.items() if v}


@dataclass(frozen=True, slots=True)
class _TallyKeys:
    """The tally keys of one (level, action, destinations) group, formatted once: ``zero`` holds every key an
    episode of the group adds (at 0, in ``episode_tallies``' order), ``hit`` the keys its result counts 1 under
    (per result), ``recovered`` the keys its revenue recovered adds to."""

    zero: dict[str, int]
    hit: dict[str, tuple[str, ...]]
    recovered: tuple[str, ...]


#: (level, action, destinations) -> its keys: a few levels × actions × destination sets; bounded all the same
_KEYS: dict[tuple[str, str, tuple[str, ...]], _TallyKeys] = {}
_KEYS_MAX = 4096


def _tally_keys(level: str, action: str, destinations: list[str]) -> _TallyKeys:
    """Why memoised: the tallies of a customer's episodes are taken twice per re-scored customer (its tags
    before and after, scoring.population.tags); formatting their ~8 keys was most of that."""
    of = (level, action, tuple(destinations))
    found = _KEYS.get(of)
    if found is not None:
        return found
    names = of[2] or (NO_DESTINATION,)
    zero: dict[str, int] = {}
    hit: dict[str, tuple[str, ...]] = {}
    for r in (SAVED, NOT_SAVED, PENDING):
        keys = (f"{EPISODES_TAG}:{level}:{action}:{r}", *(f"{EPISODE_DESTINATIONS_TAG}:{n}:{r}" for n in names))
        zero.update(dict.fromkeys(keys, 0))
        hit[r] = tuple(dict.fromkeys(keys))
    recovered = (f"{RECOVERED_TAG}:{level}:{action}", *(f"{RECOVERED_DESTINATIONS_TAG}:{n}" for n in names))
    zero.update(dict.fromkeys(recovered, 0))
    found = _TallyKeys(zero, hit, tuple(dict.fromkeys(recovered)))
    if len(_KEYS) < _KEYS_MAX:
        _KEYS[of] = found
    return found


def episode_tallies(episode: Episode) -> dict[str, int]:
    """What one episode adds to the save-rate tallies (see the tag prefixes above).

    Its group's other results and its revenue are there with 0: the tallies (and so the gauges) of a group hold
    every result from its first episode on, so "saved / settled" has a value (0) before the first save."""
    keys = _tally_keys(episode.level, episode.action, episode.destinations)
    out = dict(keys.zero)
    for key in keys.hit[episode.result]:
        out[key] = 1
    for key in keys.recovered:
        out[key] = episode.recovered_cents
    return out


def state_tallies(state: EpisodeState | None) -> Counter[str]:
    """The customer's contribution to the save-rate tallies: its kept episodes and its folded totals (the sum of
    their ``episode_tallies``, summed in one dict rather than through ``Counter.update`` per episode)."""
    if state is None:
        return Counter()
    out = dict(state.totals)
    get = out.get
    for episode in state.episodes:
        keys = _tally_keys(episode.level, episode.action, episode.destinations)
        for key in keys.zero:
            out[key] = get(key, 0)
        for key in keys.hit[episode.result]:
            out[key] += 1
        cents = episode.recovered_cents
        if cents:
            for key in keys.recovered:
                out[key] += cents
    return Counter(out)


@dataclass(frozen=True, slots=True)
class SaveRow:
    group: str
    episodes: int
    saved: int
    not_saved: int
    pending: int
    recovered_cents: int

    @property
    def settled(self) -> int:
        return self.saved + self.not_saved

    @property
    def save_rate(self) -> float | None:
        """Saved of the settled and saved episodes (a pending one may still be saved)."""
        return self.saved / self.settled if self.settled else None


def save_rates(counts: dict[str, int]) -> dict[str, list[SaveRow]]:
    """The save rate from tallies, overall and by level, by action and by destination."""
    groups: dict[str, dict[str, Counter[str]]] = {"all": {}, "level": {}, "action": {}, "destination": {}}
    recovered: dict[str, Counter[str]] = {by: Counter() for by in groups}

    def add(by: str, name: str, result: str, n: int) -> None:
        groups[by].setdefault(name, Counter())[result] += n

    for tag, n in counts.items():
        if not n:
            continue
        kind, _, rest = tag.partition(":")
        parts = rest.split(":")
        if kind == EPISODES_TAG and len(parts) >= 3:
            level, action, result = parts[0], ":".join(parts[1:-1]), parts[-1]
            add("all", "all", result, n)
            add("level", level, result, n)
            add("action", action, result, n)
        elif kind == EPISODE_DESTINATIONS_TAG and len(parts) >= 2:
            add("destination", ":".join(parts[:-1]), parts[-1], n)
        elif kind == RECOVERED_TAG and len(parts) >= 2:
            recovered["all"]["all"] += n
            recovered["level"][parts[0]] += n
            recovered["action"][":".join(parts[1:])] += n
        elif kind == RECOVERED_DESTINATIONS_TAG:
            recovered["destination"][rest] += n
    out: dict[str, list[SaveRow]] = {}
    for by, named in groups.items():
        out[by] = [
            SaveRow(
                name,
                sum(c.values()),
                c[SAVED],
                c[NOT_SAVED],
                c[PENDING],
                recovered[by][name],
            )
            for name, c in sorted(named.items())
        ]
    return out
