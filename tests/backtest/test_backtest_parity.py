"""qjax's backtest against Qlib's (``qlib.backtest.backtest``, as PortAnaRecord runs it) on a
generated market written in Qlib's binary layout, so both read the very same float32 prices.

Tolerance: 1e-6 relative, with an absolute floor of 1e-12 for values that are zero in exact
arithmetic (a day without trades has a return of ~1e-17 in Qlib, from its summation order).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qjax.backtest import backtest, port_analysis
from qjax.data import generate_market
from qjax.data.qlib_writer import write_qlib_binary
from tests.backtest.qlib_backtest import run_qlib_backtest

pytestmark = pytest.mark.parity

RTOL, ATOL = 1e-6, 1e-12
START, END = "2015-03-02", "2015-07-01"
ABSENT = "SIM9999"  # predicted but without any price data: never tradable
# A benchmark given as a series of daily returns (seeded); some days missing (Qlib counts 0).
GIVEN_BENCHMARK = pd.Series(
    np.random.default_rng(99).normal(0.0, 0.01, 140),
    index=pd.bdate_range("2015-01-05", periods=140),
    name="given index",
).drop(pd.bdate_range("2015-04-01", periods=5))


@pytest.fixture(scope="module")
def market_dir(qlib, tmp_path_factory):
    """A 40-stock generated market (suspensions, listings, splits) as a Qlib data directory,
    with qlib initialised on it for this module and restored afterwards."""
    from qlib.config import C
    from qlib.constant import REG_CN

    panel = generate_market(n_instruments=40, n_days=140, seed=3)
    root = write_qlib_binary(
        panel, tmp_path_factory.mktemp("qlib_gen"), markets={"mkt": ["SIM0001", "SIM0002"]}
    )
    previous = (C.get("provider_uri"), C.get("region")) if C.registered else None
    qlib.init(provider_uri=str(root), region=REG_CN, kernels=1)
    yield root, panel
    if previous is not None:
        qlib.init(provider_uri=previous[0], region=previous[1], kernels=1)


def _predictions(panel: pd.DataFrame, seed: int, keep: float = 1.0, nan: float = 0.0) -> pd.Series:
    """Random scores on every row (a share ``keep`` of rows, a share ``nan`` of them NaN), plus
    one instrument without data."""
    rng = np.random.default_rng(seed)
    pred = pd.Series(rng.standard_normal(len(panel)), index=panel.index).loc[START:END]
    if keep < 1:
        pred = pred[rng.random(len(pred)) < keep]
    pred[rng.random(len(pred)) < nan] = np.nan
    days = pred.index.get_level_values("datetime").unique()
    absent = pd.Series(
        3.0, index=pd.MultiIndex.from_product([days, [ABSENT]], names=pred.index.names)
    )
    return pd.concat([pred, absent]).sort_index()


def _assert_same(mine, theirs, label: str):
    report, positions, analysis = theirs
    assert list(mine.report.columns) == list(report.columns), label
    assert mine.report.index.equals(report.index), label
    for column in report.columns:
        np.testing.assert_allclose(
            mine.report[column].to_numpy(),
            report[column].to_numpy(),
            rtol=RTOL,
            atol=ATOL,
            err_msg=f"{label}: report column {column!r}",
        )
    assert mine.positions.index.equals(positions.index), f"{label}: held stocks differ"
    for column in ("amount", "price", "weight"):
        np.testing.assert_allclose(
            mine.positions[column].to_numpy(),
            positions[column].to_numpy(),
            rtol=RTOL,
            atol=ATOL,
            err_msg=f"{label}: positions column {column!r}",
        )
    np.testing.assert_array_equal(
        mine.positions["count_day"].to_numpy(), positions["count_day"].to_numpy()
    )
    np.testing.assert_allclose(
        mine.analysis["risk"].to_numpy(),
        analysis["risk"].to_numpy(),
        rtol=RTOL,
        atol=ATOL,
        err_msg=label,
    )
    assert mine.analysis.index.equals(analysis.index), label


CASES = {
    # Small account: trade-unit rounding and min_cost bite; tight limits block many trades.
    "close_small_account": dict(
        strategy=dict(topk=8, n_drop=2),
        exchange=dict(
            limit_threshold=0.03,
            deal_price="close",
            open_cost=0.0005,
            close_cost=0.0015,
            min_cost=5,
        ),
        account=1e6,
        benchmark="SIM0001",
        keep=0.9,
        nan=0.05,
    ),
    "open_hold_thresh_only_tradable": dict(
        strategy=dict(topk=6, n_drop=3, hold_thresh=3, only_tradable=True),
        exchange=dict(
            limit_threshold=0.02, deal_price="open", open_cost=0.001, close_cost=0.002, min_cost=5
        ),
        account=1e8,
        benchmark=["SIM0003", "SIM0004", "SIM0005"],
        keep=0.85,
    ),
    "limits_per_direction_min_cost": dict(
        strategy=dict(topk=10, n_drop=4, forbid_all_trade_at_limit=False),
        exchange=dict(
            limit_threshold=0.025,
            deal_price="close",
            open_cost=0.0005,
            close_cost=0.0015,
            min_cost=60,
        ),
        account=3e5,
        benchmark="SIM0001",
        keep=1.0,
    ),
    "random_dropout_seeded": dict(
        strategy=dict(topk=7, n_drop=3, method_sell="random", method_buy="random"),
        exchange=dict(
            limit_threshold=0.03,
            deal_price="close",
            open_cost=0.0005,
            close_cost=0.0015,
            min_cost=5,
        ),
        account=1e7,
        benchmark="SIM0002",
        keep=1.0,
        seed=11,
    ),
    "no_trade_unit": dict(
        strategy=dict(topk=5, n_drop=1),
        exchange=dict(
            limit_threshold=0.095,
            deal_price="close",
            open_cost=0.0005,
            close_cost=0.0015,
            min_cost=5,
            trade_unit=None,
        ),
        account=2e6,
        benchmark=GIVEN_BENCHMARK,
        keep=1.0,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_backtest_equals_qlib(market_dir, case):
    root, panel = market_dir
    spec = CASES[case]
    pred = _predictions(panel, sorted(CASES).index(case), spec["keep"], spec.get("nan", 0.0))
    common = dict(
        account=spec["account"],
        benchmark=spec["benchmark"],
        start_time=START,
        end_time="2015-07-02",
    )
    theirs = run_qlib_backtest(
        pred,
        spec["strategy"],
        dict(common, exchange_kwargs=spec["exchange"]),
        seed=spec.get("seed"),
    )
    mine = backtest(
        pred,
        root,
        strategy=spec["strategy"],
        exchange=spec["exchange"],
        seed=spec.get("seed"),
        **common,
    )
    _assert_same(mine, theirs, case)
    # The case must exercise what it is named for: trades happened, and some were blocked.
    assert (mine.report["turnover"] > 0).sum() > 20, case


def test_port_analysis_config_and_panel_source_equal_qlib(market_dir):
    """Qlib's port_analysis_config dict unchanged, on the panel itself (no binary directory);
    default span = first prediction day .. the trading day after the last one, as PortAnaRecord."""
    root, panel = market_dir
    pred = _predictions(panel, seed=7)
    config = {
        "strategy": {
            "class": "TopkDropoutStrategy",
            "module_path": "qlib.contrib.strategy",
            "kwargs": {"signal": "<PRED>", "topk": 8, "n_drop": 2},
        },
        "backtest": {
            "start_time": None,
            "end_time": None,
            "account": 5e6,
            "benchmark": "SIM0001",
            "exchange_kwargs": {
                "limit_threshold": 0.03,
                "deal_price": "close",
                "open_cost": 0.0005,
                "close_cost": 0.0015,
                "min_cost": 5,
            },
        },
    }
    days = pred.index.get_level_values("datetime")
    calendar = panel.index.get_level_values("datetime").unique().sort_values()
    end = calendar[calendar.searchsorted(days.max(), side="right")]
    kwargs = {k: v for k, v in config["strategy"]["kwargs"].items() if k != "signal"}
    theirs = run_qlib_backtest(
        pred, kwargs, dict(config["backtest"], start_time=days.min(), end_time=end)
    )
    on_panel = port_analysis(pred, config, panel)
    _assert_same(on_panel, theirs, "port_analysis on the panel")


def test_equal_weighted_benchmark_equals_qlib_stock_pool(market_dir):
    """With no benchmark the bench column is the mean daily return of the universe's members,
    named so; on a universe whose spans cover the whole data it equals Qlib's list benchmark."""
    root, panel = market_dir
    pred = _predictions(panel, seed=5)
    members = ["SIM0001", "SIM0002"]
    exchange = dict(
        limit_threshold=0.095, deal_price="close", open_cost=0.0005, close_cost=0.0015, min_cost=5
    )
    common = dict(account=1e7, start_time=START, end_time="2015-07-02")
    theirs = run_qlib_backtest(
        pred, dict(topk=5, n_drop=1), dict(common, benchmark=members, exchange_kwargs=exchange)
    )
    mine = backtest(
        pred,
        root,
        strategy=dict(topk=5, n_drop=1),
        exchange=exchange,
        benchmark=None,
        universe="mkt",
        **common,
    )
    assert mine.benchmark_name == "equal-weighted mean return of mkt members"
    assert mine.report.attrs["benchmark"] == mine.benchmark_name
    np.testing.assert_allclose(mine.report["bench"], theirs[0]["bench"], rtol=RTOL, atol=ATOL)
    _assert_same(mine, theirs, "equal-weighted benchmark")
