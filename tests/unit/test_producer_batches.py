"""The worker's producer builds record batches of PULSE_PRODUCER_MAX_BATCH_BYTES, not Faust's 16 KiB: aiokafka builds a
partition's next batch only once the previous one went out, so a checkpoint's changelog write of a partition took
one round trip per batch (docs/benchmarks.md, session 10)."""

from __future__ import annotations

import asyncio

from pulse_config.settings import Settings


def test_the_producer_gets_the_configured_batch_size():
    from streams.app import create_app

    async def go() -> tuple[int, int]:
        default = Settings(_env_file=None)
        small = Settings(_env_file=None, producer_max_batch_bytes=16384)
        sizes = []
        for s in (default, small):
            producer = create_app(s, s.processor()).app.producer
            sizes.append(producer._settings_default()["max_batch_size"])
        return sizes[0], sizes[1]

    assert asyncio.run(go()) == (524288, 16384)
