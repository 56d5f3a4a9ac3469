"""The hand-off between data and training: samples that live on the device.

A :class:`Samples` is a pytree, so the training engine passes it into its compiled epoch
program as an argument (never as a baked-in constant) and gathers batches inside the program
with ``take(features, ids)``: a row gather for tabular data, a vmap-vectorised window gather for
time-series data. Nothing about a batch is built on the host.

:meth:`Samples.batch` builds a :class:`Batch`, the one structure a batch has from that gather
to the objective (and the micro-batch split in between).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from qjax.data.storage import to_storage


def take_rows(features: jax.Array, ids: jax.Array) -> jax.Array:
    """``take`` for tabular samples: row gather of a [n, F] matrix, as float32 (a matrix stored
    in a compact dtype, :mod:`qjax.data.storage`, is cast per batch; float32 is not copied)."""
    return jnp.take(features, ids, axis=0).astype(jnp.float32)


@flax.struct.dataclass
class Batch:
    """One batch: what :meth:`Samples.batch` gathers and an objective (``loss_fn``) receives.

    x:      model input [B, ...] (feature rows, or [B, T, F] windows).
    y:      [B] labels, NaN where unknown.
    w:      [B] sample weights.
    mask:   [B] bool, False on padding rows.
    inputs: the module's keyword inputs, name -> [B, ...]: per-sample inputs (HIST's
            ``concept_matrix``, see :func:`with_keyword_inputs`) and, for daily batches, ``mask``.
    """

    x: Any
    y: jax.Array
    w: jax.Array
    mask: jax.Array
    inputs: dict[str, Any] = flax.struct.field(default_factory=dict)


@flax.struct.dataclass
class Samples:
    """Device-resident samples of one dataset segment.

    features: pytree of arrays read by ``take`` ([n, F] rows, or a panel + lookup tables);
              feature values may be stored in a compact dtype (:mod:`qjax.data.storage`),
              ``take`` returns float32.
    labels:   [n] float32, NaN where unknown (losses mask them).
    weights:  [n] float32 sample weights (ones unless a reweighter is used).
    day:      [n] int32 trading-day number of each sample (for daily batches and daily IC).
    take:     static ``take(features, ids[B]) -> x[B, ...]``; must be jit- and vmap-friendly.
    batch_group: [n] int32 group of each sample for daily batching, or None for its ``day``
              (set by :func:`qlib_legacy_day_groups` to reproduce GATs_ts's sampler).
    inputs:   per-sample keyword inputs of the module, name -> [n, ...] (set by
              :func:`with_keyword_inputs`).
    """

    features: Any
    labels: jax.Array
    weights: jax.Array
    day: jax.Array
    take: Callable[[Any, jax.Array], jax.Array] = flax.struct.field(pytree_node=False)
    batch_group: jax.Array | None = None
    inputs: dict[str, jax.Array] = flax.struct.field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def batch(
        self, ids: jax.Array, mask: jax.Array | None = None, *, mask_input: bool = False
    ) -> Batch:
        """The :class:`Batch` of sample ids ``[B]`` (inside or outside jit).

        ``mask`` marks the real rows (default: all); ``mask_input`` hands it to the module as
        its ``mask`` keyword too (daily batches of cross-sectional models).
        """
        mask = jnp.ones(ids.shape, bool) if mask is None else mask
        inputs = {name: jnp.take(values, ids, axis=0) for name, values in self.inputs.items()}
        if mask_input:
            inputs["mask"] = mask
        return Batch(
            x=self.take(self.features, ids),
            y=jnp.take(self.labels, ids),
            w=jnp.take(self.weights, ids),
            mask=mask,
            inputs=inputs,
        )


def tabular_samples(
    x: np.ndarray,
    y: np.ndarray | None,
    index: pd.MultiIndex,
    weights: np.ndarray | None = None,
    storage_dtype: str = "float32",
    names: Sequence[str] | None = None,
    on_device: bool = True,
) -> Samples:
    """Samples from a feature matrix and labels indexed by (datetime, instrument).

    ``storage_dtype``: the device dtype of the feature matrix (:mod:`qjax.data.storage`; batches
    are float32 either way); ``names``: the feature columns, for its overflow error.
    ``on_device=False`` keeps the arrays in host numpy, for training that streams them
    (``TrainConfig.stream_batches``).
    """
    n = len(index)
    if x.shape[0] != n:
        raise ValueError(f"{x.shape[0]} feature rows but {n} index entries")
    labels = np.full(n, np.nan, np.float32) if y is None else np.asarray(y, np.float32).reshape(n)
    w = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32).reshape(n)
    # Host rows are gathered row by row: C order (a frame's to_numpy is often column-major,
    # which made the streamed gather 17x slower).
    place = jnp.asarray if on_device else np.ascontiguousarray
    return Samples(
        features=place(to_storage(x, storage_dtype, names)),
        labels=place(labels),
        weights=place(w),
        day=place(day_numbers(index)),
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


# Keywords the engine itself passes to ``module.apply`` (``mask``: daily batches).
RESERVED_INPUTS = ("mask", "train", "rngs", "mutable")


def with_keyword_inputs(samples: Samples, **per_sample: np.ndarray) -> Samples:
    """Samples whose batches also carry ``name=array[ids]`` as module keyword inputs.

    Each array has one row per sample (e.g. the stock-to-concept row of each sample's
    instrument); the engine passes the gathered rows to ``module.apply`` by name.
    """
    arrays = {}
    for name, values in per_sample.items():
        if name in RESERVED_INPUTS:
            raise ValueError(f"{name!r} is a keyword the engine passes itself; rename the input")
        arrays[name] = jnp.asarray(np.asarray(values, np.float32))
        if arrays[name].shape[0] != samples.size:
            raise ValueError(f"{name} has {arrays[name].shape[0]} rows for {samples.size} samples")
    return samples.replace(inputs={**samples.inputs, **arrays})


def subset(samples: Samples, ids: np.ndarray, capacity: int) -> Samples:
    """The samples ``ids`` (in that order), padded to ``capacity`` rows that never count.

    Padding rows repeat the first held sample's features with a NaN label and weight 0.
    Tabular features are cut to the held rows; other layouts (window panels, the Alpha360
    gather) keep their tables whole and gather through the held rows' ids
    (:class:`SubsetTake`), since neighbouring samples share the panel's days.
    """
    ids = np.asarray(ids, np.int64)
    if len(ids) > capacity:
        raise ValueError(f"{len(ids)} samples do not fit a capacity of {capacity}")
    held = len(ids)
    rows = np.concatenate([ids, np.full(capacity - held, ids[0] if held else 0)])
    real = np.arange(capacity) < held

    def cut(values, fill=None):
        out = np.asarray(jax.device_get(values))[rows]
        if fill is not None:
            out = np.where(real.reshape((-1,) + (1,) * (out.ndim - 1)), out, fill)
        return jnp.asarray(out)

    if samples.take is take_rows:
        features, take = cut(samples.features), take_rows
    else:
        features = {"source": samples.features, "rows": jnp.asarray(rows, jnp.int32)}
        take = SubsetTake(samples.take)
    return Samples(
        features=features,
        labels=cut(samples.labels, np.nan),
        weights=cut(samples.weights, 0.0),
        day=cut(samples.day),
        take=take,
        batch_group=None if samples.batch_group is None else cut(samples.batch_group),
        inputs={name: cut(values) for name, values in samples.inputs.items()},
    )


class SubsetTake:
    """``take`` of a :func:`subset`: the wrapped ``take`` on the held rows' original ids."""

    def __init__(self, inner: Callable[[Any, jax.Array], jax.Array]):
        self.inner = inner

    def __call__(self, features: dict[str, Any], ids: jax.Array) -> jax.Array:
        return self.inner(features["source"], jnp.take(features["rows"], ids))

    def __eq__(self, other: object) -> bool:  # equal by value: a static field of programs
        return isinstance(other, SubsetTake) and other.inner == self.inner

    def __hash__(self) -> int:
        return hash((SubsetTake, self.inner))
