"""`pulse replay` through the broker with 2 workers == `pulse score` offline, profile for profile.

RFM is relative to the whole population, so this holds only if each worker
scores against the partitions the other one owns (population snapshots), the
sweep re-scores customers whose events stopped, and both workers end on the
same event-time clock (recency matches too).
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis

from pulse.history import PROFILE_COLUMNS, profile_row
from pulse.simulate import generate_orders
from schemas.profile import CustomerProfile
from streams.sinks.redis_profiles import profile_key, vip_key
from testing.stack import REPO, consume, wait_until

pytestmark = pytest.mark.e2e

#: no hysteresis here: with it, a customer between the top 5 % and 8 % keeps
#: the flag it had before, which depends on the order the history was scored
#: in; unit tests cover the hysteresis itself
NO_HYSTERESIS = {"PULSE_VIP_ENTER_SHARE": "0.05", "PULSE_VIP_LEAVE_SHARE": "0.05"}


def write_history(path: Path, customers: int) -> int:
    orders = generate_orders(customers, days=365, seed=11, end=datetime(2026, 6, 1, tzinfo=UTC))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", "occurred_at", "amount", "order_id", "cost", "status"])
        for o in orders:
            # naive timestamps (taken as UTC) and decimal strings, as exports have them
            at = datetime.fromisoformat(o["occurred_at"]).replace(tzinfo=None).isoformat(sep=" ")
            writer.writerow([o["customer_id"], at, f"{o['amount']:.2f}", o["order_id"], o.get("cost", ""), o["status"]])
        writer.writerow(["C000001", "yesterday", "12.00", "BAD1", "", "completed"])  # a bad row: dead-lettered
        writer.writerow(["C000002", "2026-01-01T00:00:00Z", "-3", "BAD2", "", "completed"])
    return len(orders) + 2


def pulse(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pulse", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def ready_together(workers: list) -> bool:
    """Every worker is ready in the same (their latest) group generation: the partitions are shared out."""
    logs = [w.log.read_text(errors="replace") for w in workers]
    generations = [re.findall(r"generation id (\d+)", log) for log in logs]
    if not all(generations) or len({g[-1] for g in generations}) != 1:
        return False
    latest = f"generation id {generations[0][-1]} "
    return all(log.rfind("Worker ready") > log.rfind(latest) for log in logs)


def test_two_workers_replaying_a_csv_equal_the_offline_score(namespace, start_worker, tmp_path):
    s = namespace.settings
    env = {**namespace.env, **NO_HYSTERESIS, "PULSE_SWEEP_CUSTOMERS_PER_TICK": "200"}
    history = tmp_path / "history.csv"
    rows = write_history(history, customers=400)

    scored = pulse(["score", str(history), "--out", str(tmp_path / "profiles.csv"), "--allow-rejects"], env)
    assert scored.returncode == 0, scored.stderr
    assert "2 rejected" in scored.stderr, scored.stderr
    with (tmp_path / "profiles.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == PROFILE_COLUMNS
        expected = {row["customer_id"]: row for row in reader}
    vips = {cid for cid, row in expected.items() if row["vip"] == "true"}
    assert 10 <= len(vips) < len(expected) // 4, len(vips)
    assert len({row["segment"] for row in expected.values()}) >= 5

    workers = [start_worker(**NO_HYSTERESIS), start_worker(**NO_HYSTERESIS)]
    # both in the group before the replay: a worker scores the whole history in one or two backlog batches,
    # so one that joined later would find nothing left to do
    assert wait_until(lambda: ready_together(workers)), workers[1].log_tail()
    replayed = pulse(["replay", str(history)], env)
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {rows} rows" in replayed.stdout  # (its progress bar is drawn on a terminal only)

    client = redis.Redis.from_url(s.redis_url, decode_responses=True)

    def differing() -> list[tuple[dict, dict | None]]:
        with client.pipeline(transaction=False) as pipe:
            for cid in expected:
                pipe.hgetall(profile_key(s.redis_key_prefix, cid))
            hashes = pipe.execute()
        out = []
        for exp, fields in zip(expected.values(), hashes, strict=True):
            got = profile_row(CustomerProfile.from_redis(fields)) if fields else None
            if got != exp:
                out.append((exp, got))
        return out

    converged = wait_until(lambda: not differing(), timeout=150)
    left = differing()
    assert converged, f"{len(left)} of {len(expected)} differ, e.g. {left[:2]}\n{workers[0].log_tail()}"
    assert all(w.alive() for w in workers)
    # both workers took part: each owns some partitions
    assert all("population of partitions" in w.log.read_text() for w in workers)

    # the VIP sorted set is exactly the VIPs, scored by revenue
    in_redis = dict(client.zrange(vip_key(s.redis_key_prefix), 0, -1, withscores=True))
    assert set(in_redis) == vips
    assert all(abs(in_redis[c] - float(expected[c]["revenue"])) < 0.005 for c in vips)

    # every flag change was published; the last one per customer is the final flag
    changes = [orjson.loads(r.value) for r in consume(namespace.bootstrap, s.topic_vip_changes, len(vips), quiet=2)]
    last: dict[str, bool] = {}
    ids = set()
    for change in changes:
        last[change["customer_id"]] = change["vip"]
        ids.add(change["change_id"])
    assert len(ids) == len(changes)
    assert {c for c, flag in last.items() if flag} == vips

    dead = consume(namespace.bootstrap, s.topic_dead_letters, 2)
    assert sorted(orjson.loads(r.value)["reason"] for r in dead) == ["invalid_time", "out_of_range"]
