"""Learning curves: the train and valid score per epoch, with the best epoch marked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from qjax.report import style


def learning_curves(evals: Mapping[str, np.ndarray], best_epoch: Sequence[int | None]) -> Figure:
    """``evals``: name -> [epochs, seeds] scores (higher is better, NaN after a seed stopped);
    ``best_epoch``: per seed, numbered from 1 (None: the seed has none)."""
    with style.figure(height=3.4) as (fig, (ax,)):
        colors = {"train": style.COLORS["main"], "valid": style.COLORS["second"]}
        for name, values in evals.items():
            frame = pd.DataFrame(values, index=np.arange(1, len(values) + 1))
            style.spread(ax, frame, name, colors.get(name, style.COLORS["third"]))
        valid = evals.get("valid")
        marked = False
        for seed, epoch in enumerate(best_epoch):
            if valid is None or epoch is None or not 1 <= epoch <= len(valid):
                continue
            value = valid[epoch - 1, min(seed, valid.shape[1] - 1)]
            label = (
                f"best epoch {epoch} (valid {value:.4f})"
                if len(best_epoch) == 1
                else None
                if marked
                else "best epoch of each seed"
            )
            ax.plot(
                [epoch],
                [value],
                marker="*",
                markersize=13,
                linestyle="none",
                color=style.COLORS["best"],
                zorder=5,
                label=label,
            )
            marked = True
            if len(best_epoch) == 1:
                ax.axvline(
                    epoch, color=style.COLORS["best"], linestyle="--", linewidth=0.9, alpha=0.7
                )
        ax.set(
            title="Learning curves: score per epoch (higher is better)",
            xlabel="epoch",
            ylabel="score",
        )
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(loc="best")
        return fig
