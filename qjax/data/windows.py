"""Time-series windows over a (datetime, instrument) panel: Qlib's ``TSDataSampler`` on the device.

A sample is one (datetime, instrument) row present in the data; its window is the ``step_len``
trading days that end at, and include, the sample's own date. "Trading days" are the dates
present anywhere in the data (not calendar days). A (date, instrument) pair missing from the
data (suspension, late listing, a row removed by ``DropnaLabel``) is not a sample, and inside a
window it is filled as Qlib fills it:

- ``"none"``: the missing day is an all-NaN row;
- ``"ffill"``: it repeats the last present row *within the window* (NaN if there is none);
- ``"ffill+bfill"``: as ``"ffill"``, and leading gaps repeat the first present row of the window.

Filling acts on whole rows that are missing, never on NaN values inside a present row.

Layout. The data becomes a dense ``[days, instruments, columns]`` float32 panel, front-padded
with ``step_len - 1`` absent days so every window starts at a day index ``>= 0``, plus a
``[days, instruments]`` validity mask and a ``last_valid`` table (the padded day of the last
present row at or before each position, ``-1`` if none), all built once with NumPy. A window is
then one ``lax.dynamic_slice`` per sample, vectorised with ``jax.vmap`` and compiled with
``jax.jit``; the fill is a small in-window gather derived from the tables. No per-sample Python.
On the device the feature panel may be stored in a compact dtype (``storage_dtype``,
:mod:`qjax.data.storage`); each window is cast to float32 as it is gathered.

Sample order is **datetime-major** (every instrument of day 1, then day 2, ...; instruments
sorted), so a day's samples are contiguous. Qlib's ``TSDataSampler`` is instrument-major; its
``get_index()`` merely renames the levels. Here ``get_index()`` is a (datetime, instrument)
MultiIndex whose rows are in the sample order.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import lax

from qjax.data.samples import Samples, day_numbers
from qjax.data.storage import check_storage_dtype, to_storage
from qjax.errors import DataError

FILL_TYPES: tuple[str, ...] = ("ffill+bfill", "ffill", "none")


def check_fillna_type(fillna_type: str) -> str:
    if fillna_type not in FILL_TYPES:
        raise DataError(f"fillna_type={fillna_type!r} is not one of {FILL_TYPES}")
    return fillna_type


def check_step_len(step_len: int) -> int:
    if isinstance(step_len, bool) or not isinstance(step_len, (int, np.integer)) or step_len < 1:
        raise DataError(f"step_len must be a positive int, got {step_len!r}")
    return int(step_len)


# ----------------------------------------------------------------------------------------------
# The fill rule, shared by the NumPy (``__getitem__``) and the JAX (device gather) paths.
# ----------------------------------------------------------------------------------------------


def window_sources(last_valid, valid, start, fillna_type: str, xp=np):
    """Which window position each position of a window reads, and whether it reads anything.

    last_valid: [..., L] padded day of the last present row at or before each window day.
    valid:      [..., L] whether each window day is present.
    start:      [..., 1] (or scalar) padded day of the window's first position.
    Returns ``(source [..., L] int in [0, L), present [..., L] bool)``; non-present positions
    become NaN rows.
    """
    step_len = valid.shape[-1]
    own = xp.broadcast_to(xp.arange(step_len), valid.shape)
    if fillna_type == "none":
        return own, valid
    previous = last_valid - start  # < 0: no present row earlier in this window
    has_previous = previous >= 0
    if fillna_type == "ffill":
        return xp.where(has_previous, previous, 0), has_previous
    # Back-fill target: the window's first present row (the sample's own day is always present).
    first = xp.argmax(valid, axis=-1, keepdims=True)
    present = has_previous | xp.any(valid, axis=-1, keepdims=True)
    return xp.where(has_previous, previous, first), present


@partial(jax.jit, static_argnames=("step_len", "fillna_type"))
def gather_windows(
    features: dict[str, jax.Array], ids: jax.Array, *, step_len: int, fillna_type: str
) -> jax.Array:
    """Windows ``[B, step_len, F]`` float32 for sample ids ``[B]`` (see :func:`window_features`;
    the panel may be stored in a compact dtype)."""
    panel, valid, last_valid = features["panel"], features["valid"], features["last_valid"]
    n_features = panel.shape[-1]

    def one(start, inst):
        window = lax.dynamic_slice(panel, (start, inst, 0), (step_len, 1, n_features))[:, 0]
        window = window.astype(jnp.float32)  # a compact storage dtype (qjax.data.storage)
        valid_win = lax.dynamic_slice(valid, (start, inst), (step_len, 1))[:, 0]
        last_win = lax.dynamic_slice(last_valid, (start, inst), (step_len, 1))[:, 0]
        source, present = window_sources(last_win, valid_win, start, fillna_type, jnp)
        rows = jnp.take(window, source, axis=0)
        return jnp.where(present[:, None], rows, jnp.nan)

    ids = jnp.asarray(ids)
    return jax.vmap(one)(jnp.take(features["start"], ids), jnp.take(features["instrument"], ids))


@dataclasses.dataclass(frozen=True)
class WindowTake:
    """``Samples.take`` for windows: hashable and equal by value, so re-creating the samples of
    the same step_len/fill never re-traces a compiled program that holds it as a static field."""

    step_len: int
    fillna_type: str

    def __call__(self, features: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
        return gather_windows(features, ids, step_len=self.step_len, fillna_type=self.fillna_type)


# ----------------------------------------------------------------------------------------------
# Host-side tables.
# ----------------------------------------------------------------------------------------------


class PanelTables(NamedTuple):
    """Dense panel of one DataFrame, front-padded with ``step_len - 1`` absent days."""

    values: np.ndarray  # [pad + days, instruments, columns] float32, NaN where absent
    valid: np.ndarray  # [pad + days, instruments] bool
    last_valid: np.ndarray  # [pad + days, instruments] int32, -1 where nothing present yet
    dates: pd.DatetimeIndex  # [days] sorted
    instruments: pd.Index  # [instruments] sorted
    row_day: np.ndarray  # [rows] unpadded day of each DataFrame row
    row_inst: np.ndarray  # [rows] instrument of each DataFrame row


def build_panel(data: pd.DataFrame, step_len: int) -> PanelTables:
    """Scatter a (datetime, instrument)-indexed DataFrame into the padded dense panel."""
    if not isinstance(data.index, pd.MultiIndex) or not {"datetime", "instrument"} <= set(
        data.index.names
    ):
        raise DataError(
            "data needs a (datetime, instrument) MultiIndex, got index levels "
            f"{list(getattr(data.index, 'names', [data.index.name]))}"
        )
    if data.index.has_duplicates:
        dup = data.index[data.index.duplicated()][0]
        raise DataError(f"duplicate (datetime, instrument) row {dup}; each pair must appear once")
    row_dates = pd.DatetimeIndex(data.index.get_level_values("datetime"))
    row_insts = data.index.get_level_values("instrument")
    row_day, dates = pd.factorize(row_dates, sort=True)
    row_inst, instruments = pd.factorize(row_insts, sort=True)
    try:
        values = data.to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise DataError(f"data columns must be numeric to build windows: {err}") from err

    pad = step_len - 1
    n_days, n_inst = len(dates), len(instruments)
    panel = np.full((pad + n_days, n_inst, values.shape[1]), np.nan, np.float32)
    panel[pad + row_day, row_inst] = values
    valid = np.zeros((pad + n_days, n_inst), bool)
    valid[pad + row_day, row_inst] = True
    day_of = np.arange(pad + n_days, dtype=np.int32)[:, None]
    last_valid = np.maximum.accumulate(np.where(valid, day_of, -1), axis=0).astype(np.int32)
    return PanelTables(
        panel,
        valid,
        last_valid,
        pd.DatetimeIndex(dates),
        pd.Index(instruments),
        row_day.astype(np.int64),
        row_inst.astype(np.int64),
    )


def _day_bounds(dates: pd.DatetimeIndex, start, end) -> tuple[int, int]:
    """[lo, hi) day positions of dates in the inclusive [start, end] (None = unbounded)."""
    lo = 0 if start is None else int(dates.searchsorted(pd.Timestamp(start), side="left"))
    hi = len(dates) if end is None else int(dates.searchsorted(pd.Timestamp(end), side="right"))
    return lo, hi


def _column_groups(columns: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Positions of feature and label columns: two-level ``("label", name)`` columns are labels,
    every other column is a feature (single-level columns carry no label)."""
    if isinstance(columns, pd.MultiIndex):
        is_label = np.asarray(columns.get_level_values(0) == "label")
    else:
        is_label = np.zeros(len(columns), bool)
    return np.flatnonzero(~is_label), np.flatnonzero(is_label)


class WindowSampler:
    """Qlib ``TSDataSampler`` equivalent, with a device-resident jitted gather.

    data:      DataFrame indexed by (datetime, instrument); all of it is usable as window history.
    start/end: inclusive sample dates (None = unbounded).
    flt_data:  optional boolean Series/one-column DataFrame on the same index; False or missing
               rows are not samples but remain history (Qlib's ``flt_data``).
    Windows are float32 (Qlib keeps the frame's dtype, usually float64).
    storage_dtype: the device dtype of the feature panel (:mod:`qjax.data.storage`); the gather
               casts each window to float32. The NumPy ``__getitem__`` stays float32.
    """

    def __init__(
        self,
        data: pd.DataFrame,
        start=None,
        end=None,
        step_len: int = 30,
        fillna_type: str = "none",
        flt_data: pd.Series | pd.DataFrame | None = None,
        storage_dtype: str = "float32",
    ):
        self.storage_dtype = check_storage_dtype(storage_dtype)
        self.step_len = check_step_len(step_len)
        self.fillna_type = check_fillna_type(fillna_type)
        self.start, self.end = start, end
        self.columns = data.columns
        self.feature_cols, self.label_cols = _column_groups(data.columns)
        self._tables = build_panel(data, self.step_len)

        eligible = self._tables.valid[self.step_len - 1 :].copy()
        if flt_data is not None:
            eligible &= self._filter_mask(flt_data, data.index)
        lo, hi = _day_bounds(self._tables.dates, start, end)
        eligible[:lo] = False
        eligible[hi:] = False
        day, inst = np.nonzero(eligible)  # row-major: datetime-major, instruments sorted
        # Padded coordinates: the window of unpadded day d spans padded days [d, d + step_len).
        self._start = day.astype(np.int32)
        self._inst = inst.astype(np.int32)
        self._index = pd.MultiIndex.from_arrays(
            [self._tables.dates[day], self._tables.instruments[inst]],
            names=["datetime", "instrument"],
        )

    def _filter_mask(self, flt_data, index: pd.MultiIndex) -> np.ndarray:
        if isinstance(flt_data, pd.DataFrame):
            if flt_data.shape[1] != 1:
                raise DataError(f"flt_data must have one column, got {list(flt_data.columns)}")
            flt_data = flt_data.iloc[:, 0]
        flt = (
            flt_data.reorder_levels(index.names)
            if flt_data.index.names != index.names
            else flt_data
        )
        keep = flt.reindex(index).fillna(False).astype(bool).to_numpy()
        mask = np.zeros((len(self._tables.dates), len(self._tables.instruments)), bool)
        mask[self._tables.row_day, self._tables.row_inst] = keep
        return mask

    # -- Qlib-compatible interface -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._start)

    @property
    def empty(self) -> bool:
        return len(self) == 0

    def config(self, fillna_type: str | None = None) -> WindowSampler:
        """Set the fill rule (Qlib: ``config(fillna_type=...)``); returns self for chaining."""
        if fillna_type is not None:
            self.fillna_type = check_fillna_type(fillna_type)
        return self

    def get_index(self) -> pd.MultiIndex:
        """(datetime, instrument) of every sample, in sample (datetime-major) order."""
        return self._index

    def __getitem__(self, idx) -> np.ndarray:
        """Window(s) as NumPy: int -> [step_len, n_cols]; list/array -> [n, step_len, n_cols].
        Columns are the data's columns in order (the label is last for ["feature", "label"])."""
        ids = np.asarray(idx)
        if ids.ndim > 1 or not np.issubdtype(ids.dtype, np.integer):
            raise IndexError(f"sample ids must be an int or a 1-D int array, got {idx!r}")
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"sample id out of range [0, {len(self)})")
        t = self._tables
        start = self._start[ids][..., None]
        inst = self._inst[ids][..., None]
        days = start + np.arange(self.step_len)
        source, present = window_sources(
            t.last_valid[days, inst], t.valid[days, inst], start, self.fillna_type, np
        )
        windows = t.values[start + source, inst]
        return np.where(present[..., None], windows, np.float32(np.nan))

    # -- device side -------------------------------------------------------------------------------

    def window_features(self) -> dict[str, jax.Array]:
        """The device pytree read by :func:`gather_windows` (feature columns only; the panel in
        ``storage_dtype``)."""
        t = self._tables
        names = [str(c[-1]) if isinstance(c, tuple) else str(c) for c in self.columns]
        panel = to_storage(
            t.values[..., self.feature_cols],
            self.storage_dtype,
            [names[k] for k in self.feature_cols],
        )
        return {
            "panel": jnp.asarray(panel),
            "valid": jnp.asarray(t.valid),
            "last_valid": jnp.asarray(t.last_valid),
            "start": jnp.asarray(self._start),
            "instrument": jnp.asarray(self._inst),
        }

    def labels(self) -> np.ndarray:
        """[n] label at each sample's own date (NaN when the data has no label column)."""
        if len(self.label_cols) == 0:
            return np.full(len(self), np.nan, np.float32)
        if len(self.label_cols) > 1:
            raise DataError(
                f"one label column expected, got {list(self.columns[self.label_cols])}; "
                "select a single label in the handler"
            )
        own_day = self._start + self.step_len - 1
        return self._tables.values[own_day, self._inst, self.label_cols[0]]

    def samples(self, weights: np.ndarray | None = None) -> tuple[Samples, pd.MultiIndex]:
        """Device samples: ``take`` gathers feature windows [B, step_len, F] with the current
        fill rule; labels are each sample's own-date label."""
        n = len(self)
        w = (
            np.ones(n, np.float32)
            if weights is None
            else np.asarray(weights, np.float32).reshape(n)
        )
        samples = Samples(
            features=self.window_features(),
            labels=jnp.asarray(self.labels()),
            weights=jnp.asarray(w),
            day=jnp.asarray(day_numbers(self._index)),
            take=WindowTake(self.step_len, self.fillna_type),
        )
        return samples, self._index
