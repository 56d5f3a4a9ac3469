"""Risk analysis and SigAna's long-short return against Qlib's functions (float64, so 1e-12)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qjax.backtest import long_short_return, risk_analysis
from qjax.backtest.risk import annualisation_scaler


def test_scalers_are_qlibs():
    assert annualisation_scaler("day") == 238 and annualisation_scaler("1day") == 238
    assert annualisation_scaler("week") == 50 and annualisation_scaler("month") == 12
    assert annualisation_scaler("5min") == 240 * 238 / 5
    with pytest.raises(ValueError, match="unknown frequency"):
        annualisation_scaler("fortnight")


def test_sum_mode_by_hand():
    r = pd.Series([0.01, -0.02, 0.03])
    out = risk_analysis(r)["risk"]
    assert out["mean"] == pytest.approx(0.02 / 3)
    assert out["annualized_return"] == pytest.approx(0.02 / 3 * 238)
    assert out["max_drawdown"] == pytest.approx(-0.02)  # cumsum 0.01, -0.01, 0.02
    assert out["information_ratio"] == pytest.approx(
        out["mean"] / np.std([0.01, -0.02, 0.03], ddof=1) * 238**0.5
    )


@pytest.mark.parity
@pytest.mark.parametrize(
    "mode, freq", [("sum", "day"), ("product", "day"), ("sum", "week"), ("product", "month")]
)
def test_risk_analysis_equals_qlib(qlib, mode, freq, seed=0):
    from qlib.contrib.evaluate import risk_analysis as qlib_risk

    r = pd.Series(np.random.default_rng(seed).normal(0.0005, 0.01, 300))
    np.testing.assert_allclose(
        risk_analysis(r, freq=freq, mode=mode)["risk"].to_numpy(),
        qlib_risk(r, freq=freq, mode=mode)["risk"].to_numpy(),
        rtol=1e-12,
        err_msg=f"{mode} {freq} seed={seed}",
    )


@pytest.mark.parity
def test_long_short_return_equals_qlib(qlib, seed=1):
    from qlib.contrib.eva.alpha import calc_long_short_return

    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2020-01-01", periods=30)
    index = pd.MultiIndex.from_product(
        [days, [f"S{i:02d}" for i in range(23)]], names=["datetime", "instrument"]
    )
    pred = pd.Series(rng.standard_normal(len(index)), index=index)
    label = pd.Series(rng.standard_normal(len(index)) * 0.02, index=index)
    pred[rng.random(len(pred)) < 0.1] = np.nan  # NaN scores are skipped but still count in n
    label[rng.random(len(label)) < 0.05] = np.nan
    mine = long_short_return(pred, label)
    theirs = calc_long_short_return(pred, label)
    for a, b, name in zip(mine, theirs, ("long_short", "long_avg")):
        np.testing.assert_allclose(
            a.to_numpy(), b.to_numpy(), rtol=1e-12, err_msg=f"{name} seed={seed}"
        )
