"""A finished run's files written from fixed synthetic numbers, for the report tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from qjax.report import save_report_inputs


def write_synthetic_run(
    out: Path,
    seed: int,
    n_seeds: int = 2,
    n_days: int = 120,
    n_instruments: int = 23,
    backtest: bool = True,
) -> dict:
    """Scores with a planted signal, labels, learning curves and a portfolio report."""
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2020-01-02", periods=n_days)
    index = pd.MultiIndex.from_product(
        [days, [f"S{i:03d}" for i in range(n_instruments)]], names=["datetime", "instrument"]
    )
    alpha = rng.normal(size=len(index))
    label = pd.Series(0.01 * alpha + 0.02 * rng.normal(size=len(index)), index=index)
    names = [f"seed_{s}" for s in range(n_seeds)] if n_seeds > 1 else ["score"]
    scores = pd.DataFrame({n: alpha + rng.normal(size=len(index)) for n in names}, index=index)
    out.mkdir(parents=True, exist_ok=True)
    scores.to_parquet(out / "predictions.parquet")
    epochs = 12
    valid = -np.abs(np.arange(epochs)[:, None] - 6 - np.arange(n_seeds)) * 0.01 + 0.9
    train = 0.8 + 0.02 * np.arange(epochs)[:, None] + 0.01 * np.arange(n_seeds)
    evals = {"train": train, "valid": valid}
    save_report_inputs(out, {k: v[:, 0] if n_seeds == 1 else v for k, v in evals.items()}, label)
    seeds = list(range(n_seeds))
    (out / "config.yaml").write_text(
        f"data: {{source: generated, n_instruments: {n_instruments}}}\n"
        "handler: {name: Alpha158}\n"
        "dataset:\n  segments:\n    train: [2019-01-02, 2019-06-28]\n"
        "    valid: [2019-07-01, 2019-12-31]\n    test: [2020-01-02, 2020-06-30]\n"
        f"model: {{name: lstm, kwargs: {{seed: 0}}}}\ntrain: {{seeds: {seeds}}}\n"
    )
    metrics = {
        "model": "lstm",
        "test": {"IC": 0.3, "ICIR": 2.0, "Rank IC": 0.28, "Rank ICIR": 1.9},
        "best_epoch_1based": [7 + s for s in seeds],
        "epochs_run": epochs,
        "samples": {"test": len(index)},
    }
    if n_seeds > 1:
        metrics["test_per_seed"] = {
            n: {"IC": 0.31 + 0.01 * i, "ICIR": 2.0, "Rank IC": 0.28, "Rank ICIR": 1.9}
            for i, n in enumerate(names)
        }
    if backtest:
        ret = rng.normal(0.001, 0.01, n_days)
        bench = rng.normal(0.0003, 0.01, n_days)
        report = pd.DataFrame(
            {
                "account": 1e8,
                "return": ret,
                "bench": bench,
                "turnover": rng.uniform(0, 0.3, n_days),
                "cost": rng.uniform(0, 5e-4, n_days),
            },
            index=days,
        )
        report.index.name = "datetime"
        (out / "backtest").mkdir(exist_ok=True)
        report.to_csv(out / "backtest" / "report.csv")
        (out / "backtest" / "port_analysis.json").write_text(
            json.dumps({"benchmark": "equal-weighted universe mean"})
        )
        metrics["backtest"] = {
            "benchmark": "equal-weighted universe mean",
            "excess_return_with_cost.max_drawdown": -0.05,
        }
    (out / "metrics.json").write_text(json.dumps(metrics))
    return {"scores": scores, "label": label, "evals": evals, "metrics": metrics}
