"""A log line repeated by a retry loop is written once per window, with a count of the rest.

Why: while the broker is down, aiokafka's fetcher, sender, coordinator and metadata loops each retry every
~100 ms and log every failure: a 13-s Kafka restart wrote ~640 lines per worker (tests/faults'
broker-restart test), a ten-minute outage would write ~30,000, burying the lines that say what the worker
did about it (the fail-stop, the recovery) and filling the disk of a node that keeps its logs. The first line of
a kind still goes out at once, so an outage is seen as soon as it starts; the next line of that kind after the
window says how many were held back, and ``pulse_log_records_suppressed_total`` counts them by logger.

A kind is the logger, the level and the message template (``record.msg`` before its arguments are filled
in): "Unable connect to node with id %s: %s" is one kind whatever the node and the error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

#: distinct kinds kept at most; past it, kinds whose window ended are forgotten (a template that is really an
#: f-string would otherwise grow the table with every line)
MAX_KINDS = 1000


class RepeatedLines(logging.Filter):
    """Lets the first record of a kind through, holds back the others until ``window_seconds`` after it, then
    lets the next one through with the count of those held back appended to its message.

    Thread-safe: Faust's consumer thread logs through the same aiokafka loggers as the worker's loop."""

    def __init__(
        self,
        window_seconds: float,
        on_suppressed: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window_seconds = window_seconds
        self.on_suppressed = on_suppressed
        self.clock = clock
        #: kind -> [start of its window, records held back in it]
        self._kinds: dict[tuple[str, int, str], list[float]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is not None and now - seen[0] < self.window_seconds:
                seen[1] += 1
                held = True
            else:
                held = False
                if seen is not None and seen[1]:
                    record.msg = f"{record.msg} [{int(seen[1])} more like this in the last {now - seen[0]:.0f} s]"
                if seen is None and len(self._kinds) >= MAX_KINDS:
                    self._forget(now)
                self._kinds[kind] = [now, 0]
        if held and self.on_suppressed is not None:
            self.on_suppressed(record.name)
        return not held

    def _forget(self, now: float) -> None:
        """Drop the kinds whose window ended (their held-back count is lost from the log, not from the counter);
        if every window is still open, all of them."""
        ended = [kind for kind, (start, _) in self._kinds.items() if now - start >= self.window_seconds]
        for kind in ended or list(self._kinds):
            del self._kinds[kind]


def limit_repeated_lines(
    window_seconds: float,
    prefixes: Iterable[str] = ("aiokafka",),
    on_suppressed: Callable[[str], None] | None = None,
) -> RepeatedLines | None:
    """Install one :class:`RepeatedLines` on every logger under ``prefixes`` (None and nothing installed when
    ``window_seconds`` is 0).

    On each logger, not on the root's handlers: a logger's filter sees only what is logged through it, not
    what its children propagate, and the handlers are replaced when Faust configures logging. So call it after
    the libraries are imported (their module loggers exist then); a logger created later is not limited."""
    if window_seconds <= 0:
        return None
    limiter = RepeatedLines(window_seconds, on_suppressed)
    names = [
        name
        for name in list(logging.Logger.manager.loggerDict)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)
    ]
    for name in {*names, *prefixes}:
        logging.getLogger(name).addFilter(limiter)
    return limiter
