"""Say where a long await is: a checkpoint still running after ``PULSE_CHECKPOINT_STALL_WARN_SECONDS`` logs, at
warning level, the chain of awaits it is suspended in (each coroutine's function and line, then the future or
task at the bottom), again at each further interval until it ends.

Why: a checkpoint that awaits something that never completes (an acknowledgement, a read-back, a lock) writes
no log line, no gap, no fail-stop; the worker looks idle while its partitions stop. The chain names the step
(e.g. ``CustomerStateTable.epoch_for`` awaiting the owner marker's acknowledgement) without a debugger. The
whole task and thread dump is also there on demand: ``kill -USR1 <worker pid>`` (mode's handler, into the
worker's output).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: at most this many links of a chain are named (a deeper one is cut, saying so)
MAX_LINKS = 40


def awaiting(task: asyncio.Future[Any]) -> str:
    """The chain of awaits ``task`` is suspended in, outermost first: ``func (file:line) > ... > <what it awaits>``."""
    links: list[str] = []
    get_coro = getattr(task, "get_coro", None)
    obj: Any = get_coro() if get_coro is not None else task
    for _ in range(MAX_LINKS):
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
        if frame is not None:
            code = frame.f_code
            name = getattr(code, "co_qualname", code.co_name)
            links.append(f"{name} ({Path(code.co_filename).name}:{frame.f_lineno})")
        elif obj is not None and not hasattr(obj, "cr_await") and not hasattr(obj, "gi_yieldfrom"):
            links.append(_short(obj))
            break
        following = getattr(obj, "cr_await", None)
        if following is None:
            following = getattr(obj, "gi_yieldfrom", None)
        if following is None:
            following = getattr(obj, "ag_await", None)
        if following is None:
            break
        if type(following).__name__ == "FutureIter":
            # C asyncio's iterator of an awaited future or task: the future is its one referent
            following = next((r for r in gc.get_referents(following) if isinstance(r, asyncio.Future)), following)
        if isinstance(following, asyncio.Task):
            links.append(f"task {following.get_name()}")
            obj = following.get_coro()
            continue
        obj = following
    else:
        links.append("...")
    return " > ".join(links) if links else _short(task)


def _short(obj: Any, limit: int = 300) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def watched(task: asyncio.Future[T], warn_seconds: float, what: str) -> T:
    """Await ``task`` like ``asyncio.shield`` (cancelling the caller does not cancel it), logging where it is
    suspended each time another ``warn_seconds`` pass without it ending."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        done, _ = await asyncio.wait({task}, timeout=warn_seconds)
        if done:
            return task.result()
        log.warning("%s still running after %.0fs, awaiting: %s", what, loop.time() - started, awaiting(task))
