"""Customer lifetime value (spec: Lifetime value (CLV)): BG/NBD + Gamma-Gamma, and the historical form.

Pure (no I/O): the worker calls this on its hot path. Gauss's 2F1 comes from
``scipy.special`` (Cephes, C: about 1–3 µs, against 20–120 µs for a series in
Python; tests/unit/test_clv.py checks it against a series over the parameters
used here), everything else is ``math``. The
per-customer inputs (:class:`PurchaseDays`) update in O(1) per order and do
not depend on arrival order, so a late order gives the sorted history's
result; the population parameters are fitted offline (``scoring.clv_fit``,
``pulse fit``) and loaded from a file.

Conventions follow Fader, Hardie & Lee (2005) and the ``lifetimes`` package,
so that the tests can compare both: a purchase *period* is a day (several
orders on one day count once), x = distinct purchase days − 1, t_x = time from
the first to the last purchase day, T = time from the first purchase day to
"now" (it keeps growing while no events arrive), all in ``time_unit_days``
units; the Gamma-Gamma mean order value leaves out the first purchase day.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from decimal import Decimal

from scipy.special import hyp2f1

from scoring.frozen import Value
from scoring.memo import ConfigMemo
from scoring.state import State
from scoring.units import DAY_MS

DAYS_PER_YEAR = 365.25
CENTS_PER_UNIT = 100

#: Within this distance of a = 1, E[purchases] (which divides by a − 1) is interpolated from both sides.
A_NEAR_ONE = 1e-6


@dataclass(frozen=True, slots=True)
class BgNbdParams:
    """BG/NBD population parameters: purchase rate ~ Gamma(r, alpha), dropout p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True, slots=True)
class GammaGammaParams:
    """Gamma-Gamma spend parameters; ``v`` is the spec's gamma, in base-currency money units (not cents)."""

    p: float
    q: float
    v: float


@dataclass(frozen=True, slots=True)
class ClvParams:
    """Fitted population parameters; ``time_unit_days`` is the unit of t_x, T and alpha."""

    bgnbd: BgNbdParams
    gamma_gamma: GammaGammaParams
    time_unit_days: float = 7.0
    fitted_on: str | None = None


#: Until ``pulse fit`` has run on the business's own history: the CDNOW fits in weeks.
#: BG/NBD: the spec's check values (Fader, Hardie & Lee 2005, CDNOW sample).
#: Gamma-Gamma: lifetimes' documented CDNOW fit ("fitted with 946 subjects, p: 6.25, q: 3.74, v: 15.45",
#: lifetimes README/docs Quickstart; re-fitted here with lifetimes 0.11.3: p=6.2488, q=3.7446, v=15.4477).
DEFAULT_CLV_PARAMS = ClvParams(
    bgnbd=BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426),
    gamma_gamma=GammaGammaParams(p=6.25, q=3.74, v=15.45),
    time_unit_days=7.0,
    fitted_on="defaults: CDNOW (Fader, Hardie & Lee 2005; lifetimes docs), weeks",
)


# --- BG/NBD ---------------------------------------------------------------


def _log_dropout_odds(params: BgNbdParams, x: int, t_x: float, T: float) -> float:
    """log of a/(b+x−1) · ((α+T)/(α+t_x))^(r+x): P(alive) = 1/(1 + exp(this)) for x > 0."""
    return (
        math.log(params.a)
        - math.log(params.b + x - 1)
        + (params.r + x) * (math.log(params.alpha + T) - math.log(params.alpha + t_x))
    )


def _sigmoid_neg(z: float) -> float:
    """1/(1 + e^z) without overflow for large |z|."""
    if z > 0:
        e = math.exp(-z)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(z))


def p_alive(params: BgNbdParams, x: int, t_x: float, T: float) -> float:
    """P(alive | x, t_x, T) (spec formula); 1 for a customer without repeat purchases."""
    if x <= 0:
        return 1.0
    return _sigmoid_neg(_log_dropout_odds(params, x, t_x, T))


def _expected_purchases(
    params: BgNbdParams, t: float, x: int, t_x: float, T: float, a: float, alive: float | None = None
) -> float:
    """``alive``: ``p_alive(params, x, t_x, T)`` when the caller has it (used only for ``a == params.a``)."""
    r, alpha, b = params.r, params.alpha, params.b
    z = t / (alpha + T + t)
    # FHL eq. 10 has ((α+T)/(α+T+t))^(r+x) · 2F1(r+x, b+x; a+b+x−1; z). Euler's transformation
    # 2F1(A,B;C;z) = (1−z)^(C−A−B) 2F1(C−A, C−B; C; z) turns it into (1−z)^(a−1) · 2F1(a+b−1−r, a−1;
    # a+b+x−1; z): numerator parameters that do not grow with x, so the series converges fast for any x.
    series = float(hyp2f1(a + b - 1 - r, a - 1, a + b + x - 1, z))
    bracket = 1.0 - math.exp((a - 1) * math.log1p(-z)) * series
    if a != params.a:
        alive = p_alive(BgNbdParams(r, alpha, a, b), x, t_x, T)
    elif alive is None:
        alive = p_alive(params, x, t_x, T)
    return (a + b + x - 1) / (a - 1) * bracket * alive


def expected_purchases(
    params: BgNbdParams, t: float, x: int, t_x: float, T: float, alive: float | None = None
) -> float:
    """Expected purchases in (T, T+t] given x, t_x, T (Fader, Hardie & Lee 2005, eq. 10); ``alive``: its
    ``p_alive`` if the caller computed it already (each assessment needs both)."""
    if t <= 0:
        return 0.0
    a = params.a
    if abs(a - 1.0) < A_NEAR_ONE:
        # eq. 10 is 0/0 at a = 1 (but smooth in a): the mean of both sides is exact to O(A_NEAR_ONE²).
        low = _expected_purchases(params, t, x, t_x, T, 1.0 - A_NEAR_ONE)
        high = _expected_purchases(params, t, x, t_x, T, 1.0 + A_NEAR_ONE)
        share = (a - (1.0 - A_NEAR_ONE)) / (2 * A_NEAR_ONE)
        return low + (high - low) * share
    return _expected_purchases(params, t, x, t_x, T, a, alive)


def p_alive_below_at(params: BgNbdParams, x: int, t_x: float, threshold: float) -> float | None:
    """The age T at which P(alive) drops below ``threshold`` (None for x == 0: always alive).

    For x > 0, P(alive) falls monotonically in T, and P = threshold exactly where
    ((α+T)/(α+t_x))^(r+x) = (1/threshold − 1)·(b+x−1)/a. Returns t_x when P is
    already below the threshold at T = t_x (the earliest possible age).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if x <= 0:
        return None
    log_ratio = (math.log(1.0 / threshold - 1.0) + math.log(params.b + x - 1) - math.log(params.a)) / (params.r + x)
    if log_ratio <= 0.0:
        return float(t_x)
    return (params.alpha + t_x) * math.exp(log_ratio) - params.alpha


def bgnbd_log_likelihood(params: BgNbdParams, x: int, t_x: float, T: float) -> float:
    """One customer's BG/NBD log-likelihood (FHL 2005 eq. 6, the two terms added in log space)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    common = (
        math.lgamma(r + x)
        - math.lgamma(r)
        + r * math.log(alpha)
        + math.lgamma(a + b)
        + math.lgamma(b + x)
        - math.lgamma(b)
        - math.lgamma(a + b + x)
    )
    still_alive = -(r + x) * math.log(alpha + T)
    if x <= 0:
        return common + still_alive
    dropped = math.log(a) - math.log(b + x - 1) - (r + x) * math.log(alpha + t_x)
    high = max(still_alive, dropped)
    return common + high + math.log(math.exp(still_alive - high) + math.exp(dropped - high))


# --- Gamma-Gamma ----------------------------------------------------------


def expected_order_value(params: GammaGammaParams, x: int, mean_value: float | None) -> float:
    """Conditional expected average order value (money units), Fader, Hardie & Lee (2005b) eq. 5.

    A weighted mean of the population mean p·v/(q−1) and the customer's own
    mean repeat value; the customer's weight grows with x. x == 0: the population mean.
    """
    p, q, v = params.p, params.q, params.v
    if x <= 0 or mean_value is None:
        return p * v / (q - 1)
    return p * (v + x * mean_value) / (p * x + q - 1)


def gamma_gamma_log_likelihood(params: GammaGammaParams, x: int, mean_value: float) -> float:
    """One repeat customer's (x > 0, mean_value > 0) Gamma-Gamma log-likelihood of the mean repeat value."""
    p, q, v = params.p, params.q, params.v
    px = p * x
    return (
        math.lgamma(px + q)
        - math.lgamma(px)
        - math.lgamma(q)
        + q * math.log(v)
        + (px - 1) * math.log(mean_value)
        + px * math.log(x)
        - (px + q) * math.log(x * mean_value + v)
    )


# --- per-customer statistics ----------------------------------------------


@dataclass(frozen=True, slots=True)
class ClvConfig:
    params: ClvParams = DEFAULT_CLV_PARAMS
    #: predictive CLV horizon (spec: 12 months)
    horizon_days: int = 365
    #: historical CLV lifetime while the population gives none (spec: 3 years)
    expected_lifetime_years: float = 3.0
    #: the population gives a lifetime (1 / its annual churn rate) once this many customers were active at
    #: the start of the churn rate's period (spec: the fallback holds "while the population is too young")
    lifetime_min_customers: int = 100
    #: distinct purchase days remembered per customer (bounds the state)
    max_purchase_days: int = 32


class PurchaseDays(State):
    """The BG/NBD and Gamma-Gamma inputs of one customer (epoch days, base-currency cents).

    Plain ints and a list: the changelog holds it as they are (streams/codec.py).
    """

    first_day: int | None = None
    last_day: int | None = None
    #: the most recent distinct purchase days, sorted, at most ``max_purchase_days``
    recent_days: list[int] = []
    #: distinct purchase days in total (x = periods − 1)
    periods: int = 0
    #: completed-order amounts (refunds are not purchases)
    total_cents: int = 0
    #: completed-order amount on first_day (Gamma-Gamma leaves the first purchase out)
    first_day_cents: int = 0


def record_purchase(h: PurchaseDays, day: int, amount_cents: int, config: ClvConfig) -> PurchaseDays:
    """Count one completed order on epoch ``day`` into ``h`` (updated in place and returned).

    O(max_purchase_days) at worst, a constant. Any arrival order gives the sorted
    history's result as long as the customer has at most ``max_purchase_days``
    distinct purchase days. Beyond that the state is bounded and one case is an
    approximation: a late order on a day older than the oldest remembered one
    (and not the first day) cannot be told apart from a day already counted, so
    it is counted as a new period — x can then be too high by the number of
    such late repeats, never too low. (A day before the first day is always new: exact.)
    """
    if h.first_day is None or h.last_day is None:
        h.first_day = h.last_day = day
        h.recent_days = [day]
        h.periods = 1
        h.total_cents = h.first_day_cents = amount_cents
        return h
    h.total_cents += amount_cents
    if day == h.first_day:
        h.first_day_cents += amount_cents
        return h
    if day < h.first_day:
        # The old first day becomes a repeat period: its money moves to the repeat purchases.
        h.first_day = day
        h.first_day_cents = amount_cents
        h.periods += 1
        if len(h.recent_days) < config.max_purchase_days:
            h.recent_days.insert(0, day)
        return h
    at = bisect.bisect_left(h.recent_days, day)
    if at < len(h.recent_days) and h.recent_days[at] == day:
        return h  # a day already counted
    h.periods += 1
    h.last_day = max(h.last_day, day)
    if at == 0 and len(h.recent_days) >= config.max_purchase_days:
        return h  # older than everything remembered: counted as new (see the docstring)
    h.recent_days.insert(at, day)
    if len(h.recent_days) > config.max_purchase_days:
        del h.recent_days[0]
    return h


def model_inputs(h: PurchaseDays, now_ms: int, time_unit_days: float) -> tuple[int, float, float]:
    """(x, t_x, T) in ``time_unit_days`` units, from whole days as lifetimes computes them.

    T is at least t_x even if ``now_ms`` lags the last purchase (a clock of another partition).
    """
    if h.first_day is None or h.last_day is None:
        return 0, 0.0, 0.0
    now_day = max(now_ms // DAY_MS, h.last_day)
    return h.periods - 1, (h.last_day - h.first_day) / time_unit_days, (now_day - h.first_day) / time_unit_days


def mean_repeat_value(h: PurchaseDays) -> float | None:
    """Mean spend per repeat purchase day in money units (the first day left out); None without repeats."""
    x = h.periods - 1
    if x <= 0:
        return None
    return (h.total_cents - h.first_day_cents) / x / CENTS_PER_UNIT


class ClvSignals(Value, frozen=True):
    #: repeat purchase days, and t_x, T in ``params.time_unit_days`` units
    x: int
    t_x: float
    T: float
    #: None without purchases
    p_alive: float | None
    #: over ``horizon_days``
    expected_purchases: float | None
    expected_order_value_cents: int | None
    #: expected purchases × expected order value × margin
    clv_predictive_cents: int | None
    #: average annual spend × expected lifetime years × margin
    clv_historical_cents: int | None


NO_CLV = ClvSignals(
    x=0,
    t_x=0.0,
    T=0.0,
    p_alive=None,
    expected_purchases=None,
    expected_order_value_cents=None,
    clv_predictive_cents=None,
    clv_historical_cents=None,
)


def margin(revenue_cents: int, profit_cents: int, default_margin: Decimal | float) -> float:
    """The customer's own gross margin (profit / revenue), else the default; clamped to [0, 1]."""
    share = profit_cents / revenue_cents if revenue_cents > 0 else float(default_margin)
    # min(1.0, max(0.0, share)) as comparisons (a builtin call is ~700-900 instructions): max keeps 0.0 unless
    # share is above it, min keeps 1.0 unless the result is below it, so the same float (and 0.0 for -0.0)
    share = share if share > 0.0 else 0.0
    return share if share < 1.0 else 1.0


def value_at_risk_cents(revenue_cents: int, cost_cents: int, window_cents: int, default_margin: Decimal | float) -> int:
    """The yearly profit that leaves with a churning customer: the revenue window's net revenue × the customer's
    margin. One function for the alert's ``value_at_risk`` and the profile's, so the at-risk queue (sorted by the
    profile's) and the alerts agree."""
    if window_cents <= 0:
        return 0  # round(max(0, window) × a margin in [0, 1]) without the margin (nor a Decimal made a float)
    return round(window_cents * margin(revenue_cents, revenue_cents - cost_cents, default_margin))


def lifetime_from_churn(period_churn_rate: float | None, period_days: int) -> float | None:
    """Spec (Historical CLV): expected lifetime = 1 / the population's annual churn rate; None if there is none.

    The population indicators measure the churn rate (S − E) / S over ``period_days`` (spec: Population
    indicators); compounded to a year it is 1 − (1 − c)^(365.25 / period_days). That rate is net of new
    customers, so a young or growing population (nobody lost net) has none: not positive gives None and
    the caller keeps the configured fallback. A whole period's churn of 1 (everybody lost) gives 1 year.
    """
    if period_churn_rate is None or period_churn_rate <= 0:
        return None
    if period_churn_rate >= 1:
        return 1.0
    annual = 1.0 - math.exp(DAYS_PER_YEAR / period_days * math.log1p(-period_churn_rate))
    return 1.0 / annual


#: per configuration, (x, whole days from the first purchase day to now) -> (a+b+x−1)/(a−1) · the bracket of
#: ``expected_purchases``; 65,536 entries each (~7 MB): repeat purchase days times days of tenure that occur
EXPECTED_PURCHASES_MEMO: ConfigMemo[tuple[int, int], float] = ConfigMemo(1 << 16)


def clv_signals(
    h: PurchaseDays,
    now_ms: int,
    revenue_cents: int,
    profit_cents: int,
    config: ClvConfig,
    default_margin: Decimal | float,
    expected_lifetime_years: float | None = None,
) -> ClvSignals:
    """Both CLV forms of the spec for one customer at event time ``now_ms``.

    ``revenue_cents``/``profit_cents`` are the customer's lifetime net figures
    (refunds deducted) and give the margin. ``expected_lifetime_years``
    overrides the configured fallback (the spec's 1 / population churn rate,
    once the population is old enough to give one).
    """
    if h.first_day is None or h.last_day is None:
        return NO_CLV
    # model_inputs, p_alive, expected_purchases, mean_repeat_value, expected_order_value and margin in line, the
    # same operations in the same order (so the same floats): it runs for every re-scored customer, and the calls
    # were a fifth of its cost (issue 18)
    params = config.params
    unit = params.time_unit_days
    bg = params.bgnbd
    first, last = h.first_day, h.last_day
    now_day = now_ms // DAY_MS
    if now_day < last:
        now_day = last
    x = h.periods - 1
    t_x, T = (last - first) / unit, (now_day - first) / unit
    if x <= 0:
        alive = 1.0
    else:
        z = math.log(bg.a) - math.log(bg.b + x - 1) + (bg.r + x) * (math.log(bg.alpha + T) - math.log(bg.alpha + t_x))
        if z > 0:
            e = math.exp(-z)
            alive = e / (1.0 + e)
        else:
            alive = 1.0 / (1.0 + math.exp(z))
    t = config.horizon_days / unit
    a = bg.a
    if t <= 0 or abs(a - 1.0) < A_NEAR_ONE:
        purchases = expected_purchases(bg, t, x, t_x, T, alive)
    else:
        # (a+b+x−1)/(a−1) · bracket is a function of x and T alone (whole days since the first purchase day):
        # memoised (the 2F1 call was a third of this function, issue 18); times ``alive`` as before, the same float
        memo = EXPECTED_PURCHASES_MEMO.of(config)
        days = now_day - first
        scaled = memo.get((x, days))
        if scaled is None:
            b = bg.b
            w = t / (bg.alpha + T + t)
            series = float(hyp2f1(a + b - 1 - bg.r, a - 1, a + b + x - 1, w))
            bracket = 1.0 - math.exp((a - 1) * math.log1p(-w)) * series
            scaled = (a + b + x - 1) / (a - 1) * bracket
            EXPECTED_PURCHASES_MEMO.put(memo, (x, days), scaled)
        purchases = scaled * alive
    gg = params.gamma_gamma
    if x <= 0:
        order_value = gg.p * gg.v / (gg.q - 1)
    else:
        mean_value = (h.total_cents - h.first_day_cents) / x / CENTS_PER_UNIT
        order_value = gg.p * (gg.v + x * mean_value) / (gg.p * x + gg.q - 1)
    order_value_cents = order_value * CENTS_PER_UNIT
    share = profit_cents / revenue_cents if revenue_cents > 0 else float(default_margin)
    share = min(1.0, max(0.0, share))
    tenure_years = T * unit / DAYS_PER_YEAR
    # A first-year customer's spend so far counts as one year's spend.
    annual_cents = max(0, revenue_cents) / max(1.0, tenure_years)
    lifetime = config.expected_lifetime_years if expected_lifetime_years is None else expected_lifetime_years
    return ClvSignals(
        x,
        t_x,
        T,
        alive,
        purchases,
        round(order_value_cents),
        round(purchases * order_value_cents * share),
        round(annual_cents * lifetime * share),
    )
