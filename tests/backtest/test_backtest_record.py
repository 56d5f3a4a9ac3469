"""`qjax train` with a `backtest:` section (Qlib's port_analysis_config) writes PortAnaRecord's
outputs and the seven benchmark columns; a bad section fails before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qjax import run_config, workflow
from qjax.backtest import port_analysis
from qjax.backtest.market import market_from_panel

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "lstm_alpha360.yaml"
TINY = [
    "data.n_instruments=40",
    "data.n_days=260",
    "handler.fit_end_time=2015-08-31",
    "dataset.segments.train=[2015-01-05, 2015-08-31]",
    "dataset.segments.valid=[2015-09-01, 2015-10-30]",
    "dataset.segments.test=[2015-11-02, 2015-12-30]",
    "model.kwargs.hidden_size=8",
    "model.kwargs.batch_size=512",
    "model.kwargs.n_epochs=1",
]
# As in Qlib's benchmark workflow YAMLs (the generated market has no SH000300).
PORT_ANALYSIS = """
strategy:
    class: TopkDropoutStrategy
    module_path: qlib.contrib.strategy
    kwargs:
        signal: <PRED>
        topk: 10
        n_drop: 2
backtest:
    start_time:
    end_time:
    account: 100000000
    benchmark: SH000300
    exchange_kwargs:
        limit_threshold: 0.095
        deal_price: close
        open_cost: 0.0005
        close_cost: 0.0015
        min_cost: 5
"""


def test_train_with_a_backtest_section_writes_port_analysis(tmp_path):
    cfg = run_config.load(CONFIG, TINY)
    cfg["backtest"] = run_config.parse_yaml(PORT_ANALYSIS)
    cfg = run_config.validate(cfg)
    out = tmp_path / "run"
    metrics = workflow.train(cfg, out, verbose=False)
    assert list(metrics["seven_columns"]) == [
        "IC",
        "ICIR",
        "Rank IC",
        "Rank ICIR",
        "Annualized Return",
        "Information Ratio",
        "Max Drawdown",
    ]
    assert metrics["seven_columns"]["IC"] == metrics["test"]["IC"]
    name = "equal-weighted mean return of generated market members (SH000300 not in the data)"
    assert metrics["backtest"]["benchmark"] == name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["seven_columns"] == metrics["seven_columns"]
    report = pd.read_csv(out / "backtest" / "report.csv", index_col=0, parse_dates=True)
    assert list(report.columns) == [
        "account",
        "return",
        "total_turnover",
        "turnover",
        "total_cost",
        "cost",
        "value",
        "cash",
        "bench",
    ]
    assert json.loads((out / "backtest" / "port_analysis.json").read_text())["benchmark"] == name
    # The recorded backtest is the backtest of the saved predictions.
    pred = pd.read_parquet(out / "predictions.parquet").iloc[:, 0]
    market = market_from_panel(workflow.load_market(cfg["data"]), universe="generated market")
    with pytest.warns(UserWarning, match="SH000300"):
        again = port_analysis(pred, cfg["backtest"], market)
    np.testing.assert_allclose(report.to_numpy(), again.report.to_numpy(), rtol=1e-12)
    assert report["turnover"].gt(0).sum() > 10


@pytest.mark.parametrize(
    "section, message",
    [
        ({"strategy": {"class": "WeightStrategyBase"}}, "WeightStrategyBase"),
        ({"strategy": {"kwargs": {"topk": 5, "n_dorp": 1}}}, "n_dorp"),
        ({"backtest": {"exchange_kwargs": {"deal_price": "vwap"}}}, "deal_price"),
        ({"backtest": {"accounts": 1}}, "accounts"),
    ],
)
def test_bad_backtest_section_is_refused_before_training(section, message):
    cfg = run_config.load(CONFIG, TINY)
    cfg["backtest"] = section
    with pytest.raises(run_config.ConfigError, match=message):
        run_config.validate(cfg)
