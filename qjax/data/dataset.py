"""Datasets: named date segments over a data handler (Qlib's ``DatasetH`` and ``TSDatasetH``).

``Dataset.prepare`` returns the handler's DataFrames for named segments (inclusive dates);
``TSDataset.prepare`` returns :class:`~qjax.data.windows.WindowSampler` s whose windows reach
``step_len`` trading days before the segment start, as Qlib does. ``samples`` turns a segment
into device-resident :class:`~qjax.data.samples.Samples` for the training engine.

The handler is anything with Qlib's ``DataHandlerLP.fetch`` interface (``qjax.data.handler``):
``fetch(selector, level="datetime", col_set="__all"|"feature"|"label"|[...],
data_key="raw"|"infer"|"learn")``.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import pandas as pd

from qjax.data.samples import Samples, tabular_samples
from qjax.data.storage import check_storage_dtype
from qjax.data.windows import WindowSampler, check_fillna_type, check_step_len
from qjax.errors import DataError

DateRange = tuple[pd.Timestamp, pd.Timestamp]  # a segment's first and last day, both included

# Segments with different roles must not share dates (that would leak test data into training
# or model selection). TabNet's pretraining segments duplicate train/valid, so they share roles.
SEGMENT_ROLES: dict[str, str] = {
    "train": "train",
    "pretrain": "train",
    "valid": "valid",
    "pretrain_validation": "valid",
    "test": "test",
}


class Handler(Protocol):
    def fetch(
        self,
        selector=slice(None, None),
        level: str = "datetime",
        col_set: Any = "__all",
        data_key: str = "infer",
    ) -> pd.DataFrame: ...


def _as_date(value: Any, name: str, which: str) -> pd.Timestamp:
    try:
        date = pd.Timestamp(value)
    except (TypeError, ValueError) as err:
        raise DataError(f"segment {name!r}: {which} date {value!r} is not a date ({err})") from err
    if date is pd.NaT:
        raise DataError(f"segment {name!r}: {which} date {value!r} is not a date")
    return date


def validate_segments(segments: Mapping[str, Sequence[Any]]) -> dict[str, DateRange]:
    """Parse ``{name: (start, end)}`` into Timestamps and check it (see :data:`SEGMENT_ROLES`)."""
    if not isinstance(segments, Mapping) or not segments:
        raise DataError("segments must be a non-empty {name: (start, end)} dict")
    parsed: dict[str, DateRange] = {}
    for name, seg in segments.items():
        if isinstance(seg, (str, bytes)) or not isinstance(seg, Sequence) or len(seg) != 2:
            raise DataError(f"segment {name!r} must be a (start, end) pair of dates, got {seg!r}")
        start, end = _as_date(seg[0], name, "start"), _as_date(seg[1], name, "end")
        if start > end:
            raise DataError(
                f"segment {name!r} starts after it ends ({start.date()} > {end.date()}); "
                "swap the dates"
            )
        parsed[name] = (start, end)
    named = [n for n in parsed if n in SEGMENT_ROLES]
    for k, a in enumerate(named):
        for b in named[k + 1 :]:
            if SEGMENT_ROLES[a] == SEGMENT_ROLES[b]:
                continue
            (a0, a1), (b0, b1) = parsed[a], parsed[b]
            if a0 <= b1 and b0 <= a1:
                raise DataError(
                    f"segments {a!r} ({a0.date()}..{a1.date()}) and {b!r} ({b0.date()}..{b1.date()}) "
                    "overlap; make them disjoint"
                )
    return parsed


def _date_range(df: pd.DataFrame) -> str:
    dates = df.index.get_level_values("datetime")
    return "no rows" if len(dates) == 0 else f"{dates.min().date()}..{dates.max().date()}"


class Dataset:
    """``DatasetH`` equivalent: named, inclusive date segments over a handler.

    ``storage_dtype``: the dtype :meth:`samples` stores the features in on the device,
    ``"float32"`` (the default), ``"bfloat16"`` or ``"float16"`` (half the bytes; batches are
    cast to float32 in the gather, see :mod:`qjax.data.storage`). Labels stay float32.
    """

    def __init__(
        self,
        handler: Handler,
        segments: Mapping[str, Sequence[Any]],
        storage_dtype: str = "float32",
    ):
        self.handler = handler
        self.segments = validate_segments(segments)
        self.storage_dtype = check_storage_dtype(storage_dtype)

    def __repr__(self) -> str:
        segs = {k: (str(a.date()), str(b.date())) for k, (a, b) in self.segments.items()}
        return f"{type(self).__name__}(handler={self.handler!r}, segments={segs})"

    def _segment(self, name: str) -> DateRange:
        if not isinstance(name, str) or name not in self.segments:
            raise KeyError(f"unknown segment {name!r}; the dataset has {list(self.segments)}")
        return self.segments[name]

    def _empty_error(self, name: str, col_set: Any, data_key: str, what: str = "rows") -> DataError:
        start, end = self.segments[name]
        data = self.handler.fetch(slice(None, None), col_set=col_set, data_key=data_key)
        raw = self._raw_rows(start, end) if data_key != "raw" else 0
        if raw:
            processors = getattr(self.handler, f"{data_key}_processors", None) or []
            named = ", ".join(type(p).__name__ for p in processors) or "the processors"
            return DataError(
                f"segment {name!r} ({start.date()}..{end.date()}) has {raw} rows in the raw data "
                f"but none left in the {data_key!r} data: {named} removed them all. With "
                "DropnaLabel that means every label in the segment is NaN (a label needs future "
                "prices, so the last days of the data have none); end the segment earlier or "
                "check the label"
            )
        dates = data.index.get_level_values("datetime")
        if len(dates) and start <= dates.max() and end >= dates.min() and what == "rows":
            return DataError(  # inside the data's span, but between its trading days
                f"segment {name!r} ({start.date()}..{end.date()}) holds no trading day of the "
                f"{data_key!r} data ({_date_range(data)}): a weekend or holiday? Widen the "
                "segment to include trading days"
            )
        return DataError(
            f"segment {name!r} ({start.date()}..{end.date()}) has no {what} in the {data_key!r} "
            f"data, which spans {_date_range(data)}; move the segment into the data's range"
        )

    def _raw_rows(self, start: pd.Timestamp, end: pd.Timestamp) -> int:
        try:
            return len(
                self.handler.fetch(
                    slice(start, end), level="datetime", col_set="__all", data_key="raw"
                )
            )
        except (KeyError, ValueError, TypeError):  # a handler without a raw frame
            return 0

    def _prepare_one(self, name: str, col_set: Any, data_key: str) -> pd.DataFrame:
        start, end = self._segment(name)
        df = self.handler.fetch(
            slice(start, end), level="datetime", col_set=col_set, data_key=data_key
        )
        if len(df) == 0:
            raise self._empty_error(name, col_set, data_key)
        return df

    def prepare(
        self, segments: str | Sequence[str], col_set: Any = "__all", data_key: str = "infer"
    ):
        """A segment name gives its data; a list/tuple of names gives a list (Qlib semantics)."""
        if isinstance(segments, str):
            return self._prepare_one(segments, col_set, data_key)
        if isinstance(segments, (list, tuple)):
            return [self._prepare_one(name, col_set, data_key) for name in segments]
        raise TypeError(f"segments must be a segment name or a list of names, got {segments!r}")

    def feature_names(self, data_key: str = "learn") -> list[str]:
        """The model input's column names, in order."""
        columns = self.handler.fetch(
            slice(None, None), col_set="feature", data_key=data_key
        ).columns
        return [str(c[-1]) if isinstance(c, tuple) else str(c) for c in columns]

    def label(self, segment: str, data_key: str = "raw") -> pd.Series:
        """The segment's label column indexed (datetime, instrument), for scoring predictions
        (also on a :class:`TSDataset`, whose ``prepare`` gives windows instead of rows)."""
        labels = Dataset._prepare_one(self, segment, "label", data_key)
        if labels.shape[1] != 1:
            raise DataError(
                f"one label column expected, got {list(labels.columns)}; select a single label"
            )
        return labels.iloc[:, 0]

    def samples(
        self, segment: str, data_key: str = "learn", label: bool = True, on_device: bool = True
    ) -> tuple[Samples, pd.MultiIndex]:
        """Device samples of a segment (features [n, F] in ``storage_dtype``, gathered as
        float32; labels NaN if ``label=False``) and the (datetime, instrument) index in row
        order. A feature that ``storage_dtype`` cannot hold raises :class:`DataError`.
        ``on_device=False``: the arrays stay in host numpy (``TrainConfig.stream_batches``)."""
        if label:
            df = self.prepare(segment, col_set=["feature", "label"], data_key=data_key)
            y = df["label"]
            if y.shape[1] != 1:
                raise DataError(
                    f"one label column expected, got {list(y.columns)}; select a single label"
                )
            x, y = df["feature"], y.to_numpy(np.float32)[:, 0]
        else:
            x = df = self.prepare(segment, col_set="feature", data_key=data_key)
            y = None
        names = [str(c[-1]) if isinstance(c, tuple) else str(c) for c in x.columns]
        samples = tabular_samples(
            x.to_numpy(np.float32),
            y,
            df.index,
            storage_dtype=self.storage_dtype,
            names=names,
            on_device=on_device,
        )
        return samples, df.index


class TSDataset(Dataset):
    """``TSDatasetH`` equivalent: segments become :class:`WindowSampler` s of ``step_len`` days.

    Each segment's data is fetched from ``step_len`` trading days before its start (Qlib's
    ``_extend_slice``: one more than a window needs), so the first samples have history.
    ``flt_col``: a boolean column set that removes samples while keeping their rows as history.
    ``storage_dtype``: the device dtype of the windows' feature panel (see :class:`Dataset`).
    """

    def __init__(
        self,
        handler: Handler,
        segments: Mapping[str, Sequence[Any]],
        step_len: int = 30,
        flt_col: str | None = None,
        storage_dtype: str = "float32",
    ):
        super().__init__(handler, segments, storage_dtype)
        self.step_len = check_step_len(step_len)
        self.flt_col = flt_col

    @cached_property
    def calendar(self) -> list[pd.Timestamp]:
        """Sorted trading days of the inference data (Qlib reads them from the DK_I data)."""
        data = self.handler.fetch(slice(None, None), col_set="__all", data_key="infer")
        dates = sorted(pd.DatetimeIndex(data.index.get_level_values("datetime")).unique())
        if not dates:
            raise DataError("the handler's data has no rows, so there are no trading days")
        return dates

    def _extended_start(self, start: pd.Timestamp) -> pd.Timestamp:
        cal = self.calendar
        return cal[max(0, bisect.bisect_left(cal, start) - self.step_len)]

    def check_step_len(self) -> None:
        """A window longer than the data is mostly padding, and slow to train on."""
        if self.step_len > len(self.calendar):
            raise DataError(
                f"step_len={self.step_len} is longer than the data's {len(self.calendar)} "
                "trading days, so no window holds that much history; set dataset.step_len to a "
                "window length such as Qlib's 20 or 60 days"
            )

    def _prepare_one(self, name: str, col_set: Any, data_key: str) -> WindowSampler:
        start, end = self._segment(name)
        self.check_step_len()
        history = slice(self._extended_start(start), end)
        data = self.handler.fetch(history, level="datetime", col_set=col_set, data_key=data_key)
        flt_data = None
        if self.flt_col is not None:
            flt_data = self.handler.fetch(
                history, level="datetime", col_set=self.flt_col, data_key=data_key
            )
        sampler = WindowSampler(
            data,
            start,
            end,
            self.step_len,
            flt_data=flt_data,
            storage_dtype=self.storage_dtype,
        )
        if sampler.empty:
            what = (
                "samples" if self.flt_col is None else f"samples passing flt_col={self.flt_col!r}"
            )
            raise self._empty_error(name, col_set, data_key, what)
        return sampler

    def samples(
        self,
        segment: str,
        data_key: str = "learn",
        label: bool = True,
        fillna_type: str = "ffill+bfill",
    ) -> tuple[Samples, pd.MultiIndex]:
        """Window samples of a segment (Qlib's models all use ``"ffill+bfill"``)."""
        col_set = ["feature", "label"] if label else ["feature"]
        sampler = self.prepare(segment, col_set=col_set, data_key=data_key)
        return sampler.config(fillna_type=check_fillna_type(fillna_type)).samples()
