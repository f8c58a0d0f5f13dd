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
    saved = faust_tuning._fetch_max_wait_ms, faust_tuning._fetch_min_bytes, faust_tuning._isolation_level
    try:
        yield
    finally:
        faust_tuning._fetch_max_wait_ms, faust_tuning._fetch_min_bytes, faust_tuning._isolation_level = saved


def _worker_consumer(app_id: str) -> tuple[int, int, str]:
    """(fetch_min_bytes, fetch_max_wait_ms, isolation_level) of the aiokafka consumer Faust's consumer thread
    builds (not started)."""

    async def build() -> tuple[int, int, str]:
        app = faust.App(app_id, broker="kafka://127.0.0.1:1")
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_min_bytes, consumer._fetch_max_wait_ms, consumer._isolation_level
        finally:
            await consumer.stop()

    return asyncio.run(build())


def _worker_consumer_fetch(app_id: str) -> tuple[int, int]:
    return _worker_consumer(app_id)[:2]


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


def test_the_worker_reads_committed_records_by_default(restored: None) -> None:
    """Faust reads uncommitted unless the app itself writes in transactions: an upstream producer's aborted
    transactions were scored (tests/e2e/test_other_producers.py)."""
    faust_tuning._isolation_level = None  # not set (another test's app may have set it in this process)
    assert _worker_consumer("tuning-faust")[2] == "read_uncommitted"  # Faust's own choice
    settings = Settings(_env_file=None)
    assert settings.consumer_isolation_level == "read_committed"
    faust_tuning.set_isolation_level(settings.consumer_isolation_level)
    assert _worker_consumer("tuning-isolation")[2] == "read_committed"
