"""Spec items of issue 14: VIP ranked by CLV (``PULSE_VIP_VALUE=clv``), and the historical CLV's lifetime
from the population's annual churn rate.

The streamed side is the worker's processor (events in batches, the sweep); each load hands out a copy of
the stored state, as the worker's table does, so a state the processor changed but did not write would
show. The expected side recomputes from the raw events.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pandas as pd
import pytest

from pulse.simulate import generate_events
from pulse_config.settings import Settings
from schemas.profile import CustomerProfile
from scoring.clv import lifetime_from_churn
from scoring.customer import CustomerState, customer_clv
from scoring.indicators import ACTIVE, ACTIVE_AT_START
from scoring.population import PopulationView
from streams.processor import BatchProcessor, Incoming

DAY0 = datetime(2025, 1, 1, tzinfo=UTC)


def run(events: list[tuple[str, dict]], settings: Settings, sweeps: int = 1):
    """One worker over ``events`` in batches, then ``sweeps`` whole sweep rounds of its partition."""
    processor = BatchProcessor(settings.processor())
    topics = settings.input_topics()
    store: dict[bytes, CustomerState] = {}
    profiles: dict[str, CustomerProfile] = {}
    vip_changes: list[dict] = []

    def load(key: bytes) -> CustomerState:
        return copy.deepcopy(store[key]) if key in store else CustomerState()

    def take(out) -> None:
        store.update(out.states)
        profiles.update({p.customer_id: p.model() for p in out.profiles})
        vip_changes.extend(orjson.loads(v) for _, _, v in out.vip_changes)

    offsets: dict[str, int] = {}
    for start in range(0, len(events), settings.batch_max_events):
        batch = []
        for kind, event in events[start : start + settings.batch_max_events]:
            topic = topics[kind]
            offsets[topic] = offsets.get(topic, -1) + 1
            batch.append(Incoming(topic, 0, offsets[topic], event["customer_id"].encode(), orjson.dumps(event)))
        take(processor.process(batch, load))
    for _ in range(sweeps):
        take(processor.sweep_whole(0, load))
    return processor, store, profiles, vip_changes


def order(n: int, customer: str, day: int, cents: int) -> tuple[str, dict]:
    return (
        "order",
        {
            "event_id": f"o{n}",
            "customer_id": customer,
            "occurred_at": (DAY0 + timedelta(days=day, hours=12)).isoformat(),
            "order_id": f"o{n}",
            "amount": f"{cents / 100:.2f}",
            "currency": "USD",
            "status": "completed",
        },
    )


# --- the lifetime from the population's churn rate -------------------------------------------------


def test_lifetime_is_one_over_the_annual_churn_rate() -> None:
    # 30-day churn c compounds to a year as 1 − (1 − c)^(365.25 / 30)
    annual = 1 - (1 - 0.05) ** (365.25 / 30)
    assert lifetime_from_churn(0.05, 30) == pytest.approx(1 / annual, rel=1e-12)
    # a yearly period: the rate is the annual rate (spec: 1 / annual churn rate; 25 % → 4 years)
    assert lifetime_from_churn(0.25, 365.25) == pytest.approx(4.0)  # type: ignore[arg-type]
    assert lifetime_from_churn(1.0, 30) == 1.0  # everybody lost within the period
    # no churn rate, or a population that lost nobody net (young or growing): the configured fallback holds
    assert lifetime_from_churn(None, 30) is None
    assert lifetime_from_churn(0.0, 30) is None
    assert lifetime_from_churn(-0.2, 30) is None


def test_the_period_churn_rate_comes_from_the_activity_tallies() -> None:
    view = PopulationView(Settings(_env_file=None).rfm())
    for n, flags in enumerate([ACTIVE | ACTIVE_AT_START] * 6 + [ACTIVE_AT_START] * 3 + [ACTIVE]):
        state = CustomerState(activity=flags)
        view.add_state(n % 2, f"C{n}".encode(), state)
    # S = 9 active at the period's start, E = 7 active now: (9 − 7) / 9
    assert view.period_churn_rate(min_customers=9) == pytest.approx(2 / 9)
    assert view.period_churn_rate(min_customers=10) is None  # too young: too few customers at the start
    other = PopulationView(Settings(_env_file=None).rfm())
    other.apply_snapshot(view.snapshot(1))  # another worker's partitions count through their snapshots
    other.add_state(0, b"X", CustomerState(activity=ACTIVE_AT_START))
    # partition 1 holds C1, C3, C5 (both flags), C7 (start only), C9 (active only): S 4 + 1, E 4
    assert other.period_churn_rate(1) == pytest.approx((5 - 4) / 5)


def test_historical_clv_lives_one_over_the_population_annual_churn_rate() -> None:
    """150 customers buy on day 0; 100 of them again on day 370; the clock ends on day 380. Over the last
    30 days (spec: S active at the period's start, E at its end, active = a purchase within 365 days) S = 150,
    E = 100: churn 1/3 a month, compounded to a year, is the lifetime of every historical CLV."""
    events = [order(i, f"C{i:03d}", 0, 10_00 + i) for i in range(150)]
    events += [order(1000 + i, f"C{i:03d}", 370, 25_00 + 3 * i) for i in range(100)]
    events += [order(2000, "C000", 380, 5_00)]
    settings = Settings(_env_file=None, batch_max_events=50)
    processor, store, profiles, _ = run(events, settings)
    now = processor.watermark_ms
    assert now is not None
    lifetime = lifetime_from_churn(1 / 3, settings.population_period_days)
    assert lifetime is not None and 1 < lifetime < 1.01
    config = settings.scoring()
    for key, state in store.items():
        want = customer_clv(state, now, config, lifetime).clv_historical_cents
        assert profiles[key.decode()].clv_historical == Decimal(want) / 100, key
    assert (
        customer_clv(store[b"C001"], now, config).clv_historical_cents
        != customer_clv(store[b"C001"], now, config, lifetime).clv_historical_cents
    )  # the population's lifetime, not the 3-year fallback, made these values

    # too young (fewer customers at the period's start than required): the fallback of 3 years
    young = Settings(_env_file=None, batch_max_events=50, clv_lifetime_min_customers=151)
    _, store, profiles, _ = run(events, young)
    for key, state in store.items():
        want = customer_clv(state, now, config, 3.0).clv_historical_cents
        assert profiles[key.decode()].clv_historical == Decimal(want) / 100, key


# --- VIP by CLV ---------------------------------------------------------------------------------------


def test_vip_by_clv_is_the_exact_top_share_of_predictive_clv() -> None:
    """PULSE_VIP_VALUE=clv: once the sweep went round twice at the final clock (the first round moves every
    CLV to that clock, the second ranks against them), the VIPs are exactly the top 5 % by the predictive
    CLV in the profiles, the VIP changes carry that value, and the state holds the CLV the index ranks."""
    settings = Settings(
        _env_file=None, batch_max_events=200, vip_value="clv", vip_enter_share=0.05, vip_leave_share=0.05,
        vip_segments=[],
    )  # fmt: skip
    events = generate_events(200, 300, seed=5)
    processor, store, profiles, changes = run(events, settings, sweeps=2)
    buyers = {cid: p for cid, p in profiles.items() if p.orders}
    clv = pd.Series({cid: int(p.clv * 100) for cid, p in buyers.items()})
    pct = (clv.rank(method="average") - 0.5) / len(clv)
    top = set(pct.index[pct >= 1 - settings.vip_enter_share])
    assert len(top) >= 5
    assert {cid for cid, p in buyers.items() if p.vip} == top
    for cid in buyers:
        assert store[cid.encode()].clv_cents == clv[cid]
    # the population's VIP index holds exactly the stored CLVs
    index = processor.population.local[0].population.v
    assert sorted(v for held in index.values.values() for v in held) == sorted(clv)
    # every change says what it ranked by; the last change of each VIP carries its CLV then
    assert changes and all(c["value_measure"] == "clv" for c in changes)
    last = {c["customer_id"]: c for c in changes}
    assert {cid for cid, c in last.items() if c["vip"]} == top
    assert all(c["reason"] in ("top_share", "left") for c in changes)


def test_vip_by_revenue_is_unchanged_by_the_clv_mode() -> None:
    """The default (revenue) keeps ranking lifetime revenue and never stores a CLV in the state."""
    settings = Settings(_env_file=None, batch_max_events=200, vip_enter_share=0.05, vip_leave_share=0.05)
    _, store, profiles, changes = run(generate_events(120, 200, seed=6), settings)
    assert all(s.clv_cents is None for s in store.values())
    assert all(c["value_measure"] == "revenue" for c in changes)
    assert any(c["vip"] for c in changes)
