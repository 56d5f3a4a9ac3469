"""Qlib's exchange rules (``qlib.backtest.exchange.Exchange``) as pure functions on arrays.

The facts ported:

- A day without a close is suspended: no trade in either direction.
- ``limit_threshold`` ``x``: buying is blocked when ``$change >= x``, selling when
  ``$change <= -x`` (a NaN change blocks nothing). ``None`` disables limits.
- Deal prices are ``$close`` or ``$open`` (or a (buy, sell) pair); a missing or non-positive
  deal price falls back to the close.
- Amounts are adjusted shares. With a trade unit (100 shares in China) an amount is rounded down
  to whole units of *raw* shares: ``(amount * factor + 0.1) // unit * unit / factor``. When some
  day has a close but no ``$factor``, Qlib trades adjusted amounts and rounds nothing.
- A trade of value ``v`` costs ``max(v * rate, min_cost)`` (rate ``open_cost`` to buy,
  ``close_cost`` to sell), nothing when ``v <= 1e-5``.
- A buy that cash cannot pay (value plus cost) is cut to what the cash buys, then rounded; a
  trade whose cost alone exceeds the cash is dropped.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from qjax.backtest.market import MarketData

# Qlib's region defaults (qlib.config, REG_CN) and get_exchange's cost defaults.
REGION_DEFAULTS = {
    "cn": {"trade_unit": 100, "limit_threshold": 0.095, "deal_price": "close"},
    "us": {"trade_unit": 1, "limit_threshold": None, "deal_price": "close"},
    "tw": {"trade_unit": 1000, "limit_threshold": 0.1, "deal_price": "close"},
}
DEAL_PRICES = ("close", "open")
MIN_TRADE_VALUE = 1e-5  # Qlib's "nothing was dealt" threshold


@dataclass(frozen=True)
class Exchange:
    """The trading rules of one backtest (Qlib's ``exchange_kwargs``, cn-region defaults)."""

    deal_price: str | tuple[str, str] = "close"
    limit_threshold: float | None = 0.095
    open_cost: float = 0.0015
    close_cost: float = 0.0025
    min_cost: float = 5.0
    trade_unit: float | None = 100
    codes: str | tuple[str, ...] = "all"
    # qjax only: "change" reads $change as Qlib does; "close" recomputes it from the closes
    # (for data whose $change is stored in percent, where Qlib's limits block most trades).
    limit_basis: str = "change"

    def __post_init__(self):
        if self.limit_basis not in ("change", "close"):
            raise ValueError(f"limit_basis must be 'change' or 'close', got {self.limit_basis!r}")
        buy, sell = self.buy_price_field, self.sell_price_field
        for price in (buy, sell):
            if price not in DEAL_PRICES:
                raise ValueError(
                    f"deal_price {self.deal_price!r} is not supported; "
                    f"use one of {list(DEAL_PRICES)} "
                    "(with or without '$') or a (buy, sell) pair of them"
                )
        if self.limit_threshold is not None and not isinstance(self.limit_threshold, (int, float)):
            raise ValueError(
                "limit_threshold must be a number (e.g. 0.095) or None, "
                f"got {self.limit_threshold!r}; "
                "Qlib's (buy expression, sell expression) form is not supported"
            )
        for name in ("open_cost", "close_cost", "min_cost"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if self.trade_unit is not None and not (self.trade_unit > 0):
            raise ValueError(f"trade_unit must be positive or None, got {self.trade_unit!r}")

    @property
    def buy_price_field(self) -> str:
        return _price_name(
            self.deal_price if isinstance(self.deal_price, str) else self.deal_price[0]
        )

    @property
    def sell_price_field(self) -> str:
        return _price_name(
            self.deal_price if isinstance(self.deal_price, str) else self.deal_price[1]
        )

    @classmethod
    def from_qlib(cls, exchange_kwargs: Mapping | None = None, region: str = "cn") -> Exchange:
        """From Qlib's ``exchange_kwargs`` (``port_analysis_config.backtest.exchange_kwargs``);
        a key that changes results and is not implemented is an error naming it."""
        kwargs = dict(exchange_kwargs or {})
        if region not in REGION_DEFAULTS:
            raise ValueError(
                f"unknown region {region!r}; expected one of {sorted(REGION_DEFAULTS)}"
            )
        defaults = dict(REGION_DEFAULTS[region])
        if kwargs.pop("freq", "day") != "day":
            raise ValueError("only daily backtests (exchange freq 'day') are supported")
        if kwargs.pop("impact_cost", 0) != 0:
            raise ValueError(
                "exchange_kwargs.impact_cost is not supported by qjax's backtest; remove it"
            )
        if kwargs.pop("volume_threshold", None) is not None:
            raise ValueError(
                "exchange_kwargs.volume_threshold is not supported by qjax's backtest; remove it"
            )
        kwargs.pop("subscribe_fields", None)  # extra quote columns; they change no result
        for key in ("start_time", "end_time"):
            kwargs.pop(key, None)  # the backtest span decides these, as in Qlib
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"exchange_kwargs has unsupported key(s) {unknown}; supported: {sorted(known)}"
            )
        for key, value in defaults.items():
            if kwargs.get(key) is None and key != "trade_unit":
                kwargs[key] = value
        kwargs.setdefault("trade_unit", defaults["trade_unit"])
        if isinstance(kwargs.get("deal_price"), list):
            kwargs["deal_price"] = tuple(kwargs["deal_price"])
        if isinstance(kwargs.get("codes"), list):
            kwargs["codes"] = tuple(kwargs["codes"])
        for key in ("open_cost", "close_cost", "min_cost", "limit_threshold"):
            if isinstance(kwargs.get(key), str):  # PyYAML reads "1e-3" as a string; Qlib floats it
                kwargs[key] = float(kwargs[key])
        return cls(**kwargs)


def _price_name(name: str) -> str:
    return name[1:] if isinstance(name, str) and name.startswith("$") else name


@dataclass(frozen=True)
class TradingArrays:
    """What the simulation needs per (day, instrument), float64/bool ``[T, N]``."""

    close: np.ndarray
    buy_price: np.ndarray
    sell_price: np.ndarray
    factor: np.ndarray
    suspended: np.ndarray
    limit_buy: np.ndarray  # includes suspended, as in Qlib
    limit_sell: np.ndarray
    adjusted_price_mode: bool  # no factor somewhere: amounts are not rounded to trade units


def trading_arrays(market: MarketData, rules: Exchange, rows: slice) -> TradingArrays:
    """Tradability, deal prices and factors on market rows ``rows`` (the backtest days)."""
    close = market.fields["close"][rows]
    suspended = np.isnan(close)
    change = _limit_change(market, rules, rows)
    if rules.limit_threshold is None:
        up = down = np.zeros_like(suspended)
    else:
        with np.errstate(invalid="ignore"):
            up = change >= rules.limit_threshold
            down = change <= -rules.limit_threshold
    factor = market.fields["factor"][rows]
    return TradingArrays(
        close=close,
        buy_price=_deal_price(market.fields[rules.buy_price_field][rows], close),
        sell_price=_deal_price(market.fields[rules.sell_price_field][rows], close),
        factor=factor,
        suspended=suspended,
        limit_buy=up | suspended,
        limit_sell=down | suspended,
        adjusted_price_mode=bool((np.isnan(factor) & ~suspended).any()),
    )


def _limit_change(market: MarketData, rules: Exchange, rows: slice) -> np.ndarray:
    if rules.limit_basis == "close":
        close = market.raw_close.astype(np.float32)
        change = np.full(close.shape, np.nan, dtype=np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            change[1:] = close[1:] / close[:-1] - np.float32(1)
        return change[rows].astype(np.float64)
    change = market.fields["change"][rows]
    largest = np.nanmax(np.abs(change), initial=0.0)
    if rules.limit_threshold is not None and rules.limit_threshold < 1 and largest > 1.5:
        warnings.warn(
            f"$change reaches {largest:.3g} in this data: it looks stored in percent, so "
            f"limit_threshold={rules.limit_threshold} blocks most trades (in Qlib too). "
            "Exchange(limit_basis='close') computes the change from the closes instead.",
            stacklevel=4,
        )
    return change


def _deal_price(price: np.ndarray, close: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        bad = np.isnan(price) | (price <= 1e-08)
    return np.where(bad, close, price)


def round_to_trade_unit(amount: float, factor: float, trade_unit: float | None) -> float:
    """Round an adjusted amount down to whole trade units of raw shares (``factor`` = adjusted
    price / raw price); 0.1 raw share of slack absorbs float error, as in Qlib."""
    if trade_unit is None:
        return amount
    return (amount * factor + 0.1) // trade_unit * trade_unit / factor


def trade_cost(value: float, rate: float, min_cost: float) -> float:
    """Fee of a trade of ``value``: proportional with a floor, nothing for an empty trade."""
    if value <= MIN_TRADE_VALUE:
        return 0.0
    return max(value * rate, min_cost)


def affordable_amount(price: float, cash: float, rate: float, min_cost: float) -> float:
    """The largest amount whose value plus fee ``cash`` pays (before trade-unit rounding)."""
    if cash < min_cost:
        return 0.0
    if rate > 0 and cash >= min_cost / rate + min_cost:  # the proportional fee is above the floor
        return cash / (1 + rate) / price
    return (cash - min_cost) / price
