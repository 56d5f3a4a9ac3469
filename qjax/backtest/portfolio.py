"""Portfolio accounting of a TopK-dropout backtest, day by day on arrays (Qlib's Account,
Position and SimulatorExecutor, serial trading).

Each day: the strategy picks (``strategy.choose``); the held stocks it sells are sold first (in
instrument order), the cash they free is split evenly over the stocks to buy (times
``risk_degree``), and the buys are dealt in the strategy's order against the remaining cash. At
the close, held stocks are revalued at the close (a suspended stock keeps its last price) and
their holding-day counts grow by one. The report row of day ``t`` (Qlib's ``report_normal``):

- ``return`` = (account_t - account_{t-1} + cost_t) / account_{t-1} (before costs),
- ``cost`` = fees_t / account_{t-1}, ``turnover`` = traded value_t / account_{t-1},
- ``account`` = cash + ``value`` (held amounts x last prices), ``cash``, ``total_cost``,
  ``total_turnover``, and ``bench`` (the benchmark's return that day).

Only the holding-day loop is sequential (holdings and cash carry over); within a day the masks
and the revaluation are array operations, and only the few orders of the day are scalar work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qjax.backtest.exchange import (
    MIN_TRADE_VALUE,
    Exchange,
    TradingArrays,
    affordable_amount,
    round_to_trade_unit,
    trade_cost,
)
from qjax.backtest.strategy import TopkDropout, choose

REPORT_COLUMNS = (
    "account",
    "return",
    "total_turnover",
    "turnover",
    "total_cost",
    "cost",
    "value",
    "cash",
)


@dataclass
class Book:
    """The account between days: cash, and per instrument the amount held (0 = not held), the
    last price it was valued at and the number of closes it has been held through."""

    cash: float
    amount: np.ndarray
    price: np.ndarray
    count: np.ndarray
    held: np.ndarray  # bool

    @classmethod
    def empty(cls, cash: float, n: int) -> Book:
        return cls(
            float(cash), np.zeros(n), np.full(n, np.nan), np.zeros(n, np.int64), np.zeros(n, bool)
        )


@dataclass(frozen=True)
class Simulation:
    """Per-day report columns [T] and the holdings after each close (ragged, flattened)."""

    report: dict  # column -> float64 [T]
    position_day: np.ndarray  # int [K]: the day of each held (day, instrument) row
    position_code: np.ndarray  # int [K]: instrument index
    position_amount: np.ndarray
    position_price: np.ndarray
    position_count: np.ndarray
    position_weight: np.ndarray


def simulate(
    score: np.ndarray,
    scored: np.ndarray,
    has_signal: np.ndarray,
    trading: TradingArrays,
    strategy: TopkDropout,
    rules: Exchange,
    init_cash: float,
    seed: int | None = None,
) -> Simulation:
    """Run the backtest over the T rows of ``trading``.

    score, scored: [T, N] predictions to trade on each day (made the trading day before).
    has_signal: bool [T]; a day without any prediction trades nothing (Qlib's empty decision).
    """
    n_days, n = trading.close.shape
    book = Book.empty(init_cash, n)
    rng = np.random.RandomState(seed) if strategy.uses_random else None
    unit = None if trading.adjusted_price_mode else rules.trade_unit
    cols = {c: np.zeros(n_days) for c in REPORT_COLUMNS}
    total_cost = total_turnover = 0.0
    last_account = float(init_cash)
    rows = []
    for t in range(n_days):
        if has_signal[t]:
            fees, traded = _trade_day(
                t, score[t], scored[t], trading, strategy, rules, unit, book, rng
            )
            total_cost += fees
            total_turnover += traded
        _close_day(t, trading, book)
        held = np.flatnonzero(book.held)
        value = float(np.sum(book.amount[held] * book.price[held]))
        account = value + book.cash
        day_cost = total_cost - (cols["total_cost"][t - 1] if t else 0.0)
        day_turnover = total_turnover - (cols["total_turnover"][t - 1] if t else 0.0)
        cols["account"][t] = account
        cols["return"][t] = (account - last_account + day_cost) / last_account
        cols["total_turnover"][t] = total_turnover
        cols["turnover"][t] = day_turnover / last_account
        cols["total_cost"][t] = total_cost
        cols["cost"][t] = day_cost / last_account
        cols["value"][t] = value
        cols["cash"][t] = book.cash
        weight = book.amount[held] * book.price[held] / account
        rows.append(
            (
                np.full(held.size, t),
                held,
                book.amount[held],
                book.price[held],
                book.count[held],
                weight,
            )
        )
        last_account = account
    flat = [np.concatenate(parts) for parts in zip(*rows)] if rows else [np.zeros(0)] * 6
    return Simulation(cols, *flat)


def _trade_day(t, score, scored, trading, strategy, rules, unit, book, rng) -> tuple[float, float]:
    """Deal the day's sells then buys; return (fees, traded value)."""
    suspended = trading.suspended[t]
    blocked_any = trading.limit_buy[t] | trading.limit_sell[t] | suspended
    held = np.flatnonzero(book.held).tolist()
    choice = choose(strategy, score, scored, held, ~blocked_any, rng)
    blocked_sell = blocked_any if strategy.forbid_all_trade_at_limit else trading.limit_sell[t]
    blocked_buy = blocked_any if strategy.forbid_all_trade_at_limit else trading.limit_buy[t]
    fees = traded = 0.0
    for c in held:
        if blocked_sell[c] or c not in choice.sell or book.count[c] < strategy.hold_thresh:
            continue
        value, fee = _sell(c, trading.sell_price[t, c], rules, book)
        fees, traded = fees + fee, traded + value
    budget = book.cash * strategy.risk_degree / len(choice.buy) if choice.buy else 0.0
    for c in choice.buy:
        if blocked_buy[c]:
            continue
        price = trading.buy_price[t, c]
        amount = _round(budget / price, trading.factor[t, c], unit)
        value, fee = _buy(c, amount, price, trading.factor[t, c], unit, rules, book)
        fees, traded = fees + fee, traded + value
    return fees, traded


def _round(amount: float, factor: float, unit) -> float:
    return round_to_trade_unit(amount, factor, unit)


def _sell(c: int, price: float, rules: Exchange, book: Book) -> tuple[float, float]:
    """Sell the whole holding of ``c``, unless the cash cannot even pay the fee."""
    amount = book.amount[c]
    value = amount * price
    if book.cash + value < max(value * rules.close_cost, rules.min_cost):
        value = 0.0
    fee = trade_cost(value, rules.close_cost, rules.min_cost)
    if value <= MIN_TRADE_VALUE:
        return 0.0, 0.0
    sold = value / price
    if abs(amount - sold) <= 1e-8 + 1e-5 * abs(sold):  # np.isclose's test, as Qlib, on scalars
        book.held[c], book.amount[c], book.count[c], book.price[c] = False, 0.0, 0, np.nan
    else:
        book.amount[c] = amount - sold
    book.cash += value - fee
    return value, fee


def _buy(c: int, amount: float, price: float, factor: float, unit, rules: Exchange, book: Book):
    """Buy ``amount`` of ``c``, cut to what the cash pays (value plus fee)."""
    value = amount * price
    rate, floor = rules.open_cost, rules.min_cost
    if book.cash < max(value * rate, floor):
        amount = 0.0
    elif book.cash < value + max(value * rate, floor):
        amount = _round(min(affordable_amount(price, book.cash, rate, floor), amount), factor, unit)
    else:
        amount = _round(amount, factor, unit)
    value = amount * price
    fee = trade_cost(value, rate, floor)
    if value <= MIN_TRADE_VALUE:
        return 0.0, 0.0
    if book.held[c]:
        book.amount[c] += value / price
    else:
        book.held[c], book.amount[c], book.price[c], book.count[c] = True, value / price, price, 0
    book.cash -= value + fee
    return value, fee


def _close_day(t: int, trading: TradingArrays, book: Book) -> None:
    """Revalue held stocks at the close (suspended ones keep their price); count the day."""
    priced = book.held & ~trading.suspended[t]
    book.price[priced] = trading.close[t, priced]
    book.count[book.held] += 1
