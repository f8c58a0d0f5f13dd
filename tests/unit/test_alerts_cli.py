"""`pulse alerts` filters (issue 19): level and above, VIP, customer, since, limit; --follow starts at the end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pulse.alerts import AlertFilter, parse_since
from pulse.cli import build_parser
from schemas.alerts import RetentionAlert, RiskLevel
from tests.router_fixtures import alert_dict

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def alert(n: int, **kw) -> RetentionAlert:
    return RetentionAlert.model_validate(alert_dict(n, **kw))


def test_level_is_that_level_or_above():
    high, medium = alert(1, level="high"), alert(2, level="medium")
    assert AlertFilter(level=RiskLevel.HIGH).matches(high) and not AlertFilter(level=RiskLevel.HIGH).matches(medium)
    assert AlertFilter(level=RiskLevel.MEDIUM).matches(high) and AlertFilter(level=RiskLevel.MEDIUM).matches(medium)


def test_vip_customer_and_since():
    vip, plain = alert(1, vip=True), alert(2)
    assert AlertFilter(vip=True).matches(vip) and not AlertFilter(vip=True).matches(plain)
    assert AlertFilter(customer="C00002").matches(plain) and not AlertFilter(customer="C00002").matches(vip)
    old = alert(3, raised_at=NOW - timedelta(days=8))
    recent = alert(4, raised_at=NOW - timedelta(hours=1))
    since = parse_since("7d", NOW)
    assert AlertFilter(since=since).matches(recent) and not AlertFilter(since=since).matches(old)
    both = AlertFilter(level=RiskLevel.HIGH, vip=True, customer="C00001", since=since)
    assert both.matches(alert(1, vip=True, raised_at=NOW))
    assert not both.matches(alert(1, vip=True, level="medium", raised_at=NOW))  # every condition must hold
    assert not both.matches(alert(1, vip=True, raised_at=NOW - timedelta(days=8)))
    assert not both.matches(alert(2, vip=True, raised_at=NOW))
    assert not AlertFilter().active and both.active


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("12h", NOW - timedelta(hours=12)),
        ("1.5d", NOW - timedelta(hours=36)),
        ("2w", NOW - timedelta(days=14)),
        ("2026-04-30", datetime(2026, 4, 30, tzinfo=UTC)),
        ("2026-04-30T08:00+02:00", datetime(2026, 4, 30, 6, tzinfo=UTC)),
    ],
)
def test_since_forms(text, expected):
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "7 days", "-3d", ""])
def test_since_says_what_it_accepts(text):
    with pytest.raises(ValueError, match="ISO date or time"):
        parse_since(text, NOW)


def test_follow_starts_at_the_end_unless_from_beginning(monkeypatch):
    from pulse import cli

    seen = {}

    async def fake_watch(settings, **kw):
        seen.update(kw)
        return 0

    monkeypatch.setattr("pulse.alerts.watch", fake_watch)
    parser = build_parser()

    def run(*argv: str) -> dict:
        seen.clear()
        args = parser.parse_args(["alerts", *argv])
        assert cli.cmd_alerts(args) == 0
        return dict(seen)

    assert run()["from_beginning"] is True
    assert run("--follow")["from_beginning"] is False
    assert run("--follow", "--from-beginning")["from_beginning"] is True
    assert run("--new")["from_beginning"] is False
    got = run("--level", "high", "--vip", "--customer", "C1", "--since", "2026-01-01", "--limit", "5")
    assert got["max_alerts"] == 5
    assert got["select"] == AlertFilter(RiskLevel.HIGH, True, "C1", datetime(2026, 1, 1, tzinfo=UTC))
    args = parser.parse_args(["alerts", "--since", "soon"])
    assert cli.cmd_alerts(args) == 2
    assert cli.cmd_alerts(parser.parse_args(["alerts", "--limit", "0"])) == 2
