"""Qlib's risk analysis (``qlib.contrib.evaluate.risk_analysis``) and SigAna's long-short return
(``qlib.contrib.eva.alpha.calc_long_short_return``).

``risk_analysis(r)`` of a return series, with ``N`` the annualisation scaler (238 trading days a
year for daily data, 50 weekly, 12 monthly, 240 * 238 per minute, divided by the bar count):

- ``mode="sum"`` (Qlib's default, what PortAnaRecord uses): mean, sample std (ddof 1),
  annualized_return = mean * N, max_drawdown = min(cumsum - running max of cumsum);
- ``mode="product"``: mean = geometric mean return, std of log(1 + r), annualized_return =
  prod(1 + r) ** (N / len(r)) - 1, max_drawdown = min(curve / running max - 1);
- information_ratio = mean / std * sqrt(N) in both modes.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

RISK_METRICS = ("mean", "std", "annualized_return", "information_ratio", "max_drawdown")
_SCALERS = {"minute": 240 * 238, "day": 238, "week": 50, "month": 12}
_FREQ_NAMES = {
    "min": "minute",
    "minute": "minute",
    "d": "day",
    "day": "day",
    "w": "week",
    "week": "week",
    "m": "month",
    "mon": "month",
    "month": "month",
}


def annualisation_scaler(freq: str = "day") -> float:
    """Qlib's annualisation scaler for a bar frequency such as ``"day"``, ``"1day"``, ``"5min"``."""
    match = re.fullmatch(r"(\d*)([a-z]+)", str(freq).strip().lower())
    if not match or match.group(2) not in _FREQ_NAMES:
        raise ValueError(f"unknown frequency {freq!r}; use e.g. 'day', 'week', 'month' or '5min'")
    count = int(match.group(1) or 1)
    return _SCALERS[_FREQ_NAMES[match.group(2)]] / count


def risk_analysis(
    r: pd.Series, N: float | None = None, freq: str = "day", mode: str = "sum"
) -> pd.DataFrame:
    """The five risk figures of ``r`` as a one-column (``"risk"``) frame, like Qlib's."""
    scaler = annualisation_scaler(freq) if N is None else N
    values = np.asarray(r, dtype=np.float64)
    if mode == "sum":
        mean = values.mean()
        std = values.std(ddof=1)
        annualized = mean * scaler
        cum = np.cumsum(values)
        drawdown = (cum - np.maximum.accumulate(cum)).min()
    elif mode == "product":
        curve = np.cumprod(1 + values)
        mean = curve[-1] ** (1 / len(values)) - 1
        std = np.log(1 + values).std(ddof=1)
        annualized = curve[-1] ** (scaler / len(values)) - 1
        drawdown = (curve / np.maximum.accumulate(curve) - 1).min()
    else:
        raise ValueError(f"risk analysis mode must be 'sum' or 'product', got {mode!r}")
    with np.errstate(
        invalid="ignore", divide="ignore"
    ):  # a flat series has no ratio (NaN, as Qlib)
        ratio = mean / std * np.sqrt(scaler)
    data = dict(zip(RISK_METRICS, (mean, std, annualized, ratio, drawdown)))
    return pd.Series(data, dtype=np.float64).to_frame("risk")


def excess_return_analysis(
    report: pd.DataFrame, freq: str = "day", mode: str = "sum"
) -> pd.DataFrame:
    """PortAnaRecord's ``port_analysis``: risk of return - bench, without and with cost."""
    excess = report["return"] - report["bench"]
    return pd.concat(
        {
            "excess_return_without_cost": risk_analysis(excess, freq=freq, mode=mode),
            "excess_return_with_cost": risk_analysis(excess - report["cost"], freq=freq, mode=mode),
        }
    )


def long_short_return(
    pred: pd.Series, label: pd.Series, quantile: float = 0.2, dropna: bool = False
):
    """Per day: (mean label of the top ``quantile`` by prediction - mean of the bottom) / 2, and
    the mean label of all stocks (``long_short_r``, ``long_avg_r``). ``floor(n * quantile)``
    stocks per side; a day too small for one stock gives NaN."""
    df = pd.DataFrame({"pred": pred, "label": label})
    if dropna:
        df = df.dropna()
    day = df.index.get_level_values("datetime")
    longs, shorts = {}, {}
    for date, rows in df.groupby(day, sort=True):
        k = int(len(rows) * quantile)
        ranked = rows.sort_values("pred", ascending=False, kind="stable")
        valid = ranked[ranked["pred"].notna()]
        longs[date] = valid["label"].iloc[:k].mean() if k else np.nan
        shorts[date] = valid["label"].iloc[::-1].iloc[:k].mean() if k else np.nan
    r_long = pd.Series(longs, dtype=np.float64)
    r_short = pd.Series(shorts, dtype=np.float64)
    long_short = (r_long - r_short) / 2
    long_short.index.name = "datetime"
    r_avg = df.groupby(day)["label"].mean()
    return long_short, r_avg


def signal_analysis_long_short(pred: pd.Series, label: pd.Series, ann_scaler: float = 252) -> dict:
    """SigAnaRecord's ``ana_long_short`` metrics."""
    ls, avg = long_short_return(pred, label)
    return {
        "Long-Short Ann Return": ls.mean() * ann_scaler,
        "Long-Short Ann Sharpe": ls.mean() / ls.std() * ann_scaler**0.5,
        "Long-Avg Ann Return": avg.mean() * ann_scaler,
        "Long-Avg Ann Sharpe": avg.mean() / avg.std() * ann_scaler**0.5,
    }
