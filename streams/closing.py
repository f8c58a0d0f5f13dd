"""Closing a Kafka or Redis client at the end of a stop: bounded in time, and a failure is a warning, not a crash.

Why: stopped while the broker is down, aiokafka's ``AIOKafkaConsumer.stop`` raised the ``CancelledError`` of its
own fetch task (``Fetcher.close``), which ended ``pulse router`` with a traceback and status 1 and left its other
clients unclosed; and the console's feed consumer's stop never returned (its group coordinator looked up again
and again), so ``pulse console`` did not exit on SIGTERM (session 25, tests/faults/test_stop_timeout.py). What
these processes must keep is settled before they close their clients (the router's deliveries and commits, the
console feed's records and commits), so only the clients' goodbyes are lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

log = logging.getLogger(__name__)


async def close_quietly(what: str, closing: Awaitable[object], timeout: float) -> None:
    """Await ``closing`` (one client's close) for at most ``timeout`` seconds; log a failure or the timeout."""
    try:
        await asyncio.wait_for(closing, timeout)
    except (asyncio.CancelledError, Exception) as exc:  # noqa: BLE001 - any failure of a goodbye
        task = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
            raise  # the caller itself is being cancelled: not a failed close
        reason = f"not done within {timeout:g} s" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        log.warning("stop: %s did not close cleanly (%s)", what, reason)
