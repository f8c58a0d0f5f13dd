"""GET /at-risk end to end: a real worker scores customers into medium and high churn risk, its profile sink keeps
the at-risk index in Redis, and the worker's API pages and filters it.

Every answer is compared with a brute-force oracle: all of the test's profile
hashes read from Redis, filtered in Python and sorted by priority (high before
medium), then value at risk, then customer id — so the index must agree with
the profiles it indexes, through entries (overdue), moves (medium -> high, a
new complaint reason) and exits (a purchase brings a customer back to low).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from decimal import Decimal
from urllib.parse import urlencode

import pytest
import redis
import redis.asyncio as aioredis

from pulse.devstack import Server, free_port, start_redis
from pulse_config.settings import Settings
from schemas.profile import CustomerProfile, RenderedProfile, render_profile
from scoring.customer import assess_customer
from streams.at_risk import AtRiskQuery, at_risk_page, index_key, members_key
from streams.sinks.redis_profiles import RedisProfileSink, profile_key
from testing.stack import get_json, wait_until
from testing.templates import template_states
from tests import at_risk_story as story
from tests.at_risk_story import CUSTOMERS
from tests.churn_story import iso

pytestmark = pytest.mark.e2e

TOKEN = "at-risk-token"


def oracle(profiles: dict[str, CustomerProfile], **f: str) -> list[str]:
    """The customers a filter should return in the queue's order, from the profiles themselves: high risk before
    medium, then the highest value at risk, then the customer id."""
    hits = [
        p
        for p in profiles.values()
        if p.churn_level in ("medium", "high")
        and f.get("level", p.churn_level) == p.churn_level
        and ("vip" not in f or (f["vip"] == "true") == p.vip)
        and f.get("segment", p.segment) == p.segment
        and ("reason" not in f or f["reason"] in {r.code for r in p.churn_reasons})
        and ("min_value" not in f or p.value_at_risk >= Decimal(f["min_value"]))
    ]
    order = sorted(hits, key=lambda p: (p.churn_level != "high", -p.value_at_risk, p.customer_id))
    return [p.customer_id for p in order]


def test_at_risk_pages_and_filters_the_index_the_sink_keeps(namespace, start_worker):
    settings = namespace.settings
    port = free_port()
    worker = start_worker(PULSE_API_PORT=str(port), PULSE_API_TOKEN=TOKEN, PULSE_API_MAX_PAGE_SIZE="3", **story.VIP_ENV)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    prefix = settings.redis_key_prefix

    def api(**params: str) -> tuple[int, dict]:
        """A GET; one that got no answer within get_json's 5 s (a loaded machine, the API runs niced) is retried."""
        for _ in range(10):
            status, body = get_json(f"http://127.0.0.1:{port}/at-risk?{urlencode(params)}", TOKEN)
            if status:
                break
        return status, body

    def profiles() -> dict[str, CustomerProfile]:
        out = {}
        for cid in CUSTOMERS:
            fields = client.hgetall(profile_key(prefix, cid))
            if fields:
                out[cid] = CustomerProfile.from_redis(fields)
        return out

    def send(days: range) -> None:
        story.send(namespace, days)

    def at(day: int, **levels: str) -> bool:
        got = profiles()
        return all(
            cid in got and got[cid].as_of.isoformat() == iso(day) and got[cid].churn_level == lvl
            for cid, lvl in levels.items()
        )

    def everything(**f: str) -> list[str]:
        """Every page of a filter, followed by next_offset (page size 3)."""
        ids, offset = [], 0
        for _ in range(20):
            status, body = api(**f, offset=str(offset))
            assert status == 200, body
            ids += [c["customer_id"] for c in body["customers"]]
            assert body["total"] == len(oracle(profiles(), **f)), (f, body)
            if body["next_offset"] is None:
                return ids
            offset = body["next_offset"]
        raise AssertionError("paging did not end")

    def check_every_filter() -> None:
        got = profiles()
        filters: list[dict[str, str]] = [{}, {"level": "medium"}, {"level": "high"}, {"vip": "true"}, {"vip": "false"}]
        filters += [{"segment": p.segment} for p in got.values() if p.segment]
        filters += [{"reason": r.code} for p in got.values() for r in p.churn_reasons]
        filters += [{"level": "high", "reason": r.code} for p in got.values() for r in p.churn_reasons]
        filters += [{"min_value": str(p.value_at_risk)} for p in got.values()]
        filters += [{"level": "high", "vip": "false", "min_value": "1"}]
        for f in filters:
            levels = {c: (p.churn_level, p.value_at_risk) for c, p in got.items()}
            assert everything(**f) == oracle(got, **f), (f, levels)

    def filters_agree() -> None:
        """Every filter equals the oracle once the worker is quiet: a sweep or a population re-rank may still
        be re-rendering profiles (segments move with the population) while the pages are read."""

        def agree() -> bool:
            try:
                check_every_filter()
            except AssertionError:
                return False
            return True

        if not wait_until(agree, every=1.0):
            check_every_filter()  # the mismatch, with its details

    assert wait_until(lambda: get_json(f"http://127.0.0.1:{port}/ready")[0] == 200), worker.log_tail()
    send(range(0, 422))  # A, B, D, E overdue from day 421: medium; C still buys
    assert wait_until(lambda: at(421, A="medium", B="medium", C="low", D="medium")), (profiles(), worker.log_tail())
    status, body = api()
    assert status == 200, body
    assert [c["customer_id"] for c in body["customers"]] == ["B", "A", "D"]  # 3 a page; A ties D, before it by id
    assert body["total"] == len(oracle(profiles())) and body["next_offset"] == 3
    assert body["customers"][0]["value_at_risk"] == str(profiles()["B"].value_at_risk)
    filters_agree()

    send(range(422, 468))  # P(alive) below 0.3: high; B complains (critical)
    assert wait_until(lambda: at(467, A="high", B="high", D="high")), (profiles(), worker.log_tail())
    assert "severe_complaint" in {r.code for r in profiles()["B"].churn_reasons}
    # the filters are not vacuous: both kinds of VIP flag and several segments are at risk
    risky = [p for p in profiles().values() if p.churn_level != "low"]
    assert {p.vip for p in risky} == {True, False}, [(p.customer_id, p.vip, p.segment) for p in risky]
    assert len({p.segment for p in risky}) > 1, [(p.customer_id, p.vip, p.segment) for p in risky]
    filters_agree()

    send(range(468, 473))  # D buys again: back to low, out of the index
    assert wait_until(lambda: at(472, D="low")), (profiles(), worker.log_tail())
    filters_agree()
    assert "D" not in everything()
    assert client.hget(members_key(prefix), "D") is None
    assert not any(client.zscore(index_key(prefix, k), "D") for k in ("any", "medium", "high", "high:segment:x"))

    # bad filters and no token
    for bad in ({"level": "low"}, {"vip": "maybe"}, {"min_value": "lots"}, {"segment": "a b"}, {"limit": "4"}):
        status, body = api(**bad)
        assert status == 400 and body["error"] == "bad_filter", (bad, body)
    assert get_json(f"http://127.0.0.1:{port}/at-risk", None)[0] == 401


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_redis(tmp_path_factory.mktemp("at-risk-redis"))
    yield srv
    srv.stop()


def test_the_index_follows_rewritten_profiles_and_pages_with_exclusions(redis_server: Server):
    """Many realistic profiles through the sink, a third of them rewritten as other customers' states (other
    levels, segments, reasons, VIP flags), then every kind of query, with and without left-out sets, against
    the oracle; no broker needed (the index is the sink's and Redis's alone)."""
    settings = Settings(_env_file=None)
    config = settings.scoring()
    templates = template_states(300, 7)
    url, prefix = f"redis://127.0.0.1:{redis_server.port}/0", f"idx{uuid.uuid4().hex[:6]}:"
    rng = random.Random(5)

    def render(i: int, state_index: int) -> RenderedProfile:
        state = templates.states[state_index % len(templates.states)]
        clv, risk = assess_customer(state, templates.clock_ms, 30.0, config)
        return render_profile(f"K{i:04d}", state, templates.clock_ms, config, "USD", clv, risk)

    async def go() -> None:
        sink = RedisProfileSink(url, prefix, 1.0, "revenue")
        client = aioredis.from_url(url, decode_responses=True)
        try:
            sink.submit([render(i, i) for i in range(900)])
            assert await sink.flush()
            sink.submit([render(i, rng.randrange(10_000)) for i in rng.sample(range(900), 300)])
            assert await sink.flush()
            got = {}
            for i in range(900):
                fields = await client.hgetall(profile_key(prefix, f"K{i:04d}"))
                got[f"K{i:04d}"] = CustomerProfile.from_redis(fields)
            risky = [c for c, p in got.items() if p.churn_level != "low"]
            assert 100 < len(risky) < 800 and len({got[c].churn_level for c in risky}) == 2
            # priority before value: the cheapest high-risk customer comes before the dearest medium-risk one
            cheap_high = min((c for c in risky if got[c].churn_level == "high"), key=lambda c: got[c].value_at_risk)
            dear_medium = max((c for c in risky if got[c].churn_level == "medium"), key=lambda c: got[c].value_at_risk)
            assert got[cheap_high].value_at_risk < got[dear_medium].value_at_risk
            whole = await at_risk_page(client, prefix, AtRiskQuery(limit=len(risky)))
            order = [r["customer_id"] for r in whole.items]
            assert order.index(cheap_high) < order.index(dear_medium)
            levels = [r["churn_level"] for r in whole.items]
            assert levels == sorted(levels, key=lambda lvl: lvl != "high")
            left_out = [set(rng.sample(risky, 40)), set(rng.sample(risky, 15)) | {"K9999"}]
            for n, members in enumerate(left_out):
                await client.sadd(f"{prefix}left-out:{n}", *members)
            values = sorted({p.value_at_risk for p in got.values()})
            queries = [{}, {"level": "high"}, {"vip": "true"}, {"vip": "false", "level": "medium"}]
            queries += [{"reason": r} for r in ("overdue", "low_p_alive", "detractor")]
            queries += [{"segment": got[c].segment} for c in risky[:3]]
            queries += [{"min_value": str(values[len(values) // 2])}, {"level": "high", "reason": "overdue"}]
            # a minimum value reads one score range per priority band
            queries += [{"min_value": str(values[len(values) // 4]), **f} for f in ({}, {"level": "medium"})]
            queries += [{"min_value": str(values[-1] + 1)}, {"min_value": "-5", "vip": "false"}]
            for f in queries:
                expected = oracle(got, **f)
                for exclude in (False, True):
                    want = [c for c in expected if not any(c in m for m in left_out)] if exclude else expected
                    keys = [f"{prefix}left-out:{n}" for n in range(len(left_out))] if exclude else []
                    for offset, limit in ((0, 7), (5, 20), (len(want) - 3, 10), (len(want) + 5, 5)):
                        query = AtRiskQuery.from_params(
                            {**f, "offset": str(max(0, offset)), "limit": str(limit)}, 7, 50
                        )
                        page = await at_risk_page(client, prefix, query, extra_exclude=keys)
                        assert page.total == len(want), (f, exclude)
                        start = max(0, offset)
                        assert [r["customer_id"] for r in page.items] == want[start : start + limit], (
                            f,
                            exclude,
                            offset,
                        )
            # nothing temporary is left behind
            assert not [k for k in await client.keys(f"{prefix}at-risk:tmp:*")]
        finally:
            await sink.close()
            await client.aclose()

    asyncio.run(go())
