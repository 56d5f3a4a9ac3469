"""Masked loss, prediction shapes and IC metrics against NumPy / pandas / Qlib."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import require

from qjax.train.losses import LossOutput, as_prediction, batch_loss, masked_squared_error
from qjax.train.metrics import daily_ic, ic_series, signal_metrics


def test_masked_squared_error_ignores_nan_labels_and_padding(seed):
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=12).astype(np.float32)
    label = rng.normal(size=12).astype(np.float32)
    label[[1, 5]] = np.nan
    weight = rng.uniform(0.5, 2.0, 12).astype(np.float32)
    mask = np.ones(12, bool)
    mask[[0, 11]] = False

    total, count = masked_squared_error(*map(jnp.asarray, (pred, label, weight, mask)))
    keep = mask & ~np.isnan(label)
    expected = np.mean(weight[keep] * (pred[keep] - label[keep]) ** 2)  # DNNModelPytorch's mse
    assert int(count) == keep.sum()
    np.testing.assert_allclose(float(batch_loss(LossOutput(total, count))), expected, rtol=1e-6)


def test_masked_squared_error_gradient_has_no_nan():
    label = jnp.array([1.0, jnp.nan, 3.0])

    def loss(pred):
        return batch_loss(
            LossOutput(*masked_squared_error(pred, label, jnp.ones(3), jnp.ones(3, bool)))
        )

    grad = jax.grad(loss)(jnp.array([0.0, 0.0, 0.0]))
    np.testing.assert_allclose(np.asarray(grad), [-1.0, 0.0, -3.0], rtol=1e-6)


def test_batch_without_counted_rows_has_zero_loss():
    assert float(batch_loss(LossOutput(jnp.float32(0), jnp.float32(0)))) == 0.0


def test_as_prediction_accepts_n_and_n1_and_rejects_others():
    assert as_prediction(jnp.ones((4, 1))).shape == (4,)
    assert as_prediction(jnp.ones(4)).shape == (4,)
    with pytest.raises(ValueError, match=r"\[N\] or \[N, 1\]"):
        as_prediction(jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="shape"):
        as_prediction((jnp.ones(4), jnp.ones(4)))


def _panel(seed=0, n_days=12, n_inst=25):
    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product(
        [
            pd.date_range("2021-01-04", periods=n_days, freq="B"),
            [f"SH{i:04d}" for i in range(n_inst)],
        ],
        names=["datetime", "instrument"],
    )
    label = pd.Series(rng.normal(size=len(index)), index=index)
    pred = 0.3 * label + pd.Series(rng.normal(size=len(index)), index=index)
    label.iloc[rng.choice(len(index), 20, replace=False)] = np.nan  # missing labels
    pred.iloc[rng.choice(len(index), 5, replace=False)] = np.nan
    pred.iloc[::7] = pred.iloc[::7].round(0)  # ties for the rank IC
    return pred, label


def _pandas_daily_ic(pred, label, method="pearson"):
    frame = pd.DataFrame({"pred": pred, "label": label})
    return frame.groupby(level="datetime").apply(
        lambda d: d["pred"].corr(d["label"], method=method)
    )


def test_daily_ic_matches_pandas_and_skips_degenerate_days():
    pred, label = _panel()
    dates = pred.index.get_level_values("datetime")
    # Degenerate days: a constant prediction, and a day with a single known label.
    pred[dates == dates[0]] = 1.0
    last = dates == dates[-1]
    label[last] = np.where(np.arange(last.sum()) == 0, 0.5, np.nan)
    day = pd.factorize(dates, sort=True)[0]

    ic = daily_ic(
        jnp.asarray(pred.to_numpy(np.float32)),
        jnp.asarray(label.to_numpy(np.float32)),
        jnp.asarray(day),
        int(day.max()) + 1,
    )
    expected = _pandas_daily_ic(pred, label)
    assert expected.isna().sum() == 2
    np.testing.assert_allclose(float(ic), expected.mean(), rtol=1e-5)


def test_daily_ic_is_nan_when_no_day_has_an_ic():
    ic = daily_ic(jnp.ones(4), jnp.arange(4.0), jnp.array([0, 0, 1, 1]), 2)
    assert np.isnan(float(ic))


def test_ic_series_matches_pandas_per_day_corr():
    pred, label = _panel(1)
    ic, rank_ic = ic_series(pred, label)
    pd.testing.assert_series_equal(ic, _pandas_daily_ic(pred, label), check_names=False, rtol=1e-10)
    pd.testing.assert_series_equal(
        rank_ic, _pandas_daily_ic(pred, label, "spearman"), check_names=False, rtol=1e-10
    )


@pytest.mark.parity
def test_signal_metrics_match_qlib_sig_ana_record_formulas(qlib):
    alpha = require("qlib.contrib.eva.alpha")
    pred, label = _panel(2)
    ic, rank_ic = alpha.calc_ic(pred, label)
    expected = {
        "IC": ic.mean(),
        "ICIR": ic.mean() / ic.std(),
        "Rank IC": rank_ic.mean(),
        "Rank ICIR": rank_ic.mean() / rank_ic.std(),
    }
    got = signal_metrics(pred, label)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-9), name
