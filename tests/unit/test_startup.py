"""Start-up waits: capped exponential back-off, one log line per try naming the URL, a bounded wait's exit."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pulse_config.settings import Settings
from streams.startup import EXIT_CONFIG, DependencyUnavailable, masked, missing_codecs, one_line, retry, wait_or_exit


def run_retry(settings: Settings, failures: int) -> tuple[list[float], int]:
    sleeps: list[float] = []
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise ConnectionRefusedError(111, "Connect call failed")
        return "up"

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    assert asyncio.run(retry("the broker", "kafka://b:9092", attempt, settings, (OSError,), sleep)) == "up"
    return sleeps, calls


def test_back_off_doubles_up_to_the_cap_and_logs_one_line_per_try(caplog):
    settings = Settings(_env_file=None, startup_retry_min_seconds=0.5, startup_retry_max_seconds=3)
    with caplog.at_level(logging.WARNING, logger="streams.startup"):
        sleeps, calls = run_retry(settings, failures=6)
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0] and calls == 7
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 6 and all("\n" not in line for line in lines)
    assert lines[0].startswith("waiting for the broker at kafka://b:9092 (attempt 1): ConnectionRefusedError")


def test_a_bounded_wait_gives_up():
    settings = Settings(_env_file=None, startup_wait_seconds=0.2, startup_retry_min_seconds=0.1)

    async def attempt() -> None:
        raise OSError("down")

    with pytest.raises(DependencyUnavailable):
        asyncio.run(retry("Redis", "redis://r", attempt, settings, (OSError,)))


def test_other_errors_are_not_retried():
    async def attempt() -> None:
        raise RuntimeError("topic orders has 3 partitions, PULSE_PARTITIONS is 4")

    with pytest.raises(RuntimeError, match="partitions"):
        asyncio.run(retry("the broker", "kafka://b", attempt, Settings(_env_file=None), (OSError,)))


def test_urls_in_the_log_carry_no_password():
    assert masked("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert masked("rediss://user:pw@host/1") == "rediss://user:***@host/1"
    assert masked("kafka://127.0.0.1:9092") == "kafka://127.0.0.1:9092"
    assert one_line(ValueError("a\n  b")) == "ValueError: a b"


def test_this_install_reads_every_compression_codec_a_producer_may_choose():
    """snappy, lz4 and zstd come with aiokafka's extras (cramjam); without them a compressed batch crash-looped
    the worker (tests/e2e/test_other_producers.py)."""
    assert missing_codecs() == []


def test_an_install_without_the_codecs_refuses_to_start_in_one_line(monkeypatch, capsys):
    from aiokafka import codec

    monkeypatch.setattr(codec, "cramjam", None)
    assert missing_codecs() == ["snappy", "lz4", "zstd"]
    with pytest.raises(SystemExit) as exited:
        wait_or_exit(Settings(_env_file=None))
    assert exited.value.code == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "refusing to start" in err and "snappy/lz4/zstd-compressed" in err and "Traceback" not in err


def test_without_sasl_no_handshake_is_tried():
    """PLAINTEXT and SSL: nothing to refuse; the broker's reachability is the retry's business."""
    from streams.startup import refused_credentials

    assert asyncio.run(refused_credentials(Settings(_env_file=None, broker_url="kafka://127.0.0.1:1"))) is None
