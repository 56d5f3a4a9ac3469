"""Cross-sectional signal metrics: daily IC on the device, Qlib's report metrics on the host.

``daily_ic`` runs inside the compiled evaluation (validation ``metric="ic"``); ``ic_series`` and
``signal_metrics`` reproduce Qlib's ``calc_ic`` and ``SigAnaRecord`` (IC, ICIR, Rank IC,
Rank ICIR; ICIR = mean / std with ddof=1, not annualised) for reports, vectorised with pandas
instead of one ``corr`` call per day.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd


def daily_ic(pred: jax.Array, label: jax.Array, day: jax.Array, num_days: int) -> jax.Array:
    """Mean over days of the Pearson correlation of ``pred`` and ``label`` within the day.

    Pairs with a non-finite value are ignored; days with fewer than two pairs or a constant
    prediction or label have no IC and are left out of the mean (pandas' ``corr`` gives NaN
    there and ``mean`` skips it). NaN when no day has an IC.
    """
    total, days = daily_ic_sum(pred, label, day, num_days)
    return total / days


def daily_ic_sum(
    pred: jax.Array, label: jax.Array, day: jax.Array, num_days: int
) -> tuple[jax.Array, jax.Array]:
    """(sum of the daily ICs, days with an IC) of :func:`daily_ic`; processes that each hold
    whole days add theirs up."""
    valid = jnp.isfinite(pred) & jnp.isfinite(label)
    p = jnp.where(valid, pred, 0.0)
    y = jnp.where(valid, label, 0.0)

    def day_sum(values):
        return jax.ops.segment_sum(values, day, num_segments=num_days)

    count = day_sum(valid.astype(jnp.float32))
    safe_count = jnp.maximum(count, 1.0)
    # Two passes (centre, then multiply) keep float32 accurate for labels with a large mean.
    dp = jnp.where(valid, p - (day_sum(p) / safe_count)[day], 0.0)
    dy = jnp.where(valid, y - (day_sum(y) / safe_count)[day], 0.0)
    var_p, var_y = day_sum(dp * dp), day_sum(dy * dy)
    has_ic = (count >= 2) & (var_p > 0) & (var_y > 0)
    ic = day_sum(dp * dy) / jnp.sqrt(jnp.where(has_ic, var_p * var_y, 1.0))
    return jnp.sum(jnp.where(has_ic, ic, 0.0)), jnp.sum(has_ic)


def ic_series(
    pred: pd.Series, label: pd.Series, date_level: str = "datetime"
) -> tuple[pd.Series, pd.Series]:
    """Daily IC (Pearson) and Rank IC (Spearman) of aligned ``pred`` and ``label`` Series.

    Same numbers as Qlib's ``calc_ic(pred, label)``: per day, the correlation over the pairs
    where both are known (NaN for days with fewer than two pairs or no variation).
    """
    frame = pd.DataFrame({"pred": pred, "label": label})
    dates = frame.index.get_level_values(date_level)
    known = frame.notna().all(axis=1).to_numpy()
    frame = frame[known]
    frame.index = dates[known]
    ranks = frame.groupby(level=0).rank(method="average")
    index = dates.unique().sort_values()
    return _daily_pearson(frame).reindex(index), _daily_pearson(ranks).reindex(index)


def signal_metrics(pred: pd.Series, label: pd.Series) -> dict[str, float]:
    """Qlib's ``SigAnaRecord`` metrics: IC, ICIR, Rank IC, Rank ICIR (ddof=1 std)."""
    ic, rank_ic = ic_series(pred, label)
    return {
        "IC": float(ic.mean()),
        "ICIR": float(ic.mean() / ic.std()),
        "Rank IC": float(rank_ic.mean()),
        "Rank ICIR": float(rank_ic.mean() / rank_ic.std()),
    }


def _daily_pearson(frame: pd.DataFrame) -> pd.Series:
    """Pearson correlation of the two columns within each index group (two-pass)."""
    x, y = frame.columns
    groups = frame.groupby(level=0)
    centred = frame - groups.transform("mean")
    sums = (
        pd.DataFrame(
            {"xy": centred[x] * centred[y], "xx": centred[x] ** 2, "yy": centred[y] ** 2},
            index=frame.index,
        )
        .groupby(level=0)
        .sum()
    )
    count = groups.size()
    defined = (count >= 2) & (sums["xx"] > 0) & (sums["yy"] > 0)
    ic = sums["xy"] / np.sqrt(sums["xx"] * sums["yy"])
    return ic.where(defined)
