"""CLV fitting (scoring/clv_fit.py) and ``pulse fit``, against the ``lifetimes`` package (batch reference).

One seeded synthetic transaction set (BG/NBD-like: Gamma purchase rates,
Beta dropout, several orders on some days) is summarised both ways and the
models are evaluated and fitted both ways.
"""

from __future__ import annotations

import csv
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from pulse.cli import main
from pulse_config.clv_params import ClvParamsError, load_clv_params, save_clv_params
from scoring.clv import (
    DEFAULT_CLV_PARAMS,
    ClvConfig,
    ClvParams,
    bgnbd_log_likelihood,
    expected_order_value,
    expected_purchases,
    gamma_gamma_log_likelihood,
    p_alive,
)
from scoring.clv_fit import (
    FitError,
    bgnbd_log_likelihood_sum,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood_sum,
    model_arrays,
    summarise,
)
from scoring.units import DAY_MS

lifetimes = pytest.importorskip("lifetimes", reason="the batch reference (dev extra)")
from lifetimes import BetaGeoFitter, GammaGammaFitter  # noqa: E402
from lifetimes.utils import summary_data_from_transaction_data  # noqa: E402

SEED = 20240611
CUSTOMERS = 400
START_DAY = 19_000  # 2022-01-08
HISTORY_DAYS = 730
WEEK = 7.0
HORIZON_WEEKS = 52
#: How closely we must agree with lifetimes.
SAME = 1e-6  # closed forms, same inputs
FITTED = 1e-4  # two optimisers on the same likelihood (they agree to ~1e-6)
CONFIG = ClvConfig(max_purchase_days=1024)  # exact statistics: lifetimes keeps the whole history


def synthetic_orders(seed: int = SEED, customers: int = CUSTOMERS) -> list[tuple[str, int, int]]:
    """(customer_id, occurred_ms, amount_cents): a BG/NBD process per customer, with same-day extra orders."""
    rng = np.random.default_rng(seed)
    end = START_DAY + HISTORY_DAYS
    orders = []
    for i in range(customers):
        cid = f"C{i:04d}"
        rate = rng.gamma(0.6, 1 / 20)  # purchases per day
        dropout = rng.beta(1.0, 4.0)
        spend = rng.gamma(6.0, 8.0)  # the customer's mean order value
        day = float(rng.integers(START_DAY, START_DAY + HISTORY_DAYS // 2))
        while day < end:
            for _ in range(1 + (rng.random() < 0.15) * int(rng.integers(1, 3))):  # 15 %: more orders that day
                at = int(day) * DAY_MS + int(rng.integers(0, DAY_MS))
                orders.append((cid, at, max(1, int(rng.gamma(4.0, spend / 4.0) * 100))))
            if rng.random() < dropout:
                break
            day += rng.exponential(1 / max(rate, 1e-6))
    rng.shuffle(orders)  # arrival order is not time order
    return orders


@pytest.fixture(scope="module")
def orders() -> list[tuple[str, int, int]]:
    return synthetic_orders()


@pytest.fixture(scope="module")
def now_ms(orders: list[tuple[str, int, int]]) -> int:
    return max(at for _, at, _ in orders)


@pytest.fixture(scope="module")
def ours(orders: list[tuple[str, int, int]], now_ms: int) -> pd.DataFrame:
    ids, x, t_x, T, m = model_arrays(summarise(orders, now_ms, CONFIG), now_ms, WEEK)
    return pd.DataFrame({"frequency": x, "recency": t_x, "T": T, "monetary_value": m}, index=pd.Index(ids))


@pytest.fixture(scope="module")
def theirs(orders: list[tuple[str, int, int]], now_ms: int) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "customer_id": [c for c, _, _ in orders],
            "date": pd.to_datetime([at for _, at, _ in orders], unit="ms"),
            "amount": [cents / 100 for _, _, cents in orders],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = summary_data_from_transaction_data(
            frame,
            "customer_id",
            "date",
            monetary_value_col="amount",
            observation_period_end=pd.to_datetime(now_ms, unit="ms"),
            freq="D",
            freq_multiplier=7,
        )
    return summary.sort_index()


def _bgf(params: object) -> BetaGeoFitter:
    bgf = BetaGeoFitter()
    bgf.params_ = pd.Series({"r": params.r, "alpha": params.alpha, "a": params.a, "b": params.b})
    return bgf


def _ggf(params: object) -> GammaGammaFitter:
    ggf = GammaGammaFitter()
    ggf.params_ = pd.Series({"p": params.p, "q": params.q, "v": params.v})
    return ggf


def test_the_data_exercise_every_case(ours: pd.DataFrame, orders: list) -> None:
    assert len(ours) == CUSTOMERS
    repeat = int((ours.frequency > 0).sum())
    assert 100 < repeat < CUSTOMERS - 50, repeat  # one-time and repeat customers
    per_day = pd.Series([(c, at // DAY_MS) for c, at, _ in orders]).value_counts()
    assert (per_day > 1).sum() > 50  # several orders on one day


# (a) the statistics -------------------------------------------------------


def test_summary_equals_lifetimes(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    assert list(ours.index) == list(theirs.index)
    for column in ("frequency", "recency", "T"):
        np.testing.assert_allclose(ours[column], theirs[column], rtol=0, atol=1e-12, err_msg=column)
    np.testing.assert_allclose(ours["monetary_value"], theirs["monetary_value"], rtol=1e-12, atol=1e-9)


# (b) the closed forms at fixed parameters ---------------------------------


def test_bgnbd_closed_forms_equal_lifetimes(ours: pd.DataFrame) -> None:
    params = DEFAULT_CLV_PARAMS.bgnbd
    bgf = _bgf(params)
    x, t_x, T = ours.frequency.to_numpy(), ours.recency.to_numpy(), ours["T"].to_numpy()
    alive = bgf.conditional_probability_alive(x, t_x, T)
    purchases = bgf.conditional_expected_number_of_purchases_up_to_time(HORIZON_WEEKS, x, t_x, T)
    log_params = np.log([params.r, params.alpha, params.a, params.b])
    for i in range(len(x)):
        xi = int(x[i])
        assert p_alive(params, xi, t_x[i], T[i]) == pytest.approx(alive[i], rel=SAME)
        assert expected_purchases(params, HORIZON_WEEKS, xi, t_x[i], T[i]) == pytest.approx(purchases[i], rel=SAME)
        their_ll = -BetaGeoFitter._negative_log_likelihood(
            log_params, np.array([xi]), np.array([t_x[i]]), np.array([T[i]]), np.ones(1), 0.0
        )
        assert bgnbd_log_likelihood(params, xi, t_x[i], T[i]) == pytest.approx(their_ll, rel=SAME)
    ours_sum = sum(bgnbd_log_likelihood(params, int(a), b, c) for a, b, c in zip(x, t_x, T, strict=True))
    assert bgnbd_log_likelihood_sum(params, x, t_x, T) == pytest.approx(ours_sum, rel=1e-12)


def test_gamma_gamma_closed_forms_equal_lifetimes(ours: pd.DataFrame) -> None:
    params = DEFAULT_CLV_PARAMS.gamma_gamma
    repeat = ours[ours.frequency > 0]
    x, m = repeat.frequency.to_numpy(), repeat.monetary_value.to_numpy()
    expected = _ggf(params).conditional_expected_average_profit(repeat.frequency, repeat.monetary_value).to_numpy()
    log_params = np.log([params.p, params.q, params.v])
    for i in range(len(x)):
        assert expected_order_value(params, int(x[i]), m[i]) == pytest.approx(expected[i], rel=SAME)
        their_ll = -GammaGammaFitter._negative_log_likelihood(
            log_params, np.array([x[i]]), np.array([m[i]]), np.ones(1), 0.0
        )
        assert gamma_gamma_log_likelihood(params, int(x[i]), m[i]) == pytest.approx(their_ll, rel=SAME)


# (c), (d) the fits --------------------------------------------------------


def test_bgnbd_fit_agrees_with_lifetimes(ours: pd.DataFrame) -> None:
    x, t_x, T = ours.frequency.to_numpy(), ours.recency.to_numpy(), ours["T"].to_numpy()
    ours_fit = fit_bgnbd(x, t_x, T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        their = BetaGeoFitter().fit(x, t_x, T).params_
    for name in ("r", "alpha", "a", "b"):
        assert getattr(ours_fit, name) == pytest.approx(their[name], rel=FITTED), name
    their_params = type(ours_fit)(*(float(their[n]) for n in ("r", "alpha", "a", "b")))
    assert bgnbd_log_likelihood_sum(ours_fit, x, t_x, T) >= bgnbd_log_likelihood_sum(their_params, x, t_x, T) - 1e-3


def test_gamma_gamma_fit_agrees_with_lifetimes(ours: pd.DataFrame) -> None:
    repeat = ours[ours.frequency > 0]
    x, m = repeat.frequency.to_numpy(), repeat.monetary_value.to_numpy()
    ours_fit = fit_gamma_gamma(x, m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        their = GammaGammaFitter().fit(repeat.frequency, repeat.monetary_value).params_
    for name in ("p", "q", "v"):
        assert getattr(ours_fit, name) == pytest.approx(their[name], rel=FITTED), name
    their_params = type(ours_fit)(*(float(their[n]) for n in ("p", "q", "v")))
    assert gamma_gamma_log_likelihood_sum(ours_fit, x, m) >= gamma_gamma_log_likelihood_sum(their_params, x, m) - 1e-3


def test_cdnow_fit_reproduces_the_published_parameters() -> None:
    """Fader, Hardie & Lee (2005): r 0.243, α 4.414, a 0.793, b 2.426, LL −9582.4 on the CDNOW sample."""
    from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value

    cdnow = load_cdnow_summary_data_with_monetary_value()
    fit = fit_bgnbd(cdnow.frequency, cdnow.recency, cdnow["T"])
    defaults = DEFAULT_CLV_PARAMS.bgnbd
    for name in ("r", "alpha", "a", "b"):
        assert getattr(fit, name) == pytest.approx(getattr(defaults, name), abs=6e-4), name
    assert bgnbd_log_likelihood_sum(fit, cdnow.frequency, cdnow.recency, cdnow["T"]) == pytest.approx(-9582.4, abs=0.05)
    repeat = cdnow[cdnow.frequency > 0]
    gg = fit_gamma_gamma(repeat.frequency, repeat.monetary_value)
    assert (round(gg.p, 2), round(gg.q, 2), round(gg.v, 2)) == (6.25, 3.74, 15.45)  # lifetimes' documented fit


def test_fits_refuse_too_little_data() -> None:
    with pytest.raises(FitError, match="at least"):
        fit_bgnbd([1, 0], [3.0, 0.0], [5.0, 5.0])
    with pytest.raises(FitError, match="repeat"):
        fit_bgnbd([0] * 20, [0.0] * 20, [5.0] * 20)
    with pytest.raises(FitError, match="repeat customers"):
        fit_gamma_gamma([1, 2, 0], [5.0, 6.0, 0.0])


def test_fit_is_deterministic(ours: pd.DataFrame) -> None:
    x, t_x, T = ours.frequency.to_numpy(), ours.recency.to_numpy(), ours["T"].to_numpy()
    assert fit_bgnbd(x, t_x, T) == fit_bgnbd(list(x), list(t_x), list(T))


def test_summarise_leaves_out_orders_after_now(orders: list[tuple[str, int, int]], now_ms: int) -> None:
    cutoff = now_ms - 200 * DAY_MS
    early = summarise(orders, cutoff, CONFIG)
    assert early == summarise([o for o in orders if o[1] <= cutoff], cutoff, CONFIG)
    assert all(h.last_day is not None and h.last_day <= cutoff // DAY_MS for h in early.values())


# --- the parameter file and pulse fit --------------------------------------


def test_missing_parameter_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_clv_params(tmp_path / "none.json") == DEFAULT_CLV_PARAMS


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"bgnbd": {"r": 1, "alpha": 1, "a": 1}, "gamma_gamma": {"p": 1, "q": 2, "v": 1}}',
     b'{"bgnbd": {"r": 1, "alpha": 1, "a": 1, "b": -1}, "gamma_gamma": {"p": 1, "q": 2, "v": 1}}',
     b'{"bgnbd": {"r": 1, "alpha": 1, "a": 1, "b": 1}, "gamma_gamma": {"p": 1, "q": 0.5, "v": 1}}'],
)  # fmt: skip
def test_malformed_parameter_file_is_an_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ClvParamsError, match="bad.json"):
        load_clv_params(path)


def test_parameter_file_round_trip(tmp_path: Path) -> None:
    params = ClvParams(DEFAULT_CLV_PARAMS.bgnbd, DEFAULT_CLV_PARAMS.gamma_gamma, 1.0, "test")
    save_clv_params(params, tmp_path / "sub" / "p.json")
    assert load_clv_params(tmp_path / "sub" / "p.json") == params


def _write_history(path: Path, orders: list[tuple[str, int, int]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", "occurred_at", "amount", "order_id", "status"])
        for n, (cid, at, cents) in enumerate(sorted(orders, key=lambda o: o[1])):
            when = datetime.fromtimestamp(at / 1000, tz=UTC).isoformat()
            writer.writerow([cid, when, f"{cents // 100}.{cents % 100:02d}", f"O{n}", "completed"])
        cid, at, cents = orders[0]
        when = datetime.fromtimestamp(at / 1000, tz=UTC).isoformat()
        writer.writerow([cid, when, f"{cents // 100}.{cents % 100:02d}", "O0", "refunded"])  # not a purchase
        writer.writerow([cid, "yesterday", "1.00", "bad", "completed"])  # dead-lettered by the worker


def test_pulse_fit_writes_the_parameter_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("PULSE_ENV_FILE", "")
    monkeypatch.setenv("PULSE_CLV_PARAMS_FILE", str(tmp_path / "default-out.json"))
    orders = synthetic_orders(seed=7, customers=120)
    csv_path = tmp_path / "history.csv"
    _write_history(csv_path, orders)
    out = tmp_path / "params.json"
    assert main(["fit", str(csv_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "BG/NBD" in printed and "log-likelihood" in printed and "customers: 120" in printed
    assert "1 rejected" in printed and "1 refunds" in printed

    data = orjson.loads(out.read_bytes())
    assert set(data) == {"bgnbd", "gamma_gamma", "time_unit_days", "fitted_on"}
    assert set(data["bgnbd"]) == {"r", "alpha", "a", "b"} and set(data["gamma_gamma"]) == {"p", "q", "v"}
    assert data["time_unit_days"] == 7
    now_ms = max(at for _, at, _ in orders)
    as_of = datetime.fromtimestamp(now_ms / 1000, tz=UTC).date().isoformat()
    assert data["fitted_on"] == f"history.csv, 120 customers, as of {as_of}"

    params = load_clv_params(out)
    # pulse fit folds the file's rows in file (time) order: beyond max_purchase_days the order matters
    orders = sorted(orders, key=lambda o: o[1])
    _, x, t_x, T, m = model_arrays(summarise(orders, now_ms, ClvConfig()), now_ms, WEEK)
    assert params.bgnbd == fit_bgnbd(x, t_x, T)
    assert params.gamma_gamma == fit_gamma_gamma(x[x > 0], m[x > 0])

    # defaults: PULSE_CLV_PARAMS_FILE; --as-of cuts the history; --time-unit-days changes the unit
    as_of_ms = now_ms - 100 * DAY_MS
    as_of_text = datetime.fromtimestamp(as_of_ms / 1000, tz=UTC).isoformat()
    assert main(["fit", str(csv_path), "--as-of", as_of_text, "--time-unit-days", "1"]) == 0
    daily = load_clv_params(tmp_path / "default-out.json")
    assert daily.time_unit_days == 1.0
    _, x, t_x, T, _ = model_arrays(summarise(orders, as_of_ms, ClvConfig()), as_of_ms, 1.0)
    assert daily.bgnbd == fit_bgnbd(x, t_x, T)

    monkeypatch.setenv("PULSE_CLV_PARAMS_FILE", str(out))
    from pulse_config.settings import load_settings

    assert load_clv_params(load_settings().clv_params_file) == params


def test_pulse_fit_refuses_too_little_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_ENV_FILE", "")
    csv_path = tmp_path / "tiny.csv"
    _write_history(csv_path, synthetic_orders(seed=1, customers=3))
    assert main(["fit", str(csv_path), "--out", str(tmp_path / "p.json")]) == 2
    assert not (tmp_path / "p.json").exists()
