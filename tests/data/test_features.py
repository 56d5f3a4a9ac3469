"""Alpha158/Alpha360 features: operator semantics against pandas/Qlib on tiny inputs, the
in-memory handler, and full-frame parity with Qlib's real handlers on the shared csi300 data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qjax.data import ops
from qjax.data.features import (
    ALPHA158_NAMES,
    ALPHA360_NAMES,
    handler_frame,
    load_handler,
)

# ----------------------------------------------------------------------------- operators


def _series_with_gaps(rng: np.random.Generator, length: int = 40) -> np.ndarray:
    x = rng.normal(10.0, 1.0, size=length)
    x[rng.choice(length, 6, replace=False)] = np.nan
    x[7:10] = 10.5  # a constant stretch
    return x


def _pandas_rolling(x: np.ndarray, d: int, method: str, *args) -> np.ndarray:
    return getattr(pd.Series(x).rolling(d, min_periods=1), method)(*args).to_numpy()


@pytest.mark.parametrize("d", [1, 3, 5, 12])
@pytest.mark.parametrize("method", ["sum", "mean", "std", "max", "min"])
def test_rolling_reductions_match_pandas(method, d):
    rng = np.random.default_rng(d)
    x = _series_with_gaps(rng)
    x[20] = np.inf  # pandas ignores inf inside rolling kernels
    ours = getattr(ops, f"rolling_{method}")(x[:, None], d)[:, 0]
    np.testing.assert_allclose(
        ours, _pandas_rolling(x, d, method), rtol=1e-12, atol=1e-12, equal_nan=True
    )


@pytest.mark.parametrize("d", [2, 5, 9])
def test_rolling_quantile_and_rank_match_pandas(d):
    rng = np.random.default_rng(10 + d)
    x = np.round(_series_with_gaps(rng), 1)  # ties
    for q in (0.2, 0.8):
        ours = ops.rolling_quantile(x[:, None], d, q)[:, 0]
        np.testing.assert_allclose(
            ours, _pandas_rolling(x, d, "quantile", q), rtol=1e-12, equal_nan=True
        )
    ranks = pd.Series(x).rolling(d, min_periods=1).rank(pct=True).to_numpy()
    np.testing.assert_allclose(
        ops.rolling_rank(x[:, None], d)[:, 0], ranks, rtol=1e-12, equal_nan=True
    )


@pytest.mark.parametrize("d", [3, 7])
def test_rolling_corr_matches_pandas(d):
    rng = np.random.default_rng(d)
    x, y = _series_with_gaps(rng), _series_with_gaps(rng)
    y[25] = np.inf
    expected = pd.Series(x).rolling(d, min_periods=1).corr(pd.Series(y)).to_numpy()
    np.testing.assert_allclose(
        ops.rolling_corr(x[:, None], y[:, None], d)[:, 0], expected, rtol=1e-9, equal_nan=True
    )


def test_idxmax_idxmin_follow_qlib_apply_including_nan_windows():
    """Qlib applies ``argmax()+1`` to the raw window: a NaN in the window wins."""
    x = np.array([3.0, 1.0, 4.0, np.nan, 5.0, 9.0, 2.0, 6.0, np.nan, np.nan, np.nan, 5.0])
    stored = np.ones((len(x), 1), dtype=bool)
    for d in (1, 3, 4):
        for fn, arg in ((ops.rolling_idxmax, "argmax"), (ops.rolling_idxmin, "argmin")):
            expected = (
                pd.Series(x)
                .rolling(d, min_periods=1)
                .apply(lambda w, a=arg: getattr(w, a)() + 1, raw=True)
            )
            np.testing.assert_array_equal(fn(x[:, None], d, stored)[:, 0], expected.to_numpy())


def test_idxmax_window_is_truncated_before_the_first_stored_day():
    x = np.array([np.nan, np.nan, 1.0, 3.0, 2.0])
    stored = np.array([False, False, True, True, True])[:, None]
    # The series starts at row 2: positions count from there (pandas on the stored part only).
    np.testing.assert_array_equal(ops.rolling_idxmax(x[:, None], 4, stored)[2:, 0], [1.0, 2.0, 2.0])
    np.testing.assert_array_equal(ops.rolling_idxmin(x[:, None], 4, stored)[2:, 0], [1.0, 1.0, 1.0])


def _ols_reference(y: np.ndarray, d: int) -> np.ndarray:
    """slope, r2, resi of y on positions 1..d of each window with NaN skipped (numpy polyfit)."""
    out = np.full((len(y), 3), np.nan)
    for t in range(len(y)):
        pos = np.arange(d - min(d, t + 1) + 1, d + 1, dtype=float)
        win = y[max(0, t - d + 1) : t + 1]
        ok = ~np.isnan(win)
        if ok.sum() < 2:
            continue
        slope, intercept = np.polyfit(pos[ok], win[ok], 1)
        r = np.corrcoef(pos[ok], win[ok])[0, 1]
        out[t] = slope, r * r, y[t] - (slope * d + intercept)
    return out


@pytest.mark.parametrize("d", [2, 5, 10])
def test_rolling_ols_matches_least_squares(d):
    y = _series_with_gaps(np.random.default_rng(d))
    y[7:10] = [10.1, 10.4, 10.2]
    fit = ops.rolling_ols(y[:, None], d)
    got = np.stack([fit.slope[:, 0], fit.rsquare[:, 0], fit.resi[:, 0]], axis=1)
    np.testing.assert_allclose(got, _ols_reference(y, d), rtol=1e-8, atol=1e-10, equal_nan=True)


def test_ols_matches_qlib_cython_kernels(qlib, seed):
    """Against Qlib's own compiled rolling_slope/rsquare/resi (skip the leading windows with
    fewer than two values, where Qlib's kernel divides 0 by 0).

    R^2 is 0/0 on a window of equal values: Qlib's kernel returns its running sums' rounding
    noise there (9e-15 on one draw), ours NaN, and Qlib's ``Rsquare`` operator masks such windows
    (rolling std close to 0) anyway, so R^2 is compared where that mask leaves it defined."""
    from qlib.data._libs.rolling import rolling_resi, rolling_rsquare, rolling_slope

    y = _series_with_gaps(np.random.default_rng(seed + 3), 60)
    for d in (5, 20):
        fit = ops.rolling_ols(y[:, None], d)
        flat = np.isclose(pd.Series(y).rolling(d, min_periods=1).std(), 0, atol=2e-5)
        for ours, theirs, defined in (
            (fit.slope, rolling_slope, True),
            (fit.rsquare, rolling_rsquare, ~flat),
            (fit.resi, rolling_resi, True),
        ):
            np.testing.assert_allclose(
                np.where(defined, ours[:, 0], np.nan)[2:],
                np.where(defined, theirs(y, d), np.nan)[2:],
                rtol=1e-7,
                atol=1e-9,
                equal_nan=True,
            )


def test_degenerate_windows_are_nan():
    y = np.array([5.0, 5.0, 5.0, 5.0, 6.0, 7.0])[:, None]
    r2 = ops.rsquare(y, 3)
    assert np.isnan(r2[:4, 0]).all() and np.isfinite(r2[4:, 0]).all()
    c = ops.corr(y, np.arange(6.0)[:, None], 3)
    assert np.isnan(c[:4, 0]).all() and np.isfinite(c[4:, 0]).all()


def test_ref_shifts_both_ways():
    x = np.arange(5.0)[:, None]
    np.testing.assert_array_equal(ops.ref(x, 2)[:, 0], [np.nan, np.nan, 0, 1, 2])
    np.testing.assert_array_equal(ops.ref(x, -2)[:, 0], [2, 3, 4, np.nan, np.nan])


# ----------------------------------------------------------------------------- handler_frame


def _synthetic_panel(n_days: int = 90, codes=("AAA", "BBB", "CCC"), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=n_days)
    frames = []
    for k, code in enumerate(codes):
        close = 20 * np.exp(np.cumsum(rng.normal(0, 0.02, n_days)))
        open_ = close * (1 + rng.normal(0, 0.01, n_days))
        high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.02, n_days))
        low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.02, n_days))
        volume = rng.uniform(1e5, 1e6, n_days)
        frame = pd.DataFrame(
            {
                "open": open_,
                "high": high,
                "low": low,
                "close": close,
                "volume": volume,
                "vwap": (high + low) / 2,
            },
            index=pd.MultiIndex.from_product([dates, [code]], names=["datetime", "instrument"]),
        )
        frames.append(frame.iloc[10 * k :])  # later listings
    return pd.concat(frames).sort_index()


def test_handler_frame_shapes_names_and_rows():
    panel = _synthetic_panel()
    for name, names in (("Alpha158", ALPHA158_NAMES), ("Alpha360", ALPHA360_NAMES)):
        df = handler_frame(name, panel, start_time="2021-03-01")
        assert list(df.columns) == [("feature", n) for n in names] + [("label", "LABEL0")]
        assert df.index.names == ["datetime", "instrument"]
        assert df.index.equals(panel.loc["2021-03-01":].index)
        assert (df.dtypes == np.float32).all()


def test_handler_frame_values_follow_their_definitions():
    panel = _synthetic_panel()
    df = handler_frame("Alpha158", panel, start_time="2021-03-01")
    close = panel["close"].astype(np.float32).unstack()
    high = panel["high"].astype(np.float32).unstack()
    got = df["feature"].xs("BBB", level="instrument")
    c, h = close["BBB"], high["BBB"]
    np.testing.assert_allclose(got["ROC5"], (c.shift(5) / c).loc["2021-03-01":], rtol=1e-6)
    np.testing.assert_allclose(
        got["MA10"], (c.rolling(10, 1).mean() / c).loc["2021-03-01":], rtol=1e-6
    )
    np.testing.assert_allclose(
        got["MAX20"], (h.rolling(20, 1).max() / c).loc["2021-03-01":], rtol=1e-6
    )
    label = df["label"]["LABEL0"].xs("BBB", level="instrument")
    np.testing.assert_allclose(
        label, (c.shift(-2) / c.shift(-1) - 1).loc["2021-03-01":], rtol=1e-5, atol=1e-7
    )
    # the last two days have no future close
    assert label.iloc[-2:].isna().all() and label.iloc[:-2].notna().all()


def test_handler_frame_without_vwap_gives_nan_vwap_columns():
    panel = _synthetic_panel().drop(columns="vwap")
    df = handler_frame("Alpha360", panel)
    assert df["feature"].filter(like="VWAP").isna().all().all()
    assert df["feature"]["CLOSE0"].notna().all()


def test_handler_frame_rejects_bad_input():
    panel = _synthetic_panel()
    with pytest.raises(ValueError, match="Alpha158, Alpha360"):
        handler_frame("Alpha101", panel)
    with pytest.raises(ValueError, match="volume"):
        handler_frame("Alpha158", panel.drop(columns="volume"))
    with pytest.raises(ValueError, match="MultiIndex"):
        handler_frame("Alpha158", panel.reset_index())
    with pytest.raises(ValueError, match="no trading days"):
        handler_frame("Alpha158", panel, start_time="2030-01-01")


# ----------------------------------------------------------------------------- parity with Qlib

PARITY_START, PARITY_END = "2019-07-01", "2019-12-31"
# Qlib's handlers spend their time per instrument and expression, whatever the span (a month of
# csi300's Alpha360 took as long as six): compare the csi300 market, its membership spans
# included, on the 29 members whose codes match this pattern; 10 of them enter or leave the
# index at the 2019-12-16 review inside the window.
PARITY_CODES = r"^(SH6008|SH6009|SZ0029|SZ3000)"


@pytest.fixture(scope="module", params=["Alpha158", "Alpha360"])
def qlib_and_ours(request, qlib_csi300):
    """Qlib's raw handler frame on the matching csi300 members, and ours on the whole market
    restricted to the same codes afterwards."""
    from qlib.contrib.data import handler as qlib_handlers
    from qlib.data import D
    from qlib.data.filter import NameDFilter

    market = D.instruments("csi300", filter_pipe=[NameDFilter(name_rule_re=PARITY_CODES)])
    theirs = getattr(qlib_handlers, request.param)(
        instruments=market,
        start_time=PARITY_START,
        end_time=PARITY_END,
        infer_processors=[],
        learn_processors=[],
    ).fetch(col_set=["feature", "label"], data_key="raw")
    ours = load_handler(request.param, qlib_csi300, "csi300", PARITY_START, PARITY_END)
    codes = ours.index.get_level_values("instrument")
    return theirs, ours[codes.str.match(PARITY_CODES)]


@pytest.mark.parity
@pytest.mark.shared_data
def test_handler_matches_qlib_on_csi300(qlib_and_ours):
    theirs, ours = qlib_and_ours
    assert ours.index.equals(theirs.index)
    assert ours.columns.equals(theirs.columns)
    assert (ours.dtypes == np.float32).all()
    a, b = theirs.to_numpy(np.float64), ours.to_numpy(np.float64)
    np.testing.assert_array_equal(np.isnan(b), np.isnan(a), err_msg="NaN masks differ")
    np.testing.assert_array_equal(np.isinf(b), np.isinf(a))
    finite = np.isfinite(a)
    np.testing.assert_allclose(b[finite], a[finite], rtol=1e-5, atol=1e-6)


# Suspensions (zero and NaN volume), the one NaN close of the data set, listings inside the
# history, and the calendar's first day (start_time=None): Qlib is fast on few instruments.
EDGE_CODES = ["SH600732", "SZ302132", "SH601059", "SH601995", "SH600930", "SZ001391"]


@pytest.mark.parity
@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["Alpha158", "Alpha360"])
def test_handler_matches_qlib_on_edge_instruments_over_full_history(name, qlib_csi300):
    from qlib.contrib.data import handler as qlib_handlers

    theirs = getattr(qlib_handlers, name)(
        instruments=EDGE_CODES, infer_processors=[], learn_processors=[]
    ).fetch(col_set=["feature", "label"], data_key="raw")
    ours = load_handler(name, qlib_csi300, EDGE_CODES)
    assert ours.index.equals(theirs.index) and ours.columns.equals(theirs.columns)
    a, b = theirs.to_numpy(np.float64), ours.to_numpy(np.float64)
    np.testing.assert_array_equal(np.isnan(b), np.isnan(a), err_msg="NaN masks differ")
    # Over a window of zero volume the exact Std is 0; pandas' running variance leaves a
    # round-off residue that Qlib divides by volume+1e-12 (= 1e-12), e.g. VSTD20 ~ 1e12.
    families = ours.columns.get_level_values(1).str.match(r"^(VSTD|WVMA)\d+$")
    roundoff = (b == 0) & families[None, :]
    agree = np.isclose(b, a, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert (agree | roundoff).all(), ours.columns[
        np.flatnonzero(~(agree | roundoff).all(axis=0))
    ].tolist()
    assert (~agree).sum() < 1e-4 * a.size


@pytest.mark.parity
def test_feature_names_match_qlib_loader_config(qlib):
    from qlib.contrib.data.handler import Alpha158
    from qlib.contrib.data.loader import Alpha360DL

    assert list(ALPHA360_NAMES) == Alpha360DL.get_feature_config()[1]
    assert list(ALPHA158_NAMES) == Alpha158.get_feature_config(None)[1]
