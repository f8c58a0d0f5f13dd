"""streams.state_cache: a kept state is handed out once, only against the exact bytes it was encoded to."""

from __future__ import annotations

from scoring.customer import CustomerState
from streams.codec import encode_state
from streams.state_cache import StateCache


def state(partition: int) -> tuple[bytes, CustomerState]:
    s = CustomerState(partition=partition)
    return encode_state(s), s


def test_a_kept_state_is_handed_out_once_against_its_own_bytes():
    cache = StateCache(10)
    raw, s = state(1)
    cache.put(b"A", raw, s)
    assert cache.take(b"A", bytes(bytearray(raw))) is s  # equal bytes (a RocksDB read): the same object
    assert cache.take(b"A", raw) is None  # taken: the caller may change it, so it is not handed out again
    assert (cache.hits, cache.misses) == (1, 1)


def test_other_bytes_in_the_table_win():
    cache = StateCache(10)
    raw, s = state(1)
    cache.put(b"A", raw, s)
    assert cache.take(b"A", state(2)[0]) is None  # another writer's (a recovery's) record
    assert cache.take(b"A", raw) is None  # and the stale entry is gone
    cache.put(b"B", raw, s)
    assert cache.take(b"B", None) is None  # no record at all


def test_bounded_the_least_recently_written_go_first():
    cache = StateCache(2)
    for key in (b"A", b"B", b"A", b"C"):
        cache.put(key, *state(0))
    assert list(cache.entries) == [b"A", b"C"]
    off = StateCache(0)
    off.put(b"A", *state(0))
    assert len(off) == 0
