"""Qlib's Alpha158 and Alpha360 handlers, computed on dense [days, instruments] panels.

:func:`load_handler` reproduces ::

    Alpha360/Alpha158(instruments=..., start_time=..., end_time=...,
                      infer_processors=[], learn_processors=[]).fetch(
        col_set=["feature", "label"], data_key="raw")

on a Qlib binary data directory, without qlib: same (datetime, instrument) rows, same
two-level columns (``("feature", name)``... then ``("label", "LABEL0")``), float32 values.
:func:`handler_frame` does the same for any in-memory OHLCV panel.

What Qlib does, and this module reproduces:

* Each instrument's series covers its stored calendar days (suspended days are NaN values, not
  missing rows). A row exists for every stored day in [start_time, end_time] that lies inside a
  membership span of the market (no span filter when instruments are given as a list).
* History before start_time feeds the rolling windows (up to 60 days); the label looks 2 days
  ahead. Windows are partial (``min_periods=1``) only where the series itself starts.
* Numeric types follow Qlib's pipeline: element-wise arithmetic on the float32 fields stays
  float32, rolling operators compute in float64, and every column is cast to float32 at the
  end. This matters for cancellations such as ``$close/Ref($close,1)-1``.
* ``$vwap`` is absent from many data sets; Qlib then evaluates it to NaN, so VWAP columns are
  NaN (not an error).
* ``Mean($close>Ref($close,1), d)``: a comparison with a NaN is False, so suspended (NaN) days
  count as "not up" inside the window; days before the series starts do not count at all.

Where results can differ from Qlib: only in degenerate windows, where Qlib's running-sum
kernels (pandas' online variance, Qlib's Cython OLS sums) leave round-off that depends on how
far back the series was loaded and on the pandas version. Here window moments are computed
exactly (two passes per window). Seen on real data: a window of zero volume (suspension) has
Std exactly 0 here, while Qlib divides a round-off residue by ``$volume+1e-12`` (VSTD, WVMA of
~1e9-1e12); a close that is flat up to a few float32 ulps sits at Qlib's ``std <= 2e-5`` mask of
RSQR/CORR, and its R^2 there is round-off in Qlib.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from qjax.data import ops
from qjax.data.qlib_binary import FieldPanel, QlibBinaryData, Span, locate_range

HANDLERS = ("Alpha158", "Alpha360")
LABEL = "LABEL0"
REQUIRED_FIELDS = ("open", "high", "low", "close", "volume")
OPTIONAL_FIELDS = ("vwap",)  # NaN when absent, as in Qlib
WINDOWS = (5, 10, 20, 30, 60)
HISTORY_DAYS = 60  # longest look-back: Ref($close, 60) and 60-day windows over Ref(., 1)
FUTURE_DAYS = 2  # the label Ref($close, -2) / Ref($close, -1) - 1
_EPS = 1e-12

ALPHA158_ROLLING = (
    "ROC", "MA", "STD", "BETA", "RSQR", "RESI", "MAX", "MIN", "QTLU", "QTLD", "RANK", "RSV",
    "IMAX", "IMIN", "IMXD", "CORR", "CORD", "CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD",
    "VMA", "VSTD", "WVMA", "VSUMP", "VSUMN", "VSUMD",
)  # fmt: skip
ALPHA158_NAMES = (
    ("KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2")
    + ("OPEN0", "HIGH0", "LOW0", "VWAP0")
    + tuple(f"{family}{d}" for family in ALPHA158_ROLLING for d in WINDOWS)
)
_ALPHA360_GROUPS = ("CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME")
ALPHA360_NAMES = tuple(f"{group}{lag}" for group in _ALPHA360_GROUPS for lag in range(59, -1, -1))


def feature_names(name: str) -> tuple[str, ...]:
    """Feature column names of handler ``name`` in Qlib's order."""
    _check_handler(name)
    return ALPHA158_NAMES if name == "Alpha158" else ALPHA360_NAMES


# ----------------------------------------------------------------------------- entry points
def load_handler(
    name: str,
    provider_uri: str | os.PathLike,
    instruments: str | Sequence[str] = "csi300",
    start_time=None,
    end_time=None,
) -> pd.DataFrame:
    """Handler ``name`` ("Alpha158" or "Alpha360") on a Qlib binary data directory.

    ``instruments`` is a market name (``instruments/<market>.txt``; rows are restricted to its
    membership spans) or a list of instrument codes (every stored day is a row).
    """
    _check_handler(name)
    return _handler_frame(
        name, *load_handler_fields(provider_uri, instruments, start_time, end_time)
    )


def load_handler_fields(
    provider_uri: str | os.PathLike,
    instruments: str | Sequence[str] = "csi300",
    start_time=None,
    end_time=None,
) -> tuple[FieldPanel, np.ndarray]:
    """What :func:`load_handler` computes its columns from: the field panel (with the history
    and future days the expressions read) and the [T, N] mask of the handler's rows."""
    data = QlibBinaryData(provider_uri)
    first, last = data.locate(start_time, end_time)
    calendar = data.calendar()
    if isinstance(instruments, str):
        spans: dict[str, list[Span]] | None = data.instruments(
            instruments, calendar[first], calendar[last]
        )
        codes = list(spans)
    else:
        spans, codes = None, sorted(set(instruments))
    if not codes:
        raise ValueError(
            f"no instruments of {instruments!r} between {calendar[first].date()} and {calendar[last].date()}"
        )
    panel = data.load(
        codes,
        REQUIRED_FIELDS + OPTIONAL_FIELDS,
        first - HISTORY_DAYS,
        last + FUTURE_DAYS,
        optional=OPTIONAL_FIELDS,
    )
    rows = _in_range(panel.dates, calendar[first], calendar[last])[:, None] & _stored_any(panel)
    if spans is not None:
        rows &= _membership(panel.dates, codes, spans)
    return panel, rows


def handler_frame(name: str, panel: pd.DataFrame, start_time=None, end_time=None) -> pd.DataFrame:
    """Handler ``name`` on an in-memory panel: a DataFrame indexed by (datetime, instrument) with
    columns open, high, low, close, volume and optionally vwap (factor and others are ignored).

    The panel is treated exactly as if it were dumped to Qlib's binary format: its own sorted
    dates are the calendar, and each instrument's series runs from its first to its last row
    (dates missing in between become NaN days). Every such day in [start_time, end_time] is a row.
    """
    _check_handler(name)
    return _handler_frame(name, *handler_fields(panel, start_time, end_time))


def handler_fields(
    panel: pd.DataFrame, start_time=None, end_time=None
) -> tuple[FieldPanel, np.ndarray]:
    """What :func:`handler_frame` computes its columns from: the dense field panel and the
    [T, N] mask of the handler's rows."""
    fields = _dense_fields(panel)
    first, last = locate_range(fields.dates, start_time, end_time)
    rows = _in_range(fields.dates, fields.dates[first], fields.dates[last])[:, None] & _stored_any(
        fields
    )
    return fields, rows


# ----------------------------------------------------------------------------- features
def alpha360_columns(panel: FieldPanel) -> Iterator[tuple[str, np.ndarray]]:
    """Alpha360 columns as (name, [T, N] array): ``Ref($P, i)/$close`` for the prices and
    ``Ref($volume, i)/($volume+1e-12)``, lags 59..0, all in float32 like Qlib."""
    v = panel.values
    scale = {"VOLUME": v["volume"] + _EPS}  # float32 + 1e-12 stays float32 (== volume unless 0)
    for group in _ALPHA360_GROUPS:
        series = v[group.lower()]
        denominator = scale.get(group, v["close"])
        for lag in range(59, -1, -1):
            yield f"{group}{lag}", ops.ref(series, lag) / denominator


def alpha158_columns(panel: FieldPanel) -> Iterator[tuple[str, np.ndarray]]:
    """Alpha158 columns as (name, [T, N] array), computed window by window to bound memory."""
    v, stored = panel.values, panel.stored
    o, h, l, c, vol, vwap = (v[f] for f in ("open", "high", "low", "close", "volume", "vwap"))  # noqa: E741 (Qlib's OHLC letters)

    # kbar and price features: pure float32 arithmetic
    spread = h - l + _EPS
    body, upper, lower, shift = c - o, h - np.maximum(o, c), np.minimum(o, c) - l, 2 * c - h - l
    yield "KMID", body / o
    yield "KLEN", (h - l) / o
    yield "KMID2", body / spread
    yield "KUP", upper / o
    yield "KUP2", upper / spread
    yield "KLOW", lower / o
    yield "KLOW2", lower / spread
    yield "KSFT", shift / o
    yield "KSFT2", shift / spread
    for field, series in (("OPEN", o), ("HIGH", h), ("LOW", l), ("VWAP", vwap)):
        yield f"{field}0", series / c

    # float32 inputs of the rolling families
    c_prev, vol_prev = ops.ref(c, 1), ops.ref(vol, 1)
    close_change, vol_change = c - c_prev, vol - vol_prev
    price_ratio = c / c_prev
    up_day = np.where(
        stored["close"], c > c_prev, np.nan
    )  # False on NaN days; absent before listing
    down_day = np.where(stored["close"], c < c_prev, np.nan)
    log_volume = np.log(vol + 1)
    log_volume_ratio = np.log(vol / vol_prev + 1)
    weighted_move = np.abs(price_ratio - 1) * vol
    vol_scale = vol + _EPS
    gains = {
        "": (np.maximum(close_change, 0), np.maximum(c_prev - c, 0), np.abs(close_change)),
        "V": (np.maximum(vol_change, 0), np.maximum(vol_prev - vol, 0), np.abs(vol_change)),
    }

    for d in WINDOWS:
        std_close = ops.rolling_std(c, d)
        close_flat = np.abs(std_close) <= 2e-5  # Qlib's np.isclose(std, 0, atol=2e-5)
        fit = ops.rolling_ols(c, d)
        high_max, low_min = ops.rolling_max(h, d), ops.rolling_min(l, d)
        q_up, q_down = ops.rolling_quantiles(c, d, (0.8, 0.2))
        idx_max, idx_min = (
            ops.rolling_idxmax(h, d, stored["high"]),
            ops.rolling_idxmin(l, d, stored["low"]),
        )
        up_share, down_share = ops.rolling_mean(up_day, d), ops.rolling_mean(down_day, d)
        yield f"ROC{d}", ops.ref(c, d) / c
        yield f"MA{d}", ops.rolling_mean(c, d) / c
        yield f"STD{d}", std_close / c
        yield f"BETA{d}", fit.slope / c
        yield f"RSQR{d}", np.where(close_flat, np.nan, fit.rsquare)
        yield f"RESI{d}", fit.resi / c
        yield f"MAX{d}", high_max / c
        yield f"MIN{d}", low_min / c
        yield f"QTLU{d}", q_up / c
        yield f"QTLD{d}", q_down / c
        yield f"RANK{d}", ops.rolling_rank(c, d)
        yield f"RSV{d}", (c - low_min) / (high_max - low_min + _EPS)
        yield f"IMAX{d}", idx_max / d
        yield f"IMIN{d}", idx_min / d
        yield f"IMXD{d}", (idx_max - idx_min) / d
        yield f"CORR{d}", np.where(close_flat | ops.near_zero_std(log_volume, d), np.nan,
                                   ops.rolling_corr(c, log_volume, d))  # fmt: skip
        yield f"CORD{d}", ops.corr(price_ratio, log_volume_ratio, d)
        yield f"CNTP{d}", up_share
        yield f"CNTN{d}", down_share
        yield f"CNTD{d}", up_share - down_share
        for prefix, (gain, loss, move) in gains.items():
            gain_sum, loss_sum = ops.rolling_sum(gain, d), ops.rolling_sum(loss, d)
            total = ops.rolling_sum(move, d) + _EPS
            yield f"{prefix}SUMP{d}", gain_sum / total
            yield f"{prefix}SUMN{d}", loss_sum / total
            yield f"{prefix}SUMD{d}", (gain_sum - loss_sum) / total
        yield f"VMA{d}", ops.rolling_mean(vol, d) / vol_scale
        yield f"VSTD{d}", ops.rolling_std(vol, d) / vol_scale
        yield (
            f"WVMA{d}",
            ops.rolling_std(weighted_move, d) / (ops.rolling_mean(weighted_move, d) + _EPS),
        )


def label(panel: FieldPanel) -> np.ndarray:
    """``Ref($close, -2)/Ref($close, -1) - 1`` (float32)."""
    c = panel.values["close"]
    return ops.ref(c, -2) / ops.ref(c, -1) - 1


# ----------------------------------------------------------------------------- assembly
def _handler_frame(name: str, panel: FieldPanel, rows: np.ndarray) -> pd.DataFrame:
    names = feature_names(name)
    columns = alpha158_columns(panel) if name == "Alpha158" else alpha360_columns(panel)
    position = {n: i for i, n in enumerate(names)}
    t_idx, n_idx = np.nonzero(rows)  # row-major: sorted by datetime, then instrument
    # Column-major float32 block: each column is written once and pandas adopts it without a copy.
    out = np.empty((len(t_idx), len(names) + 1), dtype=np.float32, order="F")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for col_name, values in columns:
            out[:, position[col_name]] = values[rows]
        out[:, -1] = label(panel)[rows]
    index = pd.MultiIndex(
        levels=[panel.dates, pd.Index(panel.instruments)],
        codes=[t_idx, n_idx],
        names=["datetime", "instrument"],
    ).remove_unused_levels()
    header = pd.MultiIndex.from_tuples([("feature", n) for n in names] + [("label", LABEL)])
    return pd.DataFrame(out, index=index, columns=header, copy=False)


def _check_handler(name: str) -> None:
    if name not in HANDLERS:
        raise ValueError(f"unknown handler {name!r}; available handlers: {', '.join(HANDLERS)}")


def _in_range(dates: pd.DatetimeIndex, start: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
    return np.asarray((dates >= start) & (dates <= end))


def _stored_any(panel: FieldPanel) -> np.ndarray:
    """A (day, instrument) row exists where any field has a stored value (Qlib joins columns)."""
    return np.logical_or.reduce([panel.stored[f] for f in panel.stored])


def _membership(
    dates: pd.DatetimeIndex, codes: Sequence[str], spans: dict[str, list[Span]]
) -> np.ndarray:
    """[T, N] bool: the day lies in one of the instrument's membership spans (inclusive)."""
    column = np.concatenate([np.full(len(spans[c]), j) for j, c in enumerate(codes)])
    begin = dates.searchsorted(
        pd.DatetimeIndex([b for c in codes for b, _ in spans[c]]), side="left"
    )
    end = dates.searchsorted(
        pd.DatetimeIndex([e for c in codes for _, e in spans[c]]), side="right"
    )
    # +1 at each span start and -1 past its end; a running sum > 0 marks covered days
    edges = np.zeros((len(dates) + 1, len(codes)), dtype=np.int32)
    np.add.at(edges, (begin, column), 1)
    np.add.at(edges, (end, column), -1)
    return np.cumsum(edges, axis=0)[:-1] > 0


def _dense_fields(panel: pd.DataFrame) -> FieldPanel:
    """Pivot a (datetime, instrument)-indexed OHLCV frame into dense float32 [T, N] fields."""
    if (
        not isinstance(panel, pd.DataFrame)
        or not isinstance(panel.index, pd.MultiIndex)
        or panel.index.nlevels != 2
    ):
        raise ValueError("panel must be a DataFrame indexed by a (datetime, instrument) MultiIndex")
    if list(panel.index.names) == ["instrument", "datetime"]:
        panel = panel.swaplevel()
    missing = [f for f in REQUIRED_FIELDS if f not in panel.columns]
    if missing:
        raise ValueError(
            f"panel lacks columns {missing}; Alpha158/Alpha360 need {list(REQUIRED_FIELDS)} "
            f"(and use 'vwap' when present); got {list(panel.columns)}"
        )
    try:
        when = pd.DatetimeIndex(panel.index.get_level_values(0))
    except (TypeError, ValueError) as err:
        raise ValueError(
            "the first index level of panel must hold dates (datetime, instrument)"
        ) from err
    codes = panel.index.get_level_values(1).astype(str)
    dates, instruments = when.unique().sort_values(), codes.unique().sort_values()
    t, n = dates.get_indexer(when), instruments.get_indexer(codes)
    if len(np.unique(t.astype(np.int64) * len(instruments) + n)) != len(t):
        raise ValueError("panel has duplicate (datetime, instrument) rows")
    # Qlib's series of an instrument spans its first..last day; gaps inside are NaN days.
    first = np.full(len(instruments), len(dates))
    last = np.full(len(instruments), -1)
    np.minimum.at(first, n, t)
    np.maximum.at(last, n, t)
    day = np.arange(len(dates))[:, None]
    span = (day >= first) & (day <= last)
    values, stored = {}, {}
    for field in REQUIRED_FIELDS + OPTIONAL_FIELDS:
        dense = np.full((len(dates), len(instruments)), np.nan, dtype=np.float32)
        if field in panel.columns:
            dense[t, n] = panel[field].to_numpy(dtype=np.float32, na_value=np.nan)
        values[field] = dense
        stored[field] = span if field in panel.columns else np.zeros_like(span)
    return FieldPanel(dates=pd.DatetimeIndex(dates, name="datetime"), instruments=tuple(instruments),
                      values=values, stored=stored)  # fmt: skip
