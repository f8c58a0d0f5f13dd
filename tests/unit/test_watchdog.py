"""streams.watchdog: a checkpoint that awaits too long says where, and is neither cancelled nor changed by it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streams.watchdog import awaiting, watched


async def _ack(future: asyncio.Future[int]) -> int:
    return await future


async def _write(future: asyncio.Future[int]) -> int:
    return await _ack(future) + 1


def test_the_chain_names_each_coroutine_down_to_the_awaited_future():
    async def go() -> str:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(_write(future))
        await asyncio.sleep(0)
        chain = awaiting(task)
        future.set_result(1)
        assert await task == 2
        return chain

    chain = asyncio.run(go())
    names = [link.split(" ")[0] for link in chain.split(" > ")]
    assert names[:2] == ["_write", "_ack"], chain
    assert chain.split(" > ")[-1].startswith("<Future pending"), chain


def test_the_chain_follows_an_awaited_task():
    async def go() -> str:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        inner = asyncio.ensure_future(_ack(future), loop=None)
        inner.set_name("inner-ack")

        async def outer() -> int:
            return await inner

        task = asyncio.ensure_future(outer())
        await asyncio.sleep(0)
        chain = awaiting(task)
        future.set_result(3)
        assert await task == 3
        return chain

    chain = asyncio.run(go())
    assert "task inner-ack" in chain and "_ack" in chain.split("task inner-ack")[1], chain


def test_a_long_await_is_logged_with_its_chain_and_still_completes(caplog: pytest.LogCaptureFixture):
    async def go() -> int:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        task = asyncio.ensure_future(_write(future))
        # completed by an event, not a timer: the watchdog must have warned (two intervals) before it is set
        warned = asyncio.Event()

        class Count(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.getMessage().startswith("checkpoint still running") and len(caplog.records) >= 2:
                    warned.set()

        handler = Count()
        logging.getLogger("streams.watchdog").addHandler(handler)
        try:

            async def release() -> None:
                await warned.wait()
                future.set_result(41)

            releaser = asyncio.ensure_future(release())
            result = await watched(task, 0.01, "checkpoint")
            await releaser
            return result
        finally:
            logging.getLogger("streams.watchdog").removeHandler(handler)

    with caplog.at_level(logging.WARNING, logger="streams.watchdog"):
        assert asyncio.run(go()) == 42
    warnings = [r.getMessage() for r in caplog.records if r.name == "streams.watchdog"]
    assert len(warnings) >= 2
    assert all("awaiting: _write (" in w and "_ack (" in w for w in warnings), warnings


def test_cancelling_the_watcher_does_not_cancel_the_work():
    async def go() -> bool:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(_write(future))
        watcher = asyncio.ensure_future(watched(task, 10.0, "checkpoint"))
        await asyncio.sleep(0)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        future.set_result(0)
        await task
        return not task.cancelled()

    assert asyncio.run(go())


def test_a_failure_of_the_work_is_raised_by_the_watcher():
    async def boom() -> None:
        raise ValueError("broker said no")

    async def go() -> None:
        await watched(asyncio.ensure_future(boom()), 10.0, "checkpoint")

    with pytest.raises(ValueError, match="broker said no"):
        asyncio.run(go())
