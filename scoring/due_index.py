"""The due-time index of one partition's churn re-checks (spec: Churn warning, "raised by time passing").

A customer's time-driven signals (overdue, the activity flags, an alert
episode's save window) change at a time its last assessment computed
(``ChurnState.next_check_ms``); the index maps each scheduled customer to that
time and pops the customers due at the clock, earliest first, so re-checking
costs the customers due, not the partition. Pure: no I/O, no Faust.

Customers whose own latest event is ahead of the clock (a fresh event whose
decision waits for the clock to reach it, see ``BatchProcessor._defer``) are
*waiting*: they come out before the time-driven checks, so a burst of those
(the clock jumping after a pause) does not hold back the alerts of fresh events.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

#: stale heap entries tolerated before the heap is rebuilt from the index
HEAP_SLACK = 1024


class DueIndex(dict[bytes, int]):
    """Customer key -> event time of its next check, with heaps of (time, key) to pop the earliest.

    The mapping is the truth; a heap entry whose time is no longer the key's is stale and skipped when popped
    (rescheduling pushes a new entry instead of searching the heap). Two heaps: the waiting customers' (a fresh
    event waits for the clock) and the time-driven checks'. Equal when the mappings are equal.
    """

    __slots__ = ("heap", "waiting")

    def __init__(self) -> None:
        super().__init__()
        #: time-driven checks
        self.heap: list[tuple[int, bytes]] = []
        #: customers whose latest event is ahead of the clock: popped first
        self.waiting: list[tuple[int, bytes]] = []

    def schedule(self, key: bytes, due_ms: int | None, waiting: bool = False) -> None:
        """Check ``key`` at ``due_ms`` (None: not at all); ``waiting``: its own latest event is at ``due_ms``."""
        if due_ms is None:
            self.pop(key, None)
            return
        if self.get(key) == due_ms:
            return
        self[key] = due_ms
        heapq.heappush(self.waiting if waiting else self.heap, (due_ms, key))
        if len(self.heap) + len(self.waiting) > 2 * len(self) + HEAP_SLACK:
            self.reheap()

    def reheap(self) -> None:
        """Make the heaps again from the mapping (after a bulk fill, or when stale entries piled up); a key
        with a current entry in the waiting heap stays waiting."""
        waiting = {key: due_ms for due_ms, key in self.waiting if self.get(key) == due_ms}
        self.waiting = [(t, k) for k, t in waiting.items()]
        heapq.heapify(self.waiting)
        self.heap = [(t, k) for k, t in self.items() if k not in waiting]
        heapq.heapify(self.heap)

    def pop_due(self, now_ms: int, limit: int, checks_limit: int | None = None) -> list[bytes]:
        """Customers whose next check is at or before ``now_ms``, unscheduled: at most ``limit``, the waiting
        ones first, then the time-driven checks (at most ``checks_limit`` of them if given), each earliest first."""
        return list(self.take_due(now_ms, limit, checks_limit))

    def take_due(self, now_ms: int, limit: int, checks_limit: int | None = None) -> Iterator[bytes]:
        """:meth:`pop_due` one customer at a time: each is unscheduled as it is taken, so a caller that stops
        early (a catch-up's due checks out of time) leaves the rest scheduled, in order, for its next call."""
        taken = 0
        for key in self._take(self.waiting, now_ms, limit):
            taken += 1
            yield key
        if checks_limit is not None:
            limit = min(limit, taken + checks_limit)
        yield from self._take(self.heap, now_ms, limit - taken)

    def has_due(self, now_ms: int) -> bool:
        """Is a customer due at ``now_ms`` (waiting or time-driven)? Drops the stale entries it finds on top."""
        for heap in (self.waiting, self.heap):
            while heap and self.get(heap[0][1]) != heap[0][0]:
                heapq.heappop(heap)
            if heap and heap[0][0] <= now_ms:
                return True
        return False

    def _take(self, heap: list[tuple[int, bytes]], now_ms: int, limit: int) -> Iterator[bytes]:
        taken = 0
        while taken < limit and heap and heap[0][0] <= now_ms:
            due_ms, key = heapq.heappop(heap)
            if self.get(key) == due_ms:
                del self[key]
                taken += 1
                yield key
