"""Decoded customer states kept between batches: a backlog's customer is decoded once, not once per batch.

A backlog batch re-scores a few thousand customers, most of whom the next
batch scores again; decoding each state from its changelog bytes cost ~8 µs
(issue 18). The checkpoint keeps the state object it has just encoded and
written, together with those exact bytes, and the next load of that customer
takes the object instead of decoding the bytes again.

Why this cannot hand out a stale or changed state:

* an entry is the object the checkpoint encoded, with the encoded bytes, put
  only once the table holds those bytes (``put`` after the write), and it is
  returned only while the table still holds *equal* bytes (``take``): a state
  the table got otherwise (a recovery after a rebalance, another writer) never
  matches, and the states round-trip exactly (tests/unit/test_codec.py), so the
  object equals what decoding the bytes would give;
* ``take`` removes the entry: the processor mutates what it loads, and a batch
  that raises half-way (streams.isolation re-processes it) must load the
  table's bytes again, not the half-scored object; a state goes back only when
  it is written again;
* the cache is dropped whenever the worker's partitions change (a new owner
  recovers the table, and this worker never sees states of partitions it gave
  away), and it is bounded (``PULSE_STATE_CACHE_CUSTOMERS``, the least recently
  written dropped first), so memory stays flat at 1M customers.

Faust-free and without I/O: the checkpoint owns one and passes the table's bytes in.
"""

from __future__ import annotations

from scoring.customer import CustomerState


class StateCache:
    """At most ``capacity`` (encoded bytes, state) pairs by customer key, in the order they were written."""

    __slots__ = ("capacity", "entries", "hits", "misses")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: dict[bytes, tuple[bytes, CustomerState]] = {}
        #: loads served from the cache / loads that decoded (metrics and the benchmark)
        self.hits = 0
        self.misses = 0

    def take(self, key: bytes, raw: bytes | None) -> CustomerState | None:
        """The cached state of ``key`` if the table holds ``raw`` and that is what the state was encoded to, else
        None; either way the entry is gone (the caller owns and may change the state)."""
        entry = self.entries.pop(key, None)
        if entry is not None and raw is not None and (entry[0] is raw or entry[0] == raw):
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, key: bytes, raw: bytes, state: CustomerState) -> None:
        """``state`` was encoded to ``raw`` and the table now holds it; the oldest entries go beyond capacity."""
        if not self.capacity:
            return
        entries = self.entries
        entries.pop(key, None)  # to the end: the order is the order of the writes
        entries[key] = (raw, state)
        if len(entries) > self.capacity:
            del entries[next(iter(entries))]

    def clear(self) -> None:
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)
