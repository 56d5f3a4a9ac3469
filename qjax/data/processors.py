"""Qlib's data processors (``qlib/data/dataset/processor.py``) over in-memory pandas frames.

Every processor takes a DataFrame with two-level columns (``("feature", name)``, ``("label",
name)``) indexed by ``(datetime, instrument)`` and returns a new DataFrame. Class names,
constructor arguments and defaults are Qlib's, and so are the numbers, including Qlib's quirks:

* ``FilterCol`` keeps the kept columns in the frame's order, not ``col_list`` order;
* ``RobustZScoreNorm`` uses ``sigma = (MAD + 1e-12) * 1.4826`` (EPS added before scaling);
* ``CSRankNorm`` scales by 3.46, not sqrt(12);
* ``ZScoreNorm`` / ``MinMaxNorm`` leave columns with zero spread in the fit window untouched;
* ``DropnaLabel.is_for_infer()`` is False (it may only be a learn processor);
* ``TanhProcess`` skips exactly the columns whose name contains ``"LABEL"``.

Differences from Qlib, all deliberate:

* Processors never write to their input: they assemble the result from new blocks for the
  changed columns and zero-copy references to the unchanged ones, so ``readonly()`` is True
  for all of them and a handler never needs a defensive copy.
* Float columns keep their dtype (float32 stays float32; statistics accumulate in float64);
  integer columns that a processor rewrites become float64.
* Bad input raises instead of silently producing NaN: an unknown ``fields_group``, a
  ``col_list`` naming absent columns, transforming before ``fit``, a fit window with no rows.
* Infinite values. A processor raises when an inf would enter a statistic and silently turn
  finite data into NaN or garbage; it passes inf through, exactly as Qlib does, when the
  result stays meaningful:

  - raise: ``ZScoreNorm`` and ``MinMaxNorm`` (inf in the fit window makes the mean/std/max of
    the whole column non-finite), ``CSZScoreNorm(method="zscore")`` (one inf turns that day's
    column into NaN), ``CSZFillna`` (only where a NaN would be filled with an inf-polluted
    mean), ``RobustZScoreNorm`` (only where the infs make the fitted median or MAD
    non-finite: a minority of infs leaves both finite, and Qlib's benchmark configs rely on
    that by applying it to raw features without ``ProcessInf``).
  - pass through: ``ProcessInf`` (it removes them), ``TanhProcess`` (tanh(inf) = 1),
    ``CSRankNorm`` (inf ranks last), ``CSZScoreNorm(method="robust")`` (median/MAD are
    robust; inf clips to +-3), ``Fillna`` / ``Dropna*`` / ``DropCol`` / ``FilterCol``
    (they do not compute on values), and inf *outside* a norm's fit window (it maps to
    +-inf, or +-3 when clipped).

The cure in every error message is the same: put ``ProcessInf`` first.
"""

from __future__ import annotations

import abc
import contextlib
import difflib
import importlib
import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from qjax.errors import DataError

__all__ = [
    "NotFittedError",
    "Processor",
    "DropnaProcessor",
    "DropnaLabel",
    "DropCol",
    "FilterCol",
    "TanhProcess",
    "ProcessInf",
    "Fillna",
    "MinMaxNorm",
    "ZScoreNorm",
    "RobustZScoreNorm",
    "CSZScoreNorm",
    "CSRankNorm",
    "CSZFillna",
    "PROCESSORS",
    "build_processor",
]

EPS = 1e-12  # qlib.constant.EPS
MAD_TO_STD = 1.4826  # MAD of a normal distribution times this is its standard deviation
CS_RANK_SCALE = 3.46  # Qlib's approximation of 1 / std(U(0, 1)) = sqrt(12) = 3.4641
DATETIME = "datetime"


class NotFittedError(ValueError):
    """A processor with learned statistics was applied before ``fit``."""


# --------------------------------------------------------------------------- helpers


def _column_groups(df: pd.DataFrame) -> list:
    if not isinstance(df.columns, pd.MultiIndex):
        return []
    return list(dict.fromkeys(df.columns.get_level_values(0)))


def _group_positions(df: pd.DataFrame, group: str | None, who: str) -> np.ndarray:
    """Positions of the columns in ``group`` (first column level); all columns for None."""
    if group is None:
        return np.arange(df.shape[1])
    if not isinstance(df.columns, pd.MultiIndex):
        raise DataError(
            f"{who}: fields_group={group!r} needs two-level columns such as ('feature', name), "
            f"but the frame has single-level columns; pass fields_group=None or a two-level frame"
        )
    positions = np.flatnonzero(df.columns.get_level_values(0) == group)
    if positions.size == 0:
        raise KeyError(
            f"{who}: fields_group={group!r} is not a column group of the frame; "
            f"available groups: {_column_groups(df)}"
        )
    return positions


def _as_indexer(positions: np.ndarray) -> slice | np.ndarray:
    """A contiguous run of positions as a slice, so pandas can return a view instead of a take."""
    if positions.size and (np.diff(positions) == 1).all():
        return slice(int(positions[0]), int(positions[-1]) + 1)
    return positions


def _float_dtype(df: pd.DataFrame, positions: np.ndarray) -> np.dtype:
    dtype = np.result_type(*df.dtypes.iloc[positions].unique())
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def _float_block(df: pd.DataFrame, positions: np.ndarray) -> np.ndarray:
    """A fresh, writable float array of the given columns (one copy, never a view of ``df``)."""
    sub = df.iloc[:, _as_indexer(positions)]
    return sub.to_numpy(dtype=_float_dtype(df, positions), copy=True)


def _with_columns(
    df: pd.DataFrame, positions: np.ndarray, values: np.ndarray | pd.DataFrame
) -> pd.DataFrame:
    """``df`` with the columns at ``positions`` replaced by ``values``; ``df`` itself is untouched.

    Unchanged columns are concatenated as zero-copy references (pandas copy-on-write), so the
    cost is one block for the new values, not a copy of the whole frame.
    """
    if positions.size == 0:
        return df.copy(deep=False)
    if isinstance(values, pd.DataFrame):
        new = values.set_axis(df.columns[positions], axis=1)
    else:
        new = pd.DataFrame(values, index=df.index, columns=df.columns[positions])
    n_cols = df.shape[1]
    if positions.size == n_cols:
        return new
    is_new = np.zeros(n_cols, dtype=bool)
    is_new[positions] = True
    bounds = np.flatnonzero(np.diff(is_new.astype(np.int8))) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, n_cols]
    pieces, taken = [], 0
    for start, end in zip(starts, ends):
        if is_new[start]:
            pieces.append(new.iloc[:, taken : taken + end - start])
            taken += end - start
        else:
            pieces.append(df.iloc[:, start:end])
    out = pd.concat(pieces, axis=1)
    out.columns = df.columns
    return out


def _datetime_values(df: pd.DataFrame, who: str) -> pd.Index:
    if DATETIME not in (df.index.names or []):
        raise KeyError(
            f"{who}: the frame's index has no {DATETIME!r} level (index names: {list(df.index.names)}); "
            f"index it by (datetime, instrument)"
        )
    return df.index.get_level_values(DATETIME)


def _by_datetime(frame: pd.DataFrame, who: str):
    _datetime_values(frame, who)
    return frame.groupby(level=DATETIME, sort=False)


def _fit_window(df: pd.DataFrame, start: Any, end: Any, who: str) -> pd.DataFrame:
    """Rows whose datetime lies in [start, end] (both inclusive, pandas label-slice semantics)."""
    dates = _datetime_values(df, who)
    if start is None and end is None:
        window = df
    elif dates.is_monotonic_increasing:
        lo, hi = dates.slice_locs(start, end)
        window = df.iloc[lo:hi]
    else:
        unique = pd.Index(dates.unique()).sort_values()
        lo, hi = unique.slice_locs(start, end)
        window = df[dates.isin(unique[lo:hi])]
    if window.shape[0] == 0:
        span = f"{dates.min()} .. {dates.max()}" if len(dates) else "nothing (empty frame)"
        raise DataError(
            f"{who}: fit window [fit_start_time={start}, fit_end_time={end}] selects no rows; "
            f"the data covers {span}. Choose fit dates inside the data."
        )
    return window


def _column_names(columns: pd.Index, mask: np.ndarray, limit: int = 5) -> str:
    names = [c for c, bad in zip(columns, mask) if bad]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


def _raise_inf(who: str, columns: pd.Index, mask: np.ndarray, where: str) -> None:
    raise DataError(
        f"{who}: infinite values {where} in column(s) {_column_names(columns, mask)}; they would turn "
        f"finite data into NaN. Put ProcessInf before {who} (it replaces inf by the day's mean)."
    )


@contextlib.contextmanager
def _quiet():
    """Silence all-NaN / divide-by-zero warnings: Qlib's NaN and +-inf outputs there are intended."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# --------------------------------------------------------------------------- base


class Processor(abc.ABC):
    """Qlib's processor interface: ``fit(df)`` learns state, ``__call__(df)`` returns a new frame."""

    def fit(self, df: pd.DataFrame | None = None) -> None:  # noqa: B027 (stateless by default)
        """Learn statistics from ``df`` (the previous processor's output). Stateless by default."""

    @abc.abstractmethod
    def __call__(self, df: pd.DataFrame) -> pd.DataFrame: ...

    def is_for_infer(self) -> bool:
        """Whether the processor may run at inference time (in infer/shared processor lists)."""
        return True

    def readonly(self) -> bool:
        """Whether the input frame is left unmodified; True for every qjax processor."""
        return True

    def __repr__(self) -> str:
        params = inspect.signature(type(self)).parameters
        args = ", ".join(f"{name}={getattr(self, name, None)!r}" for name in params)
        return f"{type(self).__name__}({args})"


class _FittedNorm(Processor):
    """Shared plumbing of the fit-window normalisers: x <- (x - shift) / scale per fitted column."""

    _shift: np.ndarray | None = None
    _scale: np.ndarray | None = None

    def __init__(self, fit_start_time: Any, fit_end_time: Any, fields_group: str | None = None):
        self.fit_start_time = fit_start_time
        self.fit_end_time = fit_end_time
        self.fields_group = fields_group

    def _window_values(self, df: pd.DataFrame) -> np.ndarray:
        """The fit window's values of ``fields_group``; remembers the columns for ``__call__``."""
        window = _fit_window(df, self.fit_start_time, self.fit_end_time, type(self).__name__)
        positions = _group_positions(window, self.fields_group, type(self).__name__)
        self.cols = window.columns[positions]
        return window.iloc[:, _as_indexer(positions)].to_numpy()

    def _finish(self, block: np.ndarray) -> None:
        """In-place post-processing of the normalised block (e.g. clipping)."""

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        who = type(self).__name__
        if self._shift is None:
            raise NotFittedError(f"{who} must be fitted before it is applied: call .fit(df) first")
        positions = df.columns.get_indexer(self.cols)
        if (positions < 0).any():
            raise KeyError(
                f"{who}: column(s) {_column_names(self.cols, positions < 0)} seen in fit are missing "
                f"from the frame being transformed"
            )
        order = np.argsort(positions)  # the frame's column order may differ from the fit's
        positions = positions[order]
        block = _float_block(df, positions)
        with _quiet():
            block -= self._shift[order].astype(block.dtype)
            block /= self._scale[order].astype(block.dtype)
            self._finish(block)
        return _with_columns(df, positions, block)


# --------------------------------------------------------------------------- row / column filters


class DropnaProcessor(Processor):
    """Drop rows with a NaN in any column of ``fields_group`` (all columns when None)."""

    def __init__(self, fields_group: str | None = None):
        self.fields_group = fields_group

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        positions = _group_positions(df, self.fields_group, type(self).__name__)
        has_nan = df.iloc[:, _as_indexer(positions)].isna().to_numpy().any(axis=1)
        return df[~has_nan] if has_nan.any() else df.copy(deep=False)


class DropnaLabel(DropnaProcessor):
    """Drop rows whose label is NaN; learn-only, since inference has no labels."""

    def __init__(self, fields_group: str | None = "label"):
        super().__init__(fields_group=fields_group)

    def is_for_infer(self) -> bool:
        return False


class DropCol(Processor):
    """Drop every column whose last-level name is in ``col_list``."""

    def __init__(self, col_list: Sequence[str] = ()):
        self.col_list = list(col_list)

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        names = df.columns.get_level_values(-1)
        absent = [c for c in self.col_list if c not in set(names)]
        if absent:
            raise KeyError(
                f"DropCol: column(s) {absent} are not in the frame; remove them from col_list"
            )
        return df.loc[:, ~names.isin(self.col_list)]


class FilterCol(Processor):
    """Keep the ``col_list`` columns of ``fields_group`` plus every column outside the group.

    Kept columns stay in the frame's order (Qlib). Matching is by last-level name, so a name
    outside the group that also occurs inside it is kept only if listed (Qlib's set logic).
    """

    def __init__(self, fields_group: str | None = "feature", col_list: Sequence[str] = ()):
        self.fields_group = fields_group
        self.col_list = list(col_list)

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        names = df.columns.get_level_values(-1)
        group_names = names[_group_positions(df, self.fields_group, "FilterCol")]
        absent = [c for c in self.col_list if c not in set(group_names)]
        if absent:
            raise KeyError(
                f"FilterCol: column(s) {absent} are not in fields_group={self.fields_group!r}; "
                f"remove them from col_list"
            )
        keep = set(names).difference(group_names).union(self.col_list)
        return df.loc[:, names.isin(list(keep))]


# --------------------------------------------------------------------------- element-wise


class TanhProcess(Processor):
    """x <- tanh(x - 1) on every column whose name does not contain ``"LABEL"``.

    Qlib's rule: a label named by its expression (as in the benchmark YAMLs) is squashed too.
    """

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        if not isinstance(df.columns, pd.MultiIndex):
            raise DataError("TanhProcess needs two-level columns such as ('feature', name)")
        names = pd.Index(df.columns.get_level_values(1).astype(str))
        positions = np.flatnonzero(~names.str.contains("LABEL", regex=False))
        block = _float_block(df, positions)
        block -= 1
        np.tanh(block, out=block)
        return _with_columns(df, positions, block)


class ProcessInf(Processor):
    """Replace +-inf by the mean of that day's non-inf values in the column (all columns).

    A day whose column has no finite value gets NaN. The output is sorted by index (Qlib).
    """

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        numeric = np.flatnonzero([pd.api.types.is_float_dtype(dt) for dt in df.dtypes])
        has_inf = (
            np.isinf(df.iloc[:, _as_indexer(numeric)].to_numpy()).any(axis=0)
            if numeric.size
            else []
        )
        positions = numeric[np.asarray(has_inf, dtype=bool)]
        out = df.copy(deep=False)
        if positions.size:
            sub = df.iloc[:, positions]
            is_inf = np.isinf(sub.to_numpy())
            day_mean = _by_datetime(sub.mask(is_inf), "ProcessInf").transform("mean")
            out = _with_columns(df, positions, sub.mask(is_inf, day_mean))
        return out if out.index.is_monotonic_increasing else out.sort_index()


class Fillna(Processor):
    """Fill NaN in ``fields_group`` (all columns when None) with ``fill_value``."""

    def __init__(self, fields_group: str | None = None, fill_value: Any = 0):
        self.fields_group = fields_group
        self.fill_value = fill_value

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        positions = _group_positions(df, self.fields_group, "Fillna")
        sub = df.iloc[:, _as_indexer(positions)]
        return _with_columns(df, positions, sub.fillna(self.fill_value))


# --------------------------------------------------------------------------- fit-window norms


class MinMaxNorm(_FittedNorm):
    """(x - min) / (max - min) with NaN-skipping min/max over the fit window.

    Columns with min == max in the window are left untouched.
    """

    def fit(self, df: pd.DataFrame | None = None) -> None:
        values = self._window_values(df)
        is_inf = np.isinf(values)
        if is_inf.any():
            _raise_inf("MinMaxNorm", self.cols, is_inf.any(axis=0), "in the fit window")
        with _quiet():
            low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        constant = low == high
        low, high = np.where(constant, 0.0, low), np.where(constant, 1.0, high)
        self._shift, self._scale = low, high - low


class ZScoreNorm(_FittedNorm):
    """(x - mean) / std with NaN-skipping mean and population std (ddof=0) over the fit window.

    Columns with std == 0 in the window are left untouched.
    """

    def fit(self, df: pd.DataFrame | None = None) -> None:
        values = self._window_values(df)
        is_inf = np.isinf(values)
        if is_inf.any():
            _raise_inf("ZScoreNorm", self.cols, is_inf.any(axis=0), "in the fit window")
        with _quiet():
            mean = np.nanmean(values, axis=0, dtype=np.float64)
            std = np.nanstd(values, axis=0, dtype=np.float64)
        constant = std == 0
        self._shift, self._scale = np.where(constant, 0.0, mean), np.where(constant, 1.0, std)


class RobustZScoreNorm(_FittedNorm):
    """(x - median) / ((MAD + 1e-12) * 1.4826) over the fit window, then clip to [-3, 3].

    MAD = NaN-skipping median of |x - median|. Qlib adds EPS *before* the 1.4826 scaling.
    """

    def __init__(
        self,
        fit_start_time: Any,
        fit_end_time: Any,
        fields_group: str | None = None,
        clip_outlier: bool = True,
    ):
        super().__init__(fit_start_time, fit_end_time, fields_group)
        self.clip_outlier = clip_outlier

    def fit(self, df: pd.DataFrame | None = None) -> None:
        median, sigma, broken = robust_zscore_constants(self._window_values(df))
        if broken.any():
            _raise_inf(
                "RobustZScoreNorm",
                self.cols,
                broken,
                "dominate the fit window (median/MAD not finite)",
            )
        self._shift, self._scale = median, sigma

    def _finish(self, block: np.ndarray) -> None:
        if self.clip_outlier:
            np.clip(block, -ROBUST_CLIP, ROBUST_CLIP, out=block)


ROBUST_CLIP = 3.0  # RobustZScoreNorm's bound with clip_outlier


def robust_zscore_constants(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RobustZScoreNorm's fit per column of ``values`` [rows, cols]: (median, sigma, broken).

    NaN-skipping median and MAD, sigma = (MAD + EPS) * MAD_TO_STD; ``broken`` marks columns
    whose infinite values leave the median or MAD not finite. Also used column by column where
    the [rows, cols] matrix is never built (:mod:`qjax.data.alpha360`).
    """
    with _quiet():
        median = np.nanmedian(values, axis=0)
        mad = np.nanmedian(np.abs(values - median), axis=0)
    broken = np.isinf(values).any(axis=0) & ~(np.isfinite(median) & np.isfinite(mad))
    sigma = mad + EPS
    sigma *= MAD_TO_STD
    return median, sigma, broken


# --------------------------------------------------------------------------- cross-sectional


def _cs_zscore(block: np.ndarray, frame: pd.DataFrame, who: str) -> np.ndarray:
    """(x - day mean) / day std (ddof=1), per column, NaN-skipping."""
    is_inf = np.isinf(block)
    if is_inf.any():
        _raise_inf(who, frame.columns, is_inf.any(axis=0), "(method='zscore')")
    grouped = _by_datetime(frame, who)
    mean = grouped.transform("mean").to_numpy(dtype=block.dtype)
    std = grouped.transform("std").to_numpy(dtype=block.dtype)
    block -= mean
    block /= std
    return block


def _cs_robust_zscore(block: np.ndarray, frame: pd.DataFrame, who: str) -> np.ndarray:
    """clip((x - day median) / day MAD / 1.4826, -3, 3), per column, NaN-skipping."""
    median = _by_datetime(frame, who).transform("median").to_numpy(dtype=block.dtype)
    block -= median
    deviation = pd.DataFrame(np.abs(block), index=frame.index)
    mad = _by_datetime(deviation, who).transform("median").to_numpy(dtype=block.dtype)
    block /= mad
    block /= MAD_TO_STD
    np.clip(block, -3, 3, out=block)
    return block


class CSZScoreNorm(Processor):
    """Per-datetime z-score of each column of ``fields_group`` (a name, a list of names, or None).

    ``method="zscore"``: (x - mean) / std with ddof=1; ``method="robust"``:
    clip((x - median) / MAD / 1.4826, -3, 3).
    """

    _METHODS = {"zscore": _cs_zscore, "robust": _cs_robust_zscore}

    def __init__(self, fields_group: str | list[str] | None = None, method: str = "zscore"):
        if method not in self._METHODS:
            raise DataError(f"CSZScoreNorm: method={method!r} is not one of {list(self._METHODS)}")
        self.fields_group = fields_group
        self.method = method

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        groups = self.fields_group if isinstance(self.fields_group, list) else [self.fields_group]
        out = df
        for group in groups:
            positions = _group_positions(out, group, "CSZScoreNorm")
            frame = out.iloc[:, _as_indexer(positions)]
            block = frame.to_numpy(dtype=_float_dtype(out, positions), copy=True)
            with _quiet():
                block = self._METHODS[self.method](block, frame, "CSZScoreNorm")
            out = _with_columns(out, positions, block)
        return out if out is not df else df.copy(deep=False)


class CSRankNorm(Processor):
    """Per-datetime ``(rank(pct=True) - 0.5) * 3.46`` (ties averaged, NaN kept) on ``fields_group``."""

    def __init__(self, fields_group: str | None = None):
        self.fields_group = fields_group

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        positions = _group_positions(df, self.fields_group, "CSRankNorm")
        frame = df.iloc[:, _as_indexer(positions)]
        rank = _by_datetime(frame, "CSRankNorm").rank(pct=True)
        block = rank.to_numpy(dtype=_float_dtype(df, positions), copy=True)
        block -= 0.5
        block *= CS_RANK_SCALE
        return _with_columns(df, positions, block)


class CSZFillna(Processor):
    """Fill NaN in ``fields_group`` with that day's cross-sectional mean of the column."""

    def __init__(self, fields_group: str | None = None):
        self.fields_group = fields_group

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        positions = _group_positions(df, self.fields_group, "CSZFillna")
        frame = df.iloc[:, _as_indexer(positions)]
        block = frame.to_numpy(dtype=_float_dtype(df, positions), copy=True)
        day_mean = _by_datetime(frame, "CSZFillna").transform("mean").to_numpy(dtype=block.dtype)
        missing = np.isnan(block)
        is_inf = np.isinf(block)
        if is_inf.any():
            # Only a fill value polluted by an inf of the same day and column is an error.
            day_has_inf = _by_datetime(
                pd.DataFrame(is_inf, index=frame.index), "CSZFillna"
            ).transform("any")
            polluted = missing & day_has_inf.to_numpy() & ~np.isfinite(day_mean)
            if polluted.any():
                _raise_inf(
                    "CSZFillna", frame.columns, polluted.any(axis=0), "on days with NaN to fill"
                )
        block[missing] = day_mean[missing]
        return _with_columns(df, positions, block)


# --------------------------------------------------------------------------- construction

PROCESSORS: dict[str, type[Processor]] = {
    cls.__name__: cls
    for cls in (
        DropnaProcessor,
        DropnaLabel,
        DropCol,
        FilterCol,
        TanhProcess,
        ProcessInf,
        Fillna,
        MinMaxNorm,
        ZScoreNorm,
        RobustZScoreNorm,
        CSZScoreNorm,
        CSRankNorm,
        CSZFillna,
    )
}

_FIT_TIMES = ("fit_start_time", "fit_end_time")


def _is_processor_instance(obj: Any) -> bool:
    """Any object with Qlib's processor interface (qjax's or Qlib's own instances)."""
    return not isinstance(obj, type) and callable(obj) and callable(getattr(obj, "fit", None))


def _resolve_class(name: Any, module_path: str | None) -> type:
    if isinstance(name, type):
        return name
    if not isinstance(name, str):
        raise TypeError(f"processor class must be a name or a class, got {type(name).__name__}")
    # Qlib configs name Qlib's own module: its classes map to ours. Other classes are imported.
    if name in PROCESSORS and (module_path is None or module_path.startswith("qlib.")):
        return PROCESSORS[name]
    if module_path is None:
        raise KeyError(
            f"unknown processor {name!r}{_closest(name, PROCESSORS)}; available: "
            f"{sorted(PROCESSORS)}"
        )
    module = importlib.import_module(module_path)
    if not hasattr(module, name):
        raise KeyError(f"module {module_path!r} has no processor class {name!r}")
    return getattr(module, name)


def build_processor(spec: Any, fit_start_time: Any = None, fit_end_time: Any = None) -> Processor:
    """A processor from an instance, a class name, or ``{"class": ..., "kwargs": {...}}``.

    Qlib's ``"module_path"`` key is accepted: Qlib's own module maps to the qjax classes, any
    other module is imported. Like Qlib's handlers, non-None ``fit_start_time`` /
    ``fit_end_time`` are injected into (and override) the kwargs of every class whose
    constructor takes both; instances are returned unchanged.
    """
    if _is_processor_instance(spec):
        return spec
    if isinstance(spec, (str, type)):
        spec = {"class": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"cannot build a processor from {spec!r}: give an instance, a class name or a dict"
        )
    unknown = set(spec) - {"class", "kwargs", "module_path"}
    if "class" not in spec or unknown:
        raise DataError(
            f"processor spec {dict(spec)!r} must have a 'class' key and only 'kwargs'/'module_path' besides"
        )
    cls = _resolve_class(spec["class"], spec.get("module_path"))
    kwargs = dict(spec.get("kwargs") or {})
    params = inspect.signature(cls).parameters
    if all(name in params for name in _FIT_TIMES):
        for name, value in zip(_FIT_TIMES, (fit_start_time, fit_end_time)):
            if value is not None:
                kwargs[name] = value
        missing = [
            name
            for name in _FIT_TIMES
            if name not in kwargs and params[name].default is inspect._empty
        ]
        if missing:
            raise DataError(
                f"{cls.__name__} needs {missing}: set them in its kwargs or pass "
                f"fit_start_time/fit_end_time to the handler"
            )
    bad = [
        k
        for k in kwargs
        if k not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values())
    ]
    if bad:
        raise TypeError(
            f"{cls.__name__} got unknown argument(s) {bad}{_closest(bad[0], params)}; it takes "
            f"{list(params)}"
        )
    return cls(**kwargs)


def _closest(name: str, candidates) -> str:
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
