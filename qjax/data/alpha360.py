"""Alpha360 built inside the batch gather: the six price/volume fields stay on the device as a
panel, and each batch's 360-column rows are computed from it when the batch is gathered.

An Alpha360 row of (day t, instrument i) is ``Ref($P, lag) / $close`` for the prices P in
(close, open, high, low, vwap) and ``Ref($volume, lag) / ($volume + 1e-12)`` for the volume,
lags 59..0 (see :mod:`qjax.data.features`): a 60-day window of the fields, divided by the
window's last day. The flat path stores those 360 float32 per sample; here only the
``[instruments, days, 6]`` panel is stored (6 floats per (day, instrument) instead of 360 per
sample, ~60x less), and the processors Qlib's Alpha360 configs use become per-column constants
applied in the gather:

* ``RobustZScoreNorm``: ``(x - median) / ((MAD + 1e-12) * 1.4826)``, clipped to +-3. Median and
  MAD are fitted over the fit window's rows one column at a time
  (:func:`fit_robust_zscore`), so the [rows, 360] matrix is never built on the host either;
* ``Fillna``: NaN -> the fill value.

Rows, values and fitted constants equal the flat path's (``features.handler_frame`` ->
``DataHandler`` -> ``Dataset.samples``); ``tests/data/test_alpha360.py`` checks it.

The result is an ordinary :class:`~qjax.data.samples.Samples` whose ``take`` is
:class:`Alpha360Take`, so the training engine needs no special case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import lax

from qjax.data.dataset import Dataset, validate_segments
from qjax.data.features import ALPHA360_NAMES, LABEL, label
from qjax.data.processors import (
    EPS,
    ROBUST_CLIP,
    Fillna,
    Processor,
    RobustZScoreNorm,
    build_processor,
    robust_zscore_constants,
)
from qjax.data.qlib_binary import FieldPanel
from qjax.data.samples import Samples, day_numbers
from qjax.errors import DataError

# Alpha360's column groups in Qlib's column order (CLOSE59..CLOSE0, OPEN59..., ..., VOLUME0).
FIELDS = ("close", "open", "high", "low", "vwap", "volume")
WINDOW = 60
N_COLUMNS = len(FIELDS) * WINDOW
_VOLUME = FIELDS.index("volume")
_CLOSE = FIELDS.index("close")


class Alpha360Panel(NamedTuple):
    """The inputs of Alpha360 rows, and the handler's rows.

    values:  [instruments, WINDOW - 1 + days, 6] float32, the fields in :data:`FIELDS` order,
             front-padded with WINDOW - 1 NaN days so every window starts at day >= 0.
             Instrument-major: a window is one contiguous [60, 6] block.
    dates:   [days] the panel's calendar (history days before the handler's start included).
    instruments: [instruments] codes.
    row_day, row_inst: [rows] (unpadded day, instrument) of each handler row, datetime-major
             (the order of the flat frame's rows).
    labels:  [rows] float32 raw label (``LABEL0``) of each row.
    """

    values: np.ndarray
    dates: pd.DatetimeIndex
    instruments: tuple[str, ...]
    row_day: np.ndarray
    row_inst: np.ndarray
    labels: np.ndarray

    def index(self, rows: np.ndarray | slice = slice(None)) -> pd.MultiIndex:
        """(datetime, instrument) of the given rows."""
        return pd.MultiIndex.from_arrays(
            [self.dates[self.row_day[rows]], pd.Index(self.instruments)[self.row_inst[rows]]],
            names=["datetime", "instrument"],
        )


def alpha360_panel(fields: FieldPanel, rows: np.ndarray) -> Alpha360Panel:
    """The compact Alpha360 inputs from ``features.handler_fields`` / ``load_handler_fields``."""
    n_days, n_inst = rows.shape
    values = np.full((n_inst, WINDOW - 1 + n_days, len(FIELDS)), np.nan, np.float32)
    for k, name in enumerate(FIELDS):
        values[:, WINDOW - 1 :, k] = fields.values[name].T
    row_day, row_inst = np.nonzero(rows)  # row-major: datetime-major, as the flat frame
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        labels = label(fields)[row_day, row_inst].astype(np.float32)
    return Alpha360Panel(
        values,
        pd.DatetimeIndex(fields.dates),
        tuple(fields.instruments),
        row_day.astype(np.int32),
        row_inst.astype(np.int32),
        labels,
    )


# ----------------------------------------------------------------------------- host side
def host_columns(panel: Alpha360Panel, rows: np.ndarray) -> Iterator[np.ndarray]:
    """Alpha360 columns 0..359 (Qlib's order) at ``rows`` on the host, one at a time, float32
    (the flat path's values: the same float32 division).

    Rows are read in instrument-major order (the panel's), whatever order ``rows`` has, so a
    column is one forward pass along the panel: 0.35 s per column of 17.9M rows, median and
    MAD included (5,000 instruments x 15 years; 0.93 s reading datetime-major with per-column
    index arithmetic). For order-free statistics only.
    """
    rows = rows[np.lexsort((panel.row_day[rows], panel.row_inst[rows]))]
    flat = panel.values.reshape(-1)
    n_fields, padded_days = len(FIELDS), panel.values.shape[1]
    # Flat position of each row's window start; column (group, position) adds a constant.
    start = (panel.row_inst[rows].astype(np.int64) * padded_days + panel.row_day[rows]) * n_fields
    own = (WINDOW - 1) * n_fields
    close = flat[own + _CLOSE :][start]
    volume = flat[own + _VOLUME :][start] + np.float32(EPS)
    for column in range(N_COLUMNS):
        group, position = divmod(column, WINDOW)  # position 59 is lag 0, the row's day
        numerator = flat[position * n_fields + group :][start]  # a view: no offset array
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = numerator / (volume if group == _VOLUME else close)
        yield ratio


def fit_robust_zscore(panel: Alpha360Panel, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RobustZScoreNorm's (median, sigma) per column over ``rows`` (float32 [360] each).

    One column at a time: memory is one column of the fit rows, not [rows, 360]. The numbers
    are RobustZScoreNorm.fit's (:func:`~qjax.data.processors.robust_zscore_constants`).
    """
    median = np.empty(N_COLUMNS, np.float32)
    sigma = np.empty(N_COLUMNS, np.float32)
    for column, values in enumerate(host_columns(panel, rows)):
        center, scale, broken = robust_zscore_constants(values[:, None])
        if broken[0]:
            raise DataError(
                f"RobustZScoreNorm: infinite values dominate column {column} of the fit window "
                "(median/MAD not finite); drop the rows with a zero close or volume"
            )
        median[column], sigma[column] = center[0], scale[0]
    return median, sigma


# ----------------------------------------------------------------------------- device side
class Normalizer(NamedTuple):
    """The processors as per-column constants: ``clip((x - shift) / scale)``, NaN -> fill.

    shift/scale [360] float32 (0 and 1: no norm); clip: bound of |x| or None; fill: NaN
    replacement or None (NaN stays).
    """

    shift: np.ndarray
    scale: np.ndarray
    clip: float | None
    fill: float | None

    @classmethod
    def identity(cls) -> Normalizer:
        return cls(np.zeros(N_COLUMNS, np.float32), np.ones(N_COLUMNS, np.float32), None, None)


def _exact_divisor(divisor: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``divisor`` broadcast to ``shape`` behind an optimisation barrier: XLA rewrites a division
    by a broadcast into a multiplication by the reciprocal, which is off by an ulp (and 1/1 is
    then 0.99999994: Alpha360's CLOSE0 column, whose MAD is 0, would normalise to -3, not 0)."""
    return lax.optimization_barrier(jnp.broadcast_to(divisor, shape))


@partial(jax.jit, static_argnames=("clip", "fill"))
def gather_alpha360(
    features: dict[str, jax.Array], ids: jax.Array, *, clip: float | None, fill: float | None
) -> jax.Array:
    """Alpha360 rows ``[B, 360]`` of sample ids ``[B]``, normalised (see :class:`Normalizer`)."""
    values = features["values"]

    def one(inst, day):
        window = lax.dynamic_slice(values, (inst, day, 0), (1, WINDOW, len(FIELDS)))[0]
        own = window[-1]
        denominator = jnp.where(
            jnp.arange(len(FIELDS)) == _VOLUME, own[_VOLUME] + jnp.float32(EPS), own[_CLOSE]
        )
        ratio = window / _exact_divisor(denominator, window.shape)
        return ratio.T.reshape(N_COLUMNS)  # field-major, lag 59 first: Qlib's column order

    ids = jnp.asarray(ids)
    x = jax.vmap(one)(jnp.take(features["instrument"], ids), jnp.take(features["day"], ids))
    x = (x - features["shift"]) / _exact_divisor(features["scale"], x.shape)
    if clip is not None:
        x = jnp.clip(x, -clip, clip)
    if fill is not None:
        x = jnp.where(jnp.isnan(x), jnp.float32(fill), x)
    return x


@dataclasses.dataclass(frozen=True)
class Alpha360Take:
    """``Samples.take`` computing Alpha360 rows; hashable and equal by value (a static field of
    compiled programs, like :class:`~qjax.data.windows.WindowTake`)."""

    clip: float | None
    fill: float | None

    def __call__(self, features: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
        return gather_alpha360(features, ids, clip=self.clip, fill=self.fill)


def alpha360_samples(
    panel: Alpha360Panel,
    rows: np.ndarray,
    normalizer: Normalizer,
    labels: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    device_values: jax.Array | None = None,
) -> Samples:
    """Device samples of the handler rows ``rows`` (positions into ``panel.row_day``).

    ``labels`` default to the rows' raw labels. The device holds the panel (pass it as
    ``device_values`` to share one copy between segments), the rows' (day, instrument) and
    the 2 x 360 constants.
    """
    rows = np.asarray(rows)
    n = len(rows)
    labels = panel.labels[rows] if labels is None else np.asarray(labels, np.float32).reshape(n)
    w = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32).reshape(n)
    features = {
        "values": jnp.asarray(panel.values) if device_values is None else device_values,
        "day": jnp.asarray(panel.row_day[rows]),
        "instrument": jnp.asarray(panel.row_inst[rows]),
        "shift": jnp.asarray(normalizer.shift, jnp.float32),
        "scale": jnp.asarray(normalizer.scale, jnp.float32),
    }
    return Samples(
        features=features,
        labels=jnp.asarray(labels),
        weights=jnp.asarray(w),
        day=jnp.asarray(day_numbers(panel.index(rows))),
        take=Alpha360Take(normalizer.clip, normalizer.fill),
    )


# ----------------------------------------------------------------------------- processors
def fit_infer_processors(
    panel: Alpha360Panel, infer_processors: Sequence[Any], fit_start_time, fit_end_time
) -> tuple[Normalizer, list]:
    """The constants of Alpha360's usual infer processors fitted on the fit window's rows, and
    the processors themselves in their fitted state (what a saved run keeps: ``qjax predict``
    scores new dates with them on the flat path).

    Supported: ``[RobustZScoreNorm(fields_group="feature")]``, then ``[Fillna(fields_group=
    "feature")]``, each optional, in that order (Qlib's Alpha360 configs); anything else
    raises with the fix (the flat path runs any processors).
    """
    procs = [build_processor(spec, fit_start_time, fit_end_time) for spec in infer_processors]
    kinds = [type(p) for p in procs]
    if kinds not in ([], [RobustZScoreNorm], [Fillna], [RobustZScoreNorm, Fillna]) or any(
        p.fields_group != "feature" for p in procs
    ):
        raise DataError(
            f"Alpha360 computed in the gather supports the infer processors RobustZScoreNorm "
            f"and Fillna on fields_group 'feature' (in that order), got {procs}; use the flat "
            "path (the default) for other processors"
        )
    normalizer = Normalizer.identity()
    for proc in procs:
        if isinstance(proc, RobustZScoreNorm):
            fit_rows = _rows_between(panel, proc.fit_start_time, proc.fit_end_time)
            if not len(fit_rows):
                raise DataError(
                    f"RobustZScoreNorm: no rows between fit_start_time {proc.fit_start_time} "
                    f"and fit_end_time {proc.fit_end_time}; move the fit window into the data"
                )
            shift, scale = fit_robust_zscore(panel, fit_rows)
            proc.cols = pd.MultiIndex.from_tuples([("feature", name) for name in ALPHA360_NAMES])
            proc._shift, proc._scale = shift, scale  # as RobustZScoreNorm.fit leaves them
            normalizer = normalizer._replace(
                shift=shift, scale=scale, clip=ROBUST_CLIP if proc.clip_outlier else None
            )
        else:
            normalizer = normalizer._replace(fill=float(proc.fill_value))
    return normalizer, procs


def _rows_between(panel: Alpha360Panel, start, end) -> np.ndarray:
    """Positions of the rows dated in the inclusive [start, end] (None: unbounded)."""
    dates = panel.dates[panel.row_day]
    keep = np.ones(len(dates), bool)
    if start is not None:
        keep &= dates >= pd.Timestamp(start)
    if end is not None:
        keep &= dates <= pd.Timestamp(end)
    return np.flatnonzero(keep)


def label_frame(procs: Sequence[Processor], panel: Alpha360Panel) -> tuple[pd.Series, np.ndarray]:
    """The learn labels and the positions of their rows: the label column of every handler row
    through the learn processors, which may only read the label (DropnaLabel, CSRankNorm or
    CSZScoreNorm on ``fields_group="label"``)."""
    for proc in procs:
        if getattr(proc, "fields_group", None) != "label":
            raise DataError(
                f"Alpha360 computed in the gather supports learn processors on the label only "
                f"(fields_group='label'), got {proc!r}; use the flat path for it"
            )
    frame = pd.DataFrame(
        {("label", LABEL): panel.labels, ("position", "row"): np.arange(len(panel.labels))},
        index=panel.index(),
    )
    for proc in procs:
        proc.fit(frame)
        frame = proc(frame)
    return frame[("label", LABEL)], frame[("position", "row")].to_numpy()


# ----------------------------------------------------------------------------- dataset
class FittedProcessors(NamedTuple):
    """A handler's processors without its frames: what ``saved_run`` keeps of a handler."""

    shared_processors: list
    infer_processors: list
    learn_processors: list


class Alpha360GatherDataset(Dataset):
    """Alpha360 segments as device samples whose rows are computed in the gather.

    The counterpart of ``Dataset(DataHandler(handler_frame("Alpha360", ...), infer_processors,
    learn_processors, fit_start_time, fit_end_time), segments)`` for :meth:`samples`,
    :meth:`label` and :meth:`feature_names` (what the estimators use), with the processors
    restricted as :func:`fit_infer_processors` and :func:`label_frame` say. There is no
    feature frame: :meth:`prepare` is refused, and ``handler`` holds only the fitted processors
    (:class:`FittedProcessors`). ``panel`` comes from :func:`alpha360_panel`.
    """

    def __init__(
        self,
        panel: Alpha360Panel,
        segments,
        infer_processors: Sequence[Any] = (),
        learn_processors: Sequence[Any] = (),
        fit_start_time=None,
        fit_end_time=None,
    ):
        # No Dataset.__init__: there is no DataHandler, only the panel and fitted constants.
        self.panel = panel
        self.segments = validate_segments(segments)
        self.normalizer, infer = fit_infer_processors(
            panel, infer_processors, fit_start_time, fit_end_time
        )
        learn = [build_processor(spec, fit_start_time, fit_end_time) for spec in learn_processors]
        self.learn_labels, self.learn_rows = label_frame(learn, panel)
        self.handler = FittedProcessors([], infer, learn)
        self._device_values: jax.Array | None = None

    def _rows(self, segment: str, data_key: str) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the segment's rows and their labels in the ``data_key`` data."""
        if segment not in self.segments:
            raise KeyError(f"unknown segment {segment!r}; the dataset has {list(self.segments)}")
        if data_key not in ("raw", "infer", "learn"):
            raise KeyError(f"data_key={data_key!r} is not one of ['raw', 'infer', 'learn']")
        start, end = self.segments[segment]
        if data_key == "learn":
            rows, labels = self.learn_rows, self.learn_labels.to_numpy(np.float32)
        else:
            rows, labels = np.arange(len(self.panel.labels)), self.panel.labels
        dates = self.panel.dates[self.panel.row_day[rows]]
        inside = np.asarray((dates >= start) & (dates <= end))
        if not inside.any():
            raise DataError(
                f"segment {segment!r} ({start.date()}..{end.date()}) has no rows in the "
                f"{data_key!r} data; move the segment into the data's range"
            )
        return rows[inside], labels[inside]

    def samples(
        self, segment: str, data_key: str = "learn", label: bool = True
    ) -> tuple[Samples, pd.MultiIndex]:
        """Device samples of a segment (x: [B, 360] rows built per batch) and their index."""
        rows, labels = self._rows(segment, data_key)
        labels = labels if label else np.full(len(rows), np.nan, np.float32)
        if self._device_values is None:  # one device copy, shared by the segments' samples
            self._device_values = jnp.asarray(self.panel.values)
        samples = alpha360_samples(
            self.panel, rows, self.normalizer, labels, device_values=self._device_values
        )
        return samples, self.panel.index(rows)

    def label(self, segment: str, data_key: str = "raw") -> pd.Series:
        """The segment's labels indexed (datetime, instrument)."""
        rows, labels = self._rows(segment, data_key)
        return pd.Series(labels, index=self.panel.index(rows), name=LABEL)

    def feature_names(self, data_key: str = "learn") -> list[str]:
        return list(ALPHA360_NAMES)

    def prepare(self, segments, col_set: Any = "__all", data_key: str = "infer"):
        raise DataError(
            "an Alpha360GatherDataset computes its rows in the batch gather and has no feature "
            "frame to prepare; use samples() or label(), or the flat Dataset for frames"
        )

    def __repr__(self) -> str:
        segs = {k: (str(a.date()), str(b.date())) for k, (a, b) in self.segments.items()}
        return (
            f"Alpha360GatherDataset({len(self.panel.instruments)} instruments x "
            f"{len(self.panel.dates)} days, segments={segs})"
        )

    def check_segments(self) -> None:
        """Every segment has rows in the data it is read from (test: "infer", else "learn")."""
        for name in self.segments:
            self._rows(name, "infer" if name == "test" else "learn")
