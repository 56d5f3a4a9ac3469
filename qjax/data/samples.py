"""The hand-off between data and training: samples that live on the device.

A :class:`Samples` is a pytree, so the training engine passes it into its compiled epoch
program as an argument (never as a baked-in constant) and gathers batches inside the program
with ``take(features, ids)``: a row gather for tabular data, a vmap-vectorised window gather for
time-series data. Nothing about a batch is built on the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd


def take_rows(features: jax.Array, ids: jax.Array) -> jax.Array:
    """``take`` for tabular samples: row gather of a [n, F] matrix."""
    return jnp.take(features, ids, axis=0)


@flax.struct.dataclass
class Samples:
    """Device-resident samples of one dataset segment.

    features: pytree of arrays read by ``take`` ([n, F] rows, or a panel + lookup tables).
    labels:   [n] float32, NaN where unknown (losses mask them).
    weights:  [n] float32 sample weights (ones unless a reweighter is used).
    day:      [n] int32 trading-day number of each sample (for daily batches and daily IC).
    take:     static ``take(features, ids[B]) -> x[B, ...]``; must be jit- and vmap-friendly.
    batch_group: [n] int32 group of each sample for daily batching, or None for its ``day``
              (set by :func:`qlib_legacy_day_groups` to reproduce GATs_ts's sampler).
    """

    features: Any
    labels: jax.Array
    weights: jax.Array
    day: jax.Array
    take: Callable[[Any, jax.Array], jax.Array] = flax.struct.field(pytree_node=False)
    batch_group: jax.Array | None = None

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, ids: jax.Array) -> dict[str, jax.Array]:
        """Gather ``x``, ``y``, ``w`` for sample ids (inside or outside jit)."""
        return {
            "x": self.take(self.features, ids),
            "y": jnp.take(self.labels, ids),
            "w": jnp.take(self.weights, ids),
        }


def tabular_samples(
    x: np.ndarray, y: np.ndarray | None, index: pd.MultiIndex, weights: np.ndarray | None = None
) -> Samples:
    """Samples from a feature matrix and labels indexed by (datetime, instrument)."""
    n = len(index)
    if x.shape[0] != n:
        raise ValueError(f"{x.shape[0]} feature rows but {n} index entries")
    labels = np.full(n, np.nan, np.float32) if y is None else np.asarray(y, np.float32).reshape(n)
    w = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32).reshape(n)
    return Samples(
        features=jnp.asarray(np.asarray(x, np.float32)),
        labels=jnp.asarray(labels),
        weights=jnp.asarray(w),
        day=jnp.asarray(day_numbers(index)),
        take=take_rows,
    )


def day_numbers(index: pd.MultiIndex) -> np.ndarray:
    """Dense day number (0, 1, ...) of each row's datetime, in date order."""
    dates = index.get_level_values("datetime")
    return pd.factorize(dates, sort=True)[0].astype(np.int32)


def qlib_legacy_day_groups(index: pd.MultiIndex) -> np.ndarray:
    """The "days" of Qlib's GATs_ts ``DailyBatchSampler`` for samples indexed (datetime, instrument).

    That sampler cuts the instrument-major sample order of ``TSDataSampler`` into consecutive
    runs whose lengths are the per-date sample counts (in date order), so each "day" is a
    stretch of consecutive dates of one or two instruments (microsoft/qlib#2319). Returns the
    run number of every sample, in the order of ``index``.
    """
    day = day_numbers(index)
    instrument = pd.factorize(index.get_level_values("instrument"), sort=True)[0]
    instrument_major = np.lexsort((day, instrument))
    run_ends = np.cumsum(np.bincount(day))
    groups = np.empty(len(index), np.int32)
    groups[instrument_major] = np.searchsorted(run_ends, np.arange(len(index)), side="right")
    return groups


@dataclasses.dataclass(frozen=True)
class _TakeWithInputs:
    """``take`` that adds per-sample keyword inputs of the module (e.g. HIST's concept rows)."""

    base: Callable[[Any, jax.Array], jax.Array]
    names: tuple[str, ...]

    def __call__(self, features, ids):
        base_features, extras = features
        rows = {name: jnp.take(values, ids, axis=0) for name, values in zip(self.names, extras)}
        return {"x": self.base(base_features, ids), **rows}


def with_keyword_inputs(samples: Samples, **per_sample: np.ndarray) -> Samples:
    """Samples whose batches also carry ``name=array[ids]`` as module keyword inputs.

    Each array has one row per sample (e.g. the stock-to-concept row of each sample's
    instrument); the engine passes the gathered rows to ``module.apply`` by name.
    """
    names = tuple(per_sample)
    arrays = tuple(jnp.asarray(np.asarray(per_sample[n], np.float32)) for n in names)
    for name, values in zip(names, arrays):
        if values.shape[0] != samples.size:
            raise ValueError(f"{name} has {values.shape[0]} rows for {samples.size} samples")
    return samples.replace(features=(samples.features, arrays), take=_TakeWithInputs(samples.take, names))
