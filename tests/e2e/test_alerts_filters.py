"""`pulse alerts` filters on a real broker (issue 19): --level, --vip, --customer, --since, --limit."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from testing.stack import REPO, produce
from tests.router_fixtures import alert_dict

pytestmark = pytest.mark.e2e


def test_filters_select_the_alerts_a_person_asks_for(namespace):
    settings = namespace.settings
    now = datetime.now(UTC)
    alerts = [
        alert_dict(1, level="high", vip=True, raised_at=now - timedelta(days=10)),
        alert_dict(2, level="high", vip=True, raised_at=now - timedelta(hours=2)),
        alert_dict(3, level="medium", vip=True, raised_at=now - timedelta(hours=1)),
        alert_dict(4, level="high", vip=False, raised_at=now - timedelta(minutes=5)),
    ]
    records = [(a["customer_id"].encode(), orjson.dumps(a)) for a in alerts] + [(b"x", b"not an alert")]
    produce(namespace.bootstrap, settings.topic_retention_alerts, records)
    env = {**os.environ, **namespace.env}

    def shown(*args: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "pulse", "alerts", "--json", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return sorted(orjson.loads(line)["customer_id"] for line in done.stdout.splitlines())

    assert shown("--level", "high", "--vip") == ["C00001", "C00002"]
    assert shown("--level", "medium", "--since", "1d") == ["C00002", "C00003", "C00004"]
    assert shown("--customer", "C00003") == ["C00003"]
    assert shown("--since", (now - timedelta(minutes=30)).isoformat()) == ["C00004"]
    assert len(shown("--limit", "2")) == 2
    text = subprocess.run(
        [sys.executable, "-m", "pulse", "alerts", "--vip", "--level", "high"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "C00001:churn:1" in text.stdout and "C00004" not in text.stdout and "2 alert(s)" in text.stderr
