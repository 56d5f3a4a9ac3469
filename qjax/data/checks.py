"""Where a dataset holds values a model cannot train on: NaN and inf, per segment and column.

Used before training (inf is never trainable: the NaN-masked losses skip NaN labels, not inf;
a NaN feature makes the loss NaN) and after a training loss turned NaN, to name the cause
instead of "loss is NaN". :func:`check_model_inputs` is the one check of the features a model
reads, for flat rows and for windows alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from qjax.data.samples import Samples
from qjax.errors import DataError

FILLNA_FIX = (
    "add a Fillna processor for NaN features (handler.infer_processors: "
    "- {class: Fillna, kwargs: {fields_group: feature}}), replace inf in the data, "
    "or drop those columns"
)


def nonfinite_columns(frame: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """``{column: (NaN count, inf count)}`` for the columns of ``frame`` holding any."""
    values = frame.to_numpy(np.float64, na_value=np.nan)
    n_nan = np.isnan(values).sum(axis=0)
    n_inf = np.isinf(values).sum(axis=0)
    names = [c[-1] if isinstance(c, tuple) else c for c in frame.columns]
    return {str(name): (int(a), int(b)) for name, a, b in zip(names, n_nan, n_inf) if a or b}


def segment_frame(dataset: Any, segment: str, col_set: str, data_key: str) -> pd.DataFrame:
    """The handler rows of a segment's dates (for either kind of dataset)."""
    start, end = dataset.segments[segment]
    return dataset.handler.fetch(
        slice(start, end), level="datetime", col_set=col_set, data_key=data_key
    )


def nonfinite_report(
    dataset: Any,
    segments: Iterable[str] = ("train", "valid"),
    data_key: str = "learn",
    include_nan_labels: bool = False,
    limit: int = 6,
) -> str:
    """One line per segment and column set that holds NaN/inf, e.g.
    ``segment 'train' features: KMID (12 NaN), ROC5 (3 inf)``; '' when all is finite.

    NaN labels are left out unless ``include_nan_labels`` (the losses mask them).
    """
    lines = []
    for segment in segments:
        if segment not in dataset.segments:
            continue
        for col_set, what in (("feature", "features"), ("label", "labels")):
            found = nonfinite_columns(segment_frame(dataset, segment, col_set, data_key))
            if col_set == "label" and not include_nan_labels:
                found = {k: (0, inf) for k, (_, inf) in found.items() if inf}
            if not found:
                continue
            shown = [f"{name} ({_counts(a, b)})" for name, (a, b) in list(found.items())[:limit]]
            more = f" and {len(found) - limit} more columns" if len(found) > limit else ""
            lines.append(f"segment {segment!r} {what}: {', '.join(shown)}{more}")
    return "\n".join(lines)


def _counts(n_nan: int, n_inf: int) -> str:
    return ", ".join(
        part for part in (f"{n_nan} NaN" * bool(n_nan), f"{n_inf} inf" * bool(n_inf)) if part
    )


def reject_infinite(dataset: Any, segments: Iterable[str] = ("train", "valid")) -> None:
    """Raise :class:`DataError` naming the columns if a training segment holds inf."""
    lines = []
    for segment in segments:
        if segment not in dataset.segments:
            continue
        for col_set, what in (("feature", "features"), ("label", "labels")):
            frame = segment_frame(dataset, segment, col_set, "learn")
            infinite = [k for k, (_, inf) in nonfinite_columns(frame).items() if inf]
            if infinite:
                lines.append(
                    f"segment {segment!r} {what}: {', '.join(infinite[:6])}"
                    + (f" and {len(infinite) - 6} more" if len(infinite) > 6 else "")
                )
    if lines:
        raise DataError(
            "infinite values would make the training loss inf/NaN: "
            + "; ".join(lines)
            + ". Replace them with NaN (and add a Fillna processor for features) or drop the rows"
        )


def _model_input_values(samples: Samples) -> tuple[np.ndarray, np.ndarray | None]:
    """The values a model reads from ``samples`` as a host array [..., F], and for windows the
    mask [days, instruments] of the present rows among them (None: every row counts)."""
    features = samples.features  # the model input only (keyword inputs are samples.inputs)
    if isinstance(features, dict) and "panel" in features:
        start = np.asarray(features["start"])
        lo, hi = int(start.min()), int(start.max()) + int(samples.take.step_len)
        # Absent days are NaN rows filled by the windows' fill rule: only present rows count.
        return np.asarray(features["panel"])[lo:hi], np.asarray(features["valid"])[lo:hi]
    return np.asarray(features).reshape(samples.size, -1), None


def _computed_in_gather(samples: Samples) -> bool:
    """Rows built by ``take`` from other arrays (e.g. Alpha360 from its fields panel)."""
    features = samples.features
    return isinstance(features, dict) and "panel" not in features


def _gathered_nonfinite_counts(samples: Samples, chunk: int = 1 << 15):
    """NaN and inf counts per column of rows that exist only once gathered, chunk by chunk
    (fixed-size chunks: one compiled gather; the padding of the last one is not counted)."""
    n_nan = n_inf = 0
    for lo in range(0, samples.size, chunk):
        ids = np.arange(lo, lo + chunk)
        real = ids < samples.size
        x = np.asarray(samples.take(samples.features, np.where(real, ids, 0).astype(np.int32)))
        x = x.reshape(chunk, -1)[real]
        n_nan = n_nan + np.isnan(x).sum(axis=0)
        n_inf = n_inf + np.isinf(x).sum(axis=0)
    return n_nan, n_inf


def input_nonfinite_counts(samples: Samples) -> tuple[np.ndarray, np.ndarray]:
    """Per feature column, the NaN and the inf count among the values the model reads from
    ``samples``: a flat segment's [n, F] rows, or the present panel rows its windows reach."""
    if _computed_in_gather(samples):
        return _gathered_nonfinite_counts(samples)
    values, present = _model_input_values(samples)
    nan, inf = np.isnan(values), np.isinf(values)
    if present is not None:
        nan, inf = nan & present[..., None], inf & present[..., None]
    axes = tuple(range(values.ndim - 1))
    return nan.sum(axis=axes), inf.sum(axis=axes)


def _all_finite(samples: Samples) -> bool:
    """One pass on the host (a view of a CPU device array, no copy): the common case."""
    if _computed_in_gather(samples):
        n_nan, n_inf = _gathered_nonfinite_counts(samples)
        return not (np.any(n_nan) or np.any(n_inf))
    values, present = _model_input_values(samples)
    if present is None:
        return bool(np.isfinite(values).all())
    return bool((np.isfinite(values).all(axis=-1) | ~present).all())


def check_model_inputs(
    samples: Samples,
    segment: str,
    data_key: str,
    names: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    limit: int = 6,
) -> None:
    """Raise :class:`DataError` naming the columns if the model's inputs of ``segment`` hold NaN
    or inf: a NaN input makes the loss (training) or the score (prediction) NaN. ``names``:
    the feature columns, or a function giving them (called only to write the message)."""
    if samples.size == 0 or _all_finite(samples):
        return
    n_nan, n_inf = input_nonfinite_counts(samples)
    bad = np.flatnonzero((n_nan > 0) | (n_inf > 0))
    if not len(bad):
        return
    names = names() if callable(names) else names
    if names is None or len(names) != len(n_nan):
        names = [f"column {k}" for k in range(len(n_nan))]
    shown = [f"{names[k]} ({_counts(int(n_nan[k]), int(n_inf[k]))})" for k in bad[:limit]]
    more = f" and {len(bad) - limit} more columns" if len(bad) > limit else ""
    raise DataError(
        f"segment {segment!r}: the model's input features hold NaN/inf that the processors "
        f"leave in the {data_key!r} data: {', '.join(shown)}{more}. A NaN input makes the "
        f"model's output NaN; {FILLNA_FIX}"
    )
