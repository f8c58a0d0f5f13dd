"""Maximum-likelihood fits of the CLV population parameters (offline: ``pulse fit``; numpy/scipy).

The per-customer inputs come from :func:`summarise`, which folds the orders
with the worker's own :func:`scoring.clv.record_purchase`, so the fit sees
exactly the statistics the worker keeps. The optimiser works on log
parameters (all parameters are positive) with analytic gradients, and on
rescaled data (times so that the oldest customer has age 1, money so that
the mean repeat value is 1) for conditioning; the scale is undone on the
result, which leaves the maximum unchanged. Deterministic: fixed start, no
randomness.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from scipy.optimize import minimize
from scipy.special import digamma, gammaln

from scoring.clv import (
    BgNbdParams,
    ClvConfig,
    GammaGammaParams,
    PurchaseDays,
    mean_repeat_value,
    model_inputs,
    record_purchase,
)
from scoring.units import DAY_MS

#: Fewer customers than this (repeat customers for Gamma-Gamma) is too little data for a fit.
MIN_CUSTOMERS = 10
#: Optimiser: gradient norm tolerance and iteration cap (4 or 3 parameters: converges in well under 200).
GRADIENT_TOLERANCE = 1e-9
MAX_ITERATIONS = 2000
#: BFGS may end on "precision loss" right at the optimum: accepted when the gradient is below this.
ACCEPT_GRADIENT = 1e-5
#: Log-parameter start (parameters = 1 on the rescaled data).
START = 0.0


#: negative mean log-likelihood and its gradient, of log-parameters
Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


class FitError(ValueError):
    """The data cannot support a fit (too few customers, no repeat purchases, no finite optimum)."""


# --- BG/NBD ---------------------------------------------------------------


def _bgnbd_ll_and_grad(
    params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-customer log-likelihoods and their gradient w.r.t. (r, alpha, a, b) (4 × n)."""
    r, alpha, a, b = params
    repeat = x > 0
    b_x1 = b + np.maximum(x, 1) - 1
    common = (
        gammaln(r + x)
        - gammaln(r)
        + r * np.log(alpha)
        + gammaln(a + b)
        + gammaln(b + x)
        - gammaln(b)
        - gammaln(a + b + x)
    )
    still_alive = -(r + x) * np.log(alpha + T)
    dropped = np.where(repeat, np.log(a) - np.log(b_x1) - (r + x) * np.log(alpha + t_x), -np.inf)
    total = np.logaddexp(still_alive, dropped)
    ll = common + total
    w_alive = np.exp(still_alive - total)
    w_dropped = 1.0 - w_alive
    grad = np.empty((4, x.size))
    grad[0] = (
        digamma(r + x) - digamma(r) + np.log(alpha) - w_alive * np.log(alpha + T) - w_dropped * np.log(alpha + t_x)
    )
    grad[1] = r / alpha - w_alive * (r + x) / (alpha + T) - w_dropped * (r + x) / (alpha + t_x)
    grad[2] = digamma(a + b) - digamma(a + b + x) + w_dropped / a
    grad[3] = digamma(a + b) + digamma(b + x) - digamma(b) - digamma(a + b + x) - w_dropped / b_x1
    return ll, grad


def bgnbd_log_likelihood_sum(
    params: BgNbdParams, x: Iterable[float], t_x: Iterable[float], T: Iterable[float]
) -> float:
    """Total BG/NBD log-likelihood of a population (vectorised; equals the sum of the per-customer one)."""
    xs, txs, Ts = _arrays(x, t_x, T)
    ll, _ = _bgnbd_ll_and_grad(np.array([params.r, params.alpha, params.a, params.b]), xs, txs, Ts)
    return float(ll.sum())


def fit_bgnbd(
    x: Iterable[float], t_x: Iterable[float], T: Iterable[float], initial: BgNbdParams | None = None
) -> BgNbdParams:
    """Maximum-likelihood BG/NBD parameters (r, alpha, a, b) for x, t_x, T in one time unit."""
    xs, txs, Ts = _arrays(x, t_x, T)
    if xs.size < MIN_CUSTOMERS:
        raise FitError(f"BG/NBD fit needs at least {MIN_CUSTOMERS} customers, got {xs.size}")
    if not (xs > 0).any():
        raise FitError("BG/NBD fit needs repeat customers (x > 0); every customer bought on one day only")
    if (txs > Ts).any() or (txs < 0).any() or (xs < 0).any():
        raise FitError("BG/NBD inputs must have x >= 0 and 0 <= t_x <= T")
    max_age = float(Ts.max())
    scale = 1.0 / max_age if max_age > 0 else 1.0
    txs, Ts = txs * scale, Ts * scale
    n = xs.size

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        params = np.exp(theta)
        ll, grad = _bgnbd_ll_and_grad(params, xs, txs, Ts)
        return -float(ll.sum()) / n, -(grad.sum(axis=1) * params) / n

    if initial is None:
        start = np.full(4, START)
    else:
        start = np.log([initial.r, initial.alpha * scale, initial.a, initial.b])
    theta = _minimise(objective, start, "BG/NBD")
    r, alpha, a, b = np.exp(theta)
    return BgNbdParams(r=float(r), alpha=float(alpha / scale), a=float(a), b=float(b))


# --- Gamma-Gamma ----------------------------------------------------------


def _gg_ll_and_grad(params: np.ndarray, x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-customer Gamma-Gamma log-likelihoods and their gradient w.r.t. (p, q, v) (3 × n)."""
    p, q, v = params
    px = p * x
    xm_v = np.log(x * m + v)
    ll = (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(v)
        + (px - 1) * np.log(m)
        + px * np.log(x)
        - (px + q) * xm_v
    )
    grad = np.empty((3, x.size))
    grad[0] = x * (digamma(px + q) - digamma(px) + np.log(m) + np.log(x) - xm_v)
    grad[1] = digamma(px + q) - digamma(q) + np.log(v) - xm_v
    grad[2] = q / v - (px + q) / (x * m + v)
    return ll, grad


def gamma_gamma_log_likelihood_sum(params: GammaGammaParams, x: Iterable[float], mean_value: Iterable[float]) -> float:
    """Total Gamma-Gamma log-likelihood of repeat customers (x > 0, mean_value > 0)."""
    xs, ms = _arrays(x, mean_value)
    ll, _ = _gg_ll_and_grad(np.array([params.p, params.q, params.v]), xs, ms)
    return float(ll.sum())


def fit_gamma_gamma(x: Iterable[float], mean_value: Iterable[float]) -> GammaGammaParams:
    """Maximum-likelihood Gamma-Gamma parameters from the repeat customers' mean repeat values.

    Customers with x == 0 (no repeat purchase) or a mean value of 0 (free
    orders only: the Gamma likelihood is 0 there) are left out, as lifetimes
    expects them to be. Raises FitError if q ≤ 1 (no finite population mean order value).
    """
    xs, ms = _arrays(x, mean_value)
    keep = (xs > 0) & (ms > 0)
    xs, ms = xs[keep], ms[keep]
    if xs.size < MIN_CUSTOMERS:
        raise FitError(f"Gamma-Gamma fit needs at least {MIN_CUSTOMERS} repeat customers, got {xs.size}")
    scale = 1.0 / float(ms.mean())
    ms = ms * scale
    n = xs.size

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        params = np.exp(theta)
        ll, grad = _gg_ll_and_grad(params, xs, ms)
        return -float(ll.sum()) / n, -(grad.sum(axis=1) * params) / n

    theta = _minimise(objective, np.full(3, START), "Gamma-Gamma")
    p, q, v = np.exp(theta)
    if q <= 1:
        raise FitError(f"Gamma-Gamma fit gave q = {q:.4g} <= 1: the population mean order value is not finite")
    return GammaGammaParams(p=float(p), q=float(q), v=float(v / scale))


# --- inputs ---------------------------------------------------------------


def summarise(orders: Iterable[tuple[str, int, int]], now_ms: int, config: ClvConfig) -> dict[str, PurchaseDays]:
    """Per-customer purchase statistics from completed orders (customer_id, occurred_ms, amount_cents).

    Orders after ``now_ms`` are left out (not yet known at that time). The
    same fold as the worker's (:func:`record_purchase`), in input order.
    """
    stats: dict[str, PurchaseDays] = {}
    for customer_id, occurred_ms, amount_cents in orders:
        if occurred_ms > now_ms:
            continue
        h = stats.get(customer_id)
        if h is None:
            h = stats[customer_id] = PurchaseDays()
        record_purchase(h, occurred_ms // DAY_MS, amount_cents, config)
    return stats


def model_arrays(
    stats: dict[str, PurchaseDays], now_ms: int, time_unit_days: float
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(customer ids, x, t_x, T, mean repeat value in money units, 0 without repeats), sorted by id."""
    ids = sorted(stats)
    rows = [model_inputs(stats[c], now_ms, time_unit_days) for c in ids]
    x = np.array([row[0] for row in rows], dtype=float)
    t_x = np.array([row[1] for row in rows], dtype=float)
    T = np.array([row[2] for row in rows], dtype=float)
    m = np.array([mean_repeat_value(stats[c]) or 0.0 for c in ids], dtype=float)
    return ids, x, t_x, T, m


def _arrays(*columns: Iterable[float]) -> tuple[np.ndarray, ...]:
    arrays = tuple(np.asarray(list(c) if not isinstance(c, np.ndarray) else c, dtype=float) for c in columns)
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        raise FitError("inputs must be one-dimensional and of equal length")
    return arrays


def _minimise(objective: Objective, start: np.ndarray, model: str) -> np.ndarray:
    result = minimize(
        objective,
        start,
        jac=True,
        method="BFGS",
        options={"gtol": GRADIENT_TOLERANCE, "maxiter": MAX_ITERATIONS},
    )
    if not np.all(np.isfinite(result.x)) or not np.isfinite(result.fun):
        raise FitError(f"{model} fit did not converge: {result.message}")
    # BFGS may stop on "precision loss" at the optimum; accept it when the gradient is small.
    if not result.success and np.max(np.abs(result.jac)) > ACCEPT_GRADIENT:
        raise FitError(f"{model} fit did not converge: {result.message}")
    fitted: np.ndarray = result.x
    return fitted
