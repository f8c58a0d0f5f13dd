"""The readers of Redis when it is frozen or gone: the HTTP API and the console answer a prompt 503, never hang.

docs/operations.md promises it ("A Redis that does not answer gives a 503 redis_unavailable"); until session 26 no
test made Redis stop answering under the API. The API runs in-process here (``serve_api``, as the worker's API
process runs it) against a redis-server of the test's own, which the test freezes (SIGSTOP: the connection stays
open, nothing answers), thaws and kills. ``/health`` (liveness) must not depend on Redis; ``/ready`` must say why
it is not ready. The console (in-process, ``testing.console``, with the client ``pulse console`` makes) answers its
pages with a 503 "redis unavailable" within its 2-s bound, and serves them again once Redis answers.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pulse.devstack import Server, free_port, start_redis
from pulse_config.settings import Settings
from streams.api import WorkerStatus, serve_api
from testing.console import serve_console

pytestmark = pytest.mark.e2e

TOKEN = "api-redis-token"
#: a request's own bound in this test: far above what a 503 should take, so a hang shows as a failure, not a wait
REQUEST_SECONDS = 30.0
#: the API's answers while Redis does not answer must come within this (its Redis timeout is 1 s)
PROMPT_SECONDS = 3.0
PATHS = ("/customers/C00001", "/vips", "/at-risk")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[str, Server]]:
    """The API on a free port over a private Redis: (its base URL, the Redis)."""
    redis_server = start_redis(tmp_path)
    port = free_port()
    settings = Settings(
        _env_file=None,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        api_host="127.0.0.1",
        api_port=port,
        api_token=TOKEN,
    )
    status = WorkerStatus()
    status.set(WorkerStatus.RUNNING)
    stop = asyncio.Event()
    task = asyncio.create_task(serve_api(settings, status, stop))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                await ask(base, "/health")
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        yield base, redis_server
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
        stop.set()
        await asyncio.wait_for(task, 30)
        redis_server.stop()


async def ask(base: str, path: str, as_json: bool = True) -> tuple[int, Any, float]:
    """GET ``path`` with the token: (status, JSON body or text, seconds taken)."""
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(base + path, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            body = await response.json(content_type=None) if as_json else await response.text()
            return response.status, body, time.monotonic() - started


async def test_a_frozen_then_dead_redis_gives_prompt_503s_and_health_stays_up(api):
    base, redis_server = api
    code, body, _ = await ask(base, "/customers/C00001")
    assert (code, body.get("error")) == (404, "unknown_customer"), body
    assert (await ask(base, "/ready"))[0] == 200

    redis_server.proc.send_signal(signal.SIGSTOP)
    frozen = {path: await ask(base, path) for path in PATHS}
    ready, health = await ask(base, "/ready"), await ask(base, "/health")
    print("\n[api] redis frozen: " + ", ".join(f"{p} {s} in {t:.1f} s" for p, (s, _, t) in frozen.items()))
    for path, (code, body, took) in frozen.items():
        assert code == 503 and body.get("error") == "redis_unavailable", (path, code, body)
        assert took < PROMPT_SECONDS, (path, took)
    assert ready[0] == 503 and "redis unavailable" in str(ready[1]), ready
    assert health[0] == 200, health

    redis_server.proc.send_signal(signal.SIGCONT)
    assert (await ask(base, "/customers/C00001"))[0] == 404  # answering again

    redis_server.proc.kill()
    redis_server.proc.wait(10)
    gone = {path: await ask(base, path) for path in PATHS}
    print("[api] redis gone: " + ", ".join(f"{p} {s} in {t:.1f} s" for p, (s, _, t) in gone.items()))
    for path, (code, body, took) in gone.items():
        assert code == 503 and body.get("error") == "redis_unavailable", (path, code, body)
        assert took < PROMPT_SECONDS, (path, took)
    assert (await ask(base, "/health"))[0] == 200


async def test_the_console_answers_503_while_redis_is_frozen_and_serves_again_after(tmp_path: Path):
    redis_server = start_redis(tmp_path)
    settings = Settings(
        _env_file=None,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        api_token=TOKEN,
        broker_url=f"kafka://127.0.0.1:{free_port()}",  # nothing there: the pages read Redis only
    )
    try:
        async with serve_console(settings) as (base, _):
            pages = ("/", "/fragments/queue", "/customers/C00001")
            before = {page: await ask(base, page, as_json=False) for page in pages}
            assert all(code in (200, 404) for code, _, _ in before.values()), before
            redis_server.proc.send_signal(signal.SIGSTOP)
            frozen = {page: await ask(base, page, as_json=False) for page in pages}
            print("\n[console] redis frozen: " + ", ".join(f"{p} {s} in {t:.1f} s" for p, (s, _, t) in frozen.items()))
            for page, (code, text, took) in frozen.items():
                assert code == 503 and "redis unavailable" in str(text), (page, code, text)
                assert took < PROMPT_SECONDS + 2, (page, took)  # the console's bound is 2 s
            redis_server.proc.send_signal(signal.SIGCONT)
            after = {page: (await ask(base, page, as_json=False))[0] for page in pages}
            assert after == {page: code for page, (code, _, _) in before.items()}, after
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
        redis_server.stop()
