"""Where a dataset holds values a model cannot train on: NaN and inf, per segment and column.

Used before training (inf is never trainable: the NaN-masked losses skip NaN labels, not inf)
and after a training loss turned NaN, to name the cause instead of "loss is NaN".
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

from qjax.errors import DataError


def nonfinite_columns(frame: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """``{column: (NaN count, inf count)}`` for the columns of ``frame`` holding any."""
    values = frame.to_numpy(np.float64, na_value=np.nan)
    n_nan = np.isnan(values).sum(axis=0)
    n_inf = np.isinf(values).sum(axis=0)
    names = [c[-1] if isinstance(c, tuple) else c for c in frame.columns]
    return {
        str(name): (int(a), int(b))
        for name, a, b in zip(names, n_nan, n_inf)
        if a or b
    }


def segment_frame(dataset: Any, segment: str, col_set: str, data_key: str) -> pd.DataFrame:
    """The handler rows of a segment's dates (for either kind of dataset)."""
    start, end = dataset.segments[segment]
    return dataset.handler.fetch(slice(start, end), level="datetime", col_set=col_set,
                                 data_key=data_key)


def nonfinite_report(
    dataset: Any, segments: Iterable[str] = ("train", "valid"), data_key: str = "learn",
    include_nan_labels: bool = False, limit: int = 6,
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
    return ", ".join(part for part in (f"{n_nan} NaN" * bool(n_nan), f"{n_inf} inf" * bool(n_inf))
                     if part)


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
                lines.append(f"segment {segment!r} {what}: {', '.join(infinite[:6])}"
                             + (f" and {len(infinite) - 6} more" if len(infinite) > 6 else ""))
    if lines:
        raise DataError(
            "infinite values would make the training loss inf/NaN: "
            + "; ".join(lines)
            + ". Replace them with NaN (and add a Fillna processor for features) or drop the rows"
        )
