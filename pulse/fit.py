"""``pulse fit``: fit the CLV population parameters from an order history.

The history goes through the worker's own reader and validation
(``pulse.history.read_orders``, ``schemas.events.decode_event``) and FX
conversion (the configured rates, ``scoring.orders.to_cents``); rows the
worker would dead-letter are skipped and counted. Completed orders only:
refunds are not purchases. The per-customer statistics are the worker's
(``scoring.clv_fit.summarise``), at ``as_of`` (default: the highest event time
in the file, which is the worker's event-time clock after reading it).

The parameter file's format is configuration (``pulse_config.clv_params``): the
worker reads it once at start from ``PULSE_CLV_PARAMS_FILE``; without that file
it uses :data:`scoring.clv.DEFAULT_CLV_PARAMS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.events import EventRejected, Kind, OrderEvent, OrderStatus, decode_event
from scoring.clv import ClvConfig, ClvParams
from scoring.orders import to_cents

if TYPE_CHECKING:
    from pulse_config.settings import Settings

MS_PER_SECOND = 1000
#: Repeat customers (purchases on two days or more) from which BG/NBD and Gamma-Gamma fits are usually
#: stable; below it ``pulse fit`` warns after a fit, and explains with this number when the fit fails
#: (scoring.clv_fit refuses fewer than MIN_CUSTOMERS outright; pilots with a few dozen often do not converge).
RECOMMENDED_REPEAT_CUSTOMERS = 100
#: Repeat customers' mean order values varying less than this (coefficient of variation) leave Gamma-Gamma
#: nothing to fit (p and q run off to infinity): said as "degenerate" rather than the optimiser's failure.
DEGENERATE_SPREAD = 0.05
#: what to do when the data cannot support a fit: the worker needs no parameter file
KEEP_DEFAULTS = (
    "the worker scores with the default (CDNOW) parameters while there is no parameter file, so you can skip "
    "pulse fit until the history is longer or has more customers"
)


class FitAdvice(ValueError):
    """The history cannot support a fit: what is wrong with the data (``problem``) and what to do (``hint``),
    instead of the optimiser's words ("precision loss")."""

    def __init__(self, problem: str, hint: str = KEEP_DEFAULTS) -> None:
        super().__init__(f"{problem}; {hint}")
        self.problem, self.hint = problem, hint


@dataclass(frozen=True, slots=True)
class HistoryOrders:
    """The completed orders of a history, as (customer_id, occurred_ms, amount_cents), and what was left out."""

    orders: list[tuple[str, int, int]]
    #: highest event time of any valid event (the worker's clock after the file)
    clock_ms: int | None
    refunds: int
    rejected: int
    duplicates: int


def history_orders(path: Path, settings: Settings) -> HistoryOrders:
    """Read and validate an order history CSV the way the worker would (see the module docstring)."""
    from pulse.history import read_orders

    rates = settings.currency_rates()
    seen: set[str] = set()
    orders: list[tuple[str, int, int]] = []
    clock: int | None = None
    refunds = rejected = duplicates = 0
    for _key, value in read_orders(path, settings.base_currency):
        try:
            event = decode_event(Kind.ORDER, value, settings.max_event_bytes)
        except EventRejected:
            rejected += 1
            continue
        assert isinstance(event, OrderEvent)
        rate = rates.get(event.currency)
        if rate is None:
            rejected += 1  # the worker dead-letters it as unsupported_currency
            continue
        if event.event_id in seen:
            duplicates += 1
            continue
        seen.add(event.event_id)
        clock = event.occurred_ms if clock is None else max(clock, event.occurred_ms)
        if event.status is OrderStatus.REFUNDED:
            refunds += 1
            continue
        orders.append((event.customer_id, event.occurred_ms, to_cents(event.amount, rate)))
    return HistoryOrders(orders, clock, refunds, rejected, duplicates)


def parse_as_of(text: str) -> int:
    """ISO date or date-time (UTC when no offset is given) as epoch ms."""
    at = datetime.fromisoformat(text.strip())
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return int(at.timestamp() * MS_PER_SECOND)


@dataclass(frozen=True, slots=True)
class FitReport:
    params: ClvParams
    customers: int
    repeat_customers: int
    gamma_gamma_customers: int
    bgnbd_log_likelihood: float
    gamma_gamma_log_likelihood: float
    as_of_ms: int
    orders: HistoryOrders

    def lines(self) -> Iterator[str]:
        bg, gg = self.params.bgnbd, self.params.gamma_gamma
        o = self.orders
        yield (
            f"orders: {len(o.orders)} completed, {o.refunds} refunds left out, "
            f"{o.rejected} rejected, {o.duplicates} duplicates"
        )
        yield (
            f"customers: {self.customers}, repeat customers: {self.repeat_customers} "
            f"(Gamma-Gamma: {self.gamma_gamma_customers}); as of {_iso(self.as_of_ms)}"
        )
        yield f"time unit: {self.params.time_unit_days:g} days"
        yield f"BG/NBD      r={bg.r:.6g} alpha={bg.alpha:.6g} a={bg.a:.6g} b={bg.b:.6g}"
        yield f"            log-likelihood {self.bgnbd_log_likelihood:.4f}"
        yield f"Gamma-Gamma p={gg.p:.6g} q={gg.q:.6g} v={gg.v:.6g}"
        yield f"            log-likelihood {self.gamma_gamma_log_likelihood:.4f}"
        if self.gamma_gamma_customers < RECOMMENDED_REPEAT_CUSTOMERS:
            yield (
                f"warning: only {self.gamma_gamma_customers} repeat customers (about "
                f"{RECOMMENDED_REPEAT_CUSTOMERS} make a stable fit): these parameters are rough; fit again when "
                "the history is longer"
            )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / MS_PER_SECOND, tz=UTC).isoformat()


def fit_history(path: Path, settings: Settings, as_of_ms: int | None = None, time_unit_days: float = 7.0) -> FitReport:
    """Fit BG/NBD and Gamma-Gamma on a CSV order history.

    Raises :class:`FitAdvice` when the data cannot support a fit (too few repeat customers, a degenerate
    Gamma-Gamma, no optimum), saying which and what to do.
    """
    import numpy as np

    from scoring.clv_fit import (
        MIN_CUSTOMERS,
        FitError,
        bgnbd_log_likelihood_sum,
        fit_bgnbd,
        fit_gamma_gamma,
        gamma_gamma_log_likelihood_sum,
        model_arrays,
        summarise,
    )

    if not time_unit_days > 0:
        raise FitAdvice(f"--time-unit-days must be positive, got {time_unit_days:g}", "e.g. 7 (weeks) or 1 (days)")
    history = history_orders(path, settings)
    now = history.clock_ms if as_of_ms is None else as_of_ms
    if now is None or not history.orders:
        raise FitAdvice(
            f"no valid completed orders ({history.rejected} rejected rows, {history.refunds} refunds)",
            "check the columns and values; `pulse score FILE --rejects rejects.csv` lists why each row is rejected",
        )
    config = ClvConfig(max_purchase_days=settings.clv_max_purchase_days)
    stats = summarise(history.orders, now, config)
    _, x, t_x, T, m = model_arrays(stats, now, time_unit_days)
    repeat = (x > 0) & (m > 0)
    customers, repeaters = len(stats), int(repeat.sum())
    few = f"{repeaters} repeat customers (bought on two days or more) of {customers}"
    if repeaters < MIN_CUSTOMERS:
        raise FitAdvice(
            f"only {few}; a fit needs at least {MIN_CUSTOMERS} and is stable from about {RECOMMENDED_REPEAT_CUSTOMERS}"
        )
    # the optimisers try points where the likelihood over- or underflows; what counts is where they end
    with np.errstate(all="ignore"):
        try:
            bgnbd = fit_bgnbd(x, t_x, T)
        except FitError:
            raise FitAdvice(
                f"BG/NBD found no stable fit on {few} (about {RECOMMENDED_REPEAT_CUSTOMERS} repeat customers "
                "are needed): the data do not tell purchase rates from drop-out"
            ) from None
        try:
            gamma_gamma = fit_gamma_gamma(x[repeat], m[repeat])
        except FitError:
            values = m[repeat]
            mean = float(values.mean())
            spread = float(values.std()) / mean
            if spread < DEGENERATE_SPREAD:
                raise FitAdvice(
                    f"Gamma-Gamma is degenerate: the {repeaters} repeat customers' mean order values hardly vary "
                    f"(mean {mean:.2f}, coefficient of variation {spread:.3f}), so there is no spread to fit",
                    "the worker scores with the default (CDNOW) parameters while there is no parameter file; "
                    "fit again on a history whose order values vary (real amounts, not one price)",
                ) from None
            raise FitAdvice(
                f"Gamma-Gamma found no stable fit on {few} (mean order value {mean:.2f}, coefficient of "
                f"variation {spread:.2f}; about {RECOMMENDED_REPEAT_CUSTOMERS} repeat customers are needed)"
            ) from None
        params = ClvParams(
            bgnbd=bgnbd,
            gamma_gamma=gamma_gamma,
            time_unit_days=time_unit_days,
            fitted_on=f"{path.name}, {customers} customers, as of {_iso(now)[:10]}",
        )
        return FitReport(
            params=params,
            customers=customers,
            repeat_customers=int((x > 0).sum()),
            gamma_gamma_customers=repeaters,
            bgnbd_log_likelihood=bgnbd_log_likelihood_sum(bgnbd, x, t_x, T),
            gamma_gamma_log_likelihood=gamma_gamma_log_likelihood_sum(gamma_gamma, x[repeat], m[repeat]),
            as_of_ms=now,
            orders=history,
        )
