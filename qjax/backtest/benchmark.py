"""The benchmark's daily return, as Qlib's report computes its ``bench`` column.

- An instrument code: its ``close / close of the previous trading day - 1`` (float32 arithmetic
  on the stored float32 closes, as Qlib's expression engine does), 0 where undefined.
- A list of codes: the mean of their daily returns (Qlib's stock-pool benchmark).
- A ``pd.Series`` of daily returns indexed by date (or the path of a CSV file with a date column
  and a return column): used as given; several values inside one trading day compound, a day
  without a value is 0.
- ``None``, or a code absent from the data: the equal-weighted mean daily return of the
  universe's members on each day, and the name says so.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qjax.backtest.market import MarketData


@dataclass(frozen=True)
class Benchmark:
    returns: np.ndarray  # float64 [T] on the backtest days
    name: str


def equal_weight_name(universe: str) -> str:
    return f"equal-weighted mean return of {universe} members"


def resolve_benchmark(benchmark, market: MarketData, rows: slice) -> Benchmark:
    """The benchmark's returns on market rows ``rows`` (row ``rows.start - 1`` must exist for
    the first day's return; otherwise that day is 0)."""
    if isinstance(benchmark, (str, os.PathLike)) and _is_csv(benchmark):
        benchmark = _read_csv(Path(benchmark))
    if isinstance(benchmark, pd.DataFrame):
        if benchmark.shape[1] != 1:
            raise ValueError("a benchmark DataFrame must have exactly one column of daily returns")
        benchmark = benchmark.iloc[:, 0]
    if isinstance(benchmark, pd.Series):
        return Benchmark(
            _series_on_days(benchmark, market.dates, rows), str(benchmark.name or "given series")
        )
    change = _daily_change(market, rows)
    if benchmark is None:
        members = market.members[rows]
        return Benchmark(
            _nan_mean(np.where(members, change, np.nan)), equal_weight_name(market.universe)
        )
    codes = [benchmark] if isinstance(benchmark, str) else list(benchmark)
    if not codes or not all(isinstance(c, str) for c in codes):
        raise ValueError(
            f"benchmark must be an instrument code, a list of codes, a pd.Series of daily returns, "
            f"a CSV path or None, got {benchmark!r}"
        )
    index = {c: i for i, c in enumerate(market.instruments)}
    present = [c for c in codes if c in index and not np.isnan(market.raw_close[:, index[c]]).all()]
    if not present:
        warnings.warn(
            f"benchmark {codes if len(codes) > 1 else codes[0]!r} is not in the data; using the "
            f"{equal_weight_name(market.universe)} instead",
            stacklevel=3,
        )
        members = market.members[rows]
        name = f"{equal_weight_name(market.universe)} ({', '.join(codes)} not in the data)"
        return Benchmark(_nan_mean(np.where(members, change, np.nan)), name)
    picked = change[:, [index[c] for c in present]]
    return Benchmark(
        _nan_mean(picked), present[0] if isinstance(benchmark, str) else ", ".join(present)
    )


def _daily_change(market: MarketData, rows: slice) -> np.ndarray:
    close = market.raw_close.astype(np.float32)
    change = np.full(close.shape, np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        change[1:] = close[1:] / close[:-1] - np.float32(1)
    return change[rows]


def _nan_mean(values: np.ndarray) -> np.ndarray:
    """Per-row mean of the non-NaN float32 values, 0 where there is none, then compounded over
    the day as Qlib does: pandas' float32 group mean (a compensated float32 sum, in column
    order) and ``(1 + x) - 1`` in float32."""
    values = values.astype(np.float32)
    total = np.zeros(values.shape[0], dtype=np.float32)
    carry = np.zeros_like(total)
    for column in values.T:
        ok = ~np.isnan(column)
        y = np.where(ok, column - carry, np.float32(0))
        t = total + y
        carry = np.where(ok, (t - total) - y, carry)
        total = np.where(ok, t, total)
    count = np.sum(~np.isnan(values), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (total / count.astype(np.float32)).astype(np.float32)
    mean = np.where(count > 0, mean, np.float32(0))
    return ((mean + np.float32(1)) - np.float32(1)).astype(np.float64)


def _series_on_days(series: pd.Series, dates: pd.DatetimeIndex, rows: slice) -> np.ndarray:
    days = dates[rows]
    stamps = pd.DatetimeIndex(pd.to_datetime(series.index))
    # A value belongs to the trading day it falls in (from that day until the next one).
    where = days.searchsorted(stamps, side="right") - 1
    inside = (where >= 0) & (
        stamps < (dates[rows.stop] if rows.stop < len(dates) else pd.Timestamp.max)
    )
    growth = np.ones(len(days))
    values = np.asarray(series, dtype=np.float64)
    np.multiply.at(growth, where[inside], 1 + np.nan_to_num(values[inside]))
    return growth - 1


def _is_csv(path) -> bool:
    return str(path).lower().endswith((".csv", ".csv.gz"))


def _read_csv(path: Path) -> pd.Series:
    if not path.is_file():
        raise ValueError(f"benchmark file {str(path)!r} does not exist")
    frame = pd.read_csv(path)
    if frame.shape[1] != 2:
        raise ValueError(
            f"benchmark CSV {str(path)!r} must have two columns (date, daily return); "
            f"it has {list(frame.columns)}"
        )
    series = pd.Series(
        frame.iloc[:, 1].to_numpy(np.float64), index=pd.to_datetime(frame.iloc[:, 0])
    )
    series.name = path.stem
    return series
