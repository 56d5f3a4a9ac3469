"""TabNet's input handling: Qlib's NaN fill of the flat feature rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qjax.data.samples import Samples

# Segments whose NaN features Qlib fills with the segment's column means first (then with 0).
MEAN_FILLED_SEGMENTS = ("train", "pretrain", "pretrain_validation")


def fill_nan_features(segment: str, samples: Samples) -> Samples:
    """Column means of the segment first where Qlib uses them, then 0."""
    x = samples.features
    if not isinstance(x, jax.Array) or x.ndim != 2:
        raise ValueError(
            "TabnetModel takes a flat qjax.data.Dataset (one row of d_feat features per sample), "
            "not a TSDataset or an Alpha360GatherDataset (rows built per batch, so its NaN "
            "fill cannot see them; use the flat Dataset)"
        )
    if segment in MEAN_FILLED_SEGMENTS:
        x = jnp.where(jnp.isnan(x), jnp.nanmean(x, axis=0), x)  # an all-NaN column stays NaN
    return samples.replace(features=jnp.where(jnp.isnan(x), 0.0, x))
