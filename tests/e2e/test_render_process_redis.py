"""The render process (PULSE_PROFILE_RENDER_PROCESS) against the real servers: its profiles land in a real
redis-server byte for byte as the worker's own rendering lands them (every key under the prefix, the hashes, the
VIP set, the at-risk index, compared with Redis's DUMP), and a worker on a real broker whose render process is
killed exits."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections.abc import Iterator

import pytest
import redis
from msgspec.structs import replace

from pulse.devstack import Server, start_redis
from pulse_config.settings import Settings
from schemas.profile import render_profile
from scoring.customer import assess_customer
from streams.codec import encode_state
from streams.fail_stop import EXIT_FAIL_STOP
from streams.render_process import RenderProcess
from streams.sinks.redis_profiles import RedisProfileSink
from testing.stack import wait_until
from testing.templates import template_states

pytestmark = pytest.mark.e2e

SETTINGS = Settings(_env_file=None)
CONFIG = SETTINGS.scoring()
TEMPLATES = template_states(200, 7)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_redis(tmp_path_factory.mktemp("render-redis"))
    yield srv
    srv.stop()


def dump(client: redis.Redis, prefix: str) -> dict[bytes, bytes]:
    """Every key under ``prefix`` (the prefix cut off) and its DUMP: equal only if type, content and encoding are."""
    out = {}
    for key in client.scan_iter(match=f"{prefix}*".encode(), count=1000):
        value = client.dump(key)
        assert value is not None
        out[key[len(prefix) :]] = value
    return out


async def test_the_render_process_writes_what_the_worker_s_thread_writes(server: Server):
    url = f"redis://127.0.0.1:{server.port}/0"
    here, there = f"here{uuid.uuid4().hex[:6]}:", f"there{uuid.uuid4().hex[:6]}:"
    inputs = []
    for i in range(600):
        state = TEMPLATES.states[i % len(TEMPLATES.states)]
        if i % 7 == 0:
            state = replace(state, vip=not state.vip)
        clv, risk = assess_customer(state, TEMPLATES.clock_ms, 30.0, CONFIG)
        inputs.append((f"C{i:05d}", state, TEMPLATES.clock_ms + i, clv, risk))
    batches = [inputs[:250], inputs[250:], inputs[100:400]]  # later batches render some customers again

    own = RedisProfileSink(url, here, 1.0, SETTINGS.vip_value)
    for batch in batches:
        own.submit([render_profile(cid, s, at, CONFIG, SETTINGS.base_currency, c, r) for cid, s, at, c, r in batch])
        assert await own.flush()

    other = RedisProfileSink(url, there, 1.0, SETTINGS.vip_value)
    flushes: list[asyncio.Future] = []

    def packed(profiles: dict) -> None:
        other.submit_packed(profiles)
        flushes.append(asyncio.ensure_future(other.flush()))

    deaths: list[str] = []
    proc = RenderProcess(
        CONFIG, SETTINGS.base_currency, there, SETTINGS.vip_value, 2, SETTINGS.gc_thresholds, packed, deaths.append
    )
    proc.start()
    try:
        for batch in batches:
            await proc.submit([(cid, encode_state(s), at, c, r) for cid, s, at, c, r in batch])
        assert await proc.settle(120) == 0
        assert all(await asyncio.gather(*flushes))
    finally:
        proc.close()
        await own.close()
        await other.close()
    assert not deaths

    client = redis.Redis(port=server.port)
    mine, theirs = dump(client, here), dump(client, there)
    assert len(mine) > 600  # the hashes, the VIP set and the at-risk index keys
    assert theirs == mine


def test_a_worker_whose_render_process_dies_exits_with_a_clear_line(start_worker):
    """Never a silent stall: the child's death is the worker's exit (75, restarted by its supervisor)."""
    worker = start_worker(PULSE_PROFILE_RENDER_PROCESS="true")
    started = re.compile(r"profile render process started \(pid (\d+)\)")
    assert wait_until(lambda: started.search(worker.log.read_text()) or not worker.alive()), worker.log_tail()
    match = started.search(worker.log.read_text())
    assert match is not None, worker.log_tail()
    assert wait_until(lambda: "Worker ready" in worker.log.read_text() or not worker.alive()), worker.log_tail()
    os.kill(int(match.group(1)), signal.SIGKILL)
    assert wait_until(lambda: not worker.alive()), worker.log_tail()
    assert worker.proc.returncode == EXIT_FAIL_STOP, worker.log_tail()
    assert "the profile render process exited (exit code -9" in worker.log.read_text(), worker.log_tail()
