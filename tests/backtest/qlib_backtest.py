"""Run Qlib's own backtest (what PortAnaRecord runs) and put its outputs in qjax's shapes."""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import pandas as pd


def run_qlib_backtest(pred, strategy_kwargs: dict, backtest_kwargs: dict, seed: int | None = None):
    """``qlib.backtest.backtest`` with a TopkDropoutStrategy on ``pred``; qlib must be initialised.

    Returns (report_normal, positions as a (datetime, instrument) frame of amount/price/weight/
    count_day, port_analysis computed as PortAnaRecord does)."""
    from qlib.backtest import backtest
    from qlib.contrib.evaluate import risk_analysis

    strategy = {
        "class": "TopkDropoutStrategy",
        "module_path": "qlib.contrib.strategy",
        "kwargs": {"signal": pred, **strategy_kwargs},
    }
    executor = {
        "class": "SimulatorExecutor",
        "module_path": "qlib.backtest.executor",
        "kwargs": {"time_per_step": "day", "generate_portfolio_metrics": True},
    }
    if seed is not None:
        np.random.seed(seed)  # Qlib's random dropout draws from numpy's global generator
    logging.getLogger("qlib").setLevel(logging.ERROR)
    real_choice = np.random.choice
    np.random.choice = _choice_of_plain_str(real_choice)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # tqdm progress bar
            portfolio, _ = backtest(strategy=strategy, executor=executor, **backtest_kwargs)
    finally:
        np.random.choice = real_choice
    report, hist = portfolio["1day"]
    rows = []
    for day, position in hist.items():
        for code, info in position.position.items():
            if isinstance(info, dict):
                rows.append(
                    (
                        day,
                        code,
                        info["amount"],
                        info["price"],
                        info["weight"],
                        info.get("count_day", 0),
                    )
                )
    positions = pd.DataFrame(
        rows, columns=["datetime", "instrument", "amount", "price", "weight", "count_day"]
    )
    positions = positions.set_index(["datetime", "instrument"]).sort_index()
    excess = report["return"] - report["bench"]
    analysis = pd.concat(
        {
            "excess_return_without_cost": risk_analysis(excess, freq="day"),
            "excess_return_with_cost": risk_analysis(excess - report["cost"], freq="day"),
        }
    )
    return report, positions, analysis


def _choice_of_plain_str(choice):
    """``np.random.choice`` returning Python strings (same draws). Qlib's random picks are numpy
    strings, and its order bookkeeping raises when a day's first order is keyed by one and a later
    order by a plain str; which comes first follows Python's per-process string hashing, so
    Qlib's random dropout crashes or not from run to run."""

    def wrapped(*args, **kwargs):
        picked = choice(*args, **kwargs)
        return np.array([str(x) for x in picked], dtype=object)

    return wrapped
