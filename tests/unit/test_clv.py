"""CLV models (scoring/clv.py): the spec's check values, the closed forms, and the O(1) purchase statistics."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import hyp2f1 as scipy_hyp2f1

from scoring.clv import (
    DAY_MS,
    DEFAULT_CLV_PARAMS,
    BgNbdParams,
    ClvConfig,
    ClvParams,
    ClvSignals,
    GammaGammaParams,
    PurchaseDays,
    bgnbd_log_likelihood,
    clv_signals,
    expected_order_value,
    expected_purchases,
    gamma_gamma_log_likelihood,
    margin,
    mean_repeat_value,
    model_inputs,
    p_alive,
    p_alive_below_at,
    record_purchase,
    value_at_risk_cents,
)
from scoring.customer import CustomerState
from streams.codec import decode_state, encode_state

BG = DEFAULT_CLV_PARAMS.bgnbd
GG = DEFAULT_CLV_PARAMS.gamma_gamma
CONFIG = ClvConfig()
#: The spec's check customer (weeks).
X, T_X, AGE = 2, 30.43, 38.86


# --- the spec's check values ---------------------------------------------


def test_p_alive_check_value() -> None:
    assert p_alive(BG, X, T_X, AGE) == pytest.approx(0.7266, abs=5e-5)


def test_expected_purchases_check_value() -> None:
    assert expected_purchases(BG, 39, X, T_X, AGE) == pytest.approx(1.226, abs=5e-4)


def test_p_alive_without_repeat_purchases_is_one() -> None:
    assert p_alive(BG, 0, 0.0, 100.0) == 1.0


def test_p_alive_large_inputs_do_not_overflow() -> None:
    assert 0.0 <= p_alive(BG, 10_000, 1.0, 1e9) < 1e-300
    assert p_alive(BG, 10_000, 1e9, 1e9) == pytest.approx(1 / (1 + BG.a / (BG.b + 10_000 - 1)))
    assert math.isfinite(expected_purchases(BG, 52, 10_000, 500.0, 520.0))


def test_expected_purchases_grows_with_horizon_and_is_zero_at_zero() -> None:
    values = [expected_purchases(BG, t, X, T_X, AGE) for t in (0, 1, 13, 52, 520)]
    assert values[0] == 0.0
    assert values == sorted(values)


def test_expected_purchases_is_continuous_through_a_equal_one() -> None:
    near = [expected_purchases(BgNbdParams(BG.r, BG.alpha, a, BG.b), 52, X, T_X, AGE) for a in (1 - 1e-4, 1, 1 + 1e-4)]
    assert near[1] == pytest.approx((near[0] + near[2]) / 2, rel=1e-6)


@pytest.mark.parametrize(
    ("a", "b", "c", "z"),
    [
        (0.5, 1.2, 2.3, 0.9),
        (2.243, 4.426, 4.219, 0.5),
        (-0.4, 1.7, 3.0, 0.95),
        # the Euler-transformed parameters expected_purchases uses: (a+b−1−r, a−1; a+b+x−1; z)
        (BG.a + BG.b - 1 - BG.r, BG.a - 1, BG.a + BG.b - 1, 52 / (BG.alpha + 52)),
        (BG.a + BG.b - 1 - BG.r, BG.a - 1, BG.a + BG.b + 99, 0.4),
        (1.0, 1.0, 2.0, 0.0),
        (3.0, -2.0, 1.5, 0.7),  # a polynomial: the series ends
    ],
)
def test_scipy_hyp2f1_matches_a_plain_series(a: float, b: float, c: float, z: float) -> None:
    """The worker uses scipy's 2F1 (Cephes); a power series in Python is the independent check."""
    assert series_2f1(a, b, c, z) == pytest.approx(float(scipy_hyp2f1(a, b, c, z)), rel=1e-10)


@pytest.mark.parametrize("x", [0, 1, 2, 5, 20, 100, 1000])
@pytest.mark.parametrize("z", [0.01, 0.3, 0.6, 0.9, 0.95, 0.99])
def test_scipy_hyp2f1_over_the_parameters_expected_purchases_uses(x: int, z: float) -> None:
    args = (BG.a + BG.b - 1 - BG.r, BG.a - 1, BG.a + BG.b + x - 1, z)
    assert series_2f1(*args) == pytest.approx(float(scipy_hyp2f1(*args)), rel=1e-10)


#: the series stops when its bounded tail is below this share of the sum, or after this many terms
SERIES_TOLERANCE = 1e-13
SERIES_MAX_TERMS = 20_000


def series_2f1(a: float, b: float, c: float, z: float) -> float:
    """Gauss hypergeometric 2F1(a, b; c; z) for 0 ≤ z < 1 as its power series.

    The terms t_n satisfy t_{n+1}/t_n = (n+a)(n+b)/((n+c)(n+1)) · z → z, so
    once that ratio is below 1 and no longer growing past z, the tail is
    bounded by a geometric series; the sum stops when that bound is below
    ``SERIES_TOLERANCE`` of the sum (or after ``SERIES_MAX_TERMS`` terms,
    adding the geometric tail estimate).
    """
    if not 0.0 <= z < 1.0:
        raise ValueError(f"hyp2f1 series needs 0 <= z < 1, got {z}")
    total = term = 1.0
    for n in range(SERIES_MAX_TERMS):
        ratio = (n + a) * (n + b) / ((n + c) * (n + 1)) * z
        term *= ratio
        total += term
        if term == 0.0:
            return total
        bound = max(abs(ratio), z)
        if bound < 1.0 and abs(term) * bound / (1.0 - bound) <= SERIES_TOLERANCE * abs(total):
            return total
    bound = max(abs(ratio), z)
    return total + term * bound / (1.0 - bound)


# --- p_alive_below_at ------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.5, 0.7])
@pytest.mark.parametrize(("x", "t_x"), [(1, 0.5), (2, 30.43), (7, 12.0), (60, 100.0)])
def test_p_alive_below_at_is_where_p_alive_crosses(x: int, t_x: float, threshold: float) -> None:
    at = p_alive_below_at(BG, x, t_x, threshold)
    assert at is not None and at >= t_x
    if p_alive(BG, x, t_x, t_x) <= threshold:
        assert at == t_x  # already below when the last purchase was made
        return
    eps = 1e-9 * max(1.0, at)
    assert p_alive(BG, x, t_x, at - eps) > threshold
    assert p_alive(BG, x, t_x, at + eps) < threshold
    assert p_alive(BG, x, t_x, at) == pytest.approx(threshold, rel=1e-12)


def test_p_alive_below_at_none_without_repeat_purchases() -> None:
    assert p_alive_below_at(BG, 0, 0.0, 0.5) is None


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.5])
def test_p_alive_below_at_rejects_thresholds_outside_0_1(threshold: float) -> None:
    with pytest.raises(ValueError):
        p_alive_below_at(BG, 1, 1.0, threshold)


# --- Gamma-Gamma and likelihoods -------------------------------------------


def test_expected_order_value_weights_customer_and_population() -> None:
    population = GG.p * GG.v / (GG.q - 1)
    assert expected_order_value(GG, 0, None) == pytest.approx(population)
    # lifetimes' form: (1 − w)·population mean + w·own mean, w = p·x / (p·x + q − 1)
    w = GG.p * 3 / (GG.p * 3 + GG.q - 1)
    assert expected_order_value(GG, 3, 40.0) == pytest.approx((1 - w) * population + w * 40.0)
    assert expected_order_value(GG, 10_000, 40.0) == pytest.approx(40.0, rel=1e-3)


def test_log_likelihoods_match_the_closed_forms() -> None:
    r, alpha, a, b = BG.r, BG.alpha, BG.a, BG.b
    # x = 0: only the "still alive" term of FHL eq. 6
    expected = (
        math.lgamma(r) - math.lgamma(r) + r * math.log(alpha) - r * math.log(alpha + AGE)
    )  # the beta terms cancel for x = 0
    assert bgnbd_log_likelihood(BG, 0, 0.0, AGE) == pytest.approx(expected)
    # x > 0: B(a, b+x)/B(a, b) Γ(r+x)α^r/(Γ(r)(α+T)^(r+x)) + B(a+1, b+x−1)/B(a, b) Γ(r+x)α^r/(Γ(r)(α+t_x)^(r+x))
    beta = lambda p, q: math.exp(math.lgamma(p) + math.lgamma(q) - math.lgamma(p + q))  # noqa: E731
    rate = math.gamma(r + X) * alpha**r / math.gamma(r)
    direct = beta(a, b + X) / beta(a, b) * rate / (alpha + AGE) ** (r + X) + beta(a + 1, b + X - 1) / beta(
        a, b
    ) * rate / (alpha + T_X) ** (r + X)
    assert bgnbd_log_likelihood(BG, X, T_X, AGE) == pytest.approx(math.log(direct), rel=1e-12)
    # Gamma-Gamma: z̄ | x ~ density of FHL 2005b eq. 1 (mean of x Gamma(p, ν), ν ~ Gamma(q, v))
    x, m = 4, 25.0
    p, q, v = GG.p, GG.q, GG.v
    density = (
        math.gamma(p * x + q)
        / (math.gamma(p * x) * math.gamma(q))
        * v**q
        * m ** (p * x - 1)
        * x ** (p * x)
        / (v + m * x) ** (p * x + q)
    )
    assert gamma_gamma_log_likelihood(GG, x, m) == pytest.approx(math.log(density), rel=1e-12)


# --- PurchaseDays ----------------------------------------------------------


def _fold(history: list[tuple[int, int]], config: ClvConfig = CONFIG) -> PurchaseDays:
    h = PurchaseDays()
    for day, cents in history:
        record_purchase(h, day, cents, config)
    return h


def _batch(history: list[tuple[int, int]], config: ClvConfig = CONFIG) -> PurchaseDays:
    """What the sorted history gives, computed directly."""
    days = sorted({d for d, _ in history})
    first = days[0]
    return PurchaseDays(
        first_day=first,
        last_day=days[-1],
        recent_days=days[-config.max_purchase_days :],
        periods=len(days),
        total_cents=sum(c for _, c in history),
        first_day_cents=sum(c for d, c in history if d == first),
    )


def test_same_day_orders_count_once() -> None:
    h = _fold([(100, 1000), (100, 2000), (105, 500), (105, 700), (105, 1)])
    assert h.periods == 2 and h.recent_days == [100, 105]
    assert h.first_day_cents == 3000 and h.total_cents == 4201


def test_an_earlier_first_day_turns_the_old_first_day_into_repeat_money() -> None:
    h = _fold([(100, 1000), (110, 500), (90, 300)])
    assert (h.first_day, h.last_day, h.periods) == (90, 110, 3)
    assert h.first_day_cents == 300 and h.total_cents == 1800
    assert h == _batch([(90, 300), (100, 1000), (110, 500)])


def test_purchase_days_round_trip_through_the_changelog_record() -> None:
    h = _fold([(100, 1000), (102, 5), (101, 7)])
    assert decode_state(encode_state(CustomerState(purchases=h))).purchases == h


history_strategy = st.lists(
    st.tuples(st.integers(19_000, 19_000 + 2 * CONFIG.max_purchase_days), st.integers(0, 100_000)),
    min_size=1,
    max_size=60,
).filter(lambda h: len({d for d, _ in h}) <= CONFIG.max_purchase_days)


@settings(max_examples=150, deadline=None)
@given(history=history_strategy, data=st.data())
def test_any_arrival_order_gives_the_sorted_history(history: list[tuple[int, int]], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(history))
    assert _fold(shuffled) == _fold(sorted(history)) == _batch(history)


@settings(max_examples=150, deadline=None)
@given(
    history=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 10_000)), min_size=1, max_size=120),
    bound=st.integers(2, 8),
)
def test_state_stays_bounded_and_only_ever_overcounts(history: list[tuple[int, int]], bound: int) -> None:
    config = ClvConfig(max_purchase_days=bound)
    h = PurchaseDays()
    for day, cents in history:
        record_purchase(h, day, cents, config)
        assert len(h.recent_days) <= bound
        assert h.recent_days == sorted(set(h.recent_days))
    exact = _batch(history, config)
    # first/last day and money are exact whatever the order; periods may only be too high
    assert (h.first_day, h.last_day, h.total_cents, h.first_day_cents) == (
        exact.first_day,
        exact.last_day,
        exact.total_cents,
        exact.first_day_cents,
    )
    assert h.periods >= exact.periods
    # in time order nothing is ever older than what is remembered: exact
    assert _fold(sorted(history), config) == exact


# --- clv_signals -----------------------------------------------------------


def test_no_purchases_no_signals() -> None:
    s = clv_signals(PurchaseDays(), 10 * DAY_MS, 0, 0, CONFIG, 0.3)
    assert s.p_alive is None and s.clv_predictive_cents is None and s.clv_historical_cents is None


def test_signals_reproduce_the_spec_check_customer() -> None:
    # x = 2, t_x = 213 days, T = 272 days (30.43 / 38.86 weeks, as CDNOW's whole days)
    first = 10_000
    h = _fold([(first, 2000), (first + 100, 3000), (first + 213, 5000)])
    now_ms = (first + 272) * DAY_MS + 5 * 3_600_000
    s = clv_signals(h, now_ms, revenue_cents=10_000, profit_cents=2_500, config=CONFIG, default_margin=0.3)
    assert (s.x, s.t_x, s.T) == (2, pytest.approx(213 / 7), pytest.approx(272 / 7))
    assert s.p_alive == pytest.approx(p_alive(BG, 2, 213 / 7, 272 / 7))
    horizon = CONFIG.horizon_days / 7
    assert s.expected_purchases == pytest.approx(expected_purchases(BG, horizon, 2, 213 / 7, 272 / 7))
    value = expected_order_value(GG, 2, 40.0) * 100  # repeat days: (30 + 50) / 2 = 40.00
    assert s.expected_order_value_cents == round(value)
    assert s.clv_predictive_cents == round(s.expected_purchases * value * 0.25)


def test_historical_clv_worked_example() -> None:
    """Spec: 100 per purchase × 5 purchases a year × 3 years = 1,500 revenue; × margin gives profit CLV."""
    first = 20_000
    days = [first + i * 73 for i in range(5)]  # five purchases of 100 in the first year
    h = _fold([(d, 100_00) for d in days])
    now_ms = (first + 365) * DAY_MS
    revenue = 500_00
    s = clv_signals(h, now_ms, revenue_cents=revenue, profit_cents=revenue, config=CONFIG, default_margin=0.3)
    assert s.clv_historical_cents == 1_500_00  # margin 100 %: the revenue CLV
    s = clv_signals(h, now_ms, revenue_cents=revenue, profit_cents=150_00, config=CONFIG, default_margin=0.3)
    assert s.clv_historical_cents == 450_00  # margin 30 %
    # a lifetime from the population (1 / churn rate) overrides the 3-year fallback
    s = clv_signals(h, now_ms, revenue, 150_00, CONFIG, 0.3, expected_lifetime_years=2.0)
    assert s.clv_historical_cents == 300_00


def test_historical_clv_averages_over_tenure_after_the_first_year() -> None:
    first = 20_000
    h = _fold([(first, 1000_00), (first + 400, 1000_00)])
    now_day = first + 731
    s = clv_signals(h, now_day * DAY_MS, 2000_00, 2000_00, CONFIG, 0.3)
    assert s.clv_historical_cents == round(2000_00 / (731 / 365.25) * 3)


@pytest.mark.parametrize(("revenue", "profit", "margin"), [(0, 0, 0.3), (100, -50, 0.0), (100, 500, 1.0)])
def test_margin_is_the_default_without_revenue_and_clamped(revenue: int, profit: int, margin: float) -> None:
    h = _fold([(100, 100)])
    s = clv_signals(h, 465 * DAY_MS, revenue, profit, CONFIG, 0.3)
    population_value = expected_order_value(GG, 0, None) * 100
    assert s.clv_predictive_cents == round(s.expected_purchases * population_value * margin)


@settings(max_examples=500, deadline=None)
@given(
    st.integers(-(10**9), 10**9),
    st.integers(-(10**9), 10**9),
    st.integers(-(10**9), 10**9),
    st.sampled_from([Decimal("0"), Decimal("0.30"), Decimal("0.333"), Decimal("1"), 0.3, 0.0, 1.0]),
)
def test_margin_and_value_at_risk_equal_the_min_max_formula(revenue, cost, window, default) -> None:
    """``margin`` and ``value_at_risk_cents`` compare instead of calling min/max (and skip the margin for an empty
    window): the same values as the formula, down to the sign of a zero margin."""
    share = (revenue - cost) / revenue if revenue > 0 else float(default)
    expected = min(1.0, max(0.0, share))
    got = margin(revenue, revenue - cost, default)
    assert got == expected and math.copysign(1.0, got) == math.copysign(1.0, expected) and type(got) is float
    at_risk = value_at_risk_cents(revenue, cost, window, default)
    assert at_risk == round(max(0, window) * expected) and type(at_risk) is int


def test_params_in_days_give_the_same_p_alive_as_in_weeks() -> None:
    weeks = DEFAULT_CLV_PARAMS
    days = ClvParams(
        BgNbdParams(BG.r, BG.alpha * 7, BG.a, BG.b), GammaGammaParams(GG.p, GG.q, GG.v), time_unit_days=1.0
    )
    h = _fold([(100, 100), (130, 100), (180, 100)])
    s_weeks = clv_signals(h, 300 * DAY_MS, 300, 90, ClvConfig(params=weeks), 0.3)
    s_days = clv_signals(h, 300 * DAY_MS, 300, 90, ClvConfig(params=days), 0.3)
    assert s_days.p_alive == pytest.approx(s_weeks.p_alive, rel=1e-12)
    assert s_days.expected_purchases == pytest.approx(s_weeks.expected_purchases, rel=1e-9)


def _composed(h: PurchaseDays, now_ms: int, revenue: int, profit: int, config: ClvConfig, lifetime: float | None):
    """``clv_signals`` as the composition of the documented functions (what it computes in line)."""
    params = config.params
    unit = params.time_unit_days
    x, t_x, T = model_inputs(h, now_ms, unit)
    alive = p_alive(params.bgnbd, x, t_x, T)
    purchases = expected_purchases(params.bgnbd, config.horizon_days / unit, x, t_x, T, alive)
    order_value_cents = expected_order_value(params.gamma_gamma, x, mean_repeat_value(h)) * 100
    share = margin(revenue, profit, 0.3)
    annual = max(0, revenue) / max(1.0, T * unit / 365.25)
    years = config.expected_lifetime_years if lifetime is None else lifetime
    return ClvSignals(
        x=x,
        t_x=t_x,
        T=T,
        p_alive=alive,
        expected_purchases=purchases,
        expected_order_value_cents=round(order_value_cents),
        clv_predictive_cents=round(purchases * order_value_cents * share),
        clv_historical_cents=round(annual * years * share),
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(19_000, 19_800), st.integers(1, 500_000)), min_size=1, max_size=40),
    st.integers(19_000, 20_200),
    st.integers(-100_000, 5_000_000),
    st.integers(-100_000, 5_000_000),
    st.sampled_from([None, 0.5, 2.0, 7.25]),
    st.sampled_from([(0.793, 365), (1.0, 365), (1.0000004, 90), (0.5, 0)]),
)
def test_signals_in_line_equal_the_documented_functions(history, now_day, revenue, profit, lifetime, a_horizon):
    a, horizon = a_horizon
    base = DEFAULT_CLV_PARAMS
    params = ClvParams(BgNbdParams(base.bgnbd.r, base.bgnbd.alpha, a, base.bgnbd.b), base.gamma_gamma)
    config = ClvConfig(params=params, horizon_days=horizon)
    h = PurchaseDays()
    for day, cents in history:
        record_purchase(h, day, cents, config)
    now_ms = now_day * DAY_MS + 12_345
    expected = _composed(h, now_ms, revenue, profit, config, lifetime)
    assert clv_signals(h, now_ms, revenue, profit, config, 0.3, lifetime) == expected


def test_the_memoised_expected_purchases_are_the_computed_ones_and_the_memo_stays_bounded(monkeypatch):
    # clv_signals memoises the 2F1 term by (x, days since the first purchase day): hit or miss, the very float
    # expected_purchases (FHL eq. 10, not memoised) gives; and a full memo starts again rather than growing
    import scoring.clv as clv_module

    config = ClvConfig()
    monkeypatch.setattr(clv_module.EXPECTED_PURCHASES_MEMO, "entries_max", 7)
    clv_module.EXPECTED_PURCHASES_MEMO.clear()
    histories = []
    for k in range(40):
        h = PurchaseDays()
        for day in range(k % 5 + 1):
            record_purchase(h, 20_000 + day * (k % 7 + 2), 1_000 + 37 * k, config)
        histories.append(h)
    unit = config.params.time_unit_days
    for now_day in (20_090, 20_090, 20_091):
        for h in histories * 2:
            got = clv_signals(h, now_day * 86_400_000, 10_000, 3_000, config, 0.3)
            horizon = config.horizon_days / unit
            want = clv_module.expected_purchases(config.params.bgnbd, horizon, got.x, got.t_x, got.T, got.p_alive)
            assert got.expected_purchases == want
            assert all(len(memo) <= 7 for memo in clv_module.EXPECTED_PURCHASES_MEMO.memos())
