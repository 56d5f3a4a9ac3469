"""The report's numbers against independent computations, and the files it writes."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qjax.report import analysis, curves, load_run, signal, write_report
from tests.report.synthetic_run import write_synthetic_run

FIGURES = [
    "learning_curves.png",
    "ic_daily.png",
    "ic_distribution.png",
    "group_returns.png",
    "long_short.png",
    "backtest.png",
]


def _index(days, names):
    return pd.MultiIndex.from_product(
        [pd.to_datetime(days), names], names=["datetime", "instrument"]
    )


def test_quantile_groups_follow_qlib_slicing():
    # 7 stocks, 3 groups: each day 7 // 3 = 2 per group from the top; the lowest score is
    # left out (Qlib's x[len//N*i : len//N*(i+1)]). Day 2 has a NaN score, dropped first.
    index = _index(["2021-01-04", "2021-01-05"], list("ABCDEFG"))
    score = pd.Series([7, 6, 5, 4, 3, 2, 1, 1, 2, np.nan, 4, 5, 6, 7], index=index, dtype=float)
    label = pd.Series(
        [0.07, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01, 0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70],
        index=index,
    )
    got = analysis.group_returns(score, label, n_groups=3)
    # day 1 order A..G: groups {A,B} {C,D} {E,F}; G left out.
    # day 2 scored G,F,E,D,B,A (C has no score): 6 // 3 = 2: {G,F} {E,D} {B,A}.
    expected = pd.DataFrame(
        {"Group1": [0.065, 0.65], "Group2": [0.045, 0.45], "Group3": [0.025, 0.15]},
        index=pd.to_datetime(["2021-01-04", "2021-01-05"]),
    )
    day_mean = [
        np.mean([0.07, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01]),
        np.mean([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
    ]
    expected["long-short"] = expected["Group1"] - expected["Group3"]
    expected["long-average"] = expected["Group1"] - day_mean
    pd.testing.assert_frame_equal(
        got, expected, check_names=False, check_freq=False, rtol=1e-12, atol=1e-15
    )


def test_daily_ic_autocorr_and_monthly_mean_match_scipy(seed):
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2021-01-28", periods=6)
    index = _index(days, [f"S{i}" for i in range(9)])
    scores = pd.DataFrame(
        {"seed_0": rng.normal(size=len(index)), "seed_1": rng.normal(size=len(index))}, index=index
    )
    label = pd.Series(rng.normal(size=len(index)), index=index)
    ic, rank_ic = analysis.daily_ic(scores, label)
    for col in scores:
        for day in days:
            s, y = scores[col].xs(day, level="datetime"), label.xs(day, level="datetime")
            assert ic.loc[day, col] == pytest.approx(stats.pearsonr(s, y)[0], abs=1e-12), seed
            assert rank_ic.loc[day, col] == pytest.approx(stats.spearmanr(s, y)[0], abs=1e-12), seed
    month = analysis.monthly_mean(ic["seed_0"])
    january = ic["seed_0"][ic.index.month == 1].mean()
    assert list(month.index) == [pd.Timestamp("2021-01-01"), pd.Timestamp("2021-02-01")]
    assert month.iloc[0] == pytest.approx(january, abs=1e-12), seed

    score = scores["seed_0"]
    auto = analysis.score_autocorr(score)
    assert np.isnan(auto.iloc[0])  # no previous score on the first day
    wide = score.unstack("instrument")
    for today, yesterday in zip(days[1:], days[:-1]):
        want = stats.spearmanr(wide.loc[today], wide.loc[yesterday])[0]
        assert auto.loc[today] == pytest.approx(want, abs=1e-12), seed


def test_portfolio_curves_sum_returns_and_measure_drawdown_from_the_peak():
    days = pd.bdate_range("2021-03-01", periods=4)
    report = pd.DataFrame(
        {
            "return": [0.01, -0.02, 0.005, 0.02],
            "cost": [0.001, 0, 0, 0.001],
            "bench": [0, 0.01, 0, 0],
            "turnover": [1, 0.2, 0.2, 0.3],
        },
        index=days,
    )
    curves = analysis.portfolio_curves(report)
    np.testing.assert_allclose(curves["cum_ex_return_wo_cost"], [0.01, -0.02, -0.015, 0.005])
    np.testing.assert_allclose(curves["cum_ex_return_w_cost"], [0.009, -0.021, -0.016, 0.003])
    np.testing.assert_allclose(
        curves["cum_ex_return_w_cost_mdd"], [0, -0.03, -0.025, -0.006], atol=1e-15
    )
    assert analysis.drawdown_span(curves["cum_ex_return_w_cost"]) == (days[0], days[1])


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_report_writes_every_figure_into_one_self_contained_page(tmp_path, seed, n_seeds):
    run = tmp_path / "lstm_small"
    write_synthetic_run(run, seed, n_seeds=n_seeds)
    page_path = write_report(run)
    page = page_path.read_text()
    assert page_path == run / "report.html"
    for name in FIGURES:
        png = (run / "report" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, name
        assert base64.b64encode(png).decode() in page, f"{name} is not embedded"
        assert f"alt='{name}'" in page
    # Self-contained: every image is inline data, nothing is fetched from elsewhere.
    assert re.findall(r"src='([a-z]+):", page) == ["data"] * len(FIGURES)
    title = re.search(r"<h1>(.*?)</h1>", page).group(1)
    subtitle = re.search(r"<p class='sub'>(.*?)</p>", page).group(1)
    assert "lstm_small" in title and "lstm" in title and "Alpha158" in title
    assert "generated market, 23 instruments" in subtitle
    assert "; test 2020-01-02 – 2020-06-30" in subtitle
    assert ("seed 0" if n_seeds == 1 else f"{n_seeds} seeds [0, 1, 2]") in subtitle
    assert "0.3000" in page and "equal-weighted universe mean" in page  # metrics tables
    if n_seeds > 1:
        assert "Per seed" in page and "<td>seed_2</td><td>0.33</td>" in page


def test_report_of_a_run_without_labels_or_backtest_says_what_is_missing(tmp_path, seed):
    run = tmp_path / "old"
    write_synthetic_run(run, seed, n_seeds=1, backtest=False)
    (run / "labels.parquet").unlink()
    page = write_report(run).read_text()
    assert sorted(p.name for p in (run / "report").iterdir()) == ["learning_curves.png"]
    assert "no labels.parquet" in page
    assert load_run(run).label is None


def test_report_of_a_directory_that_is_not_a_run_is_refused_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        write_report(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="metrics.json is missing"):
        (tmp_path / "config.yaml").write_text("model: {name: lstm}\n")
        write_report(tmp_path)


def test_ic_legends_describe_the_lines_they_label(seed):
    # Qlib-style bug guarded here: a legend quoting the seed-mean IC beside one seed's curve.
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2022-01-03", periods=60)
    ic = pd.DataFrame(rng.normal(0.05, 0.1, (60, 3)), index=days, columns=["a", "b", "c"])
    rank_ic = ic + 0.01
    top, bottom = signal.ic_daily(ic, rank_ic).axes
    lines = {line.get_label(): line for line in top.get_lines()}
    seed_mean = sum(ic[c] for c in ic) / 3
    overall = float(np.mean([ic[c].mean() for c in ic]))
    rolled = lines[f"IC, 20-day mean (overall {overall:.4f})"].get_ydata()
    want = seed_mean.rolling(20, min_periods=5).mean().to_numpy()
    np.testing.assert_allclose(rolled, want, rtol=1e-12, err_msg=f"seed {seed}")
    cumulative = {line.get_label(): line.get_ydata() for line in bottom.get_lines()}
    np.testing.assert_allclose(
        cumulative["cumulative IC: mean of 3 seeds"],
        sum(ic[c].cumsum() for c in ic) / 3,
        rtol=1e-12,
    )
    legend = [t.get_text() for t in bottom.get_legend().get_texts()]
    assert "cumulative IC: seed min–max" in legend

    single = signal.ic_daily(ic[["a"]], rank_ic[["a"]]).axes[1]
    assert "cumulative IC" in [line.get_label() for line in single.get_lines()]
    np.testing.assert_allclose(single.get_lines()[0].get_ydata(), ic["a"].cumsum(), rtol=1e-12)


def test_report_of_too_few_stocks_for_quantile_groups_says_so(tmp_path, seed):
    run = tmp_path / "narrow"
    write_synthetic_run(run, seed, n_seeds=2, n_days=5, n_instruments=4)
    page = write_report(run).read_text()
    assert "fewer than 5 scored stocks" in page
    assert not (run / "report" / "group_returns.png").exists()
    assert (run / "report" / "ic_daily.png").exists()


def test_learning_curves_star_each_seeds_best_valid_epoch(seed):
    rng = np.random.default_rng(seed)
    valid = rng.normal(size=(9, 3))
    valid[6:, 2] = np.nan  # the third seed stopped after six epochs
    best = [int(np.nanargmax(valid[:, s])) + 1 for s in range(3)]
    ax = curves.learning_curves({"valid": valid}, best).axes[0]
    stars = [
        (x, y)
        for line in ax.get_lines()
        if line.get_marker() == "*"
        for x, y in zip(line.get_xdata(), line.get_ydata())
    ]
    assert stars == [(b, np.nanmax(valid[:, s])) for s, b in enumerate(best)], seed
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels.count("best epoch of each seed") == 1
    mean = {ln.get_label(): ln for ln in ax.get_lines()}["valid: mean of 3 seeds"].get_ydata()
    np.testing.assert_allclose(mean, np.nanmean(valid, axis=1), rtol=1e-12)
