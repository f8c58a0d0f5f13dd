"""Pure parts of the router: which destinations an alert goes to, back-off, rate limit, commit order.

No I/O and no clock of their own (times are arguments), so the unit tests
pin every rule exactly; the runtime shell (``streams/router/service.py``)
does the waiting.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from decimal import Decimal

from streams.router.config import EventType, Route, RouterConfig


@dataclass(frozen=True)
class Routable:
    """What routing looks at, for an alert or a VIP change."""

    event: EventType
    level: str | None = None
    vip: bool = False
    priority: bool = False
    segment: str | None = None
    reasons: frozenset[str] = frozenset()
    value_at_risk: Decimal | None = None


def route_matches(route: Route, item: Routable) -> bool:
    """Every condition the route states must hold; a list condition holds when any of its values does."""
    if item.event not in route.events:
        return False
    if route.levels and item.level not in route.levels:
        return False
    if route.vip is not None and item.vip != route.vip:
        return False
    if route.priority is not None and item.priority != route.priority:
        return False
    if route.segments and item.segment not in route.segments:
        return False
    if route.reasons and not item.reasons.intersection(route.reasons):
        return False
    if route.min_value_at_risk is not None and (
        item.value_at_risk is None or item.value_at_risk < route.min_value_at_risk
    ):
        return False
    return True


def destinations_for(config: RouterConfig, item: Routable) -> list[str]:
    """The union of the destinations of every matching route, in file order; none matched: the default route.

    Every route is looked at (not first match): a VIP route and a team's
    segment route may both want the same alert, and a destination named by
    two routes still gets it once.
    """
    out: list[str] = []
    for route in config.routes:
        if route_matches(route, item):
            out += [d for d in route.destinations if d not in out]
    if not out and item.event == "retention_alert":
        out = list(config.router.default_route)
    return out


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential back-off, bounded both in attempts and in time."""

    initial_seconds: float
    max_seconds: float
    max_attempts: int
    max_retry_seconds: float

    def backoff(self, attempt: int) -> float:
        """Wait after the ``attempt``-th failed attempt (1-based): initial, 2×, 4×, … capped."""
        return min(self.max_seconds, self.initial_seconds * 2 ** min(attempt - 1, 62))

    def next_delay(self, attempt: int, elapsed: float) -> float | None:
        """Wait before the next attempt, or None to give up (dead-letter).

        Gives up after ``max_attempts`` attempts, or when the next attempt
        would start later than ``max_retry_seconds`` after the first one.
        No jitter: one router process owns a destination's traffic, so there
        is no herd of clients retrying in step.
        """
        if attempt >= self.max_attempts:
            return None
        delay = self.backoff(attempt)
        if elapsed + delay > self.max_retry_seconds:
            return None
        return delay


class RateLimiter:
    """At most ``limit`` messages in any rolling ``window`` seconds (0: unlimited).

    A rolling window rather than a token bucket, because that is how the chat
    platforms state their limits (DingTalk: 20 a minute, and a robot that
    exceeds it is muted for 10 minutes): never more than the limit in any minute.
    """

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._sent: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds to wait before a message may go at ``now``."""
        if self.limit <= 0:
            return 0.0
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        if len(self._sent) < self.limit:
            return 0.0
        return self._sent[0] + self.window - now

    def record(self, now: float) -> None:
        if self.limit > 0:
            self._sent.append(now)


class OffsetTracker:
    """Offsets of one partition read but not yet finished; what may be committed.

    Alerts finish out of order (one destination is slow, another fast), but
    a committed offset says "everything before it is done": the committable
    offset is the lowest unfinished one (or the next to read when none is).
    """

    def __init__(self) -> None:
        self._pending: set[int] = set()
        self._next = -1  # one past the highest offset added
        self._committed = -1

    def add(self, offset: int) -> None:
        self._pending.add(offset)
        self._next = max(self._next, offset + 1)

    def done(self, offset: int) -> None:
        self._pending.discard(offset)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def committable(self) -> int | None:
        """The offset to commit now, or None when it would not move forward."""
        if self._next < 0:
            return None
        offset = min(self._pending) if self._pending else self._next
        if offset <= self._committed:
            return None
        return offset

    def committed(self, offset: int) -> None:
        self._committed = max(self._committed, offset)
