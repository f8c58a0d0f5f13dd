"""The partitioner's murmur2 is Kafka's: equal to aiokafka's port of the Java client's, for any key."""

from __future__ import annotations

import random

from aiokafka.partitioner import murmur2 as reference
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.partitioning import murmur2, murmur2_partition, partitioner


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_murmur2_is_the_java_clients(key):
    assert murmur2(key) == reference(key)


def test_every_length_and_the_customer_ids_land_where_the_java_client_sends_them():
    rng = random.Random(18)
    for length in range(0, 200):  # every tail (0-3 bytes) and word count, past the unpackers kept (32 words)
        for _ in range(20):
            key = rng.randbytes(length)
            assert murmur2(key) == reference(key)
    place = partitioner(12)
    for n in range(5000):
        key = f"C{n:06d}".encode()
        assert place(key) == murmur2_partition(key, 12) == (reference(key) & 0x7FFFFFFF) % 12
