"""One look for every figure: sizes, fonts, colours, date axes, and a band for seed spread.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so no global backend or
figure registry is touched and nothing needs closing.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import matplotlib
import matplotlib.dates as mdates
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

WIDTH = 11.0  # inches; at DPI this is the HTML page's column width
DPI = 110
COLORS = {
    "main": "#1f77b4",
    "second": "#ff7f0e",
    "third": "#2ca02c",
    "bench": "#7f7f7f",
    "bad": "#d62728",
    "best": "#d62728",
    "shade": "#d3d3d3",
}
RC = {
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.5,
    "legend.fontsize": 8.5,
    "legend.framealpha": 0.85,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.4,
    "axes.prop_cycle": matplotlib.cycler(color=list(matplotlib.colormaps["tab10"].colors)),
}


@contextmanager
def figure(nrows: int = 1, ncols: int = 1, height: float = 3.6, **kwargs):
    """A styled figure and its axes (a flat list); the caller saves it with :func:`save`."""
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(WIDTH, height), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
        yield fig, list(axes.ravel())


def save(fig: Figure, path: str | Path) -> Path:
    with matplotlib.rc_context(RC):
        fig.savefig(path, dpi=DPI)
    return Path(path)


def date_axis(ax) -> None:
    """Short, non-overlapping date ticks."""
    locator = mdates.AutoDateLocator(minticks=4, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def spread(ax, frame: pd.DataFrame, label: str, color: str, **kwargs) -> None:
    """A line, or with several columns (seeds) their mean line and a min-max band, labelled so."""
    if frame.shape[1] == 1:
        ax.plot(frame.index, frame.iloc[:, 0], color=color, label=label, **kwargs)
        return
    ax.plot(
        frame.index,
        frame.mean(axis=1),
        color=color,
        label=f"{label}: mean of {frame.shape[1]} seeds",
        **kwargs,
    )
    ax.fill_between(
        frame.index,
        frame.min(axis=1),
        frame.max(axis=1),
        color=color,
        alpha=0.18,
        linewidth=0,
        label=f"{label}: seed min–max",
    )


def ordered_colors(n: int) -> list:
    """Colours for ordered groups, best (green) to worst (red), none too pale to see."""
    if n == 5:
        return ["#1a9850", "#74c476", "#8c8c8c", "#fc8d59", "#d73027"]
    return [matplotlib.colormaps["plasma"](v) for v in np.linspace(0.0, 0.85, n)]


def legend_on_top(ax, rows: int = 1, **kwargs) -> None:
    """An upper-left legend above the data: the y range grows so no line runs under it."""
    if not ax.get_legend_handles_labels()[0]:
        return
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + (0.12 * rows + 0.06) * (high - low))
    ax.legend(loc="upper left", **kwargs)


def zero_line(ax) -> None:
    ax.axhline(0.0, color="black", linewidth=0.7, alpha=0.6, zorder=1)


def percent_axis(ax, axis: str = "y", decimals: int | None = None) -> None:
    fmt = matplotlib.ticker.PercentFormatter(1.0, decimals=decimals)
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(fmt)


def finite(values) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]
