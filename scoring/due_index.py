"""The due-time index of one partition's churn re-checks (spec: Churn warning, "raised by time passing").

A customer's time-driven signals (overdue, the activity flags, an alert
episode's save window) change at a time its last assessment computed
(``ChurnState.next_check_ms``); the index maps each scheduled customer to that
time and pops the customers due at the clock, earliest first, so re-checking
costs the customers due, not the partition. Pure: no I/O, no Faust.
"""

from __future__ import annotations

import heapq

#: stale heap entries tolerated before the heap is rebuilt from the index
HEAP_SLACK = 1024


class DueIndex(dict[bytes, int]):
    """Customer key -> event time of its next check, with a heap of (time, key) to pop the earliest.

    The mapping is the truth; a heap entry whose time is no longer the key's is stale and skipped when popped
    (rescheduling pushes a new entry instead of searching the heap). Equal when the mappings are equal.
    """

    __slots__ = ("heap",)

    def __init__(self) -> None:
        super().__init__()
        self.heap: list[tuple[int, bytes]] = []

    def schedule(self, key: bytes, due_ms: int | None) -> None:
        """Check ``key`` at ``due_ms`` (None: not at all)."""
        if due_ms is None:
            self.pop(key, None)
            return
        if self.get(key) == due_ms:
            return
        self[key] = due_ms
        heapq.heappush(self.heap, (due_ms, key))
        if len(self.heap) > 2 * len(self) + HEAP_SLACK:
            self.reheap()

    def reheap(self) -> None:
        """Make the heap again from the mapping (after a bulk fill, or when stale entries piled up)."""
        self.heap = [(t, k) for k, t in self.items()]
        heapq.heapify(self.heap)

    def pop_due(self, now_ms: int, limit: int) -> list[bytes]:
        """Customers whose next check is at or before ``now_ms``, earliest first, at most ``limit``; unscheduled."""
        out: list[bytes] = []
        heap = self.heap
        while heap and heap[0][0] <= now_ms and len(out) < limit:
            due_ms, key = heapq.heappop(heap)
            if self.get(key) == due_ms:
                del self[key]
                out.append(key)
        return out
