"""Repeated log lines: the first of a kind at once, the rest held back for a window, then counted."""

from __future__ import annotations

import logging

from streams.log_limits import MAX_KINDS, RepeatedLines, limit_repeated_lines


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object, name: str = "aiokafka.conn", level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_retry_loop_is_written_once_per_window_then_with_the_count_held_back():
    clock = Clock()
    held: list[str] = []
    limiter = RepeatedLines(10.0, held.append, clock)
    written = []
    for i in range(50):  # 5 s of a loop retrying every 100 ms, the node and error varying
        clock.now = i * 0.1
        line = record("Unable connect to node with id %s: %s", i % 2, f"[Errno 111] refused {i}")
        if limiter.filter(line):
            written.append(line.getMessage())
    assert written == ["Unable connect to node with id 0: [Errno 111] refused 0"]
    assert held == ["aiokafka.conn"] * 49
    clock.now = 12.0
    line = record("Unable connect to node with id %s: %s", 1, "[Errno 111] refused")
    assert limiter.filter(line)
    expected = "Unable connect to node with id 1: [Errno 111] refused [49 more like this in the last 12 s]"
    assert line.getMessage() == expected
    # a new window starts with that line: nothing held back, nothing appended
    clock.now = 30.0
    line = record("Unable connect to node with id %s: %s", 1, "x")
    assert limiter.filter(line) and line.getMessage() == "Unable connect to node with id 1: x"


def test_kinds_are_the_logger_the_level_and_the_template():
    clock = Clock()
    limiter = RepeatedLines(10.0, clock=clock)
    assert limiter.filter(record("a %s", 1))
    assert limiter.filter(record("b %s", 1))  # another template
    assert limiter.filter(record("a %s", 1, level=logging.WARNING))  # another level
    assert limiter.filter(record("a %s", 1, name="aiokafka.consumer.fetcher"))  # another logger
    assert not limiter.filter(record("a %s", 2))


def test_the_table_of_kinds_stays_bounded():
    clock = Clock()
    limiter = RepeatedLines(10.0, clock=clock)
    for i in range(3 * MAX_KINDS):  # f-strings: every line its own kind
        clock.now = i * 0.001
        assert limiter.filter(record(f"line {i}"))
    assert len(limiter._kinds) <= MAX_KINDS


def test_installed_on_every_logger_under_the_prefix_and_off_at_zero():
    parent, child = logging.getLogger("pulsetestlib"), logging.getLogger("pulsetestlib.conn")
    try:
        assert limit_repeated_lines(0, prefixes=("pulsetestlib",)) is None
        assert not child.filters
        limiter = limit_repeated_lines(10.0, prefixes=("pulsetestlib",))
        assert limiter is not None and limiter in child.filters and limiter in parent.filters
        assert logging.getLogger("pulsetestlibx").filters == []
    finally:
        for logger in (parent, child):
            logger.filters.clear()
