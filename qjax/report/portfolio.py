"""Backtest figure after Qlib's ``report_graph``: cumulative return and excess return against
the benchmark with and without cost, the excess return's drawdown, and daily turnover."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from qjax.report import analysis, style


def backtest(report: pd.DataFrame, benchmark: str | None, scored_by: str) -> Figure:
    """``report``: the daily portfolio report (Qlib's report_normal columns); ``scored_by``:
    whose scores were traded (the backtest runs on one seed)."""
    curves = analysis.portfolio_curves(report)
    bench = benchmark or "benchmark"
    c = style.COLORS
    with style.figure(4, 1, height=9.0, sharex=True, height_ratios=[1.2, 1.2, 0.8, 0.7]) as (
        fig,
        axes,
    ):
        total, excess, drawdown, turnover = axes
        total.plot(
            curves.index,
            curves["cum_return_wo_cost"],
            color=c["main"],
            label="strategy, without cost",
        )
        total.plot(
            curves.index,
            curves["cum_return_w_cost"],
            color=c["second"],
            label="strategy, with cost",
        )
        total.plot(curves.index, curves["cum_bench"], color=c["bench"], label=bench)
        total.set(
            title=f"Top-k dropout backtest of {scored_by}: cumulative return (sum of "
            "daily returns)",
            ylabel="cumulative return",
        )

        start, end = analysis.drawdown_span(curves["cum_ex_return_w_cost"])
        excess.axvspan(
            start,
            end,
            color=c["shade"],
            alpha=0.5,
            linewidth=0,
            label="largest drawdown, with cost",
        )
        excess.plot(
            curves.index, curves["cum_ex_return_wo_cost"], color=c["main"], label="without cost"
        )
        excess.plot(
            curves.index, curves["cum_ex_return_w_cost"], color=c["second"], label="with cost"
        )
        excess.set(title=f"Cumulative excess return over {bench}", ylabel="excess return")

        for name, color, label in (
            ("cum_ex_return_wo_cost_mdd", "main", "without cost"),
            ("cum_ex_return_w_cost_mdd", "second", "with cost"),
        ):
            if color == "second":  # the deeper of the two; one fill keeps it readable
                drawdown.fill_between(
                    curves.index, curves[name], 0, color=c[color], alpha=0.25, linewidth=0
                )
            drawdown.plot(
                curves.index,
                curves[name],
                color=c[color],
                linewidth=1.0,
                label=f"{label} (max {curves[name].min():.2%})",
            )
        drawdown.set(title="Drawdown of the cumulative excess return", ylabel="drawdown")

        turnover.bar(
            curves.index,
            curves["turnover"],
            width=1.0,
            color=c["third"],
            alpha=0.7,
            label=f"daily (mean {curves['turnover'].mean():.2%})",
        )
        turnover.set(title="Daily turnover (as in the portfolio report)", ylabel="turnover")

        for ax in axes:
            style.zero_line(ax)
            style.percent_axis(ax)
            style.legend_on_top(ax, ncols=3)
        style.date_axis(turnover)
        return fig
