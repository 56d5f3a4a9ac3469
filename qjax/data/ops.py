"""Qlib's expression operators, vectorised over a whole [days, instruments] panel.

Every function takes arrays of shape [T, ...] whose axis 0 is consecutive calendar days of
each instrument's series and returns float64 of the same shape. Rolling windows end at (and
include) the current row and are partial near the top of the panel, as pandas'
``rolling(d, min_periods=1)`` is near the start of a series.

The semantics are Qlib 0.9.7's (``qlib/data/ops.py``), which come from two different engines:

* pandas-backed rolling (Sum, Mean, Std, Max, Min, Quantile, Rank, IdxMax, IdxMin, Corr):
  pandas first turns +-inf into NaN, then ignores NaN inside the window; a window without any
  valid value gives NaN; ``Std`` uses ddof=1 (NaN with one value); ``Rank`` is the
  tie-averaged percentile of the current value (NaN if the current value is NaN);
  ``Quantile`` interpolates linearly; ``Corr`` uses the pairs where both sides are valid.
  ``IdxMax``/``IdxMin`` run ``argmax()+1`` on the raw window, so a NaN inside the window wins
  (numpy's argmax returns the first NaN) -- reproduced here, including the window being
  *truncated* (not NaN-padded) before the first stored day of an instrument.
* Qlib's Cython rolling (Slope, Rsquare, Resi): OLS of the values on their window positions
  1..d, skipping NaN (inf is not special).

Implementation: window reductions add shifted copies of the panel (one vectorised add per
window offset, never a loop over rows or instruments); the order statistics use
``sliding_window_view``. Window sums and second moments are formed directly in float64 from
the window's own values (two passes, no running sums carried along the series), so they are
exact up to the last bit for constant windows: where Qlib's running kernels leave round-off
(e.g. a small non-zero Std over a flat window), the exact value is returned here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def ref(x: np.ndarray, k: int) -> np.ndarray:
    """``Ref(x, k)``: the value k rows earlier (k < 0: later); NaN past the panel edge."""
    out = np.full(x.shape, np.nan, dtype=x.dtype)
    if k == 0:
        out[:] = x
    elif 0 < k < len(x):
        out[k:] = x[:-k]
    elif -len(x) < k < 0:
        out[:k] = x[-k:]
    return out


def _pandas_input(x: np.ndarray) -> np.ndarray:
    """float64 copy with +-inf as NaN, as pandas prepares values for its rolling kernels."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.isinf(x), np.nan, x)


def _window_total(v: np.ndarray, d: int) -> np.ndarray:
    """Sum of ``v`` over the last ``d`` rows (partial at the top); ``v`` must be NaN-free."""
    out = v.astype(np.float64, copy=True)
    for k in range(1, min(d, len(v))):
        out[k:] += v[:-k]
    return out


def _window_count(flags: np.ndarray, d: int) -> np.ndarray:
    """Number of True flags over the last ``d`` rows (exact integer running sums)."""
    running = np.cumsum(flags, axis=0, dtype=np.int64)
    out = running.copy()
    out[d:] -= running[:-d]
    return out


def _count_sum(x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    valid = ~np.isnan(x)
    return _window_count(valid, d), _window_total(np.where(valid, x, 0.0), d)


def _comoments(
    x: np.ndarray | None, y: np.ndarray, valid: np.ndarray, d: int, cross: bool = True
) -> tuple[np.ndarray, ...]:
    """Count, means and centred second moments of the valid (x, y) pairs of each window.

    Two passes (means first, then squared deviations from each window's own mean) keep the
    moments exact for constant windows. ``x=None`` stands for the window positions 1..d
    (current row = d); ``cross=False`` computes only n, my and syy (the rest stay 0).
    Returns n, mx, my, sxx, sxy, syy.
    """
    n_rows, offsets = len(y), range(min(d, len(y)))
    weight = valid.astype(np.float64)
    y0 = np.where(valid, y, 0.0)
    x0 = None if x is None else np.where(valid, x, 0.0)
    n = _window_count(valid, d)
    x_sum = np.zeros(y.shape)
    if cross and x is None:
        for k in offsets:
            x_sum[k:] += weight[: n_rows - k] * (d - k)
    elif cross:
        x_sum = _window_total(x0, d)
    safe_n = np.maximum(n, 1)  # empty windows: means of 0 keep the deviations NaN-free
    mx, my = x_sum / safe_n, _window_total(y0, d) / safe_n
    sxx, sxy, syy = np.zeros(y.shape), np.zeros(y.shape), np.zeros(y.shape)
    for k in offsets:
        w = weight[: n_rows - k]
        dy = (y0[: n_rows - k] - my[k:]) * w
        syy[k:] += dy * dy
        if cross:
            dx = ((d - k) - mx[k:] if x0 is None else x0[: n_rows - k] - mx[k:]) * w
            sxx[k:] += dx * dx
            sxy[k:] += dx * dy
    return n, mx, my, sxx, sxy, syy


def rolling_sum(x: np.ndarray, d: int) -> np.ndarray:
    """``Sum(x, d)``."""
    n, s = _count_sum(_pandas_input(x), d)
    return np.where(n > 0, s, np.nan)


def rolling_mean(x: np.ndarray, d: int) -> np.ndarray:
    """``Mean(x, d)``; a boolean ``x`` counts True as 1 (Qlib's CNTP/CNTN)."""
    n, s = _count_sum(_pandas_input(x), d)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / n, np.nan)


def rolling_std(x: np.ndarray, d: int) -> np.ndarray:
    """``Std(x, d)``: sample standard deviation (ddof=1) of the valid values."""
    x = _pandas_input(x)
    n, _, _, _, _, ss = _comoments(None, x, ~np.isnan(x), d, cross=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 1, np.sqrt(ss / (n - 1)), np.nan)


def _rolling_extreme(x: np.ndarray, d: int, pick) -> np.ndarray:
    x = _pandas_input(x)
    out = x.copy()
    for k in range(1, min(d, len(x))):
        out[k:] = pick(out[k:], x[:-k])  # fmax/fmin ignore NaN unless both are NaN
    return out


def rolling_max(x: np.ndarray, d: int) -> np.ndarray:
    """``Max(x, d)``."""
    return _rolling_extreme(x, d, np.fmax)


def rolling_min(x: np.ndarray, d: int) -> np.ndarray:
    """``Min(x, d)``."""
    return _rolling_extreme(x, d, np.fmin)


def _windows(x: np.ndarray, d: int, fill: float) -> np.ndarray:
    """[T, ..., d] view of the last d rows at each row, oldest first, top padded with ``fill``."""
    pad = np.full((d - 1,) + x.shape[1:], fill, dtype=x.dtype)
    return sliding_window_view(np.concatenate([pad, x]), d, axis=0)


def rolling_quantile(x: np.ndarray, d: int, q: float) -> np.ndarray:
    """``Quantile(x, d, q)``: linear interpolation between the sorted valid values (pandas)."""
    return rolling_quantiles(x, d, (q,))[0]


def rolling_quantiles(x: np.ndarray, d: int, qs: tuple[float, ...]) -> list[np.ndarray]:
    """Several ``Quantile(x, d, q)`` sharing one sort of the windows."""
    x = _pandas_input(x)
    ordered = np.sort(_windows(x, d, np.nan), axis=-1)  # NaN sort last
    n = _window_count(~np.isnan(x), d)
    results = []
    for q in qs:
        pos = q * np.maximum(n - 1, 0)
        lo = pos.astype(np.int64)
        frac = pos - lo
        v_lo = np.take_along_axis(ordered, lo[..., None], axis=-1)[..., 0]
        v_hi = np.take_along_axis(ordered, np.minimum(lo + 1, d - 1)[..., None], axis=-1)[..., 0]
        with np.errstate(invalid="ignore"):
            value = np.where(frac == 0, v_lo, v_lo + (v_hi - v_lo) * frac)
        results.append(np.where(n > 0, value, np.nan))
    return results


def rolling_rank(x: np.ndarray, d: int) -> np.ndarray:
    """``Rank(x, d)``: percentile (tie-averaged rank / count) of the current value in its window."""
    x = _pandas_input(x)
    below = np.zeros(x.shape)
    equal = np.zeros(x.shape)
    for k in range(min(d, len(x))):
        past, now = x[: len(x) - k], x[k:]
        below[k:] += past < now  # comparisons with NaN are False: NaN values do not count
        equal[k:] += past == now
    n = _window_count(~np.isnan(x), d)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isnan(x), np.nan, (below + (equal + 1) / 2) / n)


def _rolling_arg(x: np.ndarray, d: int, stored: np.ndarray, find_max: bool) -> np.ndarray:
    x = _pandas_input(x)
    # Rows before an instrument's first stored day are not in its series at all: give them a
    # value that never wins, then measure positions from the first stored row of the window.
    never = -np.inf if find_max else np.inf
    windows = _windows(np.where(stored, x, never), d, never)
    position = (np.argmax if find_max else np.argmin)(windows, axis=-1)  # first NaN wins, as numpy
    absent = _window_count(~stored, d) + np.maximum(d - 1 - np.arange(len(x)), 0).reshape(
        (-1,) + (1,) * (x.ndim - 1)
    )
    valid = _window_count(stored & ~np.isnan(x), d)
    return np.where(valid > 0, position - absent + 1.0, np.nan)


def rolling_idxmax(x: np.ndarray, d: int, stored: np.ndarray) -> np.ndarray:
    """``IdxMax(x, d)``: 1-based position of the window maximum (first NaN if any)."""
    return _rolling_arg(x, d, stored, find_max=True)


def rolling_idxmin(x: np.ndarray, d: int, stored: np.ndarray) -> np.ndarray:
    """``IdxMin(x, d)``: 1-based position of the window minimum (first NaN if any)."""
    return _rolling_arg(x, d, stored, find_max=False)


class OLSFit(NamedTuple):
    """Rolling OLS of a series on its window positions: ``Slope``, raw R^2 and ``Resi``."""

    slope: np.ndarray
    rsquare: np.ndarray
    resi: np.ndarray


def rolling_ols(y: np.ndarray, d: int) -> OLSFit:
    """Qlib's Cython ``rolling_slope`` / ``rolling_rsquare`` / ``rolling_resi`` in one pass.

    The raw R^2 is not yet masked: Qlib's ``Rsquare`` operator sets near-constant windows to
    NaN afterwards (see :func:`rsquare`).
    """
    y = np.asarray(y, dtype=np.float64)
    n, pos_mean, y_mean, sxx, sxy, syy = _comoments(None, y, ~np.isnan(y), d)
    fitted = n > 1
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = sxy / sxx
        resi = y - y_mean - slope * (d - pos_mean)
        r2 = sxy * sxy / (sxx * syy)
    return OLSFit(
        slope=np.where(fitted, slope, np.nan),
        rsquare=np.where(fitted, r2, np.nan),
        resi=np.where(fitted, resi, np.nan),
    )


def rolling_slope(y: np.ndarray, d: int) -> np.ndarray:
    """``Slope(y, d)``: OLS slope of y on its window positions."""
    return rolling_ols(y, d).slope


def rolling_resi(y: np.ndarray, d: int) -> np.ndarray:
    """``Resi(y, d)``: residual of the current value from the window's OLS line."""
    return rolling_ols(y, d).resi


def near_zero_std(x: np.ndarray, d: int) -> np.ndarray:
    """Qlib's degenerate-window test ``np.isclose(x.rolling(d, 1).std(), 0, atol=2e-5)``
    (a NaN std -- fewer than two values -- is not "close")."""
    with np.errstate(invalid="ignore"):
        return np.abs(rolling_std(x, d)) <= 2e-5


def rsquare(y: np.ndarray, d: int) -> np.ndarray:
    """``Rsquare(y, d)``: R^2, NaN where the window's std is ~0."""
    return np.where(near_zero_std(y, d), np.nan, rolling_ols(y, d).rsquare)


def rolling_corr(x: np.ndarray, y: np.ndarray, d: int) -> np.ndarray:
    """pandas ``x.rolling(d, 1).corr(y)``: Pearson correlation over the pairs valid on both sides."""
    x, y = _pandas_input(x), _pandas_input(y)
    n, _, _, sxx, sxy, syy = _comoments(x, y, ~(np.isnan(x) | np.isnan(y)), d)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 1, sxy / np.sqrt(sxx * syy), np.nan)


def corr(x: np.ndarray, y: np.ndarray, d: int) -> np.ndarray:
    """``Corr(x, y, d)``: rolling correlation, NaN where either side's own std is ~0."""
    degenerate = near_zero_std(x, d) | near_zero_std(y, d)
    return np.where(degenerate, np.nan, rolling_corr(x, y, d))
