"""The synthetic market: format, stylised facts, determinism and the planted signal.

The signal tests re-derive everything from the published frame alone (closes and volumes,
forward-filled over suspensions), so they also check that the documented signal really is
computable from past prices and volumes.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
import pytest

from qjax.data.market import generate_concepts, generate_market

FIELDS = ["open", "high", "low", "close", "volume", "vwap", "factor"]


@pytest.fixture(scope="module")
def timed_market():
    start = time.perf_counter()
    frame = generate_market()
    return frame, time.perf_counter() - start


@pytest.fixture(scope="module")
def market(timed_market) -> pd.DataFrame:
    return timed_market[0]


@pytest.fixture(scope="module")
def wide(market) -> dict[str, np.ndarray]:
    """[days, instruments] arrays on the full calendar; NaN where a row is missing."""
    return {
        col: market[col].unstack("instrument").to_numpy(np.float64) for col in ("close", "volume")
    }


def _lag(a: np.ndarray, k: int) -> np.ndarray:
    out = np.full_like(a, np.nan)
    out[k:] = a[:-k]
    return out


def _cs_zscore(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-day z-score over ``mask`` (population std), clipped to +-3; NaN outside ``mask``."""
    out = np.full(x.shape, np.nan)
    days = mask.any(axis=1)
    x = np.where(mask, x, np.nan)[days]
    mean = np.nanmean(x, axis=1, keepdims=True)
    std = np.nanstd(x, axis=1, keepdims=True)
    out[days] = np.clip((x - mean) / std, -3, 3)
    return out


def _daily_ic(pred: np.ndarray, label: np.ndarray, min_count: int = 30) -> np.ndarray:
    ics = []
    for p, y in zip(pred, label):
        ok = np.isfinite(p) & np.isfinite(y)
        if ok.sum() >= min_count:
            ics.append(np.corrcoef(p[ok], y[ok])[0, 1])
    return np.asarray(ics)


@pytest.fixture(scope="module")
def signal_inputs(wide):
    """Inputs of the documented signal, the label, and who is eligible, from the frame only."""
    close, volume = wide["close"], wide["volume"]
    present = np.isfinite(close)
    log_close = np.log(pd.DataFrame(close).ffill().to_numpy())
    log_volume = np.log(pd.DataFrame(volume).ffill().to_numpy())
    first_row = present.argmax(axis=0)
    day = np.arange(close.shape[0])[:, None]
    eligible = present & (day - first_row >= 59)
    trailing_volume = pd.DataFrame(log_volume).rolling(20).mean().shift(1).to_numpy()
    r1 = log_close - _lag(log_close, 1)
    label = np.full_like(close, np.nan)
    label[:-2] = close[2:] / close[1:-1] - 1  # Ref($close,-2)/Ref($close,-1)-1 on the calendar
    return dict(
        log_close=log_close,
        log_volume=log_volume,
        eligible=eligible,
        r1=r1,
        volume_shock=log_volume - trailing_volume,
        label=label,
    )


def test_panel_format(market):
    assert list(market.columns) == FIELDS
    assert all(dtype == np.float32 for dtype in market.dtypes)
    assert market.index.names == ["datetime", "instrument"]
    assert market.index.is_monotonic_increasing and market.index.is_unique
    assert not market.isna().any().any()
    dates = market.index.get_level_values("datetime").unique()
    assert list(dates) == list(pd.bdate_range("2015-01-05", periods=1000))
    names = market.index.get_level_values("instrument").unique()
    assert len(names) == 300 and all(re.fullmatch(r"SIM\d{4}", n) for n in names)
    assert (market[["open", "high", "low", "close", "vwap", "volume"]] > 0).all().all()
    assert (market["factor"] >= 1).all()


def test_bars_are_consistent(market):
    o, h, lo, c, v = (market[k].to_numpy() for k in ("open", "high", "low", "close", "vwap"))
    assert (lo <= o).all() and (o <= h).all()
    assert (lo <= c).all() and (c <= h).all()
    assert (lo <= v).all() and (v <= h).all()
    assert (h > lo).mean() > 0.99  # bars have a range


def test_panel_is_ragged_but_mostly_full(market, wide):
    present = np.isfinite(wide["close"])
    per_day = present.sum(axis=1)
    assert 250 <= per_day.mean() <= 300
    first, last = present.argmax(axis=0), len(present) - 1 - present[::-1].argmax(axis=0)
    assert (first > 0).sum() >= 5, "some instruments must list late"
    assert (last < len(present) - 1).sum() >= 5, "some instruments must delist early"
    assert np.median(present.mean(axis=0)) > 0.95


def test_suspensions_are_missing_rows(wide):
    present = np.isfinite(wide["close"])
    first, last = present.argmax(axis=0), len(present) - 1 - present[::-1].argmax(axis=0)
    day = np.arange(len(present))[:, None]
    holes = ~present & (day > first) & (day < last)
    assert holes.sum() > 100 and (holes.any(axis=0)).sum() > 20
    assert holes.mean() < 0.05


def test_returns_are_fat_tailed_and_clustered(wide):
    log_returns = np.diff(np.log(wide["close"]), axis=0)
    kurtosis, abs_autocorr = [], []
    for r in log_returns.T:
        r = r[np.isfinite(r)]
        d = r - r.mean()
        kurtosis.append((d**4).mean() / (d**2).mean() ** 2)
        a = np.abs(r) - np.abs(r).mean()
        abs_autocorr.append((a[1:] * a[:-1]).mean() / (a**2).mean())
    assert np.median(kurtosis) > 3.5  # a normal gives 3
    assert np.mean(abs_autocorr) > 0.03  # |r| is serially correlated under GARCH, ~0 under iid


def test_volume_is_lognormal_and_tracks_moves(wide):
    log_volume = np.log(wide["volume"][1:])
    abs_return = np.abs(np.diff(np.log(wide["close"]), axis=0))
    ok = np.isfinite(log_volume) & np.isfinite(abs_return)
    # Within each instrument (removing its volume level), big moves come with big volume.
    lv = log_volume - np.nanmean(log_volume, axis=0)
    assert np.corrcoef(lv[ok], abs_return[ok])[0, 1] > 0.1
    skew = pd.Series(lv[ok]).skew()
    assert abs(skew) < 1.0  # roughly symmetric in logs (a level, not a log, would be very skewed)


def test_generation_is_fast(timed_market):
    assert timed_market[1] < 10.0


def test_deterministic_per_seed():
    a = generate_market(20, 120, seed=3)
    pd.testing.assert_frame_equal(a, generate_market(20, 120, seed=3))
    b = generate_market(20, 120, seed=4)
    assert not (a.shape == b.shape and np.allclose(a.to_numpy(), b.to_numpy()))


def test_start_date_and_tiny_universe():
    frame = generate_market(n_instruments=3, n_days=5, start="2020-01-03", seed=1)
    dates = frame.index.get_level_values("datetime").unique()
    assert dates[0] == pd.Timestamp("2020-01-03") and dates[1] == pd.Timestamp(
        "2020-01-06"
    )  # skips weekend
    assert list(frame.index.get_level_values("instrument").unique()) == [
        "SIM0000",
        "SIM0001",
        "SIM0002",
    ]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(n_instruments=0), "n_instruments must be a positive integer"),
        (dict(n_instruments=2.5), "n_instruments must be a positive integer"),
        (dict(n_days=-3), "n_days must be a positive integer"),
        (dict(n_days=True), "n_days must be a positive integer"),
        (dict(start="not a date"), "start must be a date"),
        (dict(seed=-1), "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_raise(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        generate_market(**{"n_instruments": 5, "n_days": 10, **kwargs})


def test_oracle_ic_of_documented_signal(signal_inputs):
    """The documented alpha, rebuilt from the frame, predicts the label with IC in [0.10, 0.20]."""
    s = signal_inputs
    c, eligible = s["log_close"], s["eligible"]
    reversal = _lag(c, 5) - c
    momentum = _lag(c, 20) - _lag(c, 59)
    volume_return = s["volume_shock"] * s["r1"]
    alpha = (
        0.6 * _cs_zscore(reversal, eligible)
        + 0.4 * _cs_zscore(momentum, eligible)
        + 0.4 * _cs_zscore(volume_return, eligible)
    )
    ics = _daily_ic(alpha, s["label"])
    assert len(ics) > 900
    assert 0.10 <= ics.mean() <= 0.20, ics.mean()
    assert (ics > 0).mean() > 0.8


def test_linear_model_on_lagged_returns_learns_the_signal(signal_inputs):
    """Least squares on generic lagged-return features: fit on 60% of days, positive IC after."""
    s = signal_inputs
    c, eligible = s["log_close"], s["eligible"]
    raw = [
        s["r1"],  # last day
        _lag(c, 1) - _lag(c, 5),  # days 2-5
        _lag(c, 5) - _lag(c, 20),  # days 6-20
        _lag(c, 20) - _lag(c, 59),  # days 21-59
        s["volume_shock"],
        s["volume_shock"] * s["r1"],
    ]
    features = np.stack([_cs_zscore(f, eligible) for f in raw], axis=-1)  # [T, N, F]
    label = s["label"]
    split = int(0.6 * len(label))

    train = np.isfinite(features[:split]).all(-1) & np.isfinite(label[:split])
    x = features[:split][train]
    y = label[:split][train]
    design = np.column_stack([x, np.ones(len(x))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)

    pred = features[split:] @ coef[:-1]
    ics = _daily_ic(pred, label[split:])
    assert len(ics) > 350
    assert ics.mean() > 0.05, ics.mean()


def test_concepts_match_the_markets_sectors(market):
    concepts = generate_concepts(300, seed=0)
    assert concepts.dtypes.eq(np.float32).all()
    names = market.index.get_level_values("instrument").unique().sort_values()
    pd.testing.assert_index_equal(concepts.index, names, check_names=False, exact=False)
    sectors = concepts.filter(like="SECTOR")
    themes = concepts.filter(like="THEME")
    assert sectors.shape[1] == 10 and themes.shape[1] >= 1
    assert (sectors.sum(axis=1) == 1).all()
    assert set(np.unique(concepts.to_numpy())) == {0.0, 1.0}
    assert (themes.sum(axis=0) >= 1).all()

    # The membership is the market's: same-sector returns co-move more than cross-sector ones.
    returns = market["close"].unstack("instrument").pct_change(fill_method=None)
    residual = returns.sub(returns.mean(axis=1), axis=0)
    corr = residual.corr(min_periods=100).to_numpy()
    sector_of = sectors.to_numpy().argmax(axis=1)
    same = sector_of[:, None] == sector_of[None, :]
    off_diagonal = ~np.eye(len(same), dtype=bool)
    within = np.nanmean(corr[same & off_diagonal])
    across = np.nanmean(corr[~same])
    assert within > across + 0.05, (within, across)


def test_concepts_depend_on_seed_and_validate():
    a = generate_concepts(50, seed=0)
    pd.testing.assert_frame_equal(a, generate_concepts(50, seed=0))
    assert not a.equals(generate_concepts(50, seed=1))
    small = generate_concepts(4, seed=0)
    assert (small.filter(like="SECTOR").sum(axis=1) == 1).all() and small.filter(
        like="SECTOR"
    ).shape[1] == 4
    with pytest.raises(ValueError, match="n_instruments must be a positive integer"):
        generate_concepts(0)
