"""The dtype feature matrices are stored in on the device (opt-in compact storage).

The features of every sample stay on the device for the whole fit, so their bytes bound the
universe one device can train on. ``float32`` (the default) stores them as computed;
``bfloat16`` and ``float16`` store them in half the bytes. The gather (``Samples.take``) casts
each batch back to float32, so the model and its arithmetic are float32 either way: the only
difference is the rounding of the stored inputs (8 significant bits for bfloat16, 11 for
float16). Labels, weights and everything else stay float32.

``bfloat16`` keeps float32's range; ``float16`` tops out at 65504, so a finite value beyond it
would silently become inf. :func:`to_storage` refuses that and names the columns. NaN stays NaN
in every dtype (the processors and the NaN checks see them as before).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from qjax.errors import DataError

STORAGE_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
_NUMPY = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(jnp.bfloat16),
    "float16": np.dtype(np.float16),
}


def check_storage_dtype(name: str) -> str:
    """``name`` if it is one of :data:`STORAGE_DTYPES`, else a :class:`DataError` listing them."""
    if not isinstance(name, str) or name not in STORAGE_DTYPES:
        raise DataError(
            f"storage_dtype={name!r} is not one of {', '.join(STORAGE_DTYPES)}; float32 is the "
            "default, bfloat16 and float16 store the features in half the bytes"
        )
    return name


def to_storage(
    values: np.ndarray, storage_dtype: str, names: Sequence[str] | None = None
) -> np.ndarray:
    """``values`` (float32, features on the last axis) cast to ``storage_dtype`` on the host,
    after :func:`check_range` (``names``: one per last-axis entry, for its error)."""
    dtype = _NUMPY[check_storage_dtype(storage_dtype)]
    values = np.asarray(values, np.float32)
    if dtype == values.dtype:
        return values
    check_range(values, storage_dtype, names)
    return values.astype(dtype)


def check_range(values: np.ndarray, storage_dtype: str, names: Sequence[str] | None = None) -> None:
    """Raise :class:`DataError` naming the columns (last axis) whose finite values
    ``storage_dtype`` cannot hold: beyond float16's 65504 they would become inf. Cheap enough to
    run on a whole feature frame before anything is built."""
    dtype = _NUMPY[check_storage_dtype(storage_dtype)]
    flat = np.asarray(values).reshape(-1, np.shape(values)[-1])
    largest = np.zeros(flat.shape[1], np.float32)
    if flat.shape[0]:
        finite = np.isfinite(flat)  # NaN casts to NaN and inf to inf: only finite values can
        largest = np.where(finite, np.abs(flat), 0).max(axis=0).astype(np.float32)
    with np.errstate(over="ignore"):  # rounding is monotonic: the largest value decides
        overflow = np.flatnonzero(np.isinf(largest.astype(dtype)))
    if len(overflow):
        raise DataError(_overflow_message(largest, overflow, storage_dtype, names))


def _overflow_message(
    largest: np.ndarray, columns: np.ndarray, storage_dtype: str, names: Sequence[str] | None
) -> str:
    limit = float(np.finfo(_NUMPY[storage_dtype]).max)
    if names is None or len(names) != len(largest):
        names = [f"column {k}" for k in range(len(largest))]
    shown = [f"{names[k]} (|x| up to {float(largest[k]):.4g})" for k in columns[:6]]
    more = f" and {len(columns) - 6} more" if len(columns) > 6 else ""
    return (
        f"storage_dtype={storage_dtype!r} holds |x| <= {limit:g}, but feature {', '.join(shown)}"
        f"{more} exceed it and would become inf; use storage_dtype 'bfloat16' (float32's "
        "range), normalise the features first (e.g. RobustZScoreNorm with clip_outlier), or "
        "keep 'float32'"
    )
