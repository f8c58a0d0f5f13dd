"""``read_stats`` reads the population topic to its end offset or says it could not: a read cut short by its time
bound would merge snapshots older than the ones after them (a partition's clock published before it moved on) and
show stale numbers as current. A fake consumer stands in for the broker here (the e2e tests read the real topic)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

import streams.stats as stats_module
from pulse.errors import explain
from pulse_config.settings import Settings
from streams.stats import PopulationReadTimeout, read_stats


class FakeConsumer:
    """One partition of ``values``, handed out one record per poll; each poll takes ``poll_seconds``."""

    values: list[bytes] = []
    poll_seconds = 0.0
    #: the last one made (to check it was stopped)
    last: FakeConsumer | None = None

    def __init__(self, **_: object) -> None:
        self.offset = 0
        self.stopped = False
        FakeConsumer.last = self
        self._client = SimpleNamespace(force_metadata_update=self._noop)

    async def _noop(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, tps: list) -> None:
        self.tp = tps[0]

    async def seek_to_beginning(self, tp: object) -> None:
        self.offset = 0

    async def end_offsets(self, tps: list) -> dict:
        return {tps[0]: len(self.values)}

    async def getmany(self, timeout_ms: int) -> dict:
        await asyncio.sleep(self.poll_seconds)
        if self.offset >= len(self.values):
            return {}
        record = SimpleNamespace(key=b"%d" % (self.offset % 2), value=self.values[self.offset], offset=self.offset)
        self.offset += 1
        return {self.tp: [record]}

    async def position(self, tp: object) -> int:
        return self.offset


def snapshot(partition: int, clock_ms: int) -> bytes:
    return (
        b'{"partition": %d, "watermark_ms": %d, "clock_ms": %d, "customers": 1,'
        b' "r": [], "f": [], "m": [], "v": []}' % (partition, clock_ms, clock_ms)
    )


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeConsumer]:
    monkeypatch.setattr(stats_module, "AIOKafkaConsumer", FakeConsumer)
    for name, value in (("values", []), ("poll_seconds", 0.0), ("last", None)):
        monkeypatch.setattr(FakeConsumer, name, value)  # restored after each test
    return FakeConsumer


def test_the_latest_snapshot_of_each_partition_is_read_to_the_end(fake: type[FakeConsumer]) -> None:
    fake.values = [snapshot(0, 1_000), snapshot(1, 1_000), snapshot(0, 5_000), snapshot(1, 5_000)]
    fake.poll_seconds = 0.0
    got = asyncio.run(read_stats(Settings(_env_file=None), timeout=5))
    assert got.partitions == 2 and got.values is not None and got.values.as_of_ms == 5_000


def test_a_read_short_of_the_end_offset_raises_instead_of_showing_older_snapshots(fake: type[FakeConsumer]) -> None:
    fake.values = [snapshot(0, 1_000), snapshot(1, 1_000), snapshot(0, 5_000), snapshot(1, 5_000)]
    fake.poll_seconds = 0.05  # 4 records need 0.2 s; the bound is 0.08 s
    settings = Settings(_env_file=None)
    with pytest.raises(PopulationReadTimeout) as caught:
        asyncio.run(read_stats(settings, timeout=0.08))
    assert caught.value.end == 4 and caught.value.position < 4
    assert fake.last is not None and fake.last.stopped  # the client is not leaked
    assert isinstance(caught.value, OSError)  # the console's "indicators unavailable" and retry
    error = explain(caught.value)
    assert error is not None
    line = error.line("stats")
    assert line.startswith(f"pulse stats: population topic {settings.topic_population()}: read to offset ")
    assert "of 4 within the timeout" in line and "--timeout" in line
