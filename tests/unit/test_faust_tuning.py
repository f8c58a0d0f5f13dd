"""The consumer settings Faust does not expose reach the worker's aiokafka consumer (streams.faust_tuning)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import faust
import pytest

from pulse_config.settings import Settings
from streams import faust_tuning


@pytest.fixture
def restored() -> Iterator[None]:
    saved = faust_tuning._fetch_max_wait_ms, faust_tuning._fetch_min_bytes
    try:
        yield
    finally:
        faust_tuning._fetch_max_wait_ms, faust_tuning._fetch_min_bytes = saved


def _worker_consumer_fetch(app_id: str) -> tuple[int, int]:
    """(fetch_min_bytes, fetch_max_wait_ms) of the aiokafka consumer Faust's consumer thread builds (not started)."""

    async def build() -> tuple[int, int]:
        app = faust.App(app_id, broker="kafka://127.0.0.1:1")
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_min_bytes, consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()

    return asyncio.run(build())


def test_fetch_min_bytes_and_wait_reach_the_consumer(restored: None) -> None:
    faust_tuning.set_fetch_max_wait_ms(10)
    faust_tuning.set_fetch_min_bytes(65536)
    assert _worker_consumer_fetch("tuning-set") == (65536, 10)


def test_default_fetch_min_bytes_is_one(restored: None) -> None:
    """The default leaves Kafka answering a fetch as soon as anything arrived (what Faust did)."""
    settings = Settings(_env_file=None)
    assert settings.consumer_fetch_min_bytes == 1
    faust_tuning.set_fetch_max_wait_ms(settings.consumer_fetch_max_wait_ms)
    faust_tuning.set_fetch_min_bytes(settings.consumer_fetch_min_bytes)
    assert _worker_consumer_fetch("tuning-default") == (1, settings.consumer_fetch_max_wait_ms)
