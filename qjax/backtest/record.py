"""PortAnaRecord for a qjax run: the ``backtest:`` section of a run config, checked before
training and run on the test predictions after it.

The section is Qlib's ``port_analysis_config`` unchanged (``strategy`` and ``backtest``, with
``exchange_kwargs``). The run directory gets ``backtest/report.csv`` (Qlib's report_normal),
``backtest/positions.csv`` and ``backtest/port_analysis.json``; ``metrics.json`` gets the risk
analysis and Qlib's seven benchmark columns.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from qjax.backtest.exchange import Exchange
from qjax.backtest.run import BACKTEST_KEYS, port_analysis
from qjax.backtest.strategy import TopkDropout

SEVEN_COLUMNS = (
    "IC",
    "ICIR",
    "Rank IC",
    "Rank ICIR",
    "Annualized Return",
    "Information Ratio",
    "Max Drawdown",
)


def check_section(section: Any) -> dict:
    """Validate a ``backtest:`` config section (raises ValueError naming the problem)."""
    if not isinstance(section, Mapping):
        raise ValueError(
            "the backtest section must be Qlib's port_analysis_config: "
            "a mapping with strategy, backtest"
        )
    unknown = sorted(set(section) - {"strategy", "backtest", "executor"})
    if unknown:
        raise ValueError(
            f"backtest has unsupported key(s) {unknown}; expected strategy and backtest"
        )
    TopkDropout.from_qlib(section.get("strategy", {}))
    run = section.get("backtest", {}) or {}
    if not isinstance(run, Mapping):
        raise ValueError(
            "backtest.backtest must be a mapping (start_time, end_time, account, benchmark, ...)"
        )
    bad = sorted(set(run) - set(BACKTEST_KEYS))
    if bad:
        raise ValueError(
            f"backtest.backtest has unsupported key(s) {bad}; supported: {list(BACKTEST_KEYS)}"
        )
    Exchange.from_qlib(run.get("exchange_kwargs"))
    out = dict(section)
    out["backtest"] = {
        k: (_iso(v) if k in ("start_time", "end_time") and v is not None else v)
        for k, v in run.items()
    }
    return out


def record_backtest(
    section: Mapping,
    pred: pd.Series,
    data_cfg: Mapping,
    out_dir: str | Path,
    signal: Mapping[str, float],
) -> dict:
    """Backtest ``pred`` as the section says on the run's data; write the outputs; return the
    metrics to merge into metrics.json (``signal``: the IC summary of the same predictions)."""
    source = data_cfg.get("source", "generated")
    if source == "qlib":
        market, universe = data_cfg["provider_uri"], data_cfg.get("instruments", "csi300")
        if not isinstance(universe, str):
            universe = None
    else:
        from qjax.backtest.market import market_from_panel
        from qjax.workflow import load_market

        market, universe = (
            market_from_panel(load_market(data_cfg), universe=f"{source} market"),
            None,
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = port_analysis(pred, section, market, universe=universe)
    result.save(Path(out_dir) / "backtest")
    risk = result.analysis["risk"]
    return {
        "backtest": result.metrics(),
        "backtest_notes": [str(w.message) for w in caught],
        # Qlib's benchmark tables: the signal's IC figures, then the excess return with cost.
        "seven_columns": {
            **{name: float(signal[name]) for name in SEVEN_COLUMNS[:4]},
            "Annualized Return": float(risk[("excess_return_with_cost", "annualized_return")]),
            "Information Ratio": float(risk[("excess_return_with_cost", "information_ratio")]),
            "Max Drawdown": float(risk[("excess_return_with_cost", "max_drawdown")]),
        },
    }


def _iso(value) -> str:
    return pd.Timestamp(str(value)).strftime("%Y-%m-%d")
