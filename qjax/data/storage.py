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
    """``values`` (float32, features on the last axis) cast to ``storage_dtype`` on the host.

    Raises :class:`DataError` naming the columns (``names``: one per last-axis entry) whose
    finite values the dtype cannot hold (beyond float16's 65504: they would become inf).
    """
    dtype = _NUMPY[check_storage_dtype(storage_dtype)]
    values = np.asarray(values, np.float32)
    if dtype == values.dtype:
        return values
    with np.errstate(over="ignore"):  # overflow is reported below, by column
        stored = values.astype(dtype)
    overflow = np.isinf(stored) & np.isfinite(values)  # never NaN: NaN casts to NaN
    if overflow.any():
        columns = np.flatnonzero(overflow.reshape(-1, values.shape[-1]).any(axis=0))
        raise DataError(_overflow_message(values, columns, storage_dtype, names))
    return stored


def _overflow_message(
    values: np.ndarray, columns: np.ndarray, storage_dtype: str, names: Sequence[str] | None
) -> str:
    flat = values.reshape(-1, values.shape[-1])
    limit = float(np.finfo(_NUMPY[storage_dtype]).max)
    shown = []
    for k in columns[:6]:
        name = names[k] if names is not None and len(names) == flat.shape[1] else f"column {k}"
        column = flat[:, k]
        largest = float(np.max(np.abs(column[np.isfinite(column)])))
        shown.append(f"{name} (|x| up to {largest:.4g})")
    more = f" and {len(columns) - 6} more" if len(columns) > 6 else ""
    return (
        f"storage_dtype={storage_dtype!r} holds |x| <= {limit:g}, but feature {', '.join(shown)}"
        f"{more} exceed it and would become inf; use storage_dtype 'bfloat16' (float32's "
        "range), normalise the features first (e.g. RobustZScoreNorm with clip_outlier), or "
        "keep 'float32'"
    )
