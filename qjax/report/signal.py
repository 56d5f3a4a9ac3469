"""Signal figures after Qlib's ``model_performance_graph``: daily and monthly IC, the IC
histogram, mean return by score quantile group, long-short, and score autocorrelation.

With several seeds every line is the seed mean with a min-max band, and every number in a
legend is computed over the same seeds as the line it labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from qjax.report import analysis, style


def _seed_note(n: int) -> str:
    return "" if n == 1 else f" (mean of {n} seeds)"


def ic_daily(ic: pd.DataFrame, rank_ic: pd.DataFrame) -> Figure:
    """Top: daily IC bars and a 20-day mean of IC and Rank IC; bottom: cumulative IC."""
    n = ic.shape[1]
    with style.figure(2, 1, height=6.0, sharex=True) as (fig, (top, bottom)):
        daily = ic.mean(axis=1)
        top.bar(
            daily.index,
            daily.fillna(0),
            width=1.0,
            color=style.COLORS["main"],
            alpha=0.35,
            label=f"daily IC{_seed_note(n)}",
        )
        for frame, name, color in ((ic, "IC", "main"), (rank_ic, "Rank IC", "second")):
            rolling = frame.mean(axis=1).rolling(20, min_periods=5).mean()
            top.plot(
                rolling.index,
                rolling,
                color=style.COLORS[color],
                label=f"{name}, 20-day mean (overall {frame.mean(axis=1).mean():.4f})",
            )
        style.zero_line(top)
        top.set(title=f"Daily IC on the test segment{_seed_note(n)}", ylabel="IC")
        style.legend_on_top(top, ncols=3)
        for frame, name, color in ((ic, "IC", "main"), (rank_ic, "Rank IC", "second")):
            style.spread(
                bottom, frame.fillna(0).cumsum(), f"cumulative {name}", style.COLORS[color]
            )
        style.zero_line(bottom)
        bottom.set(title="Cumulative IC (sum of daily values)", ylabel="cumulative IC")
        bottom.legend(loc="best")
        style.date_axis(bottom)
        return fig


def ic_distribution(ic: pd.DataFrame, rank_ic: pd.DataFrame) -> Figure:
    """Left: monthly mean IC and Rank IC; right: histogram of the daily IC with a normal fit."""
    n = ic.shape[1]
    with style.figure(1, 2, height=3.6, width_ratios=[1.6, 1]) as (fig, (left, right)):
        monthly_ic = analysis.monthly_mean(ic.mean(axis=1))
        monthly_rank = analysis.monthly_mean(rank_ic.mean(axis=1))
        x = np.arange(len(monthly_ic))
        left.bar(x - 0.2, monthly_ic.to_numpy(), width=0.4, color=style.COLORS["main"], label="IC")
        left.bar(
            x + 0.2,
            monthly_rank.to_numpy(),
            width=0.4,
            color=style.COLORS["second"],
            label="Rank IC",
        )
        step = max(1, int(np.ceil(len(x) / 12)))
        left.set_xticks(
            x[::step],
            [d.strftime("%Y-%m") for d in monthly_ic.index[::step]],
            rotation=30,
            ha="right",
        )
        style.zero_line(left)
        left.set(title=f"Monthly mean IC{_seed_note(n)}", ylabel="IC")
        style.legend_on_top(left, ncols=2)

        values = style.finite(ic.to_numpy().ravel())
        mean, std = float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0
        right.hist(
            values,
            bins=min(30, max(5, values.size // 4)),
            density=True,
            color=style.COLORS["main"],
            alpha=0.55,
            edgecolor="white",
        )
        if std > 0:
            grid = np.linspace(values.min(), values.max(), 200)
            right.plot(
                grid,
                np.exp(-0.5 * ((grid - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi)),
                color=style.COLORS["bad"],
                label=f"normal fit (sd {std:.3f})",
            )
        right.axvline(mean, color="black", linestyle="--", linewidth=0.9, label=f"mean {mean:.4f}")
        seeds = "" if n == 1 else f", {n} seeds' days pooled"
        right.set(title=f"Daily IC histogram{seeds}", xlabel="IC", ylabel="density")
        style.legend_on_top(right, rows=2)
        return fig


def group_returns(groups: list[pd.DataFrame]) -> Figure:
    """``groups``: per seed, :func:`analysis.group_returns`. Left: cumulative return of each
    group and of long-short; right: mean daily return by group with the seeds' range."""
    n = len(groups)
    stacked = pd.concat(groups, keys=range(n))
    mean = stacked.groupby(level=1).mean()
    names = [c for c in mean.columns if c.startswith("Group")]
    with style.figure(1, 2, height=3.8, width_ratios=[1.6, 1]) as (fig, (left, right)):
        colors = style.ordered_colors(len(names))
        for name, color in zip(names, colors):
            left.plot(mean.index, mean[name].fillna(0).cumsum(), color=color, label=name)
        left.plot(
            mean.index,
            mean["long-short"].fillna(0).cumsum(),
            color="black",
            linestyle="--",
            label=f"long-short (G1 − G{len(names)})",
        )
        left.plot(
            mean.index,
            mean["long-average"].fillna(0).cumsum(),
            color="black",
            linestyle=":",
            label="long-average (G1 − mean)",
        )
        style.zero_line(left)
        style.percent_axis(left)
        left.set(
            title=f"Cumulative label return by score quantile{_seed_note(n)}",
            ylabel="cumulative return (sum)",
        )
        style.legend_on_top(left, rows=4, ncols=2)
        style.date_axis(left)

        per_seed = np.array([[g[c].mean() for c in names] for g in groups])  # [seeds, groups]
        centre = per_seed.mean(axis=0)
        err = None if n == 1 else [centre - per_seed.min(0), per_seed.max(0) - centre]
        right.bar(
            np.arange(len(names)),
            centre,
            color=colors,
            yerr=err,
            capsize=4,
            edgecolor="black",
            linewidth=0.4,
        )
        right.set_xticks(np.arange(len(names)), [f"G{i + 1}" for i in range(len(names))])
        style.zero_line(right)
        style.percent_axis(right, decimals=2)
        bars = "" if n == 1 else f"\n(mean of {n} seeds; whiskers: seed min–max)"
        right.set(
            title=f"Mean daily return by group{bars}",
            xlabel="score quantile (G1 = highest)",
            ylabel="mean daily return",
        )
        return fig


def long_short(groups: list[pd.DataFrame], autocorr: pd.DataFrame) -> Figure:
    """Left: histograms of the daily long-short and long-average returns; right: the daily
    autocorrelation of the score's rank (lag 1)."""
    n = len(groups)
    stacked = pd.concat(groups)
    with style.figure(1, 2, height=3.4) as (fig, (left, right)):
        pair = {name: style.finite(stacked[name]) for name in ("long-short", "long-average")}
        both = np.concatenate(list(pair.values()))
        # One set of bins, so the two histograms compare bar for bar.
        bins = (
            np.histogram_bin_edges(both, bins=min(40, max(5, both.size // 6))) if both.size else 10
        )
        for (name, values), color in zip(pair.items(), ("main", "second")):
            if values.size:
                left.hist(
                    values,
                    bins=bins,
                    alpha=0.5,
                    color=style.COLORS[color],
                    label=f"{name} (mean {values.mean():.2%}/day)",
                )
        style.percent_axis(left, axis="x")
        pooled = "" if n == 1 else f", {n} seeds pooled"
        left.set(
            title=f"Daily long-short and long-average return{pooled}",
            xlabel="daily return",
            ylabel="days",
        )
        style.legend_on_top(left, rows=2)
        style.spread(right, autocorr, "rank autocorrelation, lag 1", style.COLORS["third"])
        mean = float(autocorr.mean(axis=1).mean())
        right.axhline(mean, color="black", linestyle="--", linewidth=0.9, label=f"mean {mean:.3f}")
        right.set(title="Score autocorrelation (turnover proxy)", ylabel="correlation")
        style.legend_on_top(right, rows=2, ncols=2)
        style.date_axis(right)
        return fig
