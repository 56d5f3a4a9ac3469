"""The numbers behind the report's figures, as pure pandas functions (no plotting here).

The definitions follow Qlib's ``model_performance_graph`` and ``report_graph``: quantile groups
of equal size ``len // N`` taken from the top of each day's descending score order (the
remainder at the bottom left out), long-short = Group1 - GroupN, long-average = Group1 - the
day's mean label, score autocorrelation = the daily Pearson correlation of today's and the
instrument's previous score, both as percentile ranks over the day, and cumulative returns
and drawdowns as running sums of daily returns (not compounded).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qjax.train.metrics import ic_series


def daily_ic(scores: pd.DataFrame, label: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Daily IC and Rank IC, one column per seed (columns as in ``scores``)."""
    pairs = {name: ic_series(scores[name], label) for name in scores.columns}
    ic = pd.DataFrame({name: p[0] for name, p in pairs.items()})
    rank_ic = pd.DataFrame({name: p[1] for name, p in pairs.items()})
    return ic, rank_ic


def monthly_mean(daily: pd.Series | pd.DataFrame) -> pd.Series | pd.DataFrame:
    """Mean of a daily series per calendar month, indexed by the month's first day."""
    months = pd.DatetimeIndex(daily.index).to_period("M")
    out = daily.groupby(months).mean()
    out.index = out.index.to_timestamp()
    return out


def group_returns(score: pd.Series, label: pd.Series, n_groups: int = 5) -> pd.DataFrame:
    """Mean label per score quantile group and day: ``Group1`` (highest scores) .. ``GroupN``,
    ``long-short`` and ``long-average``; days with fewer than ``n_groups`` scores are NaN."""
    frame = pd.DataFrame({"score": score, "label": label}).dropna(subset=["score"])
    dates = frame.index.get_level_values("datetime")
    frame = frame.assign(date=dates).sort_values(
        ["date", "score"], ascending=[True, False], kind="stable"
    )
    position = frame.groupby("date").cumcount().to_numpy()
    size = frame.groupby("date")["score"].transform("size").to_numpy() // n_groups
    group = np.where(size > 0, position // np.maximum(size, 1), n_groups)
    frame = frame.assign(group=group)[group < n_groups]
    table = frame.groupby(["date", "group"])["label"].mean().unstack("group")
    all_dates = pd.DatetimeIndex(sorted(set(dates)), name="datetime")
    table = table.reindex(index=all_dates, columns=range(n_groups))
    table.columns = [f"Group{g + 1}" for g in range(n_groups)]
    day_mean = label.groupby(level="datetime").mean().reindex(all_dates)
    table["long-short"] = table["Group1"] - table[f"Group{n_groups}"]
    table["long-average"] = table["Group1"] - day_mean
    return table.dropna(how="all")


def score_autocorr(score: pd.Series, lag: int = 1) -> pd.Series:
    """Daily correlation of the score's percentile rank with its rank ``lag`` scores earlier."""
    frame = score.rename("score").to_frame().sort_index(level=["instrument", "datetime"])
    frame["last"] = frame.groupby(level="instrument")["score"].shift(lag)
    frame = frame.sort_index(level=["datetime", "instrument"])
    ranks = frame.groupby(level="datetime").rank(pct=True)
    ranks = ranks.dropna()
    dates = ranks.index.get_level_values("datetime")
    centred = ranks - ranks.groupby(dates).transform("mean")
    cov = (centred["score"] * centred["last"]).groupby(dates).sum()
    var = (centred**2).groupby(dates).sum()
    out = cov / np.sqrt(var["score"] * var["last"])
    all_dates = pd.DatetimeIndex(sorted(set(frame.index.get_level_values("datetime"))))
    return out.where(np.isfinite(out)).reindex(all_dates).rename("autocorrelation")


def portfolio_curves(report: pd.DataFrame) -> pd.DataFrame:
    """Qlib's report_graph series from a daily portfolio report (return, cost, bench,
    turnover): cumulative returns, excess returns with and without cost, their drawdowns."""
    ret, cost, bench = report["return"], report["cost"], report["bench"]
    out = pd.DataFrame(index=report.index)
    out["cum_bench"] = bench.cumsum()
    out["cum_return_wo_cost"] = ret.cumsum()
    out["cum_return_w_cost"] = (ret - cost).cumsum()
    out["cum_ex_return_wo_cost"] = (ret - bench).cumsum()
    out["cum_ex_return_w_cost"] = (ret - bench - cost).cumsum()
    for name in ("cum_ex_return_wo_cost", "cum_ex_return_w_cost"):
        out[f"{name}_mdd"] = out[name] - out[name].cummax()
    out["turnover"] = report["turnover"]
    return out


def drawdown_span(cumulative: pd.Series) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Start (the peak) and end (the trough) of the largest drawdown of a cumulative series."""
    drawdown = cumulative - cumulative.cummax()
    end = drawdown.idxmin()
    return cumulative.loc[:end].idxmax(), end
